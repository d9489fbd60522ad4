//! Per-tenant request rate limit: a one-second fixed window counter in Redis, shared by every
//! node. If Redis is unreachable requests are let through (logged): availability of the API
//! matters more than exact enforcement for a few seconds.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::domain::TenantId;
use crate::error::{ApiError, ErrorCode};

use super::Redis;

/// Window keys outlive their second briefly so a slow node still counts into the right one.
const WINDOW_TTL_SECS: i64 = 2;

pub struct RateLimiter<'a> {
    redis: &'a Redis,
}

impl<'a> RateLimiter<'a> {
    pub(super) fn new(redis: &'a Redis) -> Self {
        Self { redis }
    }

    /// Counts one request; 429 `rate_limited` once the tenant passes `per_second` this second.
    pub async fn check(&self, tenant: &TenantId, per_second: u32) -> Result<(), ApiError> {
        let second = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let key = self.redis.keys(tenant).key(&format!("rl:{second}"));
        let counted = self
            .redis
            .run(|mut conn| async move {
                let (count,): (u64,) = deadpool_redis::redis::pipe()
                    .incr(&key, 1)
                    .expire(&key, WINDOW_TTL_SECS)
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
                Ok(count)
            })
            .await;
        match counted {
            Ok(count) if count > u64::from(per_second) => Err(ApiError::new(
                ErrorCode::RateLimited,
                format!("rate limit of {per_second} requests per second exceeded"),
            )
            .with_retry_after(1)
            .with_details(serde_json::json!({ "limit_per_second": per_second }))),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "rate limiter unavailable; letting the request through");
                Ok(())
            }
        }
    }
}
