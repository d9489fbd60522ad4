//! A code session's workspace tree and its files' text (the live document is served over
//! y-websocket at `/v1/sessions/{session_id}/files/{item_id}/yjs`).

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use validator::Validate;

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::collab::tree::{self, NewItem, Placed};
use crate::domain::{ItemId, ItemKind};
use crate::error::{ApiError, ErrorCode};

use super::code_sessions::session_path;
use super::extract::{ValidJson, path_id};
use super::openapi::ErrorResponses;

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateItemRequest {
    /// The folder to create it in; the root when absent.
    pub parent_id: Option<String>,
    /// One path segment: no `/`, not `.` or `..`, at most `collab.max_name_bytes` bytes.
    pub name: String,
    pub kind: ItemKind,
    /// Initial text of a file (at most `collab.max_file_bytes`).
    pub content: Option<String>,
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateItemRequest {
    /// A new name (rename).
    pub name: Option<String>,
    /// A new folder (move); `null` moves it to the root. A folder cannot move into itself.
    #[serde(default, deserialize_with = "super::extract::double_option")]
    #[schema(value_type = Option<String>)]
    pub parent_id: Option<Option<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ItemView {
    pub id: String,
    pub session_id: String,
    pub parent_id: Option<String>,
    pub name: String,
    pub kind: ItemKind,
    /// Full path from the root, e.g. `src/main.rs`.
    pub path: String,
    pub size: u64,
    pub language: Option<String>,
    pub mime: Option<String>,
    pub version: i64,
    /// The file's document generation (pass as `?epoch=` to the yjs socket).
    pub epoch: i64,
    pub last_modified_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TreeView {
    /// Every item, sorted by path.
    pub items: Vec<ItemView>,
}

fn item_view(placed: Placed) -> ItemView {
    let Placed { item, path } = placed;
    ItemView {
        parent_id: item.parent().map(|p| p.to_string()),
        id: item.id.to_string(),
        session_id: item.session_id.to_string(),
        name: item.name,
        kind: item.kind,
        path,
        size: item.size,
        language: item.language,
        mime: item.mime,
        version: item.version,
        epoch: item.epoch,
        last_modified_by: item.last_modified_by.to_string(),
        created_at: item.created_at,
        updated_at: item.updated_at,
    }
}

fn item_path(raw: &str) -> Result<ItemId, ApiError> {
    path_id(raw, "item_id", ItemId::parse)
}

fn parent(raw: Option<&str>) -> Result<Option<ItemId>, ApiError> {
    raw.map(|p| ItemId::parse(p).map_err(|e| ApiError::validation("parent_id", e.0))).transpose()
}

/// The whole tree, sorted by path.
#[utoipa::path(get, path = "/v1/sessions/{session_id}/items", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])), params(("session_id" = String, Path)),
    responses((status = 200, body = TreeView), ErrorResponses))]
pub async fn list_items(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let items = tree::list(&state, &caller, &session_path(&path)?).await?;
    Ok(HttpResponse::Ok().json(TreeView { items: items.into_iter().map(item_view).collect() }))
}

/// Create a file or folder (editors). 409 when the folder already has an item of that name.
#[utoipa::path(post, path = "/v1/sessions/{session_id}/items", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])), params(("session_id" = String, Path)),
    request_body = CreateItemRequest, responses((status = 201, body = ItemView), ErrorResponses))]
pub async fn create_item(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJson(body): ValidJson<CreateItemRequest>,
) -> Result<HttpResponse, ApiError> {
    let new =
        NewItem { parent: parent(body.parent_id.as_deref())?, name: body.name, kind: body.kind, content: body.content };
    let state = state.into_inner();
    let placed = tree::create(&state, &caller, &session_path(&path)?, new).await?;
    Ok(HttpResponse::Created().json(item_view(placed)))
}

#[utoipa::path(get, path = "/v1/sessions/{session_id}/items/{item_id}", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])), params(("session_id" = String, Path), ("item_id" = String, Path)),
    responses((status = 200, body = ItemView), ErrorResponses))]
pub async fn get_item(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (session, item) = path.into_inner();
    let placed = tree::get(&state, &caller, &session_path(&session)?, &item_path(&item)?).await?;
    Ok(HttpResponse::Ok().json(item_view(placed)))
}

/// Rename and/or move an item (editors).
#[utoipa::path(patch, path = "/v1/sessions/{session_id}/items/{item_id}", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])), params(("session_id" = String, Path), ("item_id" = String, Path)),
    request_body = UpdateItemRequest, responses((status = 200, body = ItemView), ErrorResponses))]
pub async fn update_item(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    ValidJson(body): ValidJson<UpdateItemRequest>,
) -> Result<HttpResponse, ApiError> {
    let (session, item) = path.into_inner();
    let new_parent = body.parent_id.map(|p| parent(p.as_deref())).transpose()?;
    let placed =
        tree::update(&state, &caller, &session_path(&session)?, &item_path(&item)?, body.name, new_parent).await?;
    Ok(HttpResponse::Ok().json(item_view(placed)))
}

/// Delete an item (editors); a folder goes with everything in it.
#[utoipa::path(delete, path = "/v1/sessions/{session_id}/items/{item_id}", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])), params(("session_id" = String, Path), ("item_id" = String, Path)),
    responses((status = 204), ErrorResponses))]
pub async fn delete_item(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (session, item) = path.into_inner();
    tree::delete(&state, &caller, &session_path(&session)?, &item_path(&item)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A file's current text (`text/plain; charset=utf-8`).
#[utoipa::path(get, path = "/v1/sessions/{session_id}/files/{item_id}/content", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])), params(("session_id" = String, Path), ("item_id" = String, Path)),
    responses((status = 200, content_type = "text/plain", body = String), ErrorResponses))]
pub async fn get_content(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (session, item) = path.into_inner();
    let state = state.into_inner();
    let text = tree::content(&state, &caller, &session_path(&session)?, &item_path(&item)?).await?;
    Ok(HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(text))
}

/// Replace a file's text (editors), for writers that do not speak Yjs (e.g. a code runner
/// syncing files back). The body is the UTF-8 text; connected editors see it as an edit.
#[utoipa::path(put, path = "/v1/sessions/{session_id}/files/{item_id}/content", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])), params(("session_id" = String, Path), ("item_id" = String, Path)),
    request_body(content = String, content_type = "text/plain"), responses((status = 204), ErrorResponses))]
pub async fn put_content(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (session, item) = path.into_inner();
    let (session, item) = (session_path(&session)?, item_path(&item)?);
    let max = state.settings.collab.max_file_bytes;
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("could not read the body: {e}")))?;
        if bytes.len() + chunk.len() > max {
            return Err(ApiError::new(ErrorCode::PayloadTooLarge, format!("files hold at most {max} bytes"))
                .with_details(serde_json::json!({ "limit": "max_file_bytes", "value": max })));
        }
        bytes.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(bytes).map_err(|_| ApiError::validation("body", "the text must be UTF-8"))?;
    let state = state.into_inner();
    tree::put_content(&state, &caller, &session, &item, &text).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Open a file's live document over the y-websocket protocol (binary frames: sync step 1/2,
/// update, awareness, query awareness); the text is the `Y.Text` named `content`. Auth as for
/// `/v1/ws` (header, `?ticket=`, or subprotocol). `?epoch=` (from the item) is optional; a
/// stale one is closed with 4409. Viewers receive edits but theirs are dropped. Close codes:
/// 4400 malformed message, 4409 document re-created or deleted, 4413 file too large, 1012 the
/// user's role changed (reason `access_changed`; reconnect: it is checked again) or the node is
/// stopping (`shutting_down`; reconnect, to another node).
#[utoipa::path(get, path = "/v1/sessions/{session_id}/files/{item_id}/yjs", tag = "code-sessions",
    security(("user_jwt" = []), ("api_key" = [])),
    params(("session_id" = String, Path), ("item_id" = String, Path), ("epoch" = Option<i64>, Query), ("ticket" = Option<String>, Query)),
    responses((status = 101, description = "Switching to the y-websocket protocol"), ErrorResponses))]
pub async fn open_document(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    crate::gateway::yjs::connect(state, req, path).await
}
