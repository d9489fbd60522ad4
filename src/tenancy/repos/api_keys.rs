use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

use super::and_any_of;
use crate::domain::{ApiKey, ApiKeyId, TenantId};

pub struct ApiKeysRepo {
    keys: Collection<ApiKey>,
}

/// A new secret for an existing key, keeping the old one valid until `previous_valid_until`.
pub struct Rotation {
    pub secret_hash: String,
    pub previous_secret_hash: String,
    pub previous_valid_until: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

fn bson_time(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_chrono(t)
}

impl ApiKeysRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { keys: db.collection("api_keys") }
    }

    pub async fn insert(&self, key: &ApiKey) -> Result<(), mongodb::error::Error> {
        self.keys.insert_one(key).await.map(|_| ())
    }

    /// Looks a key up by its public id, whichever tenant owns it (authentication only).
    pub async fn find_for_auth(&self, id: &ApiKeyId) -> Result<Option<ApiKey>, mongodb::error::Error> {
        self.keys.find_one(doc! { "_id": id.as_str() }).await
    }

    pub async fn get(&self, tenant: &TenantId, id: &ApiKeyId) -> Result<Option<ApiKey>, mongodb::error::Error> {
        self.keys.find_one(doc! { "_id": id.as_str(), "tenant_id": tenant.as_str() }).await
    }

    pub async fn list(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ApiKey>, mongodb::error::Error> {
        let mut filter = doc! { "tenant_id": tenant.as_str() };
        if let Some(after) = after {
            filter.insert("_id", doc! { "$gt": after });
        }
        self.keys
            .find(filter)
            .sort(doc! { "tenant_id": 1, "_id": 1 })
            .limit(i64::from(limit))
            .await?
            .try_collect()
            .await
    }

    /// Replaces the secret of an unrevoked key whose secret is still `rotation.previous_secret_hash`;
    /// `None` if the key is gone, revoked or was rotated by someone else meanwhile.
    pub async fn rotate(
        &self,
        tenant: &TenantId,
        id: &ApiKeyId,
        rotation: Rotation,
    ) -> Result<Option<ApiKey>, mongodb::error::Error> {
        let set = doc! {
            "secret_hash": &rotation.secret_hash,
            "previous_secret_hash": &rotation.previous_secret_hash,
            "previous_valid_until": bson_time(rotation.previous_valid_until),
            "rotated_at": bson_time(rotation.at),
        };
        self.keys
            .find_one_and_update(
                doc! {
                    "_id": id.as_str(), "tenant_id": tenant.as_str(), "revoked_at": null,
                    "secret_hash": &rotation.previous_secret_hash,
                },
                doc! { "$set": set },
            )
            .return_document(ReturnDocument::After)
            .await
    }

    /// Revokes a key (and any previous secret still in its grace period). `Ok(true)` only for
    /// the call that revoked it.
    pub async fn revoke(
        &self,
        tenant: &TenantId,
        id: &ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<bool, mongodb::error::Error> {
        let filter = doc! { "_id": id.as_str(), "tenant_id": tenant.as_str(), "revoked_at": null };
        let update = doc! {
            "$set": { "revoked_at": bson_time(at) },
            "$unset": { "previous_secret_hash": "", "previous_valid_until": "" },
        };
        Ok(self.keys.update_one(filter, update).await?.modified_count == 1)
    }

    /// Records use, at most once per `resolution` so busy keys do not write on every request.
    pub async fn touch(
        &self,
        id: &ApiKeyId,
        now: DateTime<Utc>,
        resolution: chrono::Duration,
    ) -> Result<(), mongodb::error::Error> {
        let stale = bson_time(now - resolution);
        let unrecorded = vec![doc! { "last_used_at": null }, doc! { "last_used_at": { "$lt": stale } }];
        let filter = and_any_of(doc! { "_id": id.as_str() }, unrecorded);
        self.keys.update_one(filter, doc! { "$set": { "last_used_at": bson_time(now) } }).await.map(|_| ())
    }

    pub async fn delete_for_tenant(&self, tenant: &TenantId) -> Result<(), mongodb::error::Error> {
        self.keys.delete_many(doc! { "tenant_id": tenant.as_str() }).await.map(|_| ())
    }
}
