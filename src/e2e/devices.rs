//! The key directory: users publish devices (Ed25519 identity key + signed X25519 keys), rotate
//! and revoke them; anyone in the tenant can list them; every change is logged per user.

use chrono::{DateTime, Utc};

use crate::app::AppState;
use crate::auth::{ActingUser, AnyCaller};
use crate::domain::envelope::{ENC_LEN, unb64};
use crate::domain::{
    Device, DeviceKey, KeyEvent, KeyEventKind, KeyStatus, Page, PageRequest, Scope, UserId, valid_key_name,
};
use crate::error::{ApiError, ErrorCode};
use crate::tenancy::TenantDb;

use super::client::{key_upload_bytes, verify_signature};

/// An X25519 key as uploaded: public key and identity signature, base64url.
pub struct KeyUpload {
    pub key_id: String,
    pub public_key: String,
    pub not_after: DateTime<Utc>,
    pub signature: String,
}

pub struct NewDevice {
    pub device_id: String,
    pub identity_key: String,
    pub key: KeyUpload,
}

fn decoded(field: &str, value: &str, len: usize) -> Result<Vec<u8>, ApiError> {
    unb64(value)
        .filter(|b| b.len() == len)
        .ok_or_else(|| ApiError::validation(field, format!("must be {len} bytes, base64url without padding")))
}

/// Checks the key's shape, lifetime and identity signature; returns the stored form. `prefix`
/// names where the key sits in the request (`key.` when registering a device).
fn checked_key(
    caller: &ActingUser,
    device_id: &str,
    identity_key: &[u8],
    upload: KeyUpload,
    prefix: &str,
) -> Result<DeviceKey, ApiError> {
    if !valid_key_name(&upload.key_id) {
        return Err(ApiError::validation(&format!("{prefix}key_id"), "must be 1-64 of [A-Za-z0-9_-]"));
    }
    let public_key = decoded(&format!("{prefix}public_key"), &upload.public_key, ENC_LEN)?;
    let signature = decoded(&format!("{prefix}signature"), &upload.signature, 64)?;
    if upload.not_after <= crate::domain::now() {
        return Err(ApiError::validation(&format!("{prefix}not_after"), "must be in the future"));
    }
    let signed = key_upload_bytes(
        caller.tenant.id.as_str(),
        caller.user_id().as_str(),
        device_id,
        &upload.key_id,
        &public_key,
        upload.not_after.timestamp(),
    );
    if !verify_signature(identity_key, &signed, &signature) {
        return Err(ApiError::new(ErrorCode::InvalidSignature, "the key is not signed by the device's identity key"));
    }
    Ok(DeviceKey {
        key_id: upload.key_id,
        public_key: upload.public_key,
        not_after: upload.not_after,
        signature: upload.signature,
        status: KeyStatus::Current,
        created_at: crate::domain::now(),
    })
}

async fn log(
    db: &TenantDb,
    caller: &ActingUser,
    kind: KeyEventKind,
    device_id: &str,
    key_id: Option<String>,
) -> Result<(), ApiError> {
    let event = KeyEvent {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: caller.tenant.id.clone(),
        user_id: caller.user_id().clone(),
        kind,
        device_id: device_id.to_string(),
        key_id,
        at: crate::domain::now(),
    };
    Ok(db.devices().append_event(&event).await?)
}

/// Registers one of the caller's devices.
pub async fn register(state: &AppState, caller: &ActingUser, new: NewDevice) -> Result<Device, ApiError> {
    caller.require(Scope::ChatWrite)?;
    if !valid_key_name(&new.device_id) {
        return Err(ApiError::validation("device_id", "must be 1-64 of [A-Za-z0-9_-]"));
    }
    let identity = decoded("identity_key", &new.identity_key, 32)?;
    let key = checked_key(caller, &new.device_id, &identity, new.key, "key.")?;
    let db = state.store.tenant_db(&caller.scope());
    let max = state.settings.e2e.max_devices_per_user;
    if db.devices().count_active(caller.user_id()).await? >= max {
        return Err(too_many_devices(max));
    }
    let device = Device {
        id: Device::key(caller.user_id(), &new.device_id),
        tenant_id: caller.tenant.id.clone(),
        user_id: caller.user_id().clone(),
        device_id: new.device_id.clone(),
        identity_key: new.identity_key,
        keys: vec![key.clone()],
        created_at: crate::domain::now(),
        revoked_at: None,
    };
    if !db.devices().insert(&device).await? {
        return Err(ApiError::new(ErrorCode::Conflict, "this device id is already registered")
            .with_details(serde_json::json!({ "device_id": new.device_id })));
    }
    // Registrations racing each other all passed the check above: each counts again with itself
    // stored, and leaves if that passes the limit. A device counted after every other that stays
    // sees them all, so the limit holds; racers may all leave (their retries get in).
    if db.devices().count_active(caller.user_id()).await? > max {
        db.devices().delete(&device.id).await?;
        return Err(too_many_devices(max));
    }
    log(&db, caller, KeyEventKind::DeviceAdded, &device.device_id, Some(key.key_id)).await?;
    Ok(device)
}

fn too_many_devices(max: u64) -> ApiError {
    ApiError::new(ErrorCode::LimitReached, format!("at most {max} active devices per user"))
        .with_details(serde_json::json!({ "limit": "max_devices_per_user", "value": max }))
}

/// Replaces a device's current X25519 key; the old one is kept as retired.
pub async fn rotate(
    state: &AppState,
    caller: &ActingUser,
    device_id: &str,
    upload: KeyUpload,
) -> Result<Device, ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let device = db
        .devices()
        .get(caller.user_id(), device_id)
        .await?
        .filter(Device::is_active)
        .ok_or_else(|| ApiError::not_found("device"))?;
    let identity = decoded("identity_key", &device.identity_key, 32)?;
    let key = checked_key(caller, device_id, &identity, upload, "")?;
    if device.keys.iter().any(|k| k.key_id == key.key_id) {
        return Err(ApiError::new(ErrorCode::Conflict, "this key id was used before on this device"));
    }
    let current = device.current_key().map(|k| k.key_id.clone()).unwrap_or_default();
    let rotated = db
        .devices()
        .rotate(caller.user_id(), device_id, &current, &key)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::Conflict, "the device changed meanwhile; retry"))?;
    log(&db, caller, KeyEventKind::KeyRotated, device_id, Some(key.key_id)).await?;
    Ok(rotated)
}

/// Revokes a device: it stops being a recipient and cannot send.
pub async fn revoke(state: &AppState, caller: &ActingUser, device_id: &str) -> Result<(), ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    if !db.devices().revoke(caller.user_id(), device_id, crate::domain::now()).await? {
        db.devices().get(caller.user_id(), device_id).await?.ok_or_else(|| ApiError::not_found("device"))?;
        return Ok(());
    }
    log(&db, caller, KeyEventKind::DeviceRevoked, device_id, None).await
}

/// Active devices with their current keys, for up to `chat.max_batch_ids` users.
pub async fn list(state: &AppState, caller: &AnyCaller, users: &[UserId]) -> Result<Vec<Device>, ApiError> {
    caller.require(Scope::ChatRead)?;
    let max = state.settings.chat.max_batch_ids;
    if users.is_empty() || users.len() > max {
        return Err(ApiError::new(ErrorCode::InvalidRequest, format!("name 1 to {max} users")));
    }
    Ok(state.store.tenant_db(&caller.scope()).devices().active_of(users).await?)
}

/// A user's key events, oldest first.
pub async fn events(
    state: &AppState,
    caller: &AnyCaller,
    user: &UserId,
    page: PageRequest,
) -> Result<Page<KeyEvent>, ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.tenant_db(&caller.scope());
    let events = db.devices().events(user, page.after.as_deref(), page.limit + 1).await?;
    Ok(Page::from_overfetch(events, page.limit, |e| e.id.clone()))
}
