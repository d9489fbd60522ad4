//! Word search over the plain text of the caller's conversations, without text indexes. Blocks
//! of each conversation's messages keep their lower-cased words (`tenancy::repos::search_blocks`,
//! written by `search_index`); a query reads the blocks holding all of its words and the messages
//! not indexed yet, newest first, and keeps the live messages whose current text holds them all.

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::{ConversationId, Message, Page, PageRequest, Scope, search_terms};
use crate::error::{ApiError, ErrorCode};
use crate::tenancy::TenantDb;
use crate::tenancy::repos::terms_of;

use super::conversations::visible;
use super::search_index::{BLOCK_MAX_MESSAGES, index, index_through};

/// Rebuilds of a block's words attempted while other changes keep landing in it.
const REBUILD_ATTEMPTS: usize = 8;
/// Most messages past its search mark a search reads of one conversation; a conversation
/// further behind is indexed first.
const UNINDEXED_READ_MAX: i64 = BLOCK_MAX_MESSAGES;
/// Most blocks a request indexes before going on with what is left unindexed.
const INDEX_ROUNDS_MAX: usize = 1_000;

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
    let found = matching_messages(&db, &terms, &scope, page.after.as_deref(), page.limit as usize + 1).await?;
    Ok(Page::from_overfetch(found, page.limit, |m| m.id.clone()))
}

/// Up to `want` live messages of `scope` whose text holds every one of `terms`, newest id first,
/// with ids below `before`.
async fn matching_messages(
    db: &TenantDb,
    terms: &[String],
    scope: &[ConversationId],
    before: Option<&str>,
    want: usize,
) -> Result<Vec<Message>, ApiError> {
    let unindexed = unindexed(db, scope).await?;
    let blocks = db.search_blocks().matching(terms, scope).await?;
    let mut candidates: Vec<Candidate> = blocks
        .into_iter()
        .filter(|b| before.is_none_or(|before| b.oldest_id.as_str() < before))
        .map(|b| Candidate {
            conversation: b.conversation_id,
            from: b.from_seq,
            to: b.to_seq,
            newest_id: Some(b.newest_id),
        })
        .chain(unindexed)
        .collect();
    // Unknown newest ids first, then newest first.
    candidates.sort_by(|a, b| match (&a.newest_id, &b.newest_id) {
        (Some(a), Some(b)) => b.cmp(a),
        (a, b) => a.is_some().cmp(&b.is_some()),
    });
    let mut found: Vec<Message> = Vec::new();
    for candidate in candidates {
        // Nothing in this candidate or any after it is newer than the `want` found so far.
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

/// The messages of `scope` past their search marks, indexing first the conversations that are
/// further behind than a search should read.
async fn unindexed(db: &TenantDb, scope: &[ConversationId]) -> Result<Vec<Candidate>, mongodb::error::Error> {
    for _ in 0..INDEX_ROUNDS_MAX {
        let marks = db.conversations().search_marks(scope).await?;
        let far_behind: Vec<ConversationId> = marks
            .iter()
            .filter(|(_, m)| m.last_seq - m.indexed_upto > UNINDEXED_READ_MAX)
            .map(|(id, _)| id.clone())
            .collect();
        if far_behind.is_empty() {
            let behind = marks.into_iter().filter(|(_, m)| m.last_seq > m.indexed_upto);
            return Ok(behind
                .map(|(id, m)| Candidate {
                    conversation: id,
                    from: m.indexed_upto + 1,
                    to: m.last_seq,
                    newest_id: None,
                })
                .collect());
        }
        index(db, &far_behind).await?;
    }
    // Still behind after that much indexing: read what is left as it is.
    let marks = db.conversations().search_marks(scope).await?;
    Ok(marks
        .into_iter()
        .filter(|(_, m)| m.last_seq > m.indexed_upto)
        .map(|(id, m)| Candidate { conversation: id, from: m.indexed_upto + 1, to: m.last_seq, newest_id: None })
        .collect())
}

fn holds_all(text: &str, terms: &[String]) -> bool {
    let words = search_terms(text);
    terms.iter().all(|t| words.contains(t))
}

/// Puts the new words of message `seq` into its block, if it is indexed yet, before an edit
/// stores them: a block may hold more words than its messages, never fewer.
pub(super) async fn add_words(
    db: &TenantDb,
    conversation: &ConversationId,
    seq: i64,
    text: &str,
) -> Result<(), mongodb::error::Error> {
    db.search_blocks().add_terms(conversation, seq, &search_terms(text)).await
}

/// Recomputes the words of the block holding `seq` from its live messages, after an edit or a
/// delete took words out of it: search never shows a message for words it no longer has, but
/// the words of removed text must not stay stored either. Indexes the conversation through
/// `seq` first, so that an indexer that read the old text cannot store it after this.
pub(super) async fn rebuild_block(
    db: &TenantDb,
    conversation: &ConversationId,
    seq: i64,
) -> Result<(), mongodb::error::Error> {
    index_through(db, conversation, seq, INDEX_ROUNDS_MAX).await?;
    for _ in 0..REBUILD_ATTEMPTS {
        let Some(block) = db.search_blocks().holding(conversation, seq).await? else {
            return Ok(());
        };
        let messages = db.messages().range(conversation, block.from_seq, block.to_seq).await?;
        if db.search_blocks().replace_terms(&block, &terms_of(&messages)).await? {
            return Ok(());
        }
    }
    // Only a block changing faster than it can be read gets here; its extra words stay until its
    // next edit or delete, and search still filters them out.
    tracing::warn!(%conversation, seq, "could not rebuild a search block: it kept changing");
    Ok(())
}
