//! Word search over the plain text of the caller's conversations, without text indexes: each
//! message stores its lower-cased words in `terms` (a multikey index), and a query matches
//! messages holding all of its words.

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::{ConversationId, Message, Page, PageRequest, Scope, search_terms};
use crate::error::{ApiError, ErrorCode};

use super::conversations::visible;

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
    let found = db.messages().search(&terms, &scope, page.after.as_deref(), page.limit + 1).await?;
    Ok(Page::from_overfetch(found, page.limit, |m| m.id.clone()))
}
