//! The only module that touches MongoDB. Platform data (tenants, API keys, audit log) lives in
//! `{prefix}platform`; each tenant gets `{prefix}t_{tenant_id}` with a fixed set of collections.
//! A `TenantDb` can only be made from a `TenantScope`, which only `auth` hands out.

mod blobs;
mod collections;
pub mod repos;
mod tenant_db;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
///
/// A client's connection pool and monitors are tasks on the runtime that made the client, and
/// each operation hands a connection out and back through them. For a request on an HTTP worker
/// (a single-threaded runtime) and the shared client, that is three cross-thread wake-ups per
/// operation. So each HTTP worker may make a client of its own (`own_client_here`), which
/// `request_db` uses for reads that start and end within a request.
#[derive(Clone)]
pub struct Store {
    client: Client,
    platform: Database,
    prefix: String,
    /// For the HTTP workers' own clients: the shared client's, with `mongodb.worker_pool_size`.
    worker_options: Arc<ClientOptions>,
    /// Tells this store's thread clients from another store's (tests run several in one process).
    id: usize,
}

static STORES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The calling thread's own client, and the id of the store it was made for.
    static OWN_CLIENT: RefCell<Option<(usize, Client)>> = const { RefCell::new(None) };
}

impl Store {
    /// Builds the client; no connection is made until the first operation.
    pub async fn connect(settings: &MongoSettings) -> Result<Self, mongodb::error::Error> {
        let options = client_options(settings).await?;
        let client = Client::with_options(options.clone())?;
        let platform = client.database(&format!("{}platform", settings.db_prefix));
        let mut worker_options = options;
        worker_options.max_pool_size = Some(settings.worker_pool_size);
        Ok(Self {
            client,
            platform,
            prefix: settings.db_prefix.clone(),
            worker_options: Arc::new(worker_options),
            id: STORES.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Gives the calling thread a client of its own, on the thread's runtime, for `request_db`.
    /// For threads whose runtime lives as long as they do (the HTTP workers); the client is
    /// dropped with the thread.
    pub fn own_client_here(&self) -> Result<(), mongodb::error::Error> {
        let client = Client::with_options((*self.worker_options).clone())?;
        OWN_CLIENT.with(|own| *own.borrow_mut() = Some((self.id, client)));
        Ok(())
    }

    /// The calling thread's own client, if it has one for this store.
    fn own_client(&self) -> Option<Client> {
        OWN_CLIENT.with(|own| own.borrow().as_ref().filter(|(id, _)| *id == self.id).map(|(_, c)| c.clone()))
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

    /// The tenant's database, through the shared client: for anything that may outlive the
    /// request or leave its thread (committers, rooms, spawned tasks).
    pub fn tenant_db(&self, scope: &TenantScope) -> TenantDb {
        TenantDb::new(scope.tenant_id().clone(), self.client.database(&self.tenant_db_name(scope.tenant_id())))
    }

    /// The tenant's database for work that starts and ends within the current request on this
    /// thread: through the thread's own client when it has one, else the shared one. Never keep
    /// it or hand it to another thread: the thread's client stops with the thread's runtime.
    pub fn request_db(&self, scope: &TenantScope) -> TenantDb {
        match self.own_client() {
            Some(client) => TenantDb::through_own_client(
                scope.tenant_id().clone(),
                client.database(&self.tenant_db_name(scope.tenant_id())),
            ),
            None => self.tenant_db(scope),
        }
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
pub(crate) mod tests {
    use super::*;

    /// The MongoDB that `./scripts/test` starts for the suite.
    pub(crate) fn test_uri() -> String {
        std::env::var("CONFAB_TEST_MONGODB_URI")
            .expect("CONFAB_TEST_MONGODB_URI is not set: run the suite with ./scripts/test, which starts secantusd-rs")
    }

    pub(crate) fn settings(uri: &str) -> MongoSettings {
        MongoSettings {
            uri: uri.into(),
            db_prefix: "confab_".into(),
            server_selection_timeout_ms: 5000,
            max_pool_size: 100,
            worker_pool_size: 8,
        }
    }

    #[tokio::test]
    async fn the_pool_size_setting_applies_unless_the_uri_sets_one() {
        let plain = client_options(&settings("mongodb://127.0.0.1:27017")).await.unwrap();
        assert_eq!(plain.max_pool_size, Some(100));
        let pinned = client_options(&settings("mongodb://127.0.0.1:27017/?maxPoolSize=7")).await.unwrap();
        assert_eq!(pinned.max_pool_size, Some(7));
    }

    /// Runs `work` on a thread of its own with a single-threaded runtime, as an HTTP worker has.
    fn on_worker_thread<T: Send + 'static>(work: impl AsyncFnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(work())
        })
        .join()
        .unwrap()
    }

    #[test]
    fn request_reads_go_through_the_threads_own_client_and_work() {
        let uri = test_uri();
        let scope = scope_of("own-client");
        on_worker_thread(async move || {
            let store = Store::connect(&settings(&uri)).await.unwrap();
            let other = Store::connect(&settings(&uri)).await.unwrap();
            assert!(!store.request_db(&scope).is_through_own_client(), "no own client yet: the shared one");
            store.own_client_here().unwrap();
            assert!(store.request_db(&scope).is_through_own_client(), "the thread's own client");
            assert!(!store.tenant_db(&scope).is_through_own_client(), "tenant_db stays on the shared client");
            assert!(!other.request_db(&scope).is_through_own_client(), "another store's own client is not this one");

            // A write through the shared client is read back through the thread's own.
            let shared = store.tenant_db(&scope).users();
            let own = store.request_db(&scope).users();
            let id = crate::domain::UserId::parse(&format!("u-{}", uuid::Uuid::now_v7().simple())).unwrap();
            assert!(own.get(&id).await.unwrap().is_none());
            let now = chrono::Utc::now();
            let user = crate::domain::User {
                id: id.clone(),
                tenant_id: scope.tenant_id().clone(),
                display_name: "Own Client".into(),
                name_key: "own client".into(),
                avatar_url: None,
                kind: Default::default(),
                custom: serde_json::json!({}),
                settings: Default::default(),
                created_at: now,
                updated_at: now,
                deactivated_at: None,
            };
            assert!(shared.insert(&user).await.unwrap());
            assert_eq!(own.get(&id).await.unwrap().map(|u| u.display_name), Some("Own Client".into()));
        });
        let (uri, scope) = (test_uri(), scope_of("own-client"));
        on_worker_thread(async move || {
            let store = Store::connect(&settings(&uri)).await.unwrap();
            assert!(!store.request_db(&scope).is_through_own_client(), "another thread has no own client");
        });
    }

    fn scope_of(tenant: &str) -> TenantScope {
        TenantScope::upkeep(&TenantId::parse(tenant).unwrap())
    }
}
