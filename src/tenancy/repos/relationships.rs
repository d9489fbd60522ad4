use futures_util::TryStreamExt;
use mongodb::bson::{self, doc};
use mongodb::{Collection, Database};

use crate::domain::{Relationship, RelationshipKind, UserId};
use crate::tenancy::is_duplicate_key;

pub struct RelationshipsRepo {
    relationships: Collection<Relationship>,
}

impl RelationshipsRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { relationships: db.collection("relationships") }
    }

    /// Records the relationship; an existing identical one is kept as it is.
    pub async fn put(&self, relationship: &Relationship) -> Result<Relationship, mongodb::error::Error> {
        match self.relationships.insert_one(relationship).await {
            Ok(_) => Ok(relationship.clone()),
            Err(e) if is_duplicate_key(&e) => {
                Ok(self.relationships.find_one(doc! { "_id": &relationship.id }).await?.unwrap_or(relationship.clone()))
            }
            Err(e) => Err(e),
        }
    }

    /// Removes the given kinds; returns how many were removed.
    pub async fn delete(
        &self,
        user: &UserId,
        other: &UserId,
        kinds: &[RelationshipKind],
    ) -> Result<u64, mongodb::error::Error> {
        let ids: Vec<String> = kinds.iter().map(|kind| Relationship::key(user, other, *kind)).collect();
        Ok(self.relationships.delete_many(doc! { "_id": { "$in": ids } }).await?.deleted_count)
    }

    pub async fn exists(
        &self,
        user: &UserId,
        other: &UserId,
        kind: RelationshipKind,
    ) -> Result<bool, mongodb::error::Error> {
        Ok(self.relationships.find_one(doc! { "_id": Relationship::key(user, other, kind) }).await?.is_some())
    }

    /// The user's relationships, optionally of one kind, in (kind, other) order after the cursor.
    pub async fn list(
        &self,
        user: &UserId,
        kind: Option<RelationshipKind>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Relationship>, mongodb::error::Error> {
        // Ids start with the user id, so one `_id` range holds all of a user's relationships.
        let start = format!("{user}\u{1f}");
        let end = format!("{user}\u{1f}\u{10ffff}");
        let lower = match after {
            Some(after) if after > start.as_str() => doc! { "$gt": after },
            _ => doc! { "$gte": &start },
        };
        let mut filter = doc! { "_id": lower };
        filter.get_document_mut("_id").expect("just set").insert("$lt", end);
        if let Some(kind) = kind {
            filter.insert("kind", bson::to_bson(&kind)?);
        }
        self.relationships.find(filter).sort(doc! { "_id": 1 }).limit(i64::from(limit)).await?.try_collect().await
    }
}
