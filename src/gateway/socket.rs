//! The two halves of an accepted WebSocket (see `http::upgrade`): `Sender` queues frames and
//! writes them together on `flush` (or once a few KiB wait), so a burst of events costs one
//! write, not one per frame; writes wait while a client does not read. `Frames` reads what the
//! client sends. Pings are answered by the codec itself.

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::http::upgrade::SocketIo;

type Stream = WebSocketStream<SocketIo>;

/// Why a socket closes: a code and a short machine-readable reason.
pub type CloseReason = CloseFrame;

/// The socket can no longer be written.
#[derive(Debug)]
pub struct Closed;

pub fn close_reason(code: u16, reason: &'static str) -> CloseReason {
    CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from_static(reason) }
}

/// Standard close codes used by the gateway.
pub const GOING_AWAY: u16 = 1001;
pub const POLICY: u16 = 1008;
pub const RESTART: u16 = 1012;
pub const TRY_AGAIN: u16 = 1013;
pub const TOO_BIG: u16 = 1009;

pub fn split(socket: Stream) -> (Sender, Frames) {
    let (sink, stream) = socket.split();
    (Sender(sink), Frames(stream))
}

pub struct Sender(SplitSink<Stream, Message>);

impl Sender {
    /// Queues a text frame (see `flush`).
    pub async fn text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), Closed> {
        self.0.feed(Message::Text(text.into())).await.map_err(|_| Closed)
    }

    /// Queues a binary frame (see `flush`).
    pub async fn binary(&mut self, bytes: impl Into<Bytes>) -> Result<(), Closed> {
        self.0.feed(Message::Binary(bytes.into())).await.map_err(|_| Closed)
    }

    /// Queues a ping (see `flush`).
    pub async fn ping(&mut self) -> Result<(), Closed> {
        self.0.feed(Message::Ping(Bytes::new())).await.map_err(|_| Closed)
    }

    /// Writes whatever is queued.
    pub async fn flush(&mut self) -> Result<(), Closed> {
        self.0.flush().await.map_err(|_| Closed)
    }

    /// Sends a close frame (once; later calls do nothing) and ends the stream.
    pub async fn close(&mut self, reason: Option<CloseReason>) {
        let _ = self.0.send(Message::Close(reason)).await;
        let _ = self.0.close().await;
    }
}

/// What a client sent. Pings are answered by the codec; a ping or pong still shows the client is
/// there (`Heard`).
pub enum Incoming {
    Text(Utf8Bytes),
    Binary(Bytes),
    Close(Option<CloseReason>),
    Heard,
    /// A message over the socket's size limit (the socket must close).
    TooBig,
}

pub struct Frames(SplitStream<Stream>);

impl Frames {
    /// The next frame; `None` once the socket ended or broke.
    pub async fn next(&mut self) -> Option<Incoming> {
        Some(match self.0.next().await? {
            Ok(Message::Text(text)) => Incoming::Text(text),
            Ok(Message::Binary(bytes)) => Incoming::Binary(bytes),
            Ok(Message::Close(reason)) => Incoming::Close(reason),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => Incoming::Heard,
            Err(tokio_tungstenite::tungstenite::Error::Capacity(_)) => Incoming::TooBig,
            Err(_) => return None,
        })
    }

    /// A frame already received, if any, without waiting.
    pub fn ready(&mut self) -> Option<Option<Incoming>> {
        futures_util::FutureExt::now_or_never(self.next())
    }
}
