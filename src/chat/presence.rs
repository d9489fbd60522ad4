//! Who is online. Presence is derived from live connections on every node (see
//! `events::presence`); users see it for themselves and for users they share a conversation
//! with, servers for anyone in their tenant. Anyone else's presence answers 404, like any id the
//! caller may not see.

use crate::app::AppState;
use crate::auth::{AnyCaller, TenantCaller};
use crate::domain::{ConversationId, Member, Page, PageRequest, Scope, UserId};
use crate::error::ApiError;
use crate::events::{ConnectionView, Presence};

use super::conversations::visible;

fn stale_secs(state: &AppState) -> u64 {
    state.settings.gateway.presence_stale_secs
}

pub async fn of_user(state: &AppState, caller: &AnyCaller, user: &UserId) -> Result<Presence, ApiError> {
    caller.require(Scope::UsersRead)?;
    let db = state.store.tenant_db(&caller.scope());
    db.users().get(user).await?.ok_or_else(|| ApiError::not_found("user"))?;
    if let AnyCaller::User(me) = caller
        && me.user_id() != user
    {
        let mine: Vec<ConversationId> =
            db.members().of_user(me.user_id()).await?.into_iter().map(|m| m.conversation_id).collect();
        if !db.members().member_of_any(user, &mine).await? {
            return Err(ApiError::not_found("user"));
        }
    }
    let mut found = state
        .redis
        .presence(&caller.tenant().id, stale_secs(state))
        .of(std::slice::from_ref(user))
        .await
        .map_err(ApiError::unavailable)?;
    found.pop().ok_or_else(|| ApiError::internal("presence lookup returned nothing"))
}

/// The presence of a conversation's members, a page at a time (by user id).
pub async fn of_members(
    state: &AppState,
    caller: &AnyCaller,
    id: &ConversationId,
    page: PageRequest,
) -> Result<Page<Presence>, ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.tenant_db(&caller.scope());
    match caller {
        AnyCaller::User(me) => {
            visible(&db, me, id).await?;
        }
        AnyCaller::Server(_) => {
            db.conversations().get(id).await?.ok_or_else(|| ApiError::not_found("conversation"))?;
        }
    }
    let members = db.members().list(id, page.after.as_deref(), page.limit + 1).await?;
    let members = Page::from_overfetch(members, page.limit, |m: &Member| m.user_id.to_string());
    let users: Vec<UserId> = members.items.iter().map(|m| m.user_id.clone()).collect();
    let presence =
        state.redis.presence(&caller.tenant().id, stale_secs(state)).of(&users).await.map_err(ApiError::unavailable)?;
    Ok(Page { items: presence, next_cursor: members.next_cursor })
}

/// A user's live connections on all nodes (servers only).
pub async fn connections(
    state: &AppState,
    caller: &TenantCaller,
    user: &UserId,
) -> Result<Vec<ConnectionView>, ApiError> {
    caller.require(Scope::UsersRead)?;
    let db = state.store.tenant_db(&caller.scope());
    db.users().get(user).await?.ok_or_else(|| ApiError::not_found("user"))?;
    state.redis.presence(&caller.tenant.id, stale_secs(state)).connections(user).await.map_err(ApiError::unavailable)
}
