//! The acting user's own views: profile, conversations, unread counts, relationships; and search.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use validator::Validate;

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::chat::{conversations, receipts, relationships, search};
use crate::domain::{ConversationId, PageRequest, Relationship, RelationshipKind};
use crate::error::ApiError;

use super::conversations::{ConversationPage, ConversationView, conversation_path};
use super::extract::{PageQuery, ValidJson, page_limit};
use super::messages::{MessageView, message_view};
use super::openapi::ErrorResponses;
use super::users::{UserView, user_path};

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRelationshipRequest {
    #[serde(rename = "type")]
    pub kind: RelationshipKind,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RelationshipQuery {
    /// Only this type (`block`, `mute`, `friend`); all when absent.
    #[serde(rename = "type")]
    #[param(value_type = Option<String>)]
    pub kind: Option<RelationshipKind>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RelationshipView {
    pub user_id: String,
    #[serde(rename = "type")]
    pub kind: RelationshipKind,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RelationshipPage {
    pub items: Vec<RelationshipView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationUnread {
    pub conversation_id: String,
    pub unread_count: u64,
    pub last_read_seq: i64,
    pub last_seq: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnreadView {
    pub total_unread_count: u64,
    /// Conversations with unread messages.
    pub conversations: Vec<ConversationUnread>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words to find (all must occur; case-insensitive).
    pub q: String,
    /// Only this conversation.
    pub conversation_id: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchPage {
    /// Newest first.
    pub items: Vec<MessageView>,
    pub next_cursor: Option<String>,
}

impl From<Relationship> for RelationshipView {
    fn from(r: Relationship) -> Self {
        Self { user_id: r.other_id.to_string(), kind: r.kind, created_at: r.created_at }
    }
}

/// The acting user's profile.
#[utoipa::path(get, path = "/v1/me", tag = "me", security(("user_jwt" = []), ("api_key" = [])),
    responses((status = 200, body = UserView), ErrorResponses))]
pub async fn get_me(caller: ActingUser) -> Result<HttpResponse, ApiError> {
    caller.require(crate::domain::Scope::ChatRead)?;
    Ok(HttpResponse::Ok().json(UserView::from(crate::domain::User::clone(&caller.user))))
}

/// The caller's conversations, most recently active first, with unread counts.
#[utoipa::path(get, path = "/v1/me/conversations", tag = "me", security(("user_jwt" = []), ("api_key" = [])),
    params(PageQuery), responses((status = 200, body = ConversationPage), ErrorResponses))]
pub async fn my_conversations(
    caller: ActingUser,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = conversations::list_mine(&state, &caller, query.into_inner().into_page_request(&state)?).await?;
    let page = page.map(ConversationView::from);
    Ok(HttpResponse::Ok().json(ConversationPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Unread totals and per-conversation counts.
#[utoipa::path(get, path = "/v1/me/unread", tag = "me", security(("user_jwt" = []), ("api_key" = [])),
    responses((status = 200, body = UnreadView), ErrorResponses))]
pub async fn my_unread(caller: ActingUser, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let summary = receipts::unread(&state, &caller).await?;
    let conversations = summary
        .conversations
        .into_iter()
        .map(|(id, unread_count, last_read_seq, last_seq)| ConversationUnread {
            conversation_id: id.to_string(),
            unread_count,
            last_read_seq,
            last_seq,
        })
        .collect();
    Ok(HttpResponse::Ok().json(UnreadView { total_unread_count: summary.total, conversations }))
}

/// Block, mute or friend another user.
#[utoipa::path(put, path = "/v1/me/relationships/{user_id}", tag = "me", security(("user_jwt" = []), ("api_key" = [])),
    params(("user_id" = String, Path)), request_body = PutRelationshipRequest,
    responses((status = 200, body = RelationshipView), ErrorResponses))]
pub async fn put_relationship(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJson(body): ValidJson<PutRelationshipRequest>,
) -> Result<HttpResponse, ApiError> {
    let relationship = relationships::put_relationship(&state, &caller, &user_path(&path)?, body.kind).await?;
    Ok(HttpResponse::Ok().json(RelationshipView::from(relationship)))
}

/// Remove a relationship (`?type=`), or every relationship with that user.
#[utoipa::path(delete, path = "/v1/me/relationships/{user_id}", tag = "me", security(("user_jwt" = []), ("api_key" = [])),
    params(("user_id" = String, Path), ("type" = Option<String>, Query)),
    responses((status = 204, description = "Removed"), ErrorResponses))]
pub async fn delete_relationship(
    caller: ActingUser,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<RelationshipQuery>,
) -> Result<HttpResponse, ApiError> {
    relationships::delete_relationship(&state, &caller, &user_path(&path)?, query.kind).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller's relationships.
#[utoipa::path(get, path = "/v1/me/relationships", tag = "me", security(("user_jwt" = []), ("api_key" = [])),
    params(RelationshipQuery), responses((status = 200, body = RelationshipPage), ErrorResponses))]
pub async fn list_relationships(
    caller: ActingUser,
    state: web::Data<AppState>,
    query: web::Query<RelationshipQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let page = PageRequest { limit: page_limit(&state, query.limit)?, after: query.after };
    let page = relationships::list_relationships(&state, &caller, query.kind, page).await?.map(RelationshipView::from);
    Ok(HttpResponse::Ok().json(RelationshipPage { items: page.items, next_cursor: page.next_cursor }))
}

/// Search the plain text of the caller's conversations (all words, case-insensitive), newest first.
#[utoipa::path(get, path = "/v1/search/messages", tag = "messages", security(("user_jwt" = []), ("api_key" = [])),
    params(SearchQuery), responses((status = 200, body = SearchPage), ErrorResponses))]
pub async fn search_messages(
    caller: ActingUser,
    state: web::Data<AppState>,
    query: web::Query<SearchQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let conversation: Option<ConversationId> = query.conversation_id.as_deref().map(conversation_path).transpose()?;
    let page = PageRequest { limit: page_limit(&state, query.limit)?, after: query.after };
    let page = search::search_messages(&state, &caller, &query.q, conversation.as_ref(), page).await?;
    let page = page.map(|m| message_view(m, &[], &[]));
    Ok(HttpResponse::Ok().json(SearchPage { items: page.items, next_cursor: page.next_cursor }))
}
