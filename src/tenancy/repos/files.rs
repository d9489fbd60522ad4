use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

use crate::domain::{ConversationId, FileId, SharingMode, StoredFile, UserId};

pub struct FilesRepo {
    files: Collection<StoredFile>,
}

impl FilesRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { files: db.collection("files") }
    }

    pub async fn insert(&self, file: &StoredFile) -> Result<(), mongodb::error::Error> {
        self.files.insert_one(file).await.map(|_| ())
    }

    pub async fn get(&self, id: &FileId) -> Result<Option<StoredFile>, mongodb::error::Error> {
        self.files.find_one(doc! { "_id": id.as_str() }).await
    }

    pub async fn get_many(&self, ids: &[FileId]) -> Result<Vec<StoredFile>, mongodb::error::Error> {
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        self.files.find(doc! { "_id": { "$in": ids } }).await?.try_collect().await
    }

    /// The uploader's files, newest first, before the cursor id.
    pub async fn list_by_uploader(
        &self,
        uploader: &UserId,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredFile>, mongodb::error::Error> {
        let mut filter = doc! { "uploader_id": uploader.as_str() };
        if let Some(before) = before {
            filter.insert("_id", doc! { "$lt": before });
        }
        self.files.find(filter).sort(doc! { "_id": -1 }).limit(i64::from(limit)).await?.try_collect().await
    }

    pub async fn set_sharing(
        &self,
        id: &FileId,
        mode: SharingMode,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Option<StoredFile>, mongodb::error::Error> {
        let set = doc! {
            "sharing.mode": bson::to_bson(&mode)?,
            "sharing.expires_at": expires_at.map(bson::DateTime::from_chrono),
        };
        self.files
            .find_one_and_update(doc! { "_id": id.as_str() }, doc! { "$set": set })
            .return_document(ReturnDocument::After)
            .await
    }

    /// Shares the files with a conversation; private files become conversation files.
    pub async fn share_with(&self, ids: &[FileId], conversation: &ConversationId) -> Result<(), mongodb::error::Error> {
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        self.files
            .update_many(
                doc! { "_id": { "$in": &ids } },
                doc! { "$addToSet": { "sharing.conversation_ids": conversation.as_str() } },
            )
            .await?;
        self.files
            .update_many(
                doc! { "_id": { "$in": &ids }, "sharing.mode": "private" },
                doc! { "$set": { "sharing.mode": "conversation" } },
            )
            .await
            .map(|_| ())
    }

    pub async fn delete(&self, id: &FileId) -> Result<bool, mongodb::error::Error> {
        Ok(self.files.delete_one(doc! { "_id": id.as_str() }).await?.deleted_count == 1)
    }
}
