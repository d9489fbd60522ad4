//! One task per socket: authenticate on the upgrade, then relay the hub's events and answer
//! the client's frames. Every conversation keeps the highest seq delivered, so live events that
//! arrive twice are dropped and a gap (a dropped pub/sub event, or a resume) is filled from
//! MongoDB before newer messages go out: a client sees each message once, in seq order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::domain::{ConversationId, Message, Scope};
use crate::error::{ApiError, ErrorCode};
use crate::http::message_frame;
use crate::tenancy::TenantDb;

use super::frames::{answer, send_error};
use super::hub::Outbox;
use crate::events::LiveEvent;

/// How long a client shows someone as typing without hearing again.
pub(super) const TYPING_EXPIRY: Duration = Duration::from_secs(5);
/// Least time between two `typing: true` events a socket publishes for one conversation.
pub(super) const TYPING_THROTTLE: Duration = Duration::from_secs(2);

pub(super) struct Connection {
    pub(super) state: Arc<AppState>,
    pub(super) caller: ActingUser,
    pub(super) db: TenantDb,
    /// Highest seq sent (or known to the client) per conversation the user belongs to.
    pub(super) delivered: HashMap<ConversationId, i64>,
    /// When this socket last published `typing: true`, per conversation.
    pub(super) typing_sent: HashMap<ConversationId, Instant>,
}

/// `GET /v1/ws`: upgrades an authenticated user (JWT, or a server key with `?user_id=`).
pub async fn connect(
    caller: ActingUser,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::ChatRead)?;
    // Browsers always send Origin; other clients may not, and are allowed.
    let origin = req.headers().get(actix_web::http::header::ORIGIN).and_then(|v| v.to_str().ok());
    let allowed = &caller.tenant.allowed_origins;
    if let Some(origin) = origin
        && !allowed.is_empty()
        && !allowed.iter().any(|a| a == origin)
    {
        return Err(ApiError::new(ErrorCode::Forbidden, "this origin may not open WebSockets for the tenant"));
    }
    let db = state.store.tenant_db(&caller.scope());
    let memberships = db.members().of_user(caller.user_id()).await?;
    let ids: Vec<ConversationId> = memberships.iter().map(|m| m.conversation_id.clone()).collect();
    let conversations = db.conversations().get_many(&ids).await?;
    let delivered: HashMap<ConversationId, i64> = conversations.iter().map(|c| (c.id.clone(), c.last_seq)).collect();
    let (response, session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("not a WebSocket upgrade: {e}")))?;
    let (tx, rx) = mpsc::channel(state.settings.gateway.outbox_capacity);
    let outbox = Outbox { tx, slow: Arc::new(Notify::new()) };
    let socket = state.hub.next_socket_id();
    state.hub.register(socket, &caller.tenant.id, caller.user_id(), &ids, &outbox);
    let ready = serde_json::json!({
        "type": "ready",
        "user_id": caller.user_id().as_str(),
        "conversations": conversations.iter().map(|c| serde_json::json!({ "id": c.id.as_str(), "last_seq": c.last_seq })).collect::<Vec<_>>(),
    });
    let state = state.into_inner();
    actix_web::rt::spawn(async move {
        let stream = stream.max_frame_size(state.settings.gateway.max_frame_bytes).aggregate_continuations();
        let mut connection = Connection { state: state.clone(), caller, db, delivered, typing_sent: HashMap::new() };
        let reason = run(&mut connection, session.clone(), stream, rx, &outbox.slow, ready.to_string()).await;
        state.hub.unregister(socket);
        let _ = session.close(reason).await;
    });
    Ok(response)
}

async fn run(
    connection: &mut Connection,
    mut session: Session,
    mut stream: actix_ws::AggregatedMessageStream,
    mut outbox: mpsc::Receiver<Arc<LiveEvent>>,
    slow: &Notify,
    ready: String,
) -> Option<CloseReason> {
    if session.text(ready).await.is_err() {
        return None;
    }
    let limits = connection.state.settings.gateway.clone();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(limits.heartbeat_secs));
    let idle_timeout = Duration::from_secs(limits.idle_timeout_secs);
    let mut budget = FrameBudget::new(limits.max_frames_per_sec);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            incoming = stream.next() => {
                let Some(Ok(incoming)) = incoming else { return None };
                last_heard = Instant::now();
                match incoming {
                    AggregatedMessage::Text(text) => {
                        if !budget.take() {
                            let refused = send_error(&mut session, None, ErrorCode::RateLimited, "too many frames per second").await;
                            if refused.is_err() {
                                return None;
                            }
                            continue;
                        }
                        if let Err(reason) = answer(connection, &mut session, &text).await {
                            return reason;
                        }
                    }
                    AggregatedMessage::Ping(bytes) => {
                        if session.pong(&bytes).await.is_err() {
                            return None;
                        }
                    }
                    AggregatedMessage::Close(reason) => return reason,
                    AggregatedMessage::Binary(_) => {
                        let _ = send_error(&mut session, None, ErrorCode::InvalidRequest, "frames are JSON text").await;
                    }
                    AggregatedMessage::Pong(_) => {}
                }
            }
            Some(live) = outbox.recv() => {
                if relay(connection, &mut session, &live).await.is_err() {
                    return None;
                }
            }
            _ = slow.notified() => {
                return Some(CloseReason { code: CloseCode::Policy, description: Some("slow_consumer".into()) });
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > idle_timeout {
                    return Some(CloseReason { code: CloseCode::Away, description: Some("idle_timeout".into()) });
                }
                if let Some(reason) = revoked(connection).await {
                    return Some(CloseReason { code: CloseCode::Policy, description: Some(reason.into()) });
                }
                if session.ping(b"").await.is_err() {
                    return None;
                }
            }
        }
    }
}

/// Sends what the client is missing in `id` up to `upto`, from MongoDB: at most `MAX_REPLAY`
/// messages, preceded by a `gap` frame naming the range it must fetch over REST if there is more.
pub(super) async fn catch_up(
    connection: &mut Connection,
    session: &mut Session,
    id: &ConversationId,
    upto: i64,
) -> Result<(), actix_ws::Closed> {
    let from = connection.delivered[id] + 1;
    if from > upto {
        return Ok(());
    }
    let max_replay = connection.state.settings.gateway.max_replay;
    let start = if upto - from + 1 > max_replay {
        let gap_end = upto - max_replay;
        let gap =
            serde_json::json!({ "type": "gap", "conversation_id": id.as_str(), "from_seq": from, "to_seq": gap_end });
        session.text(gap.to_string()).await?;
        gap_end + 1
    } else {
        from
    };
    let Ok(messages) = connection.db.messages().range(id, start, upto).await else {
        let gap =
            serde_json::json!({ "type": "gap", "conversation_id": id.as_str(), "from_seq": start, "to_seq": upto });
        session.text(gap.to_string()).await?;
        connection.delivered.insert(id.clone(), upto);
        return Ok(());
    };
    for message in messages {
        session.text(message_frame("message.new", message)).await?;
    }
    connection.delivered.insert(id.clone(), upto);
    Ok(())
}

/// A one-second window of client frames.
struct FrameBudget {
    per_second: u32,
    window_start: Instant,
    used: u32,
}

impl FrameBudget {
    fn new(per_second: u32) -> Self {
        Self { per_second, window_start: Instant::now(), used: 0 }
    }

    fn take(&mut self) -> bool {
        if self.window_start.elapsed() >= Duration::from_secs(1) {
            self.window_start = Instant::now();
            self.used = 0;
        }
        self.used += 1;
        self.used <= self.per_second
    }
}

/// Why the socket may no longer stay open (user deactivated or gone, tenant not active), checked
/// on every heartbeat so a revoked user is cut off within one heartbeat interval.
async fn revoked(connection: &Connection) -> Option<&'static str> {
    let user = connection.db.users().get(connection.caller.user_id()).await.ok()?;
    if user.is_none_or(|u| !u.is_active()) {
        return Some("user_deactivated");
    }
    let tenant = connection.state.store.tenants().get(&connection.caller.tenant.id).await.ok()?;
    if tenant.is_none_or(|t| t.status != crate::domain::TenantStatus::Active) {
        return Some("tenant_unavailable");
    }
    None
}

/// Passes one live event to the client, in the frame format of docs/realtime.md.
async fn relay(connection: &mut Connection, session: &mut Session, event: &LiveEvent) -> Result<(), actix_ws::Closed> {
    let me = connection.caller.user_id();
    let frame = match event {
        LiveEvent::Created { message } => return deliver(connection, session, message).await,
        LiveEvent::Updated { message } => {
            // A change to a message the client has not been sent yet reaches it with the message.
            if connection.delivered.get(&message.conversation_id).is_none_or(|d| message.seq > *d) {
                return Ok(());
            }
            message_frame("message.updated", message.clone())
        }
        LiveEvent::Typing { conversation_id, user_id, typing } if user_id != me => serde_json::json!({
            "type": "typing", "conversation_id": conversation_id.as_str(), "user_id": user_id.as_str(),
            "typing": typing, "expires_in_ms": TYPING_EXPIRY.as_millis() as u64,
        })
        .to_string(),
        LiveEvent::Joined { conversation_id, user_id, after_seq } if user_id == me => {
            connection.delivered.entry(conversation_id.clone()).or_insert(*after_seq);
            serde_json::json!({ "type": "conversation.joined", "conversation_id": conversation_id.as_str(), "after_seq": after_seq })
                .to_string()
        }
        LiveEvent::Left { conversation_id, user_id } if user_id == me => {
            connection.delivered.remove(conversation_id);
            serde_json::json!({ "type": "conversation.left", "conversation_id": conversation_id.as_str() }).to_string()
        }
        LiveEvent::Read { conversation_id, user_id, last_read_seq } if user_id != me => serde_json::json!({
            "type": "read", "conversation_id": conversation_id.as_str(), "user_id": user_id.as_str(),
            "last_read_seq": last_read_seq,
        })
        .to_string(),
        _ => return Ok(()),
    };
    session.text(frame).await
}

/// Sends a live message once, after anything missing before it.
async fn deliver(
    connection: &mut Connection,
    session: &mut Session,
    message: &Message,
) -> Result<(), actix_ws::Closed> {
    let id = &message.conversation_id;
    let Some(&delivered) = connection.delivered.get(id) else { return Ok(()) };
    if message.seq <= delivered {
        return Ok(());
    }
    if message.seq > delivered + 1 {
        catch_up(connection, session, id, message.seq - 1).await?;
    }
    session.text(message_frame("message.new", message.clone())).await?;
    connection.delivered.insert(id.clone(), message.seq);
    Ok(())
}
