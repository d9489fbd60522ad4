//! The only module that talks to Redis: tenant-scoped key naming, the request rate limiter,
//! pub/sub fan-out, live connections and presence, conversation heads, and WebSocket tickets.
//! Every key and channel starts with `{prefix}t:{tenant_id}:`, so tenants never share Redis
//! state; the one exception, `{prefix}presence_tenants`, names the tenants with live presence.

mod bus;
mod connections;
mod documents;
mod heads;
mod live;
mod presence;
mod rate_limit;
mod tickets;

use std::time::Duration;

use deadpool::Runtime;
use deadpool_redis::redis::aio::MultiplexedConnection;
use tokio::time::{Instant, timeout_at};

use crate::config::RedisSettings;
use crate::domain::TenantId;

pub use bus::{Channel, Delivery};
pub use documents::{DocEvent, DocEventKind};
pub use live::{CacheEvent, LiveEvent, Topic};
pub use presence::{ConnectionInfo, ConnectionView, Opened, Presence, WentOffline};
pub use rate_limit::RateLimiter;

#[derive(Clone)]
pub struct Redis {
    pool: connections::Pool,
    prefix: String,
    timeout: Duration,
    leases: rate_limit::Leases,
    unrevised: heads::Unrevised,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool::managed::PoolError<deadpool_redis::redis::RedisError>),
    #[error("redis: {0}")]
    Command(#[from] deadpool_redis::redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

impl Redis {
    /// Builds the pool; connections are opened on first use.
    pub fn connect(settings: &RedisSettings) -> Result<Self, RedisSetupError> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        let pool = connections::Pool::builder(connections::Manager::new(&settings.url)?)
            .max_size(settings.pool_size)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()?;
        Ok(Self {
            pool,
            prefix: settings.key_prefix.clone(),
            timeout,
            leases: Default::default(),
            unrevised: Default::default(),
        })
    }

    pub fn keys(&self, tenant: &TenantId) -> TenantKeys {
        TenantKeys { base: format!("{}t:{}:", self.prefix, tenant) }
    }

    pub fn rate_limiter(&self) -> RateLimiter<'_> {
        RateLimiter::new(self)
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        self.run(|mut conn| async move {
            deadpool_redis::redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ())
        })
        .await
    }

    /// Runs `op` on a pooled connection (shared: see `connections`), all within the configured
    /// timeout. A connection whose command failed at the connection level, or did not answer in
    /// time, is replaced.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, RedisError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = Result<T, deadpool_redis::redis::RedisError>>,
    {
        let deadline = Instant::now() + self.timeout;
        let (multiplexed, breakage) = {
            let connection =
                timeout_at(deadline, self.pool.get()).await.map_err(|_| RedisError::Timeout(self.timeout))??;
            (connection.multiplexed.clone(), connection.broken.clone())
        };
        match timeout_at(deadline, op(multiplexed)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                if connections::breaks_connection(&e) {
                    breakage.report();
                }
                Err(e.into())
            }
            Err(_) => {
                breakage.report();
                Err(RedisError::Timeout(self.timeout))
            }
        }
    }
}

/// Why the Redis pool could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("redis url: {0}")]
    Url(#[from] deadpool_redis::redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool::managed::BuildError),
}

/// Names of one tenant's keys and channels.
pub struct TenantKeys {
    base: String,
}

impl TenantKeys {
    /// `{prefix}t:{tenant}:{name}`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use deadpool_redis::redis::{AsyncCommands, cmd};

    fn redis_url() -> String {
        std::env::var("CONFAB_TEST_REDIS_URL")
            .expect("CONFAB_TEST_REDIS_URL is not set: run the suite with ./scripts/test, which starts redis-server")
    }

    /// How many PINGs the server has answered, read on a connection of its own.
    async fn pings_answered() -> u64 {
        let client = deadpool_redis::redis::Client::open(redis_url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let stats: String = cmd("INFO").arg("commandstats").query_async(&mut connection).await.unwrap();
        stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_ping:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    }

    #[tokio::test]
    async fn a_pooled_connection_is_handed_out_again_unchecked_and_replaced_once_it_fails() {
        let settings =
            RedisSettings { url: redis_url(), key_prefix: "pool-test:".into(), pool_size: 1, timeout_ms: 2000 };
        let redis = Redis::connect(&settings).unwrap();
        let client_id = || {
            redis.run(|mut connection| async move { cmd("CLIENT").arg("ID").query_async::<i64>(&mut connection).await })
        };
        let first = client_id().await.unwrap();
        let pings = pings_answered().await;
        for _ in 0..5 {
            assert_eq!(client_id().await.unwrap(), first, "the pool's one connection is used again");
        }
        assert_eq!(pings_answered().await, pings, "handing a connection out again sends nothing");

        // A command error says nothing about the connection: it stays.
        let wrong_type = redis
            .run(|mut connection| async move {
                let _: () = connection.set("pool-test:text", "x").await?;
                connection.incr::<_, _, i64>("pool-test:text", 1).await
            })
            .await;
        assert!(wrong_type.is_err());
        assert_eq!(client_id().await.unwrap(), first, "a failed command does not replace the connection");

        // Killed from outside: the next command fails, and the one after runs on a new connection.
        let killer = deadpool_redis::redis::Client::open(redis_url()).unwrap();
        let mut killer = killer.get_multiplexed_async_connection().await.unwrap();
        let killed: i64 = cmd("CLIENT").arg("KILL").arg("ID").arg(first).query_async(&mut killer).await.unwrap();
        assert_eq!(killed, 1);
        assert!(client_id().await.is_err(), "the killed connection's command fails");
        let second = client_id().await.unwrap();
        assert_ne!(second, first, "and the connection is replaced");
        assert_eq!(client_id().await.unwrap(), second);
    }

    #[tokio::test]
    async fn commands_share_a_pooled_connection_while_they_wait_for_answers() {
        let settings =
            RedisSettings { url: redis_url(), key_prefix: "share-test:".into(), pool_size: 1, timeout_ms: 2000 };
        let redis = Redis::connect(&settings).unwrap();
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        // The first command is still waiting (here, for the test) when the second asks for the
        // pool's only connection: it gets it at once, rather than when the first is answered.
        let waiting = redis.run(|mut connection| async move {
            let id = cmd("CLIENT").arg("ID").query_async::<i64>(&mut connection).await?;
            let _ = held.await;
            Ok(id)
        });
        let second = async {
            let id = redis
                .run(|mut connection| async move { cmd("CLIENT").arg("ID").query_async::<i64>(&mut connection).await })
                .await;
            release.send(()).unwrap();
            id
        };
        let (first, second) = tokio::time::timeout(Duration::from_secs(1), async { tokio::join!(waiting, second) })
            .await
            .expect("the second command did not wait for the first");
        assert_eq!(first.unwrap(), second.unwrap(), "both ran on the one pooled connection");
    }

    #[test]
    fn keys_start_with_prefix_and_tenant() {
        let keys = TenantKeys { base: format!("{}t:{}:", "confab:", "acme") };
        assert_eq!(keys.key("rl:1700000000"), "confab:t:acme:rl:1700000000");
    }
}
