//! Listing, sharing, deleting files; signed URLs; the tenant's storage usage.

use chrono::{DateTime, Duration, Utc};

use crate::app::AppState;
use crate::auth::{ActingUser, AnyCaller, TenantCaller, signed_url};
use crate::domain::{ConversationId, FileId, Page, PageRequest, Scope, SharingMode, StoredFile};
use crate::error::{ApiError, ErrorCode};
use crate::tenancy::repos::Usage;

use super::BlobStore;
use super::access::{readable, writable};

/// The caller's own uploads, newest first.
pub async fn list_mine(state: &AppState, caller: &ActingUser, page: PageRequest) -> Result<Page<StoredFile>, ApiError> {
    caller.require(Scope::FilesRead)?;
    let db = state.store.tenant_db(&caller.scope());
    let files = db.files().list_by_uploader(caller.user_id(), page.after.as_deref(), page.limit + 1).await?;
    Ok(Page::from_overfetch(files, page.limit, |f| f.id.to_string()))
}

/// Changes who may read a file. Sharing with a conversation needs the caller's membership.
pub async fn set_sharing(
    state: &AppState,
    caller: &AnyCaller,
    id: &FileId,
    mode: SharingMode,
    conversation: Option<ConversationId>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<StoredFile, ApiError> {
    let (db, _) = writable(state, caller, id).await?;
    if expires_at.is_some_and(|at| at <= crate::domain::now()) {
        return Err(ApiError::validation("expires_at", "must be in the future"));
    }
    if let Some(conversation) = &conversation {
        if let AnyCaller::User(user) = caller {
            crate::chat::conversations::as_member(&db, user, conversation).await?;
        } else if db.conversations().get(conversation).await?.is_none() {
            return Err(ApiError::not_found("conversation"));
        }
        db.files().share_with(std::slice::from_ref(id), conversation).await?;
    } else if mode == SharingMode::Conversation {
        return Err(ApiError::validation("conversation_id", "is required for conversation sharing"));
    }
    db.files().set_sharing(id, mode, expires_at).await?.ok_or_else(|| ApiError::not_found("file"))
}

/// Deletes the bytes and the record and frees the quota. Messages that referred to the file
/// keep their reference; it answers 404 from then on.
pub async fn delete(state: &AppState, caller: &AnyCaller, id: &FileId) -> Result<(), ApiError> {
    let (db, file) = writable(state, caller, id).await?;
    if !db.files().delete(id).await? {
        return Ok(());
    }
    // The record is gone, so the file is gone for everyone: free its quota now, whatever
    // happens to the bytes.
    state.store.usage().adjust(&caller.tenant().id, -file.size, -1).await?;
    if let Err(e) = db.blobs().delete(&file.storage_key).await {
        tracing::warn!(error = %e, file = %id, "could not remove the bytes of a deleted file");
    }
    Ok(())
}

/// A URL that downloads the file without credentials until it expires.
pub async fn signed_url(
    state: &AppState,
    caller: &AnyCaller,
    id: &FileId,
    ttl_secs: Option<u64>,
) -> Result<(String, DateTime<Utc>), ApiError> {
    readable(state, caller, id).await?;
    let files = &state.settings.files;
    let ttl = ttl_secs.unwrap_or(files.signed_url_default_ttl_secs);
    if ttl == 0 || ttl > files.signed_url_max_ttl_secs {
        return Err(ApiError::validation(
            "expires_in_secs",
            format!("must be between 1 and {}", files.signed_url_max_ttl_secs),
        ));
    }
    let expires_at = crate::domain::now() + Duration::seconds(ttl as i64);
    let expires = expires_at.timestamp();
    let tenant = &caller.tenant().id;
    let signature = signed_url::sign(&state.settings, tenant, id, expires);
    let url = format!("/v1/files/{id}/content?tenant={tenant}&expires={expires}&signature={signature}");
    Ok((url, DateTime::from_timestamp(expires, 0).unwrap_or(expires_at)))
}

/// Storage in use (including uploads in flight) against the tenant's quota.
pub async fn usage(state: &AppState, caller: &TenantCaller) -> Result<Usage, ApiError> {
    caller.require(Scope::FilesRead)?;
    Ok(state.store.usage().get(&caller.tenant.id).await?)
}

/// Files a message refers to: each must exist and be the sender's own upload.
pub async fn for_message(state: &AppState, caller: &ActingUser, ids: &[FileId]) -> Result<Vec<StoredFile>, ApiError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let db = state.store.tenant_db(&caller.scope());
    let found = db.files().get_many(ids).await?;
    let mut files = Vec::with_capacity(ids.len());
    for id in ids {
        let file = found
            .iter()
            .find(|f| &f.id == id)
            .ok_or_else(|| ApiError::validation("file_ids", format!("file '{id}' does not exist")))?;
        if &file.uploader_id != caller.user_id() {
            return Err(ApiError::new(ErrorCode::Forbidden, format!("file '{id}' was uploaded by someone else")));
        }
        files.push(file.clone());
    }
    Ok(files)
}
