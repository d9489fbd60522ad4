//! The only module that talks to Redis: tenant-scoped key naming, the request rate limiter,
//! pub/sub fan-out, live connections and presence, conversation heads, and WebSocket tickets.
//! Every key and channel starts with `{prefix}t:{tenant_id}:`, so tenants never share Redis
//! state; the one exception, `{prefix}presence_tenants`, names the tenants with live presence.

mod bus;
mod documents;
mod heads;
mod live;
mod presence;
mod rate_limit;
mod tickets;

use std::time::Duration;

use deadpool_redis::{Config, Pool, Runtime};

use crate::config::RedisSettings;
use crate::domain::TenantId;

pub use bus::{Channel, Delivery};
pub use documents::{DocEvent, DocEventKind};
pub use live::{CacheEvent, LiveEvent, Topic};
pub use presence::{ConnectionInfo, ConnectionView, Opened, Presence, WentOffline};
pub use rate_limit::RateLimiter;

#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    prefix: String,
    timeout: Duration,
    leases: rate_limit::Leases,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis: {0}")]
    Command(#[from] deadpool_redis::redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

impl Redis {
    /// Builds the pool; connections are opened on first use.
    pub fn connect(settings: &RedisSettings) -> Result<Self, deadpool_redis::CreatePoolError> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        let mut config = Config::from_url(settings.url.clone());
        let mut pool_config = deadpool_redis::PoolConfig::new(settings.pool_size);
        pool_config.timeouts.wait = Some(timeout);
        pool_config.timeouts.create = Some(timeout);
        pool_config.timeouts.recycle = Some(timeout);
        config.pool = Some(pool_config);
        let pool = config.create_pool(Some(Runtime::Tokio1))?;
        Ok(Self { pool, prefix: settings.key_prefix.clone(), timeout, leases: Default::default() })
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

    /// Runs `op` on a pooled connection within the configured timeout.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, RedisError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: std::future::Future<Output = Result<T, deadpool_redis::redis::RedisError>>,
    {
        let work = async {
            let conn = self.pool.get().await?;
            Ok(op(conn).await?)
        };
        tokio::time::timeout(self.timeout, work).await.map_err(|_| RedisError::Timeout(self.timeout))?
    }
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

    #[test]
    fn keys_start_with_prefix_and_tenant() {
        let keys = TenantKeys { base: format!("{}t:{}:", "confab:", "acme") };
        assert_eq!(keys.key("rl:1700000000"), "confab:t:acme:rl:1700000000");
    }
}
