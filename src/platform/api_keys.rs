//! API keys: create (operator or a tenant key with `keys:write`), list, rotate with a grace
//! period, revoke. The full key exists only in the create/rotate response.

use chrono::{DateTime, Duration, Utc};

use crate::app::AppState;
use crate::auth::{OperatorCaller, TenantCaller, api_key};
use crate::domain::{ApiKey, ApiKeyId, AuditActor, Page, PageRequest, Scope, Tenant, TenantId, TenantStatus};
use crate::error::{ApiError, ErrorCode};
use crate::events::CacheEvent;
use crate::tenancy::repos::{Rotation, TenantCounter};

use super::audit::{self, AuditRecord};

pub struct NewApiKey {
    pub name: String,
    /// `None`: the operator grants every scope; a tenant key grants its own scopes.
    pub scopes: Option<Vec<Scope>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key with its full secret, which is never shown again.
pub struct IssuedKey {
    pub key: ApiKey,
    pub secret: String,
}

pub async fn create_as_operator(
    state: &AppState,
    caller: &OperatorCaller,
    tenant: &TenantId,
    new: NewApiKey,
) -> Result<IssuedKey, ApiError> {
    let tenant = super::tenants::get_tenant(state, caller, tenant).await?;
    if matches!(tenant.status, TenantStatus::Provisioning | TenantStatus::Deleting) {
        return Err(ApiError::not_found("tenant"));
    }
    let scopes = new.scopes.clone().unwrap_or_else(|| Scope::ALL.to_vec());
    create(state, &tenant, caller.actor(), new, scopes).await
}

/// A tenant key may only hand out scopes it holds itself.
pub async fn create_as_tenant(state: &AppState, caller: &TenantCaller, new: NewApiKey) -> Result<IssuedKey, ApiError> {
    caller.require(Scope::KeysWrite)?;
    let scopes = new.scopes.clone().unwrap_or_else(|| caller.key.scopes.clone());
    if let Some(missing) = scopes.iter().find(|s| !caller.key.has_scope(**s)) {
        return Err(ApiError::new(
            ErrorCode::InsufficientScope,
            format!("cannot grant '{missing}': this API key does not hold it"),
        )
        .with_details(serde_json::json!({ "required_scope": missing.as_str() })));
    }
    create(state, &caller.tenant, caller.actor(), new, scopes).await
}

async fn create(
    state: &AppState,
    tenant: &Tenant,
    actor: AuditActor,
    new: NewApiKey,
    mut scopes: Vec<Scope>,
) -> Result<IssuedKey, ApiError> {
    let now = crate::domain::now();
    if new.expires_at.is_some_and(|at| at <= now) {
        return Err(ApiError::validation("expires_at", "must be in the future"));
    }
    let repo = state.store.api_keys();
    let max = tenant.limits.max_api_keys;
    if !state.store.tenants().reserve(&tenant.id, TenantCounter::ApiKeys, u64::from(max)).await? {
        return Err(ApiError::new(ErrorCode::LimitReached, format!("the tenant already has {max} active API keys"))
            .with_details(serde_json::json!({ "limit": "max_api_keys", "value": max })));
    }
    scopes.sort();
    scopes.dedup();
    let generated = api_key::generate(&state.settings.auth.api_key_env, &api_key::new_key_id());
    let key = ApiKey {
        id: generated.id,
        tenant_id: tenant.id.clone(),
        name: new.name,
        prefix: generated.prefix,
        scopes,
        secret_hash: generated.hash,
        previous_secret_hash: None,
        previous_valid_until: None,
        created_at: now,
        last_used_at: None,
        expires_at: new.expires_at,
        rotated_at: None,
        revoked_at: None,
    };
    if let Err(e) = repo.insert(&key).await {
        state.store.tenants().release(&tenant.id, TenantCounter::ApiKeys).await?;
        return Err(e.into());
    }
    let scope_names: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
    let record = AuditRecord::new(actor, "api_key.create", "api_key", key.id.as_str())
        .with_details(serde_json::json!({ "name": &key.name, "scopes": scope_names }));
    if let Err(e) = audit::append(&state.store, &tenant.id, record).await {
        // Nobody will ever see this key's secret: do not leave it live and counted.
        if repo.revoke(&tenant.id, &key.id, crate::domain::now()).await? {
            state.store.tenants().release(&tenant.id, TenantCounter::ApiKeys).await?;
        }
        return Err(e);
    }
    Ok(IssuedKey { key, secret: generated.full })
}

pub async fn list(state: &AppState, caller: &TenantCaller, page: PageRequest) -> Result<Page<ApiKey>, ApiError> {
    caller.require(Scope::KeysRead)?;
    let items = state.store.api_keys().list(caller.tenant_id(), page.after.as_deref(), page.limit + 1).await?;
    Ok(Page::from_overfetch(items, page.limit, |k| k.id.to_string()))
}

/// Issues a new secret for the key; the old one keeps working for `grace_secs`
/// (default `auth.key_rotation_grace_secs`, at most `auth.max_key_rotation_grace_secs`).
pub async fn rotate(
    state: &AppState,
    caller: &TenantCaller,
    id: &ApiKeyId,
    grace_secs: Option<u64>,
) -> Result<IssuedKey, ApiError> {
    caller.require(Scope::KeysWrite)?;
    let settings = &state.settings.auth;
    let grace = grace_secs.unwrap_or(settings.key_rotation_grace_secs);
    if grace > settings.max_key_rotation_grace_secs {
        return Err(ApiError::validation(
            "grace_period_secs",
            format!("must be at most {}", settings.max_key_rotation_grace_secs),
        ));
    }
    let repo = state.store.api_keys();
    let current = repo.get(caller.tenant_id(), id).await?.ok_or_else(|| ApiError::not_found("API key"))?;
    if current.revoked_at.is_some() {
        return Err(ApiError::new(ErrorCode::ApiKeyRevoked, "a revoked API key cannot be rotated"));
    }
    let now = crate::domain::now();
    let generated = api_key::generate(&settings.api_key_env, id);
    let rotation = Rotation {
        secret_hash: generated.hash,
        previous_secret_hash: current.secret_hash,
        previous_valid_until: now + Duration::seconds(grace as i64),
        at: now,
    };
    let key = repo
        .rotate(caller.tenant_id(), id, rotation)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::Conflict, "the key was revoked or rotated meanwhile; retry"))?;
    forget_key(state, caller, id).await;
    let record = AuditRecord::new(caller.actor(), "api_key.rotate", "api_key", id.as_str())
        .with_details(serde_json::json!({ "grace_period_secs": grace }));
    audit::append(&state.store, caller.tenant_id(), record).await?;
    Ok(IssuedKey { key, secret: generated.full })
}

/// Revokes the key at once, including a previous secret still in its grace period. Idempotent.
pub async fn revoke(state: &AppState, caller: &TenantCaller, id: &ApiKeyId) -> Result<(), ApiError> {
    caller.require(Scope::KeysWrite)?;
    let repo = state.store.api_keys();
    let existing = repo.get(caller.tenant_id(), id).await?.ok_or_else(|| ApiError::not_found("API key"))?;
    if existing.revoked_at.is_some() {
        return Ok(());
    }
    if !repo.revoke(caller.tenant_id(), id, crate::domain::now()).await? {
        return Ok(());
    }
    forget_key(state, caller, id).await;
    state.store.tenants().release(caller.tenant_id(), TenantCounter::ApiKeys).await?;
    let record = AuditRecord::new(caller.actor(), "api_key.revoke", "api_key", id.as_str());
    audit::append(&state.store, caller.tenant_id(), record).await?;
    Ok(())
}

/// Makes every node read the key again: its copies would still accept the old secret.
async fn forget_key(state: &AppState, caller: &TenantCaller, id: &ApiKeyId) {
    state.caches.forget(&state.redis, caller.tenant_id(), CacheEvent::ApiKey { key_id: id.clone() }).await;
}
