//! The REST surface: thin handlers (extract, call one use case, map to a response), one file
//! per resource, plus the request-context middleware, extractors and the OpenAPI document.

mod api_keys;
mod audit_log;
mod code_sessions;
mod conversations;
mod devices;
mod extract;
mod files;
mod health;
mod me;
mod messages;
mod middleware;
pub mod openapi;
mod realtime;
mod signing_keys;
mod tenants;
pub mod upgrade;
mod users;
mod workspace;

use actix_web::web;

use crate::error::{ApiError, ErrorCode};

pub use extract::{PageQuery, ValidJson};
pub use messages::{MessageView, SendMessageRequest, live_message_view};
pub use middleware::request_context;

/// Registers every route and the extractor error handlers.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(extract::query_config())
        .app_data(extract::path_config())
        .route("/health/live", web::get().to(health::live))
        .route("/health/ready", web::get().to(health::ready))
        .route("/metrics", web::get().to(health::metrics))
        .configure(openapi::configure)
        .service(
            web::scope("/admin/v1")
                .route("/tenants", web::post().to(tenants::create_tenant))
                .route("/tenants", web::get().to(tenants::list_tenants))
                .route("/tenants/{tenant_id}", web::get().to(tenants::get_tenant))
                .route("/tenants/{tenant_id}", web::patch().to(tenants::update_tenant))
                .route("/tenants/{tenant_id}", web::delete().to(tenants::delete_tenant))
                .route("/tenants/{tenant_id}/api-keys", web::post().to(api_keys::create_api_key_as_operator))
                .route("/tenants/{tenant_id}/audit-log/verify", web::get().to(audit_log::verify_as_operator))
                .route("/tenants/{tenant_id}/signing-keys/rotate", web::post().to(signing_keys::rotate_signing_key)),
        )
        .service(
            web::scope("/v1")
                .route("/api-keys", web::post().to(api_keys::create_api_key))
                .route("/api-keys", web::get().to(api_keys::list_api_keys))
                .route("/api-keys/{key_id}/rotate", web::post().to(api_keys::rotate_api_key))
                .route("/api-keys/{key_id}", web::delete().to(api_keys::revoke_api_key))
                .route("/audit-log", web::get().to(audit_log::list_audit_log))
                .route("/audit-log/verify", web::get().to(audit_log::verify_audit_log))
                .route("/signing-keys", web::get().to(signing_keys::list_signing_keys))
                .configure(chat_routes)
                .configure(session_routes),
        );
}

/// The answer for any path no route matches.
pub async fn route_not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(ErrorCode::RouteNotFound, "no such route"))
}

fn session_routes(cfg: &mut web::ServiceConfig) {
    const SESSION: &str = "/sessions/{session_id}";
    let at = |suffix: &str| format!("{SESSION}{suffix}");
    cfg.route("/sessions", web::post().to(code_sessions::create_session))
        .route("/sessions", web::get().to(code_sessions::list_sessions))
        .route(SESSION, web::get().to(code_sessions::get_session))
        .route(SESSION, web::patch().to(code_sessions::update_session))
        .route(SESSION, web::delete().to(code_sessions::delete_session))
        .route(&at("/fork"), web::post().to(code_sessions::fork_session))
        .route(&at("/members"), web::get().to(code_sessions::list_session_members))
        .route(&at("/members/{user_id}"), web::put().to(code_sessions::put_session_member))
        .route(&at("/members/{user_id}"), web::delete().to(code_sessions::remove_session_member))
        .route(&at("/items"), web::get().to(workspace::list_items))
        .route(&at("/items"), web::post().to(workspace::create_item))
        .route(&at("/items/{item_id}"), web::get().to(workspace::get_item))
        .route(&at("/items/{item_id}"), web::patch().to(workspace::update_item))
        .route(&at("/items/{item_id}"), web::delete().to(workspace::delete_item))
        .route(&at("/files/{item_id}/content"), web::get().to(workspace::get_content))
        .route(&at("/files/{item_id}/content"), web::put().to(workspace::put_content))
        .route(&at("/files/{item_id}/yjs"), web::get().to(workspace::open_document));
}

fn chat_routes(cfg: &mut web::ServiceConfig) {
    const CONVERSATION: &str = "/conversations/{conversation_id}";
    let at = |suffix: &str| format!("{CONVERSATION}{suffix}");
    cfg.route("/ws", web::get().to(realtime::open_socket))
        .route("/ws/tickets", web::post().to(realtime::create_ticket))
        .route("/users/{user_id}/presence", web::get().to(realtime::user_presence))
        .route("/users/{user_id}/connections", web::get().to(realtime::user_connections))
        .route(&at("/presence"), web::get().to(realtime::conversation_presence))
        .route("/users", web::get().to(users::list_users))
        .route("/users/{user_id}", web::put().to(users::put_user))
        .route("/users/{user_id}", web::get().to(users::get_user))
        .route("/users/{user_id}", web::patch().to(users::patch_user))
        .route("/users/{user_id}", web::delete().to(users::deactivate_user))
        .route("/users/{user_id}/reactivate", web::post().to(users::reactivate_user))
        .route("/users/{user_id}/tokens", web::post().to(users::mint_token))
        .route("/me", web::get().to(me::get_me))
        .route("/me/conversations", web::get().to(me::my_conversations))
        .route("/me/unread", web::get().to(me::my_unread))
        .route("/me/devices", web::post().to(devices::register_device))
        .route("/me/devices/{device_id}", web::delete().to(devices::revoke_device))
        .route("/me/devices/{device_id}/keys", web::post().to(devices::rotate_key))
        .route("/devices", web::get().to(devices::list_devices))
        .route("/users/{user_id}/key-events", web::get().to(devices::key_events))
        .route("/me/relationships", web::get().to(me::list_relationships))
        .route("/me/relationships/{user_id}", web::put().to(me::put_relationship))
        .route("/me/relationships/{user_id}", web::delete().to(me::delete_relationship))
        .route("/search/messages", web::get().to(me::search_messages))
        .route("/files", web::post().to(files::upload_file))
        .route("/files", web::get().to(files::list_files))
        .route("/files/{file_id}", web::get().to(files::download_file))
        .route("/files/{file_id}", web::patch().to(files::share_file))
        .route("/files/{file_id}", web::delete().to(files::delete_file))
        .route("/files/{file_id}/content", web::get().to(files::download_signed))
        .route("/files/{file_id}/metadata", web::get().to(files::file_metadata))
        .route("/files/{file_id}/url", web::post().to(files::sign_url))
        .route("/usage", web::get().to(files::usage))
        .route("/conversations", web::post().to(conversations::create_conversation))
        .route(CONVERSATION, web::get().to(conversations::get_conversation))
        .route(CONVERSATION, web::patch().to(conversations::update_conversation))
        .route(&at("/join"), web::post().to(conversations::join))
        .route(&at("/members"), web::get().to(conversations::list_members))
        .route(&at("/members"), web::post().to(conversations::add_members))
        .route(&at("/members/{user_id}"), web::patch().to(conversations::update_member))
        .route(&at("/members/{user_id}"), web::delete().to(conversations::remove_member))
        .route(&at("/bans/{user_id}"), web::put().to(conversations::ban_member))
        .route(&at("/bans/{user_id}"), web::delete().to(conversations::unban_member))
        .route(&at("/read"), web::post().to(conversations::mark_read))
        .route(&at("/delivered"), web::post().to(conversations::mark_delivered))
        .route(&at("/messages"), web::post().to(messages::send_message))
        .route(&at("/messages"), web::get().to(messages::list_messages))
        .route(&at("/messages/{seq}"), web::get().to(messages::get_message))
        .route(&at("/messages/{seq}"), web::patch().to(messages::edit_message))
        .route(&at("/messages/{seq}"), web::delete().to(messages::delete_message))
        .route(&at("/messages/{seq}/replies"), web::get().to(messages::list_replies))
        .route(&at("/messages/{seq}/reactions/{emoji}"), web::put().to(messages::add_reaction))
        .route(&at("/messages/{seq}/reactions/{emoji}"), web::delete().to(messages::remove_reaction))
        .route(&at("/pins"), web::get().to(messages::list_pins))
        .route(&at("/pins/{seq}"), web::put().to(messages::pin_message))
        .route(&at("/pins/{seq}"), web::delete().to(messages::unpin_message));
}
