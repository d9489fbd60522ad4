//! The room's side facing storage and the other nodes: storing batched edits, repairing from
//! the stored log, publishing events.

use std::time::Instant;

use yrs::sync::{Message, SyncMessage};

use crate::events::{DocEvent, DocEventKind};
use crate::tenancy::binary;

use super::super::documents;
use super::{GAP_GIVE_UP, Room, encode};

impl Room {
    /// Stores what was applied locally since the last flush as one update, then tells the
    /// other nodes. On failure the edits stay pending and are retried on the next tick.
    pub(super) async fn flush(&mut self) {
        self.settle();
        if self.pending.is_empty() || self.dropped {
            return;
        }
        let merged = match documents::merge(&self.pending) {
            Ok(merged) => merged,
            Err(e) => return tracing::error!(error = %e, "could not merge document updates"),
        };
        let seq = match documents::append(&self.db, &self.item.id, self.loaded.epoch, merged.clone()).await {
            Ok(seq) => seq,
            Err(e) => return tracing::warn!(error = %e, "could not store document updates; retrying"),
        };
        self.pending.clear();
        self.pending_bytes = 0;
        if seq == self.loaded.applied_seq + 1 {
            self.loaded.applied_seq = seq;
        }
        self.known_seq = self.known_seq.max(seq);
        self.publish(DocEventKind::Update, seq, merged).await;
        let by = self.pending_by.take().unwrap_or_else(|| self.item.last_modified_by.clone());
        let size = documents::text_len(&self.loaded.doc) as u64;
        if let Err(e) = self.db.workspace().record_content(&self.item.id, size, &by, crate::domain::now()).await {
            tracing::warn!(error = %e, "could not record a file's size");
        }
        if self.loaded.applied_seq - self.loaded.snapshot_seq >= self.state.settings.collab.snapshot_every
            && let Err(e) = documents::snapshot(&self.db, &self.item.id, &mut self.loaded).await
        {
            tracing::warn!(error = %e, "could not snapshot a document");
        }
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
        let event = DocEvent {
            origin: self.state.hub.node_id().to_string(),
            kind,
            epoch: self.loaded.epoch,
            seq,
            bytes: binary(bytes),
        };
        self.state.redis.publish_doc_event(&self.item.tenant_id, &self.item.id, &event).await;
    }
}
