//! The real-time side of the REST API: the WebSocket upgrade itself (documented here; the
//! protocol is in `openapi/asyncapi.yaml`), tickets for browsers, presence and connections.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::auth::{ActingUser, AnyCaller, TenantCaller, socket};
use crate::chat::presence;
use crate::error::ApiError;
use crate::events::{ConnectionView, Presence};

use super::conversations::conversation_path;
use super::extract::PageQuery;
use super::openapi::ErrorResponses;
use super::users::user_path;

#[derive(Debug, Serialize, ToSchema)]
pub struct TicketView {
    /// Pass as `GET /v1/ws?ticket=...`; opens one socket, once, before `expires_at`.
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PresencePage {
    pub items: Vec<Presence>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionList {
    pub items: Vec<ConnectionView>,
}

/// Open the real-time WebSocket (see `openapi/asyncapi.yaml` and docs/realtime.md).
///
/// Authenticate with `Authorization: Bearer <user JWT>` (or a server key with `?user_id=`), a
/// single-use `?ticket=`, or the subprotocols `confab.v1, confab.bearer.<user JWT>` (answered
/// with `confab.v1`). Optional `?client=` (e.g. `ios/2.3.1`) describes the connection. Refused
/// before the upgrade with the REST error body: 401, 403 (Origin not allowed), 429
/// `too_many_connections` past `gateway.max_connections_per_user`.
#[utoipa::path(get, path = "/v1/ws", tag = "realtime", security(("user_jwt" = []), ("api_key" = [])),
    params(("ticket" = Option<String>, Query), ("client" = Option<String>, Query), ("user_id" = Option<String>, Query)),
    responses((status = 101, description = "Switching to the WebSocket protocol"), ErrorResponses))]
pub async fn open_socket(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    crate::gateway::connect(state, req).await
}

/// Issue a single-use WebSocket ticket for the acting user (for browsers, which cannot send
/// headers on an upgrade); valid for `gateway.ticket_ttl_secs`.
#[utoipa::path(post, path = "/v1/ws/tickets", tag = "realtime", security(("user_jwt" = []), ("api_key" = [])),
    responses((status = 201, body = TicketView), ErrorResponses))]
pub async fn create_ticket(caller: ActingUser, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let issued = socket::issue_ticket(&state, &caller).await?;
    Ok(HttpResponse::Created().json(TicketView { ticket: issued.ticket, expires_at: issued.expires_at }))
}

/// A user's presence: online while they hold a live connection on any node. Users see
/// themselves and users they share a conversation with (others: 404); servers see anyone.
#[utoipa::path(get, path = "/v1/users/{user_id}/presence", tag = "realtime",
    security(("user_jwt" = []), ("api_key" = [])), params(("user_id" = String, Path)),
    responses((status = 200, body = Presence), ErrorResponses))]
pub async fn user_presence(
    caller: AnyCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let found = presence::of_user(&state, &caller, &user_path(&path)?).await?;
    Ok(HttpResponse::Ok().json(found))
}

/// Who is online in a conversation: its members' presence, a page at a time in user-id order.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/presence", tag = "realtime",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path), PageQuery),
    responses((status = 200, body = PresencePage), ErrorResponses))]
pub async fn conversation_presence(
    caller: AnyCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.into_inner().into_page_request(&state)?;
    let page = presence::of_members(&state, &caller, &conversation_path(&path)?, page).await?;
    Ok(HttpResponse::Ok().json(PresencePage { items: page.items, next_cursor: page.next_cursor }))
}

/// A user's live connections on every node, with client details and last heartbeat (scope
/// `users:read`). Connections of a crashed node drop out after `gateway.presence_stale_secs`.
#[utoipa::path(get, path = "/v1/users/{user_id}/connections", tag = "realtime", security(("api_key" = [])),
    params(("user_id" = String, Path)), responses((status = 200, body = ConnectionList), ErrorResponses))]
pub async fn user_connections(
    caller: TenantCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let items = presence::connections(&state, &caller, &user_path(&path)?).await?;
    Ok(HttpResponse::Ok().json(ConnectionList { items }))
}
