use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

use super::and_any_of;
use crate::domain::{CodeSession, SessionId, SessionMember, SessionRole, UserId, Visibility};
use crate::tenancy::is_duplicate_key;

pub struct CodeSessionsRepo {
    sessions: Collection<CodeSession>,
    members: Collection<SessionMember>,
}

/// Fields an update may set; `None` keeps the stored value.
#[derive(Default)]
pub struct SessionChanges {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub language: Option<String>,
    pub visibility: Option<Visibility>,
    pub active: Option<bool>,
    pub tags: Option<Vec<String>>,
}

fn time(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_chrono(t)
}

impl CodeSessionsRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { sessions: db.collection("code_sessions"), members: db.collection("session_members") }
    }

    pub async fn insert(&self, session: &CodeSession) -> Result<(), mongodb::error::Error> {
        self.sessions.insert_one(session).await.map(|_| ())
    }

    pub async fn get(&self, id: &SessionId) -> Result<Option<CodeSession>, mongodb::error::Error> {
        self.sessions.find_one(doc! { "_id": id.as_str() }).await
    }

    /// Sessions among `ids` or visible to the whole tenant, in id order after `after`.
    pub async fn page_visible(
        &self,
        ids: &[SessionId],
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CodeSession>, mongodb::error::Error> {
        let ids: Vec<&str> = ids.iter().map(SessionId::as_str).collect();
        let after = after.map_or_else(bson::Document::new, |after| doc! { "_id": { "$gt": after } });
        let filter = and_any_of(after, vec![doc! { "_id": { "$in": ids } }, doc! { "visibility": "tenant" }]);
        self.sessions.find(filter).sort(doc! { "_id": 1 }).limit(i64::from(limit)).await?.try_collect().await
    }

    pub async fn update(
        &self,
        id: &SessionId,
        changes: SessionChanges,
        now: DateTime<Utc>,
    ) -> Result<Option<CodeSession>, mongodb::error::Error> {
        let mut set = doc! { "updated_at": time(now) };
        if let Some(name) = changes.name {
            set.insert("name", name);
        }
        if let Some(description) = changes.description {
            set.insert("description", description);
        }
        if let Some(language) = changes.language {
            set.insert("language", language);
        }
        if let Some(visibility) = changes.visibility {
            set.insert("visibility", bson::to_bson(&visibility)?);
        }
        if let Some(active) = changes.active {
            set.insert("active", active);
        }
        if let Some(tags) = changes.tags {
            set.insert("tags", tags);
        }
        self.sessions
            .find_one_and_update(doc! { "_id": id.as_str() }, doc! { "$set": set })
            .return_document(ReturnDocument::After)
            .await
    }

    pub async fn set_forked_from(&self, id: &SessionId, from: &SessionId) -> Result<(), mongodb::error::Error> {
        let update = doc! { "$set": { "forked_from": from.as_str() } };
        self.sessions.update_one(doc! { "_id": id.as_str() }, update).await.map(|_| ())
    }

    pub async fn touch(&self, id: &SessionId, now: DateTime<Utc>) -> Result<(), mongodb::error::Error> {
        let update = doc! { "$set": { "last_accessed_at": time(now) } };
        self.sessions.update_one(doc! { "_id": id.as_str() }, update).await.map(|_| ())
    }

    /// Reserves `n` item slots under `max`; `false` when that would pass it.
    pub async fn reserve_items(&self, id: &SessionId, n: u32, max: u32) -> Result<bool, mongodb::error::Error> {
        let filter = doc! { "_id": id.as_str(), "item_count": { "$lte": i64::from(max) - i64::from(n) } };
        let reserved = self.sessions.update_one(filter, doc! { "$inc": { "item_count": i64::from(n) } }).await?;
        Ok(reserved.modified_count == 1)
    }

    pub async fn release_items(&self, id: &SessionId, n: u32) -> Result<(), mongodb::error::Error> {
        let update = doc! { "$inc": { "item_count": -i64::from(n) } };
        self.sessions.update_one(doc! { "_id": id.as_str() }, update).await.map(|_| ())
    }

    /// Takes the session's tree lock until `until_ms` unless someone else holds it.
    pub async fn lock_tree(
        &self,
        id: &SessionId,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, mongodb::error::Error> {
        let free = vec![doc! { "tree_lock_until": null }, doc! { "tree_lock_until": { "$lt": now_ms } }];
        let filter = and_any_of(doc! { "_id": id.as_str() }, free);
        let update = doc! { "$set": { "tree_lock_until": until_ms, "tree_lock_holder": holder } };
        Ok(self.sessions.update_one(filter, update).await?.modified_count == 1)
    }

    pub async fn unlock_tree(&self, id: &SessionId, holder: &str) -> Result<(), mongodb::error::Error> {
        let filter = doc! { "_id": id.as_str(), "tree_lock_holder": holder };
        let update = doc! { "$set": { "tree_lock_until": null, "tree_lock_holder": null } };
        self.sessions.update_one(filter, update).await.map(|_| ())
    }

    pub async fn delete(&self, id: &SessionId) -> Result<(), mongodb::error::Error> {
        self.members.delete_many(doc! { "session_id": id.as_str() }).await?;
        self.sessions.delete_one(doc! { "_id": id.as_str() }).await.map(|_| ())
    }

    /// Adds a member; `Ok(false)` if they already are one.
    pub async fn add_member(&self, member: &SessionMember) -> Result<bool, mongodb::error::Error> {
        match self.members.insert_one(member).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn member(&self, id: &SessionId, user: &UserId) -> Result<Option<SessionMember>, mongodb::error::Error> {
        self.members.find_one(doc! { "_id": SessionMember::key(id, user) }).await
    }

    pub async fn members(&self, id: &SessionId) -> Result<Vec<SessionMember>, mongodb::error::Error> {
        self.members.find(doc! { "session_id": id.as_str() }).sort(doc! { "user_id": 1 }).await?.try_collect().await
    }

    pub async fn sessions_of(&self, user: &UserId) -> Result<Vec<SessionId>, mongodb::error::Error> {
        let found: Vec<SessionMember> =
            self.members.find(doc! { "user_id": user.as_str() }).await?.try_collect().await?;
        Ok(found.into_iter().map(|m| m.session_id).collect())
    }

    /// Changes a member's role if it still is `from`.
    pub async fn set_role(
        &self,
        id: &SessionId,
        user: &UserId,
        from: SessionRole,
        to: SessionRole,
    ) -> Result<Option<SessionMember>, mongodb::error::Error> {
        let filter = doc! { "_id": SessionMember::key(id, user), "role": bson::to_bson(&from)? };
        self.members
            .find_one_and_update(filter, doc! { "$set": { "role": bson::to_bson(&to)? } })
            .return_document(ReturnDocument::After)
            .await
    }

    pub async fn remove_member(&self, id: &SessionId, user: &UserId) -> Result<bool, mongodb::error::Error> {
        let removed = self.members.delete_one(doc! { "_id": SessionMember::key(id, user) }).await?;
        Ok(removed.deleted_count == 1)
    }

    /// Takes one owner off the count unless that would leave none; `false` when it would.
    pub async fn release_owner(&self, id: &SessionId) -> Result<bool, mongodb::error::Error> {
        let filter = doc! { "_id": id.as_str(), "owner_count": { "$gt": 1 } };
        Ok(self.sessions.update_one(filter, doc! { "$inc": { "owner_count": -1 } }).await?.modified_count == 1)
    }

    pub async fn add_owner(&self, id: &SessionId) -> Result<(), mongodb::error::Error> {
        self.sessions.update_one(doc! { "_id": id.as_str() }, doc! { "$inc": { "owner_count": 1 } }).await.map(|_| ())
    }

    /// The caller's memberships, by session.
    pub async fn memberships_of(&self, user: &UserId) -> Result<Vec<SessionMember>, mongodb::error::Error> {
        self.members.find(doc! { "user_id": user.as_str() }).await?.try_collect().await
    }
}
