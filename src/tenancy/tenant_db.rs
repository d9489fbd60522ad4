//! A tenant's own database, reachable only through an authenticated scope.

use mongodb::Database;
use mongodb::bson::Document;

use crate::domain::TenantId;

use super::blobs::GridFsBlobs;
use super::collections::{self, TENANT_COLLECTIONS};
use super::repos::{
    CodeSessionsRepo, CollabDocsRepo, ConversationsRepo, DevicesRepo, FilesRepo, MembersRepo, MessagesRepo,
    ReactionsRepo, RelationshipsRepo, SearchBlocksRepo, UsersRepo, WorkspaceRepo,
};

#[derive(Clone)]
pub struct TenantDb {
    tenant: TenantId,
    db: Database,
    /// Whether `db` is reached through the calling thread's own client (`Store::request_db`).
    own_client: bool,
}

impl TenantDb {
    pub(super) fn new(tenant: TenantId, db: Database) -> Self {
        Self { tenant, db, own_client: false }
    }

    /// The same database, reached through the calling thread's own client.
    pub(super) fn through_own_client(tenant: TenantId, db: Database) -> Self {
        Self { tenant, db, own_client: true }
    }

    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant
    }

    pub fn name(&self) -> &str {
        self.db.name()
    }

    /// Whether this handle must stay within the current request (see `Store::request_db`).
    pub fn is_through_own_client(&self) -> bool {
        self.own_client
    }

    /// A filter that also pins `tenant_id`, so a document copied in from elsewhere never matches.
    pub fn scoped(&self, mut filter: Document) -> Document {
        filter.insert("tenant_id", self.tenant.as_str());
        filter
    }

    /// Creates every tenant collection and index, re-keying messages stored by earlier versions
    /// first (their index is retired after); idempotent.
    pub async fn provision(&self) -> Result<(), mongodb::error::Error> {
        let rekeyed = super::repos::rekey_legacy_messages(&self.db).await?;
        if rekeyed > 0 {
            tracing::info!(tenant = %self.tenant, rekeyed, "messages re-keyed by their idempotency key");
        }
        collections::ensure(&self.db, TENANT_COLLECTIONS).await
    }

    pub fn users(&self) -> UsersRepo {
        UsersRepo::new(&self.db)
    }

    pub fn relationships(&self) -> RelationshipsRepo {
        RelationshipsRepo::new(&self.db)
    }

    pub fn conversations(&self) -> ConversationsRepo {
        ConversationsRepo::new(&self.db)
    }

    pub fn code_sessions(&self) -> CodeSessionsRepo {
        CodeSessionsRepo::new(&self.db)
    }

    pub fn workspace(&self) -> WorkspaceRepo {
        WorkspaceRepo::new(&self.db)
    }

    pub fn collab_docs(&self) -> CollabDocsRepo {
        CollabDocsRepo::new(&self.db)
    }

    pub fn members(&self) -> MembersRepo {
        MembersRepo::new(&self.db)
    }

    pub fn messages(&self) -> MessagesRepo {
        MessagesRepo::new(&self.db)
    }

    pub fn search_blocks(&self) -> SearchBlocksRepo {
        SearchBlocksRepo::new(&self.db)
    }

    pub fn reactions(&self) -> ReactionsRepo {
        ReactionsRepo::new(&self.db)
    }

    pub fn devices(&self) -> DevicesRepo {
        DevicesRepo::new(&self.db)
    }

    pub fn files(&self) -> FilesRepo {
        FilesRepo::new(&self.db)
    }

    /// The tenant's blob store (GridFS in its own database).
    pub fn blobs(&self) -> GridFsBlobs {
        GridFsBlobs::new(&self.db)
    }

    pub async fn drop(&self) -> Result<(), mongodb::error::Error> {
        self.db.drop().await
    }
}
