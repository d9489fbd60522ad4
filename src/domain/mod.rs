//! Pure types shared by every layer: validated identifiers, tenant settings, scopes and
//! audit entries. Nothing here does I/O; parsing happens once, at the edge, into these types.

mod audit;
mod bson_time;
mod clock;
mod collab;
mod conversation;
mod device;
pub mod envelope;
mod file;
mod ids;
mod message;
mod page;
mod scope;
mod tenant;
mod user;

pub use audit::{AuditActor, AuditEntry, AuditTarget, ChainBreak, GENESIS_HASH, verify_chain};
pub use clock::now;
pub use collab::{
    CodeSession, ItemId, ItemKind, SessionId, SessionMember, SessionRole, Visibility, WorkspaceItem, check_item_name,
    language_of,
};
pub use conversation::{
    Conversation, ConversationEncryption, ConversationId, ConversationType, LastMessage, Member, MemberRole,
};
pub use device::{Device, DeviceKey, KeyEvent, KeyEventKind, KeyStatus, valid_key_name};
pub use file::{FileEncryption, FileId, Sharing, SharingMode, StoredFile, mime_allowed, sanitize_filename};
pub use ids::{ApiKeyId, InvalidId, TenantId};
pub use message::{
    AiInfo, AiRole, Attachment, EditedText, MAX_TERMS, Message, MessageKind, Reaction, TokenUsage, search_terms,
    search_terms_of,
};
pub use page::{Page, PageRequest};
pub use scope::{Scope, UnknownScope};
pub use tenant::{ApiKey, LimitsError, PlanName, SigningKey, Tenant, TenantLimits, TenantLimitsPatch, TenantStatus};
pub use user::{
    NotificationLevel, Relationship, RelationshipKind, User, UserId, UserKind, UserSettings, check_custom_data,
};
