//! Liveness, readiness (MongoDB and Redis reachable) and Prometheus metrics.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::{ApiError, ErrorCode};

#[derive(Serialize, ToSchema)]
pub struct HealthView {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct ReadinessView {
    #[schema(example = "ready")]
    pub status: &'static str,
    /// Each dependency: `ok` or `down: <reason>`.
    #[schema(value_type = Object)]
    pub checks: serde_json::Map<String, serde_json::Value>,
}

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, body = HealthView)))]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(HealthView { status: "ok" })
}

/// MongoDB and Redis both answer; 503 names the one that does not.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, body = ReadinessView), (status = 503, body = crate::error::ErrorBody)))]
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (mongo, redis) = tokio::join!(state.store.ping(), state.redis.ping());
    let mut checks = serde_json::Map::new();
    let mut down = Vec::new();
    for (name, result) in [("mongodb", mongo.map_err(|e| e.to_string())), ("redis", redis.map_err(|e| e.to_string()))] {
        match result {
            Ok(()) => checks.insert(name.into(), "ok".into()),
            Err(reason) => {
                down.push(name);
                checks.insert(name.into(), format!("down: {reason}").into())
            }
        };
    }
    if down.is_empty() {
        return Ok(HttpResponse::Ok().json(ReadinessView { status: "ready", checks }));
    }
    Err(ApiError::new(ErrorCode::ServiceUnavailable, format!("not ready: {} down", down.join(" and ")))
        .with_details(serde_json::json!({ "checks": checks })))
}

/// Prometheus text exposition of request counts and latencies.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.metrics.run_upkeep();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render())
}
