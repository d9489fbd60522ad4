//! The raw-driver reference for storing messages: copies of messages confab stored, inserted
//! with the driver alone into a scratch collection with the same indexes as `messages`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use mongodb::IndexModel;
use mongodb::bson::{Bson, Document, doc};

use crate::BoxError;
use crate::loadgen::{self, Job, Outcome};
use crate::stack::Stack;

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// Stored messages sampled as the reference's documents.
const SAMPLE: i64 = 1000;

/// Raw-driver inserts of stored messages' documents into a scratch collection with the same
/// indexes as the tenant's `messages`, each copy with fresh unique keys.
#[derive(Clone)]
pub struct RawInserts {
    pub scratch: mongodb::Database,
    sample: Arc<Vec<Document>>,
    next: Arc<AtomicI64>,
}

impl RawInserts {
    /// Copies up to `SAMPLE` of the messages `sampled` finds in `db`, into a scratch database
    /// named after `scenario`.
    pub async fn prepare(
        stack: &Stack,
        db: &mongodb::Database,
        sampled: Document,
        scenario: &str,
    ) -> Result<Self, BoxError> {
        use futures_util::TryStreamExt;
        let messages = db.collection::<Document>("messages");
        let sample: Vec<Document> = messages.find(sampled).limit(SAMPLE).await?.try_collect().await?;
        if sample.is_empty() {
            return Err("no stored messages to copy".into());
        }
        let scratch = stack.mongo.database(&format!("{}scratch_{scenario}_{}", stack.db_prefix, rand::random::<u32>()));
        scratch.create_collection("messages").await?;
        let specs: Vec<_> = messages.list_indexes().await?.try_collect().await?;
        let models: Vec<IndexModel> = specs
            .into_iter()
            .filter(|ix| ix.options.as_ref().and_then(|o| o.name.as_deref()) != Some("_id_"))
            .collect();
        scratch.collection::<Document>("messages").create_indexes(models).await?;
        Ok(Self { scratch, sample: Arc::new(sample), next: Arc::new(AtomicI64::new(1)) })
    }

    fn copy(&self) -> Document {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut doc = self.sample[n as usize % self.sample.len()].clone();
        // Keyed as confab keys messages: a name-based UUID, as random as a hash.
        let key = rand::random::<[u8; 16]>().to_vec();
        doc.insert("_id", mongodb::bson::Binary { subtype: mongodb::bson::spec::BinarySubtype::Uuid, bytes: key });
        doc.insert("seq", Bson::Int64(n));
        doc.insert("client_msg_id", format!("raw-{n}"));
        doc
    }

    /// Inserts `batch` copies per call: `insert_one` for 1, `insert_many` otherwise.
    pub fn op(&self, batch: usize) -> Arc<impl Fn(Job) -> BoxFuture + Send + Sync + 'static> {
        let this = self.clone();
        Arc::new(move |_job: Job| -> BoxFuture {
            let this = this.clone();
            Box::pin(async move {
                let collection = this.scratch.collection::<Document>("messages");
                let docs: Vec<Document> = (0..batch).map(|_| this.copy()).collect();
                let result = if batch == 1 {
                    collection.insert_one(&docs[0]).await.map(|_| ())
                } else {
                    collection.insert_many(&docs).await.map(|_| ())
                };
                result.map_err(|e| e.to_string())
            })
        })
    }

    /// `workers` closed-loop inserters of `batch` documents per call; rate in documents stored/s.
    pub async fn ceiling(
        &self,
        workers: usize,
        batch: usize,
        duration: std::time::Duration,
    ) -> Result<Outcome, BoxError> {
        let collection = self.scratch.collection::<Document>("messages");
        let before = collection.count_documents(doc! {}).await?;
        let mut outcome = loadgen::closed_loop(self.op(batch), workers, duration).await;
        let after = collection.count_documents(doc! {}).await?;
        // Documents actually stored, as for confab's own figure.
        outcome.rate = (after - before) as f64 / outcome.elapsed_secs;
        Ok(outcome)
    }
}
