//! Per-tenant request rate limit: a one-second fixed window counter in Redis, shared by every
//! node. A node does not count each request there: it takes the window's budget in slices
//! (`INCRBY` of 1/`SLICES_PER_LIMIT` of the limit, at most `MAX_SLICE`) and spends them locally,
//! so a busy tenant costs Redis a few calls a second. What a node leaves unspent when the second
//! ends is the most the limit can under-admit; small limits are sliced one by one, i.e. exactly.
//! If Redis is unreachable requests are let through (logged): availability of the API matters
//! more than exact enforcement for a few seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::domain::TenantId;
use crate::error::{ApiError, ErrorCode};

use super::Redis;

/// Window keys outlive their second briefly so a slow node still counts into the right one.
const WINDOW_TTL_SECS: i64 = 2;
/// A slice is this fraction of the per-second limit...
const SLICES_PER_LIMIT: u32 = 64;
/// ...and at most this many requests.
const MAX_SLICE: u32 = 500;

/// What this node holds of each tenant's current window.
#[derive(Clone, Default)]
pub struct Leases(Arc<Mutex<HashMap<TenantId, Lease>>>);

#[derive(Clone, Default)]
struct Lease {
    second: u64,
    left: u32,
    /// The window is spent across the nodes: refuse until the next second.
    exhausted: bool,
    /// Held while a slice is being taken, so that a burst takes one slice, not one each.
    taking: Arc<tokio::sync::Mutex<()>>,
}

impl Leases {
    /// Spends one request of a slice held for `second`; `Some(false)` once the window is spent,
    /// `None` when a new slice is needed.
    fn spend(&self, tenant: &TenantId, second: u64) -> Option<bool> {
        let mut leases = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let lease = leases.get_mut(tenant).filter(|l| l.second == second)?;
        if lease.left > 0 {
            lease.left -= 1;
            return Some(true);
        }
        lease.exhausted.then_some(false)
    }

    /// The tenant's turn to take a slice.
    fn turn(&self, tenant: &TenantId) -> Arc<tokio::sync::Mutex<()>> {
        let mut leases = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        leases.entry(tenant.clone()).or_default().taking.clone()
    }

    /// Keeps what is left of a granted slice after this request took one.
    fn keep(&self, tenant: &TenantId, second: u64, granted: u32) {
        let mut leases = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if leases.len() > 10_000 {
            leases.retain(|_, l| l.second + 1 >= second);
        }
        let lease = leases.entry(tenant.clone()).or_default();
        if lease.second != second {
            *lease = Lease { second, taking: lease.taking.clone(), ..Lease::default() };
        }
        match granted {
            0 => lease.exhausted = true,
            n => lease.left += n - 1,
        }
    }
}

/// How much of a slice of `size` is within `limit`, given the window's count after taking it.
fn granted(count: u64, size: u32, limit: u32) -> u32 {
    let before = count.saturating_sub(u64::from(size));
    u64::from(limit).saturating_sub(before).min(u64::from(size)) as u32
}

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
        let leases = &self.redis.leases;
        let spent = |leases: &Leases| match leases.spend(tenant, second) {
            Some(true) => Some(Ok(())),
            Some(false) => Some(Err(limited(per_second))),
            None => None,
        };
        if let Some(done) = spent(leases) {
            return done;
        }
        let turn = leases.turn(tenant);
        let _turn = turn.lock().await;
        if let Some(done) = spent(leases) {
            return done;
        }
        let size = (per_second / SLICES_PER_LIMIT).clamp(1, MAX_SLICE);
        let key = self.redis.keys(tenant).key(&format!("rl:{second}"));
        let counted = self
            .redis
            .run(|mut conn| async move {
                let (count,): (u64,) = deadpool_redis::redis::pipe()
                    .incr(&key, size)
                    .expire(&key, WINDOW_TTL_SECS)
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
                Ok(count)
            })
            .await;
        match counted {
            Ok(count) => {
                let granted = granted(count, size, per_second);
                leases.keep(tenant, second, granted);
                if granted == 0 { Err(limited(per_second)) } else { Ok(()) }
            }
            Err(e) => {
                tracing::warn!(error = %e, "rate limiter unavailable; letting the request through");
                Ok(())
            }
        }
    }
}

fn limited(per_second: u32) -> ApiError {
    ApiError::new(ErrorCode::RateLimited, format!("rate limit of {per_second} requests per second exceeded"))
        .with_retry_after(1)
        .with_details(serde_json::json!({ "limit_per_second": per_second }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_is_granted_up_to_the_limit() {
        assert_eq!(granted(10, 10, 100), 10);
        assert_eq!(granted(100, 10, 100), 10);
        assert_eq!(granted(105, 10, 100), 5);
        assert_eq!(granted(110, 10, 100), 0);
        assert_eq!(granted(500, 10, 100), 0);
        assert_eq!(granted(3, 1, 3), 1);
        assert_eq!(granted(4, 1, 3), 0);
    }

    #[test]
    fn a_lease_is_spent_then_refreshed_each_second() {
        let leases = Leases::default();
        let tenant = TenantId::parse("acme").unwrap();
        assert_eq!(leases.spend(&tenant, 7), None);
        leases.keep(&tenant, 7, 3);
        assert_eq!(leases.spend(&tenant, 7), Some(true));
        assert_eq!(leases.spend(&tenant, 7), Some(true));
        assert_eq!(leases.spend(&tenant, 7), None, "used up: take another slice");
        leases.keep(&tenant, 7, 0);
        assert_eq!(leases.spend(&tenant, 7), Some(false), "the window is spent");
        assert_eq!(leases.spend(&tenant, 8), None, "a new second starts afresh");
    }
}
