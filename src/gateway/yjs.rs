//! `GET /v1/sessions/{session_id}/files/{item_id}/yjs`: the standard y-websocket protocol (sync
//! step 1/2, update, awareness, query awareness; binary frames) for one file's document, so
//! stock Yjs editors connect unchanged. Auth on the upgrade as for `/v1/ws`; the role comes from
//! session membership (viewers' updates are dropped by the room). `?epoch=` names the document
//! generation the client holds: a different one is closed with 4409 so it never merges into a
//! re-created document. One task per socket, relaying between the socket and the file's room.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::app::AppState;
use crate::auth::socket::{SUBPROTOCOL, answer_subprotocol, check_origin, socket_user};
use crate::collab::{ClientLink, Command, Outgoing, rooms, tree};
use crate::domain::{ItemId, SessionId};
use crate::error::{ApiError, ErrorCode};

/// Frames queued for one editor before it counts as too slow (it is dropped and resyncs).
const OUTBOX: usize = 512;

static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

#[derive(Deserialize)]
struct EpochQuery {
    epoch: Option<i64>,
}

pub async fn connect(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
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
    let wanted_epoch = web::Query::<EpochQuery>::from_query(req.query_string()).ok().and_then(|q| q.0.epoch);
    let (tx, mut outgoing) = mpsc::channel(OUTBOX);
    let id = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
    let link = || ClientLink { id, user: caller.user_id().clone(), can_edit: role.can_edit(), tx: tx.clone() };
    let stale = wanted_epoch.is_some_and(|epoch| epoch != file.epoch);
    let room = if stale { None } else { Some(rooms::join(&state, &db, &file, link).await?) };
    drop(tx);
    let (mut response, mut session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("not a WebSocket upgrade: {e}")))?;
    if answer_protocol {
        response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
    }
    let limits = (state.settings.collab.max_message_bytes, state.settings.gateway.clone());
    actix_web::rt::spawn(async move {
        let Some(room) = room else {
            let reason = CloseReason { code: CloseCode::Other(4409), description: Some("epoch_changed".into()) };
            let _ = session.close(Some(reason)).await;
            return;
        };
        let mut stream = stream.max_frame_size(limits.0).aggregate_continuations();
        let mut heartbeat = tokio::time::interval(Duration::from_secs(limits.1.heartbeat_secs));
        let idle_timeout = Duration::from_secs(limits.1.idle_timeout_secs);
        let mut last_heard = Instant::now();
        let reason = loop {
            tokio::select! {
                incoming = stream.next() => {
                    let Some(Ok(incoming)) = incoming else { break None };
                    last_heard = Instant::now();
                    match incoming {
                        AggregatedMessage::Binary(bytes) => {
                            if room.send(Command::Message { client: id, bytes: bytes.to_vec() }).await.is_err() {
                                break Some(CloseReason { code: CloseCode::Restart, description: Some("document_closed".into()) });
                            }
                        }
                        AggregatedMessage::Ping(bytes) => {
                            if session.pong(&bytes).await.is_err() { break None; }
                        }
                        AggregatedMessage::Close(reason) => break reason,
                        AggregatedMessage::Text(_) | AggregatedMessage::Pong(_) => {}
                    }
                }
                frame = outgoing.recv() => match frame {
                    Some(Outgoing::Binary(bytes)) => {
                        if session.binary(bytes).await.is_err() { break None; }
                    }
                    Some(Outgoing::Close(code, reason)) => {
                        break Some(CloseReason { code: CloseCode::Other(code), description: Some(reason.into()) });
                    }
                    // The room dropped this client (too far behind, or the room closed).
                    None => break Some(CloseReason { code: CloseCode::Again, description: Some("resync".into()) }),
                },
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > idle_timeout {
                        break Some(CloseReason { code: CloseCode::Away, description: Some("idle_timeout".into()) });
                    }
                    if session.ping(b"").await.is_err() { break None; }
                }
            }
        };
        let _ = room.send(Command::Leave { client: id }).await;
        let _ = session.close(reason).await;
    });
    Ok(response)
}
