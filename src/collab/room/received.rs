//! A client's y-websocket messages as the room takes them: decoded by the client's socket task,
//! so a busy file's messages are parsed beside the room applying the ones before them.

use yrs::sync::{AwarenessUpdate, Message, MessageReader, SyncMessage};
use yrs::updates::decoder::DecoderV1;

use super::super::documents;

/// One y-websocket message from a client, decoded by its socket before it reaches the room, so a
/// busy file's messages are parsed beside the room applying the ones before them.
pub enum Received {
    SyncStep1(yrs::StateVector),
    /// An edit (sync step 2 or update): as it came (to relay), and decoded (`None`: malformed).
    Update(Vec<u8>, Option<documents::Decoded>),
    Awareness(AwarenessUpdate),
    AwarenessQuery,
    /// Auth and custom messages: ignored.
    Other,
    /// Not a y-websocket message; the rest of its frame is not read.
    Invalid,
}

impl Received {
    /// Decodes the messages of one binary frame (a frame may carry several) onto `into`.
    pub fn decode_frame(frame: &[u8], into: &mut Vec<Received>) {
        let mut decoder = DecoderV1::from(frame);
        for message in MessageReader::new(&mut decoder) {
            into.push(match message {
                Ok(Message::Sync(SyncMessage::SyncStep1(sv))) => Received::SyncStep1(sv),
                Ok(Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update))) => {
                    let decoded = documents::decode(&update);
                    Received::Update(update, decoded)
                }
                Ok(Message::Awareness(update)) => Received::Awareness(update),
                Ok(Message::AwarenessQuery) => Received::AwarenessQuery,
                Ok(Message::Auth(_) | Message::Custom(..)) => Received::Other,
                Err(_) => {
                    into.push(Received::Invalid);
                    return;
                }
            });
        }
    }
}
