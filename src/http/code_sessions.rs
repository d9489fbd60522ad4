//! Code sessions and their members.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use validator::Validate;

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::collab::{fork, sessions};
use crate::domain::{CodeSession, SessionId, SessionMember, SessionRole, Visibility};
use crate::error::ApiError;
use crate::tenancy::SessionChanges;

use super::extract::{PageQuery, ValidJson, ValidJsonOrDefault, path_id};
use super::openapi::ErrorResponses;
use super::users::user_path;

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    #[validate(length(min = 1, max = 200))]
    pub name: String,
    #[validate(length(max = 2000))]
    pub description: Option<String>,
    /// Defaults to `python`.
    #[validate(length(min = 1, max = 40))]
    pub language: Option<String>,
    #[serde(default)]
    pub visibility: Visibility,
    #[serde(default)]
    #[validate(length(max = 20))]
    pub tags: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSessionRequest {
    #[validate(length(min = 1, max = 200))]
    pub name: Option<String>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "super::extract::double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[validate(length(min = 1, max = 40))]
    pub language: Option<String>,
    pub visibility: Option<Visibility>,
    pub active: Option<bool>,
    #[validate(length(max = 20))]
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// Defaults to "<name> (fork)".
    #[validate(length(min = 1, max = 200))]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSessionMemberRequest {
    pub role: SessionRole,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub language: String,
    pub visibility: Visibility,
    pub owner_id: String,
    pub active: bool,
    pub tags: Vec<String>,
    pub forked_from: Option<String>,
    /// The session's chat (a group conversation whose members follow the session's).
    pub conversation_id: String,
    pub item_count: u32,
    /// The caller's role (`viewer` for non-members of a tenant-visible session).
    pub my_role: Option<SessionRole>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_accessed_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionPage {
    pub items: Vec<SessionView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionMemberView {
    pub user_id: String,
    pub role: SessionRole,
    pub added_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionMemberList {
    pub items: Vec<SessionMemberView>,
}

fn session_view(s: CodeSession, my_role: Option<SessionRole>) -> SessionView {
    SessionView {
        id: s.id.to_string(),
        name: s.name,
        description: s.description,
        language: s.language,
        visibility: s.visibility,
        owner_id: s.owner_id.to_string(),
        active: s.active,
        tags: s.tags,
        forked_from: s.forked_from.map(|f| f.to_string()),
        conversation_id: s.conversation_id.to_string(),
        item_count: s.item_count,
        my_role,
        created_at: s.created_at,
        updated_at: s.updated_at,
        last_accessed_at: s.last_accessed_at,
    }
}

fn member_view(m: SessionMember) -> SessionMemberView {
    SessionMemberView { user_id: m.user_id.to_string(), role: m.role, added_at: m.added_at }
}

pub fn session_path(raw: &str) -> Result<SessionId, ApiError> {
    path_id(raw, "session_id", SessionId::parse)
}

/// Create a code session; the caller becomes its owner and a chat is created for it.
#[utoipa::path(post, path = "/v1/sessions", tag = "code-sessions", security(("user_jwt" = []), ("api_key" = [])),
    request_body = CreateSessionRequest, responses((status = 201, body = SessionView), ErrorResponses))]
pub async fn create_session(
    caller: ActingUser,
    state: web::Data<AppState>,
    ValidJson(body): ValidJson<CreateSessionRequest>,
) -> Result<HttpResponse, ApiError> {
    let new = sessions::NewSession {
        name: body.name,
        description: body.description,
        language: body.language.unwrap_or_else(|| "python".into()),
        visibility: body.visibility,
        tags: body.tags,
    };
    let session = sessions::create(&state, &caller, new).await?;
    Ok(HttpResponse::Created().json(session_view(session, Some(SessionRole::Owner))))
}

/// Sessions the caller is a member of, and those visible to the whole tenant, in id order.
#[utoipa::path(get, path = "/v1/sessions", tag = "code-sessions", security(("user_jwt" = []), ("api_key" = [])),
    params(PageQuery), responses((status = 200, body = SessionPage), ErrorResponses))]
pub async fn list_sessions(
    caller: ActingUser,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = sessions::list(&state, &caller, query.into_inner().into_page_request(&state)?).await?;
    let items = page.items.into_iter().map(|(s, role)| session_view(s, Some(role))).collect();
    Ok(HttpResponse::Ok().json(SessionPage { items, next_cursor: page.next_cursor }))
}

#[utoipa::path(get, path = "/v1/sessions/{session_id}", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])), params(("session_id" = String, Path)),
    responses((status = 200, body = SessionView), ErrorResponses))]
pub async fn get_session(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (session, role) = sessions::get(&state, &caller, &session_path(&path)?).await?;
    Ok(HttpResponse::Ok().json(session_view(session, Some(role))))
}

/// Update a session (owners).
#[utoipa::path(patch, path = "/v1/sessions/{session_id}", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])), params(("session_id" = String, Path)),
    request_body = UpdateSessionRequest, responses((status = 200, body = SessionView), ErrorResponses))]
pub async fn update_session(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJson(body): ValidJson<UpdateSessionRequest>,
) -> Result<HttpResponse, ApiError> {
    let changes = SessionChanges {
        name: body.name,
        description: body.description,
        language: body.language,
        visibility: body.visibility,
        active: body.active,
        tags: body.tags,
    };
    let session = sessions::update(&state, &caller, &session_path(&path)?, changes).await?;
    Ok(HttpResponse::Ok().json(session_view(session, Some(SessionRole::Owner))))
}

/// Delete a session with its tree and documents (owners).
#[utoipa::path(delete, path = "/v1/sessions/{session_id}", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])), params(("session_id" = String, Path)),
    responses((status = 204), ErrorResponses))]
pub async fn delete_session(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    sessions::delete(&state, &caller, &session_path(&path)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Fork a session the caller can read: a new session they own, with a copy of the tree and
/// every file's current text. A tree over `collab.max_items_per_session` is refused (409
/// `limit_reached`) and nothing is made; a fork that fails while copying is removed again.
#[utoipa::path(post, path = "/v1/sessions/{session_id}/fork", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])), params(("session_id" = String, Path)),
    request_body = ForkRequest, responses((status = 201, body = SessionView), ErrorResponses))]
pub async fn fork_session(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJsonOrDefault(body): ValidJsonOrDefault<ForkRequest>,
) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let session = fork::fork(&state, &caller, &session_path(&path)?, body.name).await?;
    Ok(HttpResponse::Created().json(session_view(session, Some(SessionRole::Owner))))
}

#[utoipa::path(get, path = "/v1/sessions/{session_id}/members", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])), params(("session_id" = String, Path)),
    responses((status = 200, body = SessionMemberList), ErrorResponses))]
pub async fn list_session_members(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let members = sessions::list_members(&state, &caller, &session_path(&path)?).await?;
    Ok(HttpResponse::Ok().json(SessionMemberList { items: members.into_iter().map(member_view).collect() }))
}

/// Add a member or change their role (owners). The session's chat follows.
#[utoipa::path(put, path = "/v1/sessions/{session_id}/members/{user_id}", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])), params(("session_id" = String, Path), ("user_id" = String, Path)),
    request_body = PutSessionMemberRequest, responses((status = 200, body = SessionMemberView), ErrorResponses))]
pub async fn put_session_member(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    ValidJson(body): ValidJson<PutSessionMemberRequest>,
) -> Result<HttpResponse, ApiError> {
    let (session, user) = path.into_inner();
    let member = sessions::put_member(&state, &caller, &session_path(&session)?, &user_path(&user)?, body.role).await?;
    Ok(HttpResponse::Ok().json(member_view(member)))
}

/// Remove a member (owners), or leave (anyone). The last owner cannot go.
#[utoipa::path(delete, path = "/v1/sessions/{session_id}/members/{user_id}", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])), params(("session_id" = String, Path), ("user_id" = String, Path)),
    responses((status = 204), ErrorResponses))]
pub async fn remove_session_member(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (session, user) = path.into_inner();
    sessions::remove_member(&state, &caller, &session_path(&session)?, &user_path(&user)?).await?;
    Ok(HttpResponse::NoContent().finish())
}
