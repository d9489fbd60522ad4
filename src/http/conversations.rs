//! Conversations, their members and read marks.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use validator::Validate;

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::chat::conversations::{self as use_cases, ConversationPatch, ConversationWithMember, NewConversation};
use crate::chat::{members, receipts};
use crate::domain::{
    ConversationEncryption, ConversationId, ConversationType, LastMessage, Member, MemberRole, MessageKind, UserId,
};
use crate::error::ApiError;

use super::extract::{PageQuery, ValidJson, double_option, path_id};
use super::openapi::ErrorResponses;
use super::users::user_path;

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversationRequest {
    #[serde(rename = "type")]
    pub kind: ConversationType,
    /// The other members; for `direct`, exactly one.
    #[serde(default)]
    pub members: Vec<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub avatar_url: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub custom: Option<serde_json::Value>,
    /// Channels only: invisible to and not joinable by non-members.
    #[serde(default)]
    pub private: bool,
    /// Default: the tenant's `max_conversation_members`.
    pub max_members: Option<u32>,
    /// `e2e`: every message must be an envelope (see docs/e2e.md); fixed at creation.
    #[serde(default)]
    pub encryption: ConversationEncryption,
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConversationRequest {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub avatar_url: Option<Option<String>>,
    #[schema(value_type = Option<Object>)]
    pub custom: Option<serde_json::Value>,
    pub private: Option<bool>,
    pub max_members: Option<u32>,
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMembersRequest {
    pub user_ids: Vec<String>,
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMemberRequest {
    /// Owners only.
    pub role: Option<MemberRole>,
    /// The caller's own notification mute for this conversation.
    pub muted: Option<bool>,
    /// The caller's own pin of this conversation.
    pub pinned: Option<bool>,
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRequest {
    /// The highest seq seen; a lower mark than the current one is ignored.
    pub seq: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MembershipView {
    pub role: MemberRole,
    pub joined_at: DateTime<Utc>,
    pub muted: bool,
    pub pinned: bool,
    pub last_read_seq: i64,
    pub last_delivered_seq: i64,
    pub unread_count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: ConversationType,
    pub name: Option<String>,
    pub description: Option<String>,
    pub avatar_url: Option<String>,
    #[schema(value_type = Object)]
    pub custom: serde_json::Value,
    pub private: bool,
    pub encryption: ConversationEncryption,
    pub max_members: u32,
    pub member_count: u32,
    pub created_by: String,
    /// Messages are numbered 1..=last_seq without gaps; counts every message already answered.
    pub last_seq: i64,
    /// The newest message, recorded behind the sends: under load it may trail `last_seq` for up
    /// to the server's record interval (100 ms by default).
    pub last_message: Option<LastMessageView>,
    /// When `last_message` was sent (or the conversation created); recorded with it.
    pub last_activity_at: DateTime<Utc>,
    pub pinned_seqs: Vec<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The caller's membership; absent when they only see a public channel.
    pub membership: Option<MembershipView>,
}

/// The newest message of a conversation, as lists show it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = LastMessage)]
pub struct LastMessageView {
    pub seq: i64,
    pub sender_id: String,
    pub kind: MessageKind,
    /// The first characters of the text; empty for deleted or encrypted messages.
    pub preview: String,
    pub created_at: DateTime<Utc>,
}

impl From<LastMessage> for LastMessageView {
    fn from(last: LastMessage) -> Self {
        Self {
            seq: last.seq,
            sender_id: last.sender_id.to_string(),
            kind: last.kind,
            preview: last.preview,
            created_at: last.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationPage {
    pub items: Vec<ConversationView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub user_id: String,
    pub role: MemberRole,
    pub joined_at: DateTime<Utc>,
    pub last_read_seq: i64,
    pub last_delivered_seq: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberPage {
    pub items: Vec<MemberView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadStateView {
    pub last_read_seq: i64,
    pub last_delivered_seq: i64,
    pub last_seq: i64,
    pub unread_count: u64,
}

impl From<ConversationWithMember> for ConversationView {
    fn from(view: ConversationWithMember) -> Self {
        let c = view.conversation;
        let unread = view.unread.unwrap_or(0);
        Self {
            id: c.id.to_string(),
            kind: c.kind,
            name: c.name,
            description: c.description,
            avatar_url: c.avatar_url,
            custom: c.custom,
            private: c.private,
            encryption: c.encryption,
            max_members: c.max_members,
            member_count: c.member_count,
            created_by: c.created_by.to_string(),
            last_seq: c.last_seq,
            last_message: c.last_message.map(LastMessageView::from),
            last_activity_at: c.last_activity_at,
            pinned_seqs: c.pinned_seqs,
            created_at: c.created_at,
            updated_at: c.updated_at,
            membership: view.member.map(|m| MembershipView {
                role: m.role,
                joined_at: m.joined_at,
                muted: m.muted,
                pinned: m.pinned,
                last_read_seq: m.last_read_seq,
                last_delivered_seq: m.last_delivered_seq,
                unread_count: unread,
            }),
        }
    }
}

impl From<Member> for MemberView {
    fn from(m: Member) -> Self {
        Self {
            user_id: m.user_id.to_string(),
            role: m.role,
            joined_at: m.joined_at,
            last_read_seq: m.last_read_seq,
            last_delivered_seq: m.last_delivered_seq,
        }
    }
}

pub fn conversation_path(raw: &str) -> Result<ConversationId, ApiError> {
    path_id(raw, "conversation_id", ConversationId::parse)
}

fn user_ids(field: &str, raw: Vec<String>) -> Result<Vec<UserId>, ApiError> {
    raw.iter().map(|id| UserId::parse(id).map_err(|e| ApiError::validation(field, e.0))).collect()
}

/// Start a conversation. An existing direct conversation of the same pair is returned with 200.
#[utoipa::path(post, path = "/v1/conversations", tag = "conversations", security(("user_jwt" = []), ("api_key" = [])),
    params(("user_id" = Option<String>, Query, description = "With a server key: the user to act as")),
    request_body = CreateConversationRequest,
    responses((status = 201, body = ConversationView), (status = 200, body = ConversationView), ErrorResponses))]
pub async fn create_conversation(
    caller: ActingUser,
    state: web::Data<AppState>,
    ValidJson(body): ValidJson<CreateConversationRequest>,
) -> Result<HttpResponse, ApiError> {
    let new = NewConversation {
        kind: body.kind,
        members: user_ids("members", body.members)?,
        name: body.name,
        description: body.description,
        avatar_url: body.avatar_url,
        custom: body.custom,
        private: body.private,
        max_members: body.max_members,
        encryption: body.encryption,
    };
    let (view, created) = use_cases::create(&state, &caller, new).await?;
    let mut response = if created { HttpResponse::Created() } else { HttpResponse::Ok() };
    Ok(response.json(ConversationView::from(view)))
}

/// Get a conversation the caller belongs to, or a public channel.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}", tag = "conversations",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path)),
    responses((status = 200, body = ConversationView), ErrorResponses))]
pub async fn get_conversation(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let view = use_cases::get(&state, &caller, &conversation_path(&path)?).await?;
    Ok(HttpResponse::Ok().json(ConversationView::from(view)))
}

/// Change a group's or channel's profile (owners and admins).
#[utoipa::path(patch, path = "/v1/conversations/{conversation_id}", tag = "conversations",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path)),
    request_body = UpdateConversationRequest, responses((status = 200, body = ConversationView), ErrorResponses))]
pub async fn update_conversation(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJson(body): ValidJson<UpdateConversationRequest>,
) -> Result<HttpResponse, ApiError> {
    let patch = ConversationPatch {
        name: body.name,
        description: body.description,
        avatar_url: body.avatar_url,
        custom: body.custom,
        private: body.private,
        max_members: body.max_members,
    };
    let view = use_cases::update(&state, &caller, &conversation_path(&path)?, patch).await?;
    Ok(HttpResponse::Ok().json(ConversationView::from(view)))
}

/// Join a public channel.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/join", tag = "members",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path)),
    responses((status = 200, body = MemberView), ErrorResponses))]
pub async fn join(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let member = members::join(&state, &caller, &conversation_path(&path)?).await?;
    Ok(HttpResponse::Ok().json(MemberView::from(member)))
}

/// List members in user-id order.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/members", tag = "members",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path), PageQuery),
    responses((status = 200, body = MemberPage), ErrorResponses))]
pub async fn list_members(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.into_inner().into_page_request(&state)?;
    let page = members::list(&state, &caller, &conversation_path(&path)?, page).await?.map(MemberView::from);
    Ok(HttpResponse::Ok().json(MemberPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Add members (owners and admins). Users who already are members are skipped.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/members", tag = "members",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path)),
    request_body = AddMembersRequest, responses((status = 200, body = MemberPage), ErrorResponses))]
pub async fn add_members(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJson(body): ValidJson<AddMembersRequest>,
) -> Result<HttpResponse, ApiError> {
    let added = members::add(&state, &caller, &conversation_path(&path)?, user_ids("user_ids", body.user_ids)?).await?;
    Ok(HttpResponse::Ok()
        .json(MemberPage { items: added.into_iter().map(MemberView::from).collect(), next_cursor: None }))
}

/// Change a member's role (owners), or your own `muted` / `pinned`.
#[utoipa::path(patch, path = "/v1/conversations/{conversation_id}/members/{user_id}", tag = "members",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path), ("user_id" = String, Path)),
    request_body = UpdateMemberRequest, responses((status = 200, body = MemberView), ErrorResponses))]
pub async fn update_member(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    ValidJson(body): ValidJson<UpdateMemberRequest>,
) -> Result<HttpResponse, ApiError> {
    let (id, user) = (conversation_path(&path.0)?, user_path(&path.1)?);
    let mut member = None;
    if body.muted.is_some() || body.pinned.is_some() {
        if &user != caller.user_id() {
            return Err(ApiError::new(crate::error::ErrorCode::Forbidden, "muted and pinned are each member's own"));
        }
        member = Some(members::set_preferences(&state, &caller, &id, body.muted, body.pinned).await?);
    }
    if let Some(role) = body.role {
        member = Some(members::set_role(&state, &caller, &id, &user, role).await?);
    }
    let member = match member {
        Some(member) => member,
        None => members::get(&state, &caller, &id, &user).await?,
    };
    Ok(HttpResponse::Ok().json(MemberView::from(member)))
}

/// Remove a member (owners: anyone; admins: members), or leave when it is yourself.
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/members/{user_id}", tag = "members",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path), ("user_id" = String, Path)),
    responses((status = 204, description = "Removed"), ErrorResponses))]
pub async fn remove_member(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    members::remove(&state, &caller, &conversation_path(&path.0)?, &user_path(&path.1)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Ban a user: removed and kept out until unbanned (owners and admins).
#[utoipa::path(put, path = "/v1/conversations/{conversation_id}/bans/{user_id}", tag = "members",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path), ("user_id" = String, Path)),
    responses((status = 204, description = "Banned"), ErrorResponses))]
pub async fn ban_member(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    members::ban(&state, &caller, &conversation_path(&path.0)?, &user_path(&path.1)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Lift a ban (owners and admins).
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/bans/{user_id}", tag = "members",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path), ("user_id" = String, Path)),
    responses((status = 204, description = "Unbanned"), ErrorResponses))]
pub async fn unban_member(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    members::unban(&state, &caller, &conversation_path(&path.0)?, &user_path(&path.1)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn mark(
    state: &AppState,
    caller: &ActingUser,
    raw_id: &str,
    seq: i64,
    read: bool,
) -> Result<HttpResponse, ApiError> {
    let read_state = receipts::mark(state, caller, &conversation_path(raw_id)?, seq, read).await?;
    Ok(HttpResponse::Ok().json(ReadStateView {
        last_read_seq: read_state.member.last_read_seq,
        last_delivered_seq: read_state.member.last_delivered_seq,
        last_seq: read_state.last_seq,
        unread_count: read_state.unread,
    }))
}

/// Mark messages up to `seq` read (also delivered). Monotonic.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/read", tag = "receipts",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path)),
    request_body = MarkRequest, responses((status = 200, body = ReadStateView), ErrorResponses))]
pub async fn mark_read(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJson(body): ValidJson<MarkRequest>,
) -> Result<HttpResponse, ApiError> {
    mark(&state, &caller, &path, body.seq, true).await
}

/// Mark messages up to `seq` delivered. Monotonic.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/delivered", tag = "receipts",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path)),
    request_body = MarkRequest, responses((status = 200, body = ReadStateView), ErrorResponses))]
pub async fn mark_delivered(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJson(body): ValidJson<MarkRequest>,
) -> Result<HttpResponse, ApiError> {
    mark(&state, &caller, &path, body.seq, false).await
}
