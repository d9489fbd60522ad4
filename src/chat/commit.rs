//! Group commit: concurrent sends to one tenant are stored together, with gapless seqs and
//! without transactions.
//!
//! Each tenant sending through this node has `chat.send_committers` committer tasks, each owning
//! the conversations that hash to it, so batches for different conversations are stored side by
//! side while each conversation's sends stay in one line. Senders queue their checked
//! drafts; a committer takes everything queued (up to `chat.send_batch_max`), reads the heads of
//! the conversations involved in one query, numbers each draft `last_seq + 1, + 2...` and stores
//! the batch with ONE ordered insert under the unique (conversation, seq) index. An ordered insert
//! stops at its first failure, so what got stored of every conversation is a run without holes.
//! The draft that failed either repeats a `client_msg_id` (its sender gets the original) or lost
//! its seq to another node, whose message is already stored: the counter moves over the taken seq
//! (so a writer that crashed before moving it cannot wedge the conversation) and the rest go round
//! again. Stored runs then advance their conversations' counters in one command, are published in
//! one pipeline, and every sender is answered: a 201 means the message is in MongoDB.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::domain::{ConversationId, LastMessage, Message, TenantId};
use crate::error::ApiError;
use crate::events::{LiveEvent, Redis};
use crate::tenancy::TenantDb;
use crate::tenancy::repos::RunFailure;

use super::messages::{follow_up, last_message_of, share_files};

/// Rounds a batch may take beyond one per draft when other nodes keep winning seqs.
const MAX_SEQ_ATTEMPTS: usize = 64;
/// A committer with nothing to do for this long stops; the next send starts a new one.
const IDLE_STOP: Duration = Duration::from_secs(60);

/// What a sender gets back: the stored message, and whether it is new (`false`: a repeat).
pub type Committed = Result<(Message, bool), ApiError>;

struct Draft {
    message: Message,
    reply: oneshot::Sender<Committed>,
}

/// A tenant's committer on this node: which of its `per_tenant` lines.
type Line = (TenantId, usize);

/// This node's committers: `per_tenant` for each tenant with recent sends.
pub struct Committers {
    queues: Mutex<HashMap<Line, mpsc::Sender<Draft>>>,
    per_tenant: usize,
    batch_max: usize,
    queue_capacity: usize,
}

impl Committers {
    pub fn new(per_tenant: usize, batch_max: usize, queue_capacity: usize) -> Self {
        Self {
            queues: Mutex::default(),
            per_tenant: per_tenant.max(1),
            batch_max: batch_max.max(1),
            queue_capacity: queue_capacity.max(1),
        }
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
        let mut draft = Draft { message, reply };
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

    fn queue(&self, line: &Line, db: &TenantDb, redis: &Redis) -> mpsc::Sender<Draft> {
        let mut queues = self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(queue) = queues.get(line).filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        let (queue, drafts) = mpsc::channel(self.queue_capacity);
        queues.insert(line.clone(), queue.clone());
        let committer = Committer { db: db.clone(), redis: redis.clone(), batch_max: self.batch_max };
        tokio::spawn(committer.run(drafts));
        queue
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
    batch_max: usize,
}

impl Committer {
    async fn run(self, mut drafts: mpsc::Receiver<Draft>) {
        let mut batch = Vec::with_capacity(self.batch_max);
        loop {
            match tokio::time::timeout(IDLE_STOP, drafts.recv_many(&mut batch, self.batch_max)).await {
                Ok(0) => return,
                Ok(_) => self.commit(std::mem::take(&mut batch)).await,
                Err(_) => {
                    // Senders holding the queue now get an error and start a new committer;
                    // whatever they managed to queue before the close is still served here.
                    drafts.close();
                    while drafts.recv_many(&mut batch, self.batch_max).await > 0 {
                        self.commit(std::mem::take(&mut batch)).await;
                    }
                    return;
                }
            }
        }
    }

    async fn commit(&self, mut pending: Vec<Draft>) {
        for _ in 0..pending.len() + MAX_SEQ_ATTEMPTS {
            if pending.is_empty() {
                return;
            }
            match self.round(pending).await {
                Ok(rest) => pending = rest,
                Err((rest, e)) => return answer_all(rest, || ApiError::from(e.clone())),
            }
        }
        answer_all(pending, || ApiError::unavailable("could not claim a message seq: too much contention"));
    }

    /// Numbers and stores `pending`; returns the drafts still to store.
    async fn round(&self, pending: Vec<Draft>) -> Result<Vec<Draft>, (Vec<Draft>, mongodb::error::Error)> {
        let mut ids: Vec<&ConversationId> = pending.iter().map(|d| &d.message.conversation_id).collect();
        ids.sort();
        ids.dedup();
        let mut heads = match self.db.conversations().heads(&ids).await {
            Ok(heads) => heads,
            Err(e) => return Err((pending, e)),
        };
        let (mut pending, vanished): (Vec<Draft>, Vec<Draft>) =
            pending.into_iter().partition(|d| heads.contains_key(&d.message.conversation_id));
        answer_all(vanished, || ApiError::not_found("conversation"));
        for draft in &mut pending {
            if let Some(head) = heads.get_mut(&draft.message.conversation_id) {
                *head += 1;
                draft.message.seq = *head;
            }
        }
        let messages: Vec<&Message> = pending.iter().map(|d| &d.message).collect();
        let run = match self.db.messages().insert_run(&messages).await {
            Ok(run) => run,
            Err(e) => return Err((pending, e)),
        };
        let mut rest = pending.split_off(run.stored);
        self.finish(pending).await;
        match run.failure {
            None => {}
            Some(RunFailure::SeqTaken) => {
                let taken = &rest[0].message;
                if let Err(e) = self.db.conversations().advance_seq(&taken.conversation_id, taken.seq).await {
                    return Err((rest, e));
                }
            }
            Some(RunFailure::Duplicate(original)) => {
                let repeat = rest.remove(0);
                let answer = follow_up(&self.db, &original).await.map(|()| (*original, false)).map_err(ApiError::from);
                let _ = repeat.reply.send(answer);
            }
        }
        Ok(rest)
    }

    /// What storing implies elsewhere, for a stored run: newest messages and counters, reply
    /// counts, shared files; then the events and the answers.
    async fn finish(&self, stored: Vec<Draft>) {
        if stored.is_empty() {
            return;
        }
        if let Err(e) = self.follow_up_all(&stored).await {
            return answer_all(stored, || ApiError::from(e.clone()));
        }
        let events: Vec<LiveEvent> = stored.iter().map(|d| LiveEvent::Created { message: d.message.clone() }).collect();
        self.redis.publish_events(self.db.tenant_id(), &events).await;
        for draft in stored {
            let _ = draft.reply.send(Ok((draft.message, true)));
        }
    }

    async fn follow_up_all(&self, stored: &[Draft]) -> Result<(), mongodb::error::Error> {
        let mut newest: HashMap<&ConversationId, LastMessage> = HashMap::new();
        for draft in stored {
            let message = &draft.message;
            newest.insert(&message.conversation_id, last_message_of(message));
        }
        let newest: Vec<(&ConversationId, LastMessage)> = newest.into_iter().collect();
        self.db.conversations().record_last_messages(&newest).await?;
        for message in stored.iter().map(|d| &d.message) {
            if let Some(parent) = message.reply_to {
                self.db.messages().add_reply_count(&message.conversation_id, parent, 1).await?;
            }
            share_files(&self.db, message).await?;
        }
        Ok(())
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

    #[test]
    fn a_conversation_always_goes_to_the_same_committer_and_conversations_spread_over_all() {
        let committers = Committers::new(4, 256, 4096);
        let tenant = TenantId::parse("acme").unwrap();
        let ids: Vec<ConversationId> = (0..64).map(|_| ConversationId::new()).collect();
        let lines: Vec<Line> = ids.iter().map(|id| committers.line(&tenant, id)).collect();
        for (id, line) in ids.iter().zip(&lines) {
            assert_eq!(&committers.line(&tenant, id), line, "one conversation, one committer");
            assert_eq!(line.0, tenant);
        }
        let used: HashSet<usize> = lines.iter().map(|(_, n)| *n).collect();
        assert_eq!(used, (0..4).collect::<HashSet<_>>(), "64 conversations use every committer");
        let single = Committers::new(0, 256, 4096);
        assert!(ids.iter().all(|id| single.line(&tenant, id).1 == 0), "a setting of 0 means one committer");
    }
}
