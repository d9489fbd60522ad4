//! Code sessions and their members. Owners manage members and roles; editors change files and
//! the tree; viewers read. A `tenant`-visible session lets every user of the tenant read it as
//! a viewer. Each session has a group conversation whose membership follows the session's.

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::chat::conversations::{self, NewConversation};
use crate::chat::members;
use crate::domain::{
    CodeSession, ConversationType, Page, PageRequest, Scope, SessionId, SessionMember, SessionRole, UserId, Visibility,
    now,
};
use crate::error::{ApiError, ErrorCode};
use crate::events::CacheEvent;
use crate::tenancy::{SessionChanges, TenantDb};

/// What a new session starts with.
pub struct NewSession {
    pub name: String,
    pub description: Option<String>,
    pub language: String,
    pub visibility: Visibility,
    pub tags: Vec<String>,
}

/// The session and the caller's role in it; 404 when the caller may not see it.
pub async fn access(
    db: &TenantDb,
    caller: &ActingUser,
    id: &SessionId,
) -> Result<(CodeSession, SessionRole), ApiError> {
    let session = db.code_sessions().get(id).await?.ok_or_else(|| ApiError::not_found("session"))?;
    match db.code_sessions().member(id, caller.user_id()).await? {
        Some(member) => Ok((session, member.role)),
        None if session.visibility == Visibility::Tenant => Ok((session, SessionRole::Viewer)),
        None => Err(ApiError::not_found("session")),
    }
}

pub fn require(role: SessionRole, needed: SessionRole) -> Result<(), ApiError> {
    if role >= needed {
        Ok(())
    } else {
        let what =
            if needed == SessionRole::Owner { "only owners may do this" } else { "viewers cannot change the session" };
        Err(ApiError::new(ErrorCode::Forbidden, what).with_details(serde_json::json!({ "role": role })))
    }
}

pub async fn create(state: &AppState, caller: &ActingUser, new: NewSession) -> Result<CodeSession, ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let chat = NewConversation {
        kind: ConversationType::Group,
        members: Vec::new(),
        name: Some(new.name.clone()),
        description: Some(format!("Chat of the code session '{}'", new.name)),
        avatar_url: None,
        custom: None,
        private: true,
        max_members: None,
        encryption: Default::default(),
    };
    let (conversation, _) = conversations::create(state, caller, chat).await?;
    let at = now();
    let session = CodeSession {
        id: SessionId::new(),
        tenant_id: caller.tenant.id.clone(),
        name: new.name,
        description: new.description,
        language: new.language,
        visibility: new.visibility,
        owner_id: caller.user_id().clone(),
        active: true,
        tags: new.tags,
        forked_from: None,
        conversation_id: conversation.conversation.id,
        item_count: 0,
        owner_count: 1,
        created_at: at,
        updated_at: at,
        last_accessed_at: at,
    };
    db.conversations().set_managed_by(&session.conversation_id, &format!("code_session:{}", session.id)).await?;
    db.code_sessions().insert(&session).await?;
    let owner = member_record(&session, caller.user_id(), SessionRole::Owner);
    db.code_sessions().add_member(&owner).await?;
    Ok(session)
}

fn member_record(session: &CodeSession, user: &UserId, role: SessionRole) -> SessionMember {
    SessionMember {
        id: SessionMember::key(&session.id, user),
        tenant_id: session.tenant_id.clone(),
        session_id: session.id.clone(),
        user_id: user.clone(),
        role,
        added_at: now(),
    }
}

pub async fn get(
    state: &AppState,
    caller: &ActingUser,
    id: &SessionId,
) -> Result<(CodeSession, SessionRole), ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.tenant_db(&caller.scope());
    let found = access(&db, caller, id).await?;
    db.code_sessions().touch(id, now()).await?;
    Ok(found)
}

/// Sessions the caller is a member of and tenant-visible ones, in id order, with the caller's role.
pub async fn list(
    state: &AppState,
    caller: &ActingUser,
    page: PageRequest,
) -> Result<Page<(CodeSession, SessionRole)>, ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.tenant_db(&caller.scope());
    let mine = db.code_sessions().memberships_of(caller.user_id()).await?;
    let ids: Vec<SessionId> = mine.iter().map(|m| m.session_id.clone()).collect();
    let found = db.code_sessions().page_visible(&ids, page.after.as_deref(), page.limit + 1).await?;
    let page = Page::from_overfetch(found, page.limit, |s| s.id.to_string());
    let role_of = |s: &CodeSession| mine.iter().find(|m| m.session_id == s.id).map_or(SessionRole::Viewer, |m| m.role);
    Ok(Page {
        items: page.items.into_iter().map(|s| (role_of(&s), s)).map(|(r, s)| (s, r)).collect(),
        next_cursor: page.next_cursor,
    })
}

pub async fn update(
    state: &AppState,
    caller: &ActingUser,
    id: &SessionId,
    changes: SessionChanges,
) -> Result<CodeSession, ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let (before, role) = access(&db, caller, id).await?;
    require(role, SessionRole::Owner)?;
    let updated = db.code_sessions().update(id, changes, now()).await?.ok_or_else(|| ApiError::not_found("session"))?;
    // Users who could view only because the whole tenant could are refused on reconnecting.
    if before.visibility == Visibility::Tenant && updated.visibility != Visibility::Tenant {
        access_changed(state, &db, id, None).await;
    }
    Ok(updated)
}

/// Deletes the session, its tree and its documents (owners). The chat stays, as a record.
pub async fn delete(state: &AppState, caller: &ActingUser, id: &SessionId) -> Result<(), ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let (_, role) = access(&db, caller, id).await?;
    require(role, SessionRole::Owner)?;
    Ok(remove(state, &db, id).await?)
}

/// Removes a session with its items and their documents (open ones are closed on every node);
/// its chat stays.
pub(super) async fn remove(state: &AppState, db: &TenantDb, id: &SessionId) -> Result<(), mongodb::error::Error> {
    let items = db.workspace().tree(id).await?;
    for item in &items {
        crate::collab::rooms::reset(state, item).await;
    }
    let ids: Vec<_> = items.iter().map(|i| i.id.clone()).collect();
    db.collab_docs().delete_docs(&ids).await?;
    db.workspace().delete_session(id).await?;
    db.code_sessions().delete(id).await
}

pub async fn list_members(
    state: &AppState,
    caller: &ActingUser,
    id: &SessionId,
) -> Result<Vec<SessionMember>, ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.tenant_db(&caller.scope());
    access(&db, caller, id).await?;
    Ok(db.code_sessions().members(id).await?)
}

/// Adds a member or changes their role (owners); the session's chat follows.
pub async fn put_member(
    state: &AppState,
    caller: &ActingUser,
    id: &SessionId,
    user: &UserId,
    role: SessionRole,
) -> Result<SessionMember, ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let (session, my_role) = access(&db, caller, id).await?;
    require(my_role, SessionRole::Owner)?;
    let target = db.users().get(user).await?.filter(|u| u.is_active());
    target.ok_or_else(|| ApiError::validation("user_id", format!("user '{user}' does not exist or is deactivated")))?;
    if let Some(existing) = db.code_sessions().member(id, user).await? {
        if existing.role == role {
            return Ok(existing);
        }
        let demoting_owner = existing.role == SessionRole::Owner;
        if demoting_owner && !db.code_sessions().release_owner(id).await? {
            return Err(ApiError::new(ErrorCode::LastOwner, "a session needs at least one owner"));
        }
        let Some(updated) = db.code_sessions().set_role(id, user, existing.role, role).await? else {
            if demoting_owner {
                db.code_sessions().add_owner(id).await?;
            }
            return Err(ApiError::new(ErrorCode::Conflict, "the member changed meanwhile; retry"));
        };
        if role == SessionRole::Owner {
            db.code_sessions().add_owner(id).await?;
        }
        members::follow(state, &db, &session.conversation_id, user, role == SessionRole::Owner).await?;
        access_changed(state, &db, id, Some(user)).await;
        return Ok(updated);
    }
    let max = state.settings.collab.max_members;
    if db.code_sessions().members(id).await?.len() >= max {
        return Err(ApiError::new(ErrorCode::LimitReached, format!("at most {max} members per session"))
            .with_details(serde_json::json!({ "limit": "max_members", "value": max })));
    }
    let member = member_record(&session, user, role);
    if !db.code_sessions().add_member(&member).await? {
        return Err(ApiError::new(ErrorCode::Conflict, "the member was added meanwhile; retry"));
    }
    if role == SessionRole::Owner {
        db.code_sessions().add_owner(id).await?;
    }
    members::follow(state, &db, &session.conversation_id, user, role == SessionRole::Owner).await?;
    Ok(member)
}

/// Removes a member (owners; anyone may leave); the last owner cannot go.
pub async fn remove_member(
    state: &AppState,
    caller: &ActingUser,
    id: &SessionId,
    user: &UserId,
) -> Result<(), ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let (session, my_role) = access(&db, caller, id).await?;
    if user != caller.user_id() {
        require(my_role, SessionRole::Owner)?;
    }
    let target = db.code_sessions().member(id, user).await?.ok_or_else(|| ApiError::not_found("member"))?;
    let owner = target.role == SessionRole::Owner;
    if owner && !db.code_sessions().release_owner(id).await? {
        return Err(ApiError::new(ErrorCode::LastOwner, "the last owner must make someone else owner before leaving"));
    }
    if db.code_sessions().remove_member(id, user).await? {
        access_changed(state, &db, id, Some(user)).await;
        members::unfollow(state, &db, &session.conversation_id, user).await?;
    } else if owner {
        db.code_sessions().add_owner(id).await?;
    }
    Ok(())
}

/// Closes `user`'s editors (everyone's without a user) of the session's files on every node, so
/// they reconnect with the role they have now, or are refused: a role is checked on connecting.
async fn access_changed(state: &AppState, db: &TenantDb, session: &SessionId, user: Option<&UserId>) {
    state.rooms.revoke(db.tenant_id(), session, user);
    let origin = state.hub.node_id().to_string();
    let event = CacheEvent::SessionAccess { session_id: session.clone(), user_id: user.cloned(), origin };
    state.redis.publish_cache_event(db.tenant_id(), &event).await;
}
