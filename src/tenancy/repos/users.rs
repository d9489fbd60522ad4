use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Document, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

use super::and_any_of;
use crate::domain::{User, UserId};
use crate::tenancy::is_duplicate_key;

pub struct UsersRepo {
    users: Collection<User>,
}

/// Profile fields an update may set; `None` keeps the stored value.
#[derive(Default)]
pub struct UserChanges {
    pub display_name: Option<String>,
    pub avatar_url: Option<Option<String>>,
    pub kind: Option<crate::domain::UserKind>,
    pub custom: Option<serde_json::Value>,
    pub settings: Option<crate::domain::UserSettings>,
}

impl UsersRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { users: db.collection("users") }
    }

    /// Inserts a new user; `Ok(false)` if the id exists.
    pub async fn insert(&self, user: &User) -> Result<bool, mongodb::error::Error> {
        match self.users.insert_one(user).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn get(&self, id: &UserId) -> Result<Option<User>, mongodb::error::Error> {
        self.users.find_one(doc! { "_id": id.as_str() }).await
    }

    pub async fn get_many(&self, ids: &[UserId]) -> Result<Vec<User>, mongodb::error::Error> {
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        self.users.find(doc! { "_id": { "$in": ids } }).await?.try_collect().await
    }

    /// Users whose lower-cased name starts with `prefix`, in (name, id) order after the cursor.
    pub async fn list(
        &self,
        prefix: Option<&str>,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<User>, mongodb::error::Error> {
        // Past the cursor means a name at least the cursor's, which bounds the index range.
        let mut range = Document::new();
        if let Some(lowest) = [prefix, after.map(|(name, _)| name)].into_iter().flatten().max() {
            range.insert("$gte", lowest);
        }
        if let Some(prefix) = prefix {
            range.insert("$lt", format!("{prefix}\u{10ffff}"));
        }
        let mut filter = if range.is_empty() {
            Document::new()
        } else {
            doc! { "name_key": range }
        };
        if let Some((name, id)) = after {
            let past = vec![doc! { "name_key": { "$gt": name } }, doc! { "name_key": name, "_id": { "$gt": id } }];
            filter = and_any_of(filter, past);
        }
        self.users
            .find(filter)
            .sort(doc! { "name_key": 1, "_id": 1 })
            .limit(i64::from(limit))
            .await?
            .try_collect()
            .await
    }

    pub async fn update(
        &self,
        id: &UserId,
        changes: UserChanges,
        now: DateTime<Utc>,
    ) -> Result<Option<User>, mongodb::error::Error> {
        let mut set = doc! { "updated_at": bson::DateTime::from_chrono(now) };
        if let Some(name) = changes.display_name {
            set.insert("name_key", name.to_lowercase());
            set.insert("display_name", name);
        }
        if let Some(avatar) = changes.avatar_url {
            set.insert("avatar_url", avatar);
        }
        if let Some(kind) = changes.kind {
            set.insert("kind", bson::to_bson(&kind)?);
        }
        if let Some(custom) = changes.custom {
            set.insert("custom", bson::to_bson(&custom)?);
        }
        if let Some(settings) = changes.settings {
            set.insert("settings", bson::to_bson(&settings)?);
        }
        self.users
            .find_one_and_update(doc! { "_id": id.as_str() }, doc! { "$set": set })
            .return_document(ReturnDocument::After)
            .await
    }

    /// Sets or clears `deactivated_at`.
    pub async fn set_deactivated(
        &self,
        id: &UserId,
        at: Option<DateTime<Utc>>,
    ) -> Result<Option<User>, mongodb::error::Error> {
        let at = at.map(bson::DateTime::from_chrono);
        self.users
            .find_one_and_update(doc! { "_id": id.as_str() }, doc! { "$set": { "deactivated_at": at } })
            .return_document(ReturnDocument::After)
            .await
    }
}
