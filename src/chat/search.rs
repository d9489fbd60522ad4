//! Word search over the plain text of the caller's conversations, without text indexes. Blocks
//! of each conversation's messages keep their lower-cased words (`tenancy::repos::search_blocks`,
//! written by `search_index`); a query reads the blocks holding all of its words and the messages
//! not indexed yet, newest first, and keeps the live messages whose current text holds them all.

use std::collections::HashMap;

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::{ConversationId, Message, Page, PageRequest, Scope, search_terms};
use crate::error::{ApiError, ErrorCode};
use crate::tenancy::TenantDb;
use crate::tenancy::repos::SearchMark;

use super::conversations::visible;
use super::search_index::{BLOCK_MAX_MESSAGES, index};

/// Rebuilds of a block's words attempted while other changes keep landing in it.
const REBUILD_ATTEMPTS: usize = 8;
/// Most messages past its search mark a search reads of one conversation; a conversation
/// further behind is indexed first.
const UNINDEXED_READ_MAX: i64 = BLOCK_MAX_MESSAGES;
/// Most blocks a search indexes itself; conversations still too far behind are left to the
/// node's indexer and the search answers 503 until it has caught up.
const INDEX_ROUNDS_MAX: usize = 16;
/// Blocks an edit or delete indexes to reach its message; further behind, it answers 503 until
/// the node's indexer has caught up.
const INDEX_THROUGH_ATTEMPTS: usize = 8;

/// Seqs `from..=to` of a conversation that may hold matches; `newest_id` is the newest message
/// id among them when known (blocks), `None` for messages not indexed yet.
struct Candidate {
    conversation: ConversationId,
    from: i64,
    to: i64,
    newest_id: Option<String>,
}

pub async fn search_messages(
    state: &AppState,
    caller: &ActingUser,
    query: &str,
    conversation: Option<&ConversationId>,
    page: PageRequest,
) -> Result<Page<Message>, ApiError> {
    caller.require(Scope::ChatRead)?;
    let terms = search_terms(query);
    let max = state.settings.chat.max_search_terms;
    if terms.is_empty() {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "q must contain at least one word")
            .with_details(serde_json::json!({ "param": "q" })));
    }
    if terms.len() > max {
        return Err(ApiError::new(ErrorCode::InvalidRequest, format!("q may contain at most {max} words"))
            .with_details(serde_json::json!({ "param": "q" })));
    }
    let db = state.store.request_db(&caller.scope());
    let scope: Vec<ConversationId> = match conversation {
        Some(id) => {
            visible(&db, caller, id).await?;
            vec![id.clone()]
        }
        None => db.members().of_user(caller.user_id()).await?.into_iter().map(|m| m.conversation_id).collect(),
    };
    if scope.is_empty() {
        return Ok(Page { items: Vec::new(), next_cursor: None });
    }
    let found =
        matching_messages(state, caller, &db, &terms, &scope, page.after.as_deref(), page.limit as usize + 1).await?;
    Ok(Page::from_overfetch(found, page.limit, |m| m.id.clone()))
}

/// Up to `want` live messages of `scope` whose text holds every one of `terms`, newest id first,
/// with ids below `before`.
async fn matching_messages(
    state: &AppState,
    caller: &ActingUser,
    db: &TenantDb,
    terms: &[String],
    scope: &[ConversationId],
    before: Option<&str>,
    want: usize,
) -> Result<Vec<Message>, ApiError> {
    let marks = readable_marks(state, caller, db, scope).await?;
    let blocks = db.search_blocks().matching(terms, scope).await?;
    // Blocks stored after the marks were read cover seqs read below as unindexed.
    let indexed =
        blocks.into_iter().filter(|b| marks.get(&b.conversation_id).is_some_and(|m| b.to_seq <= m.indexed_upto));
    let unindexed = marks.iter().filter(|(_, m)| m.last_seq > m.indexed_upto).map(|(id, m)| Candidate {
        conversation: id.clone(),
        from: m.indexed_upto + 1,
        to: m.last_seq,
        newest_id: None,
    });
    let mut candidates: Vec<Candidate> = indexed
        .filter(|b| before.is_none_or(|before| b.oldest_id.as_str() < before))
        .map(|b| Candidate {
            conversation: b.conversation_id,
            from: b.from_seq,
            to: b.to_seq,
            newest_id: Some(b.newest_id),
        })
        .chain(unindexed)
        .collect();
    // Unindexed messages may be the newest of all, so they are read first; then blocks newest
    // first, which lets the loop stop at the first block that cannot beat what it found.
    candidates.sort_by(|a, b| match (&a.newest_id, &b.newest_id) {
        (Some(a), Some(b)) => b.cmp(a),
        (a, b) => a.is_some().cmp(&b.is_some()),
    });
    let mut found: Vec<Message> = Vec::new();
    for candidate in candidates {
        if found.len() >= want
            && let (Some(newest), Some(last)) = (&candidate.newest_id, found.last())
            && *newest < last.id
        {
            break;
        }
        let messages = db.messages().range(&candidate.conversation, candidate.from, candidate.to).await?;
        found.extend(messages.into_iter().filter(|m| {
            !m.is_deleted()
                && before.is_none_or(|before| m.id.as_str() < before)
                && holds_all(m.text.as_deref().unwrap_or(""), terms)
        }));
        found.sort_by(|a, b| b.id.cmp(&a.id));
        found.truncate(want);
    }
    Ok(found)
}

/// The search marks of `scope`, once none is further behind than a search reads: the search
/// indexes those first, up to `INDEX_ROUNDS_MAX` blocks.
async fn readable_marks(
    state: &AppState,
    caller: &ActingUser,
    db: &TenantDb,
    scope: &[ConversationId],
) -> Result<HashMap<ConversationId, SearchMark>, ApiError> {
    let mut rounds = 0;
    loop {
        let mut marks = db.search_blocks().marks(scope).await?;
        // Messages answered but not counted yet are searched too.
        let counters = marks.iter_mut().map(|(id, m)| (id, &mut m.last_seq)).collect();
        super::counters::raise_to_heads(&state.redis, db.tenant_id(), counters).await;
        let far_behind: HashMap<ConversationId, SearchMark> = marks
            .iter()
            .filter(|(_, m)| m.last_seq - m.indexed_upto > UNINDEXED_READ_MAX)
            .map(|(id, m)| (id.clone(), *m))
            .collect();
        if far_behind.is_empty() {
            return Ok(marks);
        }
        if rounds == INDEX_ROUNDS_MAX {
            state.committers.search_indexer().touch(&state.store.tenant_db(&caller.scope()), far_behind.keys());
            return Err(ApiError::new(
                ErrorCode::ServiceUnavailable,
                "search is still indexing these conversations; retry shortly",
            ));
        }
        index(db, &far_behind).await?;
        rounds += 1;
    }
}

fn holds_all(text: &str, terms: &[String]) -> bool {
    let words = search_terms(text);
    terms.iter().all(|t| words.contains(t))
}

/// Before an edit or delete of message `seq`: makes sure its block exists (`index_through`), and
/// puts an edit's new words into it, so a block holds more words than its messages, never fewer.
/// `db` must be through the shared client (the indexer may be handed the conversation).
pub(super) async fn before_change(
    state: &AppState,
    db: &TenantDb,
    conversation: &ConversationId,
    seq: i64,
    new_text: Option<&str>,
) -> Result<(), ApiError> {
    if !index_through(db, conversation, seq).await? {
        state.committers.search_indexer().touch(db, [conversation]);
        return Err(ApiError::unavailable("search indexing is behind this conversation; retry in a few seconds"));
    }
    match new_text {
        Some(text) => add_words(db, conversation, seq, text).await.map_err(ApiError::from),
        None => Ok(()),
    }
}

/// Puts the new words of message `seq` into its block, if it is indexed yet.
async fn add_words(
    db: &TenantDb,
    conversation: &ConversationId,
    seq: i64,
    text: &str,
) -> Result<(), mongodb::error::Error> {
    db.search_blocks().add_terms(conversation, seq, &search_terms(text)).await
}

/// After an edit or delete of message `seq` took words out of its block: rebuilds the block's
/// words, or has the node's indexer retry if that fails (`db` must be through the shared
/// client). Search never shows a message for words it no longer has, but the words of removed
/// text must not stay stored.
pub(super) async fn forget_words(state: &AppState, db: &TenantDb, conversation: &ConversationId, seq: i64) {
    if let Err(e) = rebuild_block(db, conversation, seq).await {
        tracing::warn!(error = %e, %conversation, seq, "rebuilding a search block failed; retrying");
        state.committers.search_indexer().rebuild_later(db, conversation, seq);
    }
}

/// Makes sure the block holding message `seq` exists, indexing the stored messages up to it.
/// Edits and deletes call it before they change the text: a node may hold the old text to cut
/// that block from (`search_recent`), and once the block exists, no other can hold the seq.
/// `Ok(false)`: the conversation is too far behind to index here (or is gone).
async fn index_through(db: &TenantDb, conversation: &ConversationId, seq: i64) -> Result<bool, mongodb::error::Error> {
    let one = [conversation.clone()];
    for _ in 0..INDEX_THROUGH_ATTEMPTS {
        let marks = db.search_blocks().marks(&one).await?;
        let Some(mark) = marks.get(conversation) else {
            return Ok(false);
        };
        if seq <= mark.indexed_upto {
            return Ok(true);
        }
        if seq > mark.last_seq {
            // The message is stored, so its seq counts: the counter is recorded behind the sends
            // (or a send failed after storing it).
            db.conversations().advance_seq(conversation, seq).await?;
            continue;
        }
        index(db, &marks).await?;
    }
    Ok(false)
}

/// Recomputes the words of the block holding `seq` from its live messages.
pub(super) async fn rebuild_block(
    db: &TenantDb,
    conversation: &ConversationId,
    seq: i64,
) -> Result<(), mongodb::error::Error> {
    // The block exists: the change made sure of it first (`before_change`).
    for _ in 0..REBUILD_ATTEMPTS {
        let Some(block) = db.search_blocks().holding(conversation, seq).await? else {
            return Ok(());
        };
        let messages = db.messages().range(conversation, block.from_seq, block.to_seq).await?;
        if db.search_blocks().rebuild(&block, &messages).await? {
            return Ok(());
        }
    }
    Err(mongodb::error::Error::custom("the search block kept changing while it was rebuilt"))
}
