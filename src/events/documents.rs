//! Edits and awareness of a collaborative document, passed between the nodes that hold it
//! open. Updates are published after they are stored, with their seq, so a node that misses
//! one finds it in MongoDB; awareness is never stored.

use mongodb::bson::Binary;
use serde::{Deserialize, Serialize};

use crate::domain::{ItemId, TenantId};

use super::Redis;
use super::live::Topic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocEventKind {
    /// A stored Yjs update (`seq` set).
    Update,
    /// A y-protocols awareness update.
    Awareness,
    /// The document was re-created (a new epoch) or deleted: clients must start over.
    Reset,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocEvent {
    /// The node that published it (which ignores its own events).
    pub origin: String,
    pub kind: DocEventKind,
    pub epoch: i64,
    pub seq: i64,
    pub bytes: Binary,
}

impl Redis {
    /// Best effort, like every publish: stored updates are found in MongoDB by seq.
    pub async fn publish_doc_event(&self, tenant: &TenantId, doc: &ItemId, event: &DocEvent) {
        let payload = match mongodb::bson::to_vec(event) {
            Ok(payload) => payload,
            Err(e) => return tracing::error!(error = %e, "could not encode a document event"),
        };
        if let Err(e) = self.publish(tenant, Topic::Document(doc), payload).await {
            tracing::warn!(error = %e, "could not publish a document event");
        }
    }
}
