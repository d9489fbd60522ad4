use futures_util::TryStreamExt;
use mongodb::bson::doc;
use mongodb::options::UpdateOptions;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use crate::domain::{AuditEntry, GENESIS_HASH, TenantId};
use crate::tenancy::is_duplicate_key;

/// The newest entry of a tenant's chain, kept so appends and pages use exact seq lookups.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditHead {
    #[serde(rename = "_id")]
    pub tenant_id: TenantId,
    pub seq: i64,
    pub hash: String,
}

impl AuditHead {
    pub fn genesis(tenant: &TenantId) -> Self {
        Self { tenant_id: tenant.clone(), seq: 0, hash: GENESIS_HASH.to_string() }
    }
}

pub struct AuditRepo {
    entries: Collection<AuditEntry>,
    heads: Collection<AuditHead>,
}

impl AuditRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { entries: db.collection("audit_log"), heads: db.collection("audit_heads") }
    }

    /// The recorded head; it may lag the log by one entry after a crash (see `insert`).
    pub async fn head(&self, tenant: &TenantId) -> Result<AuditHead, mongodb::error::Error> {
        Ok(self.heads.find_one(doc! { "_id": tenant.as_str() }).await?.unwrap_or_else(|| AuditHead::genesis(tenant)))
    }

    /// Inserts the entry at its seq; `Ok(false)` when another writer already took that seq.
    pub async fn insert(&self, entry: &AuditEntry) -> Result<bool, mongodb::error::Error> {
        match self.entries.insert_one(entry).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn get(&self, tenant: &TenantId, seq: i64) -> Result<Option<AuditEntry>, mongodb::error::Error> {
        self.entries.find_one(doc! { "tenant_id": tenant.as_str(), "seq": seq }).await
    }

    /// Moves the head from `from` to `to` if nobody moved it first.
    pub async fn advance_head(&self, from: &AuditHead, to: &AuditHead) -> Result<(), mongodb::error::Error> {
        let result = self
            .heads
            .update_one(
                doc! { "_id": from.tenant_id.as_str(), "seq": from.seq },
                doc! { "$set": { "seq": to.seq, "hash": &to.hash } },
            )
            .with_options(UpdateOptions::builder().upsert(from.seq == 0).build())
            .await;
        match result {
            // A concurrent writer created or advanced the head: theirs is at least as new.
            Err(e) if is_duplicate_key(&e) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Entries with `from <= seq <= to`, in seq order.
    pub async fn range(&self, tenant: &TenantId, from: i64, to: i64) -> Result<Vec<AuditEntry>, mongodb::error::Error> {
        self.entries
            .find(doc! { "tenant_id": tenant.as_str(), "seq": { "$gte": from, "$lte": to } })
            .sort(doc! { "tenant_id": 1, "seq": 1 })
            .await?
            .try_collect()
            .await
    }
}
