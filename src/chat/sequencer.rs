//! Gapless per-conversation seqs without transactions.
//!
//! A message is inserted at `last_seq + 1` under a unique (conversation, seq) index; only
//! after it is stored does the counter move to it. A writer that finds its seq taken (another
//! node won) moves the counter over the taken seq and tries the next one, so a seq is never
//! skipped and never reused. Within one node, senders to the same conversation queue on a
//! striped lock so they do not race each other at all.

use tokio::sync::{Mutex, MutexGuard};

use crate::domain::ConversationId;

/// Lock stripes: senders to conversations that hash alike share a stripe.
const STRIPES: usize = 1024;

pub struct Sequencer {
    stripes: Vec<Mutex<()>>,
}

impl Default for Sequencer {
    fn default() -> Self {
        Self { stripes: (0..STRIPES).map(|_| Mutex::new(())).collect() }
    }
}

impl Sequencer {
    pub async fn lock(&self, conversation: &ConversationId) -> MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        conversation.hash(&mut hasher);
        self.stripes[(hasher.finish() as usize) % STRIPES].lock().await
    }
}
