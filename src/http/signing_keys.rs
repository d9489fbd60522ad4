//! JWT signing keys: the operator rotates them; a tenant's backend reads them to mint tokens.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::auth::{OperatorCaller, TenantCaller};
use crate::domain::{Scope, SigningKey};
use crate::error::ApiError;
use crate::platform::tenants;

use super::openapi::ErrorResponses;
use super::tenants::tenant_path;

#[derive(Debug, Serialize, ToSchema)]
pub struct SigningKeyView {
    /// Put this in the JWT header's `kid`.
    pub kid: String,
    /// HMAC-SHA256 key: the UTF-8 bytes of this string.
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SigningKeyList {
    /// Oldest first; sign with the newest, every listed key verifies.
    pub items: Vec<SigningKeyView>,
}

impl From<SigningKey> for SigningKeyView {
    fn from(key: SigningKey) -> Self {
        Self { kid: key.kid, secret: key.secret, created_at: key.created_at }
    }
}

/// Add a signing key (operator); older keys keep verifying their tokens until those expire.
#[utoipa::path(post, path = "/admin/v1/tenants/{tenant_id}/signing-keys/rotate", tag = "tenants",
    security(("operator_token" = [])), params(("tenant_id" = String, Path)),
    responses((status = 201, body = SigningKeyView), ErrorResponses))]
pub async fn rotate_signing_key(
    caller: OperatorCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = tenants::rotate_signing_key(&state, &caller, &tenant_path(&path)?).await?;
    Ok(HttpResponse::Created().json(SigningKeyView::from(key)))
}

/// The tenant's signing keys with their secrets, for minting user tokens on the tenant's own
/// servers (scope `keys:write`).
#[utoipa::path(get, path = "/v1/signing-keys", tag = "users", security(("api_key" = [])),
    responses((status = 200, body = SigningKeyList), ErrorResponses))]
pub async fn list_signing_keys(caller: TenantCaller) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::KeysWrite)?;
    let mut keys = caller.tenant.signing_keys.clone();
    keys.sort_by_key(|k| k.created_at);
    Ok(HttpResponse::Ok().json(SigningKeyList { items: keys.into_iter().map(SigningKeyView::from).collect() }))
}
