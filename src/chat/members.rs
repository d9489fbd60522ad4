//! Membership: list, add, join, leave, remove, ban, roles and per-member preferences. Every
//! change is recorded as a `system` message in the conversation.

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::{
    Conversation, ConversationId, ConversationType, Member, MemberRole, Page, PageRequest, Scope, UserId,
};
use crate::error::{ApiError, ErrorCode};
use crate::events::{CacheEvent, LiveEvent};
use crate::tenancy::TenantDb;

use super::conversations::{as_member, new_member, require_moderator, visible};
use super::messages::post_system;

/// Membership changes through the chat API: not in direct conversations (fixed members) nor in
/// conversations whose membership follows something else (a code session's chat).
fn not_in_direct(conversation: &Conversation) -> Result<(), ApiError> {
    if conversation.kind == ConversationType::Direct {
        Err(ApiError::new(ErrorCode::Forbidden, "direct conversations have fixed members"))
    } else if let Some(manager) = &conversation.managed_by {
        Err(ApiError::new(ErrorCode::Forbidden, "this conversation's members follow its code session")
            .with_details(serde_json::json!({ "managed_by": manager })))
    } else {
        Ok(())
    }
}

pub async fn list(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    page: PageRequest,
) -> Result<Page<Member>, ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.tenant_db(&caller.scope());
    visible(&db, caller, id).await?;
    let members = db.members().list(id, page.after.as_deref(), page.limit + 1).await?;
    Ok(Page::from_overfetch(members, page.limit, |m| m.user_id.to_string()))
}

/// Adds one user as a member: checks the ban list and reserves a slot under `max_members`.
/// `Ok(None)` when they already are a member.
async fn admit(
    state: &AppState,
    db: &TenantDb,
    conversation: &Conversation,
    user: &UserId,
    role: MemberRole,
) -> Result<Option<Member>, ApiError> {
    if let Some(existing) = db.members().get(&conversation.id, user).await? {
        if existing.is_active() {
            return Ok(None);
        }
        return Err(ApiError::new(ErrorCode::Forbidden, format!("user '{user}' is banned from this conversation"))
            .with_details(serde_json::json!({ "user_id": user.as_str() })));
    }
    if !db.conversations().reserve_member_slot(&conversation.id, conversation.max_members).await? {
        return Err(ApiError::new(ErrorCode::LimitReached, "the conversation is full")
            .with_details(serde_json::json!({ "limit": "max_members", "value": conversation.max_members })));
    }
    // A new member has read what is stored before they join, counted or not yet.
    let mut counted = conversation.clone();
    super::counters::with_head(state, db, &mut counted).await?;
    let member = new_member(&counted, user, role, crate::domain::now());
    if !db.members().insert(&member).await? {
        db.conversations().release_member_slot(&conversation.id).await?;
        return Ok(None);
    }
    announce_joined(state, &member).await;
    Ok(Some(member))
}

/// Tells the member's open sockets to follow the conversation.
pub(super) async fn announce_joined(state: &AppState, member: &Member) {
    let event = LiveEvent::Joined {
        conversation_id: member.conversation_id.clone(),
        user_id: member.user_id.clone(),
        after_seq: member.last_read_seq,
    };
    state.redis.publish_event(&member.tenant_id, &event).await;
}

/// Tells the user's open sockets to stop following the conversation, and every node to forget
/// the user's cached membership (so they cannot send any more).
async fn announce_left(state: &AppState, conversation: &Conversation, user: &UserId) {
    let forget = CacheEvent::Member { conversation_id: conversation.id.clone(), user_id: user.clone() };
    state.caches.forget(&state.redis, &conversation.tenant_id, forget).await;
    let event = LiveEvent::Left { conversation_id: conversation.id.clone(), user_id: user.clone() };
    state.redis.publish_event(&conversation.tenant_id, &event).await;
}

/// Owners and admins add users to a group or channel.
pub async fn add(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    users: Vec<UserId>,
) -> Result<Vec<Member>, ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let (conversation, member) = as_member(&db, caller, id).await?;
    not_in_direct(&conversation)?;
    require_moderator(&member)?;
    let max = state.settings.chat.max_batch_ids;
    if users.is_empty() || users.len() > max {
        return Err(ApiError::validation("user_ids", format!("must list 1 to {max} users")));
    }
    let found = db.users().get_many(&users).await?;
    if let Some(missing) = users.iter().find(|id| !found.iter().any(|u| &u.id == *id && u.is_active())) {
        return Err(ApiError::validation("user_ids", format!("user '{missing}' does not exist or is deactivated")));
    }
    let mut added = Vec::new();
    for user in &users {
        if let Some(member) = admit(state, &db, &conversation, user, MemberRole::Member).await? {
            let event = serde_json::json!({ "event": "member_added", "user_id": user.as_str(), "by": caller.user_id().as_str() });
            post_system(
                state,
                &db,
                &conversation,
                caller.user_id(),
                format!("{} added {}", caller.user_id(), user),
                event,
            )
            .await?;
            added.push(member);
        }
    }
    Ok(added)
}

/// Any user joins a public channel.
pub async fn join(state: &AppState, caller: &ActingUser, id: &ConversationId) -> Result<Member, ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let (conversation, member) = visible(&db, caller, id).await?;
    if let Some(member) = member {
        return Ok(member);
    }
    not_in_direct(&conversation)?;
    let Some(member) = admit(state, &db, &conversation, caller.user_id(), MemberRole::Member).await? else {
        return db.members().get(id, caller.user_id()).await?.ok_or_else(|| ApiError::not_found("member"));
    };
    let event = serde_json::json!({ "event": "member_joined", "user_id": caller.user_id().as_str() });
    post_system(state, &db, &conversation, caller.user_id(), format!("{} joined", caller.user_id()), event).await?;
    Ok(member)
}

/// Whether `actor` may remove or ban `target`: owners anyone, admins plain members.
fn may_remove(actor: &Member, target: &Member) -> Result<(), ApiError> {
    match (actor.role, target.role) {
        (MemberRole::Owner, _) | (MemberRole::Admin, MemberRole::Member) => Ok(()),
        _ => Err(ApiError::new(ErrorCode::Forbidden, "you may not remove this member")),
    }
}

fn last_owner(message: &str) -> ApiError {
    ApiError::new(ErrorCode::LastOwner, message.to_string())
}

/// Removes `user`: leaving when it is the caller, otherwise a moderator's removal. An owner's
/// departure first claims one of the other owners in the conversation's owner count, so the
/// last owner cannot go while others remain, however many owners leave at once.
pub async fn remove(state: &AppState, caller: &ActingUser, id: &ConversationId, user: &UserId) -> Result<(), ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let (conversation, actor) = as_member(&db, caller, id).await?;
    not_in_direct(&conversation)?;
    let target = if user == caller.user_id() {
        actor.clone()
    } else {
        let target =
            db.members().get(id, user).await?.filter(Member::is_active).ok_or_else(|| ApiError::not_found("member"))?;
        may_remove(&actor, &target)?;
        target
    };
    let owner = target.role == MemberRole::Owner;
    let alone = conversation.member_count <= 1;
    if owner && !alone && !db.conversations().release_owner(id).await? {
        return Err(last_owner("the last owner must make someone else owner before leaving"));
    }
    if !db.members().remove(id, user, Some(target.role)).await? {
        if owner && !alone {
            db.conversations().add_owners(id, 1).await?;
        }
        return Ok(());
    }
    if owner && alone {
        db.conversations().add_owners(id, -1).await?;
    }
    db.conversations().release_member_slot(id).await?;
    announce_left(state, &conversation, user).await;
    let (text, event) = if user == caller.user_id() {
        (format!("{user} left"), serde_json::json!({ "event": "member_left", "user_id": user.as_str() }))
    } else {
        (
            format!("{} removed {user}", caller.user_id()),
            serde_json::json!({ "event": "member_removed", "user_id": user.as_str(), "by": caller.user_id().as_str() }),
        )
    };
    post_system(state, &db, &conversation, caller.user_id(), text, event).await?;
    Ok(())
}

/// Removes `user` and keeps them out until unbanned.
pub async fn ban(state: &AppState, caller: &ActingUser, id: &ConversationId, user: &UserId) -> Result<(), ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let (conversation, actor) = as_member(&db, caller, id).await?;
    not_in_direct(&conversation)?;
    require_moderator(&actor)?;
    if user == caller.user_id() {
        return Err(ApiError::validation("user_id", "you cannot ban yourself"));
    }
    db.users().get(user).await?.ok_or_else(|| ApiError::not_found("user"))?;
    let target = db.members().get(id, user).await?;
    if let Some(target) = target.as_ref().filter(|m| m.is_active()) {
        may_remove(&actor, target)?;
    } else if target.is_some() {
        return Ok(());
    }
    let was_owner = target.as_ref().is_some_and(|t| t.role == MemberRole::Owner);
    if was_owner && !db.conversations().release_owner(id).await? {
        return Err(last_owner("a conversation needs at least one owner"));
    }
    let record = new_member(&conversation, user, MemberRole::Member, crate::domain::now());
    let ended = db.members().ban(&record, crate::domain::now()).await?;
    if was_owner && ended.as_ref().is_none_or(|m| m.role != MemberRole::Owner) {
        db.conversations().add_owners(id, 1).await?;
    }
    if ended.is_some() {
        db.conversations().release_member_slot(id).await?;
        announce_left(state, &conversation, user).await;
    }
    let event =
        serde_json::json!({ "event": "member_banned", "user_id": user.as_str(), "by": caller.user_id().as_str() });
    post_system(state, &db, &conversation, caller.user_id(), format!("{} banned {user}", caller.user_id()), event)
        .await?;
    Ok(())
}

pub async fn unban(state: &AppState, caller: &ActingUser, id: &ConversationId, user: &UserId) -> Result<(), ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let (conversation, actor) = as_member(&db, caller, id).await?;
    not_in_direct(&conversation)?;
    require_moderator(&actor)?;
    db.members().unban(id, user).await?;
    Ok(())
}

/// Owners change roles; the last owner cannot demote themselves.
pub async fn set_role(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    user: &UserId,
    role: MemberRole,
) -> Result<Member, ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let (conversation, actor) = as_member(&db, caller, id).await?;
    not_in_direct(&conversation)?;
    if actor.role != MemberRole::Owner {
        return Err(ApiError::new(ErrorCode::Forbidden, "only owners may change roles"));
    }
    let target =
        db.members().get(id, user).await?.filter(Member::is_active).ok_or_else(|| ApiError::not_found("member"))?;
    if target.role == role {
        return Ok(target);
    }
    let demoting_owner = target.role == MemberRole::Owner;
    if demoting_owner && !db.conversations().release_owner(id).await? {
        return Err(last_owner("a conversation needs at least one owner"));
    }
    let Some(updated) = db.members().set_role(id, user, target.role, role).await? else {
        if demoting_owner {
            db.conversations().add_owners(id, 1).await?;
        }
        return Err(ApiError::new(ErrorCode::Conflict, "the member changed meanwhile; retry"));
    };
    if role == MemberRole::Owner {
        db.conversations().add_owners(id, 1).await?;
    }
    let changed = LiveEvent::MemberUpdated { conversation_id: id.clone(), user_id: user.clone(), role };
    state.redis.publish_event(&conversation.tenant_id, &changed).await;
    let role_name = serde_json::to_value(role).unwrap_or_default();
    let event = serde_json::json!({ "event": "role_changed", "user_id": user.as_str(), "role": role_name, "by": caller.user_id().as_str() });
    let text = format!("{} made {user} {}", caller.user_id(), role_name.as_str().unwrap_or(""));
    post_system(state, &db, &conversation, caller.user_id(), text, event).await?;
    Ok(updated)
}

/// One member of a conversation the caller can see.
pub async fn get(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    user: &UserId,
) -> Result<Member, ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.tenant_db(&caller.scope());
    visible(&db, caller, id).await?;
    db.members().get(id, user).await?.filter(Member::is_active).ok_or_else(|| ApiError::not_found("member"))
}

/// A member's own settings for a conversation.
pub async fn set_preferences(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    muted: Option<bool>,
    pinned: Option<bool>,
) -> Result<Member, ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    as_member(&db, caller, id).await?;
    db.members()
        .set_preferences(id, caller.user_id(), muted, pinned)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))
}

/// Makes `user` a member because something else says so (a code session's membership);
/// no permission checks beyond the ban list and the member limit.
/// `moderator` makes them an admin (a session owner moderates its chat), else a plain member.
pub async fn follow(
    state: &AppState,
    db: &TenantDb,
    id: &ConversationId,
    user: &UserId,
    moderator: bool,
) -> Result<(), ApiError> {
    let conversation = db.conversations().get(id).await?.ok_or_else(|| ApiError::not_found("conversation"))?;
    let role = if moderator { MemberRole::Admin } else { MemberRole::Member };
    match db.members().get(id, user).await?.filter(Member::is_active) {
        Some(member) if member.role != MemberRole::Owner && member.role != role => {
            if let Some(updated) = db.members().set_role(id, user, member.role, role).await? {
                let changed =
                    LiveEvent::MemberUpdated { conversation_id: id.clone(), user_id: user.clone(), role: updated.role };
                state.redis.publish_event(&conversation.tenant_id, &changed).await;
            }
        }
        Some(_) => {}
        None => {
            if admit(state, db, &conversation, user, role).await?.is_some() {
                let event = serde_json::json!({ "event": "member_added", "user_id": user.as_str() });
                post_system(state, db, &conversation, user, format!("{user} joined the session"), event).await?;
            }
        }
    }
    Ok(())
}

/// Removes `user` because something else says so (they left a code session).
pub async fn unfollow(state: &AppState, db: &TenantDb, id: &ConversationId, user: &UserId) -> Result<(), ApiError> {
    let conversation = db.conversations().get(id).await?.ok_or_else(|| ApiError::not_found("conversation"))?;
    let Some(member) = db.members().get(id, user).await?.filter(Member::is_active) else { return Ok(()) };
    if !db.members().remove(id, user, Some(member.role)).await? {
        return Ok(());
    }
    if member.role == MemberRole::Owner {
        db.conversations().add_owners(id, -1).await?;
    }
    db.conversations().release_member_slot(id).await?;
    announce_left(state, &conversation, user).await;
    let event = serde_json::json!({ "event": "member_removed", "user_id": user.as_str() });
    post_system(state, db, &conversation, user, format!("{user} left the session"), event).await?;
    Ok(())
}
