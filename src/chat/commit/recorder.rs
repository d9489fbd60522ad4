//! The conversation records of a tenant's stored runs (each conversation's counter and newest
//! message), written for all of the tenant's committers on this node by one recorder.
//!
//! Finishes of several committers reaching the database together would each pay for a statement
//! and write again the conversations another one just wrote (and SecantusDB takes one write at a
//! time per collection, so they would only queue there). The recorder takes everything handed to
//! it while its previous statement ran and writes it in one statement, each conversation once
//! with the newest of its messages. A finish is answered once the statement holding its
//! conversations is done, so a 201 still comes after its message's counter.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};

use crate::domain::{ConversationId, LastMessage};
use crate::tenancy::TenantDb;

/// Most finishes whose records are merged into one round.
pub(super) const RUNS_PER_ROUND: usize = 64;
/// Most conversations one statement records (each takes its message out of a `$switch` over all
/// of them); a round with more is written in several statements.
const CONVERSATIONS_PER_STATEMENT: usize = 256;

type Recorded = Result<(), mongodb::error::Error>;

/// One stored run's newest message per conversation, and its finish waiting for them.
pub(super) struct Record {
    lasts: Vec<(ConversationId, LastMessage)>,
    done: oneshot::Sender<Recorded>,
}

/// A committer's way to its tenant's recorder; the recorder stops once no committer holds one.
#[derive(Clone)]
pub(super) struct Recorder(mpsc::Sender<Record>);

impl Recorder {
    /// A recorder for `db`'s tenant and the task that runs it.
    pub(super) fn start(db: TenantDb) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (records, received) = mpsc::channel(RUNS_PER_ROUND);
        (Self(records), run(db, received))
    }

    pub(super) fn downgrade(&self) -> mpsc::WeakSender<Record> {
        self.0.downgrade()
    }

    pub(super) fn upgrade(weak: &mpsc::WeakSender<Record>) -> Option<Self> {
        weak.upgrade().map(Self)
    }

    /// Records `lasts` (one per conversation), together with whatever else is waiting.
    pub(super) async fn record(&self, lasts: Vec<(ConversationId, LastMessage)>) -> Recorded {
        let (done, recorded) = oneshot::channel();
        if self.0.send(Record { lasts, done }).await.is_err() {
            return Err(mongodb::error::Error::custom("the conversation recorder stopped"));
        }
        recorded.await.unwrap_or_else(|_| Err(mongodb::error::Error::custom("the conversation recorder failed")))
    }
}

async fn run(db: TenantDb, mut received: mpsc::Receiver<Record>) {
    let mut round = Vec::with_capacity(RUNS_PER_ROUND);
    while received.recv_many(&mut round, RUNS_PER_ROUND).await > 0 {
        let result = write(&db, &round).await;
        for record in round.drain(..) {
            let _ = record.done.send(result.clone());
        }
    }
}

/// Writes a round's records: each conversation once, with the newest message any of them holds.
async fn write(db: &TenantDb, round: &[Record]) -> Recorded {
    let newest = newest_of(round.iter().flat_map(|r| &r.lasts));
    metrics::histogram!("chat_commit_record_conversations").record(newest.len() as f64);
    for statement in newest.chunks(CONVERSATIONS_PER_STATEMENT) {
        db.conversations().record_last_messages(statement).await?;
    }
    Ok(())
}

/// The newest of `lasts` for each conversation among them.
fn newest_of<'a>(
    lasts: impl Iterator<Item = &'a (ConversationId, LastMessage)>,
) -> Vec<(&'a ConversationId, &'a LastMessage)> {
    let mut newest: HashMap<&ConversationId, &LastMessage> = HashMap::new();
    for (conversation, last) in lasts {
        let kept = newest.entry(conversation).or_insert(last);
        if last.seq > kept.seq {
            *kept = last;
        }
    }
    newest.into_iter().collect()
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
        let round = [
            (a.clone(), last(7)),
            (b.clone(), last(3)),
            (a.clone(), last(9)),
            (a.clone(), last(8)),
            (c.clone(), last(1)),
        ];
        let mut newest: Vec<(String, String)> =
            newest_of(round.iter()).into_iter().map(|(id, l)| (id.to_string(), l.preview.clone())).collect();
        newest.sort();
        let mut expected =
            vec![(a.to_string(), "m9".to_string()), (b.to_string(), "m3".into()), (c.to_string(), "m1".into())];
        expected.sort();
        assert_eq!(newest, expected);
    }
}
