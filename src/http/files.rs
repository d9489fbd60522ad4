//! Files: upload (raw body or multipart), download with ranges, metadata, sharing, signed URLs,
//! delete, storage usage.

use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use validator::Validate;

use crate::app::AppState;
use crate::auth::{ActingUser, AnyCaller, TenantCaller};
use crate::domain::{ConversationId, FileEncryption, FileId, PageRequest, SharingMode, StoredFile};
use crate::error::{ApiError, ErrorCode};
use crate::files::access::{self, Download};
use crate::files::manage;
use crate::files::upload::{UploadRequest, upload};

use super::conversations::conversation_path;
use super::extract::{PageQuery, ValidJson, ValidJsonOrDefault, path_id};
use super::openapi::ErrorResponses;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// Display name of the file; required for a raw body (multipart takes the part's filename).
    pub filename: Option<String>,
    /// `private` (default), `conversation` (with `conversation_id`) or `public`.
    #[param(value_type = Option<String>)]
    pub sharing: Option<SharingMode>,
    pub conversation_id: Option<String>,
    /// When sharing lapses back to private.
    pub expires_at: Option<DateTime<Utc>>,
    /// `e2e` for client-encrypted bytes (stored as `application/octet-stream`, not sniffed).
    #[param(value_type = Option<String>)]
    pub encryption: Option<FileEncryption>,
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SharingRequest {
    pub sharing: SharingMode,
    /// Adds this conversation to the file's conversations.
    pub conversation_id: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedUrlRequest {
    /// Default `files.signed_url_default_ttl_secs` (1 hour), at most `files.signed_url_max_ttl_secs`.
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignedQuery {
    pub tenant: String,
    pub expires: i64,
    pub signature: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FileView {
    pub id: String,
    pub uploader_id: String,
    pub filename: String,
    pub mime: String,
    pub size: i64,
    pub sha256: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub encryption: FileEncryption,
    pub sharing: SharingMode,
    pub conversation_ids: Vec<String>,
    pub sharing_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Download with credentials.
    pub url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FilePage {
    pub items: Vec<FileView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignedUrlView {
    /// Works without credentials until `expires_at` (then 410).
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    /// Bytes of stored files plus uploads in flight.
    pub storage_bytes: i64,
    pub storage_quota_bytes: u64,
    pub file_count: i64,
}

impl From<StoredFile> for FileView {
    fn from(f: StoredFile) -> Self {
        Self {
            url: format!("/v1/files/{}", f.id),
            id: f.id.to_string(),
            uploader_id: f.uploader_id.to_string(),
            filename: f.filename,
            mime: f.mime,
            size: f.size,
            sha256: f.sha256,
            width: f.width,
            height: f.height,
            encryption: f.encryption,
            sharing: f.sharing.mode,
            conversation_ids: f.sharing.conversation_ids.iter().map(|c| c.to_string()).collect(),
            sharing_expires_at: f.sharing.expires_at,
            created_at: f.created_at,
        }
    }
}

fn file_path(raw: &str) -> Result<FileId, ApiError> {
    path_id(raw, "file_id", FileId::parse)
}

fn header_str(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Upload a file: a raw body (`Content-Type` = the file's type, `?filename=`) or
/// `multipart/form-data` with a `file` part. Streamed to storage; the type is sniffed from the
/// bytes and replaces a declared type that disagrees.
#[utoipa::path(post, path = "/v1/files", tag = "files", security(("user_jwt" = []), ("api_key" = [])),
    params(UploadQuery), request_body(content = Vec<u8>, description = "The file, raw or as multipart/form-data",
        content_type = "application/octet-stream"),
    responses((status = 201, body = FileView), ErrorResponses))]
pub async fn upload_file(
    caller: ActingUser,
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<UploadQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let mut request = UploadRequest {
        filename: query.filename.unwrap_or_default(),
        declared_mime: header_str(&req, header::CONTENT_TYPE).map(str::to_string),
        declared_size: header_str(&req, header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
        encryption: query.encryption.unwrap_or_default(),
        sharing: query.sharing.unwrap_or_default(),
        conversation_id: query.conversation_id.as_deref().map(conversation_path).transpose()?,
        expires_at: query.expires_at,
    };
    let is_multipart = request.declared_mime.as_deref().is_some_and(|m| m.starts_with("multipart/form-data"));
    let file = if is_multipart {
        let mut parts = Multipart::new(req.headers(), payload);
        loop {
            let part = parts.next().await.ok_or_else(|| ApiError::validation("file", "the form has no 'file' part"))?;
            let part =
                part.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("malformed multipart body: {e}")))?;
            if part.name() != Some("file") {
                continue;
            }
            request.filename =
                part.content_disposition().and_then(|d| d.get_filename()).unwrap_or_default().to_string();
            request.declared_mime = part.content_type().map(|m| m.essence_str().to_string());
            request.declared_size = None;
            break upload(&state, &caller, request, part).await?;
        }
    } else {
        if request.filename.trim().is_empty() {
            return Err(ApiError::validation("filename", "is required for a raw upload"));
        }
        upload(&state, &caller, request, payload).await?
    };
    Ok(HttpResponse::Created().json(FileView::from(file)))
}

/// Content-Disposition for a sanitised name: an ASCII fallback plus the exact UTF-8 name.
fn disposition(filename: &str) -> String {
    let ascii: String = filename.chars().map(|c| if c.is_ascii() && c != '\\' { c } else { '_' }).collect();
    let encoded: String = filename
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

fn respond(download: Download) -> HttpResponse {
    let file = &download.file;
    let (start, end) = download.range;
    let length = if file.size == 0 { 0 } else { end - start + 1 };
    let mut response = if download.partial { HttpResponse::PartialContent() } else { HttpResponse::Ok() };
    response
        .content_type(file.mime.as_str())
        .insert_header((header::CONTENT_DISPOSITION, disposition(&file.filename)))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::ETAG, format!("\"{}\"", file.sha256)))
        .insert_header((header::CACHE_CONTROL, "private, max-age=0"));
    if download.partial {
        response.insert_header((header::CONTENT_RANGE, format!("bytes {start}-{end}/{}", file.size)));
    }
    response.no_chunking(length).streaming(download.body)
}

/// Download a file (uploader, members of a shared conversation, any user for public files,
/// server keys). Supports single `Range: bytes=` requests.
#[utoipa::path(get, path = "/v1/files/{file_id}", tag = "files", security(("user_jwt" = []), ("api_key" = [])),
    params(("file_id" = String, Path)),
    responses((status = 200, description = "The bytes", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range"), (status = 416, body = crate::error::ErrorBody), ErrorResponses))]
pub async fn download_file(
    caller: AnyCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (db, file) = access::readable(&state, &caller, &file_path(&path)?).await?;
    let range = access::parse_range(header_str(&req, header::RANGE), file.size as u64)?;
    Ok(respond(access::open(&db, file, range)))
}

/// Download through a signed URL: no credentials; 410 once expired, 403 if tampered with.
#[utoipa::path(get, path = "/v1/files/{file_id}/content", tag = "files",
    params(("file_id" = String, Path), SignedQuery),
    responses((status = 200, description = "The bytes", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range"), (status = 410, body = crate::error::ErrorBody), ErrorResponses))]
pub async fn download_signed(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<SignedQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = file_path(&path)?;
    let scope = access::signed_scope(&state, &query.tenant, &id, query.expires, &query.signature)?;
    let (db, file) = access::via_signed_url(&state, &scope, &id).await?;
    let range = access::parse_range(header_str(&req, header::RANGE), file.size as u64)?;
    Ok(respond(access::open(&db, file, range)))
}

/// A file's metadata.
#[utoipa::path(get, path = "/v1/files/{file_id}/metadata", tag = "files", security(("user_jwt" = []), ("api_key" = [])),
    params(("file_id" = String, Path)), responses((status = 200, body = FileView), ErrorResponses))]
pub async fn file_metadata(
    caller: AnyCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (_, file) = access::readable(&state, &caller, &file_path(&path)?).await?;
    Ok(HttpResponse::Ok().json(FileView::from(file)))
}

/// The caller's own uploads, newest first.
#[utoipa::path(get, path = "/v1/files", tag = "files", security(("user_jwt" = []), ("api_key" = [])),
    params(PageQuery), responses((status = 200, body = FilePage), ErrorResponses))]
pub async fn list_files(
    caller: ActingUser,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page: PageRequest = query.into_inner().into_page_request(&state)?;
    let page = manage::list_mine(&state, &caller, page).await?.map(FileView::from);
    Ok(HttpResponse::Ok().json(FilePage { items: page.items, next_cursor: page.next_cursor }))
}

/// Change who may read a file (uploader or server key).
#[utoipa::path(patch, path = "/v1/files/{file_id}", tag = "files", security(("user_jwt" = []), ("api_key" = [])),
    params(("file_id" = String, Path)), request_body = SharingRequest, responses((status = 200, body = FileView), ErrorResponses))]
pub async fn share_file(
    caller: AnyCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJson(body): ValidJson<SharingRequest>,
) -> Result<HttpResponse, ApiError> {
    let conversation: Option<ConversationId> = body.conversation_id.as_deref().map(conversation_path).transpose()?;
    let file =
        manage::set_sharing(&state, &caller, &file_path(&path)?, body.sharing, conversation, body.expires_at).await?;
    Ok(HttpResponse::Ok().json(FileView::from(file)))
}

/// Delete a file (uploader or server key): bytes and record go, the quota is freed.
#[utoipa::path(delete, path = "/v1/files/{file_id}", tag = "files", security(("user_jwt" = []), ("api_key" = [])),
    params(("file_id" = String, Path)), responses((status = 204, description = "Deleted"), ErrorResponses))]
pub async fn delete_file(
    caller: AnyCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    manage::delete(&state, &caller, &file_path(&path)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// An HMAC-signed URL that downloads the file without credentials until it expires.
#[utoipa::path(post, path = "/v1/files/{file_id}/url", tag = "files", security(("user_jwt" = []), ("api_key" = [])),
    params(("file_id" = String, Path)), request_body(content = SignedUrlRequest, description = "Optional"),
    responses((status = 201, body = SignedUrlView), ErrorResponses))]
pub async fn sign_url(
    caller: AnyCaller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    ValidJsonOrDefault(body): ValidJsonOrDefault<SignedUrlRequest>,
) -> Result<HttpResponse, ApiError> {
    let (url, expires_at) = manage::signed_url(&state, &caller, &file_path(&path)?, body.expires_in_secs).await?;
    Ok(HttpResponse::Created().json(SignedUrlView { url, expires_at }))
}

/// The tenant's storage use against its quota (scope `files:read`).
#[utoipa::path(get, path = "/v1/usage", tag = "files", security(("api_key" = [])),
    responses((status = 200, body = UsageView), ErrorResponses))]
pub async fn usage(caller: TenantCaller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let usage = manage::usage(&state, &caller).await?;
    Ok(HttpResponse::Ok().json(UsageView {
        storage_bytes: usage.storage_bytes,
        storage_quota_bytes: caller.tenant.limits.storage_quota_bytes,
        file_count: usage.file_count,
    }))
}
