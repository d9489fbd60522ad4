//! `GET /v1/sessions/{session_id}/files/{item_id}/yjs`: the standard y-websocket protocol (sync
//! step 1/2, update, awareness, query awareness; binary frames) for one file's document, so
//! stock Yjs editors connect unchanged. Auth on the upgrade as for `/v1/ws`; the role comes from
//! session membership (viewers' updates are dropped by the room). `?epoch=` names the document
//! generation the client holds: a different one is closed with 4409 so it never merges into a
//! re-created document. One task per socket, relaying between the socket and the file's room.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::app::AppState;
use crate::auth::socket::{SUBPROTOCOL, answer_subprotocol, check_origin, socket_user};
use crate::collab::{ClientLink, Command, Outgoing, rooms, tree};
use crate::domain::{ItemId, SessionId};
use crate::error::{ApiError, ErrorCode};
use crate::http::upgrade::{Handshake, SocketSizes};

use super::socket::{self, GOING_AWAY, Incoming, RESTART, TRY_AGAIN, close_reason};

/// Frames queued for one editor before it counts as too slow (it is dropped and resyncs).
const OUTBOX: usize = 512;
/// Messages already received that one room command carries at most.
const MESSAGES_PER_COMMAND: usize = 256;
/// Bytes an editor's socket reads at once.
const READ_BUFFER: usize = 4096;

static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

#[derive(Deserialize)]
struct EpochQuery {
    epoch: Option<i64>,
}

pub async fn connect(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (session, item) = path.into_inner();
    let session = SessionId::parse(&session).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.0))?;
    let item = ItemId::parse(&item).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.0))?;
    let answer_protocol = answer_subprotocol(&req)?;
    let caller = socket_user(&req).await?;
    check_origin(&req, &caller.tenant)?;
    let state = state.into_inner();
    let (db, file, role) = tree::file(&state, &caller, &session, &item).await?;
    // Checked before joining the room, so a request that cannot upgrade never joins.
    let mut handshake = Handshake::check(&req)?;
    if answer_protocol {
        handshake = handshake.with_subprotocol(SUBPROTOCOL);
    }
    let wanted_epoch = web::Query::<EpochQuery>::from_query(req.query_string()).ok().and_then(|q| q.0.epoch);
    let (tx, mut outgoing) = mpsc::channel(OUTBOX);
    let id = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
    let link = || ClientLink { id, user: caller.user_id().clone(), can_edit: role.can_edit(), tx: tx.clone() };
    let stale = wanted_epoch.is_some_and(|epoch| epoch != file.epoch);
    let room = if stale { None } else { Some(rooms::join(&state, &db, &file, link).await?) };
    drop(tx);
    let limits = (state.settings.collab.max_message_bytes, state.settings.gateway.clone());
    let sizes = SocketSizes { max_message_bytes: limits.0, read_buffer_bytes: READ_BUFFER };
    Ok(handshake.accept(sizes, move |upgraded| async move {
        let Some(upgraded) = upgraded else {
            if let Some(room) = room {
                let _ = room.send(Command::Leave { client: id }).await;
            }
            return;
        };
        let (mut sender, mut frames) = socket::split(upgraded);
        let Some(room) = room else {
            return sender.close(Some(close_reason(4409, "epoch_changed"))).await;
        };
        let mut heartbeat = tokio::time::interval(Duration::from_secs(limits.1.heartbeat_secs));
        let idle_timeout = Duration::from_secs(limits.1.idle_timeout_secs);
        let mut last_heard = Instant::now();
        let reason = loop {
            tokio::select! {
                incoming = frames.next() => {
                    let Some(incoming) = incoming else { break None };
                    last_heard = Instant::now();
                    // Messages already received go to the room together, in order.
                    let (mut messages, mut next, mut other, mut ended) = (Vec::new(), Some(incoming), None, false);
                    while let Some(frame) = next.take() {
                        match frame {
                            Incoming::Binary(bytes) => {
                                messages.push(bytes);
                                if messages.len() < MESSAGES_PER_COMMAND {
                                    match frames.ready() {
                                        Some(Some(frame)) => next = Some(frame),
                                        Some(None) => ended = true,
                                        None => {}
                                    }
                                }
                            }
                            frame => other = Some(frame),
                        }
                    }
                    if !messages.is_empty() && room.send(Command::Messages { client: id, messages }).await.is_err() {
                        break Some(close_reason(RESTART, "document_closed"));
                    }
                    if ended {
                        break None;
                    }
                    match other {
                        Some(Incoming::Close(reason)) => break reason,
                        // 44xx: the stock provider would otherwise resend it forever.
                        Some(Incoming::TooBig) => break Some(close_reason(4413, "message_too_large")),
                        _ => {}
                    }
                }
                frame = outgoing.recv() => {
                    // Frames already waiting go out in the same write.
                    let (mut next, mut sent) = (frame, 0);
                    let closing = loop {
                        sent += 1;
                        match next {
                            Some(Outgoing::Binary(bytes)) => {
                                if sender.binary(bytes).await.is_err() { break Some(None); }
                            }
                            Some(Outgoing::Close(code, reason)) => break Some(Some(close_reason(code, reason))),
                            // The room dropped this client (too far behind, or the room closed).
                            None => break Some(Some(close_reason(TRY_AGAIN, "resync"))),
                        }
                        if sent == OUTBOX {
                            break None;
                        }
                        match outgoing.try_recv() {
                            Ok(frame) => next = Some(frame),
                            Err(mpsc::error::TryRecvError::Empty) => break None,
                            Err(mpsc::error::TryRecvError::Disconnected) => next = None,
                        }
                    };
                    if sender.flush().await.is_err() { break None; }
                    if let Some(reason) = closing { break reason; }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > idle_timeout {
                        break Some(close_reason(GOING_AWAY, "idle_timeout"));
                    }
                    if sender.ping().await.is_err() || sender.flush().await.is_err() { break None; }
                }
            }
        };
        let _ = room.send(Command::Leave { client: id }).await;
        sender.close(reason).await;
    }))
}
