//! The conversation records of a tenant's stored runs (each conversation's counter and newest
//! message), written for all of the tenant's committers on this node by one recorder, behind the
//! answers.
//!
//! A record costs the database about half as much as storing the messages it follows, and a
//! statement per batch made every send wait for one. So a send is answered once its message is
//! stored and its head raised in Redis (readers take the greater of the counter and the head,
//! see `chat::counters`); the recorder gathers what the committers hand it, each conversation
//! once with its newest message, and writes it at most every `chat.record_interval_ms` (at once
//! after a quiet spell), in one statement per `CONVERSATIONS_PER_STATEMENT`. A busy conversation
//! then costs one record per interval instead of one per batch. A statement that fails is tried
//! again at the next interval with whatever came since; what is left when the committers stop is
//! written before the recorder ends, and a node that is told to stop has every recorder write
//! what it holds at once (`flush`). Nothing depends on a record for seqs: committers read
//! what is stored past a counter (`MessagesRepo::newest_seq_past`).

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::domain::{ConversationId, LastMessage};
use crate::tenancy::TenantDb;

/// Runs a recorder takes from its queue at once.
const RUNS_PER_ROUND: usize = 64;
/// Runs queued for the recorder while it writes; committers handing it more wait.
const QUEUED_RUNS: usize = 1_024;
/// Most conversations one statement records (each takes its message out of a `$switch` over all
/// of them); a round with more is written in several statements.
const CONVERSATIONS_PER_STATEMENT: usize = 256;
/// Most conversations waiting for their record; past it, the recorder takes no more runs until
/// it has written them, and committers handing it theirs wait.
const PENDING_MAX: usize = 4_096;
/// Times the records left when the committers stop are tried before they are given up (the
/// messages stay stored and counted through their heads; the next send records its conversation).
const FINAL_ATTEMPTS: usize = 3;

/// A stored run's newest message of each of its conversations.
pub(super) type Lasts = Vec<(ConversationId, LastMessage)>;

/// What a recorder is handed: a run's records, or a request to write what it holds now.
pub(super) enum Handed {
    Run(Lasts),
    Flush(oneshot::Sender<()>),
}

/// A committer's way to its tenant's recorder; the recorder stops once no committer holds one.
#[derive(Clone)]
pub(super) struct Recorder(mpsc::Sender<Handed>);

impl Recorder {
    /// A recorder for `db`'s tenant writing at most every `interval`, and the task that runs it.
    pub(super) fn start(db: TenantDb, interval: Duration) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (records, received) = mpsc::channel(QUEUED_RUNS);
        (Self(records), run(db, interval, received))
    }

    pub(super) fn downgrade(&self) -> mpsc::WeakSender<Handed> {
        self.0.downgrade()
    }

    pub(super) fn upgrade(weak: &mpsc::WeakSender<Handed>) -> Option<Self> {
        weak.upgrade().map(Self)
    }

    /// Hands over a run's newest message of each conversation; waits only while the recorder is
    /// `PENDING_MAX` conversations behind.
    pub(super) async fn record(&self, lasts: Lasts) {
        // The recorder stops only once every committer has dropped its handle, this one's too.
        let _ = self.0.send(Handed::Run(lasts)).await;
    }

    /// Has the recorder write what it holds, after what was handed to it before; returns once
    /// it tried.
    pub(super) async fn flush(&self) {
        let (done, tried) = oneshot::channel();
        if self.0.send(Handed::Flush(done)).await.is_ok() {
            let _ = tried.await;
        }
    }
}

async fn run(db: TenantDb, interval: Duration, mut received: mpsc::Receiver<Handed>) {
    let mut pending: HashMap<ConversationId, LastMessage> = HashMap::new();
    let mut handed = Vec::with_capacity(RUNS_PER_ROUND);
    let mut next_write = Instant::now();
    loop {
        tokio::select! {
            taken = received.recv_many(&mut handed, RUNS_PER_ROUND), if pending.len() < PENDING_MAX => {
                if taken == 0 {
                    break;
                }
                let mut flushes = Vec::new();
                for one in handed.drain(..) {
                    match one {
                        Handed::Run(lasts) => keep_newest(&mut pending, lasts),
                        Handed::Flush(done) => flushes.push(done),
                    }
                }
                if !flushes.is_empty() {
                    if !pending.is_empty() {
                        write_or_keep(&db, &mut pending).await;
                    }
                    for done in flushes {
                        let _ = done.send(());
                    }
                }
            }
            () = tokio::time::sleep_until(next_write), if !pending.is_empty() => {
                let started = Instant::now();
                write_or_keep(&db, &mut pending).await;
                next_write = started + interval;
            }
        }
    }
    for _ in 0..FINAL_ATTEMPTS {
        if pending.is_empty() {
            return;
        }
        tokio::time::sleep_until(next_write).await;
        write_or_keep(&db, &mut pending).await;
        next_write = Instant::now() + interval;
    }
    if !pending.is_empty() {
        tracing::warn!(conversations = pending.len(), "gave up recording the newest messages of conversations");
    }
}

/// Writes `pending`; on failure keeps it for the next attempt.
async fn write_or_keep(db: &TenantDb, pending: &mut HashMap<ConversationId, LastMessage>) {
    let round: Vec<(ConversationId, LastMessage)> = pending.drain().collect();
    metrics::histogram!("chat_commit_record_conversations").record(round.len() as f64);
    for statement in round.chunks(CONVERSATIONS_PER_STATEMENT) {
        let lasts: Vec<(&ConversationId, &LastMessage)> = statement.iter().map(|(id, last)| (id, last)).collect();
        if let Err(e) = db.conversations().record_last_messages(&lasts).await {
            tracing::warn!(error = %e, "could not record the newest messages of conversations; trying again");
            metrics::counter!("chat_commit_record_failures_total").increment(1);
            // Some statements may have been written: writing them again changes nothing.
            keep_newest(pending, round);
            return;
        }
    }
}

/// Keeps, for each conversation, the newest of what is pending and `lasts`.
fn keep_newest(
    pending: &mut HashMap<ConversationId, LastMessage>,
    lasts: impl IntoIterator<Item = (ConversationId, LastMessage)>,
) {
    for (conversation, last) in lasts {
        match pending.get_mut(&conversation) {
            Some(kept) if kept.seq >= last.seq => {}
            Some(kept) => *kept = last,
            None => {
                pending.insert(conversation, last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageKind, UserId};

    fn last(seq: i64) -> LastMessage {
        let sender = UserId::parse("alice").unwrap();
        LastMessage {
            seq,
            sender_id: sender,
            kind: MessageKind::Text,
            preview: format!("m{seq}"),
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_round_records_each_conversation_once_with_its_newest_message() {
        let (a, b, c) = (ConversationId::new(), ConversationId::new(), ConversationId::new());
        // Finishes of two committers reach the recorder out of order.
        let mut pending = HashMap::new();
        keep_newest(&mut pending, [(a.clone(), last(7)), (b.clone(), last(3))]);
        keep_newest(&mut pending, [(a.clone(), last(9)), (a.clone(), last(8)), (c.clone(), last(1))]);
        let mut newest: Vec<(String, String)> =
            pending.iter().map(|(id, l)| (id.to_string(), l.preview.clone())).collect();
        newest.sort();
        let mut expected =
            vec![(a.to_string(), "m9".to_string()), (b.to_string(), "m3".into()), (c.to_string(), "m1".into())];
        expected.sort();
        assert_eq!(newest, expected);
    }
}
