//! Operator routes for tenants.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use validator::Validate;

use crate::app::AppState;
use crate::auth::OperatorCaller;
use crate::domain::{PlanName, Tenant, TenantId, TenantLimits, TenantLimitsPatch, TenantStatus};
use crate::error::{ApiError, ErrorCode};
use crate::platform::tenants::{self as use_cases, NewTenant, TenantChanges};

use super::extract::{PageQuery, ValidJson, path_id};
use super::openapi::ErrorResponses;

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// 3-32 characters: a lowercase letter, then lowercase letters, digits or `-`.
    #[schema(example = "acme")]
    pub id: String,
    #[validate(length(min = 1, max = 100))]
    #[schema(example = "Acme Inc")]
    pub name: String,
    /// Plan label, 1-32 of `[a-z0-9-]`; default `free`.
    pub plan: Option<String>,
    /// Overrides of the default limits.
    pub limits: Option<TenantLimitsPatch>,
    /// MIME types (or `type/*`) users may upload; default: `files.default_allowed_mime_types`.
    #[serde(default)]
    pub allowed_mime_types: Vec<String>,
    /// Browser origins allowed to open WebSockets (`https://app.example.com`); empty allows any.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenantRequest {
    #[validate(length(min = 1, max = 100))]
    pub name: Option<String>,
    pub plan: Option<String>,
    pub limits: Option<TenantLimitsPatch>,
    /// `active` or `suspended`.
    pub status: Option<TenantStatus>,
    /// Replaces the upload allow-list; `[]` restores the platform default.
    pub allowed_mime_types: Option<Vec<String>>,
    /// Replaces the WebSocket origin allow-list; `[]` allows any origin.
    pub allowed_origins: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub plan: String,
    pub limits: TenantLimits,
    pub status: TenantStatus,
    /// The tenant's own MongoDB database.
    pub database: String,
    /// Key ids (`kid`) of the JWT signing keys; secrets are never returned.
    pub signing_key_ids: Vec<String>,
    /// Upload allow-list; empty means the platform default.
    pub allowed_mime_types: Vec<String>,
    /// WebSocket origin allow-list; empty allows any.
    pub allowed_origins: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantPage {
    pub items: Vec<TenantView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn view(state: &AppState, tenant: Tenant) -> TenantView {
    TenantView {
        database: state.store.tenant_db_name(&tenant.id),
        id: tenant.id.to_string(),
        name: tenant.name,
        plan: tenant.plan.as_str().to_string(),
        limits: tenant.limits,
        status: tenant.status,
        signing_key_ids: tenant.signing_keys.into_iter().map(|k| k.kid).collect(),
        allowed_mime_types: tenant.allowed_mime_types,
        allowed_origins: tenant.allowed_origins,
        created_at: tenant.created_at,
        updated_at: tenant.updated_at,
    }
}

fn parse_plan(raw: &str) -> Result<PlanName, ApiError> {
    PlanName::parse(raw).map_err(|e| ApiError::validation("plan", e.0))
}

pub fn tenant_path(raw: &str) -> Result<TenantId, ApiError> {
    path_id(raw, "tenant_id", TenantId::parse)
}

/// Create a tenant: its record, its own database with every index, and a JWT signing secret.
#[utoipa::path(post, path = "/admin/v1/tenants", tag = "tenants", security(("operator_token" = [])),
    request_body = CreateTenantRequest, responses((status = 201, body = TenantView), ErrorResponses))]
pub async fn create_tenant(
    caller: OperatorCaller,
    state: web::Data<AppState>,
    ValidJson(body): ValidJson<CreateTenantRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = TenantId::parse(&body.id).map_err(|e| {
        ApiError::new(ErrorCode::InvalidRequest, format!("invalid tenant id: {e}"))
            .with_details(serde_json::json!({ "fields": [{ "field": "id", "message": e.0 }] }))
    })?;
    let plan = body.plan.as_deref().map(parse_plan).transpose()?.unwrap_or_default();
    let new = NewTenant {
        id,
        name: body.name.trim().to_string(),
        plan,
        limits: body.limits.unwrap_or_default(),
        allowed_mime_types: body.allowed_mime_types,
        allowed_origins: body.allowed_origins,
    };
    let tenant = use_cases::create_tenant(&state, &caller, new).await?;
    Ok(HttpResponse::Created().json(view(&state, tenant)))
}

/// List tenants in id order.
#[utoipa::path(get, path = "/admin/v1/tenants", tag = "tenants", security(("operator_token" = [])),
    params(PageQuery), responses((status = 200, body = TenantPage), ErrorResponses))]
pub async fn list_tenants(
    caller: OperatorCaller,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = use_cases::list_tenants(&state, &caller, query.into_inner().into_page_request(&state)?).await?;
    let page = page.map(|t| view(&state, t));
    Ok(HttpResponse::Ok().json(TenantPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Get one tenant.
#[utoipa::path(get, path = "/admin/v1/tenants/{tenant_id}", tag = "tenants", security(("operator_token" = [])),
    params(("tenant_id" = String, Path)), responses((status = 200, body = TenantView), ErrorResponses))]
pub async fn get_tenant(
    caller: OperatorCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = use_cases::get_tenant(&state, &caller, &tenant_path(&path)?).await?;
    Ok(HttpResponse::Ok().json(view(&state, tenant)))
}

/// Change a tenant's name, plan, limits (merged field by field) or status (suspend/reactivate).
#[utoipa::path(patch, path = "/admin/v1/tenants/{tenant_id}", tag = "tenants", security(("operator_token" = [])),
    params(("tenant_id" = String, Path)), request_body = UpdateTenantRequest,
    responses((status = 200, body = TenantView), ErrorResponses))]
pub async fn update_tenant(
    caller: OperatorCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJson(body): ValidJson<UpdateTenantRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = tenant_path(&path)?;
    let changes = TenantChanges {
        name: body.name.map(|n| n.trim().to_string()),
        plan: body.plan.as_deref().map(parse_plan).transpose()?,
        limits: body.limits,
        status: body.status,
        allowed_mime_types: body.allowed_mime_types,
        allowed_origins: body.allowed_origins,
    };
    let tenant = use_cases::update_tenant(&state, &caller, &id, changes).await?;
    Ok(HttpResponse::Ok().json(view(&state, tenant)))
}

/// Delete a tenant: revoke its keys, drop its database, remove its record (audited).
#[utoipa::path(delete, path = "/admin/v1/tenants/{tenant_id}", tag = "tenants", security(("operator_token" = [])),
    params(("tenant_id" = String, Path)), responses((status = 204, description = "Deleted"), ErrorResponses))]
pub async fn delete_tenant(
    caller: OperatorCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    use_cases::delete_tenant(&state, &caller, &tenant_path(&path)?).await?;
    Ok(HttpResponse::NoContent().finish())
}
