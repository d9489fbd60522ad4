//! Group commit: concurrent sends to one tenant are stored together, with gapless seqs and
//! without transactions.
//!
//! Each tenant sending through this node has `chat.send_committers` committer tasks, each owning
//! the conversations that hash to it, so batches for different conversations are stored side by
//! side while each conversation's sends stay in one line. Senders queue their checked
//! drafts; a committer takes everything queued (up to `chat.send_batch_max`), numbers each draft
//! `head + 1, + 2...` from its conversation's head (the newest stored seq: remembered from the
//! committer's own stores, read in one query for conversations it does not know) and stores the
//! batch with ONE ordered insert under the unique (conversation, seq) index. An ordered insert
//! stops at its first failure, so what got stored of every conversation is a run without holes.
//! The draft that failed either repeats a `client_msg_id` (its sender gets the original) or lost
//! its seq to another node, whose message is already stored: the heads of the conversations left
//! over are forgotten and read again (the counter and what is stored past it, see `counters`, so
//! neither a counter recorded behind nor a writer that crashed before recording can wedge the
//! conversation), and the rest go round again.
//!
//! A stored run is then finished: reply counts and shared files are written, its conversations'
//! heads raised in Redis (`events::heads`) and its events published in one pipeline, and every
//! sender is answered (a 201 means the message is in MongoDB); its conversations' counters and
//! newest messages are handed to the tenant's `recorder`, which writes them behind the answers;
//! the search indexer (`search_index`) is handed the run first, by the committer, in seq order.
//! Finishing overlaps the next batches' inserts, up to `FINISHES_IN_FLIGHT` finishes of a
//! committer at once; each publishes only once the one before it has, so a conversation's events
//! go out in seq order.
//!
//! `/metrics` shows the pipeline: `chat_commit_batch_messages` (drafts per insert),
//! `chat_commit_wait_seconds` (how long a batch's oldest draft was queued),
//! `chat_commit_insert_seconds`, `chat_commit_finish_seconds` and
//! `chat_commit_record_conversations` (conversations per recorder round).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::domain::{ConversationId, Message, TenantId};
use crate::error::ApiError;
use crate::events::Redis;
use crate::tenancy::TenantDb;
use crate::tenancy::repos::RunFailure;
use crate::threads::Threads;

use super::messages::follow_up;
use super::search_index::{IndexPolicy, SearchIndexer};
use finish::{Turn, finish};
use recorder::{Handed, Recorder};

mod finish;
mod recorder;

/// Rounds a batch may take beyond one per draft when other nodes keep winning seqs.
const MAX_SEQ_ATTEMPTS: usize = 64;
/// A committer with nothing to do for this long stops; the next send starts a new one.
const IDLE_STOP: Duration = Duration::from_secs(60);
/// Most conversation heads a committer remembers; past it, it forgets them all and reads again.
const HEADS_REMEMBERED: usize = 4_096;
/// Most stored runs of one committer being finished at once; the next insert's run waits for the
/// oldest. A finish waits for a Redis round trip (and statements for replies and files), so with
/// one at a time it would pace the inserts.
const FINISHES_IN_FLIGHT: usize = 4;

/// What a sender gets back: the stored message, and whether it is new (`false`: a repeat).
pub type Committed = Result<(Message, bool), ApiError>;

struct Draft {
    message: Message,
    reply: oneshot::Sender<Committed>,
    queued: Instant,
}

/// A tenant's committer on this node: which of its `per_tenant` lines.
type Line = (TenantId, usize);

/// This node's committers: `per_tenant` for each tenant with recent sends.
pub struct Committers {
    queues: Mutex<HashMap<Line, mpsc::Sender<Draft>>>,
    /// Each tenant's recorder, while some committer of the tenant holds it.
    recorders: Mutex<HashMap<TenantId, mpsc::WeakSender<Handed>>>,
    per_tenant: usize,
    batch_max: usize,
    queue_capacity: usize,
    /// Least time between two statements of a recorder.
    record_interval: Duration,
    /// Indexes the words of what the committers stored, behind them.
    indexer: Arc<SearchIndexer>,
    /// The runtime committers run on. On an HTTP worker, a committer would take turns with every
    /// request that worker serves at each of its awaits, and every waiting sender with it.
    threads: Threads,
}

impl Committers {
    /// Starts the committers' `threads` (0: one per core); committers start on first send.
    pub fn new(
        per_tenant: usize,
        batch_max: usize,
        queue_capacity: usize,
        record_interval: Duration,
        threads: usize,
        search_indexing: IndexPolicy,
    ) -> std::io::Result<Self> {
        Ok(Self {
            queues: Mutex::default(),
            recorders: Mutex::default(),
            per_tenant: per_tenant.max(1),
            batch_max: batch_max.max(1),
            queue_capacity: queue_capacity.max(1),
            record_interval,
            indexer: SearchIndexer::new(search_indexing),
            threads: Threads::start("confab-commit", threads)?,
        })
    }

    /// The committer that owns `conversation`'s sends.
    fn line(&self, tenant: &TenantId, conversation: &ConversationId) -> Line {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(conversation.as_str());
        (tenant.clone(), (hash % self.per_tenant as u64) as usize)
    }

    /// Stores `message` at its conversation's next seq, or returns the original of a repeated
    /// `client_msg_id`. Waits while the tenant's queue is full.
    pub async fn store(&self, db: &TenantDb, redis: &Redis, message: Message) -> Committed {
        let line = self.line(db.tenant_id(), &message.conversation_id);
        let (reply, answer) = oneshot::channel();
        let mut draft = Draft { message, reply, queued: Instant::now() };
        loop {
            let queue = self.queue(&line, db, redis);
            match queue.send(draft).await {
                Ok(()) => break,
                // The committer stopped for idleness just now: start another.
                Err(mpsc::error::SendError(back)) => {
                    self.forget(&line, &queue);
                    draft = back;
                }
            }
        }
        answer.await.map_err(|_| ApiError::internal("the message committer stopped"))?
    }

    /// The node's search indexer, which the committers hand what they stored.
    pub fn search_indexer(&self) -> &Arc<SearchIndexer> {
        &self.indexer
    }

    fn queue(&self, line: &Line, db: &TenantDb, redis: &Redis) -> mpsc::Sender<Draft> {
        let mut queues = self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(queue) = queues.get(line).filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        debug_assert!(!db.is_through_own_client(), "a committer outlives the request: it needs the shared client");
        let (queue, drafts) = mpsc::channel(self.queue_capacity);
        queues.insert(line.clone(), queue.clone());
        let committer = Committer {
            db: db.clone(),
            redis: redis.clone(),
            recorder: self.recorder(db),
            indexer: self.indexer.clone(),
            batch_max: self.batch_max,
            heads: HashMap::new(),
            finishing: VecDeque::new(),
            published: None,
        };
        self.threads.spawn(committer.run(drafts));
        queue
    }

    /// The tenant's recorder, started if none is running.
    fn recorder(&self, db: &TenantDb) -> Recorder {
        let mut recorders = self.recorders.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(recorder) = recorders.get(db.tenant_id()).and_then(Recorder::upgrade) {
            return recorder;
        }
        // Tenants whose recorders have stopped are forgotten.
        recorders.retain(|_, weak| Recorder::upgrade(weak).is_some());
        let (recorder, run) = Recorder::start(db.clone(), self.record_interval);
        recorders.insert(db.tenant_id().clone(), recorder.downgrade());
        self.threads.spawn(run);
        recorder
    }

    /// Has every recorder write the records it holds (a node stopping, once its requests are
    /// answered), for up to `limit`.
    pub async fn flush_records(&self, limit: Duration) {
        let recorders: Vec<Recorder> = {
            let recorders = self.recorders.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            recorders.values().filter_map(Recorder::upgrade).collect()
        };
        let flushes = futures_util::future::join_all(recorders.iter().map(Recorder::flush));
        if tokio::time::timeout(limit, flushes).await.is_err() {
            tracing::warn!("stopped before every conversation record was written");
        }
    }

    fn forget(&self, line: &Line, queue: &mpsc::Sender<Draft>) {
        let mut queues = self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if queues.get(line).is_some_and(|q| q.same_channel(queue)) {
            queues.remove(line);
        }
    }
}

struct Committer {
    db: TenantDb,
    redis: Redis,
    recorder: Recorder,
    indexer: Arc<SearchIndexer>,
    batch_max: usize,
    /// The newest stored seq of each conversation this committer stored to or read lately.
    heads: HashMap<ConversationId, i64>,
    /// The stored runs' finishes in flight, oldest first, which the next batches' inserts overlap.
    finishing: VecDeque<JoinHandle<()>>,
    /// Resolves (or fails) once the newest finish has published its events, or gave up.
    published: Option<oneshot::Receiver<()>>,
}

impl Committer {
    async fn run(mut self, mut drafts: mpsc::Receiver<Draft>) {
        let mut batch = Vec::with_capacity(self.batch_max);
        loop {
            match tokio::time::timeout(IDLE_STOP, drafts.recv_many(&mut batch, self.batch_max)).await {
                Ok(0) => break,
                Ok(_) => self.commit(std::mem::take(&mut batch)).await,
                Err(_) => {
                    // Senders holding the queue now get an error and start a new committer;
                    // whatever they managed to queue before the close is still served here.
                    drafts.close();
                    while drafts.recv_many(&mut batch, self.batch_max).await > 0 {
                        self.commit(std::mem::take(&mut batch)).await;
                    }
                    break;
                }
            }
        }
        self.settle().await;
    }

    async fn commit(&mut self, mut pending: Vec<Draft>) {
        if let Some(oldest) = pending.iter().map(|d| d.queued).min() {
            metrics::histogram!("chat_commit_wait_seconds").record(oldest.elapsed().as_secs_f64());
        }
        for _ in 0..pending.len() + MAX_SEQ_ATTEMPTS {
            if pending.is_empty() {
                return;
            }
            match self.round(pending).await {
                Ok(rest) => pending = rest,
                Err((rest, e)) => {
                    // Some of them may be stored: what this committer knew of heads is unsure now.
                    self.heads.clear();
                    return answer_all(rest, || ApiError::from(e.clone()));
                }
            }
        }
        answer_all(pending, || ApiError::unavailable("could not claim a message seq: too much contention"));
    }

    /// Waits for the finishes in flight, if any.
    async fn settle(&mut self) {
        self.settle_to(0).await;
    }

    /// Waits for the oldest finishes until at most `in_flight` are left.
    async fn settle_to(&mut self, in_flight: usize) {
        while self.finishing.len() > in_flight
            && let Some(finishing) = self.finishing.pop_front()
        {
            // A finish that panicked dropped its senders' answers, so they get an error.
            let _ = finishing.await;
        }
    }

    /// Starts finishing a stored run, behind the finishes in flight.
    async fn start_finish(&mut self, stored: Vec<Draft>) {
        self.settle_to(FINISHES_IN_FLIGHT - 1).await;
        // Held before the counters count them, so the indexer never sees seqs it should hold but
        // does not yet (it would read them back instead); held here, runs arrive in seq order.
        self.indexer.stored(&self.db, stored.iter().map(|d| &d.message));
        let (done, published) = oneshot::channel();
        let turn = Turn { after: self.published.replace(published), done };
        let finish = finish(self.db.clone(), self.redis.clone(), self.recorder.clone(), turn, stored);
        self.finishing.push_back(tokio::spawn(finish));
    }

    /// Learns the heads of `pending`'s conversations this committer does not know; answers the
    /// drafts of conversations that do not exist, and returns the others.
    async fn learn_heads(&mut self, pending: Vec<Draft>) -> Result<Vec<Draft>, (Vec<Draft>, mongodb::error::Error)> {
        if self.heads.len() > HEADS_REMEMBERED {
            self.heads.clear();
        }
        let mut unknown: Vec<&ConversationId> =
            pending.iter().map(|d| &d.message.conversation_id).filter(|id| !self.heads.contains_key(*id)).collect();
        if unknown.is_empty() {
            return Ok(pending);
        }
        unknown.sort();
        unknown.dedup();
        match super::counters::stored_heads(&self.db, &unknown).await {
            Ok(heads) => self.heads.extend(heads),
            Err(e) => return Err((pending, e)),
        }
        let (known, vanished): (Vec<Draft>, Vec<Draft>) =
            pending.into_iter().partition(|d| self.heads.contains_key(&d.message.conversation_id));
        answer_all(vanished, || ApiError::not_found("conversation"));
        Ok(known)
    }

    /// Numbers and stores `pending`; returns the drafts still to store.
    async fn round(&mut self, pending: Vec<Draft>) -> Result<Vec<Draft>, (Vec<Draft>, mongodb::error::Error)> {
        let mut pending = self.learn_heads(pending).await?;
        for draft in &mut pending {
            if let Some(head) = self.heads.get_mut(&draft.message.conversation_id) {
                *head += 1;
                draft.message.seq = *head;
            }
        }
        let messages: Vec<&Message> = pending.iter().map(|d| &d.message).collect();
        metrics::histogram!("chat_commit_batch_messages").record(messages.len() as f64);
        let started = Instant::now();
        let inserted = self.db.messages().insert_run(&messages).await;
        metrics::histogram!("chat_commit_insert_seconds").record(started.elapsed().as_secs_f64());
        let run = match inserted {
            Ok(run) => run,
            Err(e) => return Err((pending, e)),
        };
        let mut rest = pending.split_off(run.stored);
        // The drafts left over were numbered past what got stored: read their heads again.
        for draft in &rest {
            self.heads.remove(&draft.message.conversation_id);
        }
        if !pending.is_empty() {
            self.start_finish(pending).await;
        }
        match run.failure {
            // Its conversation's head is read again, past the taken seq.
            None | Some(RunFailure::SeqTaken) => {}
            Some(RunFailure::Duplicate(original)) => {
                let repeat = rest.remove(0);
                let answer = follow_up(&self.db, &original).await.map(|()| (*original, false)).map_err(ApiError::from);
                let _ = repeat.reply.send(answer);
            }
        }
        Ok(rest)
    }
}

fn answer_all(drafts: Vec<Draft>, error: impl Fn() -> ApiError) {
    for draft in drafts {
        let _ = draft.reply.send(Err(error()));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn policy() -> IndexPolicy {
        IndexPolicy {
            interval: Duration::from_secs(1),
            block_min_messages: 32,
            block_max_wait: Duration::from_secs(30),
            recent_texts_max_bytes: 1 << 20,
        }
    }

    #[test]
    fn a_conversation_always_goes_to_the_same_committer_and_conversations_spread_over_all() {
        let committers = Committers::new(4, 256, 4096, Duration::from_millis(100), 1, policy()).unwrap();
        let tenant = TenantId::parse("acme").unwrap();
        let ids: Vec<ConversationId> = (0..64).map(|_| ConversationId::new()).collect();
        let lines: Vec<Line> = ids.iter().map(|id| committers.line(&tenant, id)).collect();
        for (id, line) in ids.iter().zip(&lines) {
            assert_eq!(&committers.line(&tenant, id), line, "one conversation, one committer");
            assert_eq!(line.0, tenant);
        }
        let used: HashSet<usize> = lines.iter().map(|(_, n)| *n).collect();
        assert_eq!(used, (0..4).collect::<HashSet<_>>(), "64 conversations use every committer");
        let single = Committers::new(0, 256, 4096, Duration::from_millis(100), 1, policy()).unwrap();
        assert!(ids.iter().all(|id| single.line(&tenant, id).1 == 0), "a setting of 0 means one committer");
    }
}
