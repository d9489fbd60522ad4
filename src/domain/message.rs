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
    pub text: Option<String>,
    pub language: Option<String>,
    pub attachments: Vec<Attachment>,
    /// Seq of the thread parent.
    pub reply_to: Option<i64>,
    pub reply_count: i64,
    pub mentions: Vec<UserId>,
    pub metadata: serde_json::Value,
    pub ai: Option<AiInfo>,
    /// Reactions per emoji (emoji are validated to be safe as field names).
    pub reaction_counts: std::collections::BTreeMap<String, i64>,
    /// The end-to-end encrypted content (instead of `text`) in E2E conversations.
    #[serde(default)]
    pub envelope: Option<super::envelope::Envelope>,
    pub edit_history: Vec<EditedText>,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(default, with = "chrono_datetime_as_bson_datetime_optional")]
    pub edited_at: Option<DateTime<Utc>>,
    #[serde(default, with = "chrono_datetime_as_bson_datetime_optional")]
    pub deleted_at: Option<DateTime<Utc>>,
    pub deleted_by: Option<UserId>,
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
    fn terms_are_lowercase_unique_words() {
        assert_eq!(search_terms("Hello, hello WORLD! Grüße 42x"), ["hello", "world", "grüße", "42x"]);
        assert!(search_terms("  ...  ").is_empty());
        assert_eq!(search_terms_of(["Ship it", "ship IT now", ""]), ["ship", "it", "now"]);
    }
}
