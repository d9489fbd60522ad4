//! Request extractors that authenticate the caller. A handler that takes one of these is
//! authenticated; there is no other way to obtain a `TenantScope`.

use std::future::{Ready, ready};
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use chrono::Utc;
use futures_util::future::LocalBoxFuture;

use crate::app::AppState;
use crate::domain::{ApiKey, AuditActor, Scope, Tenant, TenantId, TenantStatus};
use crate::error::{ApiError, ErrorCode};

use super::api_key;

/// Proof that the holder may act inside one tenant. Only this module can make one.
#[derive(Debug, Clone)]
pub struct TenantScope {
    pub(super) tenant: TenantId,
}

impl TenantScope {
    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant
    }

    /// For a node's own upkeep of a tenant it found in its own shared state (the presence
    /// sweep), never for a request: requests get theirs from the caller.
    pub fn upkeep(tenant: &TenantId) -> Self {
        Self { tenant: tenant.clone() }
    }
}

/// The platform operator, authenticated by the bootstrap token from configuration.
#[derive(Debug)]
pub struct OperatorCaller {
    /// `operator` for the HTTP API, `manifest` for `confab tenants apply`.
    via: &'static str,
}

impl OperatorCaller {
    /// The operator may act inside any tenant.
    pub fn scope_for(&self, tenant: &TenantId) -> TenantScope {
        TenantScope { tenant: tenant.clone() }
    }

    pub fn actor(&self) -> AuditActor {
        AuditActor { kind: self.via.into(), id: String::new() }
    }

    /// For `confab tenants apply`, which runs on the host with the operator's authority.
    pub fn manifest_runner() -> Self {
        Self { via: "manifest" }
    }
}

/// A tenant's backend, authenticated by an API key of an active tenant.
#[derive(Debug)]
pub struct TenantCaller {
    pub tenant: Arc<Tenant>,
    pub key: Arc<ApiKey>,
}

impl TenantCaller {
    pub fn scope(&self) -> TenantScope {
        TenantScope { tenant: self.tenant.id.clone() }
    }

    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant.id
    }

    pub fn actor(&self) -> AuditActor {
        AuditActor { kind: "api_key".into(), id: self.key.id.to_string() }
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.key.has_scope(scope) {
            Ok(())
        } else {
            Err(ApiError::new(ErrorCode::InsufficientScope, format!("this API key lacks the '{scope}' scope"))
                .with_details(serde_json::json!({ "required_scope": scope.as_str() })))
        }
    }
}

pub(super) fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(super) fn app_state(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>().cloned().ok_or_else(|| ApiError::internal("application state missing"))
}

impl FromRequest for OperatorCaller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(app_state(req).and_then(|state| match bearer_token(req) {
            Some(token) if state.settings.auth.operator_token.matches(token) => Ok(Self { via: "operator" }),
            _ => Err(ApiError::unauthorized()),
        }))
    }
}

impl FromRequest for TenantCaller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = app_state(req);
        let token = bearer_token(req).map(str::to_string);
        Box::pin(async move { authenticate_key(&state?, token.as_deref().unwrap_or_default()).await })
    }
}

/// Checks an API key: format and checksum, then hash, revocation, expiry and the tenant's status.
/// The key's record comes from this node's cache (see `caches`: revoking or rotating forgets it).
pub(super) async fn authenticate_key(state: &web::Data<AppState>, token: &str) -> Result<TenantCaller, ApiError> {
    let parsed = api_key::parse(token).ok_or_else(ApiError::unauthorized)?;
    let keys = state.store.api_keys();
    let key =
        state.caches.api_key(&parsed.id, keys.find_for_auth(&parsed.id)).await?.ok_or_else(ApiError::unauthorized)?;
    let now = Utc::now();
    let current = api_key::hashes_match(&key.secret_hash, &parsed.hash);
    let previous = key.previous_valid_until.is_some_and(|until| now < until)
        && key.previous_secret_hash.as_deref().is_some_and(|h| api_key::hashes_match(h, &parsed.hash));
    if !(current || previous) || !key.is_usable_at(now) {
        return Err(ApiError::unauthorized());
    }
    let tenant = tenant_of(state, &key.tenant_id).await?;
    admit(state, &tenant).await?;
    record_use(state, &key, now);
    Ok(TenantCaller { tenant, key })
}

/// Loads the tenant a credential belongs to. Call `admit` only once the credential is verified,
/// so unauthenticated requests neither learn the tenant's status nor spend its rate limit.
pub(super) async fn tenant_of(state: &web::Data<AppState>, id: &TenantId) -> Result<Arc<Tenant>, ApiError> {
    state.caches.tenant(id, state.store.tenants().get(id)).await?.ok_or_else(ApiError::unauthorized)
}

/// Lets a verified credential in if its tenant is active, counting the request against the
/// tenant's rate limit.
pub(super) async fn admit(state: &web::Data<AppState>, tenant: &Tenant) -> Result<(), ApiError> {
    match tenant.status {
        TenantStatus::Active => {}
        TenantStatus::Suspended => return Err(ApiError::new(ErrorCode::TenantSuspended, "this tenant is suspended")),
        TenantStatus::Provisioning | TenantStatus::Deleting | TenantStatus::Deleted => {
            return Err(ApiError::unauthorized());
        }
    }
    state.redis.rate_limiter().check(&tenant.id, tenant.limits.requests_per_second).await
}

/// Writes `last_used_at` off the request path, and only when the stored value is stale and this
/// node has not just written it.
fn record_use(state: &web::Data<AppState>, key: &ApiKey, now: chrono::DateTime<Utc>) {
    let secs = state.settings.auth.key_last_used_resolution_secs;
    let resolution = chrono::Duration::seconds(secs as i64);
    if key.last_used_at.is_some_and(|at| now - at < resolution)
        || !state.caches.claim_key_use(&key.id, std::time::Duration::from_secs(secs))
    {
        return;
    }
    let (repo, id) = (state.store.api_keys(), key.id.clone());
    tokio::spawn(async move {
        if let Err(e) = repo.touch(&id, now, resolution).await {
            tracing::warn!(error = %e, "could not record API key use");
        }
    });
}
