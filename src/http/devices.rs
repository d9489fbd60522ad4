//! The E2E key directory: devices, their keys, and key-change events.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use validator::Validate;

use crate::app::AppState;
use crate::auth::{ActingUser, AnyCaller};
use crate::domain::{Device, DeviceKey, KeyEvent, KeyEventKind, KeyStatus, PageRequest, UserId};
use crate::e2e::devices::{self as use_cases, KeyUpload, NewDevice};
use crate::error::{ApiError, ErrorCode};

use super::extract::{PageQuery, ValidJson};
use super::openapi::ErrorResponses;
use super::users::user_path;

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyUploadRequest {
    /// 1-64 of `[A-Za-z0-9_-]`, unique per device.
    pub key_id: String,
    /// X25519 public key, 32 bytes, base64url without padding.
    pub public_key: String,
    pub not_after: DateTime<Utc>,
    /// Ed25519 signature by the identity key over the key-upload bytes (docs/e2e.md), base64url.
    pub signature: String,
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDeviceRequest {
    pub device_id: String,
    /// Ed25519 public key, 32 bytes, base64url without padding.
    pub identity_key: String,
    pub key: KeyUploadRequest,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceKeyView {
    pub key_id: String,
    pub public_key: String,
    pub not_after: DateTime<Utc>,
    pub signature: String,
    pub status: KeyStatus,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceView {
    pub user_id: String,
    pub device_id: String,
    pub identity_key: String,
    /// The key senders must wrap to.
    pub current_key: Option<DeviceKeyView>,
    /// Earlier keys, kept so old messages stay readable.
    pub retired_keys: Vec<DeviceKeyView>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    pub items: Vec<DeviceView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyEventView {
    pub id: String,
    pub kind: KeyEventKind,
    pub device_id: String,
    pub key_id: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyEventPage {
    /// Oldest first.
    pub items: Vec<KeyEventView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DevicesQuery {
    /// Comma-separated user ids (at most `chat.max_batch_ids`).
    pub user_ids: String,
}

fn key_view(k: DeviceKey) -> DeviceKeyView {
    DeviceKeyView {
        key_id: k.key_id,
        public_key: k.public_key,
        not_after: k.not_after,
        signature: k.signature,
        status: k.status,
        created_at: k.created_at,
    }
}

impl From<Device> for DeviceView {
    fn from(d: Device) -> Self {
        let (current, retired): (Vec<_>, Vec<_>) = d.keys.into_iter().partition(|k| k.status == KeyStatus::Current);
        Self {
            user_id: d.user_id.to_string(),
            device_id: d.device_id,
            identity_key: d.identity_key,
            current_key: current.into_iter().next().map(key_view),
            retired_keys: retired.into_iter().map(key_view).collect(),
            created_at: d.created_at,
        }
    }
}

fn upload(k: KeyUploadRequest) -> KeyUpload {
    KeyUpload { key_id: k.key_id, public_key: k.public_key, not_after: k.not_after, signature: k.signature }
}

/// Publish one of your devices with its identity key and first X25519 key. At most
/// `e2e.max_devices_per_user` active devices (409 `limit_reached`); of registrations racing past
/// the limit, all may be refused, and a retry gets in while there is room.
#[utoipa::path(post, path = "/v1/me/devices", tag = "e2e", security(("user_jwt" = []), ("api_key" = [])),
    request_body = RegisterDeviceRequest, responses((status = 201, body = DeviceView), ErrorResponses))]
pub async fn register_device(
    caller: ActingUser,
    state: web::Data<AppState>,
    ValidJson(body): ValidJson<RegisterDeviceRequest>,
) -> Result<HttpResponse, ApiError> {
    let new = NewDevice { device_id: body.device_id, identity_key: body.identity_key, key: upload(body.key) };
    let device = use_cases::register(&state, &caller, new).await?;
    Ok(HttpResponse::Created().json(DeviceView::from(device)))
}

/// Replace a device's X25519 key (the old one is retired).
#[utoipa::path(post, path = "/v1/me/devices/{device_id}/keys", tag = "e2e", security(("user_jwt" = []), ("api_key" = [])),
    params(("device_id" = String, Path)), request_body = KeyUploadRequest,
    responses((status = 200, body = DeviceView), ErrorResponses))]
pub async fn rotate_key(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJson(body): ValidJson<KeyUploadRequest>,
) -> Result<HttpResponse, ApiError> {
    let device = use_cases::rotate(&state, &caller, &path, upload(body)).await?;
    Ok(HttpResponse::Ok().json(DeviceView::from(device)))
}

/// Revoke one of your devices.
#[utoipa::path(delete, path = "/v1/me/devices/{device_id}", tag = "e2e", security(("user_jwt" = []), ("api_key" = [])),
    params(("device_id" = String, Path)), responses((status = 204, description = "Revoked"), ErrorResponses))]
pub async fn revoke_device(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    use_cases::revoke(&state, &caller, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Active devices and current keys of several users.
#[utoipa::path(get, path = "/v1/devices", tag = "e2e", security(("user_jwt" = []), ("api_key" = [])),
    params(DevicesQuery), responses((status = 200, body = DeviceList), ErrorResponses))]
pub async fn list_devices(
    caller: AnyCaller,
    state: web::Data<AppState>,
    query: web::Query<DevicesQuery>,
) -> Result<HttpResponse, ApiError> {
    let users = query
        .user_ids
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|raw| UserId::parse(raw).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("user_ids: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let devices = use_cases::list(&state, &caller, &users).await?;
    Ok(HttpResponse::Ok().json(DeviceList { items: devices.into_iter().map(DeviceView::from).collect() }))
}

/// A user's key changes (device added, key rotated, device revoked), oldest first.
#[utoipa::path(get, path = "/v1/users/{user_id}/key-events", tag = "e2e", security(("user_jwt" = []), ("api_key" = [])),
    params(("user_id" = String, Path), PageQuery), responses((status = 200, body = KeyEventPage), ErrorResponses))]
pub async fn key_events(
    caller: AnyCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page: PageRequest = query.into_inner().into_page_request(&state)?;
    let page = use_cases::events(&state, &caller, &user_path(&path)?, page).await?;
    let page = page.map(|e: KeyEvent| KeyEventView {
        id: e.id,
        kind: e.kind,
        device_id: e.device_id,
        key_id: e.key_id,
        at: e.at,
    });
    Ok(HttpResponse::Ok().json(KeyEventPage { items: page.items, next_cursor: page.next_cursor }))
}
