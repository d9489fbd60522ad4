//! The WebSocket gateway: `GET /v1/ws`, one task per socket, fed by this node's hub.

mod frames;
mod hub;
mod session;

pub use hub::Hub;
pub use session::connect;
