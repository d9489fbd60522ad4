//! Who opens a WebSocket. Browsers cannot set headers on an upgrade, so besides the usual
//! `Authorization` header (user JWT, or a server key with `?user_id=`) a socket may present a
//! single-use ticket (`?ticket=`, from `POST /v1/ws/tickets`) or its JWT as a subprotocol
//! (`Sec-WebSocket-Protocol: confab.v1, confab.bearer.<jwt>`; the server answers `confab.v1`).
//! Tickets are short-lived and redeemed atomically, so a ticket that leaks into a URL log is
//! already spent; only its hash is kept.

use actix_web::dev::Payload;
use actix_web::http::header::SEC_WEBSOCKET_PROTOCOL;
use actix_web::{FromRequest, HttpRequest, web};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::app::AppState;
use crate::domain::{TenantId, UserId};
use crate::error::{ApiError, ErrorCode};

use super::acting_user::{load_active_user, user_of_token};
use super::api_key::{BASE62, hash_key, random_string};
use super::extractors::{admit, app_state, tenant_of};
use super::{ActingUser, TenantScope, Via};

/// The subprotocol a server names when the client offered any.
pub const SUBPROTOCOL: &str = "confab.v1";
const BEARER_SUBPROTOCOL: &str = "confab.bearer.";
const TICKET_PREFIX: &str = "cfw_";
const TICKET_SECRET_LEN: usize = 40;

pub struct IssuedTicket {
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

/// Issues a ticket that opens one socket as `caller` within `gateway.ticket_ttl_secs`.
pub async fn issue_ticket(state: &AppState, caller: &ActingUser) -> Result<IssuedTicket, ApiError> {
    let ttl = state.settings.gateway.ticket_ttl_secs;
    let ticket = format!("{TICKET_PREFIX}{}_{}", caller.tenant.id, random_string(BASE62, TICKET_SECRET_LEN));
    state
        .redis
        .store_ticket(&caller.tenant.id, &hash_key(&ticket), caller.user_id(), ttl)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(IssuedTicket { ticket, expires_at: Utc::now() + chrono::Duration::seconds(ttl as i64) })
}

#[derive(Deserialize)]
struct TicketQuery {
    ticket: Option<String>,
}

/// The user opening a socket, by ticket, subprotocol token or `Authorization` header.
pub async fn socket_user(req: &HttpRequest) -> Result<ActingUser, ApiError> {
    let state = app_state(req)?;
    let ticket = web::Query::<TicketQuery>::from_query(req.query_string()).ok().and_then(|q| q.0.ticket);
    if let Some(ticket) = ticket {
        return redeem(&state, &ticket).await;
    }
    if let Some(token) = offered_protocols(req).find_map(|p| p.strip_prefix(BEARER_SUBPROTOCOL)) {
        return user_of_token(&state, token).await;
    }
    ActingUser::from_request(req, &mut Payload::None).await
}

/// Browsers always send `Origin`; one not in the tenant's `allowed_origins` (when set) is refused.
/// Clients without `Origin` (servers, mobile apps) are allowed.
pub fn check_origin(req: &HttpRequest, tenant: &crate::domain::Tenant) -> Result<(), ApiError> {
    let origin = req.headers().get(actix_web::http::header::ORIGIN).and_then(|v| v.to_str().ok());
    let allowed = &tenant.allowed_origins;
    match origin {
        Some(origin) if !allowed.is_empty() && !allowed.iter().any(|a| a == origin) => {
            Err(ApiError::new(ErrorCode::Forbidden, "this origin may not open WebSockets for the tenant"))
        }
        _ => Ok(()),
    }
}

/// Whether to answer with `SUBPROTOCOL`: yes when the client offered it, no when it offered
/// nothing; a client offering subprotocols without it is refused (400), since the server may
/// only name one the client offered and a browser fails a handshake that names none.
pub fn answer_subprotocol(req: &HttpRequest) -> Result<bool, ApiError> {
    if offered_protocols(req).any(|p| p == SUBPROTOCOL) {
        return Ok(true);
    }
    if offered_protocols(req).next().is_none() {
        return Ok(false);
    }
    Err(ApiError::new(
        ErrorCode::InvalidRequest,
        format!("offer the subprotocol '{SUBPROTOCOL}' (with the token, if any)"),
    )
    .with_details(serde_json::json!({ "header": "sec-websocket-protocol" })))
}

fn offered_protocols(req: &HttpRequest) -> impl Iterator<Item = &str> {
    req.headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

async fn redeem(state: &web::Data<AppState>, ticket: &str) -> Result<ActingUser, ApiError> {
    let tenant_id = ticket
        .strip_prefix(TICKET_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .and_then(|(tenant, _)| TenantId::parse(tenant).ok())
        .ok_or_else(ApiError::unauthorized)?;
    let tenant = tenant_of(state, &tenant_id).await?;
    let user = state.redis.redeem_ticket(&tenant.id, &hash_key(ticket)).await.map_err(ApiError::unavailable)?;
    let id = user.and_then(|u| UserId::parse(&u).ok()).ok_or_else(ApiError::unauthorized)?;
    admit(state, &tenant).await?;
    let scope = TenantScope { tenant: tenant.id.clone() };
    let user = load_active_user(state, &scope, &id, ApiError::unauthorized).await?;
    Ok(ActingUser { tenant, user, via: Via::UserToken })
}
