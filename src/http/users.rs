//! End users and their tokens.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use validator::Validate;

use crate::app::AppState;
use crate::auth::{AnyCaller, TenantCaller};
use crate::chat::users::{self as use_cases, UserPatch, UserProfile};
use crate::domain::{User, UserId, UserKind, UserSettings};
use crate::error::{ApiError, ErrorCode};

use super::extract::{ValidJson, ValidJsonOrDefault, page_limit, path_id};
use super::openapi::ErrorResponses;

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutUserRequest {
    /// Defaults to the user id.
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    #[serde(default)]
    pub kind: UserKind,
    /// Free JSON object (size-limited; keys may not start with `$` or contain `.`).
    #[schema(value_type = Option<Object>)]
    pub custom: Option<serde_json::Value>,
    #[serde(default)]
    pub settings: UserSettings,
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUserRequest {
    pub display_name: Option<String>,
    /// `null` removes the avatar.
    #[serde(default, deserialize_with = "super::extract::double_option")]
    #[schema(value_type = Option<String>)]
    pub avatar_url: Option<Option<String>>,
    pub kind: Option<UserKind>,
    #[schema(value_type = Option<Object>)]
    pub custom: Option<serde_json::Value>,
    pub settings: Option<UserSettings>,
}

#[derive(Debug, Default, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Lifetime in seconds (default `auth.user_token_default_ttl_secs`, at most `auth.user_token_max_ttl_secs`).
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// HS256 JWT for `Authorization: Bearer` on user routes and the WebSocket gateway.
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub display_name: String,
    pub avatar_url: Option<String>,
    pub kind: UserKind,
    #[schema(value_type = Object)]
    pub custom: serde_json::Value,
    pub settings: UserSettings,
    pub active: bool,
    pub deactivated_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    pub items: Vec<UserView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserListQuery {
    /// Comma-separated ids for a batch lookup (at most `chat.max_batch_ids`); unknown ids are left out.
    pub ids: Option<String>,
    /// Only users whose display name starts with this (case-insensitive).
    pub name_prefix: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        Self {
            active: user.is_active(),
            id: user.id.to_string(),
            display_name: user.display_name,
            avatar_url: user.avatar_url,
            kind: user.kind,
            custom: user.custom,
            settings: user.settings,
            deactivated_at: user.deactivated_at,
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

pub fn user_path(raw: &str) -> Result<UserId, ApiError> {
    path_id(raw, "user_id", UserId::parse)
}

/// Create or replace an end user (scope `users:write`): 201 when created, 200 when replaced.
#[utoipa::path(put, path = "/v1/users/{user_id}", tag = "users", security(("api_key" = [])),
    params(("user_id" = String, Path)), request_body = PutUserRequest,
    responses((status = 200, body = UserView), (status = 201, body = UserView), ErrorResponses))]
pub async fn put_user(
    caller: TenantCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJson(body): ValidJson<PutUserRequest>,
) -> Result<HttpResponse, ApiError> {
    let profile = UserProfile {
        display_name: body.display_name,
        avatar_url: body.avatar_url,
        kind: body.kind,
        custom: body.custom,
        settings: body.settings,
    };
    let (user, created) = use_cases::upsert_user(&state, &caller, user_path(&path)?, profile).await?;
    let mut response = if created { HttpResponse::Created() } else { HttpResponse::Ok() };
    Ok(response.json(UserView::from(user)))
}

/// Get a user (server key with `users:read`, or any user of the tenant).
#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "users", security(("api_key" = []), ("user_jwt" = [])),
    params(("user_id" = String, Path)), responses((status = 200, body = UserView), ErrorResponses))]
pub async fn get_user(
    caller: AnyCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = use_cases::get_user(&state, &caller, &user_path(&path)?).await?;
    Ok(HttpResponse::Ok().json(UserView::from(user)))
}

/// List users by display name (optionally by prefix), or look up several by `ids`.
#[utoipa::path(get, path = "/v1/users", tag = "users", security(("api_key" = []), ("user_jwt" = [])),
    params(UserListQuery), responses((status = 200, body = UserPage), ErrorResponses))]
pub async fn list_users(
    caller: AnyCaller,
    state: web::Data<AppState>,
    query: web::Query<UserListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    if let Some(ids) = query.ids {
        let ids = ids
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|raw| UserId::parse(raw).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("ids: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let users = use_cases::get_users(&state, &caller, &ids).await?;
        return Ok(HttpResponse::Ok()
            .json(UserPage { items: users.into_iter().map(UserView::from).collect(), next_cursor: None }));
    }
    let page = crate::domain::PageRequest { limit: page_limit(&state, query.limit)?, after: query.after };
    let page = use_cases::list_users(&state, &caller, query.name_prefix.as_deref(), page).await?.map(UserView::from);
    Ok(HttpResponse::Ok().json(UserPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Change some of a user's fields (scope `users:write`).
#[utoipa::path(patch, path = "/v1/users/{user_id}", tag = "users", security(("api_key" = [])),
    params(("user_id" = String, Path)), request_body = PatchUserRequest,
    responses((status = 200, body = UserView), ErrorResponses))]
pub async fn patch_user(
    caller: TenantCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJson(body): ValidJson<PatchUserRequest>,
) -> Result<HttpResponse, ApiError> {
    let patch = UserPatch {
        display_name: body.display_name,
        avatar_url: body.avatar_url,
        kind: body.kind,
        custom: body.custom,
        settings: body.settings,
    };
    let user = use_cases::update_user(&state, &caller, &user_path(&path)?, patch).await?;
    Ok(HttpResponse::Ok().json(UserView::from(user)))
}

/// Deactivate a user (soft delete, scope `users:write`): their tokens stop working, they keep their data.
#[utoipa::path(delete, path = "/v1/users/{user_id}", tag = "users", security(("api_key" = [])),
    params(("user_id" = String, Path)), responses((status = 200, body = UserView), ErrorResponses))]
pub async fn deactivate_user(
    caller: TenantCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = use_cases::set_active(&state, &caller, &user_path(&path)?, false).await?;
    Ok(HttpResponse::Ok().json(UserView::from(user)))
}

/// Reactivate a deactivated user (scope `users:write`).
#[utoipa::path(post, path = "/v1/users/{user_id}/reactivate", tag = "users", security(("api_key" = [])),
    params(("user_id" = String, Path)), responses((status = 200, body = UserView), ErrorResponses))]
pub async fn reactivate_user(
    caller: TenantCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = use_cases::set_active(&state, &caller, &user_path(&path)?, true).await?;
    Ok(HttpResponse::Ok().json(UserView::from(user)))
}

/// Mint a token for an end user (scope `users:write`).
#[utoipa::path(post, path = "/v1/users/{user_id}/tokens", tag = "users", security(("api_key" = [])),
    params(("user_id" = String, Path)), request_body(content = TokenRequest, description = "Optional"),
    responses((status = 201, body = TokenView), ErrorResponses))]
pub async fn mint_token(
    caller: TenantCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJsonOrDefault(body): ValidJsonOrDefault<TokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let (token, expires_at) = use_cases::mint_token(&state, &caller, &user_path(&path)?, body.ttl_secs).await?;
    Ok(HttpResponse::Created().json(TokenView { token, expires_at }))
}
