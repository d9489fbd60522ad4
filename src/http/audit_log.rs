//! The tenant's audit log and its verification.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::auth::{OperatorCaller, TenantCaller};
use crate::domain::{AuditActor, AuditEntry, AuditTarget, Scope, TenantId};
use crate::error::ApiError;
use crate::platform::audit::{self, Verification};

use super::extract::page_limit;
use super::openapi::ErrorResponses;
use super::tenants::tenant_path;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Page size, 1 to `http.max_page_size`.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page: entries with a lower seq follow.
    pub before: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    /// Position in the tenant's chain, from 1, without gaps.
    pub seq: i64,
    pub actor: AuditActor,
    #[schema(example = "api_key.rotate")]
    pub action: String,
    pub target: AuditTarget,
    pub at: DateTime<Utc>,
    pub request_id: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub items: Vec<AuditEntryView>,
    /// Pass as `before` for older entries; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerificationView {
    pub valid: bool,
    pub entries_checked: u64,
    pub head_seq: i64,
    /// The first entry that is missing, altered or mis-linked.
    pub first_invalid_seq: Option<i64>,
    pub problem: Option<String>,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(e: AuditEntry) -> Self {
        Self {
            seq: e.seq,
            actor: e.actor,
            action: e.action,
            target: e.target,
            at: e.at,
            request_id: e.request_id,
            details: e.details,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

impl From<Verification> for AuditVerificationView {
    fn from(v: Verification) -> Self {
        Self {
            valid: v.first_invalid.is_none(),
            entries_checked: v.entries_checked,
            head_seq: v.head_seq,
            first_invalid_seq: v.first_invalid.as_ref().map(|b| b.seq()),
            problem: v.first_invalid.map(|b| format!("{b:?}")),
        }
    }
}

/// Page through the tenant's audit log, newest first (scope `audit:read`).
#[utoipa::path(get, path = "/v1/audit-log", tag = "audit", security(("api_key" = [])),
    params(AuditQuery), responses((status = 200, body = AuditPage), ErrorResponses))]
pub async fn list_audit_log(
    caller: TenantCaller,
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::AuditRead)?;
    let limit = page_limit(&state, query.limit)?;
    let page = audit::page(&state.store, caller.tenant_id(), query.before, limit).await?.map(AuditEntryView::from);
    Ok(HttpResponse::Ok().json(AuditPage { items: page.items, next_cursor: page.next_cursor }))
}

async fn verify(state: &AppState, tenant: &TenantId) -> Result<HttpResponse, ApiError> {
    let verification = audit::verify(&state.store, tenant).await?;
    Ok(HttpResponse::Ok().json(AuditVerificationView::from(verification)))
}

/// Re-check every hash and link of the tenant's audit chain (scope `audit:read`).
#[utoipa::path(get, path = "/v1/audit-log/verify", tag = "audit", security(("api_key" = [])),
    responses((status = 200, body = AuditVerificationView), ErrorResponses))]
pub async fn verify_audit_log(caller: TenantCaller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::AuditRead)?;
    verify(&state, caller.tenant_id()).await
}

/// Re-check a tenant's audit chain (operator).
#[utoipa::path(get, path = "/admin/v1/tenants/{tenant_id}/audit-log/verify", tag = "audit",
    security(("operator_token" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = AuditVerificationView), ErrorResponses))]
pub async fn verify_as_operator(
    caller: OperatorCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = crate::platform::tenants::get_tenant(&state, &caller, &tenant_path(&path)?).await?;
    verify(&state, &tenant.id).await
}
