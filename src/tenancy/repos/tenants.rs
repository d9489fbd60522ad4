use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Document, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

use super::and_any_of;
use crate::domain::{PlanName, SigningKey, Tenant, TenantId, TenantLimits, TenantStatus};

/// Per-tenant counters kept on the tenant record and checked against its limits.
#[derive(Debug, Clone, Copy)]
pub enum TenantCounter {
    Users,
    ApiKeys,
}

impl TenantCounter {
    fn field(self) -> &'static str {
        match self {
            TenantCounter::Users => "user_count",
            TenantCounter::ApiKeys => "api_key_count",
        }
    }
}

pub struct TenantsRepo {
    tenants: Collection<Tenant>,
}

/// Fields a tenant update may set; `None` leaves a field alone.
#[derive(Debug, Default)]
pub struct TenantUpdate {
    pub name: Option<String>,
    pub plan: Option<PlanName>,
    pub limits: Option<TenantLimits>,
    pub status: Option<TenantStatus>,
    pub allowed_mime_types: Option<Vec<String>>,
    pub allowed_origins: Option<Vec<String>>,
}

impl TenantsRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { tenants: db.collection("tenants") }
    }

    /// Inserts a new tenant; `Ok(false)` when the id is taken.
    pub async fn insert(&self, tenant: &Tenant) -> Result<bool, mongodb::error::Error> {
        match self.tenants.insert_one(tenant).await {
            Ok(_) => Ok(true),
            Err(e) if super::super::is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn get(&self, id: &TenantId) -> Result<Option<Tenant>, mongodb::error::Error> {
        self.tenants.find_one(doc! { "_id": id.as_str() }).await
    }

    /// Up to `limit` tenants with ids after `after`, in id order.
    pub async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<Tenant>, mongodb::error::Error> {
        let mut filter = doc! { "status": { "$ne": "deleted" } };
        if let Some(after) = after {
            filter.insert("_id", doc! { "$gt": after });
        }
        self.tenants.find(filter).sort(doc! { "_id": 1 }).limit(i64::from(limit)).await?.try_collect().await
    }

    /// Applies `update` and returns the tenant as it is afterwards.
    pub async fn update(
        &self,
        id: &TenantId,
        update: TenantUpdate,
        now: DateTime<Utc>,
    ) -> Result<Option<Tenant>, mongodb::error::Error> {
        let mut set = doc! { "updated_at": bson::DateTime::from_chrono(now) };
        if let Some(name) = update.name {
            set.insert("name", name);
        }
        if let Some(plan) = update.plan {
            set.insert("plan", plan.as_str());
        }
        if let Some(limits) = update.limits {
            set.insert("limits", to_document(&limits)?);
        }
        if let Some(types) = update.allowed_mime_types {
            set.insert("allowed_mime_types", types);
        }
        if let Some(origins) = update.allowed_origins {
            set.insert("allowed_origins", origins);
        }
        if let Some(status) = update.status {
            set.insert("status", bson::to_bson(&status)?);
        }
        self.tenants
            .find_one_and_update(doc! { "_id": id.as_str() }, doc! { "$set": set })
            .return_document(ReturnDocument::After)
            .await
    }

    pub async fn add_signing_key(&self, id: &TenantId, key: &SigningKey) -> Result<bool, mongodb::error::Error> {
        let pushed = self
            .tenants
            .update_one(doc! { "_id": id.as_str() }, doc! { "$push": { "signing_keys": to_document(key)? } })
            .await?;
        Ok(pushed.matched_count == 1)
    }

    /// Counts one more `counter` if the tenant is below `max`; `Ok(false)` at the limit. The
    /// conditional increment is what keeps concurrent creations within the limit.
    pub async fn reserve(
        &self,
        id: &TenantId,
        counter: TenantCounter,
        max: u64,
    ) -> Result<bool, mongodb::error::Error> {
        let field = counter.field();
        let below = vec![doc! { field: { "$lt": max as i64 } }, doc! { field: { "$exists": false } }];
        let filter = and_any_of(doc! { "_id": id.as_str() }, below);
        let result = self.tenants.update_one(filter, doc! { "$inc": { field: 1_i64 } }).await?;
        Ok(result.modified_count == 1)
    }

    /// Gives back one `counter` (a reservation that was not used, or a thing that went away).
    pub async fn release(&self, id: &TenantId, counter: TenantCounter) -> Result<(), mongodb::error::Error> {
        self.tenants
            .update_one(doc! { "_id": id.as_str() }, doc! { "$inc": { counter.field(): -1_i64 } })
            .await
            .map(|_| ())
    }

    pub async fn delete(&self, id: &TenantId) -> Result<(), mongodb::error::Error> {
        self.tenants.delete_one(doc! { "_id": id.as_str() }).await.map(|_| ())
    }
}

fn to_document<T: serde::Serialize>(value: &T) -> Result<Document, mongodb::error::Error> {
    Ok(bson::to_document(value)?)
}
