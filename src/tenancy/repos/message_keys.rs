//! How a message is keyed where it is stored: its `_id` is derived from its conversation, sender
//! and `client_msg_id`, what makes a send idempotent, so the `_id` index every collection has
//! also refuses a repeated send. A separate unique index did that before, and every insert paid
//! for one more index entry and one more uniqueness claim. The key is a name-based UUID (version
//! 8: the first 16 bytes of the SHA-256 of `conversation/sender/client_msg_id`; neither id holds
//! a `/`, so the name reads one way only): an `_id` is written several times over (document row,
//! `_id` index, oplog), and 16 bytes cost the database less per send than the 60 or so of the
//! name itself. A message found by its key is checked to be that message. The message's public
//! id (UUIDv7) is the `id` field.
//!
//! Messages stored before that have the public id as `_id` and no `id`. Provisioning re-keys them
//! (`rekey_legacy`) and only then drops the old index, which is what still keeps their repeats
//! out until it does.

use futures_util::TryStreamExt;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{self, Binary, Bson, Document, RawDocumentBuf, doc};
use mongodb::options::Hint;
use mongodb::{Collection, Database};
use sha2::{Digest, Sha256};

use crate::domain::{ConversationId, Message, UserId};

/// The unique index on (conversation_id, sender_id, client_msg_id) that kept repeats out before
/// `_id` did; retired once a tenant's messages are re-keyed.
pub(in crate::tenancy) const LEGACY_CLIENT_ID_INDEX: &str = "conversation_id_1_sender_id_1_client_msg_id_1";

/// Messages re-keyed per transaction.
const REKEY_BATCH: i64 = 200;

/// Attempts at one batch that a concurrent write keeps conflicting with.
const REKEY_ATTEMPTS: u32 = 5;

/// The `_id` of the message `sender` sent to `conversation` as `client_msg_id`.
pub(super) fn key(conversation: &ConversationId, sender: &UserId, client_msg_id: &str) -> Binary {
    key_of(conversation.as_str(), sender.as_str(), client_msg_id)
}

fn key_of(conversation: &str, sender: &str, client_msg_id: &str) -> Binary {
    let name = Sha256::new().chain_update(format!("{conversation}/{sender}/{client_msg_id}")).finalize();
    let mut bytes = [0; 16];
    bytes.copy_from_slice(&name[..16]);
    let key = uuid::Builder::from_custom_bytes(bytes).into_uuid();
    Binary { subtype: BinarySubtype::Uuid, bytes: key.as_bytes().to_vec() }
}

/// Whether `message`, found by its key, is the one `client_msg_id` names (two names sharing a
/// key is vanishingly unlikely, and never mistaken for a repeat).
pub(super) fn is_keyed_by(
    message: &Message,
    conversation: &ConversationId,
    sender: &UserId,
    client_msg_id: &str,
) -> bool {
    message.conversation_id == *conversation && message.sender_id == *sender && message.client_msg_id == client_msg_id
}

/// `message` as stored: keyed by `key`, its public id in `id`, every other field as serialized.
pub(super) fn stored(message: &Message) -> Result<RawDocumentBuf, mongodb::error::Error> {
    let fields = bson::to_raw_document_buf(message)?;
    let mut stored = RawDocumentBuf::new();
    stored.append("_id", key(&message.conversation_id, &message.sender_id, &message.client_msg_id));
    stored.append("id", message.id.as_str());
    for field in fields.iter() {
        let (name, value) = field?;
        if name != "_id" {
            stored.append_ref(name, value);
        }
    }
    Ok(stored)
}

/// A stored message in the shape `Message` deserializes from: the public id back in `_id`.
/// `None` when it is in that shape already (stored before re-keying).
pub(super) fn as_serialized(mut stored: Document) -> Option<Document> {
    let id = stored.remove("id")?;
    stored.insert("_id", id);
    Some(stored)
}

/// The message a sender stored before re-keying, found through the index that served the lookup
/// then; `None` once that index is gone, since every message is then found by `_id`.
pub(super) async fn legacy_by_client_id(
    messages: &Collection<RawDocumentBuf>,
    conversation: &ConversationId,
    sender: &UserId,
    client_msg_id: &str,
) -> Result<Option<RawDocumentBuf>, mongodb::error::Error> {
    let filter = doc! {
        "conversation_id": conversation.as_str(), "sender_id": sender.as_str(), "client_msg_id": client_msg_id,
    };
    match messages.find_one(filter).hint(Hint::Name(LEGACY_CLIENT_ID_INDEX.into())).await {
        // BadValue: no index by that name (any more).
        Err(e) if matches!(&*e.kind, mongodb::error::ErrorKind::Command(c) if c.code == 2) => Ok(None),
        found => found,
    }
}

/// Re-keys every message stored with its public id as `_id`, a batch per transaction (a message
/// is removed and inserted again under its key: `_id` cannot change in place), in one pass over
/// the `_id` index. Returns how many. Only while the old index is there: it goes once they all
/// are re-keyed, and nothing since stores the earlier shape.
pub(in crate::tenancy) async fn rekey_legacy(db: &Database) -> Result<u64, mongodb::error::Error> {
    let messages = db.collection::<Document>("messages");
    if !db.list_collection_names().await?.iter().any(|name| name == "messages")
        || !messages.list_index_names().await?.iter().any(|name| name == LEGACY_CLIENT_ID_INDEX)
    {
        return Ok(0);
    }
    let (mut rekeyed, mut after) = (0, Bson::String(String::new()));
    loop {
        let mut attempt = 1;
        let batch = loop {
            match rekey_batch(db, &messages, &after).await {
                Err(e) if attempt < REKEY_ATTEMPTS && e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR) => {
                    attempt += 1;
                }
                batch => break batch?,
            }
        };
        let Some((moved, last)) = batch else { return Ok(rekeyed) };
        rekeyed += moved;
        after = last;
    }
}

/// Re-keys the messages still keyed by their public id among the next `REKEY_BATCH` past `after`
/// in `_id` order; returns how many, and the last `_id` looked at (`None` past the last).
async fn rekey_batch(
    db: &Database,
    messages: &Collection<Document>,
    after: &Bson,
) -> Result<Option<(u64, Bson)>, mongodb::error::Error> {
    let mut session = db.client().start_session().await?;
    session.start_transaction().await?;
    let legacy: Vec<Document> = messages
        .find(doc! { "_id": { "$gt": after } })
        .sort(doc! { "_id": 1 })
        .limit(REKEY_BATCH)
        .session(&mut session)
        .await?
        .stream(&mut session)
        .try_collect()
        .await?;
    let Some(last) = legacy.last().and_then(|m| m.get("_id").cloned()) else {
        session.abort_transaction().await?;
        return Ok(None);
    };
    let legacy: Vec<Document> = legacy.into_iter().filter(|m| !m.contains_key("id")).collect();
    if legacy.is_empty() {
        session.abort_transaction().await?;
        return Ok(Some((0, last)));
    }
    let ids: Vec<Bson> = legacy.iter().filter_map(|m| m.get("_id").cloned()).collect();
    let rekeyed: Vec<Document> = legacy.into_iter().map(rekeyed).collect();
    messages.delete_many(doc! { "_id": { "$in": ids } }).session(&mut session).await?;
    messages.insert_many(&rekeyed).session(&mut session).await?;
    session.commit_transaction().await?;
    Ok(Some((rekeyed.len() as u64, last)))
}

/// A message stored before re-keying, keyed: its `_id` moves to `id`.
fn rekeyed(mut legacy: Document) -> Document {
    let part = |name: &str| legacy.get_str(name).unwrap_or_default().to_string();
    let key = key_of(&part("conversation_id"), &part("sender_id"), &part("client_msg_id"));
    let id = legacy.remove("_id").unwrap_or(Bson::Null);
    let mut keyed = doc! { "_id": key, "id": id };
    keyed.extend(legacy);
    keyed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageKind, TenantId};

    fn message() -> Message {
        let tenant = TenantId::parse("acme").unwrap();
        let sender = UserId::parse("alice").unwrap();
        Message::draft(&tenant, &ConversationId::new(), &sender, MessageKind::Text, "c-1".into())
    }

    #[test]
    fn a_stored_message_is_keyed_by_its_idempotency_key_and_keeps_its_id() {
        let message = message();
        let stored: Document = bson::from_slice(stored(&message).unwrap().as_bytes()).unwrap();
        let Some(Bson::Binary(key)) = stored.get("_id") else { panic!("{stored}") };
        assert_eq!((key.subtype, key.bytes.len()), (BinarySubtype::Uuid, 16));
        assert_eq!(uuid::Uuid::from_slice(&key.bytes).unwrap().get_version_num(), 8);
        let name = format!("{}/alice/c-1", message.conversation_id);
        assert_eq!(key.bytes[..6], Sha256::digest(name)[..6], "named by conversation, sender and client_msg_id");
        let other = super::key(&message.conversation_id, &UserId::parse("bob").unwrap(), "c-1");
        assert_ne!(other.bytes, key.bytes);
        assert_eq!(stored.get_str("id").unwrap(), message.id);
        assert_eq!(stored.keys().filter(|k| *k == "_id").count(), 1);
        assert_eq!(stored.get_str("client_msg_id").unwrap(), "c-1", "the retired index reads it until it goes");

        let back = as_serialized(stored.clone()).unwrap();
        let read: Message = bson::from_document(back).unwrap();
        assert_eq!((read.id, read.seq, read.client_msg_id), (message.id, message.seq, message.client_msg_id));
    }

    #[test]
    fn a_message_found_by_its_key_must_be_the_one_named() {
        let message = message();
        let (alice, bob) = (UserId::parse("alice").unwrap(), UserId::parse("bob").unwrap());
        let conversation = message.conversation_id.clone();
        assert!(is_keyed_by(&message, &conversation, &alice, "c-1"));
        assert!(!is_keyed_by(&message, &ConversationId::new(), &alice, "c-1"));
        assert!(!is_keyed_by(&message, &conversation, &bob, "c-1"));
        assert!(!is_keyed_by(&message, &conversation, &alice, "c-2"));
    }

    #[test]
    fn a_legacy_message_is_rekeyed_with_everything_else_unchanged() {
        let message = message();
        let legacy = bson::to_document(&message).unwrap();
        let keyed = rekeyed(legacy.clone());
        assert_eq!(keyed, bson::from_slice::<Document>(stored(&message).unwrap().as_bytes()).unwrap());
        assert_eq!(as_serialized(keyed), Some(legacy));
        assert_eq!(as_serialized(bson::to_document(&message).unwrap()), None, "already in that shape");
    }
}
