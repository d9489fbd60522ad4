//! The workspace tree: files and folders with a parent (none at the root), a name unique in its
//! parent, and a path computed from the chain of parents. Tree changes take the session's tree
//! lock (a short lease in MongoDB, so nodes take turns), which keeps moves from creating cycles
//! and deletes from racing creations inside the folder being deleted. Changes are announced on
//! the session's conversation as `workspace.changed` events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::{
    CodeSession, ItemId, ItemKind, Scope, SessionId, SessionRole, WorkspaceItem, check_item_name, language_of, now,
};
use crate::error::{ApiError, ErrorCode};
use crate::events::LiveEvent;
use crate::tenancy::TenantDb;

use super::rooms;
use super::sessions::{access, require};

/// How long a tree lock lasts if its holder dies.
const LOCK_LEASE_MS: i64 = 5_000;
/// How long a change waits for the lock before answering 409.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// An item with its computed path and depth.
pub struct Placed {
    pub item: WorkspaceItem,
    pub path: String,
}

/// Paths of every item, from parent links (items whose chain is broken are left out).
pub fn paths(items: &[WorkspaceItem]) -> HashMap<ItemId, String> {
    let by_id: HashMap<&str, &WorkspaceItem> = items.iter().map(|i| (i.id.as_str(), i)).collect();
    let mut out = HashMap::new();
    for item in items {
        let mut segments = vec![item.name.as_str()];
        let mut parent = item.parent_id.as_str();
        let mut hops = 0;
        while !parent.is_empty() && hops <= items.len() {
            let Some(up) = by_id.get(parent) else { break };
            segments.push(up.name.as_str());
            parent = up.parent_id.as_str();
            hops += 1;
        }
        if parent.is_empty() {
            segments.reverse();
            out.insert(item.id.clone(), segments.join("/"));
        }
    }
    out
}

fn depth(path: &str) -> usize {
    path.split('/').count()
}

/// The whole tree, sorted by path.
pub async fn list(state: &AppState, caller: &ActingUser, id: &SessionId) -> Result<Vec<Placed>, ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.tenant_db(&caller.scope());
    access(&db, caller, id).await?;
    let items = db.workspace().tree(id).await?;
    let mut paths = paths(&items);
    let mut placed: Vec<Placed> =
        items.into_iter().filter_map(|item| paths.remove(&item.id).map(|path| Placed { item, path })).collect();
    // Segment by segment, so a folder's contents follow it directly (`src`, `src/lib`, `src-old`).
    placed.sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
    Ok(placed)
}

pub async fn get(state: &AppState, caller: &ActingUser, id: &SessionId, item: &ItemId) -> Result<Placed, ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.tenant_db(&caller.scope());
    access(&db, caller, id).await?;
    place_of(&db, id, item).await
}

async fn place_of(db: &TenantDb, id: &SessionId, item: &ItemId) -> Result<Placed, ApiError> {
    let items = db.workspace().tree(id).await?;
    let paths = paths(&items);
    let item = items.into_iter().find(|i| &i.id == item).ok_or_else(|| ApiError::not_found("item"))?;
    let path = paths.get(&item.id).cloned().unwrap_or_else(|| item.name.clone());
    Ok(Placed { item, path })
}

struct TreeLock<'a> {
    db: &'a TenantDb,
    session: SessionId,
    holder: String,
}

impl TreeLock<'_> {
    async fn release(self) {
        if let Err(e) = self.db.code_sessions().unlock_tree(&self.session, &self.holder).await {
            tracing::warn!(error = %e, "could not release a tree lock; it expires by itself");
        }
    }
}

async fn lock<'a>(db: &'a TenantDb, session: &SessionId) -> Result<TreeLock<'a>, ApiError> {
    let holder = uuid::Uuid::now_v7().to_string();
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        let now_ms = chrono::Utc::now().timestamp_millis();
        if db.code_sessions().lock_tree(session, &holder, now_ms, now_ms + LOCK_LEASE_MS).await? {
            return Ok(TreeLock { db, session: session.clone(), holder });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(ErrorCode::Conflict, "the tree is being changed; retry"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a tree change under the session's lock, as an editor.
async fn change<T>(
    state: &AppState,
    caller: &ActingUser,
    id: &SessionId,
    work: impl AsyncFnOnce(&TenantDb, &CodeSession, Vec<WorkspaceItem>) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    caller.require(Scope::ChatWrite)?;
    let db = state.store.tenant_db(&caller.scope());
    let (session, role) = access(&db, caller, id).await?;
    require(role, SessionRole::Editor)?;
    let lock = lock(&db, id).await?;
    let result = async { work(&db, &session, db.workspace().tree(id).await?).await }.await;
    lock.release().await;
    result
}

fn check_name(state: &AppState, name: &str) -> Result<(), ApiError> {
    check_item_name(name, state.settings.collab.max_name_bytes).map_err(|e| ApiError::validation("name", e))
}

/// The folder an item goes into: `None` is the root; anything else must be a folder here.
fn parent_path(items: &[WorkspaceItem], parent: Option<&ItemId>) -> Result<Option<String>, ApiError> {
    let Some(parent) = parent else { return Ok(None) };
    let folder = items
        .iter()
        .find(|i| &i.id == parent)
        .ok_or_else(|| ApiError::validation("parent_id", "no such folder in this session"))?;
    if folder.kind != ItemKind::Folder {
        return Err(ApiError::validation("parent_id", "the parent must be a folder"));
    }
    Ok(paths(items).get(parent).cloned())
}

fn name_taken(name: &str) -> ApiError {
    ApiError::new(ErrorCode::Conflict, format!("an item named '{name}' already exists in that folder"))
        .with_details(serde_json::json!({ "name": name }))
}

pub struct NewItem {
    pub parent: Option<ItemId>,
    pub name: String,
    pub kind: ItemKind,
    pub content: Option<String>,
}

pub async fn create(
    state: &Arc<AppState>,
    caller: &ActingUser,
    id: &SessionId,
    new: NewItem,
) -> Result<Placed, ApiError> {
    check_name(state, &new.name)?;
    let collab = &state.settings.collab;
    if new.kind == ItemKind::Folder && new.content.is_some() {
        return Err(ApiError::validation("content", "folders have no content"));
    }
    if new.content.as_ref().is_some_and(|c| c.len() > collab.max_file_bytes) {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("files hold at most {} bytes", collab.max_file_bytes),
        )
        .with_details(serde_json::json!({ "limit": "max_file_bytes", "value": collab.max_file_bytes })));
    }
    let placed = change(state, caller, id, async |db, session, items| {
        let parent = parent_path(&items, new.parent.as_ref())?;
        let path = parent.map_or_else(|| new.name.clone(), |p| format!("{p}/{}", new.name));
        if depth(&path) > collab.max_depth {
            return Err(ApiError::validation("parent_id", format!("folders nest at most {} deep", collab.max_depth)));
        }
        if !db.code_sessions().reserve_items(id, 1, collab.max_items_per_session).await? {
            return Err(ApiError::new(ErrorCode::LimitReached, "the session has too many items").with_details(
                serde_json::json!({ "limit": "max_items_per_session", "value": collab.max_items_per_session }),
            ));
        }
        let at = now();
        let item = WorkspaceItem {
            id: ItemId::new(),
            tenant_id: session.tenant_id.clone(),
            session_id: id.clone(),
            parent_id: new.parent.as_ref().map(ToString::to_string).unwrap_or_default(),
            name: new.name.clone(),
            kind: new.kind,
            size: new.content.as_ref().map_or(0, |c| c.len() as u64),
            language: language_of(&new.name).map(str::to_string),
            mime: (new.kind == ItemKind::File).then(|| "text/plain; charset=utf-8".to_string()),
            version: 1,
            epoch: 1,
            last_modified_by: caller.user_id().clone(),
            created_at: at,
            updated_at: at,
        };
        if !db.workspace().insert(&item).await? {
            db.code_sessions().release_items(id, 1).await?;
            return Err(name_taken(&new.name));
        }
        if let Some(content) = &new.content {
            super::documents::create_with_text(db, &item, content).await.map_err(ApiError::internal)?;
        }
        Ok(Placed { item, path })
    })
    .await?;
    announce(state, caller, id, "created", &placed).await;
    Ok(placed)
}

/// Renames and/or moves an item; a folder cannot go into its own subtree.
pub async fn update(
    state: &AppState,
    caller: &ActingUser,
    id: &SessionId,
    item_id: &ItemId,
    name: Option<String>,
    parent: Option<Option<ItemId>>,
) -> Result<Placed, ApiError> {
    if let Some(name) = &name {
        check_name(state, name)?;
    }
    let max_depth = state.settings.collab.max_depth;
    let placed = change(state, caller, id, async |db, _, items| {
        let item = items.iter().find(|i| &i.id == item_id).ok_or_else(|| ApiError::not_found("item"))?;
        let new_parent = parent.clone().unwrap_or_else(|| item.parent());
        let new_name = name.clone().unwrap_or_else(|| item.name.clone());
        let paths = paths(&items);
        let own_path = paths.get(item_id).cloned().unwrap_or_default();
        let parent_path = parent_path(&items, new_parent.as_ref())?;
        if let Some(target) = &parent_path
            && (new_parent.as_ref() == Some(item_id)
                || target.starts_with(&format!("{own_path}/"))
                || *target == own_path)
        {
            return Err(ApiError::validation("parent_id", "a folder cannot move into itself"));
        }
        let path = parent_path.map_or_else(|| new_name.clone(), |p| format!("{p}/{new_name}"));
        let subtree_depth = paths
            .values()
            .filter(|p| p.starts_with(&format!("{own_path}/")))
            .map(|p| depth(p) - depth(&own_path))
            .max()
            .unwrap_or(0);
        if depth(&path) + subtree_depth > max_depth {
            return Err(ApiError::validation("parent_id", format!("folders nest at most {max_depth} deep")));
        }
        let parent_id = new_parent.as_ref().map(ToString::to_string).unwrap_or_default();
        let language = if item.kind == ItemKind::File { language_of(&new_name) } else { None };
        let moved = db.workspace().place(item_id, &parent_id, &new_name, language, caller.user_id(), now()).await?;
        let item = moved.ok_or_else(|| name_taken(&new_name))?;
        Ok(Placed { item, path })
    })
    .await?;
    announce(state, caller, id, "updated", &placed).await;
    Ok(placed)
}

/// Deletes an item; a folder takes its whole subtree (and their documents) with it.
pub async fn delete(state: &AppState, caller: &ActingUser, id: &SessionId, item_id: &ItemId) -> Result<(), ApiError> {
    let (placed, gone) = change(state, caller, id, async |db, _, items| {
        let paths = paths(&items);
        let path = paths.get(item_id).cloned().ok_or_else(|| ApiError::not_found("item"))?;
        let gone: Vec<WorkspaceItem> = items
            .iter()
            .filter(|i| &i.id == item_id || paths.get(&i.id).is_some_and(|p| p.starts_with(&format!("{path}/"))))
            .cloned()
            .collect();
        let ids: Vec<ItemId> = gone.iter().map(|i| i.id.clone()).collect();
        let deleted = db.workspace().delete_many(id, &ids).await?;
        db.code_sessions().release_items(id, deleted as u32).await?;
        db.collab_docs().delete_docs(&ids).await?;
        let item = gone.iter().find(|i| &i.id == item_id).cloned().ok_or_else(|| ApiError::not_found("item"))?;
        Ok((Placed { item, path }, gone))
    })
    .await?;
    for item in gone.iter().filter(|i| i.kind == ItemKind::File) {
        rooms::reset(state, item).await;
    }
    announce(state, caller, id, "deleted", &placed).await;
    Ok(())
}

/// A file's item, for its content and live document; folders answer 422.
pub async fn file(
    state: &AppState,
    caller: &ActingUser,
    id: &SessionId,
    item_id: &ItemId,
) -> Result<(TenantDb, WorkspaceItem, SessionRole), ApiError> {
    caller.require(Scope::ChatRead)?;
    let db = state.store.tenant_db(&caller.scope());
    let (_, role) = access(&db, caller, id).await?;
    let item = db.workspace().get(id, item_id).await?.ok_or_else(|| ApiError::not_found("item"))?;
    if item.kind != ItemKind::File {
        return Err(ApiError::validation("item_id", "folders have no content"));
    }
    Ok((db, item, role))
}

pub async fn content(
    state: &Arc<AppState>,
    caller: &ActingUser,
    id: &SessionId,
    item_id: &ItemId,
) -> Result<String, ApiError> {
    let (db, item, _) = file(state, caller, id, item_id).await?;
    rooms::read(state, &db, &item).await
}

/// Replaces a file's text (editors); connected editors see it as a normal edit.
pub async fn put_content(
    state: &Arc<AppState>,
    caller: &ActingUser,
    id: &SessionId,
    item_id: &ItemId,
    text: &str,
) -> Result<(), ApiError> {
    caller.require(Scope::ChatWrite)?;
    let (db, item, role) = file(state, caller, id, item_id).await?;
    require(role, SessionRole::Editor)?;
    rooms::replace(state, &db, &item, text, caller.user_id()).await
}

async fn announce(state: &AppState, caller: &ActingUser, id: &SessionId, change: &str, placed: &Placed) {
    let db = state.store.tenant_db(&caller.scope());
    let Ok(Some(session)) = db.code_sessions().get(id).await else { return };
    let event = LiveEvent::Workspace {
        conversation_id: session.conversation_id,
        session_id: id.clone(),
        change: change.to_string(),
        item_id: placed.item.id.clone(),
        path: placed.path.clone(),
        item_kind: placed.item.kind,
        by: caller.user_id().clone(),
    };
    state.redis.publish_event(&caller.tenant.id, &event).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, parent: &str, id: &str) -> WorkspaceItem {
        WorkspaceItem {
            id: ItemId::parse(id).unwrap(),
            tenant_id: crate::domain::TenantId::parse("acme").unwrap(),
            session_id: SessionId::new(),
            parent_id: parent.into(),
            name: name.into(),
            kind: ItemKind::Folder,
            size: 0,
            language: None,
            mime: None,
            version: 1,
            epoch: 1,
            last_modified_by: crate::domain::UserId::parse("u").unwrap(),
            created_at: now(),
            updated_at: now(),
        }
    }

    #[test]
    fn paths_follow_parents_and_skip_broken_chains() {
        let a = "0190f0a0-0000-7000-8000-000000000001";
        let b = "0190f0a0-0000-7000-8000-000000000002";
        let c = "0190f0a0-0000-7000-8000-000000000003";
        let items =
            vec![item("src", "", a), item("lib", a, b), item("orphan", "0190f0a0-0000-7000-8000-00000000dead", c)];
        let paths = paths(&items);
        assert_eq!(paths[&ItemId::parse(b).unwrap()], "src/lib");
        assert_eq!(paths[&ItemId::parse(a).unwrap()], "src");
        assert!(!paths.contains_key(&ItemId::parse(c).unwrap()));
    }
}
