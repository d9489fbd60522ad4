//! Tenants, their limits and their API keys, as stored.

use super::bson_time::{chrono_datetime_as_bson_datetime, chrono_datetime_as_bson_datetime_optional};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiKeyId, InvalidId, Scope, TenantId};

/// Lifecycle of a tenant. Only `active` tenants' credentials are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    /// Its database and indexes are being created.
    Provisioning,
    Active,
    /// Credentials answer 403 `tenant_suspended`; data is kept.
    Suspended,
    /// Deletion started; a repeated DELETE finishes it.
    Deleting,
    /// Its data is gone; the record stays so the id is never given to another tenant (whose
    /// audit trail would otherwise continue this one's).
    Deleted,
}

/// A plan label: 1-32 characters of `[a-z0-9-]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PlanName(String);

impl PlanName {
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        if (1..=32).contains(&raw.len())
            && raw.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            Ok(Self(raw.to_string()))
        } else {
            Err(InvalidId("plan names are 1-32 characters of [a-z0-9-]"))
        }
    }
}

super::ids::validated_string!(PlanName);

impl Default for PlanName {
    fn default() -> Self {
        Self("free".to_string())
    }
}

/// Per-tenant quotas. Defaults come from `tenants.default_limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantLimits {
    /// Most end users the tenant may register.
    pub max_users: u64,
    /// Most API keys that are not revoked.
    pub max_api_keys: u32,
    /// Default cap on members of one conversation.
    pub max_conversation_members: u32,
    /// Largest message body in bytes.
    pub max_message_bytes: u32,
    /// Total bytes of stored files.
    pub storage_quota_bytes: u64,
    /// API requests per second across all of the tenant's keys (429 above it).
    pub requests_per_second: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be between {min} and {max}")]
pub struct LimitsError {
    pub field: &'static str,
    pub min: u64,
    pub max: u64,
}

impl TenantLimits {
    /// Bounds that keep a limit meaningful; a tenant outside them is a configuration mistake.
    pub fn check(&self) -> Result<(), LimitsError> {
        let within = |field: &'static str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) { Ok(()) } else { Err(LimitsError { field, min, max }) }
        };
        within("max_users", self.max_users, 1, 1_000_000_000)?;
        within("max_api_keys", self.max_api_keys.into(), 1, 1_000)?;
        within("max_conversation_members", self.max_conversation_members.into(), 2, 1_000_000)?;
        within("max_message_bytes", self.max_message_bytes.into(), 1, 1_048_576)?;
        within("storage_quota_bytes", self.storage_quota_bytes, 0, 1 << 50)?;
        within("requests_per_second", self.requests_per_second.into(), 1, 1_000_000)?;
        Ok(())
    }

    /// Applies the fields a patch sets, then checks the result.
    pub fn patched(&self, patch: &TenantLimitsPatch) -> Result<Self, LimitsError> {
        let limits = TenantLimits {
            max_users: patch.max_users.unwrap_or(self.max_users),
            max_api_keys: patch.max_api_keys.unwrap_or(self.max_api_keys),
            max_conversation_members: patch.max_conversation_members.unwrap_or(self.max_conversation_members),
            max_message_bytes: patch.max_message_bytes.unwrap_or(self.max_message_bytes),
            storage_quota_bytes: patch.storage_quota_bytes.unwrap_or(self.storage_quota_bytes),
            requests_per_second: patch.requests_per_second.unwrap_or(self.requests_per_second),
        };
        limits.check()?;
        Ok(limits)
    }
}

/// Some of a tenant's limits; absent fields keep their value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantLimitsPatch {
    pub max_users: Option<u64>,
    pub max_api_keys: Option<u32>,
    pub max_conversation_members: Option<u32>,
    pub max_message_bytes: Option<u32>,
    pub storage_quota_bytes: Option<u64>,
    pub requests_per_second: Option<u32>,
}

/// A key that signs the tenant's end-user JWTs (HS256); `kid` names it in token headers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SigningKey {
    pub kid: String,
    /// Base64url of 32 random bytes. Never leaves the server.
    pub secret: String,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tenant {
    #[serde(rename = "_id")]
    pub id: TenantId,
    pub name: String,
    pub plan: PlanName,
    pub limits: TenantLimits,
    pub status: TenantStatus,
    pub signing_keys: Vec<SigningKey>,
    /// MIME types (or `type/*`) the tenant's users may upload; empty means the platform default.
    #[serde(default)]
    pub allowed_mime_types: Vec<String>,
    /// Browser origins (`https://app.example.com`) allowed to open WebSockets; empty allows any.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Users ever created (deactivated ones included), counted against `limits.max_users`.
    #[serde(default)]
    pub user_count: u64,
    /// API keys not revoked, counted against `limits.max_api_keys`.
    #[serde(default)]
    pub api_key_count: u64,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
}

/// An API key as stored: only hashes of its secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKey {
    #[serde(rename = "_id")]
    pub id: ApiKeyId,
    pub tenant_id: TenantId,
    pub name: String,
    /// The non-secret start of the key, e.g. `cfk_live_0a1b2c3d4e5f6g7h`, to recognise it in lists.
    pub prefix: String,
    pub scopes: Vec<Scope>,
    /// Hex SHA-256 of the whole current key.
    pub secret_hash: String,
    /// Hex SHA-256 of the key before the last rotation, accepted until `previous_valid_until`.
    pub previous_secret_hash: Option<String>,
    #[serde(default, with = "chrono_datetime_as_bson_datetime_optional")]
    pub previous_valid_until: Option<DateTime<Utc>>,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(default, with = "chrono_datetime_as_bson_datetime_optional")]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(default, with = "chrono_datetime_as_bson_datetime_optional")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, with = "chrono_datetime_as_bson_datetime_optional")]
    pub rotated_at: Option<DateTime<Utc>>,
    #[serde(default, with = "chrono_datetime_as_bson_datetime_optional")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    pub fn is_usable_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expiry| now < expiry)
    }

    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}
