//! Messages: send, history, threads, edit, delete, reactions and pins.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use validator::Validate;

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::chat::messages::{self as use_cases, DEFAULT_HISTORY, EditedContent, History, HistoryWindow, NewMessage};
use crate::chat::reactions;
use crate::domain::envelope::Envelope;
use crate::domain::{AiInfo, Attachment, EditedText, FileId, Message, MessageKind, UserId};
use crate::error::{ApiError, ErrorCode};

use super::conversations::conversation_path;
use super::extract::ValidJson;
use super::json_time;
use super::openapi::ErrorResponses;

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    /// The client's own id for this message (1-64 printable characters): a retry with the same
    /// id returns the original message with 200 and stores nothing new.
    pub client_msg_id: String,
    #[serde(default = "default_kind")]
    pub kind: MessageKind,
    /// Required for `text`, `code_snippet` and `system`; at most the tenant's `max_message_bytes`.
    pub text: Option<String>,
    /// Programming language of a `code_snippet`.
    pub language: Option<String>,
    /// Links to content elsewhere; `file`, `image`, `video` and `audio` need these or `file_ids`.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// Files the sender uploaded with `POST /v1/files`; sending shares them with the conversation.
    #[serde(default)]
    pub file_ids: Vec<String>,
    /// Seq of the message this one replies to (thread parent).
    pub reply_to: Option<i64>,
    #[serde(default)]
    pub mentions: Vec<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// For bot and AI messages: role, model, provider, token usage.
    pub ai: Option<AiInfo>,
    /// Required in end-to-end encrypted conversations, instead of `text` (see docs/e2e.md).
    pub envelope: Option<Envelope>,
}

impl TryFrom<SendMessageRequest> for NewMessage {
    type Error = ApiError;
    fn try_from(body: SendMessageRequest) -> Result<Self, ApiError> {
        let mentions = body
            .mentions
            .iter()
            .map(|id| UserId::parse(id).map_err(|e| ApiError::validation("mentions", e.0)))
            .collect::<Result<Vec<_>, _>>()?;
        let file_ids = body
            .file_ids
            .iter()
            .map(|id| FileId::parse(id).map_err(|e| ApiError::validation("file_ids", e.0)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NewMessage {
            file_ids,
            client_msg_id: body.client_msg_id,
            kind: body.kind,
            text: body.text,
            language: body.language,
            attachments: body.attachments,
            reply_to: body.reply_to,
            mentions,
            metadata: body.metadata,
            ai: body.ai,
            envelope: body.envelope,
        })
    }
}

fn default_kind() -> MessageKind {
    MessageKind::Text
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessageRequest {
    /// The new text (plain conversations).
    pub text: Option<String>,
    /// The new envelope, sealed for the same message id (E2E conversations).
    pub envelope: Option<Envelope>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Messages below this seq.
    pub before_seq: Option<i64>,
    /// Messages above this seq.
    pub after_seq: Option<i64>,
    /// Messages centred on this seq.
    pub around_seq: Option<i64>,
    /// 1-200, default 50.
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RepliesQuery {
    /// Replies above this seq (default 0: from the first).
    pub after_seq: Option<i64>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReactionView {
    pub emoji: String,
    pub count: i64,
    /// Whether the caller reacted with this emoji.
    pub mine: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EditView {
    pub text: Option<String>,
    #[serde(serialize_with = "json_time::write")]
    pub replaced_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    pub id: String,
    pub conversation_id: String,
    pub seq: i64,
    pub client_msg_id: String,
    pub sender_id: String,
    pub kind: MessageKind,
    pub text: Option<String>,
    pub language: Option<String>,
    pub attachments: Vec<Attachment>,
    pub reply_to: Option<i64>,
    pub reply_count: i64,
    pub mentions: Vec<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub ai: Option<AiInfo>,
    /// The end-to-end encrypted content, opaque to the server.
    pub envelope: Option<Envelope>,
    pub reactions: Vec<ReactionView>,
    pub pinned: bool,
    #[serde(serialize_with = "json_time::write")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "json_time::write_optional")]
    pub edited_at: Option<DateTime<Utc>>,
    /// Earlier texts, oldest first (the last few edits).
    pub edit_history: Vec<EditView>,
    /// A tombstone: content removed, seq kept.
    pub deleted: bool,
    #[serde(serialize_with = "json_time::write_optional")]
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryView {
    /// Ascending by seq; deleted messages appear as tombstones.
    pub items: Vec<MessageView>,
    /// The conversation's newest seq: exact when the page reaches it; otherwise as last recorded,
    /// which can trail the newest message by moments.
    pub last_seq: i64,
    pub has_more_before: bool,
    pub has_more_after: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PinsView {
    pub items: Vec<MessageView>,
}

pub fn message_view(m: Message, mine: &[(i64, String)], pinned: &[i64]) -> MessageView {
    let reactions = m
        .reaction_counts
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(emoji, count)| ReactionView {
            mine: mine.iter().any(|(seq, e)| *seq == m.seq && e == emoji),
            emoji: emoji.clone(),
            count: *count,
        })
        .collect();
    MessageView {
        pinned: pinned.contains(&m.seq),
        deleted: m.is_deleted(),
        id: m.id,
        conversation_id: String::from(m.conversation_id),
        seq: m.seq,
        client_msg_id: m.client_msg_id,
        sender_id: String::from(m.sender_id),
        kind: m.kind,
        text: m.text,
        language: m.language,
        attachments: m.attachments,
        reply_to: m.reply_to,
        reply_count: m.reply_count,
        mentions: m.mentions.into_iter().map(String::from).collect(),
        metadata: m.metadata,
        ai: m.ai,
        envelope: m.envelope,
        reactions,
        created_at: m.created_at,
        edited_at: m.edited_at,
        edit_history: m
            .edit_history
            .into_iter()
            .map(|EditedText { text, replaced_at }| EditView { text, replaced_at })
            .collect(),
        deleted_at: m.deleted_at,
    }
}

/// A message as the WebSocket gateway sends it (`message.new`, `message.updated`).
/// A message as live frames carry it: no per-viewer fields (`mine`, `pinned`).
pub fn live_message_view(message: Message) -> MessageView {
    message_view(message, &[], &[])
}

fn history_view(history: History) -> HistoryView {
    let (mine, pinned) = (history.my_reactions, history.pinned_seqs);
    HistoryView {
        items: history.messages.into_iter().map(|m| message_view(m, &mine, &pinned)).collect(),
        last_seq: history.last_seq,
        has_more_before: history.has_more_before,
        has_more_after: history.has_more_after,
    }
}

fn seq_path(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|seq| *seq >= 1).ok_or_else(|| {
        ApiError::new(ErrorCode::InvalidRequest, "invalid seq: a positive integer")
            .with_details(serde_json::json!({ "param": "seq" }))
    })
}

/// Send a message. The server assigns the next gapless `seq`; a repeated `client_msg_id` returns
/// the original message with 200.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/messages", tag = "messages",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path)),
    request_body = SendMessageRequest,
    responses((status = 201, body = MessageView), (status = 200, body = MessageView), ErrorResponses))]
pub async fn send_message(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJson(body): ValidJson<SendMessageRequest>,
) -> Result<HttpResponse, ApiError> {
    let new = NewMessage::try_from(body)?;
    let (message, created) = use_cases::send(&state, &caller, &conversation_path(&path)?, new).await?;
    let mut response = if created { HttpResponse::Created() } else { HttpResponse::Ok() };
    Ok(response.json(message_view(message, &[], &[])))
}

/// Read history by exact seq range: the newest page, or before / after / around a seq.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/messages", tag = "messages",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path), HistoryQuery),
    responses((status = 200, body = HistoryView), ErrorResponses))]
pub async fn list_messages(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let window = match (query.before_seq, query.after_seq, query.around_seq) {
        (None, None, None) => HistoryWindow::Latest,
        (Some(seq), None, None) => HistoryWindow::Before(seq),
        (None, Some(seq), None) => HistoryWindow::After(seq),
        (None, None, Some(seq)) => HistoryWindow::Around(seq),
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "use at most one of before_seq, after_seq and around_seq",
            ));
        }
    };
    let limit = query.limit.unwrap_or(DEFAULT_HISTORY);
    let history = use_cases::history(&state, &caller, &conversation_path(&path)?, window, limit).await?;
    Ok(HttpResponse::Ok().json(history_view(history)))
}

/// Get one message by seq (tombstones included).
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/messages/{seq}", tag = "messages",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path), ("seq" = i64, Path)),
    responses((status = 200, body = MessageView), ErrorResponses))]
pub async fn get_message(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let history = use_cases::get_one(&state, &caller, &conversation_path(&path.0)?, seq_path(&path.1)?).await?;
    let view = history_view(history).items.pop().ok_or_else(|| ApiError::not_found("message"))?;
    Ok(HttpResponse::Ok().json(view))
}

/// Replies in a message's thread, ascending.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/messages/{seq}/replies", tag = "messages",
    security(("user_jwt" = []), ("api_key" = [])),
    params(("conversation_id" = String, Path), ("seq" = i64, Path), RepliesQuery),
    responses((status = 200, body = HistoryView), ErrorResponses))]
pub async fn list_replies(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    query: web::Query<RepliesQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = super::extract::page_limit(&state, query.limit)?;
    let (id, parent) = (conversation_path(&path.0)?, seq_path(&path.1)?);
    let history = use_cases::replies(&state, &caller, &id, parent, query.after_seq.unwrap_or(0), limit).await?;
    Ok(HttpResponse::Ok().json(history_view(history)))
}

/// Edit a message's text (author only).
#[utoipa::path(patch, path = "/v1/conversations/{conversation_id}/messages/{seq}", tag = "messages",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path), ("seq" = i64, Path)),
    request_body = EditMessageRequest, responses((status = 200, body = MessageView), ErrorResponses))]
pub async fn edit_message(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    ValidJson(body): ValidJson<EditMessageRequest>,
) -> Result<HttpResponse, ApiError> {
    let content = match (body.text, body.envelope) {
        (Some(text), None) => EditedContent::Text(text),
        (None, Some(envelope)) => EditedContent::Envelope(Box::new(envelope)),
        _ => return Err(ApiError::validation("text", "send exactly one of text and envelope")),
    };
    let message = use_cases::edit(&state, &caller, &conversation_path(&path.0)?, seq_path(&path.1)?, content).await?;
    Ok(HttpResponse::Ok().json(message_view(message, &[], &[])))
}

/// Delete a message (author, owners, admins): it stays as a tombstone with its seq.
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/messages/{seq}", tag = "messages",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path), ("seq" = i64, Path)),
    responses((status = 204, description = "Deleted"), ErrorResponses))]
pub async fn delete_message(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    use_cases::delete(&state, &caller, &conversation_path(&path.0)?, seq_path(&path.1)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// React with an emoji (once per user per emoji; repeating is harmless). A deleted message takes
/// no reactions (404), even one racing its delete.
#[utoipa::path(put, path = "/v1/conversations/{conversation_id}/messages/{seq}/reactions/{emoji}", tag = "messages",
    security(("user_jwt" = []), ("api_key" = [])),
    params(("conversation_id" = String, Path), ("seq" = i64, Path), ("emoji" = String, Path)),
    responses((status = 204, description = "Reacted"), ErrorResponses))]
pub async fn add_reaction(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    reactions::add(&state, &caller, &conversation_path(&path.0)?, seq_path(&path.1)?, &path.2).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Remove your reaction.
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/messages/{seq}/reactions/{emoji}", tag = "messages",
    security(("user_jwt" = []), ("api_key" = [])),
    params(("conversation_id" = String, Path), ("seq" = i64, Path), ("emoji" = String, Path)),
    responses((status = 204, description = "Removed"), ErrorResponses))]
pub async fn remove_reaction(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    reactions::remove(&state, &caller, &conversation_path(&path.0)?, seq_path(&path.1)?, &path.2).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Pin a message (owners and admins).
#[utoipa::path(put, path = "/v1/conversations/{conversation_id}/pins/{seq}", tag = "messages",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path), ("seq" = i64, Path)),
    responses((status = 204, description = "Pinned"), ErrorResponses))]
pub async fn pin_message(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    reactions::set_pinned(&state, &caller, &conversation_path(&path.0)?, seq_path(&path.1)?, true).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Unpin a message (owners and admins).
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/pins/{seq}", tag = "messages",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path), ("seq" = i64, Path)),
    responses((status = 204, description = "Unpinned"), ErrorResponses))]
pub async fn unpin_message(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    reactions::set_pinned(&state, &caller, &conversation_path(&path.0)?, seq_path(&path.1)?, false).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The pinned messages, by seq.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/pins", tag = "messages",
    security(("user_jwt" = []), ("api_key" = [])), params(("conversation_id" = String, Path)),
    responses((status = 200, body = PinsView), ErrorResponses))]
pub async fn list_pins(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let messages = reactions::pinned(&state, &caller, &conversation_path(&path)?).await?;
    let pinned: Vec<i64> = messages.iter().map(|m| m.seq).collect();
    let items = messages.into_iter().map(|m| message_view(m, &[], &pinned)).collect();
    Ok(HttpResponse::Ok().json(PinsView { items }))
}
