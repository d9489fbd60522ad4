//! Messages, reactions and the search terms derived from text.

use super::bson_time::{chrono_datetime_as_bson_datetime, chrono_datetime_as_bson_datetime_optional};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ConversationId, TenantId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Text,
    CodeSnippet,
    File,
    Image,
    Video,
    Audio,
    /// Written by confab (membership changes) or a tenant's server, never by a user token.
    System,
}

/// Who "speaks" in an AI conversation (seed 004).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AiRole {
    User,
    Assistant,
    System,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenUsage {
    pub prompt: Option<u32>,
    pub completion: Option<u32>,
    pub total: Option<u32>,
}

/// Bot/AI attribution of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AiInfo {
    pub role: AiRole,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub tokens: Option<TokenUsage>,
}

/// A file of confab's (`file_id`, URL `/v1/files/{id}`) or a link to content elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// Set for uploaded files; the file may since have been deleted (it then answers 404).
    #[serde(default)]
    pub file_id: Option<String>,
    pub url: String,
    pub name: Option<String>,
    pub mime: Option<String>,
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EditedText {
    pub text: Option<String>,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub replaced_at: DateTime<Utc>,
}

/// A message. Absent, empty and zero parts are left out of its document (most messages have
/// no language, attachments, thread, mentions, metadata, AI details, reactions, envelope or
/// edits, and writing them cost about a third of a stored message's bytes); they read back as
/// absent, empty and zero. MongoDB's `{field: null}` matches a field left out, so filters on
/// `deleted_at: null` hold either way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    #[serde(rename = "_id")]
    pub id: String,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub seq: i64,
    pub client_msg_id: String,
    pub sender_id: UserId,
    pub kind: MessageKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Seq of the thread parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<i64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reply_count: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    #[serde(default = "no_metadata", skip_serializing_if = "is_no_metadata")]
    pub metadata: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai: Option<AiInfo>,
    /// Reactions per emoji (emoji are validated to be safe as field names).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub reaction_counts: std::collections::BTreeMap<String, i64>,
    /// The end-to-end encrypted content (instead of `text`) in E2E conversations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<super::envelope::Envelope>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edit_history: Vec<EditedText>,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "chrono_datetime_as_bson_datetime_optional")]
    pub edited_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "chrono_datetime_as_bson_datetime_optional")]
    pub deleted_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_by: Option<UserId>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn no_metadata() -> serde_json::Value {
    serde_json::json!({})
}

fn is_no_metadata(metadata: &serde_json::Value) -> bool {
    metadata.as_object().is_some_and(|m| m.is_empty())
}

/// One user's reaction to one message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reaction {
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub seq: i64,
    pub emoji: String,
    pub user_id: UserId,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
}

impl Message {
    /// A new, empty message of `kind` from `sender`; its seq is assigned when it is stored.
    pub fn draft(
        tenant: &TenantId,
        conversation: &ConversationId,
        sender: &UserId,
        kind: MessageKind,
        client_msg_id: String,
    ) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: tenant.clone(),
            conversation_id: conversation.clone(),
            seq: 0,
            client_msg_id,
            sender_id: sender.clone(),
            kind,
            text: None,
            language: None,
            attachments: Vec::new(),
            reply_to: None,
            reply_count: 0,
            mentions: Vec::new(),
            metadata: serde_json::json!({}),
            ai: None,
            reaction_counts: Default::default(),
            envelope: None,
            edit_history: Vec::new(),
            created_at: super::now(),
            edited_at: None,
            deleted_at: None,
            deleted_by: None,
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }
}

/// Most distinct terms kept per message.
pub const MAX_TERMS: usize = 200;
/// Longest term kept; longer words are cut to it (queries are cut the same way).
pub const MAX_TERM_CHARS: usize = 64;

/// Splits text into lower-cased words (letters and digits; everything else separates), unique,
/// in first-seen order. Used for both stored messages and queries so they match.
pub fn search_terms(text: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let term: String = word.to_lowercase().chars().take(MAX_TERM_CHARS).collect();
        if !terms.contains(&term) {
            terms.push(term);
            if terms.len() == MAX_TERMS {
                break;
            }
        }
    }
    terms
}

/// The distinct search terms of several texts, in first-seen order.
pub fn search_terms_of<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut terms = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for term in texts.into_iter().flat_map(search_terms) {
        if seen.insert(term.clone()) {
            terms.push(term);
        }
    }
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_message_stores_only_what_it_has_and_reads_back_the_same() {
        let tenant = TenantId::parse("acme").unwrap();
        let sender = UserId::parse("alice").unwrap();
        let mut message = Message::draft(&tenant, &ConversationId::new(), &sender, MessageKind::Text, "c-1".into());
        message.text = Some("hi".into());
        let stored = bson::to_document(&message).unwrap();
        let fields: Vec<&str> = stored.keys().map(String::as_str).collect();
        let expected =
            ["_id", "tenant_id", "conversation_id", "seq", "client_msg_id", "sender_id", "kind", "text", "created_at"];
        assert_eq!(fields, expected);
        let read: Message = bson::from_document(stored).unwrap();
        assert_eq!(format!("{read:?}"), format!("{message:?}"));
        assert_eq!(read.metadata, serde_json::json!({}), "no metadata reads as an empty object");
    }

    #[test]
    fn terms_are_lowercase_unique_words() {
        assert_eq!(search_terms("Hello, hello WORLD! Grüße 42x"), ["hello", "world", "grüße", "42x"]);
        assert!(search_terms("  ...  ").is_empty());
        assert_eq!(search_terms_of(["Ship it", "ship IT now", ""]), ["ship", "it", "now"]);
    }
}
