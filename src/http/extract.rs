//! Extractors that turn raw input into validated values, with errors in confab's shape:
//! malformed JSON -> 400 `invalid_json`; well-formed but wrong -> 422 `validation_failed` with
//! per-field details; bad query or path parameters -> 400 `invalid_request`; oversized
//! bodies -> 413; non-JSON content types -> 415.

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;
use validator::{Validate, ValidationErrors, ValidationErrorsKind};

use crate::app::AppState;
use crate::domain::PageRequest;
use crate::error::{ApiError, ErrorCode};

/// A JSON body that parsed and passed `validator` checks.
pub struct ValidJson<T>(pub T);

/// Like `ValidJson`, but an empty body means `T::default()` (for optional request bodies).
pub struct ValidJsonOrDefault<T>(pub T);

impl<T: DeserializeOwned + Validate + 'static> FromRequest for ValidJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_body(req, payload);
        Box::pin(async move { parse_valid(&body.await?).map(ValidJson) })
    }
}

impl<T: DeserializeOwned + Validate + Default + 'static> FromRequest for ValidJsonOrDefault<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_body(req, payload);
        Box::pin(async move {
            let body = body.await?;
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(ValidJsonOrDefault(T::default()));
            }
            parse_valid(&body).map(ValidJsonOrDefault)
        })
    }
}

fn is_json(req: &HttpRequest) -> bool {
    let Some(value) = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads the body up to `http.max_json_body_bytes`, refusing early on a large Content-Length.
fn read_body(req: &HttpRequest, payload: &mut Payload) -> LocalBoxFuture<'static, Result<web::BytesMut, ApiError>> {
    let limit = req.app_data::<web::Data<AppState>>().map_or(256 * 1024, |s| s.settings.http.max_json_body_bytes);
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let json = is_json(req);
    let mut payload = payload.take();
    Box::pin(async move {
        let too_large = || {
            ApiError::new(ErrorCode::PayloadTooLarge, format!("request body exceeds {limit} bytes"))
                .with_details(serde_json::json!({ "limit_bytes": limit }))
        };
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("could not read body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        if !json && !body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send JSON with Content-Type: application/json",
            ));
        }
        Ok(body)
    })
}

fn parse_valid<T: DeserializeOwned + Validate>(body: &[u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            let field = if path == "." { "body".to_string() } else { path };
            ApiError::validation(&field, strip_position(&inner.to_string()))
        } else {
            ApiError::new(ErrorCode::InvalidJson, format!("malformed JSON: {inner}"))
        }
    })?;
    value.validate().map_err(validation_error)?;
    Ok(value)
}

/// serde_json appends "at line 1 column 9", which says nothing useful for a data error.
fn strip_position(message: &str) -> String {
    message.split(" at line ").next().unwrap_or(message).to_string()
}

/// Flattens `validator` errors into `[{field, message}]`, nested fields dotted.
pub fn validation_error(errors: ValidationErrors) -> ApiError {
    let mut fields = Vec::new();
    collect(&errors, "", &mut fields);
    let summary = fields
        .iter()
        .map(|f| format!("{}: {}", f["field"].as_str().unwrap_or(""), f["message"].as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join("; ");
    ApiError::new(ErrorCode::ValidationFailed, summary).with_details(serde_json::json!({ "fields": fields }))
}

fn collect(errors: &ValidationErrors, prefix: &str, out: &mut Vec<serde_json::Value>) {
    for (field, kind) in errors.errors() {
        let path = if prefix.is_empty() { field.to_string() } else { format!("{prefix}.{field}") };
        match kind {
            ValidationErrorsKind::Field(list) => {
                for e in list {
                    let message = e.message.as_ref().map_or_else(|| e.code.to_string(), ToString::to_string);
                    out.push(serde_json::json!({ "field": path, "message": message }));
                }
            }
            ValidationErrorsKind::Struct(inner) => collect(inner, &path, out),
            ValidationErrorsKind::List(items) => {
                for (i, inner) in items {
                    collect(inner, &format!("{path}[{i}]"), out);
                }
            }
        }
    }
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|e, _| ApiError::new(ErrorCode::InvalidRequest, format!("invalid query parameters: {e}")).into())
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|e, _| ApiError::new(ErrorCode::InvalidRequest, format!("invalid path: {e}")).into())
}

/// Parses a path segment into an id type, answering 400 `invalid_request` when malformed.
pub fn path_id<T, E: std::fmt::Display>(
    raw: &str,
    name: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<T, ApiError> {
    parse(raw).map_err(|e| {
        ApiError::new(ErrorCode::InvalidRequest, format!("invalid {name}: {e}"))
            .with_details(serde_json::json!({ "param": name, "value": raw }))
    })
}

/// `?limit=&after=` on list endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to `http.max_page_size` (default `http.default_page_size`).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub after: Option<String>,
}

impl PageQuery {
    pub fn into_page_request(self, state: &AppState) -> Result<PageRequest, ApiError> {
        Ok(PageRequest { limit: page_limit(state, self.limit)?, after: self.after })
    }
}

/// A requested page size, defaulted and checked against `http.max_page_size`.
pub fn page_limit(state: &AppState, requested: Option<u32>) -> Result<u32, ApiError> {
    let http = &state.settings.http;
    let limit = requested.unwrap_or(http.default_page_size);
    if limit == 0 || limit > http.max_page_size {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("limit must be between 1 and {}", http.max_page_size),
        )
        .with_details(serde_json::json!({ "param": "limit" })));
    }
    Ok(limit)
}

/// For PATCH fields where `null` means "clear" and absence means "keep":
/// absent -> `None`, `null` -> `Some(None)`, value -> `Some(Some(v))`.
pub fn double_option<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}
