//! Sending, reading, editing and deleting messages.

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::envelope::Envelope;
use crate::domain::{
    AiInfo, Attachment, Conversation, ConversationId, ConversationType, EditedText, FileId, LastMessage, Message,
    MessageKind, RelationshipKind, Scope, TenantId, UserId,
};
use crate::error::{ApiError, ErrorCode};
use crate::events::LiveEvent;
use crate::tenancy::TenantDb;
use crate::tenancy::repos::SameSeq;

use super::conversations::{as_member, as_sender, readable, readable_cached, require_moderator};

/// Characters of text kept in a conversation's `last_message.preview`.
const PREVIEW_CHARS: usize = 100;
/// Default and largest page of history.
pub const DEFAULT_HISTORY: u32 = 50;
pub const MAX_HISTORY: u32 = 200;

pub struct NewMessage {
    pub client_msg_id: String,
    pub kind: MessageKind,
    pub text: Option<String>,
    pub language: Option<String>,
    pub attachments: Vec<Attachment>,
    /// Uploaded files (the sender's own); sending shares them with the conversation.
    pub file_ids: Vec<FileId>,
    pub reply_to: Option<i64>,
    pub mentions: Vec<UserId>,
    pub metadata: Option<serde_json::Value>,
    pub ai: Option<AiInfo>,
    /// The content, end-to-end encrypted (E2E conversations only, instead of `text`).
    pub envelope: Option<Envelope>,
}

/// The new content of an edited message.
pub enum EditedContent {
    Text(String),
    Envelope(Box<Envelope>),
}

/// Which part of the history to read.
pub enum HistoryWindow {
    Latest,
    Before(i64),
    After(i64),
    Around(i64),
}

pub struct History {
    pub messages: Vec<Message>,
    pub last_seq: i64,
    pub has_more_before: bool,
    pub has_more_after: bool,
    pub my_reactions: Vec<(i64, String)>,
    pub pinned_seqs: Vec<i64>,
}

fn too_large(limit: u32) -> ApiError {
    ApiError::new(ErrorCode::PayloadTooLarge, format!("message text exceeds {limit} bytes"))
        .with_details(serde_json::json!({ "limit_bytes": limit }))
}

/// Checks text against the kind and the tenant's size limit; returns it trimmed of nothing.
fn check_text(kind: MessageKind, text: Option<String>, limit: u32) -> Result<Option<String>, ApiError> {
    let needs_text = matches!(kind, MessageKind::Text | MessageKind::CodeSnippet | MessageKind::System);
    match text {
        Some(t) if t.len() > limit as usize => Err(too_large(limit)),
        Some(t) if t.trim().is_empty() && needs_text => Err(ApiError::validation("text", "must not be blank")),
        None if needs_text => Err(ApiError::validation("text", "is required for this kind")),
        other => Ok(other.filter(|t| !t.trim().is_empty())),
    }
}

fn check_new_message(state: &AppState, caller: &ActingUser, new: &NewMessage) -> Result<(), ApiError> {
    let chat = &state.settings.chat;
    let id = &new.client_msg_id;
    if id.is_empty() || id.len() > chat.max_client_msg_id_len || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::validation(
            "client_msg_id",
            format!("must be 1-{} printable characters without spaces", chat.max_client_msg_id_len),
        ));
    }
    if new.kind == MessageKind::System && !caller.is_server() {
        return Err(ApiError::new(ErrorCode::Forbidden, "only a server key may send system messages"));
    }
    let needs_attachments =
        matches!(new.kind, MessageKind::File | MessageKind::Image | MessageKind::Video | MessageKind::Audio);
    if needs_attachments && new.attachments.is_empty() && new.file_ids.is_empty() {
        return Err(ApiError::validation("attachments", "attachments or file_ids are required for this kind"));
    }
    if new.attachments.len() + new.file_ids.len() > chat.max_attachments {
        return Err(ApiError::validation(
            "attachments",
            format!("at most {} attachments and files", chat.max_attachments),
        ));
    }
    for attachment in &new.attachments {
        if attachment.file_id.is_some() {
            return Err(ApiError::validation("attachments.file_id", "refer to uploads with file_ids"));
        }
        super::clean_url("attachments.url", Some(attachment.url.clone()))?;
    }
    if new.mentions.len() > chat.max_mentions {
        return Err(ApiError::validation("mentions", format!("at most {}", chat.max_mentions)));
    }
    if new.language.as_ref().is_some_and(|l| l.is_empty() || l.len() > 32) {
        return Err(ApiError::validation("language", "must be 1-32 characters"));
    }
    if let Some(ai) = &new.ai {
        let too_long = |v: &Option<String>| v.as_ref().is_some_and(|s| s.len() > 100);
        if too_long(&ai.model) || too_long(&ai.provider) {
            return Err(ApiError::validation("ai", "model and provider are at most 100 characters"));
        }
    }
    Ok(())
}

/// Stores a message at the next seq, or returns the original when `client_msg_id` repeats
/// (`created == false`). Membership, blocks and limits are checked first.
pub async fn send(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    new: NewMessage,
) -> Result<(Message, bool), ApiError> {
    caller.require(Scope::ChatWrite)?;
    check_new_message(state, caller, &new)?;
    let db = state.store.tenant_db(&caller.scope());
    let (conversation, _member) = as_sender(state, &db, caller, id).await?;
    // A repeat of a plain message is recognised when it is stored (the group commit's unique
    // index); one with files or an envelope is answered before those are checked again, since
    // the files are shared by now and the recipients' devices may have changed since.
    if (new.envelope.is_some() || !new.file_ids.is_empty())
        && let Some(original) = db.messages().by_client_id(id, caller.user_id(), &new.client_msg_id).await?
    {
        follow_up(&db, &original).await?;
        return Ok((original, false));
    }
    if conversation.kind == ConversationType::Direct
        && let Some(peer) = conversation.direct_peer(caller.user_id())
        && db.relationships().exists(&peer, caller.user_id(), RelationshipKind::Block).await?
    {
        return Err(ApiError::new(ErrorCode::Blocked, "this user has blocked you"));
    }
    super::encrypted::check_content(
        state,
        &db,
        caller,
        &conversation,
        &new.client_msg_id,
        new.text.as_deref(),
        !new.attachments.is_empty(),
        new.envelope.as_ref(),
    )
    .await?;
    let text = match new.envelope {
        Some(_) => None,
        None => check_text(new.kind, new.text, caller.tenant.limits.max_message_bytes)?,
    };
    let metadata = super::clean_custom("metadata", new.metadata, state.settings.chat.max_custom_data_bytes)?;
    if let Some(parent) = new.reply_to {
        let found = db.messages().get(id, parent).await?;
        if found.is_none_or(|m| m.is_deleted()) {
            return Err(ApiError::validation("reply_to", "no such message in this conversation"));
        }
    }
    let mut mentions = new.mentions;
    mentions.sort();
    mentions.dedup();
    let mut file_ids: Vec<FileId> = Vec::with_capacity(new.file_ids.len());
    for id in new.file_ids {
        if !file_ids.contains(&id) {
            file_ids.push(id);
        }
    }
    let files = crate::files::manage::for_message(state, caller, &file_ids).await?;
    super::encrypted::check_files(&conversation, &files)?;
    let mut attachments = new.attachments;
    attachments.extend(files.iter().map(|f| Attachment {
        file_id: Some(f.id.to_string()),
        url: format!("/v1/files/{}", f.id),
        name: Some(f.filename.clone()),
        mime: Some(f.mime.clone()),
        size: Some(f.size as u64),
    }));
    let message = Message {
        text,
        language: new.language,
        attachments,
        reply_to: new.reply_to,
        mentions,
        metadata,
        ai: new.ai,
        envelope: new.envelope,
        ..Message::draft(&caller.tenant.id, id, caller.user_id(), new.kind, new.client_msg_id)
    };
    store(state, &db, message).await
}

/// Stores `message` at its conversation's next seq through this node's group commit
/// (see `commit`), or returns the original of a repeated `client_msg_id` (`false`).
pub(super) async fn store(state: &AppState, db: &TenantDb, message: Message) -> Result<(Message, bool), ApiError> {
    state.committers.store(db, &state.redis, message).await
}

/// What a stored message implies elsewhere: the conversation's newest message and seq counter,
/// and the sharing of its files. All of it is idempotent, so a retry of a send that failed
/// half-way (the message stored, these not) completes it.
pub(super) async fn follow_up(db: &TenantDb, message: &Message) -> Result<(), mongodb::error::Error> {
    let last = last_message_of(message);
    db.conversations().record_last_message(&message.conversation_id, &last, SameSeq::Replace).await?;
    share_files(db, message).await
}

/// Shares the uploads a message carries with its conversation.
pub(super) async fn share_files(db: &TenantDb, message: &Message) -> Result<(), mongodb::error::Error> {
    let files: Vec<FileId> = message
        .attachments
        .iter()
        .filter_map(|a| a.file_id.as_deref())
        .filter_map(|id| FileId::parse(id).ok())
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    db.files().share_with(&files, &message.conversation_id).await
}

pub fn last_message_of(message: &Message) -> LastMessage {
    LastMessage {
        seq: message.seq,
        sender_id: message.sender_id.clone(),
        kind: message.kind,
        preview: message.text.as_deref().unwrap_or("").chars().take(PREVIEW_CHARS).collect(),
        created_at: message.created_at,
    }
}

/// Posts a `system` message recording a membership change, authored by `actor`.
pub async fn post_system(
    state: &AppState,
    db: &TenantDb,
    conversation: &Conversation,
    actor: &UserId,
    text: String,
    event: serde_json::Value,
) -> Result<Message, ApiError> {
    let client_msg_id = format!("system-{}", uuid::Uuid::now_v7());
    let message = Message {
        text: Some(text),
        metadata: event,
        ..Message::draft(&conversation.tenant_id, &conversation.id, actor, MessageKind::System, client_msg_id)
    };
    Ok(store(state, db, message).await?.0)
}

/// A window of history by exact seq range, ascending, tombstones included.
pub async fn history(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    window: HistoryWindow,
    limit: u32,
) -> Result<History, ApiError> {
    caller.require(Scope::ChatRead)?;
    if limit == 0 || limit > MAX_HISTORY {
        return Err(ApiError::new(ErrorCode::InvalidRequest, format!("limit must be between 1 and {MAX_HISTORY}"))
            .with_details(serde_json::json!({ "param": "limit" })));
    }
    let n = i64::from(limit);
    let anchored = match window {
        HistoryWindow::Latest => None,
        HistoryWindow::Before(seq) => Some((seq, seq.saturating_sub(n), seq.saturating_sub(1))),
        HistoryWindow::After(seq) => Some((seq, seq.saturating_add(1), seq.saturating_add(n))),
        HistoryWindow::Around(seq) => {
            Some((seq, seq.saturating_sub(n / 2), seq.saturating_sub(n / 2).saturating_add(n - 1)))
        }
    };
    if anchored.is_some_and(|(anchor, _, _)| anchor < 0) {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "seq parameters must not be negative"));
    }
    let db = state.store.request_db(&caller.scope());
    let visible = readable_cached(state, &db, caller, id);
    let (conversation, from, to, newest, messages) = match anchored {
        Some((_, from, to)) => {
            let from = from.max(1);
            // The revision is read before the messages, so that copies are kept only under the
            // revision they were read at (`caches::history`).
            let (head, revision) = head_of(state, &db, id).await;
            // One past the window says whether more follows; the head, how far the rest goes.
            let range = async {
                let (tenant, past) = (db.tenant_id(), to.saturating_add(1));
                let kept = &state.caches.messages;
                if let Some(messages) = revision.and_then(|revision| kept.range(tenant, id, revision, from, past)) {
                    metrics::counter!("chat_history_pages_total", "from" => "copies").increment(1);
                    return Ok(messages);
                }
                // Without a revision (Redis did not answer within `HEAD_WAIT`) nothing is kept.
                let from_database = if revision.is_some() { "database" } else { "database_unrevised" };
                metrics::counter!("chat_history_pages_total", "from" => from_database).increment(1);
                let Some(revision) = revision.filter(|_| kept.is_on()) else {
                    return Ok(db.messages().range(id, from, past).await?);
                };
                // The whole blocks around the page, so that the pages next to it find copies.
                let (first, last) = crate::caches::blocks_around(from, past);
                let mut messages = db.messages().range(id, first, last).await?;
                kept.keep(tenant, id, revision, &messages);
                messages.retain(|m| (from..=past).contains(&m.seq));
                Ok::<_, ApiError>(messages)
            };
            let ((conversation, _), mut messages) = futures_util::try_join!(visible, range)?;
            let found = messages.last().map_or(0, |m| m.seq);
            if found > to {
                messages.pop();
            }
            let newest = match head {
                Some(head) => head.max(found),
                // Beyond what the page shows, the conversation's counter and what is stored past it
                // (the counter is recorded behind the sends) say how far.
                None if found > to || messages.is_empty() => {
                    let stored = super::counters::stored_heads(&db, &[id]).await?;
                    let counted = stored.get(id).copied().unwrap_or(0).max(found);
                    remember_head(state, &db, id, counted).await;
                    counted
                }
                None => found,
            };
            (conversation, from, to, newest, messages)
        }
        None => {
            let latest = async { db.messages().latest(id, n).await.map_err(ApiError::from) };
            let ((conversation, _), messages) = futures_util::try_join!(visible, latest)?;
            let newest = messages.last().map_or(0, |m| m.seq);
            (conversation, messages.first().map_or(1, |m| m.seq), newest, newest, messages)
        }
    };
    let my_reactions = my_reactions_in(&db, id, caller, &messages).await?;
    Ok(History {
        has_more_before: from > 1 && newest > 0,
        has_more_after: to < newest,
        last_seq: newest,
        messages,
        my_reactions,
        pinned_seqs: conversation.pinned_seqs,
    })
}

/// How long a history page waits for the head from Redis before reading MongoDB's counter (a
/// stalled Redis must not hold reads up for `redis.timeout_ms`).
const HEAD_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// The conversation's head and its messages' revision as Redis has them; the head is `None` when
/// Redis has none, and both are when it does not answer in time.
async fn head_of(state: &AppState, db: &TenantDb, id: &ConversationId) -> (Option<i64>, Option<i64>) {
    match tokio::time::timeout(HEAD_WAIT, state.redis.head_and_revision(db.tenant_id(), id)).await {
        Ok(Ok((head, revision))) => (head, Some(revision)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not read a conversation head");
            (None, None)
        }
        Err(_) => (None, None),
    }
}

/// Replaces the revision of the conversation's stored messages after a change to one of them, so
/// that no node serves its copy of the old one (`caches::history`); one Redis does not take is
/// retried in the background, and a copy lives no longer than `cache.history_ttl_ms` anyway.
pub(super) async fn revise(state: &AppState, tenant: &TenantId, id: &ConversationId) {
    if let Err(e) = state.redis.revise(tenant, &[id]).await {
        tracing::warn!(error = %e, "could not replace a conversation's message revision; retrying");
    }
}

/// Puts a head read from MongoDB back in Redis, so the next page need not read it again.
async fn remember_head(state: &AppState, db: &TenantDb, id: &ConversationId, head: i64) {
    if let Err(e) = state.redis.raise_head(db.tenant_id(), id, head).await {
        tracing::warn!(error = %e, "could not record a conversation head");
    }
}

pub async fn get_one(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    seq: i64,
) -> Result<History, ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.request_db(&caller.scope());
    let (conversation, _) = readable_cached(state, &db, caller, id).await?;
    let message = db.messages().get(id, seq).await?.ok_or_else(|| ApiError::not_found("message"))?;
    let my_reactions = my_reactions_in(&db, id, caller, std::slice::from_ref(&message)).await?;
    Ok(History {
        messages: vec![message],
        // Only the message is shown (`get_message`); the copy's counter may be stale.
        last_seq: conversation.last_seq,
        has_more_before: false,
        has_more_after: false,
        my_reactions,
        pinned_seqs: conversation.pinned_seqs,
    })
}

/// Replies to message `parent`, ascending, after seq `after`.
pub async fn replies(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    parent: i64,
    after: i64,
    limit: u32,
) -> Result<History, ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.request_db(&caller.scope());
    let (conversation, _) = readable(state, &db, caller, id).await?;
    db.messages().get(id, parent).await?.ok_or_else(|| ApiError::not_found("message"))?;
    let mut messages = db.messages().replies(id, parent, after, limit + 1).await?;
    let has_more_after = messages.len() > limit as usize;
    messages.truncate(limit as usize);
    let my_reactions = my_reactions_in(&db, id, caller, &messages).await?;
    Ok(History {
        messages,
        last_seq: conversation.last_seq,
        has_more_before: false,
        has_more_after,
        my_reactions,
        pinned_seqs: conversation.pinned_seqs,
    })
}

/// The caller's reactions to `messages` (ascending). Only a message someone reacted to can hold
/// one, so a page without reactions needs no query.
async fn my_reactions_in(
    db: &TenantDb,
    id: &ConversationId,
    caller: &ActingUser,
    messages: &[Message],
) -> Result<Vec<(i64, String)>, ApiError> {
    let mut reacted = messages.iter().filter(|m| m.reaction_counts.values().any(|n| *n > 0)).map(|m| m.seq);
    let Some(first) = reacted.next() else { return Ok(Vec::new()) };
    let last = reacted.next_back().unwrap_or(first);
    Ok(db.reactions().mine(id, caller.user_id(), first, last).await?)
}

pub(super) async fn live_message(db: &TenantDb, id: &ConversationId, seq: i64) -> Result<Message, ApiError> {
    db.messages().get(id, seq).await?.filter(|m| !m.is_deleted()).ok_or_else(|| ApiError::not_found("message"))
}

/// The author replaces the text of a text or code message (the old text goes to the history),
/// or, in an E2E conversation, the envelope (sealed for the same message id).
pub async fn edit(
    state: &AppState,
    caller: &ActingUser,
    id: &ConversationId,
    seq: i64,
    content: EditedContent,
) -> Result<Message, ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let (conversation, _) = as_member(&db, caller, id).await?;
    let message = live_message(&db, id, seq).await?;
    if &message.sender_id != caller.user_id() {
        return Err(ApiError::new(ErrorCode::Forbidden, "only the author may edit a message"));
    }
    if !matches!(message.kind, MessageKind::Text | MessageKind::CodeSnippet) {
        return Err(ApiError::validation("kind", "only text and code messages can be edited"));
    }
    let (text, envelope) = match &content {
        EditedContent::Text(text) => (Some(text.as_str()), None),
        EditedContent::Envelope(envelope) => (None, Some(envelope.as_ref())),
    };
    super::encrypted::check_content(state, &db, caller, &conversation, &message.client_msg_id, text, false, envelope)
        .await?;
    let now = crate::domain::now();
    let edited = match content {
        EditedContent::Envelope(envelope) => db.messages().edit_envelope(id, seq, &envelope, now).await?,
        EditedContent::Text(text) => {
            let text =
                check_text(message.kind, Some(text), caller.tenant.limits.max_message_bytes)?.unwrap_or_default();
            super::search::before_change(state, &db, id, seq, Some(&text)).await?;
            let previous = EditedText { text: message.text, replaced_at: now };
            db.messages().edit(id, seq, previous, &text, now).await?
        }
    }
    .ok_or_else(|| ApiError::not_found("message"))?;
    revise(state, db.tenant_id(), id).await;
    db.conversations().record_last_message(id, &last_message_of(&edited), SameSeq::Replace).await?;
    state.redis.publish_event(&edited.tenant_id, &LiveEvent::Updated { message: edited.clone() }).await;
    super::search::forget_words(state, &db, id, seq).await;
    Ok(edited)
}

/// The author, or an owner/admin, deletes a message: its content goes, its seq stays.
/// Deleting a deleted message changes nothing.
pub async fn delete(state: &AppState, caller: &ActingUser, id: &ConversationId, seq: i64) -> Result<(), ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let (_, member) = as_member(&db, caller, id).await?;
    let message = db.messages().get(id, seq).await?.ok_or_else(|| ApiError::not_found("message"))?;
    if &message.sender_id != caller.user_id() {
        require_moderator(&member)?;
    }
    if !message.is_deleted() {
        super::search::before_change(state, &db, id, seq, None).await?;
    }
    let Some(deleted) = db.messages().soft_delete(id, seq, caller.user_id(), crate::domain::now()).await? else {
        return Ok(());
    };
    revise(state, db.tenant_id(), id).await;
    db.reactions().remove_all_for_message(id, seq).await?;
    if let Some(parent) = message.reply_to {
        db.messages().add_reply_count(id, parent, -1).await?;
        revise(state, db.tenant_id(), id).await;
    }
    db.conversations().set_pinned(id, seq, false).await?;
    super::conversations::forget(state, db.tenant_id(), id).await;
    db.conversations().record_last_message(id, &last_message_of(&deleted), SameSeq::Replace).await?;
    state.redis.publish_event(&caller.tenant.id, &LiveEvent::Updated { message: deleted }).await;
    super::search::forget_words(state, &db, id, seq).await;
    Ok(())
}
