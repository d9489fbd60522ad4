//! One task per socket: authenticate on the upgrade, then relay the hub's events and answer
//! the client's frames. On every heartbeat a socket refreshes its connection record, checks its
//! user may stay, and (every `gateway.catch_up_secs`, or at once after this node's Redis
//! subscriber reconnected) re-reads its conversations so no lost event goes unrepaired.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use tokio::sync::{Notify, mpsc, watch};

use crate::app::AppState;
use crate::auth::ActingUser;
use crate::auth::socket::{SUBPROTOCOL, answer_subprotocol, check_origin, socket_user};
use crate::domain::{ConversationId, Scope};
use crate::error::{ApiError, ErrorCode};
use crate::http::upgrade::{Handshake, SocketSizes};
use crate::tenancy::TenantDb;

use super::frames::{answer, send_error};
use super::hub::{Outbox, SharedEvent};
use super::protocol::{ConversationHead, ServerFrame};
use super::relay::{relay, sweep};
use super::socket::{self, CloseReason, Frames, GOING_AWAY, Incoming, POLICY, RESTART, Sender, TOO_BIG, close_reason};
use super::tracking;

/// How long a client shows someone as typing without hearing again.
pub(super) const TYPING_EXPIRY: Duration = Duration::from_secs(5);
/// Least time between two `typing: true` events a socket publishes for one conversation.
pub(super) const TYPING_THROTTLE: Duration = Duration::from_secs(2);
/// How long a closing socket waits to send its close frame (a client not reading never takes it).
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Bytes a chat socket reads at once: client frames are small and few, and most sockets idle.
const READ_BUFFER: usize = 4096;
/// Live events relayed before their frames are written out together.
const OUTBOX_BURST: usize = 64;

pub(super) struct Connection {
    pub(super) state: Arc<AppState>,
    pub(super) caller: ActingUser,
    pub(super) db: TenantDb,
    /// Highest seq sent (or known to the client) per conversation the user belongs to.
    pub(super) delivered: HashMap<ConversationId, i64>,
    /// When this socket last published `typing: true`, per conversation.
    pub(super) typing_sent: HashMap<ConversationId, Instant>,
    /// The stored heads the last sweep found ahead of what this socket had delivered: the next
    /// sweep catches up to them if their live events have not come by then.
    pub(super) behind: HashMap<ConversationId, i64>,
}

/// `GET /v1/ws`: upgrades an authenticated user (see `auth::socket` for the ways in).
pub async fn connect(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let answer_protocol = answer_subprotocol(&req)?;
    let caller = socket_user(&req).await?;
    caller.require(Scope::ChatRead)?;
    check_origin(&req, &caller.tenant)?;
    let client = tracking::client_of(&req)?;
    let closing = state.hub.closing().ok_or_else(ApiError::shutting_down)?;
    let db = state.store.tenant_db(&caller.scope());
    let memberships = db.members().of_user(caller.user_id()).await?;
    let ids: Vec<ConversationId> = memberships.iter().map(|m| m.conversation_id.clone()).collect();
    let mut conversations = db.conversations().get_many(&ids).await?;
    crate::chat::counters::with_heads(&state, &db, &mut conversations).await?;
    let delivered: HashMap<ConversationId, i64> = conversations.iter().map(|c| (c.id.clone(), c.last_seq)).collect();
    // The handshake is checked first, so a request that cannot upgrade never counts as online.
    let mut handshake = Handshake::check(&req)?;
    if answer_protocol {
        handshake = handshake.with_subprotocol(SUBPROTOCOL);
    }
    let tracked = tracking::Tracked::new(client, &req);
    tracking::open(&state, &caller, &tracked, &ids).await?;
    let live = state.hub.live_socket();
    let connection_id = tracked.id.clone();
    let (tx, rx) = mpsc::channel(state.settings.gateway.outbox_capacity);
    let outbox = Outbox { tx, slow: Arc::new(Notify::new()) };
    let socket = state.hub.next_socket_id();
    state.hub.register(socket, &caller.tenant.id, caller.user_id(), &ids, &outbox);
    let ready = ServerFrame::Ready {
        user_id: caller.user_id().to_string(),
        connection_id: connection_id.clone(),
        conversations: conversations
            .iter()
            .map(|c| ConversationHead { id: c.id.to_string(), last_seq: c.last_seq })
            .collect(),
    };
    let state = state.into_inner();
    let sizes = SocketSizes {
        max_message_bytes: state.settings.gateway.max_frame_bytes,
        read_buffer_bytes: READ_BUFFER,
        read_ahead_bytes: 0,
    };
    Ok(handshake.accept(sizes, move |upgraded| async move {
        let mut connection = Connection {
            state: state.clone(),
            caller,
            db,
            delivered,
            typing_sent: HashMap::new(),
            behind: HashMap::new(),
        };
        if let Some(upgraded) = upgraded {
            let (mut sender, frames) = socket::split(upgraded);
            let ends = Ends { slow: &outbox.slow, closing };
            let reason = run(&mut connection, &tracked, &mut sender, frames, rx, ends, ready.to_text()).await;
            let _ = tokio::time::timeout(CLOSE_WAIT, sender.close(reason)).await;
        }
        state.hub.unregister(socket);
        let followed: Vec<ConversationId> = connection.delivered.keys().cloned().collect();
        Box::pin(tracking::close(&state, &connection.caller, &tracked.id, &followed)).await;
        drop(live);
    }))
}

/// What ends a socket from this node's side besides its own frames.
struct Ends<'a> {
    /// The socket fell behind (its outbox filled up).
    slow: &'a Notify,
    /// The node is stopping.
    closing: watch::Receiver<bool>,
}

/// The socket's life. Steps that do I/O are boxed: an idle socket then keeps only this loop's
/// small state, not room for the largest step (sending a message, a catch-up) all the time.
async fn run(
    connection: &mut Connection,
    tracked: &tracking::Tracked,
    session: &mut Sender,
    mut frames: Frames,
    mut outbox: mpsc::Receiver<Arc<SharedEvent>>,
    mut ends: Ends<'_>,
    ready: String,
) -> Option<CloseReason> {
    if session.text(ready).await.is_err() || session.flush().await.is_err() {
        return None;
    }
    let limits = connection.state.settings.gateway.clone();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(limits.heartbeat_secs));
    let idle_timeout = Duration::from_secs(limits.idle_timeout_secs);
    // A client that takes no frame for as long as it may stay silent has stopped reading.
    let stall = idle_timeout;
    let catch_up_every = Duration::from_secs(limits.catch_up_secs);
    let mut budget = FrameBudget::new(limits.max_frames_per_sec);
    let mut last_heard = Instant::now();
    let mut last_sweep = Instant::now();
    let mut epoch = connection.state.hub.subscription_epoch();
    loop {
        tokio::select! {
            incoming = frames.next() => {
                let incoming = incoming?;
                last_heard = Instant::now();
                match incoming {
                    Incoming::Text(text) => {
                        if !budget.take() {
                            let refused = send_error(session, None, ErrorCode::RateLimited, "too many frames per second");
                            if let Err(reason) = bounded(stall, Box::pin(refused), |_| None).await {
                                return reason;
                            }
                        } else if let Err(reason) = bounded(stall, Box::pin(answer(connection, session, &text)), |reason| reason).await {
                            return reason;
                        }
                    }
                    Incoming::Close(reason) => return reason,
                    Incoming::Heard => {}
                    Incoming::TooBig => return Some(close_reason(TOO_BIG, "frame_too_large")),
                    Incoming::Binary(_) => {
                        let refused = send_error(session, None, ErrorCode::InvalidRequest, "frames are JSON text");
                        if let Err(reason) = bounded(stall, Box::pin(refused), |_| None).await {
                            return reason;
                        }
                    }
                }
            }
            Some(mut live) = outbox.recv() => {
                // Events already waiting go out in the same write.
                for relayed in 1.. {
                    if let Err(reason) = bounded(stall, Box::pin(relay(connection, session, &live)), |_| None).await {
                        return reason;
                    }
                    if relayed == OUTBOX_BURST {
                        break;
                    }
                    match outbox.try_recv() {
                        Ok(next) => live = next,
                        Err(_) => break,
                    }
                }
            }
            _ = ends.slow.notified() => return Some(slow_consumer()),
            Ok(()) = ends.closing.changed() => return Some(close_reason(RESTART, "shutting_down")),
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > idle_timeout {
                    return Some(close_reason(GOING_AWAY, "idle_timeout"));
                }
                if let Some(reason) = Box::pin(revoked(connection)).await {
                    return Some(close_reason(POLICY, reason));
                }
                let followed = connection.delivered.keys();
                if !Box::pin(tracking::heartbeat(&connection.state, &connection.caller, tracked, followed)).await {
                    return Some(close_reason(POLICY, "too_many_connections"));
                }
                let current = connection.state.hub.subscription_epoch();
                if current != epoch || last_sweep.elapsed() >= catch_up_every {
                    // Events published while this node's subscriber was away are lost for sure.
                    let lost = current != epoch;
                    epoch = current;
                    last_sweep = Instant::now();
                    if let Err(reason) = bounded(stall, Box::pin(sweep(connection, session, lost)), |_| None).await {
                        return reason;
                    }
                }
                if let Err(reason) = bounded(stall, session.ping(), |_| None).await {
                    return reason;
                }
            }
        }
        if let Err(reason) = bounded(stall, session.flush(), |_| None).await {
            return reason;
        }
    }
}

fn slow_consumer() -> CloseReason {
    close_reason(POLICY, "slow_consumer")
}

/// Runs a step that writes to the client. The writes wait while the client is not reading (its
/// TCP window is full), so a client that takes nothing within `stall` is closed as a slow
/// consumer instead of holding the socket's task (and its heartbeats and checks) forever.
async fn bounded<E>(
    stall: Duration,
    step: impl Future<Output = Result<(), E>>,
    closed: impl FnOnce(E) -> Option<CloseReason>,
) -> Result<(), Option<CloseReason>> {
    match tokio::time::timeout(stall, step).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(closed(e)),
        Err(_) => Err(Some(slow_consumer())),
    }
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
/// on every heartbeat (through the per-node caches) so a revoked user is cut off within one
/// heartbeat interval.
async fn revoked(connection: &Connection) -> Option<&'static str> {
    let (caches, id, tenant_id) = (&connection.state.caches, connection.caller.user_id(), &connection.caller.tenant.id);
    let user = caches.user(tenant_id, id, connection.db.users().get(id)).await.ok()?;
    if user.is_none_or(|u| !u.is_active()) {
        return Some("user_deactivated");
    }
    let tenant = caches.tenant(tenant_id, connection.state.store.tenants().get(tenant_id)).await.ok()?;
    if tenant.is_none_or(|t| t.status != crate::domain::TenantStatus::Active) {
        return Some("tenant_unavailable");
    }
    None
}
