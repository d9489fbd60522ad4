//! A conversation's `last_seq` as the code that numbers sends and the code that reads counts
//! see it.
//!
//! The counter in the conversation's record is written behind the answers (`commit::recorder`),
//! so it may be short of what is stored for up to `chat.record_interval_ms` (longer if the
//! database refused the record, or if a node died before writing it). Every send raises its
//! conversation's head in Redis before it is answered, so readers take the greater of the
//! counter and the head; committers, which must never number a send below what is stored, read
//! what is stored past the counter instead.
//!
//! A node that dies without stopping loses the records it held. Its conversations' heads still
//! count their messages, and their next send records them; until then, a reader that finds a
//! head past the counter of a conversation whose newest recorded message is older than
//! `chat.record_repair_after_ms` records the newest stored message itself.

use std::collections::HashMap;
use std::time::Duration;

use crate::app::AppState;
use crate::domain::{Conversation, ConversationId, TenantId};
use crate::error::ApiError;
use crate::events::Redis;
use crate::tenancy::TenantDb;
use crate::tenancy::repos::SameSeq;

/// How long a read waits for heads from Redis before it makes do with the recorded counters (a
/// stalled Redis must not hold reads up for `redis.timeout_ms`).
const HEADS_WAIT: Duration = Duration::from_millis(100);
/// Most reads of what is stored past the counters one committer runs at once.
const TAIL_READS_IN_FLIGHT: usize = 16;

/// The newest stored seq of each of `ids` that exists: its counter, or what is stored past it.
/// One query for the counters, then up to `TAIL_READS_IN_FLIGHT` reads of the messages past them.
pub(super) async fn stored_heads(
    db: &TenantDb,
    ids: &[&ConversationId],
) -> Result<HashMap<ConversationId, i64>, mongodb::error::Error> {
    use futures_util::{StreamExt, TryStreamExt};
    let counted = db.conversations().heads(ids).await?;
    let messages = db.messages();
    futures_util::stream::iter(counted)
        .map(|(id, counted)| {
            let messages = &messages;
            async move {
                let newest = messages.newest_seq_past(&id, counted).await?;
                Ok::<_, mongodb::error::Error>((id, newest))
            }
        })
        .buffer_unordered(TAIL_READS_IN_FLIGHT)
        .try_collect()
        .await
}

/// Raises each conversation's `last_seq` to its head in Redis. Without an answer from Redis in
/// `HEADS_WAIT`, the recorded counters stand. Records a node lost are written again (see above).
pub async fn with_heads(state: &AppState, db: &TenantDb, conversations: &mut [Conversation]) -> Result<(), ApiError> {
    let recorded: Vec<i64> = conversations.iter().map(|c| c.last_seq).collect();
    let counters = conversations.iter_mut().map(|c| (&c.id, &mut c.last_seq)).collect();
    raise_to_heads(&state.redis, db.tenant_id(), counters).await;
    let repair_after = chrono::Duration::milliseconds(state.settings.chat.record_repair_after_ms as i64);
    let lost_before = crate::domain::now() - repair_after;
    for (conversation, recorded) in conversations.iter().zip(recorded) {
        if conversation.last_seq > recorded && conversation.last_activity_at < lost_before {
            record_newest(db, &conversation.id, conversation.last_seq).await?;
        }
    }
    Ok(())
}

/// `with_heads` for one conversation.
pub async fn with_head(state: &AppState, db: &TenantDb, conversation: &mut Conversation) -> Result<(), ApiError> {
    with_heads(state, db, std::slice::from_mut(conversation)).await
}

/// Records the message at `head` as the conversation's newest, unless a newer one is recorded.
async fn record_newest(db: &TenantDb, id: &ConversationId, head: i64) -> Result<(), ApiError> {
    let Some(newest) = db.messages().get(id, head).await? else { return Ok(()) };
    tracing::info!(conversation = %id, seq = head, "recording a newest message a node did not record");
    let last = super::messages::last_message_of(&newest);
    db.conversations().record_last_message(id, &last, SameSeq::Keep).await?;
    Ok(())
}

/// Raises each conversation's counter to its head in Redis, as `with_heads` does.
pub async fn raise_to_heads(redis: &Redis, tenant: &TenantId, counters: Vec<(&ConversationId, &mut i64)>) {
    let ids: Vec<&ConversationId> = counters.iter().map(|(id, _)| *id).collect();
    let heads = match tokio::time::timeout(HEADS_WAIT, redis.heads(tenant, &ids)).await {
        Ok(Ok(heads)) => heads,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not read conversation heads");
            return;
        }
        Err(_) => return,
    };
    for ((_, counter), head) in counters.into_iter().zip(heads) {
        *counter = (*counter).max(head.unwrap_or(0));
    }
}
