//! Read and delivered marks (monotonic) and unread counts.
//!
//! Unread = messages after the member's `last_read_seq`, not sent by them, not deleted. It is
//! counted from the messages themselves over the exact seq range, so it is always right.

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::{ConversationId, Member, Scope};
use crate::error::ApiError;
use crate::events::LiveEvent;

use super::conversations::as_member;

pub struct ReadState {
    pub member: Member,
    pub last_seq: i64,
    pub unread: u64,
}

pub struct UnreadSummary {
    pub total: u64,
    /// (conversation, unread, last_read_seq, last_seq) for conversations with unread messages.
    pub conversations: Vec<(ConversationId, u64, i64, i64)>,
}

/// Moves the caller's read (`read == true`) or delivered mark to `seq`; lower marks are ignored
/// and marks past the newest message stop at it.
pub async fn mark(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    seq: i64,
    read: bool,
) -> Result<ReadState, ApiError> {
    caller.require(Scope::ChatWrite)?;
    if seq < 0 {
        return Err(ApiError::validation("seq", "must not be negative"));
    }
    let db = state.store.tenant_db(&caller.scope());
    let (mut conversation, _) = as_member(&db, caller, id).await?;
    super::counters::with_head(state, &db, &mut conversation).await?;
    let seq = seq.min(conversation.last_seq);
    let members = db.members();
    let member = if read {
        members.mark_read(id, caller.user_id(), seq).await?
    } else {
        members.mark_delivered(id, caller.user_id(), seq).await?
    }
    .ok_or_else(|| ApiError::not_found("member"))?;
    if read && caller.user.settings.read_receipts {
        let event = LiveEvent::Read {
            conversation_id: id.clone(),
            user_id: caller.user_id().clone(),
            last_read_seq: member.last_read_seq,
        };
        state.redis.publish_event(&caller.tenant.id, &event).await;
    }
    let unread = db.messages().count_unread(id, caller.user_id(), member.last_read_seq, conversation.last_seq).await?;
    Ok(ReadState { member, last_seq: conversation.last_seq, unread })
}

/// Unread totals over every conversation the caller belongs to.
pub async fn unread(state: &AppState, caller: &ActingUser) -> Result<UnreadSummary, ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.request_db(&caller.scope());
    let memberships = db.members().of_user(caller.user_id()).await?;
    let ids: Vec<ConversationId> = memberships.iter().map(|m| m.conversation_id.clone()).collect();
    let mut conversations = db.conversations().get_many(&ids).await?;
    super::counters::with_heads(state, &db, &mut conversations).await?;
    let mut summary = UnreadSummary { total: 0, conversations: Vec::new() };
    for conversation in conversations {
        let Some(member) = memberships.iter().find(|m| m.conversation_id == conversation.id) else { continue };
        if member.last_read_seq >= conversation.last_seq {
            continue;
        }
        let count = db
            .messages()
            .count_unread(&conversation.id, caller.user_id(), member.last_read_seq, conversation.last_seq)
            .await?;
        if count > 0 {
            summary.total += count;
            summary.conversations.push((conversation.id, count, member.last_read_seq, conversation.last_seq));
        }
    }
    summary.conversations.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(summary)
}
