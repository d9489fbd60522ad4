use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

use crate::domain::{ItemId, SessionId, UserId, WorkspaceItem};
use crate::tenancy::is_duplicate_key;

pub struct WorkspaceRepo {
    items: Collection<WorkspaceItem>,
}

fn time(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_chrono(t)
}

impl WorkspaceRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { items: db.collection("workspace_items") }
    }

    /// Inserts; `Ok(false)` when the parent already has an item of that name.
    pub async fn insert(&self, item: &WorkspaceItem) -> Result<bool, mongodb::error::Error> {
        match self.items.insert_one(item).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn insert_many(&self, items: &[WorkspaceItem]) -> Result<(), mongodb::error::Error> {
        if items.is_empty() {
            return Ok(());
        }
        self.items.insert_many(items).await.map(|_| ())
    }

    pub async fn get(&self, session: &SessionId, id: &ItemId) -> Result<Option<WorkspaceItem>, mongodb::error::Error> {
        self.items.find_one(doc! { "_id": id.as_str(), "session_id": session.as_str() }).await
    }

    /// Every item of a session (bounded by `collab.max_items_per_session`).
    pub async fn tree(&self, session: &SessionId) -> Result<Vec<WorkspaceItem>, mongodb::error::Error> {
        self.items.find(doc! { "session_id": session.as_str() }).await?.try_collect().await
    }

    /// Renames and/or moves; `Ok(None)` when the target name is taken in the target folder.
    pub async fn place(
        &self,
        id: &ItemId,
        parent: &str,
        name: &str,
        language: Option<&str>,
        by: &UserId,
        now: DateTime<Utc>,
    ) -> Result<Option<WorkspaceItem>, mongodb::error::Error> {
        let update = doc! {
            "$set": { "parent_id": parent, "name": name, "language": language, "last_modified_by": by.as_str(), "updated_at": time(now) },
            "$inc": { "version": 1 },
        };
        match self
            .items
            .find_one_and_update(doc! { "_id": id.as_str() }, update)
            .return_document(ReturnDocument::After)
            .await
        {
            Ok(item) => Ok(item),
            Err(e) if is_duplicate_key(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records a file's new size after its text changed.
    pub async fn record_content(
        &self,
        id: &ItemId,
        size: u64,
        by: &UserId,
        now: DateTime<Utc>,
    ) -> Result<(), mongodb::error::Error> {
        let update = doc! {
            "$set": { "size": size as i64, "last_modified_by": by.as_str(), "updated_at": time(now) },
            "$inc": { "version": 1 },
        };
        self.items.update_one(doc! { "_id": id.as_str() }, update).await.map(|_| ())
    }

    pub async fn delete_many(&self, session: &SessionId, ids: &[ItemId]) -> Result<u64, mongodb::error::Error> {
        let ids: Vec<&str> = ids.iter().map(ItemId::as_str).collect();
        let deleted = self.items.delete_many(doc! { "session_id": session.as_str(), "_id": { "$in": ids } }).await?;
        Ok(deleted.deleted_count)
    }

    pub async fn delete_session(&self, session: &SessionId) -> Result<(), mongodb::error::Error> {
        self.items.delete_many(doc! { "session_id": session.as_str() }).await.map(|_| ())
    }
}
