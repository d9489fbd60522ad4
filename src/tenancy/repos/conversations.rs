use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Document, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

use super::{and_any_of, each_its_own};
use crate::domain::{Conversation, ConversationId, LastMessage};
use crate::tenancy::is_duplicate_key;

pub struct ConversationsRepo {
    conversations: Collection<Conversation>,
}

/// Profile fields an update may set; `None` keeps the stored value.
#[derive(Default)]
pub struct ConversationChanges {
    pub name: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub custom: Option<serde_json::Value>,
    pub private: Option<bool>,
    pub max_members: Option<u32>,
}

fn time(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_chrono(t)
}

/// Whether recording a conversation's newest message replaces a recorded one of the same seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSeq {
    /// An edit or delete: the message changed since it was recorded.
    Replace,
    /// The message as it was sent: an edit may have been recorded before it (records are written
    /// behind the answers), and must stay.
    Keep,
}

impl SameSeq {
    fn operator(self) -> &'static str {
        match self {
            SameSeq::Replace => "$lte",
            SameSeq::Keep => "$lt",
        }
    }
}

/// Filter and update that record `last` unless a newer message (or, with `SameSeq::Keep`, this
/// one) is already recorded.
fn last_message_update(
    id: &ConversationId,
    last: &LastMessage,
    same: SameSeq,
) -> Result<(Document, Document), bson::ser::Error> {
    let newer = vec![doc! { "last_message": null }, doc! { "last_message.seq": { same.operator(): last.seq } }];
    let filter = and_any_of(doc! { "_id": id.as_str() }, newer);
    let update = doc! {
        "$set": { "last_message": bson::to_bson(last)?, "last_activity_at": time(last.created_at) },
        "$max": { "last_seq": last.seq },
    };
    Ok((filter, update))
}

impl ConversationsRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { conversations: db.collection("conversations") }
    }

    /// Inserts; `Ok(false)` when its `unique_key` exists (a direct conversation of the same pair).
    pub async fn insert(&self, conversation: &Conversation) -> Result<bool, mongodb::error::Error> {
        match self.conversations.insert_one(conversation).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn set_managed_by(&self, id: &ConversationId, manager: &str) -> Result<(), mongodb::error::Error> {
        let update = doc! { "$set": { "managed_by": manager } };
        self.conversations.update_one(doc! { "_id": id.as_str() }, update).await.map(|_| ())
    }

    pub async fn get(&self, id: &ConversationId) -> Result<Option<Conversation>, mongodb::error::Error> {
        self.conversations.find_one(doc! { "_id": id.as_str() }).await
    }

    pub async fn get_by_unique_key(&self, key: &str) -> Result<Option<Conversation>, mongodb::error::Error> {
        self.conversations.find_one(doc! { "unique_key": key }).await
    }

    /// Of the given conversations, those after the cursor in (last activity, id) descending order.
    pub async fn page_by_activity(
        &self,
        ids: &[ConversationId],
        before: Option<(DateTime<Utc>, &str)>,
        limit: u32,
    ) -> Result<Vec<Conversation>, mongodb::error::Error> {
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        let mut filter = doc! { "_id": { "$in": ids } };
        if let Some((at, id)) = before {
            let older = vec![
                doc! { "last_activity_at": { "$lt": time(at) } },
                doc! { "last_activity_at": time(at), "_id": { "$lt": id } },
            ];
            filter = and_any_of(filter, older);
        }
        self.conversations
            .find(filter)
            .sort(doc! { "last_activity_at": -1, "_id": -1 })
            .limit(i64::from(limit))
            .await?
            .try_collect()
            .await
    }

    pub async fn get_many(&self, ids: &[ConversationId]) -> Result<Vec<Conversation>, mongodb::error::Error> {
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        self.conversations.find(doc! { "_id": { "$in": ids } }).await?.try_collect().await
    }

    pub async fn update(
        &self,
        id: &ConversationId,
        changes: ConversationChanges,
        now: DateTime<Utc>,
    ) -> Result<Option<Conversation>, mongodb::error::Error> {
        let mut set = doc! { "updated_at": time(now) };
        if let Some(name) = changes.name {
            set.insert("name", name);
        }
        if let Some(description) = changes.description {
            set.insert("description", description);
        }
        if let Some(avatar) = changes.avatar_url {
            set.insert("avatar_url", avatar);
        }
        if let Some(custom) = changes.custom {
            set.insert("custom", bson::to_bson(&custom)?);
        }
        if let Some(private) = changes.private {
            set.insert("private", private);
        }
        if let Some(max) = changes.max_members {
            set.insert("max_members", i64::from(max));
        }
        self.find_and_update(id, doc! { "$set": set }).await
    }

    async fn find_and_update(
        &self,
        id: &ConversationId,
        update: Document,
    ) -> Result<Option<Conversation>, mongodb::error::Error> {
        self.conversations
            .find_one_and_update(doc! { "_id": id.as_str() }, update)
            .return_document(ReturnDocument::After)
            .await
    }

    /// Reserves a member slot: increments `member_count` only while it is below `max_members`.
    pub async fn reserve_member_slot(
        &self,
        id: &ConversationId,
        max_members: u32,
    ) -> Result<bool, mongodb::error::Error> {
        let result = self
            .conversations
            .update_one(
                doc! { "_id": id.as_str(), "member_count": { "$lt": i64::from(max_members) } },
                doc! { "$inc": { "member_count": 1 } },
            )
            .await?;
        Ok(result.modified_count == 1)
    }

    pub async fn release_member_slot(&self, id: &ConversationId) -> Result<(), mongodb::error::Error> {
        self.conversations
            .update_one(
                doc! { "_id": id.as_str(), "member_count": { "$gt": 0 } },
                doc! { "$inc": { "member_count": -1 } },
            )
            .await
            .map(|_| ())
    }

    /// Counts one owner fewer, unless that would leave none: `Ok(false)` then.
    pub async fn release_owner(&self, id: &ConversationId) -> Result<bool, mongodb::error::Error> {
        let result = self
            .conversations
            .update_one(
                doc! { "_id": id.as_str(), "owner_count": { "$gt": 1 } },
                doc! { "$inc": { "owner_count": -1 } },
            )
            .await?;
        Ok(result.modified_count == 1)
    }

    /// Changes the owner count by `delta` unconditionally.
    pub async fn add_owners(&self, id: &ConversationId, delta: i64) -> Result<(), mongodb::error::Error> {
        self.conversations
            .update_one(doc! { "_id": id.as_str() }, doc! { "$inc": { "owner_count": delta } })
            .await
            .map(|_| ())
    }

    /// Moves the seq counter up to at least `seq`.
    pub async fn advance_seq(&self, id: &ConversationId, seq: i64) -> Result<(), mongodb::error::Error> {
        self.conversations
            .update_one(doc! { "_id": id.as_str() }, doc! { "$max": { "last_seq": seq } })
            .await
            .map(|_| ())
    }

    /// The `last_seq` of each of `ids` that exists.
    pub async fn heads(&self, ids: &[&ConversationId]) -> Result<HashMap<ConversationId, i64>, mongodb::error::Error> {
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(rename = "_id")]
            id: ConversationId,
            last_seq: i64,
        }
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        let heads: Vec<Head> = self
            .conversations
            .clone_with_type::<Head>()
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "last_seq": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(heads.into_iter().map(|h| (h.id, h.last_seq)).collect())
    }

    /// Records `last` as the conversation's newest message and raises its counter, unless a newer
    /// message is recorded (see `SameSeq` for one of the same seq).
    pub async fn record_last_message(
        &self,
        id: &ConversationId,
        last: &LastMessage,
        same: SameSeq,
    ) -> Result<(), mongodb::error::Error> {
        let (filter, update) = last_message_update(id, last, same)?;
        self.conversations.update_one(filter, update).await.map(|_| ())
    }

    /// `record_last_message` (`SameSeq::Keep`) for several conversations in one statement: each
    /// conversation takes its own message out of a `$switch` on `_id`. One statement instead of
    /// one per conversation is what makes a recorder's round cheap for the database.
    pub async fn record_last_messages(
        &self,
        lasts: &[(&ConversationId, &LastMessage)],
    ) -> Result<(), mongodb::error::Error> {
        if let [(id, last)] = lasts {
            return self.record_last_message(id, last, SameSeq::Keep).await;
        }
        let mut newest = Vec::with_capacity(lasts.len());
        for (id, last) in lasts {
            let value = doc! { "seq": last.seq, "message": bson::to_bson(*last)?, "at": time(last.created_at) };
            newest.push((id.as_str(), value));
        }
        // No recorded message counts as seq 0, so any message is newer.
        let newer = doc! { "$lt": [{ "$ifNull": ["$last_message.seq", 0_i64] }, "$_newest.seq"] };
        let (filter, chosen) = each_its_own(newest);
        let pipeline = vec![
            doc! { "$set": { "_newest": chosen } },
            doc! { "$set": {
                "last_message": { "$cond": [newer.clone(), "$_newest.message", "$last_message"] },
                "last_activity_at": { "$cond": [newer, "$_newest.at", "$last_activity_at"] },
                "last_seq": { "$max": ["$last_seq", "$_newest.seq"] },
            } },
            doc! { "$unset": "_newest" },
        ];
        self.conversations.update_many(filter, pipeline).await.map(|_| ())
    }

    /// Adds or removes a pinned seq.
    pub async fn set_pinned(&self, id: &ConversationId, seq: i64, pinned: bool) -> Result<(), mongodb::error::Error> {
        let update = if pinned {
            doc! { "$addToSet": { "pinned_seqs": seq } }
        } else {
            doc! { "$pull": { "pinned_seqs": seq } }
        };
        self.conversations.update_one(doc! { "_id": id.as_str() }, update).await.map(|_| ())
    }
}
