//! Conversations: create (direct ones are unique per pair), read, change, list the caller's,
//! and the visibility rule every other chat use case goes through.

use chrono::{DateTime, Utc};

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::{
    Conversation, ConversationEncryption, ConversationId, ConversationType, Member, MemberRole, Page, PageRequest,
    RelationshipKind, Scope, TenantId, UserId,
};
use crate::error::{ApiError, ErrorCode};
use crate::events::CacheEvent;
use crate::tenancy::TenantDb;
use crate::tenancy::repos::ConversationChanges;

pub struct NewConversation {
    pub kind: ConversationType,
    /// Other members (the caller is added as owner, or as the second member of a direct).
    pub members: Vec<UserId>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub avatar_url: Option<String>,
    pub custom: Option<serde_json::Value>,
    pub private: bool,
    pub max_members: Option<u32>,
    pub encryption: ConversationEncryption,
}

#[derive(Default)]
pub struct ConversationPatch {
    pub name: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub custom: Option<serde_json::Value>,
    pub private: Option<bool>,
    pub max_members: Option<u32>,
}

/// A conversation as one user sees it, with their membership when they have one.
pub struct ConversationWithMember {
    pub conversation: Conversation,
    pub member: Option<Member>,
    pub unread: Option<u64>,
}

/// The conversation if the caller may see it: members always; anyone for a public channel.
/// Everyone else gets 404, as if it did not exist.
pub async fn visible(
    db: &TenantDb,
    caller: &ActingUser,
    id: &ConversationId,
) -> Result<(Conversation, Option<Member>), ApiError> {
    let (conversations, members) = (db.conversations(), db.members());
    let (conversation, member) = futures_util::try_join!(conversations.get(id), members.get(id, caller.user_id()))?;
    seen_by(conversation, member.filter(Member::is_active))
}

/// The visibility rule of `visible`, on a conversation and membership already read.
fn seen_by(
    conversation: Option<Conversation>,
    member: Option<Member>,
) -> Result<(Conversation, Option<Member>), ApiError> {
    let not_found = || ApiError::not_found("conversation");
    let conversation = conversation.ok_or_else(not_found)?;
    let public = conversation.kind == ConversationType::Channel && !conversation.private;
    if member.is_none() && !public {
        return Err(not_found());
    }
    Ok((conversation, member))
}

/// `as_member`'s answer for a visible conversation: non-members of a public channel get 403.
fn member_of(seen: (Conversation, Option<Member>)) -> Result<(Conversation, Member), ApiError> {
    match seen {
        (conversation, Some(member)) => Ok((conversation, member)),
        (_, None) => Err(ApiError::new(ErrorCode::NotAMember, "join this channel first")),
    }
}

/// The conversation and the caller's active membership; non-members get 404 (or 403
/// `not_a_member` for a public channel they could join).
pub async fn as_member(
    db: &TenantDb,
    caller: &ActingUser,
    id: &ConversationId,
) -> Result<(Conversation, Member), ApiError> {
    member_of(visible(db, caller, id).await?)
}

/// `as_member` for sending, through this node's caches (see `caches`): a send relies only on what
/// never changes about a conversation (its kind, encryption and direct pair) and on the
/// membership being active, which a removal forgets at once.
pub async fn as_sender(
    state: &AppState,
    db: &TenantDb,
    caller: &ActingUser,
    id: &ConversationId,
) -> Result<(Conversation, Member), ApiError> {
    member_of(readable_cached(state, db, caller, id).await?)
}

/// `visible` from this node's copies: the conversation as cached (its settings and pins, not its
/// live counters) and the caller's membership.
pub async fn readable_cached(
    state: &AppState,
    db: &TenantDb,
    caller: &ActingUser,
    id: &ConversationId,
) -> Result<(Conversation, Option<Member>), ApiError> {
    let conversations = db.conversations();
    let conversation = state.caches.conversation(db.tenant_id(), id, conversations.get(id));
    seen_with(state, db, caller, id, conversation).await
}

/// `visible` with the conversation read fresh and its `last_seq` raised to its head (see
/// `counters`), the membership through this node's cache.
pub async fn readable(
    state: &AppState,
    db: &TenantDb,
    caller: &ActingUser,
    id: &ConversationId,
) -> Result<(Conversation, Option<Member>), ApiError> {
    let conversations = db.conversations();
    let (mut conversation, member) = seen_with(state, db, caller, id, conversations.get(id)).await?;
    super::counters::with_head(state, db, &mut conversation).await?;
    Ok((conversation, member))
}

/// `seen_by` for the conversation `load` finds, read beside the caller's cached membership.
async fn seen_with(
    state: &AppState,
    db: &TenantDb,
    caller: &ActingUser,
    id: &ConversationId,
    load: impl Future<Output = Result<Option<Conversation>, mongodb::error::Error>>,
) -> Result<(Conversation, Option<Member>), ApiError> {
    let conversation = async { load.await.map_err(ApiError::from) };
    let (conversation, member) = futures_util::try_join!(conversation, cached_member(state, db, caller, id))?;
    seen_by(conversation, member)
}

async fn cached_member(
    state: &AppState,
    db: &TenantDb,
    caller: &ActingUser,
    id: &ConversationId,
) -> Result<Option<Member>, ApiError> {
    let load = async { db.members().get(id, caller.user_id()).await.map(|m| m.filter(Member::is_active)) };
    Ok(state.caches.membership(db.tenant_id(), id, caller.user_id(), load).await?)
}

pub fn require_moderator(member: &Member) -> Result<(), ApiError> {
    if member.role.can_moderate() {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Forbidden, "only owners and admins may do this"))
    }
}

fn clean_optional(field: &str, value: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    value.map(|v| super::clean_text(field, &v, max)).transpose()
}

fn check_max_members(caller: &ActingUser, requested: Option<u32>) -> Result<u32, ApiError> {
    let cap = caller.tenant.limits.max_conversation_members;
    match requested {
        None => Ok(cap),
        Some(n) if (2..=cap).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::validation("max_members", format!("must be between 2 and {cap}"))),
    }
}

/// Creates a conversation. A direct conversation that already exists is returned instead
/// (`created == false`).
pub async fn create(
    state: &AppState,
    caller: &ActingUser,
    new: NewConversation,
) -> Result<(ConversationWithMember, bool), ApiError> {
    caller.require(Scope::ChatWrite)?;
    let chat = &state.settings.chat;
    let db = state.store.tenant_db(&caller.scope());
    let mut others: Vec<UserId> = new.members.into_iter().filter(|id| id != caller.user_id()).collect();
    others.sort();
    others.dedup();
    if others.len() > chat.max_batch_ids {
        return Err(ApiError::validation("members", format!("at most {} members at creation", chat.max_batch_ids)));
    }
    let max_members = check_max_members(caller, new.max_members)?;
    if others.len() + 1 > max_members as usize {
        return Err(ApiError::validation("members", format!("more than max_members ({max_members})")));
    }
    if new.kind == ConversationType::Direct && others.len() != 1 {
        return Err(ApiError::validation("members", "a direct conversation has exactly one other member"));
    }
    let found = db.users().get_many(&others).await?;
    let missing: Vec<&str> =
        others.iter().filter(|id| !found.iter().any(|u| &u.id == *id && u.is_active())).map(|id| id.as_str()).collect();
    if !missing.is_empty() {
        return Err(ApiError::new(ErrorCode::ValidationFailed, "some members do not exist or are deactivated")
            .with_details(serde_json::json!({ "fields": [{ "field": "members", "message": "unknown or deactivated users" }], "user_ids": missing })));
    }
    let now = crate::domain::now();
    let id = ConversationId::new();
    let unique_key = match new.kind {
        ConversationType::Direct => {
            let peer = &others[0];
            if db.relationships().exists(peer, caller.user_id(), RelationshipKind::Block).await? {
                return Err(ApiError::new(ErrorCode::Blocked, "this user has blocked you"));
            }
            Conversation::direct_key(caller.user_id(), peer)
        }
        _ => id.to_string(),
    };
    if new.kind == ConversationType::Direct
        && let Some(existing) = db.conversations().get_by_unique_key(&unique_key).await?
    {
        return Ok((with_member(state, &db, caller, existing).await?, false));
    }
    let conversation = Conversation {
        id: id.clone(),
        tenant_id: caller.tenant.id.clone(),
        kind: new.kind,
        unique_key: unique_key.clone(),
        name: clean_optional("name", new.name, chat.max_name_chars)?,
        description: clean_optional("description", new.description, chat.max_description_chars)?,
        avatar_url: super::clean_url("avatar_url", new.avatar_url)?,
        custom: super::clean_custom("custom", new.custom, chat.max_custom_data_bytes)?,
        private: new.kind == ConversationType::Channel && new.private,
        encryption: new.encryption,
        max_members,
        member_count: others.len() as u32 + 1,
        owner_count: u32::from(new.kind != ConversationType::Direct),
        created_by: caller.user_id().clone(),
        last_seq: 0,
        last_message: None,
        last_activity_at: now,
        pinned_seqs: Vec::new(),
        managed_by: None,
        created_at: now,
        updated_at: now,
    };
    // Members first: once the conversation is visible, its members are complete.
    let creator_role = if new.kind == ConversationType::Direct { MemberRole::Member } else { MemberRole::Owner };
    let mut members = vec![new_member(&conversation, caller.user_id(), creator_role, now)];
    members.extend(others.iter().map(|user| new_member(&conversation, user, MemberRole::Member, now)));
    for member in &members {
        db.members().insert(member).await?;
    }
    if !db.conversations().insert(&conversation).await? {
        // A concurrent request created the same direct conversation first: drop our members.
        for member in &members {
            db.members().remove(&conversation.id, &member.user_id, None).await?;
        }
        let existing = db
            .conversations()
            .get_by_unique_key(&unique_key)
            .await?
            .ok_or_else(|| ApiError::not_found("conversation"))?;
        return Ok((with_member(state, &db, caller, existing).await?, false));
    }
    for member in &members {
        super::members::announce_joined(state, member).await;
    }
    let creator = members.swap_remove(0);
    Ok((ConversationWithMember { conversation, member: Some(creator), unread: Some(0) }, true))
}

pub fn new_member(conversation: &Conversation, user: &UserId, role: MemberRole, now: DateTime<Utc>) -> Member {
    Member {
        id: Member::key(&conversation.id, user),
        tenant_id: conversation.tenant_id.clone(),
        conversation_id: conversation.id.clone(),
        user_id: user.clone(),
        role,
        joined_at: now,
        muted: false,
        pinned: false,
        // A new member has nothing unread from before they joined.
        last_read_seq: conversation.last_seq,
        last_delivered_seq: conversation.last_seq,
        banned_at: None,
    }
}

/// The conversation as the caller sees it, its `last_seq` raised to its head (see `counters`).
async fn with_member(
    state: &AppState,
    db: &TenantDb,
    caller: &ActingUser,
    mut conversation: Conversation,
) -> Result<ConversationWithMember, ApiError> {
    super::counters::with_head(state, db, &mut conversation).await?;
    let member = db.members().get(&conversation.id, caller.user_id()).await?.filter(Member::is_active);
    let unread = match &member {
        Some(m) => Some(
            db.messages()
                .count_unread(&conversation.id, caller.user_id(), m.last_read_seq, conversation.last_seq)
                .await?,
        ),
        None => None,
    };
    Ok(ConversationWithMember { conversation, member, unread })
}

pub async fn get(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
) -> Result<ConversationWithMember, ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.request_db(&caller.scope());
    let (conversation, _) = visible(&db, caller, id).await?;
    with_member(state, &db, caller, conversation).await
}

/// Owners and admins change a group's or channel's profile and settings.
pub async fn update(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    patch: ConversationPatch,
) -> Result<ConversationWithMember, ApiError> {
    caller.require(Scope::ChatWrite)?;
    let chat = &state.settings.chat;
    let db = state.store.tenant_db(&caller.scope());
    let (conversation, member) = as_member(&db, caller, id).await?;
    if conversation.kind == ConversationType::Direct {
        return Err(ApiError::new(ErrorCode::Forbidden, "direct conversations cannot be changed"));
    }
    require_moderator(&member)?;
    if let Some(max) = patch.max_members {
        check_max_members(caller, Some(max))?;
        if max < conversation.member_count {
            return Err(ApiError::validation("max_members", "is below the current member count"));
        }
    }
    let changes = ConversationChanges {
        name: patch.name.map(|n| clean_optional("name", n, chat.max_name_chars)).transpose()?,
        description: patch
            .description
            .map(|d| clean_optional("description", d, chat.max_description_chars))
            .transpose()?,
        avatar_url: patch.avatar_url.map(|a| super::clean_url("avatar_url", a)).transpose()?,
        custom: patch.custom.map(|c| super::clean_custom("custom", Some(c), chat.max_custom_data_bytes)).transpose()?,
        private: patch.private.filter(|_| conversation.kind == ConversationType::Channel),
        max_members: patch.max_members,
    };
    let updated = db
        .conversations()
        .update(id, changes, crate::domain::now())
        .await?
        .ok_or_else(|| ApiError::not_found("conversation"))?;
    forget(state, db.tenant_id(), id).await;
    with_member(state, &db, caller, updated).await
}

/// Makes every node read the conversation again: its settings or pins changed.
pub async fn forget(state: &AppState, tenant: &TenantId, id: &ConversationId) {
    let event = CacheEvent::Conversation { conversation_id: id.clone() };
    state.caches.forget(&state.redis, tenant, event).await;
}

/// The caller's conversations, most recently active first, with unread counts.
pub async fn list_mine(
    state: &AppState,
    caller: &ActingUser,
    page: PageRequest,
) -> Result<Page<ConversationWithMember>, ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.request_db(&caller.scope());
    let memberships = db.members().of_user(caller.user_id()).await?;
    let ids: Vec<ConversationId> = memberships.iter().map(|m| m.conversation_id.clone()).collect();
    let cursor = match page.after.as_deref() {
        Some(raw) => Some(parse_activity_cursor(raw)?),
        None => None,
    };
    let before = cursor.as_ref().map(|(at, id)| (*at, id.as_str()));
    let conversations = db.conversations().page_by_activity(&ids, before, page.limit + 1).await?;
    let mut page = Page::from_overfetch(conversations, page.limit, |c| {
        format!("{}_{}", c.last_activity_at.timestamp_millis(), c.id)
    });
    super::counters::with_heads(state, &db, &mut page.items).await?;
    let mut items = Vec::with_capacity(page.items.len());
    for conversation in page.items {
        let member = memberships.iter().find(|m| m.conversation_id == conversation.id).cloned();
        let unread = match &member {
            Some(m) => {
                db.messages()
                    .count_unread(&conversation.id, caller.user_id(), m.last_read_seq, conversation.last_seq)
                    .await?
            }
            None => 0,
        };
        items.push(ConversationWithMember { conversation, member, unread: Some(unread) });
    }
    Ok(Page { items, next_cursor: page.next_cursor })
}

fn parse_activity_cursor(raw: &str) -> Result<(DateTime<Utc>, String), ApiError> {
    let invalid = || {
        ApiError::new(ErrorCode::InvalidRequest, "invalid cursor").with_details(serde_json::json!({ "param": "after" }))
    };
    let (millis, id) = raw.split_once('_').ok_or_else(invalid)?;
    let at = millis.parse::<i64>().ok().and_then(DateTime::from_timestamp_millis).ok_or_else(invalid)?;
    Ok((at, id.to_string()))
}
