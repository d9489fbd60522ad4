use chrono::{DateTime, Utc};
use mongodb::bson::{self, RawDocumentBuf, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Cursor, Database};

use super::message_keys;

use crate::domain::{ConversationId, EditedText, Message, UserId};

/// Edits kept per message.
const EDIT_HISTORY_KEPT: i32 = 10;

/// Messages are read by `message_reader` and written in their stored shape (`message_keys`), so
/// the collection holds raw documents.
pub struct MessagesRepo {
    messages: Collection<RawDocumentBuf>,
}

/// What an ordered insert of several messages did: the first `stored` are in, and the one after
/// them, if any, failed for `failure`; the rest were not attempted.
pub struct InsertedRun {
    pub stored: usize,
    pub failure: Option<RunFailure>,
}

pub enum RunFailure {
    /// Another message holds this seq already.
    SeqTaken,
    /// The sender already sent this `client_msg_id`: here is the original.
    Duplicate(Box<Message>),
}

/// Every message the cursor finds, each read by `message_reader` (much cheaper than the cursor's
/// own serde decoding).
async fn read_all(mut cursor: Cursor<RawDocumentBuf>) -> Result<Vec<Message>, mongodb::error::Error> {
    let mut messages = Vec::new();
    while cursor.advance().await? {
        messages.push(super::message_reader::read(cursor.current())?);
    }
    Ok(messages)
}

fn read_one(found: Option<RawDocumentBuf>) -> Result<Option<Message>, mongodb::error::Error> {
    Ok(found.map(|raw| super::message_reader::read(&raw)).transpose()?)
}

fn time(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_chrono(t)
}

impl MessagesRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { messages: db.collection("messages") }
    }

    /// Inserts in order, stopping at the first message whose seq or `client_msg_id` is taken, so
    /// what is stored of each conversation is a run without holes.
    pub async fn insert_run(&self, messages: &[&Message]) -> Result<InsertedRun, mongodb::error::Error> {
        use mongodb::error::ErrorKind;
        let stored = messages.iter().map(|m| message_keys::stored(m)).collect::<Result<Vec<_>, _>>()?;
        let Err(e) = self.messages.insert_many(stored).ordered(true).await else {
            return Ok(InsertedRun { stored: messages.len(), failure: None });
        };
        let first = match &*e.kind {
            ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => {
                failure.write_errors.as_ref().and_then(|errors| errors.iter().min_by_key(|w| w.index))
            }
            _ => None,
        };
        let Some(first) = first.filter(|w| w.code == 11000 && w.index < messages.len()) else {
            return Err(e);
        };
        let failed = messages[first.index];
        let failure = match self.by_client_id(&failed.conversation_id, &failed.sender_id, &failed.client_msg_id).await?
        {
            Some(original) => RunFailure::Duplicate(Box::new(original)),
            None => RunFailure::SeqTaken,
        };
        Ok(InsertedRun { stored: first.index, failure: Some(failure) })
    }

    pub async fn by_client_id(
        &self,
        conversation: &ConversationId,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<Message>, mongodb::error::Error> {
        let key = message_keys::key(conversation, sender, client_msg_id);
        if let Some(found) = read_one(self.messages.find_one(doc! { "_id": key }).await?)? {
            return Ok(message_keys::is_keyed_by(&found, conversation, sender, client_msg_id).then_some(found));
        }
        read_one(message_keys::legacy_by_client_id(&self.messages, conversation, sender, client_msg_id).await?)
    }

    pub async fn get(&self, conversation: &ConversationId, seq: i64) -> Result<Option<Message>, mongodb::error::Error> {
        read_one(self.messages.find_one(doc! { "conversation_id": conversation.as_str(), "seq": seq }).await?)
    }

    /// Messages with `from <= seq <= to`, ascending.
    pub async fn range(
        &self,
        conversation: &ConversationId,
        from: i64,
        to: i64,
    ) -> Result<Vec<Message>, mongodb::error::Error> {
        if from > to {
            return Ok(Vec::new());
        }
        let cursor = self
            .messages
            .find(doc! { "conversation_id": conversation.as_str(), "seq": { "$gte": from, "$lte": to } })
            .sort(doc! { "conversation_id": 1, "seq": 1 })
            .await?;
        read_all(cursor).await
    }

    /// The newest seq stored past `counted`, or `counted` when there is none: a conversation's
    /// counter is recorded behind its sends, so what it says may be short of what is stored.
    /// Reads only the index entries past the counter.
    pub async fn newest_seq_past(
        &self,
        conversation: &ConversationId,
        counted: i64,
    ) -> Result<i64, mongodb::error::Error> {
        #[derive(serde::Deserialize)]
        struct Seq {
            seq: i64,
        }
        let newest = self
            .messages
            .clone_with_type::<Seq>()
            .find_one(doc! { "conversation_id": conversation.as_str(), "seq": { "$gt": counted } })
            .sort(doc! { "conversation_id": -1, "seq": -1 })
            .projection(doc! { "_id": 0, "seq": 1 })
            .await?;
        Ok(newest.map_or(counted, |n| n.seq.max(counted)))
    }

    /// The newest `n` messages, ascending.
    pub async fn latest(&self, conversation: &ConversationId, n: i64) -> Result<Vec<Message>, mongodb::error::Error> {
        let cursor = self
            .messages
            .find(doc! { "conversation_id": conversation.as_str() })
            .sort(doc! { "conversation_id": -1, "seq": -1 })
            .limit(n)
            .await?;
        let mut newest = read_all(cursor).await?;
        newest.reverse();
        Ok(newest)
    }

    pub async fn get_seqs(
        &self,
        conversation: &ConversationId,
        seqs: &[i64],
    ) -> Result<Vec<Message>, mongodb::error::Error> {
        let cursor = self
            .messages
            .find(doc! { "conversation_id": conversation.as_str(), "seq": { "$in": seqs } })
            .sort(doc! { "conversation_id": 1, "seq": 1 })
            .await?;
        read_all(cursor).await
    }

    /// Replies to `parent` with seq above `after`, ascending, from the `replies_1` index (which
    /// holds replies only: `parent` is a seq, so at least 1).
    pub async fn replies(
        &self,
        conversation: &ConversationId,
        parent: i64,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Message>, mongodb::error::Error> {
        let cursor = self
            .messages
            .find(doc! { "conversation_id": conversation.as_str(), "reply_to": parent, "seq": { "$gt": after } })
            .sort(doc! { "conversation_id": 1, "reply_to": 1, "seq": 1 })
            .limit(i64::from(limit))
            .await?;
        read_all(cursor).await
    }

    pub async fn add_reply_count(
        &self,
        conversation: &ConversationId,
        parent: i64,
        delta: i64,
    ) -> Result<(), mongodb::error::Error> {
        self.messages
            .update_one(
                doc! { "conversation_id": conversation.as_str(), "seq": parent },
                doc! { "$inc": { "reply_count": delta } },
            )
            .await
            .map(|_| ())
    }

    /// Replaces the text of a live message, keeping the previous text in `edit_history`.
    pub async fn edit(
        &self,
        conversation: &ConversationId,
        seq: i64,
        previous: EditedText,
        text: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<Message>, mongodb::error::Error> {
        self.messages
            .find_one_and_update(
                doc! { "conversation_id": conversation.as_str(), "seq": seq, "deleted_at": null },
                doc! {
                    "$set": { "text": text, "edited_at": time(at) },
                    "$push": { "edit_history": { "$each": [bson::to_bson(&previous)?], "$slice": -EDIT_HISTORY_KEPT } },
                },
            )
            .return_document(ReturnDocument::After)
            .await
            .and_then(read_one)
    }

    /// Replaces the envelope of a live E2E message.
    pub async fn edit_envelope(
        &self,
        conversation: &ConversationId,
        seq: i64,
        envelope: &crate::domain::envelope::Envelope,
        at: DateTime<Utc>,
    ) -> Result<Option<Message>, mongodb::error::Error> {
        self.messages
            .find_one_and_update(
                doc! { "conversation_id": conversation.as_str(), "seq": seq, "deleted_at": null },
                doc! { "$set": { "envelope": bson::to_bson(envelope)?, "edited_at": time(at) } },
            )
            .return_document(ReturnDocument::After)
            .await
            .and_then(read_one)
    }

    /// Tombstones a message: content removed, seq kept. `None` if it was already deleted.
    pub async fn soft_delete(
        &self,
        conversation: &ConversationId,
        seq: i64,
        by: &UserId,
        at: DateTime<Utc>,
    ) -> Result<Option<Message>, mongodb::error::Error> {
        self.messages
            .find_one_and_update(
                doc! { "conversation_id": conversation.as_str(), "seq": seq, "deleted_at": null },
                doc! { "$set": {
                    "deleted_at": time(at), "deleted_by": by.as_str(), "text": null, "language": null,
                    "attachments": [], "mentions": [], "metadata": {}, "ai": null, "envelope": null,
                    "edit_history": [], "reaction_counts": {},
                } },
            )
            .return_document(ReturnDocument::After)
            .await
            .and_then(read_one)
    }

    /// Moves a live message's count of `emoji` by `delta`; `false` if the message is deleted (or
    /// missing): a delete clears the counts, and no reaction may move them afterwards.
    pub async fn add_reaction_count(
        &self,
        conversation: &ConversationId,
        seq: i64,
        emoji: &str,
        delta: i64,
    ) -> Result<bool, mongodb::error::Error> {
        self.messages
            .update_one(
                doc! { "conversation_id": conversation.as_str(), "seq": seq, "deleted_at": null },
                doc! { "$inc": { format!("reaction_counts.{emoji}"): delta } },
            )
            .await
            .map(|updated| updated.matched_count == 1)
    }

    /// Unread messages for `user`: after `after`, up to `upto`, not the user's own, not deleted.
    pub async fn count_unread(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        after: i64,
        upto: i64,
    ) -> Result<u64, mongodb::error::Error> {
        if after >= upto {
            return Ok(0);
        }
        self.messages
            .count_documents(doc! {
                "conversation_id": conversation.as_str(),
                "seq": { "$gt": after, "$lte": upto },
                "sender_id": { "$ne": user.as_str() },
                "deleted_at": null,
            })
            .await
    }
}
