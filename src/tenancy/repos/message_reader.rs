//! Stored messages read straight from their BSON bytes, for the reads that return many of them
//! (history pages, replies, search).
//!
//! bson's serde deserializer takes about 2 µs per message: it checks, wraps and dispatches every
//! key and value generically, and a page of 50 spent a quarter of its CPU there. The documents
//! confab writes all have one shape, so this reader walks a document once, matches the field
//! names it knows and builds the `Message` itself (a part left out reads as `Message`'s serde
//! reads it: absent, empty or zero). Whatever it does not expect (an unknown or repeated field,
//! another BSON type, a missing required field, a malformed document) it hands to bson's
//! deserializer, which reads or rejects the document exactly as it always has. So do the nested
//! values a page rarely holds: attachments, AI details, envelopes, edits and non-empty metadata.

use bson::RawDocument;
use serde::Deserialize;
use serde::de::IntoDeserializer;

use crate::domain::{ConversationId, Message, MessageKind, TenantId, UserId};

/// The message in `raw`, as `bson::from_slice` would read it from the shape `Message` is
/// serialized in (stored messages are keyed otherwise: see `message_keys`).
pub(super) fn read(raw: &RawDocument) -> Result<Message, bson::de::Error> {
    match read_known_shape(raw.as_bytes()) {
        Ok(message) => Ok(message),
        Err(Unexpected) => by_serde(raw.as_bytes()),
    }
}

/// What bson's deserializer makes of a stored message, keyed ones put back in the shape
/// `Message` serializes in first.
fn by_serde(bytes: &[u8]) -> Result<Message, bson::de::Error> {
    match bson::from_slice(bytes).ok().and_then(super::message_keys::as_serialized) {
        Some(serialized) => bson::from_document(serialized),
        None => bson::from_slice(bytes),
    }
}

/// The document is not one this reader handles; bson's deserializer decides.
#[derive(Debug)]
struct Unexpected;

type Read<T> = Result<T, Unexpected>;

/// The BSON values confab's messages hold at their top level (and in `reaction_counts`).
#[derive(Clone, Copy)]
enum Value<'a> {
    Str(&'a str),
    /// An embedded document's bytes, its length prefix and terminator included.
    Document(&'a [u8]),
    Array(&'a [u8]),
    Int(i64),
    Date(i64),
    Null,
    /// A UUID (binary subtype 4): a keyed message's `_id`.
    Uuid,
}

/// A document's elements in order.
struct Elements<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Elements<'a> {
    fn of(document: &'a [u8]) -> Read<Self> {
        let bytes = sized(document, 0)?;
        Ok(Self { bytes, at: 4 })
    }

    /// The next key (its bytes: a field name matched against known ASCII names needs no UTF-8
    /// check) and value.
    fn next(&mut self) -> Read<Option<(&'a [u8], Value<'a>)>> {
        let b = self.bytes;
        let last = b.len() - 1;
        if self.at == last {
            return Ok(None);
        }
        let kind = b[self.at];
        let key_at = self.at + 1;
        let key_len = b[key_at..last].iter().position(|&c| c == 0).ok_or(Unexpected)?;
        let key = &b[key_at..key_at + key_len];
        let at = key_at + key_len + 1;
        let (value, size) = match kind {
            0x02 => {
                let text = string(b, at)?;
                (Value::Str(text), 4 + text.len() + 1)
            }
            0x03 => {
                let document = sized(b, at)?;
                (Value::Document(document), document.len())
            }
            0x04 => {
                let array = sized(b, at)?;
                (Value::Array(array), array.len())
            }
            0x05 if fixed::<5>(b, at)? == [16, 0, 0, 0, 4] => (Value::Uuid, 4 + 1 + 16),
            0x09 => (Value::Date(i64::from_le_bytes(fixed(b, at)?)), 8),
            0x0A => (Value::Null, 0),
            0x10 => (Value::Int(i64::from(i32::from_le_bytes(fixed(b, at)?))), 4),
            0x12 => (Value::Int(i64::from_le_bytes(fixed(b, at)?)), 8),
            _ => return Err(Unexpected),
        };
        self.at = at + size;
        if self.at > last {
            return Err(Unexpected);
        }
        Ok(Some((key, value)))
    }
}

fn fixed<const N: usize>(bytes: &[u8], at: usize) -> Read<[u8; N]> {
    bytes.get(at..at + N).and_then(|b| b.try_into().ok()).ok_or(Unexpected)
}

/// The little-endian i32 length prefix at `at`; negative ones are not lengths.
fn length(bytes: &[u8], at: usize) -> Read<usize> {
    usize::try_from(i32::from_le_bytes(fixed(bytes, at)?)).map_err(|_| Unexpected)
}

/// The embedded document (or array) at `at`: its length prefix, elements and terminator.
fn sized(bytes: &[u8], at: usize) -> Read<&[u8]> {
    let len = length(bytes, at)?;
    match bytes.get(at..at + len) {
        Some(document) if len >= 5 && document[len - 1] == 0 => Ok(document),
        _ => Err(Unexpected),
    }
}

/// The UTF-8 string at `at`: a length (terminator included), the bytes, a NUL.
fn string(bytes: &[u8], at: usize) -> Read<&str> {
    let len = length(bytes, at)?;
    match bytes.get(at + 4..at + 4 + len).and_then(<[u8]>::split_last) {
        Some((0, text)) => std::str::from_utf8(text).map_err(|_| Unexpected),
        _ => Err(Unexpected),
    }
}

/// Fills a field once; a repeated one is not this reader's to judge.
fn set<T>(slot: &mut Option<T>, value: Read<T>) -> Read<()> {
    match slot {
        Some(_) => Err(Unexpected),
        None => {
            *slot = Some(value?);
            Ok(())
        }
    }
}

fn text(value: Value) -> Read<String> {
    match value {
        Value::Str(s) => Ok(s.to_owned()),
        _ => Err(Unexpected),
    }
}

fn int(value: Value) -> Read<i64> {
    match value {
        Value::Int(n) => Ok(n),
        _ => Err(Unexpected),
    }
}

fn optional<T>(value: Value, read: impl FnOnce(Value) -> Read<T>) -> Read<Option<T>> {
    match value {
        Value::Null => Ok(None),
        value => read(value).map(Some),
    }
}

fn parsed<T, E>(value: Value, parse: impl FnOnce(&str) -> Result<T, E>) -> Read<T> {
    match value {
        Value::Str(s) => parse(s).map_err(|_| Unexpected),
        _ => Err(Unexpected),
    }
}

fn date(value: Value) -> Read<chrono::DateTime<chrono::Utc>> {
    match value {
        Value::Date(millis) => Ok(bson::DateTime::from_millis(millis).to_chrono()),
        _ => Err(Unexpected),
    }
}

/// A nested value through bson's deserializer (they are rare, and their types are many).
fn nested<T: serde::de::DeserializeOwned>(document: &[u8]) -> Read<T> {
    bson::from_slice(document).map_err(|_| Unexpected)
}

fn array<T>(value: Value, mut read: impl FnMut(Value) -> Read<T>) -> Read<Vec<T>> {
    let Value::Array(bytes) = value else { return Err(Unexpected) };
    let mut items = Elements::of(bytes)?;
    let mut out = Vec::new();
    while let Some((index, item)) = items.next()? {
        // bson checks every key, array indexes included.
        std::str::from_utf8(index).map_err(|_| Unexpected)?;
        out.push(read(item)?);
    }
    Ok(out)
}

fn document<T: serde::de::DeserializeOwned>(value: Value) -> Read<T> {
    match value {
        Value::Document(bytes) => nested(bytes),
        _ => Err(Unexpected),
    }
}

fn documents<T: serde::de::DeserializeOwned>(value: Value) -> Read<Vec<T>> {
    array(value, document)
}

fn metadata(value: Value) -> Read<serde_json::Value> {
    match value {
        Value::Null => Ok(serde_json::Value::Null),
        Value::Document(document) if document.len() == 5 => Ok(serde_json::Value::Object(Default::default())),
        Value::Document(document) => nested(document),
        _ => Err(Unexpected),
    }
}

fn counts(value: Value) -> Read<std::collections::BTreeMap<String, i64>> {
    let Value::Document(bytes) = value else { return Err(Unexpected) };
    let mut elements = Elements::of(bytes)?;
    let mut counts = std::collections::BTreeMap::new();
    while let Some((key, count)) = elements.next()? {
        let key = std::str::from_utf8(key).map_err(|_| Unexpected)?;
        counts.insert(key.to_owned(), int(count)?);
    }
    Ok(counts)
}

fn kind(value: Value) -> Read<MessageKind> {
    parsed(value, |s| MessageKind::deserialize(s.into_deserializer()).map_err(|_: serde::de::value::Error| ()))
}

/// Every field of `Message`, as found so far.
#[derive(Default)]
struct Found {
    /// Search terms messages stored before search blocks still carry; read past, never kept.
    legacy_terms: Option<()>,
    /// A keyed message's `_id` (`message_keys`), its public id being `id`.
    key: Option<()>,
    /// The `_id` of a message stored before keys: its public id (it has no `id`).
    stored_id: Option<String>,
    id: Option<String>,
    tenant_id: Option<TenantId>,
    conversation_id: Option<ConversationId>,
    seq: Option<i64>,
    client_msg_id: Option<String>,
    sender_id: Option<UserId>,
    kind: Option<MessageKind>,
    text: Option<Option<String>>,
    language: Option<Option<String>>,
    attachments: Option<Vec<crate::domain::Attachment>>,
    reply_to: Option<Option<i64>>,
    reply_count: Option<i64>,
    mentions: Option<Vec<UserId>>,
    metadata: Option<serde_json::Value>,
    ai: Option<Option<crate::domain::AiInfo>>,
    reaction_counts: Option<std::collections::BTreeMap<String, i64>>,
    envelope: Option<Option<crate::domain::envelope::Envelope>>,
    edit_history: Option<Vec<crate::domain::EditedText>>,
    created_at: Option<chrono::DateTime<chrono::Utc>>,
    edited_at: Option<Option<chrono::DateTime<chrono::Utc>>>,
    deleted_at: Option<Option<chrono::DateTime<chrono::Utc>>>,
    deleted_by: Option<Option<UserId>>,
}

fn read_known_shape(bytes: &[u8]) -> Read<Message> {
    let mut f = Found::default();
    let mut elements = Elements::of(bytes)?;
    while let Some((key, value)) = elements.next()? {
        match key {
            b"_id" => match value {
                Value::Uuid => set(&mut f.key, Ok(())),
                _ => set(&mut f.stored_id, text(value)),
            },
            b"id" if f.key.is_some() => set(&mut f.id, text(value)),
            b"tenant_id" => set(&mut f.tenant_id, parsed(value, TenantId::parse)),
            b"conversation_id" => set(&mut f.conversation_id, parsed(value, ConversationId::parse)),
            b"seq" => set(&mut f.seq, int(value)),
            b"client_msg_id" => set(&mut f.client_msg_id, text(value)),
            b"sender_id" => set(&mut f.sender_id, parsed(value, UserId::parse)),
            b"kind" => set(&mut f.kind, kind(value)),
            b"text" => set(&mut f.text, optional(value, text)),
            b"language" => set(&mut f.language, optional(value, text)),
            b"attachments" => set(&mut f.attachments, documents(value)),
            b"reply_to" => set(&mut f.reply_to, optional(value, int)),
            b"reply_count" => set(&mut f.reply_count, int(value)),
            b"mentions" => set(&mut f.mentions, array(value, |v| parsed(v, UserId::parse))),
            b"metadata" => set(&mut f.metadata, metadata(value)),
            b"ai" => set(&mut f.ai, optional(value, document)),
            b"reaction_counts" => set(&mut f.reaction_counts, counts(value)),
            b"terms" => set(
                &mut f.legacy_terms,
                array(value, |term| match term {
                    Value::Str(_) => Ok(()),
                    _ => Err(Unexpected),
                })
                .map(drop),
            ),
            b"envelope" => set(&mut f.envelope, optional(value, document)),
            b"edit_history" => set(&mut f.edit_history, documents(value)),
            b"created_at" => set(&mut f.created_at, date(value)),
            b"edited_at" => set(&mut f.edited_at, optional(value, date)),
            b"deleted_at" => set(&mut f.deleted_at, optional(value, date)),
            b"deleted_by" => set(&mut f.deleted_by, optional(value, |v| parsed(v, UserId::parse))),
            _ => Err(Unexpected),
        }?;
    }
    Ok(Message {
        id: f.id.or(f.stored_id).ok_or(Unexpected)?,
        tenant_id: f.tenant_id.ok_or(Unexpected)?,
        conversation_id: f.conversation_id.ok_or(Unexpected)?,
        seq: f.seq.ok_or(Unexpected)?,
        client_msg_id: f.client_msg_id.ok_or(Unexpected)?,
        sender_id: f.sender_id.ok_or(Unexpected)?,
        kind: f.kind.ok_or(Unexpected)?,
        text: f.text.flatten(),
        language: f.language.flatten(),
        attachments: f.attachments.unwrap_or_default(),
        reply_to: f.reply_to.flatten(),
        reply_count: f.reply_count.unwrap_or(0),
        mentions: f.mentions.unwrap_or_default(),
        metadata: f.metadata.unwrap_or_else(|| serde_json::Value::Object(Default::default())),
        ai: f.ai.flatten(),
        reaction_counts: f.reaction_counts.unwrap_or_default(),
        envelope: f.envelope.flatten(),
        edit_history: f.edit_history.unwrap_or_default(),
        created_at: f.created_at.ok_or(Unexpected)?,
        edited_at: f.edited_at.flatten(),
        deleted_at: f.deleted_at.flatten(),
        deleted_by: f.deleted_by.flatten(),
    })
}

#[cfg(test)]
mod tests {
    use bson::{Bson, Document, doc};

    use super::*;
    use crate::domain::{AiInfo, AiRole, Attachment, EditedText, TokenUsage};

    fn draft() -> Message {
        let tenant = TenantId::parse("acme").unwrap();
        let sender = UserId::parse("alice").unwrap();
        let mut message = Message::draft(&tenant, &ConversationId::new(), &sender, MessageKind::Text, "c-1".into());
        message.seq = 7;
        message.text = Some("hello, wörld \u{1F600}".into());
        message
    }

    /// Every optional part present, nested values of every kind.
    fn full() -> Message {
        let mut m = draft();
        m.kind = MessageKind::CodeSnippet;
        m.language = Some("rust".into());
        m.attachments = vec![
            Attachment {
                file_id: Some("f-1".into()),
                url: "https://cdn.example/a.png".into(),
                name: Some("a.png".into()),
                mime: Some("image/png".into()),
                size: Some(1234),
            },
            Attachment { file_id: None, url: "https://example.com/b".into(), name: None, mime: None, size: None },
        ];
        m.reply_to = Some(3);
        m.reply_count = 2;
        m.mentions = vec![UserId::parse("bob").unwrap(), UserId::parse("carol@x").unwrap()];
        m.metadata = serde_json::json!({
            "n": 1, "big": 1_i64 << 40, "f": 1.5, "neg": -3, "t": true, "none": null, "s": "x",
            "list": [1, "two", {"three": 3}, [4]], "deep": {"a": {"b": []}}
        });
        m.ai = Some(AiInfo {
            role: AiRole::Assistant,
            model: Some("m-1".into()),
            provider: None,
            tokens: Some(TokenUsage { prompt: Some(10), completion: Some(20), total: None }),
        });
        m.reaction_counts = [("👍".to_string(), 2), ("tada".to_string(), 0)].into_iter().collect();
        m.envelope = Some(crate::domain::envelope::Envelope {
            v: 1,
            suite: "s".into(),
            sender_device_id: "d-1".into(),
            nonce: "n".into(),
            ciphertext: "c".into(),
            commitment: "k".into(),
            recipients: vec![crate::domain::envelope::Recipient {
                user_id: "bob".into(),
                device_id: "d-2".into(),
                key_id: "k-1".into(),
                enc: "e".into(),
                wrapped_key: "w".into(),
            }],
            signature: "sig".into(),
        });
        m.edit_history = vec![
            EditedText { text: Some("hello".into()), replaced_at: crate::domain::now() },
            EditedText { text: None, replaced_at: crate::domain::now() },
        ];
        m.edited_at = Some(crate::domain::now());
        m.deleted_at = Some(crate::domain::now());
        m.deleted_by = Some(UserId::parse("admin").unwrap());
        m
    }

    fn bytes_of(document: &Document) -> Vec<u8> {
        bson::to_vec(document).unwrap()
    }

    fn stored(message: &Message) -> Document {
        bson::to_document(message).unwrap()
    }

    /// What bson's deserializer makes of `bytes`, to compare with (messages have no `PartialEq`).
    fn by_serde(bytes: &[u8]) -> Result<String, String> {
        super::by_serde(bytes).map(|m| format!("{m:?}")).map_err(|e| e.to_string())
    }

    fn by_reader(bytes: &[u8]) -> Result<String, String> {
        read(RawDocument::from_bytes(bytes).unwrap()).map(|m| format!("{m:?}")).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_what_confab_writes_like_serde_does() {
        let mut without_envelope = stored(&full());
        without_envelope.remove("envelope");
        let mut legacy = stored(&full());
        legacy.insert("terms", vec!["hello", "wörld"]);
        let mut int32_counts = stored(&draft());
        int32_counts.insert("reaction_counts", doc! { "a": 1_i32, "b": 5_i64 });
        int32_counts.insert("reply_count", 4_i32);
        for document in [stored(&draft()), stored(&full()), without_envelope, legacy, int32_counts] {
            let bytes = bytes_of(&document);
            let direct = read_known_shape(&bytes).map(|m| format!("{m:?}"));
            assert_eq!(direct.ok(), Some(by_serde(&bytes).unwrap()), "{document}");
        }
    }

    /// Messages as stored (keyed: `message_keys`) read as their serialized shape does, whether
    /// directly or, when something is unexpected, through serde.
    #[test]
    fn reads_keyed_messages_like_their_serialized_shape() {
        for message in [draft(), full()] {
            let keyed = super::super::message_keys::stored(&message).unwrap();
            let direct = read_known_shape(keyed.as_bytes()).map(|m| format!("{m:?}"));
            assert_eq!(direct.ok(), Some(by_serde(&bytes_of(&stored(&message))).unwrap()));

            let mut odd: Document = bson::from_slice(keyed.as_bytes()).unwrap();
            odd.insert("unknown", 1);
            let mut odd_serialized = stored(&message);
            odd_serialized.insert("unknown", 1);
            assert!(read_known_shape(&bytes_of(&odd)).is_err());
            assert_eq!(by_reader(&bytes_of(&odd)), by_serde(&bytes_of(&odd_serialized)));
        }
    }

    #[test]
    fn leaves_other_shapes_to_serde() {
        let base = stored(&full());
        let changed = |f: &dyn Fn(&mut Document)| {
            let mut d = base.clone();
            f(&mut d);
            d
        };
        let cases = [
            changed(&|d| {
                d.insert("unknown", 1);
            }),
            changed(&|d| {
                d.remove("seq");
            }),
            changed(&|d| {
                d.insert("seq", "7");
            }),
            changed(&|d| {
                d.insert("seq", 7.0);
            }),
            changed(&|d| {
                d.insert("tenant_id", "Not A Slug");
            }),
            changed(&|d| {
                d.insert("kind", "telegram");
            }),
            changed(&|d| {
                d.insert("created_at", "yesterday");
            }),
            changed(&|d| {
                d.insert("mentions", vec![Bson::Int32(1)]);
            }),
            changed(&|d| {
                d.insert("attachments", vec![Bson::Document(doc! { "url": 1 })]);
            }),
            changed(&|d| {
                d.insert("metadata", "flat");
            }),
            changed(&|d| {
                d.insert("_id", bson::oid::ObjectId::new());
            }),
        ];
        for document in cases {
            let bytes = bytes_of(&document);
            assert!(read_known_shape(&bytes).is_err(), "{document}");
            assert_eq!(by_reader(&bytes), by_serde(&bytes), "{document}");
        }
    }

    #[test]
    fn a_repeated_field_goes_to_serde() {
        let seq = bytes_of(&doc! { "seq": 1_i64 });
        let mut twice = bytes_of(&stored(&draft()));
        twice.splice(4..4, seq[4..seq.len() - 1].iter().copied());
        let len = i32::try_from(twice.len()).unwrap();
        twice[..4].copy_from_slice(&len.to_le_bytes());
        assert!(read_known_shape(&twice).is_err());
        assert_eq!(by_reader(&twice), by_serde(&twice));
    }

    /// Damaged documents never panic the reader, and whatever it accepts, serde reads the same.
    #[test]
    fn damaged_bytes_are_never_misread() {
        let keyed = super::super::message_keys::stored(&full()).unwrap().into_bytes();
        for bytes in [bytes_of(&stored(&full())), keyed] {
            damaged_copies_are_never_misread(&bytes);
        }
    }

    fn damaged_copies_are_never_misread(bytes: &[u8]) {
        let mut checked = 0;
        for at in 0..bytes.len() {
            for flip in [0x01_u8, 0x80, 0xff] {
                let mut damaged = bytes.to_vec();
                damaged[at] ^= flip;
                if let Ok(message) = read_known_shape(&damaged) {
                    assert_eq!(Ok(format!("{message:?}")), by_serde(&damaged), "byte {at} ^ {flip:#x}");
                    checked += 1;
                }
            }
            assert!(read_known_shape(&bytes[..at]).is_err());
        }
        assert!(checked > 0);
    }
}
