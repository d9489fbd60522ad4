use mongodb::bson::doc;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use crate::domain::TenantId;
use crate::tenancy::is_duplicate_key;

/// A tenant's storage use. `storage_bytes` counts stored files and uploads in flight, so a
/// reservation made before writing is what keeps concurrent uploads under the quota.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Usage {
    #[serde(rename = "_id")]
    pub tenant_id: TenantId,
    pub storage_bytes: i64,
    pub file_count: i64,
}

pub struct UsageRepo {
    usage: Collection<Usage>,
}

impl UsageRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { usage: db.collection("usage") }
    }

    pub async fn get(&self, tenant: &TenantId) -> Result<Usage, mongodb::error::Error> {
        let found = self.usage.find_one(doc! { "_id": tenant.as_str() }).await?;
        Ok(found.unwrap_or(Usage { tenant_id: tenant.clone(), storage_bytes: 0, file_count: 0 }))
    }

    /// Adds `bytes` to the tenant's storage if the total stays within `quota`.
    pub async fn reserve(&self, tenant: &TenantId, bytes: i64, quota: i64) -> Result<bool, mongodb::error::Error> {
        let fresh = Usage { tenant_id: tenant.clone(), storage_bytes: 0, file_count: 0 };
        if let Err(e) = self.usage.insert_one(&fresh).await
            && !is_duplicate_key(&e)
        {
            return Err(e);
        }
        let result = self
            .usage
            .update_one(
                doc! { "_id": tenant.as_str(), "storage_bytes": { "$lte": quota - bytes } },
                doc! { "$inc": { "storage_bytes": bytes } },
            )
            .await?;
        Ok(result.modified_count == 1)
    }

    pub async fn delete(&self, tenant: &TenantId) -> Result<(), mongodb::error::Error> {
        self.usage.delete_one(doc! { "_id": tenant.as_str() }).await.map(|_| ())
    }

    /// Gives back reserved or freed bytes and counts files in or out.
    pub async fn adjust(&self, tenant: &TenantId, bytes: i64, files: i64) -> Result<(), mongodb::error::Error> {
        self.usage
            .update_one(
                doc! { "_id": tenant.as_str() },
                doc! { "$inc": { "storage_bytes": bytes, "file_count": files } },
            )
            .upsert(true)
            .await
            .map(|_| ())
    }
}
