//! Every socket is a tracked connection (kept in Redis, shared by all nodes): it counts against
//! `gateway.max_connections_per_user`, makes its user online, and is refreshed on every
//! heartbeat. A user's first connection and their last one closing are announced as presence
//! events to the sockets of everyone sharing a conversation with them. If Redis is unreachable a
//! socket still opens (untracked, logged) and registers on its next heartbeat. Connections that
//! go stale without closing (their node crashed or lost Redis) are found by every node's sweep,
//! and their users announced offline once (`sweep_presence`); a user whose connection comes back
//! (its node reaches Redis again) is announced online again by its next heartbeat.

use actix_web::HttpRequest;
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::{ActingUser, TenantScope};
use crate::domain::ConversationId;
use crate::error::{ApiError, ErrorCode};
use crate::events::{ConnectionInfo, LiveEvent, Opened, WentOffline};

/// Longest `?client=` description an app may give its connection.
const MAX_CLIENT_LEN: usize = 64;
/// User-Agent headers are kept up to this length.
const MAX_USER_AGENT_LEN: usize = 256;

#[derive(Deserialize)]
struct ClientQuery {
    client: Option<String>,
}

/// What the app says it is (`?client=ios/2.3.1`), checked before the upgrade.
pub(super) fn client_of(req: &HttpRequest) -> Result<String, ApiError> {
    let client = actix_web::web::Query::<ClientQuery>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.0.client)
        .unwrap_or_default();
    let printable = client.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if client.len() > MAX_CLIENT_LEN || !printable {
        return Err(ApiError::validation("client", format!("at most {MAX_CLIENT_LEN} printable ASCII characters")));
    }
    Ok(client)
}

fn user_agent_of(req: &HttpRequest) -> String {
    let agent = req.headers().get(actix_web::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    agent.chars().take(MAX_USER_AGENT_LEN).collect()
}

/// One socket's connection record, as registered and refreshed.
pub(super) struct Tracked {
    pub(super) id: String,
    client: String,
    user_agent: String,
    connected_at: i64,
}

impl Tracked {
    pub(super) fn new(client: String, req: &HttpRequest) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            client,
            user_agent: user_agent_of(req),
            connected_at: chrono::Utc::now().timestamp_millis(),
        }
    }

    fn info<'a>(&'a self, state: &'a AppState, caller: &'a ActingUser) -> ConnectionInfo<'a> {
        ConnectionInfo {
            id: &self.id,
            user: caller.user_id(),
            node: state.hub.node_id(),
            client: &self.client,
            user_agent: &self.user_agent,
            connected_at: self.connected_at,
        }
    }
}

/// Registers a connection; 429 `too_many_connections` when the user is at the limit.
pub(super) async fn open(
    state: &AppState,
    caller: &ActingUser,
    tracked: &Tracked,
    conversations: &[ConversationId],
) -> Result<(), ApiError> {
    let gateway = &state.settings.gateway;
    let presence = state.redis.presence(&caller.tenant.id, gateway.presence_stale_secs);
    match presence.open(&tracked.info(state, caller), gateway.max_connections_per_user).await {
        Ok(Opened::AtLimit) => {
            let max = gateway.max_connections_per_user;
            Err(ApiError::new(ErrorCode::TooManyConnections, format!("at most {max} live connections per user"))
                .with_details(serde_json::json!({ "limit": "max_connections_per_user", "value": max })))
        }
        Ok(Opened::FirstOfUser) => {
            announce(state, caller, true, conversations).await;
            Ok(())
        }
        Ok(Opened::Another) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "could not register a connection; it stays open untracked");
            Ok(())
        }
    }
}

/// Refreshes a connection. A user who had been announced offline while it could not reach Redis
/// (or whose only connection opened untracked) is announced online again. `false` when the
/// connection had to be registered afresh and its user is at `gateway.max_connections_per_user`
/// without it: the socket closes.
pub(super) async fn heartbeat(
    state: &AppState,
    caller: &ActingUser,
    tracked: &Tracked,
    conversations: impl Iterator<Item = &ConversationId>,
) -> bool {
    let gateway = &state.settings.gateway;
    let presence = state.redis.presence(&caller.tenant.id, gateway.presence_stale_secs);
    match presence.heartbeat(&tracked.info(state, caller), gateway.max_connections_per_user).await {
        Ok(Opened::FirstOfUser) => announce(state, caller, true, &conversations.cloned().collect::<Vec<_>>()).await,
        Ok(Opened::Another) => {}
        Ok(Opened::AtLimit) => return false,
        Err(e) => tracing::warn!(error = %e, "could not refresh a connection"),
    }
    true
}

pub(super) async fn close(state: &AppState, caller: &ActingUser, id: &str, conversations: &[ConversationId]) {
    let presence = state.redis.presence(&caller.tenant.id, state.settings.gateway.presence_stale_secs);
    match presence.close(caller.user_id(), id).await {
        Ok(true) => announce(state, caller, false, conversations).await,
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "could not unregister a connection; it expires by itself"),
    }
}

/// Every `gateway.presence_sweep_secs`, announces offline the users whose last connections went
/// stale without closing. Runs for as long as the node does.
pub async fn sweep_presence(state: std::sync::Arc<AppState>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(state.settings.gateway.presence_sweep_secs));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match state.redis.sweep_presence().await {
            Ok(gone) => {
                for offline in gone {
                    announce_gone(&state, offline).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not sweep stale connections"),
        }
    }
}

/// Tells everyone sharing a conversation with a user that they went offline (their conversations
/// read from MongoDB: the sockets that knew them are gone).
async fn announce_gone(state: &AppState, offline: WentOffline) {
    let db = state.store.tenant_db(&TenantScope::upkeep(&offline.tenant));
    let conversations = match db.members().of_user(&offline.user).await {
        Ok(members) => members.into_iter().map(|m| m.conversation_id).collect(),
        Err(e) => return tracing::warn!(error = %e, "could not announce a user whose connections went stale"),
    };
    let event =
        LiveEvent::Presence { user_id: offline.user, online: false, last_seen_at: offline.last_seen_at, conversations };
    state.redis.publish_event(&offline.tenant, &event).await;
}

async fn announce(state: &AppState, caller: &ActingUser, online: bool, conversations: &[ConversationId]) {
    let event = LiveEvent::Presence {
        user_id: caller.user_id().clone(),
        online,
        last_seen_at: chrono::Utc::now().timestamp_millis(),
        conversations: conversations.to_vec(),
    };
    state.redis.publish_event(&caller.tenant.id, &event).await;
}
