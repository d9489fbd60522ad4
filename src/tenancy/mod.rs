//! The only module that touches MongoDB. Platform data (tenants, API keys, audit log) lives in
//! `{prefix}platform`; each tenant gets `{prefix}t_{tenant_id}` with a fixed set of collections.
//! A `TenantDb` can only be made from a `TenantScope`, which only `auth` hands out.

mod blobs;
mod collections;
pub mod repos;
mod tenant_db;

use std::time::Duration;

use mongodb::bson::doc;
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};

use crate::auth::TenantScope;
use crate::config::MongoSettings;
use crate::domain::TenantId;

pub use blobs::GridFsBlobs;
pub use collections::{PLATFORM_COLLECTIONS, TENANT_COLLECTIONS};
pub use repos::{ApiKeysRepo, AuditRepo, SessionChanges, Snapshot, StoredUpdate, TenantsRepo, UsageRepo, binary};
pub use tenant_db::TenantDb;

/// The URI's options, with confab's settings for what it leaves out.
async fn client_options(settings: &MongoSettings) -> Result<ClientOptions, mongodb::error::Error> {
    let mut options = ClientOptions::parse(&settings.uri).await?;
    options.app_name = Some("confab".into());
    options.server_selection_timeout = Some(Duration::from_millis(settings.server_selection_timeout_ms));
    options.max_pool_size = options.max_pool_size.or(Some(settings.max_pool_size));
    Ok(options)
}

/// Handle to the cluster: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Store {
    client: Client,
    platform: Database,
    prefix: String,
}

impl Store {
    /// Builds the client; no connection is made until the first operation.
    pub async fn connect(settings: &MongoSettings) -> Result<Self, mongodb::error::Error> {
        let client = Client::with_options(client_options(settings).await?)?;
        let platform = client.database(&format!("{}platform", settings.db_prefix));
        Ok(Self { client, platform, prefix: settings.db_prefix.clone() })
    }

    /// Creates the platform collections' indexes; idempotent.
    pub async fn ensure_platform_indexes(&self) -> Result<(), mongodb::error::Error> {
        collections::ensure(&self.platform, PLATFORM_COLLECTIONS).await
    }

    pub async fn ping(&self) -> Result<(), mongodb::error::Error> {
        self.platform.run_command(doc! { "ping": 1 }).await.map(|_| ())
    }

    pub fn tenants(&self) -> TenantsRepo {
        TenantsRepo::new(&self.platform)
    }

    pub fn api_keys(&self) -> ApiKeysRepo {
        ApiKeysRepo::new(&self.platform)
    }

    pub fn usage(&self) -> UsageRepo {
        UsageRepo::new(&self.platform)
    }

    pub fn audit(&self) -> AuditRepo {
        AuditRepo::new(&self.platform)
    }

    pub fn tenant_db(&self, scope: &TenantScope) -> TenantDb {
        TenantDb::new(scope.tenant_id().clone(), self.client.database(&self.tenant_db_name(scope.tenant_id())))
    }

    pub fn tenant_db_name(&self, tenant: &TenantId) -> String {
        format!("{}t_{}", self.prefix, tenant)
    }
}

/// MongoDB's duplicate-key error, raised by unique indexes.
pub(crate) fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*error.kind {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::Command(e) => e.code == 11000,
        ErrorKind::InsertMany(e) => {
            e.write_errors.as_ref().is_some_and(|errors| errors.iter().any(|w| w.code == 11000))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(uri: &str) -> MongoSettings {
        MongoSettings {
            uri: uri.into(),
            db_prefix: "confab_".into(),
            server_selection_timeout_ms: 5000,
            max_pool_size: 100,
        }
    }

    #[tokio::test]
    async fn the_pool_size_setting_applies_unless_the_uri_sets_one() {
        let plain = client_options(&settings("mongodb://127.0.0.1:27017")).await.unwrap();
        assert_eq!(plain.max_pool_size, Some(100));
        let pinned = client_options(&settings("mongodb://127.0.0.1:27017/?maxPoolSize=7")).await.unwrap();
        assert_eq!(pinned.max_pool_size, Some(7));
    }
}
