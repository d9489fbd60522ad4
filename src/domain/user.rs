//! End users of a tenant and their relationships.

use super::bson_time::{chrono_datetime_as_bson_datetime, chrono_datetime_as_bson_datetime_optional};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{InvalidId, TenantId};

/// A tenant-chosen user id (their own external id): 1-128 of `[A-Za-z0-9_.@=:-]`, not starting
/// with `.` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '=' | ':' | '-');
        let starts_ok = raw.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@');
        if (1..=128).contains(&raw.len()) && starts_ok && raw.chars().all(allowed) {
            Ok(Self(raw.to_string()))
        } else {
            Err(InvalidId(
                "user ids are 1-128 characters of [A-Za-z0-9_.@=:-], starting with a letter, digit, '_' or '@'",
            ))
        }
    }
}

super::ids::validated_string!(UserId);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum UserKind {
    #[default]
    Human,
    Bot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum NotificationLevel {
    #[default]
    All,
    Mentions,
    None,
}

/// Per-user preferences that other features honour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UserSettings {
    pub notifications: NotificationLevel,
    /// Others may see when this user is online.
    pub show_online: bool,
    /// Others may see how far this user has read.
    pub read_receipts: bool,
}

impl Default for UserSettings {
    fn default() -> Self {
        Self { notifications: NotificationLevel::All, show_online: true, read_receipts: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "_id")]
    pub id: UserId,
    pub tenant_id: TenantId,
    pub display_name: String,
    /// Lower-cased display name, for prefix search.
    pub name_key: String,
    pub avatar_url: Option<String>,
    pub kind: UserKind,
    pub custom: serde_json::Value,
    pub settings: UserSettings,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
    #[serde(default, with = "chrono_datetime_as_bson_datetime_optional")]
    pub deactivated_at: Option<DateTime<Utc>>,
}

impl User {
    pub fn is_active(&self) -> bool {
        self.deactivated_at.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RelationshipKind {
    /// The other user cannot start or post in a direct conversation with this user.
    Block,
    /// Notifications from the other user are silenced.
    Mute,
    Friend,
}

impl RelationshipKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RelationshipKind::Block => "block",
            RelationshipKind::Mute => "mute",
            RelationshipKind::Friend => "friend",
        }
    }
}

/// `user_id` has a relationship of `kind` towards `other_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Relationship {
    #[serde(rename = "_id")]
    pub id: String,
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub other_id: UserId,
    pub kind: RelationshipKind,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
}

impl Relationship {
    pub fn key(user: &UserId, other: &UserId, kind: RelationshipKind) -> String {
        format!("{}\u{1f}{}\u{1f}{}", user, other, kind.as_str())
    }
}

/// Checks tenant-supplied JSON objects (`custom`, `metadata`): an object, within `max_bytes`
/// when encoded, and no key that MongoDB would treat as an operator or path.
pub fn check_custom_data(value: &serde_json::Value, max_bytes: usize) -> Result<(), String> {
    if !value.is_object() {
        return Err("must be a JSON object".into());
    }
    let size = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > max_bytes {
        return Err(format!("must be at most {max_bytes} bytes of JSON (is {size})"));
    }
    fn walk(value: &serde_json::Value, depth: usize) -> Result<(), String> {
        if depth > 8 {
            return Err("is nested more than 8 levels deep".into());
        }
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map {
                    if key.is_empty() || key.starts_with('$') || key.contains('.') || key.contains('\0') {
                        return Err(format!("key '{key}' may not be empty, start with '$' or contain '.'"));
                    }
                    walk(inner, depth + 1)?;
                }
                Ok(())
            }
            serde_json::Value::Array(items) => items.iter().try_for_each(|item| walk(item, depth + 1)),
            _ => Ok(()),
        }
    }
    walk(value, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_accept_external_ids_and_refuse_paths() {
        for good in ["alice", "u_1", "alice@example.com", "auth0:12345", "A-b.c"] {
            assert!(UserId::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a/b", "$where", "-x", ".x", "a b", &"a".repeat(129)] {
            assert!(UserId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn custom_data_refuses_operator_keys_and_oversize() {
        assert!(check_custom_data(&serde_json::json!({"a": {"b": 1}}), 100).is_ok());
        assert!(check_custom_data(&serde_json::json!({"$set": 1}), 100).is_err());
        assert!(check_custom_data(&serde_json::json!({"a": [{"x.y": 1}]}), 100).is_err());
        assert!(check_custom_data(&serde_json::json!([1]), 100).is_err());
        assert!(check_custom_data(&serde_json::json!({"a": "x".repeat(200)}), 100).is_err());
    }
}
