//! Who may read, change or delete a file, and opening its bytes for a (ranged) download.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::app::AppState;
use crate::auth::{AnyCaller, TenantScope, signed_url};
use crate::domain::{FileId, Scope, SharingMode, StoredFile, TenantStatus, UserId};
use crate::error::{ApiError, ErrorCode};
use crate::tenancy::TenantDb;

use super::BlobStore;

/// A download ready to stream: `range` is the inclusive byte range served (the whole file when
/// no range was asked for).
pub struct Download {
    pub file: StoredFile,
    pub range: (u64, u64),
    pub partial: bool,
    pub body: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

fn not_found() -> ApiError {
    ApiError::not_found("file")
}

/// Whether `user` may read `file`: the uploader always; others while sharing is live, any user
/// for public files, members of a shared conversation for conversation files.
async fn user_may_read(db: &TenantDb, user: &UserId, file: &StoredFile) -> Result<bool, ApiError> {
    if &file.uploader_id == user {
        return Ok(true);
    }
    if !file.sharing.is_live(crate::domain::now()) {
        return Ok(false);
    }
    match file.sharing.mode {
        SharingMode::Private => Ok(false),
        SharingMode::Public => Ok(true),
        SharingMode::Conversation => {
            for conversation in &file.sharing.conversation_ids {
                if db.members().get(conversation, user).await?.is_some_and(|m| m.is_active()) {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

/// The file, if the caller may read it (server keys with `files:read` may read every file);
/// 404 otherwise, so files one cannot read look like files that do not exist.
pub async fn readable(state: &AppState, caller: &AnyCaller, id: &FileId) -> Result<(TenantDb, StoredFile), ApiError> {
    let db = state.store.tenant_db(&caller.scope());
    let file = db.files().get(id).await?.ok_or_else(not_found)?;
    match caller {
        AnyCaller::Server(key) => key.require(Scope::FilesRead)?,
        AnyCaller::User(user) => {
            user.require(Scope::FilesRead)?;
            if !user_may_read(&db, user.user_id(), &file).await? {
                return Err(not_found());
            }
        }
    }
    Ok((db, file))
}

/// The file, if the caller may change or delete it: its uploader, or a server key with
/// `files:write`.
pub async fn writable(state: &AppState, caller: &AnyCaller, id: &FileId) -> Result<(TenantDb, StoredFile), ApiError> {
    match caller {
        AnyCaller::Server(key) => {
            key.require(Scope::FilesWrite)?;
            let db = state.store.tenant_db(&caller.scope());
            let file = db.files().get(id).await?.ok_or_else(not_found)?;
            Ok((db, file))
        }
        AnyCaller::User(user) => {
            user.require(Scope::FilesWrite)?;
            let (db, file) = readable(state, caller, id).await?;
            if &file.uploader_id != user.user_id() {
                return Err(ApiError::new(ErrorCode::Forbidden, "only the uploader may change or delete this file"));
            }
            Ok((db, file))
        }
    }
}

/// The scope a valid signed URL grants; 410 once expired, 403 for a bad signature.
pub fn signed_scope(
    state: &AppState,
    tenant: &str,
    id: &FileId,
    expires: i64,
    signature: &str,
) -> Result<TenantScope, ApiError> {
    signed_url::verify(&state.settings, tenant, id, expires, signature, crate::domain::now().timestamp()).map_err(|e| {
        match e {
            signed_url::SignedUrlError::Expired => {
                ApiError::new(ErrorCode::UrlExpired, "this download URL has expired")
            }
            signed_url::SignedUrlError::Invalid => {
                ApiError::new(ErrorCode::InvalidSignature, "this download URL is not valid")
            }
        }
    })
}

/// Opens the file for download through a signed URL.
pub async fn via_signed_url(
    state: &AppState,
    scope: &TenantScope,
    id: &FileId,
) -> Result<(TenantDb, StoredFile), ApiError> {
    let tenant = state.store.tenants().get(scope.tenant_id()).await?.ok_or_else(not_found)?;
    match tenant.status {
        TenantStatus::Active => {}
        TenantStatus::Suspended => return Err(ApiError::new(ErrorCode::TenantSuspended, "this tenant is suspended")),
        _ => return Err(not_found()),
    }
    let db = state.store.tenant_db(scope);
    let file = db.files().get(id).await?.ok_or_else(not_found)?;
    Ok((db, file))
}

/// Parses a `Range` header against the file size: `Ok(None)` serves the whole file; a range
/// that cannot be satisfied is 416. Only single `bytes=` ranges are honoured; anything else is
/// ignored, as HTTP allows.
pub fn parse_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let unsatisfiable = || {
        ApiError::new(ErrorCode::RangeNotSatisfiable, format!("the file has {size} bytes"))
            .with_details(serde_json::json!({ "size": size }))
            .with_header("content-range", format!("bytes */{size}"))
    };
    let (start, end) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| unsatisfiable())?;
            if n == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            (size.saturating_sub(n), size - 1)
        }
        (start, "") => (start.parse().map_err(|_| unsatisfiable())?, size.saturating_sub(1)),
        (start, end) => {
            let (s, e): (u64, u64) =
                (start.parse().map_err(|_| unsatisfiable())?, end.parse().map_err(|_| unsatisfiable())?);
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if start >= size || start > end {
        return Err(unsatisfiable());
    }
    Ok(Some((start, end)))
}

/// Opens the bytes for streaming.
pub fn open(db: &TenantDb, file: StoredFile, range: Option<(u64, u64)>) -> Download {
    let size = file.size as u64;
    let (partial, (start, end)) = match range {
        Some(r) => (true, r),
        None => (false, (0, size.saturating_sub(1))),
    };
    let body = if size == 0 {
        futures_util::stream::empty().boxed()
    } else {
        db.blobs().read(&file.storage_key, start, end).map(|chunk| chunk.map_err(std::io::Error::other)).boxed()
    };
    Download { file, range: (start, end), partial, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range(None, 10).unwrap(), None);
        assert_eq!(parse_range(Some("bytes=0-3"), 10).unwrap(), Some((0, 3)));
        assert_eq!(parse_range(Some("bytes=5-"), 10).unwrap(), Some((5, 9)));
        assert_eq!(parse_range(Some("bytes=-4"), 10).unwrap(), Some((6, 9)));
        assert_eq!(parse_range(Some("bytes=8-100"), 10).unwrap(), Some((8, 9)));
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10).unwrap(), None);
        assert!(parse_range(Some("bytes=10-"), 10).is_err());
        assert!(parse_range(Some("bytes=5-2"), 10).is_err());
        assert!(parse_range(Some("bytes=x-y"), 10).is_err());
    }
}
