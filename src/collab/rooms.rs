//! This node's open documents: one room per (tenant, file), opened on first use and closed
//! when idle. Edits from other nodes reach the room through this registry.
//!
//! Rooms run on threads of their own (`collab.room_threads`), apart from the HTTP workers that
//! own the sockets: each HTTP worker is a single-threaded runtime, so a room spawned there would
//! take turns with the very socket feeding it. On their own threads, a busy document's edits are
//! decoded on one core while the room applies them on another, and its store task runs beside it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::app::AppState;
use crate::domain::{ItemId, SessionId, TenantId, UserId, WorkspaceItem};
use crate::error::ApiError;
use crate::events::{CacheEvent, Channel, Delivery, DocEvent, DocEventKind};
use crate::tenancy::TenantDb;
use crate::threads::Threads;

use super::documents;
use super::room::{COMMAND_CAPACITY, ClientLink, Command, Room};

type RoomKey = (TenantId, ItemId);

/// An open room: its file's session, and its command queue.
struct OpenRoom {
    session: SessionId,
    tx: mpsc::Sender<Command>,
}

pub struct Rooms {
    open: Mutex<HashMap<RoomKey, OpenRoom>>,
    /// The node is stopping (`stop`): no room opens any more.
    stopping: AtomicBool,
    /// The runtime rooms run on; stopped (without waiting) when the node's state goes.
    threads: Threads,
}

impl Rooms {
    /// Starts `threads` room threads (0: one per core).
    pub fn start(threads: usize) -> std::io::Result<Self> {
        Ok(Self {
            open: Mutex::default(),
            stopping: AtomicBool::new(false),
            threads: Threads::start("confab-rooms", threads)?,
        })
    }

    fn get(&self, key: &RoomKey) -> Option<mpsc::Sender<Command>> {
        self.open.lock().expect("rooms lock").get(key).map(|room| &room.tx).filter(|tx| !tx.is_closed()).cloned()
    }

    /// The room of a file, loading its document if this node does not hold it yet.
    pub async fn open(
        state: &Arc<AppState>,
        db: &TenantDb,
        item: &WorkspaceItem,
    ) -> Result<mpsc::Sender<Command>, ApiError> {
        let key = (item.tenant_id.clone(), item.id.clone());
        if let Some(tx) = state.rooms.get(&key) {
            return Ok(tx);
        }
        state.rooms.refuse_if_stopping()?;
        let loaded = documents::load(db, item).await.map_err(ApiError::internal)?;
        let mut open = state.rooms.open.lock().expect("rooms lock");
        // Checked again under the lock `stop` takes after setting the flag: no room slips past it.
        state.rooms.refuse_if_stopping()?;
        if let Some(room) = open.get(&key).filter(|room| !room.tx.is_closed()) {
            return Ok(room.tx.clone());
        }
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        open.insert(key.clone(), OpenRoom { session: item.session_id.clone(), tx: tx.clone() });
        let room = Room::new(state.clone(), db.clone(), item.clone(), loaded);
        let registry = state.clone();
        let own = tx.clone();
        state.rooms.threads.spawn(async move {
            room.run(rx, move || {
                let mut open = registry.rooms.open.lock().expect("rooms lock");
                if open.get(&key).is_some_and(|current| current.tx.same_channel(&own)) {
                    open.remove(&key);
                }
            })
            .await;
        });
        Ok(tx)
    }

    fn refuse_if_stopping(&self) -> Result<(), ApiError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::shutting_down());
        }
        Ok(())
    }

    /// For a node that is stopping: closes every open room's editors with 1012 `shutting_down`
    /// (the stock provider reconnects, to another node behind the load balancer), stores what
    /// each room holds with a snapshot, and waits for that up to `within`. No room opens after.
    pub async fn stop(&self, within: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let rooms: Vec<mpsc::Sender<Command>> =
            self.open.lock().expect("rooms lock").values().map(|room| room.tx.clone()).collect();
        let stopped = rooms.into_iter().map(|tx| async move {
            let (done, ended) = oneshot::channel();
            if tx.send(Command::Stop { done }).await.is_ok() {
                // The room drops `done` once it has stored everything (or ended otherwise).
                let _ = ended.await;
            }
        });
        if tokio::time::timeout(within, futures_util::future::join_all(stopped)).await.is_err() {
            tracing::error!("open documents were still being stored when the node stopped");
        }
    }

    /// Acts on a cache notice from any node: a session member's access changed, so their
    /// editors of its files here are closed (unless `node` sent it, having closed them already).
    pub fn apply(&self, node: &str, tenant: &TenantId, event: &CacheEvent) {
        if let CacheEvent::SessionAccess { session_id, user_id, origin } = event
            && origin != node
        {
            self.revoke(tenant, session_id, user_id.as_ref());
        }
    }

    /// Closes `user`'s editors (everyone's without a user) in this node's rooms of `session`:
    /// they reconnect and get in with what they may do now, or are refused.
    pub fn revoke(&self, tenant: &TenantId, session: &SessionId, user: Option<&UserId>) {
        let open = self.open.lock().expect("rooms lock");
        for ((room_tenant, _), room) in open.iter() {
            if room_tenant == tenant && room.session == *session {
                let (tx, user) = (room.tx.clone(), user.cloned());
                // Queued behind the room's other commands, however full its queue is.
                self.threads.spawn(async move { tx.send(Command::Revoke { user }).await });
            }
        }
    }

    /// Hands an event from another node to the room of its document, if open here.
    pub fn dispatch(&self, node: &str, delivery: Delivery) {
        let Channel::Document(item) = delivery.channel else { return };
        let Ok(event) = mongodb::bson::from_slice::<DocEvent>(&delivery.payload) else {
            return tracing::warn!("dropping an undecodable document event");
        };
        if event.origin == node {
            return;
        }
        if let Some(tx) = self.get(&(delivery.tenant, item)) {
            // A full room misses this event; it finds stored updates again by seq.
            let _ = tx.try_send(Command::Remote(event));
        }
    }
}

/// Sends a command and waits for the room's answer; a room that just closed is reopened once.
async fn ask<T>(
    state: &Arc<AppState>,
    db: &TenantDb,
    item: &WorkspaceItem,
    command: impl Fn(oneshot::Sender<T>) -> Command,
) -> Result<T, ApiError> {
    for _ in 0..2 {
        let room = Rooms::open(state, db, item).await?;
        let (reply, answer) = oneshot::channel();
        if room.send(command(reply)).await.is_err() {
            continue;
        }
        if let Ok(answer) = answer.await {
            return Ok(answer);
        }
    }
    Err(ApiError::unavailable("the document is being reloaded; retry"))
}

pub async fn join(
    state: &Arc<AppState>,
    db: &TenantDb,
    item: &WorkspaceItem,
    client: impl Fn() -> ClientLink,
) -> Result<mpsc::Sender<Command>, ApiError> {
    for _ in 0..2 {
        let room = Rooms::open(state, db, item).await?;
        let (reply, answer) = oneshot::channel();
        if room.send(Command::Join { client: client(), reply }).await.is_err() {
            continue;
        }
        match answer.await {
            Ok(joined) => return joined.map(|()| room),
            Err(_) => continue,
        }
    }
    Err(ApiError::unavailable("the document is being reloaded; retry"))
}

/// The file's current text.
pub async fn read(state: &Arc<AppState>, db: &TenantDb, item: &WorkspaceItem) -> Result<String, ApiError> {
    ask(state, db, item, |reply| Command::Read { reply }).await
}

/// Replaces the file's text as one edit that connected editors see like any other.
pub async fn replace(
    state: &Arc<AppState>,
    db: &TenantDb,
    item: &WorkspaceItem,
    text: &str,
    by: &UserId,
) -> Result<(), ApiError> {
    ask(state, db, item, |reply| Command::Replace { text: text.to_string(), by: by.clone(), reply }).await?
}

/// Tells every node to drop a document (deleted or re-created): its clients are closed.
pub async fn reset(state: &AppState, item: &WorkspaceItem) {
    let event = DocEvent {
        origin: String::new(),
        kind: DocEventKind::Reset,
        epoch: item.epoch,
        seq: 0,
        bytes: crate::tenancy::binary(Vec::new()),
    };
    if let Some(tx) = state.rooms.get(&(item.tenant_id.clone(), item.id.clone())) {
        let _ = tx.send(Command::Remote(event.clone())).await;
    }
    state.redis.publish_doc_event(&item.tenant_id, &item.id, &event).await;
}
