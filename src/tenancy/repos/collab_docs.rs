use futures_util::TryStreamExt;
use mongodb::bson::{Binary, doc, spec::BinarySubtype};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use super::and_any_of;
use crate::domain::ItemId;

/// One stored Yjs update of a document: `seq` is gapless per document, across epochs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredUpdate {
    pub doc_id: String,
    pub epoch: i64,
    pub seq: i64,
    pub update: Binary,
}

/// A document's whole state as of `upto_seq` (a Yjs update encoding of it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub doc_id: String,
    pub epoch: i64,
    pub upto_seq: i64,
    pub state: Binary,
}

#[derive(Serialize, Deserialize)]
struct SeqCounter {
    #[serde(rename = "_id")]
    id: String,
    seq: i64,
}

pub struct CollabDocsRepo {
    updates: Collection<StoredUpdate>,
    snapshots: Collection<Snapshot>,
    counters: Collection<SeqCounter>,
}

pub fn binary(bytes: Vec<u8>) -> Binary {
    Binary { subtype: BinarySubtype::Generic, bytes }
}

impl CollabDocsRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self {
            updates: db.collection("collab_updates"),
            snapshots: db.collection("collab_snapshots"),
            counters: db.collection("collab_counters"),
        }
    }

    /// Claims `n` consecutive seqs for a document; returns the first.
    pub async fn claim_seqs(&self, doc: &ItemId, n: i64) -> Result<i64, mongodb::error::Error> {
        let counter = self
            .counters
            .find_one_and_update(doc! { "_id": doc.as_str() }, doc! { "$inc": { "seq": n } })
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?
            .map_or(n, |c| c.seq);
        Ok(counter - n + 1)
    }

    /// The last seq claimed for a document (0 if none).
    pub async fn last_seq(&self, doc: &ItemId) -> Result<i64, mongodb::error::Error> {
        Ok(self.counters.find_one(doc! { "_id": doc.as_str() }).await?.map_or(0, |c| c.seq))
    }

    pub async fn append(&self, updates: &[StoredUpdate]) -> Result<(), mongodb::error::Error> {
        if updates.is_empty() {
            return Ok(());
        }
        self.updates.insert_many(updates).await.map(|_| ())
    }

    /// Updates of an epoch with `from <= seq <= to`, in seq order.
    pub async fn updates(
        &self,
        doc: &ItemId,
        epoch: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<StoredUpdate>, mongodb::error::Error> {
        let filter = doc! { "doc_id": doc.as_str(), "epoch": epoch, "seq": { "$gte": from, "$lte": to } };
        self.updates.find(filter).sort(doc! { "seq": 1 }).await?.try_collect().await
    }

    /// The newest snapshot of an epoch.
    pub async fn latest_snapshot(&self, doc: &ItemId, epoch: i64) -> Result<Option<Snapshot>, mongodb::error::Error> {
        let filter = doc! { "doc_id": doc.as_str(), "epoch": epoch };
        self.snapshots.find_one(filter).sort(doc! { "upto_seq": -1 }).await
    }

    /// Stores a snapshot, then drops what it replaces: older snapshots and updates up to it.
    pub async fn compact(&self, snapshot: &Snapshot) -> Result<(), mongodb::error::Error> {
        self.snapshots.insert_one(snapshot).await?;
        let id = snapshot.doc_id.as_str();
        let before = vec![
            doc! { "epoch": { "$lt": snapshot.epoch } },
            doc! { "epoch": snapshot.epoch, "upto_seq": { "$lt": snapshot.upto_seq } },
        ];
        let older = and_any_of(doc! { "doc_id": id }, before);
        self.snapshots.delete_many(older).await?;
        self.updates.delete_many(doc! { "doc_id": id, "seq": { "$lte": snapshot.upto_seq } }).await.map(|_| ())
    }

    pub async fn delete_docs(&self, docs: &[ItemId]) -> Result<(), mongodb::error::Error> {
        let ids: Vec<&str> = docs.iter().map(ItemId::as_str).collect();
        self.updates.delete_many(doc! { "doc_id": { "$in": &ids } }).await?;
        self.snapshots.delete_many(doc! { "doc_id": { "$in": &ids } }).await?;
        self.counters.delete_many(doc! { "_id": { "$in": &ids } }).await.map(|_| ())
    }
}
