//! Single-use WebSocket tickets, for browsers that cannot set headers on an upgrade. Redis keeps
//! only the ticket's SHA-256 (`wst:{hash}` -> user id) for a few seconds; redeeming it deletes
//! it atomically (GETDEL), so a ticket opens at most one socket on any node.

use crate::domain::{TenantId, UserId};

use super::{Redis, RedisError};

impl Redis {
    pub async fn store_ticket(
        &self,
        tenant: &TenantId,
        hash: &str,
        user: &UserId,
        ttl_secs: u64,
    ) -> Result<(), RedisError> {
        let key = self.keys(tenant).key(&format!("wst:{hash}"));
        self.run(|mut conn| async move {
            deadpool_redis::redis::cmd("SET")
                .arg(key)
                .arg(user.as_str())
                .arg("EX")
                .arg(ttl_secs)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// The user a ticket was issued for, once; `None` if unknown, expired or already used.
    pub async fn redeem_ticket(&self, tenant: &TenantId, hash: &str) -> Result<Option<String>, RedisError> {
        let key = self.keys(tenant).key(&format!("wst:{hash}"));
        self.run(|mut conn| async move {
            deadpool_redis::redis::cmd("GETDEL").arg(key).query_async::<Option<String>>(&mut conn).await
        })
        .await
    }
}
