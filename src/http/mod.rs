//! The REST surface: thin handlers (extract, call one use case, map to a response), one file
//! per resource, plus the request-context middleware, extractors and the OpenAPI document.

mod api_keys;
mod audit_log;
mod extract;
mod health;
mod middleware;
pub mod openapi;
mod tenants;

use actix_web::web;

use crate::error::{ApiError, ErrorCode};

pub use extract::{PageQuery, ValidJson};
pub use middleware::request_context;

/// Registers every route and the extractor error handlers.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(extract::query_config())
        .app_data(extract::path_config())
        .route("/health/live", web::get().to(health::live))
        .route("/health/ready", web::get().to(health::ready))
        .route("/metrics", web::get().to(health::metrics))
        .configure(openapi::configure)
        .service(
            web::scope("/admin/v1")
                .route("/tenants", web::post().to(tenants::create_tenant))
                .route("/tenants", web::get().to(tenants::list_tenants))
                .route("/tenants/{tenant_id}", web::get().to(tenants::get_tenant))
                .route("/tenants/{tenant_id}", web::patch().to(tenants::update_tenant))
                .route("/tenants/{tenant_id}", web::delete().to(tenants::delete_tenant))
                .route("/tenants/{tenant_id}/api-keys", web::post().to(api_keys::create_api_key_as_operator))
                .route("/tenants/{tenant_id}/audit-log/verify", web::get().to(audit_log::verify_as_operator)),
        )
        .service(
            web::scope("/v1")
                .route("/api-keys", web::post().to(api_keys::create_api_key))
                .route("/api-keys", web::get().to(api_keys::list_api_keys))
                .route("/api-keys/{key_id}/rotate", web::post().to(api_keys::rotate_api_key))
                .route("/api-keys/{key_id}", web::delete().to(api_keys::revoke_api_key))
                .route("/audit-log", web::get().to(audit_log::list_audit_log))
                .route("/audit-log/verify", web::get().to(audit_log::verify_audit_log)),
        );
}

/// The answer for any path no route matches.
pub async fn route_not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(ErrorCode::RouteNotFound, "no such route"))
}
