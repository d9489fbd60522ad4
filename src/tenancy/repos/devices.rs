use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

use crate::domain::{Device, DeviceKey, KeyEvent, UserId};
use crate::tenancy::is_duplicate_key;

pub struct DevicesRepo {
    devices: Collection<Device>,
    events: Collection<KeyEvent>,
}

impl DevicesRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { devices: db.collection("devices"), events: db.collection("key_events") }
    }

    /// Registers a device; `Ok(false)` if the user already has one with this id.
    pub async fn insert(&self, device: &Device) -> Result<bool, mongodb::error::Error> {
        match self.devices.insert_one(device).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes a registration that must not stand (see `e2e::devices::register`).
    pub async fn delete(&self, id: &str) -> Result<(), mongodb::error::Error> {
        self.devices.delete_one(doc! { "_id": id }).await.map(|_| ())
    }

    pub async fn get(&self, user: &UserId, device_id: &str) -> Result<Option<Device>, mongodb::error::Error> {
        self.devices.find_one(doc! { "_id": Device::key(user, device_id) }).await
    }

    /// Active devices of the given users.
    pub async fn active_of(&self, users: &[UserId]) -> Result<Vec<Device>, mongodb::error::Error> {
        let users: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
        self.devices
            .find(doc! { "user_id": { "$in": users }, "revoked_at": null })
            .sort(doc! { "user_id": 1, "device_id": 1 })
            .await?
            .try_collect()
            .await
    }

    pub async fn count_active(&self, user: &UserId) -> Result<u64, mongodb::error::Error> {
        self.devices.count_documents(doc! { "user_id": user.as_str(), "revoked_at": null }).await
    }

    /// Retires the current key and adds `key` as current, if `expected_current` is still current.
    pub async fn rotate(
        &self,
        user: &UserId,
        device_id: &str,
        expected_current: &str,
        key: &DeviceKey,
    ) -> Result<Option<Device>, mongodb::error::Error> {
        let id = Device::key(user, device_id);
        let retired = self
            .devices
            .update_one(
                doc! { "_id": &id, "revoked_at": null, "keys": { "$elemMatch": { "key_id": expected_current, "status": "current" } } },
                doc! { "$set": { "keys.$.status": "retired" } },
            )
            .await?;
        if retired.modified_count != 1 {
            return Ok(None);
        }
        self.devices
            .find_one_and_update(doc! { "_id": &id }, doc! { "$push": { "keys": bson::to_bson(key)? } })
            .return_document(ReturnDocument::After)
            .await
    }

    pub async fn revoke(
        &self,
        user: &UserId,
        device_id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, mongodb::error::Error> {
        let result = self
            .devices
            .update_one(
                doc! { "_id": Device::key(user, device_id), "revoked_at": null },
                doc! { "$set": { "revoked_at": bson::DateTime::from_chrono(at) } },
            )
            .await?;
        Ok(result.modified_count == 1)
    }

    pub async fn append_event(&self, event: &KeyEvent) -> Result<(), mongodb::error::Error> {
        self.events.insert_one(event).await.map(|_| ())
    }

    /// A user's key events, oldest first, after the cursor id.
    pub async fn events(
        &self,
        user: &UserId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<KeyEvent>, mongodb::error::Error> {
        let mut filter = doc! { "user_id": user.as_str() };
        if let Some(after) = after {
            filter.insert("_id", doc! { "$gt": after });
        }
        self.events
            .find(filter)
            .sort(doc! { "user_id": 1, "_id": 1 })
            .limit(i64::from(limit))
            .await?
            .try_collect()
            .await
    }
}
