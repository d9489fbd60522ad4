//! Forking: a new session owned by the caller with a copy of the tree (new ids, same shape)
//! and every file's current text as the first state of a fresh document. A tree over the item
//! limit is refused before anything is made; a fork that fails while copying is removed again
//! (its session, items and documents).

use std::collections::HashMap;
use std::sync::Arc;

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::{CodeSession, ItemId, ItemKind, SessionId, WorkspaceItem, now};
use crate::error::{ApiError, ErrorCode};
use crate::tenancy::TenantDb;

use super::sessions::{self, NewSession, access};
use super::{documents, rooms};

pub async fn fork(
    state: &Arc<AppState>,
    caller: &ActingUser,
    id: &SessionId,
    name: Option<String>,
) -> Result<CodeSession, ApiError> {
    let db = state.store.tenant_db(&caller.scope());
    let (source, _) = access(&db, caller, id).await?;
    let items = db.workspace().tree(id).await?;
    let max = state.settings.collab.max_items_per_session;
    let new = NewSession {
        name: name.unwrap_or_else(|| format!("{} (fork)", source.name)),
        description: source.description.clone(),
        language: source.language.clone(),
        visibility: crate::domain::Visibility::Private,
        tags: source.tags.clone(),
    };
    let count = items.len() as u32;
    if count > max {
        return Err(too_many_items(max));
    }
    let forked = sessions::create(state, caller, new).await?;
    match copy_tree(state, &db, caller, &source, &forked, &items).await {
        Ok(forked) => Ok(forked),
        Err(e) => {
            if let Err(cleanup) = sessions::remove(state, &db, &forked.id).await {
                tracing::warn!(error = %cleanup, "could not remove a fork that failed");
            }
            Err(e)
        }
    }
}

fn too_many_items(max: u32) -> ApiError {
    ApiError::new(ErrorCode::LimitReached, "the session has too many items to fork")
        .with_details(serde_json::json!({ "limit": "max_items_per_session", "value": max }))
}

/// Copies `items` (the source's tree) into the new session `forked`.
async fn copy_tree(
    state: &Arc<AppState>,
    db: &TenantDb,
    caller: &ActingUser,
    source: &CodeSession,
    forked: &CodeSession,
    items: &[WorkspaceItem],
) -> Result<CodeSession, ApiError> {
    let max = state.settings.collab.max_items_per_session;
    if !db.code_sessions().reserve_items(&forked.id, items.len() as u32, max).await? {
        return Err(too_many_items(max));
    }
    let ids: HashMap<ItemId, ItemId> = items.iter().map(|i| (i.id.clone(), ItemId::new())).collect();
    let at = now();
    let mut copies = Vec::with_capacity(items.len());
    let mut texts = Vec::new();
    for item in items {
        let copy = WorkspaceItem {
            id: ids[&item.id].clone(),
            session_id: forked.id.clone(),
            parent_id: item.parent().and_then(|p| ids.get(&p)).map(ToString::to_string).unwrap_or_default(),
            version: 1,
            epoch: 1,
            last_modified_by: caller.user_id().clone(),
            created_at: at,
            updated_at: at,
            ..item.clone()
        };
        if item.kind == ItemKind::File {
            texts.push((copy.clone(), rooms::read(state, db, item).await?));
        }
        copies.push(copy);
    }
    db.workspace().insert_many(&copies).await?;
    for (copy, text) in texts {
        documents::create_with_text(db, &copy, &text).await.map_err(ApiError::internal)?;
    }
    let mut forked = db.code_sessions().get(&forked.id).await?.ok_or_else(|| ApiError::not_found("session"))?;
    forked.forked_from = Some(source.id.clone());
    db.code_sessions().set_forked_from(&forked.id, &source.id).await?;
    Ok(forked)
}
