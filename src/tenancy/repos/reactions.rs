use futures_util::TryStreamExt;
use mongodb::bson::doc;
use mongodb::{Collection, Database};

use crate::domain::{ConversationId, Reaction, UserId};
use crate::tenancy::is_duplicate_key;

pub struct ReactionsRepo {
    reactions: Collection<Reaction>,
}

impl ReactionsRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { reactions: db.collection("reactions") }
    }

    /// Records the reaction; `Ok(false)` if the user already reacted with this emoji.
    pub async fn add(&self, reaction: &Reaction) -> Result<bool, mongodb::error::Error> {
        match self.reactions.insert_one(reaction).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes the reaction; `Ok(false)` if there was none.
    pub async fn remove(
        &self,
        conversation: &ConversationId,
        seq: i64,
        emoji: &str,
        user: &UserId,
    ) -> Result<bool, mongodb::error::Error> {
        let filter =
            doc! { "conversation_id": conversation.as_str(), "seq": seq, "emoji": emoji, "user_id": user.as_str() };
        Ok(self.reactions.delete_one(filter).await?.deleted_count == 1)
    }

    /// The user's own reactions on messages `from..=to`, as (seq, emoji).
    pub async fn mine(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, String)>, mongodb::error::Error> {
        let found: Vec<Reaction> = self
            .reactions
            .find(doc! { "conversation_id": conversation.as_str(), "user_id": user.as_str(), "seq": { "$gte": from, "$lte": to } })
            .await?
            .try_collect()
            .await?;
        Ok(found.into_iter().map(|r| (r.seq, r.emoji)).collect())
    }

    pub async fn remove_all_for_message(
        &self,
        conversation: &ConversationId,
        seq: i64,
    ) -> Result<(), mongodb::error::Error> {
        self.reactions.delete_many(doc! { "conversation_id": conversation.as_str(), "seq": seq }).await.map(|_| ())
    }
}
