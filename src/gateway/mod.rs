//! The WebSocket gateway: `GET /v1/ws`, one task per socket, fed by this node's hub; the
//! protocol's types (from which `openapi/asyncapi.yaml` is generated); connection tracking and
//! presence.

pub mod asyncapi;
mod frames;
mod hub;
pub mod protocol;
mod relay;
mod session;
mod socket;
mod tracking;
pub mod yjs;

pub use hub::Hub;
pub use session::connect;
pub use tracking::sweep_presence;
