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
mod json_time;
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
///
/// Routes are grouped by path (one resource per path, its methods as routes) and by the id they
/// hang off (one scope per id), so a request is matched against a few patterns, not every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(extract::query_config())
        .app_data(extract::path_config())
        .service(resource("/health/live").route(web::get().to(health::live)))
        .service(resource("/health/ready").route(web::get().to(health::ready)))
        .service(resource("/metrics").route(web::get().to(health::metrics)))
        .configure(openapi::configure)
        .service(
            web::scope("/admin/v1")
                .service(
                    resource("/tenants")
                        .route(web::post().to(tenants::create_tenant))
                        .route(web::get().to(tenants::list_tenants)),
                )
                .service(
                    web::scope("/tenants/{tenant_id}")
                        .service(
                            resource("")
                                .route(web::get().to(tenants::get_tenant))
                                .route(web::patch().to(tenants::update_tenant))
                                .route(web::delete().to(tenants::delete_tenant)),
                        )
                        .service(resource("/api-keys").route(web::post().to(api_keys::create_api_key_as_operator)))
                        .service(resource("/audit-log/verify").route(web::get().to(audit_log::verify_as_operator)))
                        .service(
                            resource("/signing-keys/rotate").route(web::post().to(signing_keys::rotate_signing_key)),
                        ),
                ),
        )
        .service(
            web::scope("/v1")
                .configure(conversation_routes)
                .configure(chat_routes)
                .configure(session_routes)
                .service(
                    resource("/api-keys")
                        .route(web::post().to(api_keys::create_api_key))
                        .route(web::get().to(api_keys::list_api_keys)),
                )
                .service(resource("/api-keys/{key_id}/rotate").route(web::post().to(api_keys::rotate_api_key)))
                .service(resource("/api-keys/{key_id}").route(web::delete().to(api_keys::revoke_api_key)))
                .service(resource("/audit-log").route(web::get().to(audit_log::list_audit_log)))
                .service(resource("/audit-log/verify").route(web::get().to(audit_log::verify_audit_log)))
                .service(resource("/signing-keys").route(web::get().to(signing_keys::list_signing_keys))),
        );
}

/// The answer for any path no route matches.
pub async fn route_not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(ErrorCode::RouteNotFound, "no such route"))
}

/// One path's routes. A method the path does not serve is answered like an unknown path.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(route_not_found))
}

fn session_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/sessions")
            .route(web::post().to(code_sessions::create_session))
            .route(web::get().to(code_sessions::list_sessions)),
    )
    .service(
        web::scope("/sessions/{session_id}")
            .service(
                resource("")
                    .route(web::get().to(code_sessions::get_session))
                    .route(web::patch().to(code_sessions::update_session))
                    .route(web::delete().to(code_sessions::delete_session)),
            )
            .service(resource("/fork").route(web::post().to(code_sessions::fork_session)))
            .service(resource("/members").route(web::get().to(code_sessions::list_session_members)))
            .service(
                resource("/members/{user_id}")
                    .route(web::put().to(code_sessions::put_session_member))
                    .route(web::delete().to(code_sessions::remove_session_member)),
            )
            .service(
                resource("/items")
                    .route(web::get().to(workspace::list_items))
                    .route(web::post().to(workspace::create_item)),
            )
            .service(
                resource("/items/{item_id}")
                    .route(web::get().to(workspace::get_item))
                    .route(web::patch().to(workspace::update_item))
                    .route(web::delete().to(workspace::delete_item)),
            )
            .service(
                resource("/files/{item_id}/content")
                    .route(web::get().to(workspace::get_content))
                    .route(web::put().to(workspace::put_content)),
            )
            .service(resource("/files/{item_id}/yjs").route(web::get().to(workspace::open_document))),
    );
}

/// Everything under one conversation: the busiest paths, matched first.
fn conversation_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/conversations/{conversation_id}")
            .service(
                resource("/messages")
                    .route(web::post().to(messages::send_message))
                    .route(web::get().to(messages::list_messages)),
            )
            .service(
                resource("/messages/{seq}")
                    .route(web::get().to(messages::get_message))
                    .route(web::patch().to(messages::edit_message))
                    .route(web::delete().to(messages::delete_message)),
            )
            .service(resource("/messages/{seq}/replies").route(web::get().to(messages::list_replies)))
            .service(
                resource("/messages/{seq}/reactions/{emoji}")
                    .route(web::put().to(messages::add_reaction))
                    .route(web::delete().to(messages::remove_reaction)),
            )
            .service(resource("/read").route(web::post().to(conversations::mark_read)))
            .service(resource("/delivered").route(web::post().to(conversations::mark_delivered)))
            .service(
                resource("")
                    .route(web::get().to(conversations::get_conversation))
                    .route(web::patch().to(conversations::update_conversation)),
            )
            .service(resource("/presence").route(web::get().to(realtime::conversation_presence)))
            .service(resource("/join").route(web::post().to(conversations::join)))
            .service(
                resource("/members")
                    .route(web::get().to(conversations::list_members))
                    .route(web::post().to(conversations::add_members)),
            )
            .service(
                resource("/members/{user_id}")
                    .route(web::patch().to(conversations::update_member))
                    .route(web::delete().to(conversations::remove_member)),
            )
            .service(
                resource("/bans/{user_id}")
                    .route(web::put().to(conversations::ban_member))
                    .route(web::delete().to(conversations::unban_member)),
            )
            .service(resource("/pins").route(web::get().to(messages::list_pins)))
            .service(
                resource("/pins/{seq}")
                    .route(web::put().to(messages::pin_message))
                    .route(web::delete().to(messages::unpin_message)),
            ),
    )
    .service(resource("/conversations").route(web::post().to(conversations::create_conversation)));
}

fn chat_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/ws").route(web::get().to(realtime::open_socket)))
        .service(resource("/ws/tickets").route(web::post().to(realtime::create_ticket)))
        .service(resource("/users").route(web::get().to(users::list_users)))
        .service(
            web::scope("/users/{user_id}")
                .service(
                    resource("")
                        .route(web::put().to(users::put_user))
                        .route(web::get().to(users::get_user))
                        .route(web::patch().to(users::patch_user))
                        .route(web::delete().to(users::deactivate_user)),
                )
                .service(resource("/presence").route(web::get().to(realtime::user_presence)))
                .service(resource("/connections").route(web::get().to(realtime::user_connections)))
                .service(resource("/reactivate").route(web::post().to(users::reactivate_user)))
                .service(resource("/tokens").route(web::post().to(users::mint_token)))
                .service(resource("/key-events").route(web::get().to(devices::key_events))),
        )
        .service(resource("/me").route(web::get().to(me::get_me)))
        .service(resource("/me/conversations").route(web::get().to(me::my_conversations)))
        .service(resource("/me/unread").route(web::get().to(me::my_unread)))
        .service(resource("/me/devices").route(web::post().to(devices::register_device)))
        .service(resource("/me/devices/{device_id}").route(web::delete().to(devices::revoke_device)))
        .service(resource("/me/devices/{device_id}/keys").route(web::post().to(devices::rotate_key)))
        .service(resource("/devices").route(web::get().to(devices::list_devices)))
        .service(resource("/me/relationships").route(web::get().to(me::list_relationships)))
        .service(
            resource("/me/relationships/{user_id}")
                .route(web::put().to(me::put_relationship))
                .route(web::delete().to(me::delete_relationship)),
        )
        .service(resource("/search/messages").route(web::get().to(me::search_messages)))
        .service(resource("/files").route(web::post().to(files::upload_file)).route(web::get().to(files::list_files)))
        .service(
            web::scope("/files/{file_id}")
                .service(
                    resource("")
                        .route(web::get().to(files::download_file))
                        .route(web::patch().to(files::share_file))
                        .route(web::delete().to(files::delete_file)),
                )
                .service(resource("/content").route(web::get().to(files::download_signed)))
                .service(resource("/metadata").route(web::get().to(files::file_metadata)))
                .service(resource("/url").route(web::post().to(files::sign_url))),
        )
        .service(resource("/usage").route(web::get().to(files::usage)));
}
