//! Stored files: metadata, sharing and the rules for who may read them.

use super::bson_time::{chrono_datetime_as_bson_datetime, chrono_datetime_as_bson_datetime_optional};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ConversationId, InvalidId, TenantId, UserId};

/// A file id: a UUIDv7 in its hyphenated text form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileId(String);

impl FileId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        match uuid::Uuid::parse_str(raw) {
            Ok(id) if id.hyphenated().to_string() == raw => Ok(Self(raw.to_string())),
            _ => Err(InvalidId("file ids are lowercase hyphenated UUIDs")),
        }
    }
}

impl Default for FileId {
    fn default() -> Self {
        Self::new()
    }
}

super::ids::validated_string!(FileId);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum SharingMode {
    /// Only the uploader (and the tenant's server keys).
    #[default]
    Private,
    /// Members of the conversations the file was shared with.
    Conversation,
    /// Any user of the tenant, and anyone holding a signed URL.
    Public,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum FileEncryption {
    #[default]
    None,
    /// Opaque ciphertext; the key travels inside an E2E message envelope.
    E2e,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sharing {
    pub mode: SharingMode,
    pub conversation_ids: Vec<ConversationId>,
    /// After this, `public` and `conversation` sharing lapse back to private.
    #[serde(default, with = "chrono_datetime_as_bson_datetime_optional")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl Sharing {
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredFile {
    #[serde(rename = "_id")]
    pub id: FileId,
    pub tenant_id: TenantId,
    pub uploader_id: UserId,
    /// For display only; never used as a storage path.
    pub filename: String,
    pub mime: String,
    pub size: i64,
    pub sha256: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// `gridfs` today; the key is the backend's own name for the blob.
    pub storage_backend: String,
    pub storage_key: String,
    pub encryption: FileEncryption,
    pub sharing: Sharing,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
}

/// Makes a client-supplied filename safe to show and to put in a header: no path, no control
/// characters, no quotes, at most 255 bytes; an empty result becomes `file`.
pub fn sanitize_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let mut cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '<' | '>' | '|' | '*' | '?' | ':'))
        .collect::<String>()
        .trim()
        .trim_start_matches('.')
        .to_string();
    while cleaned.len() > 255 {
        cleaned.pop();
    }
    if cleaned.is_empty() { "file".to_string() } else { cleaned }
}

/// Whether `mime` matches one of the patterns (`image/png`, `image/*` or `*/*`).
pub fn mime_allowed(mime: &str, patterns: &[String]) -> bool {
    let (kind, _) = mime.split_once('/').unwrap_or((mime, ""));
    patterns.iter().any(|p| p == "*/*" || p == mime || p.strip_suffix("/*").is_some_and(|prefix| prefix == kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_paths_and_dangerous_characters() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("C:\\Users\\x\\report \"final\".pdf"), "report final.pdf");
        assert_eq!(sanitize_filename("..."), "file");
        assert_eq!(sanitize_filename("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(sanitize_filename(&"é".repeat(300)).len(), 254);
    }

    #[test]
    fn mime_patterns_match_types_and_families() {
        let allowed = vec!["image/*".to_string(), "application/pdf".to_string()];
        assert!(mime_allowed("image/png", &allowed));
        assert!(mime_allowed("application/pdf", &allowed));
        assert!(!mime_allowed("application/zip", &allowed));
        assert!(mime_allowed("anything/else", &["*/*".to_string()]));
    }
}
