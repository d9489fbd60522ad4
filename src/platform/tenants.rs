//! Tenant lifecycle, for the operator: create (record, database, indexes, signing secret),
//! read, list, change, suspend and delete.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

use crate::app::AppState;
use crate::auth::OperatorCaller;
use crate::domain::{Page, PageRequest, PlanName, SigningKey, Tenant, TenantId, TenantLimitsPatch, TenantStatus};
use crate::error::{ApiError, ErrorCode};
use crate::events::CacheEvent;
use crate::tenancy::repos::TenantUpdate;

use super::audit::{self, AuditRecord};

pub struct NewTenant {
    pub id: TenantId,
    pub name: String,
    pub plan: PlanName,
    pub limits: TenantLimitsPatch,
    pub allowed_mime_types: Vec<String>,
    pub allowed_origins: Vec<String>,
}

/// Changes to a tenant; `None` keeps the current value.
#[derive(Default)]
pub struct TenantChanges {
    pub name: Option<String>,
    pub plan: Option<PlanName>,
    pub limits: Option<TenantLimitsPatch>,
    pub status: Option<TenantStatus>,
    pub allowed_mime_types: Option<Vec<String>>,
    pub allowed_origins: Option<Vec<String>>,
}

impl TenantChanges {
    fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.plan.is_none()
            && self.limits.is_none()
            && self.status.is_none()
            && self.allowed_mime_types.is_none()
            && self.allowed_origins.is_none()
    }
}

/// Origins: `http(s)://host[:port]`, no path, at most 50 of them.
fn check_origins(origins: &[String]) -> Result<(), ApiError> {
    let valid = |o: &String| {
        let rest = o.strip_prefix("https://").or_else(|| o.strip_prefix("http://"));
        rest.is_some_and(|r| !r.is_empty() && !r.contains(['/', '?', '#', ' '])) && o.len() <= 200
    };
    if origins.len() > 50 || !origins.iter().all(valid) {
        return Err(ApiError::validation(
            "allowed_origins",
            "must be at most 50 origins like 'https://app.example.com'",
        ));
    }
    Ok(())
}

/// MIME patterns: `type/subtype` or `type/*`, lower case, at most 100 of them.
fn check_mime_patterns(patterns: &[String]) -> Result<(), ApiError> {
    let valid = |p: &String| {
        let Some((kind, sub)) = p.split_once('/') else { return false };
        let token = |s: &str| {
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        };
        (token(kind) || kind == "*") && (token(sub) || sub == "*") && p.len() <= 100
    };
    if patterns.len() > 100 || !patterns.iter().all(valid) {
        return Err(ApiError::validation(
            "allowed_mime_types",
            "must be at most 100 patterns like 'image/png' or 'image/*'",
        ));
    }
    Ok(())
}

fn limits_error(e: crate::domain::LimitsError) -> ApiError {
    ApiError::validation(&format!("limits.{}", e.field), format!("must be between {} and {}", e.min, e.max))
}

pub fn new_signing_key() -> SigningKey {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let mut kid = [0u8; 6];
    rand::rng().fill_bytes(&mut kid);
    SigningKey { kid: hex::encode(kid), secret: URL_SAFE_NO_PAD.encode(secret), created_at: crate::domain::now() }
}

/// Creates the tenant record, then its database and indexes. If provisioning fails, the record
/// and database are removed again so nothing half-made is left behind.
pub async fn create_tenant(state: &AppState, caller: &OperatorCaller, new: NewTenant) -> Result<Tenant, ApiError> {
    let limits = state.settings.tenants.default_limits.patched(&new.limits).map_err(limits_error)?;
    check_mime_patterns(&new.allowed_mime_types)?;
    check_origins(&new.allowed_origins)?;
    let now = crate::domain::now();
    let mut tenant = Tenant {
        id: new.id,
        name: new.name,
        plan: new.plan,
        limits,
        status: TenantStatus::Provisioning,
        signing_keys: vec![new_signing_key()],
        allowed_mime_types: new.allowed_mime_types,
        allowed_origins: new.allowed_origins,
        user_count: 0,
        api_key_count: 0,
        created_at: now,
        updated_at: now,
    };
    let tenants = state.store.tenants();
    if !tenants.insert(&tenant).await? {
        let deleted = tenants.get(&tenant.id).await?.is_some_and(|t| t.status == TenantStatus::Deleted);
        let message = if deleted {
            format!("tenant id '{}' belonged to a deleted tenant; ids are never reused", tenant.id)
        } else {
            format!("tenant '{}' already exists", tenant.id)
        };
        return Err(ApiError::new(ErrorCode::TenantExists, message)
            .with_details(serde_json::json!({ "id": tenant.id.as_str() })));
    }
    let db = state.store.tenant_db(&caller.scope_for(&tenant.id));
    if let Err(e) = db.provision().await {
        let _ = db.drop().await;
        let _ = tenants.delete(&tenant.id).await;
        return Err(e.into());
    }
    let activate = TenantUpdate { status: Some(TenantStatus::Active), ..Default::default() };
    tenant = tenants
        .update(&tenant.id, activate, crate::domain::now())
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    forget_tenant(state, &tenant.id).await;
    let record = AuditRecord::new(caller.actor(), "tenant.create", "tenant", tenant.id.as_str())
        .with_details(serde_json::json!({ "name": &tenant.name, "plan": tenant.plan.as_str() }));
    audit::append(&state.store, &tenant.id, record).await?;
    Ok(tenant)
}

pub async fn get_tenant(state: &AppState, _caller: &OperatorCaller, id: &TenantId) -> Result<Tenant, ApiError> {
    let tenant = state.store.tenants().get(id).await?;
    tenant.filter(|t| t.status != TenantStatus::Deleted).ok_or_else(|| ApiError::not_found("tenant"))
}

pub async fn list_tenants(
    state: &AppState,
    _caller: &OperatorCaller,
    page: PageRequest,
) -> Result<Page<Tenant>, ApiError> {
    let items = state.store.tenants().list(page.after.as_deref(), page.limit + 1).await?;
    Ok(Page::from_overfetch(items, page.limit, |t| t.id.to_string()))
}

/// Changes name, plan, limits or status (`active` / `suspended`).
pub async fn update_tenant(
    state: &AppState,
    caller: &OperatorCaller,
    id: &TenantId,
    changes: TenantChanges,
) -> Result<Tenant, ApiError> {
    let current = get_tenant(state, caller, id).await?;
    if changes.is_empty() {
        return Ok(current);
    }
    if matches!(current.status, TenantStatus::Provisioning | TenantStatus::Deleting) {
        return Err(ApiError::not_found("tenant"));
    }
    if let Some(status) = changes.status
        && !matches!(status, TenantStatus::Active | TenantStatus::Suspended)
    {
        return Err(ApiError::validation("status", "must be 'active' or 'suspended'"));
    }
    if let Some(types) = &changes.allowed_mime_types {
        check_mime_patterns(types)?;
    }
    if let Some(origins) = &changes.allowed_origins {
        check_origins(origins)?;
    }
    let limits = match &changes.limits {
        Some(patch) => Some(current.limits.patched(patch).map_err(limits_error)?),
        None => None,
    };
    let mut details = serde_json::Map::new();
    if let Some(name) = &changes.name {
        details.insert("name".into(), name.clone().into());
    }
    if let Some(plan) = &changes.plan {
        details.insert("plan".into(), plan.as_str().into());
    }
    if let Some(limits) = &limits {
        details.insert("limits".into(), serde_json::to_value(limits).unwrap_or_default());
    }
    if let Some(status) = changes.status {
        details.insert("status".into(), serde_json::to_value(status).unwrap_or_default());
    }
    if let Some(types) = &changes.allowed_mime_types {
        details.insert("allowed_mime_types".into(), types.clone().into());
    }
    if let Some(origins) = &changes.allowed_origins {
        details.insert("allowed_origins".into(), origins.clone().into());
    }
    let update = TenantUpdate {
        name: changes.name,
        plan: changes.plan,
        limits,
        status: changes.status,
        allowed_mime_types: changes.allowed_mime_types,
        allowed_origins: changes.allowed_origins,
    };
    let tenant = state
        .store
        .tenants()
        .update(id, update, crate::domain::now())
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    forget_tenant(state, id).await;
    let action = match changes.status {
        Some(TenantStatus::Suspended) if current.status != TenantStatus::Suspended => "tenant.suspend",
        Some(TenantStatus::Active) if current.status != TenantStatus::Active => "tenant.reactivate",
        _ => "tenant.update",
    };
    let record = AuditRecord::new(caller.actor(), action, "tenant", id.as_str()).with_details(details.into());
    audit::append(&state.store, id, record).await?;
    Ok(tenant)
}

/// Deletes a tenant: its keys stop working at once, then its database and usage go. The record
/// stays, marked deleted, so the id is never reused. A repeated call finishes an interrupted one.
pub async fn delete_tenant(state: &AppState, caller: &OperatorCaller, id: &TenantId) -> Result<(), ApiError> {
    let tenants = state.store.tenants();
    get_tenant(state, caller, id).await?;
    let deleting = TenantUpdate { status: Some(TenantStatus::Deleting), ..Default::default() };
    tenants.update(id, deleting, crate::domain::now()).await?;
    forget_tenant(state, id).await;
    let record = AuditRecord::new(caller.actor(), "tenant.delete", "tenant", id.as_str());
    audit::append(&state.store, id, record).await?;
    state.store.api_keys().delete_for_tenant(id).await?;
    state.store.tenant_db(&caller.scope_for(id)).drop().await?;
    state.store.usage().delete(id).await?;
    let deleted = TenantUpdate { status: Some(TenantStatus::Deleted), ..Default::default() };
    tenants.update(id, deleted, crate::domain::now()).await?;
    forget_tenant(state, id).await;
    Ok(())
}

/// Drops the cached copies of a changed tenant on every node.
async fn forget_tenant(state: &AppState, id: &TenantId) {
    state.caches.forget(&state.redis, id, CacheEvent::Tenant).await;
}

/// Adds a new JWT signing key; new tokens use it, tokens signed with older keys stay valid
/// until they expire.
pub async fn rotate_signing_key(
    state: &AppState,
    caller: &OperatorCaller,
    id: &TenantId,
) -> Result<SigningKey, ApiError> {
    let tenant = get_tenant(state, caller, id).await?;
    if matches!(tenant.status, TenantStatus::Provisioning | TenantStatus::Deleting) {
        return Err(ApiError::not_found("tenant"));
    }
    let key = new_signing_key();
    if !state.store.tenants().add_signing_key(id, &key).await? {
        return Err(ApiError::not_found("tenant"));
    }
    forget_tenant(state, id).await;
    let record = AuditRecord::new(caller.actor(), "tenant.signing_key.rotate", "tenant", id.as_str())
        .with_details(serde_json::json!({ "kid": &key.kid }));
    audit::append(&state.store, id, record).await?;
    Ok(key)
}
