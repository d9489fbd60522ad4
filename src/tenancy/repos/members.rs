use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

use crate::domain::{ConversationId, Member, MemberRole, UserId};
use crate::tenancy::is_duplicate_key;

pub struct MembersRepo {
    members: Collection<Member>,
}

impl MembersRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { members: db.collection("members") }
    }

    /// Inserts; `Ok(false)` if a membership (or ban) record exists.
    pub async fn insert(&self, member: &Member) -> Result<bool, mongodb::error::Error> {
        match self.members.insert_one(member).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The membership or ban record of `user` in `conversation`.
    pub async fn get(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<Option<Member>, mongodb::error::Error> {
        self.members.find_one(doc! { "_id": Member::key(conversation, user) }).await
    }

    /// The membership or ban records of these (conversation, user) pairs that exist.
    pub async fn get_many(&self, pairs: &[(ConversationId, UserId)]) -> Result<Vec<Member>, mongodb::error::Error> {
        let keys: Vec<String> = pairs.iter().map(|(conversation, user)| Member::key(conversation, user)).collect();
        self.members.find(doc! { "_id": { "$in": keys } }).await?.try_collect().await
    }

    /// Active members in user-id order after `after`.
    pub async fn list(
        &self,
        conversation: &ConversationId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Member>, mongodb::error::Error> {
        let mut filter = doc! { "conversation_id": conversation.as_str(), "banned_at": null };
        if let Some(after) = after {
            filter.insert("user_id", doc! { "$gt": after });
        }
        self.members
            .find(filter)
            .sort(doc! { "conversation_id": 1, "user_id": 1 })
            .limit(i64::from(limit))
            .await?
            .try_collect()
            .await
    }

    /// Every active membership of `user`.
    pub async fn of_user(&self, user: &UserId) -> Result<Vec<Member>, mongodb::error::Error> {
        self.members
            .find(doc! { "user_id": user.as_str(), "banned_at": null })
            .sort(doc! { "user_id": 1, "conversation_id": 1 })
            .await?
            .try_collect()
            .await
    }

    /// Whether `user` is an active member of any of `conversations`.
    pub async fn member_of_any(
        &self,
        user: &UserId,
        conversations: &[ConversationId],
    ) -> Result<bool, mongodb::error::Error> {
        let ids: Vec<&str> = conversations.iter().map(ConversationId::as_str).collect();
        let filter = doc! { "user_id": user.as_str(), "conversation_id": { "$in": ids }, "banned_at": null };
        Ok(self.members.find_one(filter).await?.is_some())
    }

    /// Changes the role if it still is `from`; `None` if it is not (or the member is gone).
    pub async fn set_role(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        from: MemberRole,
        to: MemberRole,
    ) -> Result<Option<Member>, mongodb::error::Error> {
        self.members
            .find_one_and_update(
                doc! { "_id": Member::key(conversation, user), "banned_at": null, "role": bson::to_bson(&from)? },
                doc! { "$set": { "role": bson::to_bson(&to)? } },
            )
            .return_document(ReturnDocument::After)
            .await
    }

    pub async fn set_preferences(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        muted: Option<bool>,
        pinned: Option<bool>,
    ) -> Result<Option<Member>, mongodb::error::Error> {
        let mut set = doc! {};
        if let Some(muted) = muted {
            set.insert("muted", muted);
        }
        if let Some(pinned) = pinned {
            set.insert("pinned", pinned);
        }
        if set.is_empty() {
            return self.get(conversation, user).await;
        }
        self.update(conversation, user, doc! { "$set": set }).await
    }

    /// Moves the read (and so the delivered) mark forward, never back.
    pub async fn mark_read(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        seq: i64,
    ) -> Result<Option<Member>, mongodb::error::Error> {
        self.update(conversation, user, doc! { "$max": { "last_read_seq": seq, "last_delivered_seq": seq } }).await
    }

    pub async fn mark_delivered(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        seq: i64,
    ) -> Result<Option<Member>, mongodb::error::Error> {
        self.update(conversation, user, doc! { "$max": { "last_delivered_seq": seq } }).await
    }

    async fn update(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        update: bson::Document,
    ) -> Result<Option<Member>, mongodb::error::Error> {
        self.members
            .find_one_and_update(doc! { "_id": Member::key(conversation, user), "banned_at": null }, update)
            .return_document(ReturnDocument::After)
            .await
    }

    /// Removes an active membership (only while its role is `role`, when given); `Ok(false)` if
    /// there was none.
    pub async fn remove(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        role: Option<MemberRole>,
    ) -> Result<bool, mongodb::error::Error> {
        let mut filter = doc! { "_id": Member::key(conversation, user), "banned_at": null };
        if let Some(role) = role {
            filter.insert("role", bson::to_bson(&role)?);
        }
        Ok(self.members.delete_one(filter).await?.deleted_count == 1)
    }

    /// Turns the user's record into a ban (creating one if they were not a member).
    /// Returns the active membership it ended, if any.
    pub async fn ban(&self, member: &Member, at: DateTime<Utc>) -> Result<Option<Member>, mongodb::error::Error> {
        let before = self
            .members
            .find_one_and_update(
                doc! { "_id": &member.id },
                doc! {
                    "$set": { "banned_at": bson::DateTime::from_chrono(at), "role": "member" },
                    "$setOnInsert": {
                        "tenant_id": member.tenant_id.as_str(),
                        "conversation_id": member.conversation_id.as_str(),
                        "user_id": member.user_id.as_str(),
                        "joined_at": bson::DateTime::from_chrono(member.joined_at),
                        "muted": false, "pinned": false, "last_read_seq": 0_i64, "last_delivered_seq": 0_i64,
                    },
                },
            )
            .upsert(true)
            .return_document(ReturnDocument::Before)
            .await?;
        Ok(before.filter(|m| m.is_active()))
    }

    /// Lifts a ban; `Ok(false)` if there was none.
    pub async fn unban(&self, conversation: &ConversationId, user: &UserId) -> Result<bool, mongodb::error::Error> {
        let deleted = self
            .members
            .delete_one(doc! { "_id": Member::key(conversation, user), "banned_at": { "$ne": null } })
            .await?;
        Ok(deleted.deleted_count == 1)
    }
}
