//! Streaming upload: bytes go to the blob store as they arrive, hashed and counted on the way,
//! with the type sniffed from the first bytes and quota reserved ahead of the data. Any refusal
//! aborts the blob and returns the reservation, so a failed upload leaves nothing behind.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::{
    ConversationId, FileEncryption, FileId, Scope, Sharing, SharingMode, StoredFile, mime_allowed, sanitize_filename,
};
use crate::error::{ApiError, ErrorCode};
use crate::tenancy::TenantDb;

use super::{BlobStore, BlobWriter};

/// Bytes looked at to sniff the type (and, for images, the dimensions).
const SNIFF_BYTES: usize = 64 * 1024;
const OCTET_STREAM: &str = "application/octet-stream";

pub struct UploadRequest {
    pub filename: String,
    /// The type the client declared (Content-Type of the body or of the multipart field).
    pub declared_mime: Option<String>,
    /// The exact length, when the client announced it.
    pub declared_size: Option<u64>,
    pub encryption: FileEncryption,
    pub sharing: SharingMode,
    pub conversation_id: Option<ConversationId>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Quota reserved for an upload in flight; whatever is not used is given back, also when the
/// request is dropped half-way (the client went away).
struct Reservation<'a> {
    state: &'a AppState,
    tenant: &'a crate::domain::Tenant,
    reserved: u64,
    settled: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.settled || self.reserved == 0 {
            return;
        }
        let (usage, tenant, bytes) = (self.state.store.usage(), self.tenant.id.clone(), self.reserved as i64);
        tokio::spawn(async move {
            if let Err(e) = usage.adjust(&tenant, -bytes, 0).await {
                tracing::error!(error = %e, tenant = %tenant, bytes, "could not return an abandoned upload's quota");
            }
        });
    }
}

impl Reservation<'_> {
    /// Makes sure at least `needed` bytes are reserved.
    async fn cover(&mut self, needed: u64, step: u64) -> Result<(), ApiError> {
        if needed <= self.reserved {
            return Ok(());
        }
        let more = (needed - self.reserved).max(step);
        let quota = self.tenant.limits.storage_quota_bytes as i64;
        if self.state.store.usage().reserve(&self.tenant.id, more as i64, quota).await? {
            self.reserved += more;
            return Ok(());
        }
        let exact = needed - self.reserved;
        if exact < more && self.state.store.usage().reserve(&self.tenant.id, exact as i64, quota).await? {
            self.reserved += exact;
            return Ok(());
        }
        Err(ApiError::new(ErrorCode::LimitReached, "the tenant's storage quota is used up").with_details(
            serde_json::json!({ "limit": "storage_quota_bytes", "value": self.tenant.limits.storage_quota_bytes }),
        ))
    }

    /// Keeps `kept` bytes (and counts `files` more files), returning the rest.
    async fn settle(mut self, kept: u64, files: i64) -> Result<(), ApiError> {
        self.settled = true;
        let give_back = self.reserved as i64 - kept as i64;
        if give_back != 0 || files != 0 {
            self.state.store.usage().adjust(&self.tenant.id, -give_back, files).await?;
        }
        Ok(())
    }
}

/// The stored type: what the bytes say when they say anything, else what the client declared.
fn decide_mime(sniffed: Option<&str>, declared: Option<&str>, encryption: FileEncryption) -> String {
    let declared =
        declared.map(|d| d.split(';').next().unwrap_or("").trim().to_ascii_lowercase()).filter(|d| d.contains('/'));
    match encryption {
        FileEncryption::E2e => OCTET_STREAM.to_string(),
        FileEncryption::None => sniffed.map(str::to_string).or(declared).unwrap_or_else(|| OCTET_STREAM.to_string()),
    }
}

fn allowed_types<'a>(state: &'a AppState, tenant: &'a crate::domain::Tenant) -> &'a [String] {
    if tenant.allowed_mime_types.is_empty() {
        &state.settings.files.default_allowed_mime_types
    } else {
        &tenant.allowed_mime_types
    }
}

async fn check_sharing(
    db: &TenantDb,
    caller: &ActingUser,
    request: &UploadRequest,
) -> Result<Vec<ConversationId>, ApiError> {
    if request.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::validation("expires_at", "must be in the future"));
    }
    match (request.sharing, &request.conversation_id) {
        (SharingMode::Conversation, None) => {
            Err(ApiError::validation("conversation_id", "is required for conversation sharing"))
        }
        (_, Some(id)) => {
            crate::chat::conversations::as_member(db, caller, id).await?;
            Ok(vec![id.clone()])
        }
        (_, None) => Ok(Vec::new()),
    }
}

/// Streams `body` into storage and records the file.
pub async fn upload<S, E>(
    state: &AppState,
    caller: &ActingUser,
    request: UploadRequest,
    body: S,
) -> Result<StoredFile, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    caller.require(Scope::FilesWrite)?;
    let files = &state.settings.files;
    let too_large = || {
        ApiError::new(ErrorCode::PayloadTooLarge, format!("files may be at most {} bytes", files.max_file_bytes))
            .with_details(serde_json::json!({ "limit_bytes": files.max_file_bytes }))
    };
    if request.declared_size.is_some_and(|n| n > files.max_file_bytes) {
        return Err(too_large());
    }
    let db = state.store.tenant_db(&caller.scope());
    let conversation_ids = check_sharing(&db, caller, &request).await?;
    let mut body = body;
    let mut head = Vec::new();
    while head.len() < SNIFF_BYTES {
        match body.next().await {
            Some(chunk) => head.extend_from_slice(&chunk.map_err(read_error)?),
            None => break,
        }
    }
    let sniffed = infer::get(&head).map(|t| t.mime_type());
    let mime = decide_mime(sniffed, request.declared_mime.as_deref(), request.encryption);
    if request.encryption == FileEncryption::None && !mime_allowed(&mime, allowed_types(state, &caller.tenant)) {
        return Err(ApiError::new(ErrorCode::UnsupportedMediaType, format!("files of type {mime} are not accepted"))
            .with_details(serde_json::json!({ "mime": mime })));
    }
    let (width, height) = match (mime.starts_with("image/"), imagesize::blob_size(&head)) {
        (true, Ok(size)) => (u32::try_from(size.width).ok(), u32::try_from(size.height).ok()),
        _ => (None, None),
    };
    let mut reservation = Reservation { state, tenant: &caller.tenant, reserved: 0, settled: false };
    reservation.cover(request.declared_size.unwrap_or(head.len() as u64), files.reserve_step_bytes).await?;
    let id = FileId::new();
    let blobs = db.blobs();
    let writer = match blobs.create(id.as_str()).await {
        Ok(writer) => writer,
        Err(e) => {
            reservation.settle(0, 0).await?;
            return Err(ApiError::internal(e));
        }
    };
    let written = stream_into(state, writer, head, body, &mut reservation, too_large).await;
    let (size, sha256) = match written {
        Ok(done) => done,
        Err(e) => {
            reservation.settle(0, 0).await?;
            return Err(e);
        }
    };
    let file = StoredFile {
        id: id.clone(),
        tenant_id: caller.tenant.id.clone(),
        uploader_id: caller.user_id().clone(),
        filename: sanitize_filename(&request.filename),
        mime,
        size: size as i64,
        sha256,
        width,
        height,
        storage_backend: blobs.backend().to_string(),
        storage_key: id.to_string(),
        encryption: request.encryption,
        sharing: Sharing { mode: request.sharing, conversation_ids, expires_at: request.expires_at },
        created_at: crate::domain::now(),
    };
    if let Err(e) = db.files().insert(&file).await {
        let _ = blobs.delete(id.as_str()).await;
        reservation.settle(0, 0).await?;
        return Err(e.into());
    }
    reservation.settle(size, 1).await?;
    Ok(file)
}

fn read_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, format!("the upload was interrupted: {e}"))
}

/// Writes `head` and the rest of `body`, enforcing size and quota; aborts the blob on any error.
async fn stream_into<S, E>(
    state: &AppState,
    mut writer: Box<dyn BlobWriter>,
    head: Vec<u8>,
    mut body: S,
    reservation: &mut Reservation<'_>,
    too_large: impl Fn() -> ApiError,
) -> Result<(u64, String), ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let files = &state.settings.files;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut pending = Some(Bytes::from(head));
    loop {
        let chunk = match pending.take() {
            Some(chunk) => chunk,
            None => match body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return abort(writer, read_error(e)).await,
                None => break,
            },
        };
        size += chunk.len() as u64;
        if size > files.max_file_bytes {
            return abort(writer, too_large()).await;
        }
        if let Err(e) = reservation.cover(size, files.reserve_step_bytes).await {
            return abort(writer, e).await;
        }
        hasher.update(&chunk);
        if let Err(e) = writer.write(&chunk).await {
            return abort(writer, ApiError::internal(e)).await;
        }
    }
    writer.finish().await.map_err(ApiError::internal)?;
    Ok((size, hex::encode(hasher.finalize())))
}

async fn abort<T>(writer: Box<dyn BlobWriter>, error: ApiError) -> Result<T, ApiError> {
    if let Err(e) = writer.abort().await {
        tracing::warn!(error = %e, "could not discard an aborted upload");
    }
    Err(error)
}
