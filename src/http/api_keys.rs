//! API key routes: the operator issues a tenant's first key; tenants manage their own.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use validator::Validate;

use crate::app::AppState;
use crate::auth::{OperatorCaller, TenantCaller};
use crate::domain::{ApiKey, ApiKeyId, Scope};
use crate::error::ApiError;
use crate::platform::api_keys::{self as use_cases, IssuedKey, NewApiKey};

use super::extract::{PageQuery, ValidJson, ValidJsonOrDefault, path_id};
use super::openapi::ErrorResponses;
use super::tenants::tenant_path;

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    #[validate(length(min = 1, max = 100))]
    #[schema(example = "production backend")]
    pub name: String,
    /// Scopes to grant; default: all (operator) or the calling key's own.
    #[schema(example = json!(["keys:read", "chat:write"]))]
    pub scopes: Option<Vec<String>>,
    /// When the key stops working; never if absent.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateApiKeyRequest {
    /// How long the old secret keeps working (default `auth.key_rotation_grace_secs`, 24 h).
    pub grace_period_secs: Option<u64>,
}

/// Key metadata; never the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    #[schema(example = "0a1b2c3d4e5f6g7h")]
    pub id: String,
    pub name: String,
    /// The non-secret start of the key, to recognise it.
    #[schema(example = "cfk_live_0a1b2c3d4e5f6g7h")]
    pub prefix: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rotated_at: Option<DateTime<Utc>>,
    /// Until then the secret from before the last rotation also works.
    pub previous_secret_valid_until: Option<DateTime<Utc>>,
    pub revoked: bool,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new or rotated key. `key` is shown this once: store it now.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedApiKeyView {
    #[schema(example = "cfk_live_0a1b2c3d4e5f6g7h_…")]
    pub key: String,
    pub api_key: ApiKeyView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyPage {
    pub items: Vec<ApiKeyView>,
    pub next_cursor: Option<String>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(key: ApiKey) -> Self {
        Self {
            id: key.id.to_string(),
            name: key.name,
            prefix: key.prefix,
            scopes: key.scopes.iter().map(|s| s.to_string()).collect(),
            created_at: key.created_at,
            last_used_at: key.last_used_at,
            expires_at: key.expires_at,
            rotated_at: key.rotated_at,
            previous_secret_valid_until: key.previous_valid_until.filter(|until| *until > Utc::now()),
            revoked: key.revoked_at.is_some(),
            revoked_at: key.revoked_at,
        }
    }
}

fn issued(issued: IssuedKey) -> IssuedApiKeyView {
    IssuedApiKeyView { key: issued.secret, api_key: issued.key.into() }
}

impl TryFrom<CreateApiKeyRequest> for NewApiKey {
    type Error = ApiError;
    fn try_from(body: CreateApiKeyRequest) -> Result<Self, ApiError> {
        let name = body.name.trim().to_string();
        if name.is_empty() {
            return Err(ApiError::validation("name", "must not be blank"));
        }
        let scopes = body
            .scopes
            .map(|list| list.iter().map(|s| s.parse::<Scope>()).collect::<Result<Vec<_>, _>>())
            .transpose()
            .map_err(|e| ApiError::validation("scopes", e.to_string()))?;
        Ok(NewApiKey { name, scopes, expires_at: body.expires_at })
    }
}

fn key_path(raw: &str) -> Result<ApiKeyId, ApiError> {
    path_id(raw, "key_id", ApiKeyId::parse)
}

/// Issue an API key for a tenant (operator). The full key is in this response only.
#[utoipa::path(post, path = "/admin/v1/tenants/{tenant_id}/api-keys", tag = "api-keys",
    security(("operator_token" = [])), params(("tenant_id" = String, Path)), request_body = CreateApiKeyRequest,
    responses((status = 201, body = IssuedApiKeyView), ErrorResponses))]
pub async fn create_api_key_as_operator(
    caller: OperatorCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJson(body): ValidJson<CreateApiKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_path(&path)?;
    let key = use_cases::create_as_operator(&state, &caller, &tenant, body.try_into()?).await?;
    Ok(HttpResponse::Created().json(issued(key)))
}

/// Create another key for the caller's tenant (scope `keys:write`; only scopes the caller holds).
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", security(("api_key" = [])),
    request_body = CreateApiKeyRequest, responses((status = 201, body = IssuedApiKeyView), ErrorResponses))]
pub async fn create_api_key(
    caller: TenantCaller,
    state: web::Data<AppState>,
    ValidJson(body): ValidJson<CreateApiKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let key = use_cases::create_as_tenant(&state, &caller, body.try_into()?).await?;
    Ok(HttpResponse::Created().json(issued(key)))
}

/// List the tenant's keys, revoked ones included (scope `keys:read`).
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", security(("api_key" = [])),
    params(PageQuery), responses((status = 200, body = ApiKeyPage), ErrorResponses))]
pub async fn list_api_keys(
    caller: TenantCaller,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = use_cases::list(&state, &caller, query.into_inner().into_page_request(&state)?).await?;
    let page = page.map(ApiKeyView::from);
    Ok(HttpResponse::Ok().json(ApiKeyPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Replace a key's secret (scope `keys:write`). The old secret works until the grace period ends.
#[utoipa::path(post, path = "/v1/api-keys/{key_id}/rotate", tag = "api-keys", security(("api_key" = [])),
    params(("key_id" = String, Path)), request_body(content = RotateApiKeyRequest, description = "Optional"),
    responses((status = 200, body = IssuedApiKeyView), ErrorResponses))]
pub async fn rotate_api_key(
    caller: TenantCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJsonOrDefault(body): ValidJsonOrDefault<RotateApiKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let key = use_cases::rotate(&state, &caller, &key_path(&path)?, body.grace_period_secs).await?;
    Ok(HttpResponse::Ok().json(issued(key)))
}

/// Revoke a key at once (scope `keys:write`); repeating it is harmless.
#[utoipa::path(delete, path = "/v1/api-keys/{key_id}", tag = "api-keys", security(("api_key" = [])),
    params(("key_id" = String, Path)), responses((status = 204, description = "Revoked"), ErrorResponses))]
pub async fn revoke_api_key(
    caller: TenantCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    use_cases::revoke(&state, &caller, &key_path(&path)?).await?;
    Ok(HttpResponse::NoContent().finish())
}
