//! Typed collections, one file per aggregate. Only these touch `mongodb::Collection`.

use mongodb::bson::{Document, doc};

mod api_keys;
mod audit;
mod code_sessions;
mod collab_docs;
mod conversations;
mod devices;
mod files;
mod members;
mod message_keys;
mod message_reader;
mod messages;
mod reactions;
mod relationships;
mod search_blocks;
mod tenants;
mod usage;
mod users;
mod workspace;

pub use api_keys::{ApiKeysRepo, Rotation};
pub use audit::{AuditHead, AuditRepo};
pub use code_sessions::{CodeSessionsRepo, SessionChanges};
pub use collab_docs::{CollabDocsRepo, Snapshot, StoredUpdate, binary};
pub use conversations::{ConversationChanges, ConversationsRepo, SameSeq};
pub use devices::DevicesRepo;
pub use files::FilesRepo;
pub use members::MembersRepo;
pub(super) use message_keys::{LEGACY_CLIENT_ID_INDEX, rekey_legacy as rekey_legacy_messages};
pub use messages::{InsertedRun, MessagesRepo, RunFailure};
pub use reactions::ReactionsRepo;
pub use relationships::RelationshipsRepo;
pub use search_blocks::{SearchBlock, SearchBlocksRepo, SearchMark};
pub use tenants::{TenantCounter, TenantUpdate, TenantsRepo};
pub use usage::{Usage, UsageRepo};
pub use users::{UserChanges, UsersRepo};
pub use workspace::WorkspaceRepo;

/// `filter` and any one of `alternatives`. Written as `$and` of the two, never as a `$or` beside
/// `filter`'s fields: SecantusDB reads a top-level `$or` that has sibling fields by scanning the
/// whole collection, ignoring the index those fields would use (about 25 ms for 50,000
/// conversations, against 0.4 ms), while MongoDB plans both forms alike. Every `$or` in these
/// repos goes through here.
pub(crate) fn and_any_of(filter: Document, alternatives: Vec<Document>) -> Document {
    doc! { "$and": [filter, { "$or": alternatives }] }
}

/// A filter matching the documents of `values` by `_id`, and an expression that is, for each of
/// them, its own value (`$literal`: values may hold user text that starts with `$`). Lets one
/// pipeline update give many documents different values in one statement, where a statement per
/// document costs the database several times more.
pub(crate) fn each_its_own(values: Vec<(&str, impl Into<mongodb::bson::Bson>)>) -> (Document, Document) {
    let ids: Vec<&str> = values.iter().map(|(id, _)| *id).collect();
    let branches: Vec<Document> = values
        .into_iter()
        .map(|(id, value)| doc! { "case": { "$eq": ["$_id", id] }, "then": { "$literal": value.into() } })
        .collect();
    (doc! { "_id": { "$in": ids } }, doc! { "$switch": { "branches": branches } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternatives_are_nested_under_and_beside_the_filter() {
        let filter = and_any_of(doc! { "_id": "c1" }, vec![doc! { "a": 1 }, doc! { "b": 2 }]);
        assert_eq!(filter, doc! { "$and": [{ "_id": "c1" }, { "$or": [{ "a": 1 }, { "b": 2 }] }] });
    }

    /// A `$or` written inline would bring the collection scan back on SecantusDB.
    #[test]
    fn every_or_in_the_repos_goes_through_and_any_of() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tenancy/repos");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|name| name == "mod.rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            assert!(!source.contains("\"$or\""), "{} writes a $or itself; use and_any_of", path.display());
            checked += 1;
        }
        assert!(checked >= 10, "the repos were not found ({checked} files)");
    }
}
