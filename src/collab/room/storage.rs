//! The room's side facing storage and the other nodes: storing batched edits, repairing from
//! the stored log, publishing events.
//!
//! Storing runs beside the room: while one batch is on its way to MongoDB (claim a seq, insert,
//! tell the other nodes, record the file's size), the room goes on applying and relaying edits,
//! which make up the next batch. One batch is in flight at a time, so batches are stored in
//! order, and a room holding a full batch waits for the one in flight before taking more.

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;
use yrs::sync::{Message, SyncMessage};

use crate::app::AppState;
use crate::domain::{ItemId, TenantId, UserId};
use crate::events::{DocEvent, DocEventKind};
use crate::tenancy::{TenantDb, binary};

use super::super::documents;
use super::{GAP_GIVE_UP, Room, TICK, encode};

/// A batch on its way to storage, and a copy of its updates to put back should storing fail.
pub(super) struct InFlight {
    task: JoinHandle<Option<i64>>,
    parts: Vec<Vec<u8>>,
}

/// What storing a batch needs, taken from the room when the batch leaves.
struct Batch {
    state: Arc<AppState>,
    db: TenantDb,
    tenant: TenantId,
    item: ItemId,
    epoch: i64,
    /// The updates applied since the last batch, merged into one stored update by the store task
    /// (merging a busy document's batch takes milliseconds the room spends applying instead).
    parts: Vec<Vec<u8>>,
    size: u64,
    by: UserId,
}

impl Batch {
    /// Stores the batch and tells the other nodes; the seq it got, or `None` if it was not stored.
    async fn store(self) -> Option<i64> {
        let update = match documents::merge(&self.parts) {
            Ok(merged) => merged,
            Err(e) => {
                tracing::error!(error = %e, "could not merge document updates");
                tokio::time::sleep(TICK).await;
                return None;
            }
        };
        let seq = match documents::append(&self.db, &self.item, self.epoch, update.clone()).await {
            Ok(seq) => seq,
            Err(e) => {
                tracing::warn!(error = %e, "could not store document updates; retrying");
                // Reported late, so the room retries once a tick, not in a spin; meanwhile it
                // holds no more than one batch besides this one.
                tokio::time::sleep(TICK).await;
                return None;
            }
        };
        let event = doc_event(&self.state, DocEventKind::Update, self.epoch, seq, update);
        self.state.redis.publish_doc_event(&self.tenant, &self.item, &event).await;
        if let Err(e) = self.db.workspace().record_content(&self.item, self.size, &self.by, crate::domain::now()).await
        {
            tracing::warn!(error = %e, "could not record a file's size");
        }
        Some(seq)
    }
}

impl Room {
    /// Sends what was applied locally since the last batch to storage, unless a batch is still
    /// in flight (then it goes when that one is done). A batch that failed goes again, first.
    pub(super) async fn flush(&mut self) {
        self.settle();
        if self.in_flight.is_some() || self.pending.is_empty() || self.dropped {
            return;
        }
        let parts = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let batch = Batch {
            state: self.state.clone(),
            db: self.db.clone(),
            tenant: self.item.tenant_id.clone(),
            item: self.item.id.clone(),
            epoch: self.loaded.epoch,
            parts: parts.clone(),
            size: documents::text_len(&self.loaded.doc) as u64,
            by: self.pending_by.take().unwrap_or_else(|| self.item.last_modified_by.clone()),
        };
        self.in_flight = Some(InFlight { task: tokio::spawn(batch.store()), parts });
        // A task spawned from a runtime thread waits in that thread's own slot, which no other
        // thread takes from, until the spawner yields: a busy room would hold its store back.
        tokio::task::yield_now().await;
    }

    /// Waits for the batch in flight, if any, and takes note of where it was stored.
    pub(super) async fn landed(&mut self) {
        if self.in_flight.is_some() {
            let stored = in_flight_done(&mut self.in_flight).await;
            self.land(stored).await;
        }
    }

    /// Takes note of where the batch in flight was stored; puts it back in front of the pending
    /// edits if it was not (it goes again, in order, on the next flush).
    pub(super) async fn land(&mut self, stored: Option<i64>) {
        let Some(InFlight { parts, .. }) = self.in_flight.take() else { return };
        if self.dropped {
            return;
        }
        let Some(seq) = stored else {
            self.pending_bytes += parts.iter().map(Vec::len).sum::<usize>();
            self.pending.splice(0..0, parts);
            return;
        };
        if seq == self.loaded.applied_seq + 1 {
            self.loaded.applied_seq = seq;
        }
        self.known_seq = self.known_seq.max(seq);
        if self.loaded.applied_seq - self.loaded.snapshot_seq >= self.state.settings.collab.snapshot_every
            && let Err(e) = documents::snapshot(&self.db, &self.item.id, &mut self.loaded).await
        {
            tracing::warn!(error = %e, "could not snapshot a document");
        }
    }

    /// Stores everything applied so far and waits until it is stored (or failed: then it stays
    /// pending).
    pub(super) async fn flush_all(&mut self) {
        self.landed().await;
        self.flush().await;
        self.landed().await;
    }

    /// Applies stored updates this node never heard of (a lost pub/sub event, or seqs another
    /// node claimed before storing them) and passes them to the local clients.
    pub(super) async fn repair(&mut self) {
        let Ok(last) = self.db.collab_docs().last_seq(&self.item.id).await else { return };
        let upto = last.max(self.known_seq);
        if upto <= self.loaded.applied_seq {
            return;
        }
        let repo = self.db.collab_docs();
        let Ok(updates) = repo.updates(&self.item.id, self.loaded.epoch, self.loaded.applied_seq + 1, upto).await
        else {
            return;
        };
        let gap_expired = self.gap_since.is_some_and(|at| at.elapsed() >= GAP_GIVE_UP);
        for stored in updates {
            if documents::apply(&self.loaded.doc, &stored.update.bytes) {
                self.broadcast(&encode(&Message::Sync(SyncMessage::Update(stored.update.bytes))), None);
            }
            if stored.seq == self.loaded.applied_seq + 1 || gap_expired {
                self.loaded.applied_seq = stored.seq;
            }
        }
        self.gap_since = match (self.loaded.applied_seq < upto, self.gap_since) {
            (false, _) => None,
            (true, None) => Some(Instant::now()),
            (true, since) if !gap_expired => since,
            (true, _) => Some(Instant::now()),
        };
    }

    pub(super) async fn publish(&self, kind: DocEventKind, seq: i64, bytes: Vec<u8>) {
        let event = doc_event(&self.state, kind, self.loaded.epoch, seq, bytes);
        self.state.redis.publish_doc_event(&self.item.tenant_id, &self.item.id, &event).await;
    }
}

/// Resolves with the outcome of the batch in flight (never, if there is none). Cancel-safe: the
/// batch stays in flight until it is taken note of.
pub(super) async fn in_flight_done(in_flight: &mut Option<InFlight>) -> Option<i64> {
    let Some(InFlight { task, .. }) = in_flight.as_mut() else { return std::future::pending().await };
    task.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "a document store task failed");
        None
    })
}

fn doc_event(state: &AppState, kind: DocEventKind, epoch: i64, seq: i64, bytes: Vec<u8>) -> DocEvent {
    DocEvent { origin: state.hub.node_id().to_string(), kind, epoch, seq, bytes: binary(bytes) }
}
