//! Live connections and presence, shared by every node through Redis. Per tenant:
//! `conns:{user}` is a sorted set of the user's connection ids scored by when each goes stale
//! (its last heartbeat + the stale window), `conn:{id}` a hash describing one connection (expires
//! with it), and `last_seen` a hash of user -> last time seen online. A node that crashes stops
//! refreshing its entries, so they drop out of every answer after the stale window: presence is
//! derived from live connections, never from a flag someone must remember to clear.
//!
//! So that the people who share a conversation with a crashed node's users also hear those users
//! went offline, `online` is a sorted set of the tenant's users with live connections, scored by
//! when their newest one goes stale, and `{prefix}presence_tenants` names the tenants that have
//! one. Every node sweeps them (`sweep`); the node whose sweep finds a user's last connection
//! stale removes the user, atomically, and is the one that announces it.

use serde::Serialize;

use crate::domain::{TenantId, UserId};

use super::{Redis, RedisError};

/// The Lua that records a connection as live until stale_at, shared by `OPEN` and `HEARTBEAT`,
/// which take the same KEYS (conns, conn, last_seen, online, presence_tenants) and ARGV (now,
/// stale_at, connection id, max, user, node, client, user_agent, ttl_secs, connected_at, tenant).
macro_rules! register_connection {
    () => {
        r#"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[9] * 1000)
redis.call('HSET', KEYS[2], 'user_id', ARGV[5], 'node', ARGV[6], 'client', ARGV[7], 'user_agent', ARGV[8],
  'status', 'online', 'connected_at', ARGV[10], 'last_heartbeat', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[9])
redis.call('HSET', KEYS[3], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[4], 'GT', ARGV[2], ARGV[5])
redis.call('SADD', KEYS[5], ARGV[11])
"#
    };
}

/// Registers a connection unless the user is at the limit. Returns the user's live connections
/// before this one, or -1 at the limit.
const OPEN: &str = concat!(
    r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local live = redis.call('ZCARD', KEYS[1])
if live >= tonumber(ARGV[4]) then return -1 end
"#,
    register_connection!(),
    "return live\n"
);

/// Refreshes a connection, re-creating it whole if it expired or Redis lost it. A connection
/// re-created so (it went stale while its node could not reach Redis, or it opened untracked)
/// counts against the limit like a new one: at the limit nothing changes and -1 is returned.
/// Otherwise 0 when the user was not in `online` (they come back: a sweep or a close took them
/// off meanwhile), else 1.
const HEARTBEAT: &str = concat!(
    r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if (not score) or tonumber(score) <= tonumber(ARGV[1]) then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return -1 end
end
local known = redis.call('ZSCORE', KEYS[4], ARGV[5]) and 1 or 0
"#,
    register_connection!(),
    "return known\n"
);

/// Removes a connection. KEYS: conns, conn, last_seen, online, presence_tenants. ARGV: now,
/// connection id, user, tenant. Returns the user's live connections after it.
const CLOSE: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[1])
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then
  redis.call('ZREM', KEYS[4], ARGV[3])
  if redis.call('ZCARD', KEYS[4]) == 0 then redis.call('SREM', KEYS[5], ARGV[4]) end
end
return left
"#;

/// Settles one user the sweep found due in `online`: drops their stale connections; if none is
/// left, removes them from `online` (and the tenant from presence_tenants once `online` is empty)
/// and returns when they were last seen (0 if unknown); otherwise rescores them by their newest
/// connection and returns -1. KEYS: conns, last_seen, online, presence_tenants. ARGV: now, user,
/// tenant.
const SETTLE: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] then
  redis.call('ZADD', KEYS[3], newest[2], ARGV[2])
  return -1
end
if redis.call('ZREM', KEYS[3], ARGV[2]) == 0 then return -1 end
if redis.call('ZCARD', KEYS[3]) == 0 then redis.call('SREM', KEYS[4], ARGV[3]) end
return tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
"#;

/// Users the sweep settles per tenant per round; the rest wait for the next round.
const SWEEP_BATCH: usize = 500;

/// What a new connection registers about itself.
pub struct ConnectionInfo<'a> {
    pub id: &'a str,
    pub user: &'a UserId,
    pub node: &'a str,
    /// What the app says it is (`?client=`), e.g. `ios/2.3.1`.
    pub client: &'a str,
    pub user_agent: &'a str,
    /// Milliseconds since the epoch.
    pub connected_at: i64,
}

/// Outcome of registering a connection.
pub enum Opened {
    /// The user's first live connection: they just came online.
    FirstOfUser,
    Another,
    /// The user already holds the maximum number of live connections.
    AtLimit,
}

/// One user's presence, derived from their live connections.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Presence {
    #[schema(value_type = String)]
    pub user_id: UserId,
    pub online: bool,
    pub connections: u64,
    /// Milliseconds since the epoch when the user was last seen online (a heartbeat, connect or
    /// disconnect); `null` if never.
    pub last_seen_at: Option<i64>,
}

/// One live connection, as tracked for "who is connected from where".
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConnectionView {
    pub connection_id: String,
    pub user_id: String,
    pub status: String,
    /// The node holding the socket.
    pub node: String,
    pub client: String,
    pub user_agent: String,
    pub connected_at: i64,
    pub last_heartbeat: i64,
}

/// A tenant's presence keys, with the stale window every entry lives by.
pub struct PresenceRegistry<'a> {
    redis: &'a Redis,
    tenant: &'a TenantId,
    stale_ms: i64,
}

/// A user the sweep found without live connections: offline since `last_seen_at`.
#[derive(Debug)]
pub struct WentOffline {
    pub tenant: TenantId,
    pub user: UserId,
    pub last_seen_at: i64,
}

impl Redis {
    pub fn presence<'a>(&'a self, tenant: &'a TenantId, stale_after_secs: u64) -> PresenceRegistry<'a> {
        PresenceRegistry { redis: self, tenant, stale_ms: stale_after_secs as i64 * 1000 }
    }

    fn presence_tenants_key(&self) -> String {
        format!("{}presence_tenants", self.prefix)
    }

    /// One round of the sweep: every user of every tenant whose connections all went stale
    /// without closing (their node died or lost Redis), each reported by exactly one node.
    pub async fn sweep_presence(&self) -> Result<Vec<WentOffline>, RedisError> {
        let key = self.presence_tenants_key();
        let tenants: Vec<String> = self
            .run(|mut conn| async move { deadpool_redis::redis::cmd("SMEMBERS").arg(key).query_async(&mut conn).await })
            .await?;
        let mut gone = Vec::new();
        for tenant in tenants {
            let Ok(tenant) = TenantId::parse(&tenant) else { continue };
            // The stale window does not matter here: settling only reads scores.
            gone.extend(self.presence(&tenant, 0).sweep().await?);
        }
        Ok(gone)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl PresenceRegistry<'_> {
    fn conns_key(&self, user: &UserId) -> String {
        self.redis.keys(self.tenant).key(&format!("conns:{user}"))
    }

    fn conn_key(&self, id: &str) -> String {
        self.redis.keys(self.tenant).key(&format!("conn:{id}"))
    }

    fn last_seen_key(&self) -> String {
        self.redis.keys(self.tenant).key("last_seen")
    }

    fn online_key(&self) -> String {
        self.redis.keys(self.tenant).key("online")
    }

    fn ttl_secs(&self) -> i64 {
        self.stale_ms / 1000 + 1
    }

    /// KEYS of `OPEN`, `HEARTBEAT` and `CLOSE` for `user`'s connection `id`.
    fn connection_keys(&self, user: &UserId, id: &str) -> [String; 5] {
        let tenants = self.redis.presence_tenants_key();
        [self.conns_key(user), self.conn_key(id), self.last_seen_key(), self.online_key(), tenants]
    }

    /// Registers a connection (`OPEN`) or refreshes it (`HEARTBEAT`): -1 at the limit becomes
    /// `AtLimit`, 0 (no live connection before, or not in `online`) `FirstOfUser`.
    async fn track(&self, script: &str, info: &ConnectionInfo<'_>, max_per_user: u32) -> Result<Opened, RedisError> {
        let now = now_ms();
        let keys = self.connection_keys(info.user, info.id);
        let ttl = self.ttl_secs();
        let outcome: i64 = self
            .redis
            .run(|mut conn| async move {
                deadpool_redis::redis::cmd("EVAL")
                    .arg(script)
                    .arg(keys.len())
                    .arg(&keys)
                    .arg(now)
                    .arg(now + self.stale_ms)
                    .arg(info.id)
                    .arg(max_per_user)
                    .arg(info.user.as_str())
                    .arg(info.node)
                    .arg(info.client)
                    .arg(info.user_agent)
                    .arg(ttl)
                    .arg(info.connected_at)
                    .arg(self.tenant.as_str())
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(match outcome {
            -1 => Opened::AtLimit,
            0 => Opened::FirstOfUser,
            _ => Opened::Another,
        })
    }

    pub async fn open(&self, info: &ConnectionInfo<'_>, max_per_user: u32) -> Result<Opened, RedisError> {
        self.track(OPEN, info, max_per_user).await
    }

    /// Refreshes a connection: `FirstOfUser` when its user comes back online with it (they had
    /// been taken off as gone while it could not reach Redis, or it opened untracked); `AtLimit`
    /// when it had to be re-created and the user holds `max_per_user` live connections without it.
    pub async fn heartbeat(&self, info: &ConnectionInfo<'_>, max_per_user: u32) -> Result<Opened, RedisError> {
        self.track(HEARTBEAT, info, max_per_user).await
    }

    /// Removes a connection; `true` when it was the user's last (they went offline).
    pub async fn close(&self, user: &UserId, id: &str) -> Result<bool, RedisError> {
        let keys = self.connection_keys(user, id);
        let left: i64 = self
            .redis
            .run(|mut conn| async move {
                deadpool_redis::redis::cmd("EVAL")
                    .arg(CLOSE)
                    .arg(keys.len())
                    .arg(&keys)
                    .arg(now_ms())
                    .arg(id)
                    .arg(user.as_str())
                    .arg(self.tenant.as_str())
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(left == 0)
    }

    /// Presence of each user, in the order given.
    pub async fn of(&self, users: &[UserId]) -> Result<Vec<Presence>, RedisError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut pipe = deadpool_redis::redis::pipe();
        for user in users {
            pipe.cmd("ZCOUNT").arg(self.conns_key(user)).arg(format!("({now}")).arg("+inf");
        }
        let names: Vec<&str> = users.iter().map(UserId::as_str).collect();
        let last_seen_key = self.last_seen_key();
        let (counts, last_seen): (Vec<u64>, Vec<Option<i64>>) = self
            .redis
            .run(|mut conn| async move {
                let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
                let last_seen: Vec<Option<i64>> =
                    deadpool_redis::redis::cmd("HMGET").arg(last_seen_key).arg(&names).query_async(&mut conn).await?;
                Ok((counts, last_seen))
            })
            .await?;
        Ok(users
            .iter()
            .zip(counts)
            .zip(last_seen)
            .map(|((user, connections), last_seen_at)| Presence {
                user_id: user.clone(),
                online: connections > 0,
                connections,
                last_seen_at,
            })
            .collect())
    }

    /// This tenant's users whose newest connection went stale, settled one by one.
    async fn sweep(&self) -> Result<Vec<WentOffline>, RedisError> {
        let now = now_ms();
        let online = self.online_key();
        let due: Vec<String> = self
            .redis
            .run(|mut conn| async move {
                deadpool_redis::redis::cmd("ZRANGEBYSCORE")
                    .arg(online)
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(SWEEP_BATCH)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let mut gone = Vec::new();
        for user in due {
            let Ok(user) = UserId::parse(&user) else { continue };
            let keys =
                [self.conns_key(&user), self.last_seen_key(), self.online_key(), self.redis.presence_tenants_key()];
            let name = user.as_str();
            let last_seen: i64 = self
                .redis
                .run(|mut conn| async move {
                    deadpool_redis::redis::cmd("EVAL")
                        .arg(SETTLE)
                        .arg(keys.len())
                        .arg(&keys)
                        .arg(now)
                        .arg(name)
                        .arg(self.tenant.as_str())
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            if last_seen >= 0 {
                gone.push(WentOffline { tenant: self.tenant.clone(), user, last_seen_at: last_seen });
            }
        }
        Ok(gone)
    }

    /// A user's live connections.
    pub async fn connections(&self, user: &UserId) -> Result<Vec<ConnectionView>, RedisError> {
        let now = now_ms();
        let key = self.conns_key(user);
        let ids: Vec<String> = self
            .redis
            .run(|mut conn| async move {
                deadpool_redis::redis::cmd("ZRANGEBYSCORE")
                    .arg(key)
                    .arg(format!("({now}"))
                    .arg("+inf")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = deadpool_redis::redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(self.conn_key(id));
        }
        let hashes: Vec<std::collections::HashMap<String, String>> =
            self.redis.run(|mut conn| async move { pipe.query_async(&mut conn).await }).await?;
        let field = |hash: &std::collections::HashMap<String, String>, name: &str| hash.get(name).cloned();
        Ok(ids
            .into_iter()
            .zip(hashes)
            .filter(|(_, hash)| !hash.is_empty())
            .map(|(connection_id, hash)| ConnectionView {
                user_id: field(&hash, "user_id").unwrap_or_default(),
                status: field(&hash, "status").unwrap_or_default(),
                node: field(&hash, "node").unwrap_or_default(),
                client: field(&hash, "client").unwrap_or_default(),
                user_agent: field(&hash, "user_agent").unwrap_or_default(),
                connected_at: field(&hash, "connected_at").and_then(|v| v.parse().ok()).unwrap_or_default(),
                last_heartbeat: field(&hash, "last_heartbeat").and_then(|v| v.parse().ok()).unwrap_or_default(),
                connection_id,
            })
            .collect())
    }
}
