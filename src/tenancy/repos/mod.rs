//! Typed collections, one file per aggregate. Only these touch `mongodb::Collection`.

mod api_keys;
mod audit;
mod code_sessions;
mod collab_docs;
mod conversations;
mod devices;
mod files;
mod members;
mod messages;
mod reactions;
mod relationships;
mod tenants;
mod usage;
mod users;
mod workspace;

pub use api_keys::{ApiKeysRepo, Rotation};
pub use audit::{AuditHead, AuditRepo};
pub use code_sessions::{CodeSessionsRepo, SessionChanges};
pub use collab_docs::{CollabDocsRepo, Snapshot, StoredUpdate, binary};
pub use conversations::{ConversationChanges, ConversationsRepo};
pub use devices::DevicesRepo;
pub use files::FilesRepo;
pub use members::MembersRepo;
pub use messages::{InsertedRun, MessagesRepo, RunFailure};
pub use reactions::ReactionsRepo;
pub use relationships::RelationshipsRepo;
pub use tenants::{TenantCounter, TenantUpdate, TenantsRepo};
pub use usage::{Usage, UsageRepo};
pub use users::{UserChanges, UsersRepo};
pub use workspace::WorkspaceRepo;
