//! Refreshing copies behind the requests: the users, memberships and conversations that
//! requests found due (`TtlMap::refreshed_behind`) are loaded again by one task per node, a query
//! per tenant and kind for up to `KEYS_PER_QUERY` of them, while requests go on being served the
//! copies. A node serving many users thus reads each busy copy once per `cache.ttl_ms` in a few
//! queries, rather than one query per copy made by whichever request found it due (which then
//! waited for it).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use crate::auth::TenantScope;
use crate::domain::{ConversationId, Member, TenantId, UserId};
use crate::tenancy::{Store, TenantDb};

use super::Caches;
use super::ttl_map::TtlMap;

/// Most keys one refresh query asks for.
const KEYS_PER_QUERY: usize = 500;
/// How often the refresher looks for due copies, as a share of `cache.ttl_ms`: a copy is due at
/// three quarters of its ttl, so it is refreshed well before it expires.
const TICKS_PER_TTL: u32 = 10;

/// Refreshes `caches`' due copies from `store` for as long as the node runs.
pub async fn refresh_behind(caches: &Caches, store: &Store) {
    let Some(every) = caches.ttl.checked_div(TICKS_PER_TTL).filter(|every| !every.is_zero()) else {
        return;
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        caches.refresh_due(store).await;
    }
}

impl Caches {
    /// Loads the copies requests found due since the last call, and keeps what was found.
    pub async fn refresh_due(&self, store: &Store) {
        refresh(
            &self.users,
            "users",
            |(tenant, _)| tenant,
            store,
            |db, keys| async move {
                let ids: Vec<UserId> = keys.into_iter().map(|(_, id)| id).collect();
                let found = db.users().get_many(&ids).await?;
                Ok(found.into_iter().map(|user| ((db.tenant_id().clone(), user.id.clone()), Arc::new(user))).collect())
            },
        )
        .await;
        refresh(
            &self.members,
            "members",
            |(tenant, _, _)| tenant,
            store,
            |db, keys| async move {
                let pairs: Vec<(ConversationId, UserId)> = keys.into_iter().map(|(_, c, u)| (c, u)).collect();
                let found = db.members().get_many(&pairs).await?;
                // Only active memberships are kept, as when a request loads one.
                Ok(found
                    .into_iter()
                    .filter(Member::is_active)
                    .map(|m| ((db.tenant_id().clone(), m.conversation_id.clone(), m.user_id.clone()), m))
                    .collect())
            },
        )
        .await;
        refresh(
            &self.conversations,
            "conversations",
            |(tenant, _)| tenant,
            store,
            |db, keys| async move {
                let ids: Vec<ConversationId> = keys.into_iter().map(|(_, id)| id).collect();
                let found = db.conversations().get_many(&ids).await?;
                Ok(found.into_iter().map(|c| ((db.tenant_id().clone(), c.id.clone()), c)).collect())
            },
        )
        .await;
    }
}

/// Refreshes `map`'s due keys, a query per tenant and `KEYS_PER_QUERY` keys; `load` returns the
/// keys it found with their values (keys it did not return are gone). The keys of a query that
/// failed keep their copies until their ttl, when a request loads them itself.
async fn refresh<K, V, F, Fut>(
    map: &TtlMap<K, V>,
    cache: &'static str,
    tenant_of: fn(&K) -> &TenantId,
    store: &Store,
    load: F,
) where
    K: Eq + Hash + Clone,
    V: Clone,
    F: Fn(TenantDb, Vec<K>) -> Fut,
    Fut: Future<Output = Result<Vec<(K, V)>, mongodb::error::Error>>,
{
    let due = map.take_due();
    if due.keys.is_empty() {
        return;
    }
    let mut by_tenant: HashMap<&TenantId, Vec<&K>> = HashMap::new();
    for key in &due.keys {
        by_tenant.entry(tenant_of(key)).or_default().push(key);
    }
    let mut refreshed = Vec::with_capacity(due.keys.len());
    for (tenant, keys) in by_tenant {
        for batch in keys.chunks(KEYS_PER_QUERY) {
            let db = store.tenant_db(&TenantScope::upkeep(tenant));
            match load(db, batch.iter().map(|k| (*k).clone()).collect()).await {
                Ok(found) => {
                    let mut found: HashMap<K, V> = found.into_iter().collect();
                    refreshed.extend(batch.iter().map(|k| ((*k).clone(), found.remove(*k))));
                }
                Err(e) => {
                    tracing::warn!(error = %e, cache, "could not refresh cached copies; requests will load them");
                    metrics::counter!("cache_refresh_failures_total", "cache" => cache).increment(1);
                }
            }
        }
    }
    let kept = map.keep_refreshed(&due, refreshed);
    metrics::counter!("cache_refreshed_copies_total", "cache" => cache).increment(kept as u64);
}
