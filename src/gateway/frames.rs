//! Frames a client sends, and how each is answered. Errors use the REST error codes.

use std::collections::HashMap;

use actix_ws::{CloseReason, Session};
use serde::Deserialize;

use crate::chat::{self, messages::NewMessage};
use crate::domain::ConversationId;
use crate::error::{ApiError, ErrorCode};
use crate::events::LiveEvent;
use crate::http::SendMessageRequest;

use super::session::{Connection, TYPING_THROTTLE, catch_up};

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    /// What the client has seen: conversation id -> last seq.
    Resume {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversations: HashMap<String, i64>,
    },
    Ping {
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    /// Sends a message, with the same rules and idempotency as `POST .../messages`.
    Send {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation_id: String,
        message: Box<SendMessageRequest>,
    },
    /// Started (`typing: true`) or stopped typing; throttled, and expiring on the receivers' side.
    Typing { conversation_id: String, typing: bool },
    /// Moves the read mark (`read`) or the delivered mark (`delivered`) forward.
    Read {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation_id: String,
        seq: i64,
    },
    Delivered {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation_id: String,
        seq: i64,
    },
}

/// Publishes a typing event for a conversation the socket follows; `typing: true` at most once
/// per `TYPING_THROTTLE`. Unknown conversations are ignored (typing is best effort, unacked).
async fn typing_event(connection: &mut Connection, conversation_id: &str, typing: bool) {
    let Ok(id) = ConversationId::parse(conversation_id) else { return };
    if !connection.delivered.contains_key(&id) {
        return;
    }
    let now = std::time::Instant::now();
    if typing {
        if connection.typing_sent.get(&id).is_some_and(|at| now.duration_since(*at) < TYPING_THROTTLE) {
            return;
        }
        connection.typing_sent.insert(id.clone(), now);
    } else {
        connection.typing_sent.remove(&id);
    }
    let event = LiveEvent::Typing { conversation_id: id, user_id: connection.caller.user_id().clone(), typing };
    connection.state.redis.publish_event(&connection.caller.tenant.id, &event).await;
}

/// Moves a read or delivered mark and acks with the new marks.
async fn mark(
    connection: &Connection,
    session: &mut Session,
    reference: Option<String>,
    conversation_id: &str,
    seq: i64,
    read: bool,
) -> Result<(), Option<CloseReason>> {
    let marked = async {
        let id = ConversationId::parse(conversation_id).map_err(|e| ApiError::validation("conversation_id", e.0))?;
        chat::receipts::mark(&connection.state, &connection.caller, &id, seq, read).await
    }
    .await;
    let reply = match marked {
        Ok(marks) => serde_json::json!({
            "type": "ack", "ref": reference,
            "last_read_seq": marks.member.last_read_seq, "last_delivered_seq": marks.member.last_delivered_seq,
            "unread_count": marks.unread,
        }),
        Err(e) => error_frame(reference, &e),
    };
    session.text(reply.to_string()).await.map_err(|_| None)
}

/// An error frame with the REST error code and message.
fn error_frame(reference: Option<String>, error: &ApiError) -> serde_json::Value {
    serde_json::json!({ "type": "error", "ref": reference, "error": { "code": error.code().as_str(), "message": error.to_string() } })
}

pub(super) async fn send_error(
    session: &mut Session,
    reference: Option<String>,
    code: ErrorCode,
    message: &str,
) -> Result<(), actix_ws::Closed> {
    let frame = serde_json::json!({
        "type": "error", "ref": reference, "error": { "code": code.as_str(), "message": message },
    });
    session.text(frame.to_string()).await
}

/// Handles one client frame; `Err` closes the socket with the given reason.
pub(super) async fn answer(
    connection: &mut Connection,
    session: &mut Session,
    text: &str,
) -> Result<(), Option<CloseReason>> {
    let frame = match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => frame,
        Err(e) => {
            let reference =
                serde_json::from_str::<serde_json::Value>(text).ok().and_then(|v| v["ref"].as_str().map(String::from));
            return send_error(
                session,
                reference,
                ErrorCode::InvalidRequest,
                &format!("unknown or malformed frame: {e}"),
            )
            .await
            .map_err(|_| None);
        }
    };
    match frame {
        ClientFrame::Ping { reference } => {
            session.text(serde_json::json!({ "type": "pong", "ref": reference }).to_string()).await.map_err(|_| None)
        }
        ClientFrame::Send { reference, conversation_id, message } => {
            let sent = async {
                let id = ConversationId::parse(&conversation_id)
                    .map_err(|e| ApiError::validation("conversation_id", e.0))?;
                let new = NewMessage::try_from(*message)?;
                chat::messages::send(&connection.state, &connection.caller, &id, new).await
            }
            .await;
            let reply = match sent {
                Ok((message, created)) => serde_json::json!({
                    "type": "ack", "ref": reference, "created": created,
                    "message": { "conversation_id": message.conversation_id.as_str(), "seq": message.seq, "id": message.id },
                }),
                Err(e) => error_frame(reference, &e),
            };
            session.text(reply.to_string()).await.map_err(|_| None)
        }
        ClientFrame::Typing { conversation_id, typing } => {
            typing_event(connection, &conversation_id, typing).await;
            Ok(())
        }
        ClientFrame::Read { reference, conversation_id, seq } => {
            mark(connection, session, reference, &conversation_id, seq, true).await
        }
        ClientFrame::Delivered { reference, conversation_id, seq } => {
            mark(connection, session, reference, &conversation_id, seq, false).await
        }
        ClientFrame::Resume { reference, conversations } => {
            for (raw, seen) in conversations {
                let Ok(id) = ConversationId::parse(&raw) else { continue };
                if !connection.delivered.contains_key(&id) || seen < 0 {
                    continue;
                }
                let head = connection.delivered[&id];
                connection.delivered.insert(id.clone(), seen.min(head));
                catch_up(connection, session, &id, head).await.map_err(|_| None)?;
            }
            session.text(serde_json::json!({ "type": "ack", "ref": reference }).to_string()).await.map_err(|_| None)
        }
    }
}
