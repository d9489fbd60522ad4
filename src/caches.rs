//! Short-lived, per-node copies of what nearly every request reads: the caller's tenant, the
//! caller's API key or user record, their active membership of a conversation, and conversations
//! (their settings and pins; callers needing the live counters read those fresh).
//!
//! A change made through confab forgets the copy on this node at once and on the other nodes
//! through Redis (`CacheEvent` on the tenant's `cache` channel). Pub/sub may drop that notice, so
//! no copy outlives `cache.ttl_ms` either: a suspension, a revoked or rotated key, a deactivation
//! or a removal takes effect at once on the node that made it and within that bound everywhere. A
//! copy loaded while a change was being forgotten is not kept (each map counts its forgets).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::CacheSettings;
use crate::domain::{ApiKey, ApiKeyId, Conversation, ConversationId, Member, Tenant, TenantId, User, UserId};
use crate::events::{CacheEvent, Redis};

pub struct Caches {
    tenants: TtlMap<TenantId, Arc<Tenant>>,
    api_keys: TtlMap<ApiKeyId, Arc<ApiKey>>,
    /// When this node last recorded each key's use: a copy's `last_used_at` is as old as the
    /// copy, so without this every request in a copy's lifetime would record the use again.
    key_uses: Mutex<HashMap<ApiKeyId, Instant>>,
    max_entries: usize,
    users: TtlMap<(TenantId, UserId), Arc<User>>,
    members: TtlMap<(TenantId, ConversationId, UserId), Member>,
    conversations: TtlMap<(TenantId, ConversationId), Conversation>,
}

impl Caches {
    pub fn new(settings: &CacheSettings) -> Self {
        let ttl = Duration::from_millis(settings.ttl_ms);
        Self {
            tenants: TtlMap::new(ttl, settings.max_entries),
            api_keys: TtlMap::new(ttl, settings.max_entries),
            key_uses: Mutex::default(),
            max_entries: settings.max_entries,
            users: TtlMap::new(ttl, settings.max_entries),
            members: TtlMap::new(ttl, settings.max_entries),
            conversations: TtlMap::new(ttl, settings.max_entries),
        }
    }

    /// Shared, not copied: every request of a tenant holds the same `Tenant`.
    pub async fn tenant<E, F>(&self, id: &TenantId, load: F) -> Result<Option<Arc<Tenant>>, E>
    where
        F: Future<Output = Result<Option<Tenant>, E>>,
    {
        self.tenants.get_or_load(id, async { Ok(load.await?.map(Arc::new)) }).await
    }

    /// An API key by id, for checking a presented secret.
    pub async fn api_key<E, F>(&self, id: &ApiKeyId, load: F) -> Result<Option<Arc<ApiKey>>, E>
    where
        F: Future<Output = Result<Option<ApiKey>, E>>,
    {
        self.api_keys.get_or_load(id, async { Ok(load.await?.map(Arc::new)) }).await
    }

    /// Whether this node should record a use of key `id` now: not if it did less than
    /// `resolution` ago.
    pub fn claim_key_use(&self, id: &ApiKeyId, resolution: Duration) -> bool {
        let now = Instant::now();
        let mut uses = self.key_uses.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if uses.get(id).is_some_and(|at| now.duration_since(*at) < resolution) {
            return false;
        }
        make_room(&mut uses, self.max_entries, |at| now.duration_since(*at) < resolution);
        uses.insert(id.clone(), now);
        true
    }

    pub async fn user<E, F>(&self, tenant: &TenantId, id: &UserId, load: F) -> Result<Option<Arc<User>>, E>
    where
        F: Future<Output = Result<Option<User>, E>>,
    {
        self.users.get_or_load(&(tenant.clone(), id.clone()), async { Ok(load.await?.map(Arc::new)) }).await
    }

    /// The user's active membership of a conversation; `None` (not kept) otherwise.
    pub async fn membership<E, F>(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        user: &UserId,
        load: F,
    ) -> Result<Option<Member>, E>
    where
        F: Future<Output = Result<Option<Member>, E>>,
    {
        self.members.get_or_load(&(tenant.clone(), conversation.clone(), user.clone()), load).await
    }

    /// A conversation as of at most `cache.ttl_ms` ago: its kind, privacy, settings and pins
    /// (forgotten when they change); its `last_seq`, counters and newest message may be stale.
    pub async fn conversation<E, F>(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        load: F,
    ) -> Result<Option<Conversation>, E>
    where
        F: Future<Output = Result<Option<Conversation>, E>>,
    {
        self.conversations.get_or_load(&(tenant.clone(), id.clone()), load).await
    }

    /// Forgets the copy here and tells the other nodes to.
    pub async fn forget(&self, redis: &Redis, tenant: &TenantId, event: CacheEvent) {
        self.apply(tenant, &event);
        redis.publish_cache_event(tenant, &event).await;
    }

    /// Forgets what `event` names (a notice from any node, this one included).
    pub fn apply(&self, tenant: &TenantId, event: &CacheEvent) {
        match event {
            CacheEvent::Tenant => self.tenants.forget(tenant),
            CacheEvent::ApiKey { key_id } => self.api_keys.forget(key_id),
            CacheEvent::User { user_id } => self.users.forget(&(tenant.clone(), user_id.clone())),
            CacheEvent::Member { conversation_id, user_id } => {
                self.members.forget(&(tenant.clone(), conversation_id.clone(), user_id.clone()))
            }
            CacheEvent::Conversation { conversation_id } => {
                self.conversations.forget(&(tenant.clone(), conversation_id.clone()))
            }
            CacheEvent::SessionAccess { .. } => {}
        }
    }
}

/// Keeps `map` below `max` entries before an insert: drops what is no longer `current`, and
/// everything if that is not enough.
fn make_room<K, V>(map: &mut HashMap<K, V>, max: usize, current: impl Fn(&V) -> bool) {
    if map.len() >= max {
        map.retain(|_, value| current(value));
        if map.len() >= max {
            map.clear();
        }
    }
}

/// A map whose entries expire `ttl` after they were loaded; `ttl` zero keeps nothing.
struct TtlMap<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
    forgets: AtomicU64,
    ttl: Duration,
    max_entries: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlMap<K, V> {
    fn new(ttl: Duration, max_entries: usize) -> Self {
        Self { entries: Mutex::default(), forgets: AtomicU64::new(0), ttl, max_entries }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<K, (Instant, V)>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn get_or_load<E>(&self, key: &K, load: impl Future<Output = Result<Option<V>, E>>) -> Result<Option<V>, E> {
        if self.ttl.is_zero() {
            return load.await;
        }
        let now = Instant::now();
        if let Some((loaded, value)) = self.entries().get(key)
            && now.duration_since(*loaded) < self.ttl
        {
            return Ok(Some(value.clone()));
        }
        let forgets = self.forgets.load(Ordering::Acquire);
        let loaded = load.await?;
        let mut entries = self.entries();
        match &loaded {
            Some(value) if self.forgets.load(Ordering::Acquire) == forgets => {
                make_room(&mut entries, self.max_entries, |(at, _)| now.duration_since(*at) < self.ttl);
                entries.insert(key.clone(), (now, value.clone()));
            }
            _ => {
                entries.remove(key);
            }
        }
        Ok(loaded)
    }

    fn forget(&self, key: &K) {
        let mut entries = self.entries();
        self.forgets.fetch_add(1, Ordering::AcqRel);
        entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(ttl_ms: u64) -> TtlMap<u32, String> {
        TtlMap::new(Duration::from_millis(ttl_ms), 2)
    }

    async fn load(map: &TtlMap<u32, String>, key: u32, value: &str) -> Option<String> {
        let value = value.to_string();
        map.get_or_load(&key, async move { Ok::<_, ()>(Some(value)) }).await.unwrap()
    }

    #[tokio::test]
    async fn keeps_a_copy_until_it_is_forgotten() {
        let map = map(60_000);
        assert_eq!(load(&map, 1, "a").await.as_deref(), Some("a"));
        assert_eq!(load(&map, 1, "b").await.as_deref(), Some("a"));
        map.forget(&1);
        assert_eq!(load(&map, 1, "c").await.as_deref(), Some("c"));
    }

    #[tokio::test]
    async fn copies_expire_and_a_zero_ttl_keeps_nothing() {
        let map = map(1);
        load(&map, 1, "a").await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(load(&map, 1, "b").await.as_deref(), Some("b"));
        let off = map_with_ttl_zero();
        load(&off, 1, "a").await;
        assert_eq!(load(&off, 1, "b").await.as_deref(), Some("b"));
    }

    fn map_with_ttl_zero() -> TtlMap<u32, String> {
        TtlMap::new(Duration::ZERO, 2)
    }

    #[tokio::test]
    async fn a_copy_loaded_across_a_forget_is_not_kept() {
        let map = map(60_000);
        let loaded = map
            .get_or_load(&1, async {
                map.forget(&1);
                Ok::<_, ()>(Some("stale".to_string()))
            })
            .await
            .unwrap();
        assert_eq!(loaded.as_deref(), Some("stale"));
        assert_eq!(load(&map, 1, "fresh").await.as_deref(), Some("fresh"));
    }

    #[tokio::test]
    async fn stays_within_its_size() {
        let map = map(60_000);
        for key in 0..5 {
            load(&map, key, "v").await;
        }
        assert!(map.entries().len() <= 2);
    }

    #[test]
    fn each_key_use_is_claimed_once_per_resolution_and_the_record_stays_bounded() {
        let caches = Caches::new(&CacheSettings { ttl_ms: 2000, max_entries: 2 });
        let ids: Vec<ApiKeyId> = ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "cccccccccccccccc"]
            .iter()
            .map(|id| ApiKeyId::parse(id).unwrap())
            .collect();
        let minute = Duration::from_secs(60);
        assert!(caches.claim_key_use(&ids[0], minute), "the first use is recorded");
        assert!(!caches.claim_key_use(&ids[0], minute), "and not again within the resolution");
        assert!(caches.claim_key_use(&ids[1], minute), "other keys are counted apart");
        assert!(caches.claim_key_use(&ids[0], Duration::ZERO), "once the resolution has passed, again");
        assert!(caches.claim_key_use(&ids[2], minute));
        assert!(caches.key_uses.lock().unwrap().len() <= 2, "never more records than max_entries");
    }
}
