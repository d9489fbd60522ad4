//! Code sessions: sessions and their members (owner/editor/viewer), the workspace tree, and one
//! live Yjs document per file, held open on each node by a room that applies, stores and relays
//! edits (the y-websocket endpoint itself is in `gateway::yjs`).

pub mod documents;
mod room;
pub mod rooms;

pub use room::{ClientLink, Command, Outgoing, Received};
pub use rooms::Rooms;
pub mod fork;
pub mod sessions;
pub mod tree;
