//! Each conversation's newest stored seq, kept in Redis (`head:{conversation}`) next to the
//! counter in MongoDB, so a history page needs no read of the conversation to say how far the
//! conversation goes. The group commit raises heads once a batch is stored, in the pipeline that
//! publishes the batch's events, before any sender is answered; a head only ever moves up (two nodes' batches may record theirs out of order).
//! Heads are a convenience that may lag (a failed write, a Redis restored from an old snapshot):
//! readers take the greater of the head and what they found, and read MongoDB when there is none.
//!
//! Next to each head, the revision of the conversation's stored messages (`rev:{conversation}`):
//! replaced after every change to a stored message (an edit, a delete, a reaction, a reply count),
//! so that a node's copies of messages (`caches::history`) can tell they are out of date. A
//! revision is a random token rather than a count, so a key lost to a Redis restart or to expiry
//! never comes back with a value some node still holds copies under: the next reader sets a new
//! one. A replacement Redis does not take is retried every `REVISE_RETRY` by the node that made
//! the change, until it does.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_redis::redis::Pipeline;

use crate::domain::{ConversationId, TenantId};

use super::{Redis, RedisError};

/// A head untouched this long is dropped; its conversation's next reader reads MongoDB once.
const HEAD_TTL_SECS: u64 = 7 * 24 * 3600;

/// How often a node retries the revisions Redis did not take.
const REVISE_RETRY: Duration = Duration::from_secs(1);

/// Revision keys whose replacement failed, shared by the clones of a node's `Redis`.
#[derive(Clone, Default)]
pub(super) struct Unrevised(Arc<Mutex<Retries>>);

#[derive(Default)]
struct Retries {
    keys: HashSet<String>,
    /// Whether a task is retrying `keys` (it stops once none are left).
    running: bool,
}

impl Unrevised {
    fn lock(&self) -> std::sync::MutexGuard<'_, Retries> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

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

    /// Adds replacing the revision of `conversation`'s stored messages to `pipe`.
    pub(super) fn revise_in(&self, pipe: &mut Pipeline, tenant: &TenantId, conversation: &ConversationId) {
        self.revise_key_in(pipe, &self.revision_key(tenant, conversation));
    }

    fn revise_key_in(&self, pipe: &mut Pipeline, key: &str) {
        pipe.cmd("SET").arg(key).arg(rand::random::<i64>()).arg("EX").arg(HEAD_TTL_SECS).ignore();
    }

    /// Replaces the revision of each conversation's stored messages, after a change to them; on
    /// failure they are retried in the background (see `revise_later`) as well as reported.
    pub async fn revise(&self, tenant: &TenantId, conversations: &[&ConversationId]) -> Result<(), RedisError> {
        let mut pipe = Pipeline::new();
        for conversation in conversations {
            self.revise_in(&mut pipe, tenant, conversation);
        }
        let revised = self.run_pipe(pipe).await;
        if revised.is_err() {
            self.revise_later(tenant, conversations);
        }
        revised
    }

    /// Retries replacing these revisions every `REVISE_RETRY` until Redis takes them, so that a
    /// change made while Redis was unreachable still reaches every node's copies once it is back.
    pub(super) fn revise_later(&self, tenant: &TenantId, conversations: &[&ConversationId]) {
        if conversations.is_empty() {
            return;
        }
        let mut retries = self.unrevised.lock();
        retries.keys.extend(conversations.iter().map(|c| self.revision_key(tenant, c)));
        if std::mem::replace(&mut retries.running, true) {
            return;
        }
        let redis = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REVISE_RETRY).await;
                let keys: Vec<String> = redis.unrevised.lock().keys.drain().collect();
                let mut pipe = Pipeline::new();
                for key in &keys {
                    redis.revise_key_in(&mut pipe, key);
                }
                let retried = redis.run_pipe(pipe).await;
                let mut retries = redis.unrevised.lock();
                if let Err(e) = retried {
                    tracing::warn!(error = %e, pending = keys.len(), "could not replace message revisions; retrying");
                    retries.keys.extend(keys);
                } else if retries.keys.is_empty() {
                    retries.running = false;
                    return;
                }
            }
        });
    }

    /// The heads Redis has of `conversations`, in their order.
    pub async fn heads(
        &self,
        tenant: &TenantId,
        conversations: &[&ConversationId],
    ) -> Result<Vec<Option<i64>>, RedisError> {
        if conversations.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = conversations.iter().map(|c| self.head_key(tenant, c)).collect();
        let mget = deadpool_redis::redis::cmd("MGET").arg(&keys).clone();
        self.run(|mut conn| async move { mget.query_async(&mut conn).await }).await
    }

    /// The conversation's head (if Redis has one) and its messages' revision, in one round trip
    /// (two when the conversation has no revision yet: the reader sets one).
    pub async fn head_and_revision(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
    ) -> Result<(Option<i64>, i64), RedisError> {
        let keys = [self.head_key(tenant, conversation), self.revision_key(tenant, conversation)];
        let mget = deadpool_redis::redis::cmd("MGET").arg(&keys).clone();
        let (head, revision): (Option<i64>, Option<i64>) =
            self.run(|mut conn| async move { mget.query_async(&mut conn).await }).await?;
        if let Some(revision) = revision {
            return Ok((head, revision));
        }
        // Set unless another node or a change just did; either way the key's value is the revision.
        let fresh = rand::random::<i64>();
        let mut set = deadpool_redis::redis::cmd("SET");
        set.arg(&keys[1]).arg(fresh).arg("NX").arg("GET").arg("EX").arg(HEAD_TTL_SECS);
        let found: Option<i64> = self.run(|mut conn| async move { set.query_async(&mut conn).await }).await?;
        Ok((head, found.unwrap_or(fresh)))
    }
}
