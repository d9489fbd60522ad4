//! A tenant's own database, reachable only through an authenticated scope.

use mongodb::Database;
use mongodb::bson::Document;

use crate::domain::TenantId;

use super::collections::{self, TENANT_COLLECTIONS};

pub struct TenantDb {
    tenant: TenantId,
    db: Database,
}

impl TenantDb {
    pub(super) fn new(tenant: TenantId, db: Database) -> Self {
        Self { tenant, db }
    }

    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant
    }

    pub fn name(&self) -> &str {
        self.db.name()
    }

    /// A filter that also pins `tenant_id`, so a document copied in from elsewhere never matches.
    pub fn scoped(&self, mut filter: Document) -> Document {
        filter.insert("tenant_id", self.tenant.as_str());
        filter
    }

    /// Creates every tenant collection and index; idempotent.
    pub async fn provision(&self) -> Result<(), mongodb::error::Error> {
        collections::ensure(&self.db, TENANT_COLLECTIONS).await
    }

    pub async fn drop(&self) -> Result<(), mongodb::error::Error> {
        self.db.drop().await
    }
}
