//! Search indexing behind the sends: the words of stored messages go into search blocks
//! (`tenancy::repos::search_blocks`) shortly after their senders are answered, many messages of a
//! conversation at once, so a busy conversation's repeated words cost one index entry per block
//! instead of one per message.
//!
//! Search never waits for it. Each conversation records how far it is indexed
//! (`search_indexed_upto`), and every search reads the messages past that mark directly
//! (`search`), so a message is found as soon as it is stored. Each node indexes the
//! conversations its committers stored to, every `chat.search_index_interval_ms`; a search or
//! an edit that meets a conversation further behind (a node stopped before indexing, or messages
//! from before search blocks) indexes it first.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};

use crate::domain::{ConversationId, TenantId};
use crate::tenancy::TenantDb;
use crate::tenancy::repos::SearchBlock;

/// Most messages one search block covers.
pub const BLOCK_MAX_MESSAGES: i64 = 256;
/// Conversations whose messages are read at once while indexing.
const READS_IN_FLIGHT: usize = 8;

/// The conversations each tenant's sends on this node stored to since they were last indexed.
pub struct SearchIndexer {
    pending: Mutex<HashMap<TenantId, Pending>>,
    interval: Duration,
}

struct Pending {
    db: TenantDb,
    conversations: HashSet<ConversationId>,
}

impl SearchIndexer {
    pub fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Self { pending: Mutex::default(), interval })
    }

    /// Notes that `conversations` have new messages; the tenant's indexing task (started here on
    /// the current runtime when it has none) takes them at its next round.
    pub fn touch<'a>(self: &Arc<Self>, db: &TenantDb, conversations: impl IntoIterator<Item = &'a ConversationId>) {
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tenant = db.tenant_id().clone();
        let start = !pending.contains_key(&tenant);
        let entry =
            pending.entry(tenant.clone()).or_insert_with(|| Pending { db: db.clone(), conversations: HashSet::new() });
        entry.conversations.extend(conversations.into_iter().cloned());
        if start {
            tokio::spawn(self.clone().run(tenant));
        }
    }

    /// Indexes the tenant's noted conversations every `interval` until a round finds none.
    async fn run(self: Arc<Self>, tenant: TenantId) {
        loop {
            tokio::time::sleep(self.interval).await;
            let (db, conversations) = {
                let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let Some(entry) = pending.get_mut(&tenant) else { return };
                if entry.conversations.is_empty() {
                    pending.remove(&tenant);
                    return;
                }
                (entry.db.clone(), entry.conversations.drain().collect::<Vec<_>>())
            };
            let left = match index(&db, &conversations).await {
                Ok(left) => left,
                Err(e) => {
                    tracing::warn!(error = %e, tenant = %tenant, "search indexing failed; retrying");
                    conversations
                }
            };
            if !left.is_empty() {
                let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(entry) = pending.get_mut(&tenant) {
                    entry.conversations.extend(left);
                }
            }
        }
    }
}

/// Indexes up to `BLOCK_MAX_MESSAGES` messages of each of `conversations` past its mark, as one
/// block each; returns the conversations with more left to index.
pub async fn index(
    db: &TenantDb,
    conversations: &[ConversationId],
) -> Result<Vec<ConversationId>, mongodb::error::Error> {
    let marks = db.conversations().search_marks(conversations).await?;
    let behind: Vec<(ConversationId, i64, i64)> = marks
        .iter()
        .filter(|(_, m)| m.last_seq > m.indexed_upto)
        .map(|(id, m)| (id.clone(), m.indexed_upto + 1, m.last_seq.min(m.indexed_upto + BLOCK_MAX_MESSAGES)))
        .collect();
    let blocks: Vec<SearchBlock> = futures_util::stream::iter(behind)
        .map(|(id, from, to)| read_block(db, id, from, to))
        .buffer_unordered(READS_IN_FLIGHT)
        .try_collect()
        .await?;
    // A block another writer stored first from the same mark may end elsewhere: the mark follows it.
    let taken: HashMap<ConversationId, i64> =
        db.search_blocks().insert(&blocks).await?.into_iter().map(|b| (b.conversation_id, b.to_seq)).collect();
    let reached: Vec<(&ConversationId, i64)> = blocks
        .iter()
        .map(|b| (&b.conversation_id, taken.get(&b.conversation_id).copied().unwrap_or(b.to_seq)))
        .collect();
    db.conversations().advance_search_marks(&reached).await?;
    Ok(reached.into_iter().filter(|(id, upto)| marks[*id].last_seq > *upto).map(|(id, _)| id.clone()).collect())
}

async fn read_block(
    db: &TenantDb,
    conversation: ConversationId,
    from: i64,
    to: i64,
) -> Result<SearchBlock, mongodb::error::Error> {
    let messages = db.messages().range(&conversation, from, to).await?;
    Ok(SearchBlock::of(&conversation, from, to, &messages))
}

/// Indexes `conversation` until its mark reaches `seq` (or its last seq), at most `rounds` blocks.
pub async fn index_through(
    db: &TenantDb,
    conversation: &ConversationId,
    seq: i64,
    rounds: usize,
) -> Result<(), mongodb::error::Error> {
    let one = [conversation.clone()];
    for _ in 0..rounds {
        let mark = db.conversations().search_marks(&one).await?.remove(conversation);
        if mark.is_none_or(|m| m.indexed_upto >= seq.min(m.last_seq)) {
            return Ok(());
        }
        index(db, &one).await?;
    }
    Ok(())
}
