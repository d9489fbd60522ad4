//! The WebSocket protocol of `GET /v1/ws`, as types: every frame a client may send and every
//! frame the server sends. JSON text frames tagged by `type`. `openapi/asyncapi.yaml` is
//! generated from these types (`confab asyncapi`), so the document cannot drift from the code.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{ItemKind, MemberRole};
use crate::http::{MessageView, SendMessageRequest};

/// A frame from the client. Requests carry a `ref` that comes back on the `ack`, `pong` or
/// `error` answering them.
#[derive(Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// What the client has seen, conversation id -> last seq: the server replays what follows
    /// (or announces a `gap`), then acks.
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
    /// Started (`typing: true`) or stopped typing; not acked, throttled, expiring for receivers.
    Typing { conversation_id: String, typing: bool },
    /// Moves the caller's read mark forward (monotonic).
    Read {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation_id: String,
        seq: i64,
    },
    /// Moves the caller's delivered mark forward (monotonic).
    Delivered {
        #[serde(rename = "ref")]
        reference: Option<String>,
        conversation_id: String,
        seq: i64,
    },
}

/// A conversation the socket follows and its newest seq when the socket opened.
#[derive(Serialize, ToSchema)]
pub struct ConversationHead {
    pub id: String,
    pub last_seq: i64,
}

/// Where a message sent over the socket was stored.
#[derive(Serialize, ToSchema)]
pub struct SentMessage {
    pub conversation_id: String,
    pub seq: i64,
    pub id: String,
}

/// An error answering a client frame, with the REST API's error codes.
#[derive(Serialize, ToSchema)]
pub struct FrameError {
    pub code: String,
    pub message: String,
}

/// A frame from the server.
#[derive(Serialize, ToSchema)]
#[serde(tag = "type")]
pub enum ServerFrame {
    /// First frame, once: the conversations followed and their last seqs. Every later message of
    /// them is sent exactly once, in seq order.
    #[serde(rename = "ready")]
    Ready { user_id: String, connection_id: String, conversations: Vec<ConversationHead> },
    #[serde(rename = "message.new")]
    MessageNew { conversation_id: String, message: MessageView },
    /// A message the client already has was edited, deleted (a tombstone) or reacted to.
    #[serde(rename = "message.updated")]
    MessageUpdated { conversation_id: String, message: MessageView },
    #[serde(rename = "message.pinned")]
    MessagePinned { conversation_id: String, seq: i64, pinned: bool, by: String },
    /// Someone else started or stopped typing; show it for at most `expires_in_ms` unless repeated.
    #[serde(rename = "typing")]
    Typing { conversation_id: String, user_id: String, typing: bool, expires_in_ms: u64 },
    /// Someone else's read mark moved.
    #[serde(rename = "read")]
    Read { conversation_id: String, user_id: String, last_read_seq: i64 },
    /// This user became a member: the socket follows the conversation from `after_seq` on.
    #[serde(rename = "conversation.joined")]
    ConversationJoined { conversation_id: String, after_seq: i64 },
    /// This user stopped being a member: the socket no longer hears from the conversation.
    #[serde(rename = "conversation.left")]
    ConversationLeft { conversation_id: String },
    #[serde(rename = "member.joined")]
    MemberJoined { conversation_id: String, user_id: String },
    /// Someone left, was removed or was banned.
    #[serde(rename = "member.left")]
    MemberLeft { conversation_id: String, user_id: String },
    #[serde(rename = "member.updated")]
    MemberUpdated { conversation_id: String, user_id: String, role: MemberRole },
    /// A user sharing a conversation came online (first connection, or a connection whose node
    /// reached Redis again after they were announced gone) or went offline (last one closed, or
    /// gone stale when its node died: then within `gateway.presence_stale_secs` plus one sweep);
    /// `last_seen_at` in milliseconds since the epoch.
    #[serde(rename = "presence")]
    Presence { user_id: String, online: bool, last_seen_at: i64 },
    /// A code session's workspace tree changed: an item was `created`, `updated` (renamed or
    /// moved) or `deleted` (with its subtree). Sent to the members of the session's chat.
    #[serde(rename = "workspace.changed")]
    WorkspaceChanged { session_id: String, change: String, item_id: String, path: String, kind: ItemKind, by: String },
    /// Messages the server will not replay: fetch `from_seq..=to_seq` over REST.
    #[serde(rename = "gap")]
    Gap { conversation_id: String, from_seq: i64, to_seq: i64 },
    /// A request succeeded. `send` acks carry `created` and `message`; `read`/`delivered` acks
    /// carry the new marks.
    #[serde(rename = "ack")]
    Ack {
        #[serde(rename = "ref")]
        reference: Option<String>,
        #[serde(flatten)]
        result: AckResult,
    },
    #[serde(rename = "pong")]
    Pong {
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    #[serde(rename = "error")]
    Error {
        #[serde(rename = "ref")]
        reference: Option<String>,
        error: FrameError,
    },
}

/// What an ack reports, by request.
#[derive(Default, Serialize, ToSchema)]
pub struct AckResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<SentMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_read_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_delivered_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread_count: Option<u64>,
}

impl ServerFrame {
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("server frames serialize")
    }

    pub fn error(reference: Option<String>, code: &str, message: impl Into<String>) -> Self {
        ServerFrame::Error { reference, error: FrameError { code: code.to_string(), message: message.into() } }
    }
}
