//! Search words kept per block of a conversation's messages, instead of per message.
//!
//! Without text indexes, word search needs a multikey index on words. Keyed by message, every
//! stored message added one index entry per distinct word (about a dozen for a chat line), and
//! that cost the database as much as the rest of the message's insert. A block holds the words of
//! a run of seqs `from_seq..=to_seq` of one conversation, written once by the indexer
//! (`chat::search_index`) after the messages are stored: a word used by several of its messages
//! is one entry. Blocks of a conversation tile its seqs from 1 up to the conversation's
//! `search_indexed_upto`, and each starts where that mark stood, so its `_id` (conversation and
//! first seq) makes a second writer of the same block fail instead of overlapping it.
//!
//! A block's words are a superset of its live messages' words: search keeps only the messages
//! whose current text holds every word. Edits add words in place; edits and deletes then
//! rebuild the block's words from its messages, so no word of removed text stays stored. Every
//! change raises `version`, and a rebuild writes only if the version is still the one it read.

use std::collections::HashMap;

use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use super::each_its_own;
use crate::domain::{ConversationId, Message, search_terms_of};

/// How far search has indexed a conversation (fields of its document).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchMark {
    /// Seqs up to here are in search blocks; the block ending here is the last.
    pub indexed_upto: i64,
    pub last_seq: i64,
}

/// A run of one conversation's seqs and the words of its messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchBlock {
    /// `{conversation}:{from_seq}`.
    #[serde(rename = "_id")]
    pub id: String,
    pub conversation_id: ConversationId,
    pub from_seq: i64,
    pub to_seq: i64,
    /// The smallest and largest message id in the block (empty without messages): search pages
    /// run newest id first.
    pub oldest_id: String,
    pub newest_id: String,
    #[serde(default)]
    pub terms: Vec<String>,
    #[serde(default)]
    pub version: i64,
}

impl SearchBlock {
    /// The block of `messages`, the stored messages of seqs `from_seq..=to_seq`.
    pub fn of(conversation: &ConversationId, from_seq: i64, to_seq: i64, messages: &[Message]) -> Self {
        let texts = messages.iter().map(|m| (m.id.as_str(), m.text.as_deref().filter(|_| !m.is_deleted())));
        Self::of_texts(conversation, from_seq, to_seq, texts)
    }

    /// The block of seqs `from_seq..=to_seq` from each stored message's id and live text.
    pub fn of_texts<'a>(
        conversation: &ConversationId,
        from_seq: i64,
        to_seq: i64,
        messages: impl Iterator<Item = (&'a str, Option<&'a str>)> + Clone,
    ) -> Self {
        let oldest_id = messages.clone().map(|(id, _)| id).min().unwrap_or_default().to_string();
        let newest_id = messages.clone().map(|(id, _)| id).max().unwrap_or_default().to_string();
        Self {
            id: format!("{conversation}:{from_seq}"),
            conversation_id: conversation.clone(),
            from_seq,
            to_seq,
            oldest_id,
            newest_id,
            terms: search_terms_of(messages.filter_map(|(_, text)| text)),
            version: 0,
        }
    }
}

/// The texts of the live ones of `messages`.
fn live_texts(messages: &[Message]) -> impl Iterator<Item = &str> {
    messages.iter().filter(|m| !m.is_deleted()).filter_map(|m| m.text.as_deref())
}

/// Filter for the block holding `seq` of `conversation` (served by `conversation_id_1_to_seq_1`:
/// edits touch recent seqs, and few blocks end after them).
fn holding_filter(conversation: &ConversationId, seq: i64) -> Document {
    doc! { "conversation_id": conversation.as_str(), "to_seq": { "$gte": seq }, "from_seq": { "$lte": seq } }
}

pub struct SearchBlocksRepo {
    blocks: Collection<SearchBlock>,
    /// Where each conversation's mark (`search_indexed_upto`) is kept.
    conversations: Collection<Document>,
}

impl SearchBlocksRepo {
    pub(in crate::tenancy) fn new(db: &Database) -> Self {
        Self { blocks: db.collection("search_blocks"), conversations: db.collection("conversations") }
    }

    /// Inserts `blocks`; returns those another writer had already stored under the same `_id`,
    /// as stored.
    pub async fn insert(&self, blocks: &[SearchBlock]) -> Result<Vec<SearchBlock>, mongodb::error::Error> {
        if blocks.is_empty() {
            return Ok(Vec::new());
        }
        let Err(e) = self.blocks.insert_many(blocks).ordered(false).await else {
            return Ok(Vec::new());
        };
        let taken: Vec<&str> = match &*e.kind {
            mongodb::error::ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => {
                let errors = failure.write_errors.as_deref().unwrap_or_default();
                if errors.iter().any(|w| w.code != 11000 || w.index >= blocks.len()) {
                    return Err(e);
                }
                errors.iter().map(|w| blocks[w.index].id.as_str()).collect()
            }
            _ => return Err(e),
        };
        self.blocks.find(doc! { "_id": { "$in": taken } }).projection(doc! { "terms": 0 }).await?.try_collect().await
    }

    /// The stored block holding `seq` of `conversation`, if it is indexed yet.
    pub async fn holding(
        &self,
        conversation: &ConversationId,
        seq: i64,
    ) -> Result<Option<SearchBlock>, mongodb::error::Error> {
        self.blocks.find_one(holding_filter(conversation, seq)).await
    }

    /// Adds `terms` to the block holding `seq`, if it is indexed yet.
    pub async fn add_terms(
        &self,
        conversation: &ConversationId,
        seq: i64,
        terms: &[String],
    ) -> Result<(), mongodb::error::Error> {
        let filter = holding_filter(conversation, seq);
        let update = doc! { "$addToSet": { "terms": { "$each": terms } }, "$inc": { "version": 1_i64 } };
        self.blocks.update_one(filter, update).await.map(|_| ())
    }

    /// Replaces `block`'s words with those of `messages` (its messages, read after the block)
    /// unless the block changed since it was read; `Ok(false)` when it did.
    pub async fn rebuild(&self, block: &SearchBlock, messages: &[Message]) -> Result<bool, mongodb::error::Error> {
        let filter = doc! { "_id": &block.id, "version": block.version };
        let update = doc! { "$set": { "terms": search_terms_of(live_texts(messages)) }, "$inc": { "version": 1_i64 } };
        Ok(self.blocks.update_one(filter, update).await?.matched_count == 1)
    }

    /// Blocks of `conversations` whose words include every one of `terms`, without their words.
    pub async fn matching(
        &self,
        terms: &[String],
        conversations: &[ConversationId],
    ) -> Result<Vec<SearchBlock>, mongodb::error::Error> {
        let ids: Vec<&str> = conversations.iter().map(|c| c.as_str()).collect();
        let filter = doc! { "terms": { "$all": terms }, "conversation_id": { "$in": ids } };
        self.blocks.find(filter).projection(doc! { "terms": 0 }).await?.try_collect().await
    }

    /// Each of `ids`' search mark.
    pub async fn marks(
        &self,
        ids: &[ConversationId],
    ) -> Result<HashMap<ConversationId, SearchMark>, mongodb::error::Error> {
        #[derive(Deserialize)]
        struct Marked {
            #[serde(rename = "_id")]
            id: ConversationId,
            last_seq: i64,
            #[serde(default)]
            search_indexed_upto: i64,
        }
        let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        let marks: Vec<Marked> = self
            .conversations
            .clone_with_type::<Marked>()
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "last_seq": 1, "search_indexed_upto": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(marks
            .into_iter()
            .map(|m| (m.id, SearchMark { indexed_upto: m.search_indexed_upto, last_seq: m.last_seq }))
            .collect())
    }

    /// Raises each conversation's mark to at least the given seq, in one statement.
    pub async fn advance_marks(&self, marks: &[(&ConversationId, i64)]) -> Result<(), mongodb::error::Error> {
        if marks.is_empty() {
            return Ok(());
        }
        let (filter, reached) = each_its_own(marks.iter().map(|(id, upto)| (id.as_str(), *upto)).collect());
        let upto = doc! { "$max": [{ "$ifNull": ["$search_indexed_upto", 0_i64] }, reached] };
        self.conversations.update_many(filter, vec![doc! { "$set": { "search_indexed_upto": upto } }]).await.map(|_| ())
    }
}
