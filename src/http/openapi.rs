//! The OpenAPI 3.1 document (served at `/openapi.json`, committed as `openapi/openapi.json`)
//! and the interactive docs at `/docs`.

use actix_web::{HttpResponse, web};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::error::ErrorBody;

/// Error responses shared by every route; bodies are always `ErrorBody`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ErrorResponses {
    /// `invalid_json`, `invalid_request`: malformed JSON, query or path parameters.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `unauthorized`: missing, malformed, unknown, expired or revoked credentials.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `forbidden`, `insufficient_scope`, `tenant_suspended`, `user_deactivated`, `blocked`, `not_a_member`, `invalid_signature`.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `not_found`: also for ids that belong to another tenant.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// `conflict`, `tenant_exists`, `limit_reached`, `api_key_revoked`, `last_owner`, `recipients_mismatch`.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// `url_expired`, `stale_keys` (with the stale recipient devices).
    #[response(status = 410)]
    Gone(ErrorBody),
    /// `payload_too_large`.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// `unsupported_media_type`: send `application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// `validation_failed`, with per-field `details.fields`.
    #[response(status = 422)]
    Unprocessable(ErrorBody),
    /// `rate_limited` (see `Retry-After`), `too_many_connections`.
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// `internal`.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `service_unavailable`.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |format: &str, description: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.bearer_format = Some(format.to_string());
            http.description = Some(description.to_string());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(
            "operator_token",
            bearer("opaque", "Platform operator token from confab's configuration (`auth.operator_token`)."),
        );
        components.add_security_scheme(
            "api_key",
            bearer(
                "cfk_<env>_<id>_<secret><crc>",
                "A tenant's API key, for its backend servers only. On user routes (`/v1/me`, \
                 `/v1/conversations`, `/v1/search`) a server key acts as the user named by the `user_id` query parameter.",
            ),
        );
        components.add_security_scheme(
            "user_jwt",
            bearer("JWT", "An end user's token (HS256, signed with the tenant's signing key)."),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "confab", description = "Multi-tenant chat-as-a-service: REST API."),
    paths(
        super::health::live,
        super::health::ready,
        super::health::metrics,
        super::tenants::create_tenant,
        super::tenants::list_tenants,
        super::tenants::get_tenant,
        super::tenants::update_tenant,
        super::tenants::delete_tenant,
        super::api_keys::create_api_key_as_operator,
        super::api_keys::create_api_key,
        super::api_keys::list_api_keys,
        super::api_keys::rotate_api_key,
        super::api_keys::revoke_api_key,
        super::audit_log::list_audit_log,
        super::audit_log::verify_audit_log,
        super::audit_log::verify_as_operator,
        super::signing_keys::rotate_signing_key,
        super::signing_keys::list_signing_keys,
        super::users::put_user,
        super::users::get_user,
        super::users::list_users,
        super::users::patch_user,
        super::users::deactivate_user,
        super::users::reactivate_user,
        super::users::mint_token,
        super::me::get_me,
        super::me::my_conversations,
        super::me::my_unread,
        super::me::put_relationship,
        super::me::delete_relationship,
        super::me::list_relationships,
        super::me::search_messages,
        super::conversations::create_conversation,
        super::conversations::get_conversation,
        super::conversations::update_conversation,
        super::conversations::join,
        super::conversations::list_members,
        super::conversations::add_members,
        super::conversations::update_member,
        super::conversations::remove_member,
        super::conversations::ban_member,
        super::conversations::unban_member,
        super::conversations::mark_read,
        super::conversations::mark_delivered,
        super::messages::send_message,
        super::messages::list_messages,
        super::messages::get_message,
        super::messages::list_replies,
        super::messages::edit_message,
        super::messages::delete_message,
        super::messages::add_reaction,
        super::messages::remove_reaction,
        super::messages::pin_message,
        super::messages::unpin_message,
        super::messages::list_pins,
        super::files::upload_file,
        super::files::list_files,
        super::files::download_file,
        super::files::download_signed,
        super::files::file_metadata,
        super::files::share_file,
        super::files::delete_file,
        super::files::sign_url,
        super::files::usage,
        super::devices::register_device,
        super::devices::rotate_key,
        super::devices::revoke_device,
        super::devices::list_devices,
        super::devices::key_events,
        super::realtime::open_socket,
        super::realtime::create_ticket,
        super::realtime::user_presence,
        super::realtime::conversation_presence,
        super::realtime::user_connections,
        super::code_sessions::create_session,
        super::code_sessions::list_sessions,
        super::code_sessions::get_session,
        super::code_sessions::update_session,
        super::code_sessions::delete_session,
        super::code_sessions::fork_session,
        super::code_sessions::list_session_members,
        super::code_sessions::put_session_member,
        super::code_sessions::remove_session_member,
        super::workspace::list_items,
        super::workspace::create_item,
        super::workspace::get_item,
        super::workspace::update_item,
        super::workspace::delete_item,
        super::workspace::get_content,
        super::workspace::put_content,
        super::workspace::open_document,
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "health", description = "Liveness, readiness, metrics"),
        (name = "tenants", description = "Operator: tenant lifecycle"),
        (name = "api-keys", description = "API keys of a tenant's backends"),
        (name = "audit", description = "Hash-chained audit log"),
        (name = "users", description = "End users and their tokens"),
        (name = "me", description = "The acting user's own conversations, unread counts and relationships"),
        (name = "conversations", description = "Direct conversations, groups and channels"),
        (name = "members", description = "Membership, roles and bans"),
        (name = "messages", description = "Messages, threads, reactions, pins and search"),
        (name = "receipts", description = "Read and delivered marks"),
        (name = "e2e", description = "End-to-end encryption: the device key directory (see docs/e2e.md)"),
        (name = "files", description = "Uploads, downloads, sharing, signed URLs, storage usage"),
        (name = "code-sessions", description = "Code sessions: members and roles, the workspace tree, file text and live Yjs documents"),
        (name = "realtime", description = "The WebSocket gateway, its tickets, presence and live connections"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON, exactly as committed in `openapi/openapi.json`.
pub fn document_json() -> String {
    ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serialises")
}

async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(document_json())
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(openapi_json))
        .route(
            "/docs",
            web::get()
                .to(|| async { HttpResponse::PermanentRedirect().insert_header(("location", "/docs/")).finish() }),
        )
        .service(SwaggerUi::new("/docs/{_:.*}").config(utoipa_swagger_ui::Config::from("/openapi.json")));
}
