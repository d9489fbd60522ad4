//! Finishing a stored run (see `commit`): what storing implies elsewhere, then the heads,
//! events and answers in the committer's order, and the records handed to the recorder.

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::chat::messages::{last_message_of, share_files};
use crate::domain::{ConversationId, Message};
use crate::error::ApiError;
use crate::events::{LiveEvent, Redis};
use crate::tenancy::TenantDb;

use super::recorder::{Lasts, Recorder};
use super::{Draft, answer_all};

/// A finish's place in its committer's line: it publishes after `after` resolves (or fails: the
/// finish before it gave up), and drops `done` once it has published or given up.
pub(super) struct Turn {
    pub(super) after: Option<oneshot::Receiver<()>>,
    pub(super) done: oneshot::Sender<()>,
}

/// What storing implies elsewhere, for a stored run: reply counts and shared files; then, in its
/// turn, the heads, events and answers; then the newest messages and counters, to the recorder.
pub(super) async fn finish(db: TenantDb, redis: Redis, recorder: Recorder, turn: Turn, stored: Vec<Draft>) {
    let started = Instant::now();
    // Replies raise their parents' counts: those conversations' stored messages change.
    let mut revised: Vec<&ConversationId> =
        stored.iter().filter(|d| d.message.reply_to.is_some()).map(|d| &d.message.conversation_id).collect();
    revised.sort();
    revised.dedup();
    let lasts = newest_of(&stored);
    if let Err(e) = follow_up_all(&db, &stored).await {
        // Some counts may have been raised before the failure.
        if let Err(e) = redis.revise(db.tenant_id(), &revised).await {
            tracing::warn!(error = %e, "could not replace message revisions; retrying");
        }
        // The messages are stored all the same: their conversations must count them.
        recorder.record(lasts).await;
        return answer_all(stored, || ApiError::from(e.clone()));
    }
    if let Some(after) = turn.after {
        let _ = after.await;
    }
    // Heads before any answer, so the sender's next read counts its message in `last_seq`.
    let heads: Vec<(&ConversationId, i64)> =
        lasts.iter().map(|(conversation, last)| (conversation, last.seq)).collect();
    let events: Vec<LiveEvent> = stored.iter().map(|d| LiveEvent::Created { message: d.message.clone() }).collect();
    redis.publish_stored(db.tenant_id(), &heads, &revised, &events).await;
    drop(turn.done);
    // Handed over before the answers, so a node that stops once its requests are answered
    // finds them in its recorders (`flush_records`).
    recorder.record(lasts).await;
    metrics::histogram!("chat_commit_finish_seconds").record(started.elapsed().as_secs_f64());
    for draft in stored {
        let _ = draft.reply.send(Ok((draft.message, true)));
    }
}

/// The run's newest message of each conversation.
fn newest_of(stored: &[Draft]) -> Lasts {
    let mut newest: HashMap<&ConversationId, &Message> = HashMap::new();
    for message in stored.iter().map(|d| &d.message) {
        let kept = newest.entry(&message.conversation_id).or_insert(message);
        if message.seq > kept.seq {
            *kept = message;
        }
    }
    newest.into_iter().map(|(conversation, message)| (conversation.clone(), last_message_of(message))).collect()
}

/// Records the run's replies and shared files.
async fn follow_up_all(db: &TenantDb, stored: &[Draft]) -> Result<(), mongodb::error::Error> {
    for message in stored.iter().map(|d| &d.message) {
        if let Some(parent) = message.reply_to {
            db.messages().add_reply_count(&message.conversation_id, parent, 1).await?;
        }
        share_files(db, message).await?;
    }
    Ok(())
}
