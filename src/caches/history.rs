//! Stored messages kept per node for history pages, so that the pages a conversation's members
//! scroll through are read from MongoDB once rather than by every reader.
//!
//! A conversation's copies are tied to the revision of its stored messages (`events::heads`),
//! which every change to a stored message replaces once it is written. A page asks Redis for the
//! revision (with the head, in the round trip it already made) *before* it reads anything, and
//! uses or keeps copies only under that revision: a change that lands while a page is read from
//! MongoDB replaces the revision after it, so the next page drops what this one kept. Revisions
//! are random tokens, so a Redis restart cannot bring back one a node holds copies under, and a
//! replacement Redis did not take is retried until it does (`events::heads`). What that misses (a
//! change made in MongoDB behind confab's back, a node that died with revisions to retry, a Redis
//! restored from an old snapshot) is bounded by `cache.history_ttl_ms`: no copy is used longer
//! than that after it was read. (Pages read while Redis does not answer use no copies at all.)
//! That bound is far longer than `cache.ttl_ms`, which bounds copies whose changes are announced
//! by pub/sub notices, lost far more easily. `/metrics` counts pages served from copies, from
//! MongoDB, and from MongoDB because Redis gave no revision in time (`chat_history_pages_total`,
//! `from` = `copies`, `database`, `database_unrevised`).
//! Each page's copies expire at a random point of the second half of that time, so that the pages
//! read together at first are not all read from MongoDB again at the same moment ever after.
//!
//! A page is served from copies only when every seq it reads (its window and the one after, which
//! says whether more follows) is held: copies never stand for messages that do not exist. The
//! node keeps at most `cache.history_messages` messages; past that it drops all and starts over.
//!
//! A page that is not served from copies reads from MongoDB the whole aligned `BLOCK`s of seqs it
//! touches (`blocks_around`), and they are kept together. So the pages next to it are served from
//! copies, and a block's copies expire together: once copies start expiring, MongoDB is read
//! about once per block rather than once for nearly every page (a page of 50 seqs kept
//! separately holds copies of 51 expiry times, and misses when any of them passed).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{ConversationId, Message, TenantId};

/// Seqs per block read from MongoDB for copies: a missed page reads at most its own seqs plus
/// `2 * (BLOCK - 1)` more.
const BLOCK: i64 = 64;

/// The first and last seq of the aligned blocks that hold `from..=to` (seqs start at 1).
pub fn blocks_around(from: i64, to: i64) -> (i64, i64) {
    let first = (from.max(1) - 1) / BLOCK * BLOCK + 1;
    let last = ((to.max(1) - 1) / BLOCK * BLOCK).saturating_add(BLOCK);
    (first, last)
}

pub struct RecentMessages {
    conversations: Mutex<Kept>,
    ttl: Duration,
    max_messages: usize,
}

#[derive(Default)]
struct Kept {
    by_conversation: HashMap<(TenantId, ConversationId), Copies>,
    messages: usize,
}

struct Copies {
    revision: i64,
    /// Each message and when its copy expires.
    by_seq: BTreeMap<i64, (Instant, Message)>,
}

impl RecentMessages {
    pub fn new(ttl: Duration, max_messages: usize) -> Self {
        Self { conversations: Mutex::default(), ttl, max_messages }
    }

    /// Whether this node keeps copies at all.
    pub fn is_on(&self) -> bool {
        self.max_messages > 0 && !self.ttl.is_zero()
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.conversations.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The messages with `from <= seq <= to`, if every one of them is held at `revision`.
    pub fn range(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        revision: i64,
        from: i64,
        to: i64,
    ) -> Option<Vec<Message>> {
        if from > to || self.max_messages == 0 {
            return None;
        }
        let key = (tenant.clone(), conversation.clone());
        let mut kept = self.kept();
        let copies = kept.by_conversation.get(&key)?;
        if copies.revision != revision {
            kept.forget(&key);
            return None;
        }
        let now = Instant::now();
        let held: Vec<&(Instant, Message)> = copies.by_seq.range(from..=to).map(|(_, copy)| copy).collect();
        let fresh = held.iter().all(|(expires, _)| *expires > now);
        let span = usize::try_from(to - from + 1).ok()?;
        (fresh && held.len() == span).then(|| held.into_iter().map(|(_, m)| m.clone()).collect())
    }

    /// Keeps `messages` (read from MongoDB after `revision` was read) of `conversation`.
    pub fn keep(&self, tenant: &TenantId, conversation: &ConversationId, revision: i64, messages: &[Message]) {
        if messages.is_empty() || self.ttl.is_zero() || messages.len() > self.max_messages {
            return;
        }
        let key = (tenant.clone(), conversation.clone());
        let mut kept = self.kept();
        if kept.messages + messages.len() > self.max_messages {
            kept.by_conversation.clear();
            kept.messages = 0;
        }
        if kept.by_conversation.get(&key).is_some_and(|copies| copies.revision != revision) {
            kept.forget(&key);
        }
        let copies = kept.by_conversation.entry(key).or_insert_with(|| Copies { revision, by_seq: BTreeMap::new() });
        let expires = Instant::now() + self.ttl.mul_f64(rand::random_range(0.5..1.0));
        let before = copies.by_seq.len();
        for message in messages {
            copies.by_seq.insert(message.seq, (expires, message.clone()));
        }
        kept.messages += copies.by_seq.len() - before;
    }
}

impl Kept {
    fn forget(&mut self, key: &(TenantId, ConversationId)) {
        if let Some(copies) = self.by_conversation.remove(key) {
            self.messages -= copies.by_seq.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageKind, UserId};

    fn messages(conversation: &ConversationId, seqs: std::ops::RangeInclusive<i64>) -> Vec<Message> {
        let (tenant, sender) = (TenantId::parse("acme").unwrap(), UserId::parse("alice").unwrap());
        seqs.map(|seq| Message {
            seq,
            text: Some(format!("message {seq}")),
            ..Message::draft(&tenant, conversation, &sender, MessageKind::Text, format!("m{seq}"))
        })
        .collect()
    }

    fn seqs(found: Option<Vec<Message>>) -> Option<Vec<i64>> {
        found.map(|messages| messages.iter().map(|m| m.seq).collect())
    }

    #[test]
    fn blocks_around_a_range_are_aligned_and_cover_it() {
        assert_eq!(blocks_around(1, 1), (1, BLOCK));
        assert_eq!(blocks_around(11, 61), (1, BLOCK));
        assert_eq!(blocks_around(BLOCK, BLOCK + 1), (1, 2 * BLOCK));
        assert_eq!(blocks_around(BLOCK + 1, 2 * BLOCK), (BLOCK + 1, 2 * BLOCK));
        assert_eq!(blocks_around(0, 0), (1, BLOCK), "seqs below 1 do not exist");
        assert_eq!(blocks_around(i64::MAX - 1, i64::MAX).1, i64::MAX, "no overflow past the largest seq");
        for (from, to) in [(3, 52), (60, 110), (129, 329)] {
            let (first, last) = blocks_around(from, to);
            assert!(first <= from && to <= last && (first - 1) % BLOCK == 0 && last % BLOCK == 0);
            assert!(last - first <= to - from + 2 * (BLOCK - 1), "at most a block more on each side");
        }
    }

    #[test]
    fn a_range_is_served_only_when_every_seq_is_held_at_the_same_revision() {
        let cache = RecentMessages::new(Duration::from_secs(60), 1000);
        let (tenant, other) = (TenantId::parse("acme").unwrap(), TenantId::parse("umbrella").unwrap());
        let conversation = ConversationId::new();
        assert!(cache.range(&tenant, &conversation, 0, 1, 10).is_none(), "nothing kept yet");
        cache.keep(&tenant, &conversation, 3, &messages(&conversation, 1..=10));
        assert_eq!(seqs(cache.range(&tenant, &conversation, 3, 2, 5)), Some(vec![2, 3, 4, 5]));
        assert!(cache.range(&tenant, &conversation, 3, 5, 11).is_none(), "seq 11 is not held");
        assert!(cache.range(&other, &conversation, 3, 1, 10).is_none(), "another tenant's conversation");
        assert!(cache.range(&tenant, &conversation, 4, 1, 10).is_none(), "the messages changed since");
        assert!(cache.range(&tenant, &conversation, 3, 1, 10).is_none(), "a newer revision dropped the copies");
    }

    #[test]
    fn copies_kept_under_an_older_revision_are_replaced_not_merged() {
        let cache = RecentMessages::new(Duration::from_secs(60), 1000);
        let (tenant, conversation) = (TenantId::parse("acme").unwrap(), ConversationId::new());
        cache.keep(&tenant, &conversation, 1, &messages(&conversation, 1..=10));
        cache.keep(&tenant, &conversation, 2, &messages(&conversation, 11..=20));
        assert!(cache.range(&tenant, &conversation, 2, 5, 15).is_none(), "seqs 1-10 were kept at revision 1");
        assert_eq!(seqs(cache.range(&tenant, &conversation, 2, 11, 12)), Some(vec![11, 12]));
        assert_eq!(cache.kept().messages, 10);
    }

    #[test]
    fn copies_expire_and_a_full_cache_starts_over() {
        let (tenant, a, b) = (TenantId::parse("acme").unwrap(), ConversationId::new(), ConversationId::new());
        let expiring = RecentMessages::new(Duration::from_millis(30), 1000);
        expiring.keep(&tenant, &a, 0, &messages(&a, 1..=5));
        std::thread::sleep(Duration::from_millis(40));
        assert!(expiring.range(&tenant, &a, 0, 1, 5).is_none(), "older than the ttl");

        let small = RecentMessages::new(Duration::from_secs(60), 15);
        small.keep(&tenant, &a, 0, &messages(&a, 1..=10));
        small.keep(&tenant, &b, 0, &messages(&b, 1..=10));
        assert!(small.range(&tenant, &a, 0, 1, 10).is_none(), "dropped to make room");
        assert_eq!(seqs(small.range(&tenant, &b, 0, 1, 2)), Some(vec![1, 2]));
        assert_eq!(small.kept().messages, 10);

        let off = RecentMessages::new(Duration::ZERO, 1000);
        off.keep(&tenant, &a, 0, &messages(&a, 1..=5));
        assert!(off.range(&tenant, &a, 0, 1, 5).is_none(), "a ttl of 0 keeps nothing");
    }

    #[test]
    fn pages_kept_together_expire_at_different_times_within_the_ttl() {
        let ttl = Duration::from_secs(10);
        let cache = RecentMessages::new(ttl, 1000);
        let (tenant, conversation) = (TenantId::parse("acme").unwrap(), ConversationId::new());
        let start = Instant::now();
        for page in 0..20 {
            cache.keep(&tenant, &conversation, 0, &messages(&conversation, page * 10 + 1..=page * 10 + 10));
        }
        let kept = cache.kept();
        let expiries: Vec<Instant> =
            kept.by_conversation.values().flat_map(|c| c.by_seq.values().map(|(at, _)| *at)).collect();
        assert_eq!(expiries.len(), 200);
        assert!(expiries.iter().all(|at| *at >= start + ttl / 2 && *at <= Instant::now() + ttl));
        let distinct: std::collections::HashSet<Instant> = expiries.into_iter().collect();
        assert!(distinct.len() > 1, "not all at once");
    }
}
