//! Search indexing behind the sends: the words of stored messages go into search blocks
//! (`tenancy::repos::search_blocks`) shortly after their senders are answered, many messages of a
//! conversation at once, so a word repeated in a conversation costs one index entry per block
//! instead of one per message.
//!
//! Search never waits for it. Each conversation records how far it is indexed
//! (`search_indexed_upto`), and every search reads the messages past that mark directly
//! (`search`), so a message is found as soon as its conversation's `last_seq` counts it. Each
//! node indexes the conversations its committers stored to: every `chat.search_index_interval_ms`
//! it cuts a block for each conversation with `chat.search_block_min_messages` unindexed messages
//! (fewer would cost nearly an index entry per word per message again, and search reads them
//! anyway), or with fewer that have waited `chat.search_block_max_wait_ms`, and goes round again
//! at once while any is further behind than one block; a conversation stays due until its counter
//! counts what the committers handed over (they do before recording it). Blocks are cut from the
//! texts the committers just stored (`search_recent`) when the node holds all of a block's seqs,
//! and from the stored messages otherwise. A search that meets a conversation too far behind to read
//! indexes it first. Block rebuilds that failed after an edit or delete are retried here too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::domain::{ConversationId, Message, TenantId};
use crate::tenancy::TenantDb;
use crate::tenancy::repos::{SearchBlock, SearchMark};

use super::search_recent::RecentTexts;

/// Most messages one search block covers.
pub const BLOCK_MAX_MESSAGES: i64 = 256;
/// Conversations whose messages are read at once while indexing.
const READS_IN_FLIGHT: usize = 8;
/// Longest the indexer waits for a conversation's counter to count the messages this node stored
/// to it (a stored run is handed over before its counter is recorded). Past it (the run's finish
/// failed), the conversation waits for its next message.
const COUNTER_WAIT: Duration = Duration::from_secs(60);

/// Each tenant's conversations with messages this node stored since they were indexed, and the
/// block rebuilds to retry.
pub struct SearchIndexer {
    pending: Mutex<HashMap<TenantId, Pending>>,
    /// The texts the committers stored lately, which most blocks are cut from.
    recent: Mutex<RecentTexts>,
    policy: IndexPolicy,
}

/// When conversations are indexed (`chat.search_*` settings).
#[derive(Debug, Clone, Copy)]
pub struct IndexPolicy {
    pub interval: Duration,
    pub block_min_messages: i64,
    pub block_max_wait: Duration,
    pub recent_texts_max_bytes: usize,
}

struct Pending {
    db: TenantDb,
    conversations: HashMap<ConversationId, Unindexed>,
    rebuilds: Vec<(ConversationId, i64)>,
}

/// A conversation with messages to index.
#[derive(Debug, Clone, Copy)]
struct Unindexed {
    /// Since when it has had them.
    since: Instant,
    /// The newest seq this node stored to it (0: not known), which its counter may not count yet.
    stored_upto: i64,
}

impl Unindexed {
    fn merge(&mut self, other: Unindexed) {
        self.since = self.since.min(other.since);
        self.stored_upto = self.stored_upto.max(other.stored_upto);
    }
}

impl SearchIndexer {
    pub fn new(policy: IndexPolicy) -> Arc<Self> {
        Arc::new(Self {
            pending: Mutex::default(),
            recent: Mutex::new(RecentTexts::new(policy.recent_texts_max_bytes)),
            policy,
        })
    }

    /// Notes messages the committers stored (in seq order per conversation): their
    /// conversations have new messages, and their texts are held for the blocks.
    pub fn stored<'a>(self: &Arc<Self>, db: &TenantDb, messages: impl IntoIterator<Item = &'a Message>) {
        let mut conversations = Vec::new();
        {
            let mut recent = self.recent();
            for message in messages {
                recent.record(db.tenant_id(), message);
                conversations.push((&message.conversation_id, message.seq));
            }
        }
        self.note(db, conversations);
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentTexts> {
        self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes that `conversations` have new messages.
    pub fn touch<'a>(self: &Arc<Self>, db: &TenantDb, conversations: impl IntoIterator<Item = &'a ConversationId>) {
        self.note(db, conversations.into_iter().map(|conversation| (conversation, 0)));
    }

    /// Notes that conversations have new messages, up to a seq stored here (0: not known).
    fn note<'a>(self: &Arc<Self>, db: &TenantDb, conversations: impl IntoIterator<Item = (&'a ConversationId, i64)>) {
        self.with_pending(db, |pending| {
            for (conversation, stored_upto) in conversations {
                let noted = Unindexed { since: Instant::now(), stored_upto };
                pending.conversations.entry(conversation.clone()).and_modify(|u| u.merge(noted)).or_insert(noted);
            }
        });
    }

    /// Retries the rebuild of the block holding `seq` at the next round.
    pub fn rebuild_later(self: &Arc<Self>, db: &TenantDb, conversation: &ConversationId, seq: i64) {
        self.with_pending(db, |pending| pending.rebuilds.push((conversation.clone(), seq)));
    }

    /// Changes the tenant's pending work, starting its indexing task (on the current runtime)
    /// when it has none.
    fn with_pending(self: &Arc<Self>, db: &TenantDb, change: impl FnOnce(&mut Pending)) {
        debug_assert!(!db.is_through_own_client(), "the indexer outlives the request: it needs the shared client");
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tenant = db.tenant_id().clone();
        let start = !pending.contains_key(&tenant);
        let entry = pending.entry(tenant.clone()).or_insert_with(|| Pending {
            db: db.clone(),
            conversations: HashMap::new(),
            rebuilds: Vec::new(),
        });
        change(entry);
        if start {
            tokio::spawn(self.clone().run(tenant));
        }
    }

    /// Indexes the tenant's pending conversations every `interval`, at once again while any is
    /// more than a block behind, until nothing is pending.
    async fn run(self: Arc<Self>, tenant: TenantId) {
        let mut hurry = false;
        loop {
            if !hurry {
                tokio::time::sleep(self.policy.interval).await;
            }
            let (db, conversations, rebuilds) = {
                let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let Some(entry) = pending.get_mut(&tenant) else { return };
                if entry.conversations.is_empty() && entry.rebuilds.is_empty() {
                    pending.remove(&tenant);
                    self.recent().forget_tenant(&tenant);
                    return;
                }
                (entry.db.clone(), std::mem::take(&mut entry.conversations), std::mem::take(&mut entry.rebuilds))
            };
            let mut failed_rebuilds = Vec::new();
            for (conversation, seq) in rebuilds {
                if let Err(e) = super::search::rebuild_block(&db, &conversation, seq).await {
                    tracing::warn!(error = %e, %conversation, seq, "rebuilding a search block failed; retrying");
                    failed_rebuilds.push((conversation, seq));
                }
            }
            let (left, more) = match self.round(&db, conversations.clone()).await {
                Ok(left) => left,
                Err(e) => {
                    tracing::warn!(error = %e, tenant = %tenant, "search indexing failed; retrying");
                    (conversations, false)
                }
            };
            hurry = more;
            let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(entry) = pending.get_mut(&tenant) {
                for (conversation, unindexed) in left {
                    entry.conversations.entry(conversation).and_modify(|u| u.merge(unindexed)).or_insert(unindexed);
                }
                entry.rebuilds.extend(failed_rebuilds);
            }
        }
    }

    /// Indexes the conversations that are due; returns those still unindexed or not yet counted
    /// in full, and whether any is more than a block behind.
    async fn round(
        &self,
        db: &TenantDb,
        conversations: HashMap<ConversationId, Unindexed>,
    ) -> Result<(HashMap<ConversationId, Unindexed>, bool), mongodb::error::Error> {
        let ids: Vec<ConversationId> = conversations.keys().cloned().collect();
        let marks = db.search_blocks().marks(&ids).await?;
        {
            let mut recent = self.recent();
            for (id, mark) in &marks {
                recent.let_go_through(db.tenant_id(), id, mark.indexed_upto);
            }
        }
        // Messages this node stored whose counter is still being recorded: indexed once counted.
        let uncounted: Vec<ConversationId> = marks
            .iter()
            .filter(|(id, m)| {
                let noted = conversations[*id];
                m.last_seq < noted.stored_upto && noted.since.elapsed() < COUNTER_WAIT
            })
            .map(|(id, _)| id.clone())
            .collect();
        let policy = self.policy;
        let (due, waiting): (HashMap<ConversationId, SearchMark>, HashMap<ConversationId, SearchMark>) =
            marks.into_iter().filter(|(_, m)| m.last_seq > m.indexed_upto).partition(|(id, m)| {
                m.last_seq - m.indexed_upto >= policy.block_min_messages
                    || conversations[id].since.elapsed() >= policy.block_max_wait
            });
        let indexed = index_marked(db, &due, Some(self)).await?;
        let more = indexed.behind.iter().any(|id| due[id].last_seq - due[id].indexed_upto > BLOCK_MAX_MESSAGES);
        let left = waiting.into_keys().chain(indexed.behind).chain(indexed.unread).chain(uncounted);
        Ok((left.map(|id| (id.clone(), conversations[&id])).collect(), more))
    }
}

/// Indexes up to `BLOCK_MAX_MESSAGES` messages of each marked conversation past its mark (as
/// just read), as one block each, from the stored messages as they are now.
pub async fn index(db: &TenantDb, marks: &HashMap<ConversationId, SearchMark>) -> Result<(), mongodb::error::Error> {
    index_marked(db, marks, None).await.map(drop)
}

/// The conversations an indexing pass left unindexed.
struct Indexed {
    /// More than the block indexed was behind.
    behind: Vec<ConversationId>,
    /// Their messages could not be read.
    unread: Vec<ConversationId>,
}

/// `index`, cutting the blocks whose every text `held_by` holds from those texts.
async fn index_marked(
    db: &TenantDb,
    marks: &HashMap<ConversationId, SearchMark>,
    held_by: Option<&SearchIndexer>,
) -> Result<Indexed, mongodb::error::Error> {
    let mut blocks = Vec::with_capacity(marks.len());
    let mut behind: Vec<(ConversationId, i64, i64)> = Vec::new();
    for (id, m) in marks.iter().filter(|(_, m)| m.last_seq > m.indexed_upto) {
        let (from, to) = (m.indexed_upto + 1, m.last_seq.min(m.indexed_upto + BLOCK_MAX_MESSAGES));
        let held = held_by.and_then(|indexer| indexer.recent().take(db.tenant_id(), id, from, to));
        match held {
            Some(texts) => {
                let texts = texts.iter().map(|t| (t.id.as_str(), t.text.as_deref()));
                blocks.push(SearchBlock::of_texts(id, from, to, texts));
                // Cutting a block is CPU work without an await (mostly splitting texts into
                // words). The indexer shares the committers' thread: cutting a round's blocks in
                // one go held every send on it for 15-25 ms each second at S1's ceiling.
                tokio::task::yield_now().await;
            }
            None => behind.push((id.clone(), from, to)),
        }
    }
    let read: Vec<(ConversationId, Result<SearchBlock, mongodb::error::Error>)> = futures_util::stream::iter(behind)
        .map(|(id, from, to)| read_block(db, id, from, to))
        .buffer_unordered(READS_IN_FLIGHT)
        .collect()
        .await;
    let mut unread = Vec::new();
    for (conversation, block) in read {
        match block {
            Ok(block) => blocks.push(block),
            // One conversation's failure leaves the others' blocks to be stored.
            Err(e) => {
                tracing::warn!(error = %e, %conversation, "reading messages to index failed");
                unread.push(conversation);
            }
        }
    }
    // A block another writer stored first from the same mark may end elsewhere: the mark follows it.
    let taken: HashMap<ConversationId, i64> =
        db.search_blocks().insert(&blocks).await?.into_iter().map(|b| (b.conversation_id, b.to_seq)).collect();
    let reached: Vec<(&ConversationId, i64)> = blocks
        .iter()
        .map(|b| (&b.conversation_id, taken.get(&b.conversation_id).copied().unwrap_or(b.to_seq)))
        .collect();
    db.search_blocks().advance_marks(&reached).await?;
    let behind = reached.into_iter().filter(|(id, upto)| marks[*id].last_seq > *upto).map(|(id, _)| id.clone());
    Ok(Indexed { behind: behind.collect(), unread })
}

async fn read_block(
    db: &TenantDb,
    conversation: ConversationId,
    from: i64,
    to: i64,
) -> (ConversationId, Result<SearchBlock, mongodb::error::Error>) {
    let block =
        db.messages().range(&conversation, from, to).await.map(|m| SearchBlock::of(&conversation, from, to, &m));
    (conversation, block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::TenantScope;
    use crate::domain::{MessageKind, UserId};
    use crate::tenancy::Store;
    use crate::tenancy::tests::{settings, test_uri};

    /// A run is handed to the indexer before its counter is recorded. A round that reads the
    /// counter in between must not take the conversation for indexed: once counted, the run's
    /// message is indexed.
    #[tokio::test]
    async fn a_run_handed_over_before_its_counter_is_indexed_once_counted() {
        let uri = test_uri();
        let store = Store::connect(&settings(&uri)).await.unwrap();
        let tenant = TenantId::parse(&format!("idx-{}", &uuid::Uuid::now_v7().simple().to_string()[8..])).unwrap();
        let db = store.tenant_db(&TenantScope::upkeep(&tenant));
        let conversation = ConversationId::new();
        let raw = mongodb::Client::with_uri_str(&uri).await.unwrap();
        raw.database(&store.tenant_db_name(&tenant))
            .collection::<mongodb::bson::Document>("conversations")
            .insert_one(mongodb::bson::doc! { "_id": conversation.as_str(), "last_seq": 0_i64 })
            .await
            .unwrap();
        let policy = IndexPolicy {
            interval: Duration::from_millis(10),
            block_min_messages: 1,
            block_max_wait: Duration::ZERO,
            recent_texts_max_bytes: 1 << 20,
        };
        let indexer = SearchIndexer::new(policy);
        let sender = UserId::parse("alice").unwrap();
        let mut message = Message::draft(&tenant, &conversation, &sender, MessageKind::Text, "c1".into());
        message.seq = 1;
        message.text = Some("kestrel".into());

        indexer.stored(&db, [&message]);
        // Rounds read the counter at 0 meanwhile.
        tokio::time::sleep(Duration::from_millis(200)).await;
        db.conversations().advance_seq(&conversation, 1).await.unwrap();
        let started = Instant::now();
        loop {
            let marks = db.search_blocks().marks(std::slice::from_ref(&conversation)).await.unwrap();
            if marks[&conversation].indexed_upto == 1 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "seq 1 was never indexed: {:?}", marks[&conversation]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        raw.database(&store.tenant_db_name(&tenant)).drop().await.unwrap();
    }
}
