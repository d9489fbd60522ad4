//! Reactions (one per user per emoji) and pins (owners and admins).

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::{ConversationId, Message, Reaction, Scope};
use crate::error::{ApiError, ErrorCode};
use crate::events::LiveEvent;
use crate::tenancy::TenantDb;

use super::conversations::{as_member, require_moderator, visible};
use super::messages::live_message;

/// Longest emoji (or short code such as `:thumbsup:`) in bytes.
const MAX_EMOJI_BYTES: usize = 64;

/// Emoji become field names of the per-message counts, so they may not hold `.`, `$` or spaces.
fn check_emoji(emoji: &str) -> Result<(), ApiError> {
    let ok = !emoji.is_empty()
        && emoji.len() <= MAX_EMOJI_BYTES
        && !emoji.chars().any(|c| c.is_whitespace() || c.is_control() || c == '.' || c == '$');
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation("emoji", format!("must be 1-{MAX_EMOJI_BYTES} bytes without spaces, '.' or '$'")))
    }
}

/// The caller's tenant database once they may react to message `seq` with `emoji`.
async fn reaction_target(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    seq: i64,
    emoji: &str,
) -> Result<TenantDb, ApiError> {
    caller.require(Scope::ChatWrite)?;
    check_emoji(emoji)?;
    let db = state.store.tenant_db(&caller.scope());
    as_member(&db, caller, id).await?;
    live_message(&db, id, seq).await?;
    Ok(db)
}

/// Tells sockets the message's new reaction counts.
async fn announce(state: &AppState, db: &TenantDb, id: &ConversationId, seq: i64) -> Result<(), ApiError> {
    if let Some(message) = db.messages().get(id, seq).await? {
        let tenant = message.tenant_id.clone();
        state.redis.publish_event(&tenant, &LiveEvent::Updated { message }).await;
    }
    Ok(())
}

/// Adds the caller's reaction; adding it again changes nothing.
pub async fn add(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    seq: i64,
    emoji: &str,
) -> Result<(), ApiError> {
    let db = reaction_target(state, caller, id, seq, emoji).await?;
    let reaction = Reaction {
        tenant_id: caller.tenant.id.clone(),
        conversation_id: id.clone(),
        seq,
        emoji: emoji.to_string(),
        user_id: caller.user_id().clone(),
        created_at: crate::domain::now(),
    };
    if db.reactions().add(&reaction).await? {
        if !db.messages().add_reaction_count(id, seq, emoji, 1).await? {
            // Deleted since it was checked: its delete may have cleared reactions before this
            // one was stored, so this one goes too.
            db.reactions().remove(id, seq, emoji, caller.user_id()).await?;
            return Err(ApiError::not_found("message"));
        }
        super::messages::revise(state, db.tenant_id(), id).await;
        announce(state, &db, id, seq).await?;
    }
    Ok(())
}

/// Removes the caller's reaction; removing a missing one changes nothing.
pub async fn remove(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    seq: i64,
    emoji: &str,
) -> Result<(), ApiError> {
    let db = reaction_target(state, caller, id, seq, emoji).await?;
    // A message deleted meanwhile has no counts left to lower.
    if db.reactions().remove(id, seq, emoji, caller.user_id()).await?
        && db.messages().add_reaction_count(id, seq, emoji, -1).await?
    {
        super::messages::revise(state, db.tenant_id(), id).await;
        announce(state, &db, id, seq).await?;
    }
    Ok(())
}

/// Pins or unpins a message (owners and admins), up to `chat.max_pins` per conversation.
pub async fn set_pinned(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    seq: i64,
    pinned: bool,
) -> Result<(), ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let (conversation, member) = as_member(&db, caller, id).await?;
    require_moderator(&member)?;
    if pinned {
        live_message(&db, id, seq).await?;
        let max = state.settings.chat.max_pins;
        if !conversation.pinned_seqs.contains(&seq) && conversation.pinned_seqs.len() >= max {
            return Err(ApiError::new(ErrorCode::LimitReached, format!("at most {max} pinned messages"))
                .with_details(serde_json::json!({ "limit": "max_pins", "value": max })));
        }
    }
    db.conversations().set_pinned(id, seq, pinned).await?;
    super::conversations::forget(state, db.tenant_id(), id).await;
    let event = LiveEvent::Pinned { conversation_id: id.clone(), seq, pinned, by: caller.user_id().clone() };
    state.redis.publish_event(&caller.tenant.id, &event).await;
    Ok(())
}

/// The pinned messages, in seq order.
pub async fn pinned(state: &AppState, caller: &ActingUser, id: &ConversationId) -> Result<Vec<Message>, ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.tenant_db(&caller.scope());
    let (conversation, _) = visible(&db, caller, id).await?;
    Ok(db.messages().get_seqs(id, &conversation.pinned_seqs).await?)
}
