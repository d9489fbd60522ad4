//! Frames a client sends, and how each is answered. Errors use the REST error codes.

use crate::chat::{self, messages::NewMessage};
use crate::domain::ConversationId;
use crate::error::{ApiError, ErrorCode};
use crate::events::LiveEvent;

use super::protocol::{AckResult, ClientFrame, SentMessage, ServerFrame};
use super::relay::catch_up;
use super::session::{Connection, TYPING_THROTTLE};
use super::socket::{CloseReason, Closed, Sender};

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
    session: &mut Sender,
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
        Ok(marks) => ServerFrame::Ack {
            reference,
            result: AckResult {
                last_read_seq: Some(marks.member.last_read_seq),
                last_delivered_seq: Some(marks.member.last_delivered_seq),
                unread_count: Some(marks.unread),
                ..AckResult::default()
            },
        },
        Err(e) => error_frame(reference, &e),
    };
    session.text(reply.to_text()).await.map_err(|_| None)
}

/// An error frame with the REST error code and message.
fn error_frame(reference: Option<String>, error: &ApiError) -> ServerFrame {
    ServerFrame::error(reference, error.code().as_str(), error.to_string())
}

pub(super) async fn send_error(
    session: &mut Sender,
    reference: Option<String>,
    code: ErrorCode,
    message: &str,
) -> Result<(), Closed> {
    session.text(ServerFrame::error(reference, code.as_str(), message).to_text()).await
}

/// Handles one client frame; `Err` closes the socket with the given reason.
pub(super) async fn answer(
    connection: &mut Connection,
    session: &mut Sender,
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
            session.text(ServerFrame::Pong { reference }.to_text()).await.map_err(|_| None)
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
                Ok((message, created)) => ServerFrame::Ack {
                    reference,
                    result: AckResult {
                        created: Some(created),
                        message: Some(SentMessage {
                            conversation_id: message.conversation_id.to_string(),
                            seq: message.seq,
                            id: message.id.to_string(),
                        }),
                        ..AckResult::default()
                    },
                },
                Err(e) => error_frame(reference, &e),
            };
            session.text(reply.to_text()).await.map_err(|_| None)
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
            session.text(ServerFrame::Ack { reference, result: AckResult::default() }.to_text()).await.map_err(|_| None)
        }
    }
}
