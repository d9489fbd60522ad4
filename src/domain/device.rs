//! E2E key directory: a user's devices, their keys, and the log of key changes.

use super::bson_time::{chrono_datetime_as_bson_datetime, chrono_datetime_as_bson_datetime_optional};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{TenantId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// The key senders must wrap to.
    Current,
    /// Replaced by a newer key; kept so old messages stay readable.
    Retired,
}

/// An X25519 key of a device, signed by the device's identity key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceKey {
    pub key_id: String,
    /// 32 bytes, base64url.
    pub public_key: String,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub not_after: DateTime<Utc>,
    /// Ed25519 signature by the identity key (64 bytes, base64url).
    pub signature: String,
    pub status: KeyStatus,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    /// `<user_id>␟<device_id>`.
    #[serde(rename = "_id")]
    pub id: String,
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub device_id: String,
    /// Ed25519 public key, 32 bytes, base64url.
    pub identity_key: String,
    pub keys: Vec<DeviceKey>,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(default, with = "chrono_datetime_as_bson_datetime_optional")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Device {
    pub fn key(user: &UserId, device_id: &str) -> String {
        format!("{user}\u{1f}{device_id}")
    }

    pub fn current_key(&self) -> Option<&DeviceKey> {
        self.keys.iter().find(|k| k.status == KeyStatus::Current)
    }

    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyEventKind {
    DeviceAdded,
    KeyRotated,
    DeviceRevoked,
}

/// One change to a user's keys, so clients can warn that a safety number changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyEvent {
    /// UUIDv7: events of a user are ordered by id.
    #[serde(rename = "_id")]
    pub id: String,
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub kind: KeyEventKind,
    pub device_id: String,
    pub key_id: Option<String>,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub at: DateTime<Utc>,
}

/// Device and key ids: 1-64 of `[A-Za-z0-9_-]`.
pub fn valid_key_name(raw: &str) -> bool {
    (1..=64).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
