//! Each conversation's newest stored seq, kept in Redis (`head:{conversation}`) next to the
//! counter in MongoDB, so a history page needs no read of the conversation to say how far the
//! conversation goes. The group commit raises heads once a batch is stored, in the pipeline that
//! publishes the batch's events, before any sender is answered; a head only ever moves up (two nodes' batches may record theirs out of order).
//! Heads are a convenience that may lag (a failed write, a Redis restored from an old snapshot):
//! readers take the greater of the head and what they found, and read MongoDB when there is none.
//!
//! Next to each head, the revision of the conversation's stored messages (`rev:{conversation}`):
//! raised after every change to a stored message (an edit, a delete, a reaction, a reply count),
//! so that a node's copies of messages (`caches::history`) can tell they are out of date. A
//! conversation whose messages never changed has revision 0.

use deadpool_redis::redis::Pipeline;

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

    fn revision_key(&self, tenant: &TenantId, conversation: &ConversationId) -> String {
        self.keys(tenant).key(&format!("rev:{conversation}"))
    }

    /// Adds raising `conversation`'s head to `seq` to `pipe`.
    pub(super) fn raise_in(&self, pipe: &mut Pipeline, tenant: &TenantId, conversation: &ConversationId, seq: i64) {
        pipe.cmd("EVAL")
            .arg(RAISE)
            .arg(1)
            .arg(self.head_key(tenant, conversation))
            .arg(seq)
            .arg(HEAD_TTL_SECS)
            .ignore();
    }

    /// Raises a conversation's head to `seq`.
    pub async fn raise_head(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        seq: i64,
    ) -> Result<(), RedisError> {
        let mut pipe = Pipeline::new();
        self.raise_in(&mut pipe, tenant, conversation, seq);
        self.run_pipe(pipe).await
    }

    /// Adds raising the revision of `conversation`'s stored messages to `pipe`.
    pub(super) fn revise_in(&self, pipe: &mut Pipeline, tenant: &TenantId, conversation: &ConversationId) {
        let key = self.revision_key(tenant, conversation);
        pipe.cmd("INCR").arg(&key).ignore();
        pipe.cmd("EXPIRE").arg(&key).arg(HEAD_TTL_SECS).ignore();
    }

    /// Raises the revision of each conversation's stored messages, after a change to them.
    pub async fn revise(&self, tenant: &TenantId, conversations: &[&ConversationId]) -> Result<(), RedisError> {
        let mut pipe = Pipeline::new();
        for conversation in conversations {
            self.revise_in(&mut pipe, tenant, conversation);
        }
        self.run_pipe(pipe).await
    }

    /// The conversation's head (if Redis has one) and its messages' revision, in one round trip.
    pub async fn head_and_revision(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
    ) -> Result<(Option<i64>, i64), RedisError> {
        let keys = [self.head_key(tenant, conversation), self.revision_key(tenant, conversation)];
        let (head, revision): (Option<i64>, Option<i64>) = self
            .run(|mut conn| async move { deadpool_redis::redis::cmd("MGET").arg(&keys).query_async(&mut conn).await })
            .await?;
        Ok((head, revision.unwrap_or(0)))
    }
}
