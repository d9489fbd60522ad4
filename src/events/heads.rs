//! Each conversation's newest stored seq, kept in Redis (`head:{conversation}`) next to the
//! counter in MongoDB, so a history page needs no read of the conversation to say how far the
//! conversation goes. The group commit records heads once a batch is stored, before any sender
//! is answered; a head only ever moves up (two nodes' batches may record theirs out of order).
//! Heads are a convenience that may lag (a failed write, a Redis restored from an old snapshot):
//! readers take the greater of the head and what they found, and read MongoDB when there is none.

use crate::domain::{ConversationId, TenantId};

use super::{Redis, RedisError};

/// A head untouched this long is dropped; its conversation's next reader reads MongoDB once.
const HEAD_TTL_SECS: u64 = 7 * 24 * 3600;

/// Sets the head to ARGV[1] unless it is already higher. KEYS: head. ARGV: seq, ttl_secs.
const RAISE: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
"#;

impl Redis {
    fn head_key(&self, tenant: &TenantId, conversation: &ConversationId) -> String {
        self.keys(tenant).key(&format!("head:{conversation}"))
    }

    /// Raises each conversation's head to its seq, in one round trip.
    pub async fn raise_heads(&self, tenant: &TenantId, heads: &[(&ConversationId, i64)]) -> Result<(), RedisError> {
        if heads.is_empty() {
            return Ok(());
        }
        let mut pipe = deadpool_redis::redis::pipe();
        for (conversation, seq) in heads {
            pipe.cmd("EVAL").arg(RAISE).arg(1).arg(self.head_key(tenant, conversation)).arg(*seq).arg(HEAD_TTL_SECS);
            pipe.ignore();
        }
        self.run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await }).await
    }

    /// The conversation's head, if Redis has one.
    pub async fn head(&self, tenant: &TenantId, conversation: &ConversationId) -> Result<Option<i64>, RedisError> {
        let key = self.head_key(tenant, conversation);
        self.run(|mut conn| async move { deadpool_redis::redis::cmd("GET").arg(key).query_async(&mut conn).await })
            .await
    }
}
