//! Conversations and their members.

use super::bson_time::{chrono_datetime_as_bson_datetime, chrono_datetime_as_bson_datetime_optional};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{TenantId, UserId};

super::ids::uuid_id!(
    /// A conversation id: a UUIDv7 in its hyphenated text form (time-ordered).
    ConversationId,
    "conversation ids are lowercase hyphenated UUIDs"
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConversationType {
    /// Exactly two members, one conversation per pair.
    Direct,
    /// Members join only when added by an owner or admin.
    Group,
    /// Any user of the tenant may join, unless the channel is private.
    Channel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConversationEncryption {
    /// The server stores and indexes the text.
    #[default]
    None,
    /// Messages carry envelopes only; the server never sees plaintext.
    E2e,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Member,
    Admin,
    Owner,
}

impl MemberRole {
    pub fn can_moderate(self) -> bool {
        self >= MemberRole::Admin
    }
}

/// The newest message, denormalised onto the conversation for lists (`http` shows it as
/// `LastMessageView`: its time as RFC 3339, not as BSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastMessage {
    pub seq: i64,
    pub sender_id: UserId,
    pub kind: super::MessageKind,
    /// The first characters of the text; empty for deleted or encrypted messages.
    pub preview: String,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conversation {
    #[serde(rename = "_id")]
    pub id: ConversationId,
    pub tenant_id: TenantId,
    #[serde(rename = "type")]
    pub kind: ConversationType,
    /// `d␟<a>␟<b>` for direct conversations (sorted pair, unit-separated), the id otherwise.
    pub unique_key: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub avatar_url: Option<String>,
    pub custom: serde_json::Value,
    /// Channels only: hidden from, and not joinable by, non-members.
    pub private: bool,
    #[serde(default)]
    pub encryption: ConversationEncryption,
    pub max_members: u32,
    pub member_count: u32,
    /// Kept with the members so "the last owner may not go" holds under concurrent requests.
    pub owner_count: u32,
    pub created_by: UserId,
    /// The highest seq assigned; messages are 1..=last_seq without gaps.
    pub last_seq: i64,
    pub last_message: Option<LastMessage>,
    /// Orders conversation lists; the creation time until the first message.
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub last_activity_at: DateTime<Utc>,
    pub pinned_seqs: Vec<i64>,
    /// Set when something else owns the membership (`code_session:<id>`): members follow it and
    /// cannot be added, removed or re-roled through the chat API.
    #[serde(default)]
    pub managed_by: Option<String>,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
}

impl Conversation {
    pub fn direct_key(a: &UserId, b: &UserId) -> String {
        let (first, second) = if a <= b { (a, b) } else { (b, a) };
        format!("d\u{1f}{first}\u{1f}{second}")
    }

    /// For a direct conversation, the member who is not `me`.
    pub fn direct_peer(&self, me: &UserId) -> Option<UserId> {
        let mut parts = self.unique_key.strip_prefix("d\u{1f}")?.split('\u{1f}');
        let (a, b) = (parts.next()?, parts.next()?);
        let other = if a == me.as_str() { b } else { a };
        UserId::parse(other).ok()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// `<conversation_id>:<user_id>`.
    #[serde(rename = "_id")]
    pub id: String,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub role: MemberRole,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub joined_at: DateTime<Utc>,
    pub muted: bool,
    pub pinned: bool,
    pub last_read_seq: i64,
    pub last_delivered_seq: i64,
    /// Set when banned: the user is no longer a member and cannot be added or rejoin.
    #[serde(default, with = "chrono_datetime_as_bson_datetime_optional")]
    pub banned_at: Option<DateTime<Utc>>,
}

impl Member {
    pub fn key(conversation: &ConversationId, user: &UserId) -> String {
        format!("{conversation}:{user}")
    }

    pub fn is_active(&self) -> bool {
        self.banned_at.is_none()
    }
}
