//! Code sessions: a workspace tree of files and folders edited live by the session's members.
//! Each file's text is a Yjs document (kept in `collab_updates` / `collab_snapshots`).

use super::bson_time::chrono_datetime_as_bson_datetime;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ConversationId, TenantId, UserId};

super::ids::uuid_id!(
    /// A code session id.
    SessionId,
    "session ids are lowercase hyphenated UUIDs"
);

super::ids::uuid_id!(
    /// A workspace item (file or folder) id; a file's id also names its Yjs document.
    ItemId,
    "item ids are lowercase hyphenated UUIDs"
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Only members see the session.
    #[default]
    Private,
    /// Every user of the tenant may read it (as a viewer) without being a member.
    Tenant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionRole {
    Viewer,
    Editor,
    Owner,
}

impl SessionRole {
    pub fn can_edit(self) -> bool {
        self >= SessionRole::Editor
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeSession {
    #[serde(rename = "_id")]
    pub id: SessionId,
    pub tenant_id: TenantId,
    pub name: String,
    pub description: Option<String>,
    pub language: String,
    pub visibility: Visibility,
    pub owner_id: UserId,
    pub active: bool,
    pub tags: Vec<String>,
    pub forked_from: Option<SessionId>,
    /// The session's chat; its membership follows the session's.
    pub conversation_id: ConversationId,
    /// Items in the tree (kept under `collab.max_items_per_session`).
    pub item_count: u32,
    /// Members with the owner role; never taken below one (so owners leaving or demoting each
    /// other at once cannot leave the session without an owner).
    #[serde(default = "one")]
    pub owner_count: u32,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub last_accessed_at: DateTime<Utc>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionMember {
    /// `<session_id>:<user_id>`.
    #[serde(rename = "_id")]
    pub id: String,
    pub tenant_id: TenantId,
    pub session_id: SessionId,
    pub user_id: UserId,
    pub role: SessionRole,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub added_at: DateTime<Utc>,
}

impl SessionMember {
    pub fn key(session: &SessionId, user: &UserId) -> String {
        format!("{session}:{user}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    File,
    Folder,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceItem {
    #[serde(rename = "_id")]
    pub id: ItemId,
    pub tenant_id: TenantId,
    pub session_id: SessionId,
    /// Empty at the root (a string, so the unique (session, parent, name) index covers the root).
    pub parent_id: String,
    pub name: String,
    pub kind: ItemKind,
    /// Bytes of the file's text as last persisted.
    pub size: u64,
    pub language: Option<String>,
    pub mime: Option<String>,
    /// Bumped by every change to the item (rename, move, content).
    pub version: i64,
    /// The Yjs document's generation: a re-created document gets a new epoch, and clients of an
    /// older one are refused instead of merging into it.
    pub epoch: i64,
    pub last_modified_by: UserId,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
}

impl WorkspaceItem {
    pub fn parent(&self) -> Option<ItemId> {
        ItemId::parse(&self.parent_id).ok()
    }
}

/// Why a file or folder name is refused.
pub fn check_item_name(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max_len {
        return Err(format!("names are 1 to {max_len} bytes"));
    }
    if name == "." || name == ".." {
        return Err("'.' and '..' are not names".into());
    }
    if name.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        return Err("names may not contain '/', '\\' or control characters".into());
    }
    if name.trim() != name {
        return Err("names may not start or end with whitespace".into());
    }
    Ok(())
}

/// A language guess from a file name's extension, for editors' syntax highlighting.
pub fn language_of(name: &str) -> Option<&'static str> {
    let extension = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match extension.as_str() {
        "rs" => "rust",
        "py" => "python",
        "js" | "mjs" | "cjs" => "javascript",
        "ts" | "tsx" => "typescript",
        "go" => "go",
        "java" => "java",
        "c" | "h" => "c",
        "cpp" | "cc" | "hpp" => "cpp",
        "rb" => "ruby",
        "md" => "markdown",
        "json" => "json",
        "toml" => "toml",
        "yaml" | "yml" => "yaml",
        "html" => "html",
        "css" => "css",
        "sh" => "shell",
        "sql" => "sql",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_path_segments() {
        for bad in ["", ".", "..", "a/b", "a\\b", " lead", "trail ", "nul\0"] {
            assert!(check_item_name(bad, 255).is_err(), "{bad:?}");
        }
        assert!(check_item_name(&"x".repeat(256), 255).is_err());
        for good in ["main.rs", ".gitignore", "a b", "ünïcode.py"] {
            assert!(check_item_name(good, 255).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(SessionRole::Owner.can_edit() && SessionRole::Editor.can_edit() && !SessionRole::Viewer.can_edit());
        assert_eq!(language_of("src/main.RS"), Some("rust"));
        assert_eq!(language_of("Makefile"), None);
    }
}
