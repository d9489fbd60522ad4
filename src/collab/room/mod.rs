//! One file's document held open on this node: a task that owns the Yjs document and the
//! awareness states, speaks the y-websocket sync protocol with each local client, stores edits
//! (batched: every update that arrived meanwhile is merged into one stored update with one seq),
//! relays them to the other local clients and publishes them to the other nodes. Viewers'
//! updates are dropped; awareness is relayed, never stored, and cleared when a client leaves.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use yrs::sync::{Awareness, AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;

use crate::app::AppState;
use crate::domain::{UserId, WorkspaceItem};
use crate::error::{ApiError, ErrorCode};
use crate::events::{DocEvent, DocEventKind};
use crate::tenancy::TenantDb;

use super::documents::{self, LoadedDoc};

mod access;
mod received;
mod storage;

pub use received::Received;

/// Close code that tells a client to reconnect (service restart).
const RESTART: u16 = 1012;
/// Commands queued per room before senders wait.
pub const COMMAND_CAPACITY: usize = 4096;
/// How often a room stores pending edits it could not store at once and checks for idleness.
const TICK: Duration = Duration::from_millis(500);
/// Every this many ticks a room looks for stored updates it never heard of (lost events).
const REPAIR_EVERY_TICKS: u32 = 6;
/// A seq claimed but still not stored after this long was lost (its node died mid-write).
const GAP_GIVE_UP: Duration = Duration::from_secs(10);
/// Commands handled before pending edits are stored, and bytes of edits held unstored; whichever
/// comes first bounds a batch. Storing costs a few round trips whatever its size, so a busy
/// document stores rarely and big, each batch gathering while the one before it is stored.
const MAX_BATCH: usize = 4096;
const MAX_PENDING_BYTES: usize = 1 << 20;

/// What a room sends a client's socket.
pub enum Outgoing {
    Binary(Vec<u8>),
    /// Close with this code and reason (4400-4499 tell y-websocket not to reconnect).
    Close(u16, &'static str),
}

pub struct ClientLink {
    pub id: u64,
    pub user: UserId,
    pub can_edit: bool,
    pub tx: mpsc::Sender<Outgoing>,
}

pub enum Command {
    Join {
        client: ClientLink,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    /// Messages from one client, in the order received.
    Messages {
        client: u64,
        messages: Vec<Received>,
    },
    Leave {
        client: u64,
    },
    Replace {
        text: String,
        by: UserId,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Read {
        reply: oneshot::Sender<String>,
    },
    Remote(DocEvent),
    /// Access to the session changed for this user (for everyone: `None`): their clients are
    /// closed, to reconnect.
    Revoke {
        user: Option<UserId>,
    },
    /// The node is stopping: the clients are closed (to reconnect elsewhere), and the room stores
    /// what it holds and ends. `done` is dropped once it has.
    Stop {
        done: oneshot::Sender<()>,
    },
}

struct Client {
    link: ClientLink,
    /// Awareness client ids this socket has spoken for, cleared when it leaves.
    awareness_ids: HashSet<yrs::block::ClientID>,
}

pub(super) struct Room {
    pub(super) state: Arc<AppState>,
    pub(super) db: TenantDb,
    pub(super) item: WorkspaceItem,
    pub(super) loaded: LoadedDoc,
    awareness: Awareness,
    clients: HashMap<u64, Client>,
    /// Awareness states of clients dropped for falling behind, to be cleared for the others
    /// (`clear_departed`) once the command at hand is done.
    departed: Vec<yrs::block::ClientID>,
    /// Edits received and checked, to be applied together (`settle`): the client, the update as
    /// it came (relayed once applied) and decoded.
    staged: Vec<(u64, Vec<u8>, documents::Decoded)>,
    /// The staged updates' total size.
    staged_bytes: usize,
    /// Applied locally, not yet stored.
    pending: Vec<Vec<u8>>,
    /// Bytes received since the last flush (staged or pending).
    pending_bytes: usize,
    pending_by: Option<UserId>,
    /// The highest seq heard of from other nodes.
    known_seq: i64,
    /// Since when the stored log has had a hole below `known_seq`.
    gap_since: Option<Instant>,
    idle_since: Option<Instant>,
    /// The document was deleted or re-created: nothing more is stored for it.
    dropped: bool,
    /// The batch being stored, if one is.
    in_flight: Option<storage::InFlight>,
    /// When the clients' roles were last read (`access`).
    access_checked: Instant,
    /// Set by `Command::Stop`: the room ends after the command at hand, and drops this when done.
    stopped: Option<oneshot::Sender<()>>,
}

fn encode(message: &Message) -> Vec<u8> {
    message.encode_v1()
}

impl Room {
    pub(super) fn new(state: Arc<AppState>, db: TenantDb, item: WorkspaceItem, loaded: LoadedDoc) -> Self {
        debug_assert!(!db.is_through_own_client(), "a room outlives the request: it needs the shared client");
        let known_seq = loaded.applied_seq;
        Self {
            state,
            db,
            item,
            loaded,
            awareness: Awareness::new(yrs::Doc::new()),
            clients: HashMap::new(),
            departed: Vec::new(),
            staged: Vec::new(),
            staged_bytes: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_by: None,
            known_seq,
            gap_since: None,
            idle_since: Some(Instant::now()),
            dropped: false,
            in_flight: None,
            access_checked: Instant::now(),
            stopped: None,
        }
    }

    /// Runs until the room has been idle long enough, its document is gone, or it is stopped;
    /// then stores what it holds and a snapshot, and ends.
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>, on_unload: impl FnOnce()) {
        let idle_unload = Duration::from_secs(self.state.settings.collab.idle_unload_secs);
        let mut tick = tokio::time::interval(TICK);
        let mut ticks = 0u32;
        while self.stopped.is_none() {
            self.clear_departed().await;
            // A full batch waits for the one in flight before more edits are taken.
            if self.pending_bytes >= MAX_PENDING_BYTES && self.in_flight.is_some() {
                self.landed().await;
                self.flush().await;
            }
            tokio::select! {
                stored = storage::in_flight_done(&mut self.in_flight), if self.in_flight.is_some() => {
                    self.land(stored).await;
                    self.flush().await;
                }
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    self.handle(command).await;
                    for _ in 0..MAX_BATCH {
                        if self.pending_bytes >= MAX_PENDING_BYTES {
                            break;
                        }
                        match commands.try_recv() {
                            Ok(command) => self.handle(command).await,
                            Err(_) => break,
                        }
                    }
                    self.flush().await;
                }
                _ = tick.tick() => {
                    ticks += 1;
                    self.flush().await;
                    if ticks.is_multiple_of(REPAIR_EVERY_TICKS) || self.known_seq > self.loaded.applied_seq {
                        self.repair().await;
                    }
                    self.recheck_access().await;
                    if self.dropped || self.idle_since.is_some_and(|at| at.elapsed() >= idle_unload) {
                        break;
                    }
                }
            }
        }
        on_unload();
        commands.close();
        while let Ok(command) = commands.try_recv() {
            self.handle(command).await;
        }
        if self.dropped {
            return;
        }
        self.flush_all().await;
        if !self.pending.is_empty() {
            tracing::error!(updates = self.pending.len(), "could not store a document's last edits before closing it");
        }
        if let Err(e) = documents::snapshot(&self.db, &self.item.id, &mut self.loaded).await {
            tracing::warn!(error = %e, "could not snapshot a document on unload");
        }
    }

    async fn handle(&mut self, command: Command) {
        if !matches!(command, Command::Messages { .. }) {
            self.settle();
        }
        match command {
            Command::Join { client, reply } => {
                let _ = reply.send(self.join(client));
            }
            Command::Messages { client, messages } => {
                for message in messages {
                    self.receive(client, message).await;
                }
            }
            Command::Leave { client } => self.leave(client).await,
            Command::Replace { text, by, reply } => {
                let replaced = self.replace(&text, by).await;
                let _ = reply.send(replaced);
            }
            Command::Read { reply } => {
                let _ = reply.send(documents::text(&self.loaded.doc));
            }
            Command::Remote(event) => self.remote(event).await,
            Command::Revoke { user } => self.close_clients(user.as_ref(), "access_changed").await,
            Command::Stop { done } => {
                self.close_clients(None, "shutting_down").await;
                self.stopped = Some(done);
            }
        }
    }

    fn join(&mut self, client: ClientLink) -> Result<(), ApiError> {
        if self.dropped {
            return Err(ApiError::not_found("item"));
        }
        let max = self.state.settings.collab.max_clients_per_document;
        if self.clients.len() >= max {
            return Err(ApiError::new(ErrorCode::LimitReached, format!("at most {max} clients per file"))
                .with_details(serde_json::json!({ "limit": "max_clients_per_document", "value": max })));
        }
        let sv = yrs::StateVector::decode_v1(&documents::state_vector(&self.loaded.doc)).unwrap_or_default();
        let mut hello = vec![Outgoing::Binary(encode(&Message::Sync(SyncMessage::SyncStep1(sv))))];
        if let Ok(update) = self.awareness.update()
            && !update.clients.is_empty()
        {
            hello.push(Outgoing::Binary(encode(&Message::Awareness(update))));
        }
        for frame in hello {
            let _ = client.tx.try_send(frame);
        }
        self.clients.insert(client.id, Client { link: client, awareness_ids: HashSet::new() });
        self.idle_since = None;
        Ok(())
    }

    /// Whether any local client but `except` would receive a broadcast.
    fn has_audience(&self, except: Option<u64>) -> bool {
        self.clients.keys().any(|id| Some(*id) != except)
    }

    /// Sends a frame to every local client but `except`; drops clients that fell behind.
    fn broadcast(&mut self, frame: &[u8], except: Option<u64>) {
        let mut behind = Vec::new();
        for (id, client) in &self.clients {
            if Some(*id) != except && client.link.tx.try_send(Outgoing::Binary(frame.to_vec())).is_err() {
                behind.push(*id);
            }
        }
        for id in behind {
            // Dropping the sender ends the socket, which reconnects and resyncs; the cursors it
            // spoke for go with the next `clear_departed`, as its own `leave` finds it gone.
            if let Some(dropped) = self.clients.remove(&id) {
                self.departed.extend(dropped.awareness_ids);
            }
        }
    }

    fn send_to(&self, client: u64, frame: Vec<u8>) {
        if let Some(client) = self.clients.get(&client) {
            let _ = client.link.tx.try_send(Outgoing::Binary(frame));
        }
    }

    fn close(&mut self, client: u64, code: u16, reason: &'static str) {
        if let Some(client) = self.clients.get(&client) {
            let _ = client.link.tx.try_send(Outgoing::Close(code, reason));
        }
    }

    async fn receive(&mut self, client: u64, message: Received) {
        let Some(can_edit) = self.clients.get(&client).map(|c| c.link.can_edit) else { return };
        match message {
            Received::SyncStep1(sv) => {
                self.settle();
                let diff = documents::diff(&self.loaded.doc, &sv);
                self.send_to(client, encode(&Message::Sync(SyncMessage::SyncStep2(diff))));
            }
            Received::Update(update, decoded) => {
                if can_edit {
                    self.edit(client, update, decoded);
                }
            }
            Received::Awareness(update) => self.awareness_from(client, update).await,
            Received::AwarenessQuery => {
                if let Ok(update) = self.awareness.update() {
                    self.send_to(client, encode(&Message::Awareness(update)));
                }
            }
            Received::Other => {}
            Received::Invalid => self.close(client, 4400, "invalid_message"),
        }
    }

    /// Checks an edit and stages it; `settle` applies, relays and keeps it for storing.
    fn edit(&mut self, client: u64, update: Vec<u8>, decoded: Option<documents::Decoded>) {
        let max = self.state.settings.collab.max_file_bytes;
        // An update cannot add more text than its own size, so most edits need no exact check.
        if documents::text_len(&self.loaded.doc) + self.staged_bytes + update.len() > max {
            self.settle();
            if !documents::fits(&self.loaded.doc, &update, max) {
                return self.close(client, 4413, "file_too_large");
            }
        }
        let Some(decoded) = decoded else {
            return self.close(client, 4400, "invalid_update");
        };
        self.staged_bytes += update.len();
        self.pending_bytes += update.len();
        self.staged.push((client, update, decoded));
    }

    /// Applies the staged edits in one transaction, relays each to the other local clients and
    /// keeps what they changed, as one update, for the next flush.
    pub(super) fn settle(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let (sources, decoded): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.staged).into_iter().map(|(client, raw, decoded)| ((client, raw), decoded)).unzip();
        self.staged_bytes = 0;
        if let Some((last, _)) = sources.last() {
            self.pending_by = self.clients.get(last).map(|c| c.link.user.clone());
        }
        let (changes, failed) = documents::apply_all(&self.loaded.doc, decoded);
        for (i, (client, raw)) in sources.into_iter().enumerate() {
            if failed.contains(&i) {
                self.close(client, 4400, "invalid_update");
            } else if self.has_audience(Some(client)) {
                self.broadcast(&encode(&Message::Sync(SyncMessage::Update(raw))), Some(client));
            }
        }
        if let Some(changes) = changes {
            self.pending.push(changes);
        }
    }

    async fn awareness_from(&mut self, client: u64, update: AwarenessUpdate) {
        if let Some(entry) = self.clients.get_mut(&client) {
            entry.awareness_ids.extend(update.clients.keys().copied());
        }
        let frame = encode(&Message::Awareness(update.clone()));
        let _ = self.awareness.apply_update(update);
        self.broadcast(&frame, Some(client));
        self.publish(DocEventKind::Awareness, 0, frame).await;
    }

    async fn leave(&mut self, client: u64) {
        if let Some(left) = self.clients.remove(&client) {
            self.departed.extend(left.awareness_ids);
        }
        self.clear_departed().await;
    }

    /// Closes `user`'s clients (everyone's without a user) with 1012 and `reason`: the stock
    /// provider reconnects, and the upgrade checks the role afresh. Clears the cursors they spoke
    /// for.
    async fn close_clients(&mut self, user: Option<&UserId>, reason: &'static str) {
        let theirs: Vec<u64> =
            self.clients.iter().filter(|(_, c)| user.is_none_or(|u| c.link.user == *u)).map(|(id, _)| *id).collect();
        for id in theirs {
            self.close(id, RESTART, reason);
            if let Some(closed) = self.clients.remove(&id) {
                self.departed.extend(closed.awareness_ids);
            }
        }
        self.clear_departed().await;
    }

    /// Clears the awareness states of clients that left or were dropped, for everyone else.
    async fn clear_departed(&mut self) {
        if self.clients.is_empty() && self.idle_since.is_none() {
            self.idle_since = Some(Instant::now());
        }
        // Telling the others may drop more clients that fell behind, whose states go next.
        while !self.departed.is_empty() {
            let ids = std::mem::take(&mut self.departed);
            for id in &ids {
                self.awareness.remove_state(*id);
            }
            if let Ok(update) = self.awareness.update_with_clients(ids) {
                let frame = encode(&Message::Awareness(update));
                self.broadcast(&frame, None);
                self.publish(DocEventKind::Awareness, 0, frame).await;
            }
        }
    }

    async fn replace(&mut self, text: &str, by: UserId) -> Result<(), ApiError> {
        if self.dropped {
            return Err(ApiError::not_found("item"));
        }
        let max = self.state.settings.collab.max_file_bytes;
        if text.len() > max {
            return Err(ApiError::new(ErrorCode::PayloadTooLarge, format!("files hold at most {max} bytes"))
                .with_details(serde_json::json!({ "limit": "max_file_bytes", "value": max })));
        }
        if let Some(update) = documents::replace_text(&self.loaded.doc, text) {
            self.broadcast(&encode(&Message::Sync(SyncMessage::Update(update.clone()))), None);
            self.pending_bytes += update.len();
            self.pending.push(update);
            self.pending_by = Some(by);
        }
        self.flush_all().await;
        if self.pending.is_empty() { Ok(()) } else { Err(ApiError::unavailable("the edit could not be stored yet")) }
    }

    async fn remote(&mut self, event: DocEvent) {
        match event.kind {
            DocEventKind::Update if event.epoch == self.loaded.epoch => {
                if documents::apply(&self.loaded.doc, &event.bytes.bytes) {
                    self.broadcast(&encode(&Message::Sync(SyncMessage::Update(event.bytes.bytes))), None);
                }
                if event.seq == self.loaded.applied_seq + 1 {
                    self.loaded.applied_seq = event.seq;
                }
                self.known_seq = self.known_seq.max(event.seq);
            }
            DocEventKind::Update if event.epoch < self.loaded.epoch => {}
            DocEventKind::Awareness => {
                let mut decoder = DecoderV1::from(event.bytes.bytes.as_slice());
                if let Ok(Message::Awareness(update)) = Message::decode(&mut decoder) {
                    let _ = self.awareness.apply_update(update);
                    self.broadcast(&event.bytes.bytes, None);
                }
            }
            DocEventKind::Reset | DocEventKind::Update => {
                let ids: Vec<u64> = self.clients.keys().copied().collect();
                for id in ids {
                    self.close(id, 4409, "document_reset");
                }
                self.clients.clear();
                self.staged.clear();
                self.staged_bytes = 0;
                self.pending.clear();
                self.pending_bytes = 0;
                self.dropped = true;
            }
        }
    }
}
