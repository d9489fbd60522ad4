//! `GET /v1/sessions/{session_id}/files/{item_id}/yjs`: the standard y-websocket protocol (sync
//! step 1/2, update, awareness, query awareness; binary frames) for one file's document, so
//! stock Yjs editors connect unchanged. Auth on the upgrade as for `/v1/ws`; the role comes from
//! session membership (viewers' updates are dropped by the room). `?epoch=` names the document
//! generation the client holds: a different one is closed with 4409 so it never merges into a
//! re-created document. One task per socket, relaying between the socket and the file's room.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::app::AppState;
use crate::auth::socket::{SUBPROTOCOL, answer_subprotocol, check_origin, socket_user};
use crate::collab::{ClientLink, Command, Outgoing, Received, rooms, tree};
use crate::domain::{ItemId, SessionId};
use crate::error::{ApiError, ErrorCode};
use crate::http::upgrade::{Handshake, SocketSizes};

use super::socket::{self, CloseReason, Frames, GOING_AWAY, Incoming, RESTART, Sender, TRY_AGAIN, close_reason};

/// Frames queued for one editor before it counts as too slow (it is dropped and resyncs).
const OUTBOX: usize = 512;
/// Messages already received that one room command carries at most.
const MESSAGES_PER_COMMAND: usize = 256;
/// Bytes an editor's socket reads at once.
const READ_BUFFER: usize = 4096;
/// Bytes an editor's socket reads ahead: editors send bursts of small updates.
const READ_AHEAD: usize = 16 * 1024;

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
    let sizes =
        SocketSizes { max_message_bytes: limits.0, read_buffer_bytes: READ_BUFFER, read_ahead_bytes: READ_AHEAD };
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
                    last_heard = Instant::now();
                    let mut incoming = incoming;
                    if let Some(Incoming::Binary(first)) = incoming {
                        let (messages, after) = gather(first, &mut frames);
                        if room.send(Command::Messages { client: id, messages }).await.is_err() {
                            break Some(close_reason(RESTART, "document_closed"));
                        }
                        let Some(after) = after else { continue };
                        incoming = after;
                    }
                    match incoming {
                        None => break None,
                        Some(Incoming::Close(reason)) => break reason,
                        // 44xx: the stock provider would otherwise resend it forever.
                        Some(Incoming::TooBig) => break Some(close_reason(4413, "message_too_large")),
                        Some(Incoming::Binary(_) | Incoming::Text(_) | Incoming::Heard) => {}
                    }
                }
                frame = outgoing.recv() => {
                    if let Err(reason) = write_waiting(&mut sender, frame, &mut outgoing).await {
                        break reason;
                    }
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

/// `first` and the binary messages already received behind it (at most
/// `MESSAGES_PER_COMMAND` frames), decoded here for one room command (the room then only applies
/// them); and the frame that stopped the run, if one did: another kind of frame, or `None` for
/// the socket's end.
fn gather(first: Bytes, frames: &mut Frames) -> (Vec<Received>, Option<Option<Incoming>>) {
    let mut messages = Vec::new();
    Received::decode_frame(&first, &mut messages);
    for _ in 1..MESSAGES_PER_COMMAND {
        match frames.ready() {
            Some(Some(Incoming::Binary(bytes))) => Received::decode_frame(&bytes, &mut messages),
            Some(other) => return (messages, Some(other)),
            None => break,
        }
    }
    (messages, None)
}

/// Writes `first` and the frames already waiting behind it (at most `OUTBOX`) in one write;
/// `Err` with the close reason when one of them, or the room going away, ends the socket.
async fn write_waiting(
    sender: &mut Sender,
    first: Option<Outgoing>,
    outgoing: &mut mpsc::Receiver<Outgoing>,
) -> Result<(), Option<CloseReason>> {
    let mut next = first;
    let mut closing = None;
    for sent in 1..=OUTBOX {
        match next {
            Some(Outgoing::Binary(bytes)) => sender.binary(bytes).await.map_err(|_| None)?,
            Some(Outgoing::Close(code, reason)) => {
                closing = Some(close_reason(code, reason));
                break;
            }
            // The room dropped this client (too far behind, or the room closed).
            None => {
                closing = Some(close_reason(TRY_AGAIN, "resync"));
                break;
            }
        }
        if sent == OUTBOX {
            break;
        }
        next = match outgoing.try_recv() {
            Ok(frame) => Some(frame),
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => None,
        };
    }
    sender.flush().await.map_err(|_| None)?;
    closing.map_or(Ok(()), |reason| Err(Some(reason)))
}
