//! The error vocabulary: every failure leaves confab as
//! `{"error": {"code", "message", "details", "request_id"}}` with a stable snake_case code.
//!
//! Module errors convert into `ApiError`; 5xx bodies are opaque and their cause is logged once,
//! here, with the request id.

use std::fmt;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

tokio::task_local! {
    /// The id of the request being served, set by the request-context middleware.
    pub static REQUEST_ID: String;
}

/// The current request's id, or an empty string outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// Stable error codes. Clients match on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    InvalidRequest,
    ValidationFailed,
    Unauthorized,
    Forbidden,
    InsufficientScope,
    TenantSuspended,
    UserDeactivated,
    Blocked,
    NotAMember,
    InvalidSignature,
    NotFound,
    RouteNotFound,
    Conflict,
    TenantExists,
    LimitReached,
    ApiKeyRevoked,
    LastOwner,
    RecipientsMismatch,
    StaleKeys,
    UrlExpired,
    PayloadTooLarge,
    RangeNotSatisfiable,
    UnsupportedMediaType,
    RateLimited,
    TooManyConnections,
    Internal,
    ServiceUnavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InsufficientScope => "insufficient_scope",
            ErrorCode::TenantSuspended => "tenant_suspended",
            ErrorCode::UserDeactivated => "user_deactivated",
            ErrorCode::Blocked => "blocked",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RouteNotFound => "route_not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TenantExists => "tenant_exists",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::ApiKeyRevoked => "api_key_revoked",
            ErrorCode::LastOwner => "last_owner",
            ErrorCode::RecipientsMismatch => "recipients_mismatch",
            ErrorCode::StaleKeys => "stale_keys",
            ErrorCode::UrlExpired => "url_expired",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Internal => "internal",
            ErrorCode::ServiceUnavailable => "service_unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidJson | ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorCode::ValidationFailed => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden
            | ErrorCode::InsufficientScope
            | ErrorCode::TenantSuspended
            | ErrorCode::UserDeactivated
            | ErrorCode::Blocked
            | ErrorCode::NotAMember
            | ErrorCode::InvalidSignature => StatusCode::FORBIDDEN,
            ErrorCode::UrlExpired | ErrorCode::StaleKeys => StatusCode::GONE,
            ErrorCode::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::NotFound | ErrorCode::RouteNotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict
            | ErrorCode::TenantExists
            | ErrorCode::LimitReached
            | ErrorCode::ApiKeyRevoked
            | ErrorCode::LastOwner
            | ErrorCode::RecipientsMismatch => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RateLimited | ErrorCode::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `validation_failed`.
    #[schema(example = "validation_failed")]
    pub code: &'static str,
    /// Human-readable explanation; may change between versions.
    pub message: String,
    /// Structured context, e.g. per-field problems for `validation_failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
    /// Same as the `x-request-id` response header; quote it when reporting a problem.
    pub request_id: String,
}

/// Boxed so `Result<T, ApiError>` stays one pointer wide on the happy path.
pub struct ApiError(Box<ErrorParts>);

struct ErrorParts {
    code: ErrorCode,
    message: String,
    details: Option<serde_json::Value>,
    retry_after_secs: Option<u64>,
    header: Option<(&'static str, String)>,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(Box::new(ErrorParts {
            code,
            message: message.into(),
            details: None,
            retry_after_secs: None,
            header: None,
            cause: None,
        }))
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.0.details = Some(details);
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.0.retry_after_secs = Some(secs);
        self
    }

    /// An extra response header (e.g. `Content-Range` on a 416).
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.0.header = Some((name, value));
        self
    }

    fn with_cause(mut self, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.0.cause = Some(cause.into());
        self
    }

    /// A server-side failure: the client sees only `internal`; the cause is logged.
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(ErrorCode::Internal, "internal error").with_cause(cause)
    }

    pub fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(ErrorCode::ServiceUnavailable, "a backing service is unavailable; retry later").with_cause(cause)
    }

    /// The node is stopping: the client connects again (to another node).
    pub fn shutting_down() -> Self {
        Self::new(ErrorCode::ServiceUnavailable, "this node is shutting down; connect again")
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// One body for every rejected credential, so callers learn nothing about which check failed.
    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::Unauthorized, "missing, invalid, expired or revoked credentials")
    }

    pub fn validation(field: &str, problem: impl Into<String>) -> Self {
        let problem = problem.into();
        Self::new(ErrorCode::ValidationFailed, format!("{field}: {problem}"))
            .with_details(serde_json::json!({ "fields": [{ "field": field, "message": problem }] }))
    }

    pub fn code(&self) -> ErrorCode {
        self.0.code
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.code.as_str(), self.0.message)?;
        if let Some(cause) = &self.0.cause {
            write!(f, " ({cause})")?;
        }
        Ok(())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.0.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let parts = &self.0;
        let request_id = current_request_id();
        if let Some(cause) = &parts.cause {
            tracing::error!(request_id = %request_id, code = parts.code.as_str(), error = %cause, "request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        if parts.code == ErrorCode::Unauthorized {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let Some((name, value)) = &parts.header {
            response.insert_header((*name, value.as_str()));
        }
        if let Some(secs) = parts.retry_after_secs {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: parts.code.as_str(),
                message: parts.message.clone(),
                details: parts.details.clone(),
                request_id,
            },
        })
    }
}

impl From<mongodb::error::Error> for ApiError {
    fn from(e: mongodb::error::Error) -> Self {
        use mongodb::error::ErrorKind;
        match *e.kind {
            ErrorKind::ServerSelection { .. } | ErrorKind::ConnectionPoolCleared { .. } => ApiError::unavailable(e),
            _ => ApiError::internal(e),
        }
    }
}
