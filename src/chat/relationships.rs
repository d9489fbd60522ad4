//! Block, mute and friend: one-sided relationships from the acting user to another user.

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::{Page, PageRequest, Relationship, RelationshipKind, Scope, UserId};
use crate::error::ApiError;

pub async fn put_relationship(
    state: &AppState,
    caller: &ActingUser,
    other: &UserId,
    kind: RelationshipKind,
) -> Result<Relationship, ApiError> {
    caller.require(Scope::ChatWrite)?;
    if other == caller.user_id() {
        return Err(ApiError::validation("user_id", "a user cannot relate to themselves"));
    }
    let db = state.store.tenant_db(&caller.scope());
    db.users().get(other).await?.ok_or_else(|| ApiError::not_found("user"))?;
    let relationship = Relationship {
        id: Relationship::key(caller.user_id(), other, kind),
        tenant_id: caller.tenant.id.clone(),
        user_id: caller.user_id().clone(),
        other_id: other.clone(),
        kind,
        created_at: crate::domain::now(),
    };
    Ok(db.relationships().put(&relationship).await?)
}

/// Removes one kind, or every kind when `kind` is `None`. Removing nothing is not an error.
pub async fn delete_relationship(
    state: &AppState,
    caller: &ActingUser,
    other: &UserId,
    kind: Option<RelationshipKind>,
) -> Result<(), ApiError> {
    caller.require(Scope::ChatWrite)?;
    let kinds = match kind {
        Some(kind) => vec![kind],
        None => vec![RelationshipKind::Block, RelationshipKind::Mute, RelationshipKind::Friend],
    };
    state.store.tenant_db(&caller.scope()).relationships().delete(caller.user_id(), other, &kinds).await?;
    Ok(())
}

pub async fn list_relationships(
    state: &AppState,
    caller: &ActingUser,
    kind: Option<RelationshipKind>,
    page: PageRequest,
) -> Result<Page<Relationship>, ApiError> {
    caller.require(Scope::ChatRead)?;
    let repo = state.store.tenant_db(&caller.scope()).relationships();
    let items = repo.list(caller.user_id(), kind, page.after.as_deref(), page.limit + 1).await?;
    Ok(Page::from_overfetch(items, page.limit, |r| r.id.clone()))
}
