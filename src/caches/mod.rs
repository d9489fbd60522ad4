//! Short-lived, per-node copies of what nearly every request reads: the caller's tenant, the
//! caller's API key or user record, their active membership of a conversation, and conversations
//! (their settings and pins; callers needing the live counters read those fresh).
//!
//! A change made through confab forgets the copy on this node at once and on the other nodes
//! through Redis (`CacheEvent` on the tenant's `cache` channel). Pub/sub may drop that notice, so
//! no copy outlives `cache.ttl_ms` either: a suspension, a revoked or rotated key, a deactivation
//! or a removal takes effect at once on the node that made it and within that bound everywhere. A
//! copy loaded while a change was being forgotten is not kept (each map counts its forgets). A key
//! that many requests miss at once is loaded once, and a copy in use is loaded again before it
//! expires while requests go on using it (`ttl_map`): users, memberships and conversations by
//! the node's refresher, many to a query (`refresh`); tenants and API keys by the first request
//! that finds the copy due.
//!
//! Stored messages for history pages are kept apart (`history`): they are checked against a
//! revision in Redis on every use rather than forgotten by notice.

mod history;
mod refresh;
mod tokens;
mod ttl_map;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::CacheSettings;
use crate::domain::{ApiKey, ApiKeyId, Conversation, ConversationId, Member, Tenant, TenantId, User, UserId};
use crate::events::{CacheEvent, Redis};
pub use history::{RecentMessages, blocks_around};
pub use refresh::refresh_behind;
pub use tokens::VerifiedTokens;
use ttl_map::TtlMap;

pub struct Caches {
    tenants: TtlMap<TenantId, Arc<Tenant>>,
    api_keys: TtlMap<ApiKeyId, Arc<ApiKey>>,
    /// When this node last recorded each key's use: a copy's `last_used_at` is as old as the
    /// copy, so without this every request in a copy's lifetime would record the use again.
    key_uses: Mutex<HashMap<ApiKeyId, Instant>>,
    max_entries: usize,
    /// `cache.ttl_ms`: how old any copy may be.
    ttl: Duration,
    users: TtlMap<(TenantId, UserId), Arc<User>>,
    members: TtlMap<(TenantId, ConversationId, UserId), Member>,
    conversations: TtlMap<(TenantId, ConversationId), Conversation>,
    /// User tokens verified lately (`tokens`).
    pub tokens: VerifiedTokens,
    /// Stored messages read lately for history pages (`history`).
    pub messages: RecentMessages,
}

impl Caches {
    pub fn new(settings: &CacheSettings) -> Self {
        let ttl = Duration::from_millis(settings.ttl_ms);
        Self {
            tenants: TtlMap::new(ttl, settings.max_entries),
            api_keys: TtlMap::new(ttl, settings.max_entries),
            key_uses: Mutex::default(),
            max_entries: settings.max_entries,
            ttl,
            // Those a node holds one of per active user (or more) are refreshed in batches.
            users: TtlMap::refreshed_behind(ttl, settings.max_entries),
            members: TtlMap::refreshed_behind(ttl, settings.max_entries),
            conversations: TtlMap::refreshed_behind(ttl, settings.max_entries),
            tokens: VerifiedTokens::new(settings.max_entries),
            messages: RecentMessages::new(Duration::from_millis(settings.history_ttl_ms), settings.history_messages),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_use_is_claimed_once_per_resolution_and_the_record_stays_bounded() {
        let caches =
            Caches::new(&CacheSettings { ttl_ms: 2000, max_entries: 2, history_messages: 0, history_ttl_ms: 0 });
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
