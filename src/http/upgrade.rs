//! WebSockets leave actix's HTTP/1 dispatcher once upgraded, so an idle socket holds only the TCP
//! stream, a small WebSocket codec and its own task's state, not the dispatcher's 8 KiB read and
//! write buffers and request machinery.
//!
//! An upgrade request (`Upgrade: websocket`) is handed by actix-http to `Upgrades`, which runs it
//! through the same application (routes, middleware, extractors, error bodies) as any request.
//! A WebSocket route checks everything, then answers `Handshake::accept`: the 101 response
//! carrying what to run on the socket. `Upgrades` writes that response and runs the socket on
//! the raw stream with tokio-tungstenite. Any other answer (401, 403, 404...) is written as is and
//! the connection closes.

use std::future::Future;
use std::rc::Rc;

use actix_codec::Framed;
use actix_http::body::{BodySize, MessageBody};
use actix_http::h1::{Codec, Message};
use actix_http::{ConnectionType, Request, ws};
use actix_service::{Service, ServiceFactory, fn_factory, fn_service};
use actix_web::dev::{AppConfig, ServiceResponse};
use actix_web::http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use actix_web::rt::net::TcpStream;
use actix_web::{HttpRequest, HttpResponse};
use futures_util::SinkExt;
use futures_util::future::LocalBoxFuture;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::error::{ApiError, ErrorCode};

/// The connection under an accepted WebSocket, with its read-ahead buffer (see `SocketSizes`).
pub type SocketIo = tokio::io::BufReader<TcpStream>;

/// An accepted WebSocket: the stream, or `None` when the handshake could not be written (the
/// client left), so the route's work still runs its clean-up.
pub type Upgraded = Option<WebSocketStream<SocketIo>>;

/// Queued outgoing bytes that are written without waiting for a flush.
const WRITE_BUFFER_BYTES: usize = 8192;

type Work = Box<dyn FnOnce(Upgraded) -> LocalBoxFuture<'static, ()>>;

/// What the 101 response carries to `Upgrades`: the socket's work and sizes.
struct SocketWork {
    work: Work,
    sizes: SocketSizes,
}

/// A socket's byte sizes.
#[derive(Clone, Copy)]
pub struct SocketSizes {
    /// Largest message (and frame) a client may send; a larger one ends the socket.
    pub max_message_bytes: usize,
    /// Bytes read from the stream at once. Larger messages still arrive (the buffer grows for
    /// them); an idle socket keeps this much, and a busy one hands over what one read brought.
    pub read_buffer_bytes: usize,
    /// Bytes read ahead from the connection, in a buffer of the socket's own. The frame decoder
    /// asks the connection for exactly the next header or payload once the frames it handed out
    /// still share its buffer, which costs a read per header and per payload; sockets that
    /// receive many small messages read ahead instead. 0 keeps no such buffer.
    pub read_ahead_bytes: usize,
}

/// A request checked to be a WebSocket handshake that this server upgrades.
pub struct Handshake {
    response: HttpResponse,
}

impl Handshake {
    /// Checks the handshake headers. Only `Upgrade: websocket` exactly is accepted: that is what
    /// actix-http hands to `Upgrades` (anything else would be answered by the dispatcher, which
    /// cannot switch protocols).
    pub fn check(req: &HttpRequest) -> Result<Self, ApiError> {
        let exact = req
            .headers()
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
        let not_upgrade =
            |why: String| ApiError::new(ErrorCode::InvalidRequest, format!("not a WebSocket upgrade: {why}"));
        if !exact {
            return Err(not_upgrade("the Upgrade header must be 'websocket'".into()));
        }
        let response =
            ws::handshake(req.head()).map_err(|e| not_upgrade(e.to_string()))?.finish().map_into_boxed_body();
        Ok(Self { response: response.into() })
    }

    /// Names `protocol` in the answer's `Sec-WebSocket-Protocol`.
    pub fn with_subprotocol(mut self, protocol: &'static str) -> Self {
        self.response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        self
    }

    /// The 101 answer; `work` runs on the socket once the answer is written.
    pub fn accept<F, Fut>(mut self, sizes: SocketSizes, work: F) -> HttpResponse
    where
        F: FnOnce(Upgraded) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let work: Work = Box::new(move |socket| Box::pin(work(socket)));
        self.response.extensions_mut().insert(SocketWork { work, sizes });
        self.response
    }
}

/// The upgrade service for `actix_http::HttpServiceBuilder::upgrade`: runs upgrade requests
/// through an instance of the application made by `app`.
pub fn upgrades<A, F, S, B>(
    app: A,
) -> impl ServiceFactory<
    (Request, Framed<TcpStream, Codec>),
    Config = (),
    Response = (),
    Error = actix_web::Error,
    InitError = (),
>
where
    A: Fn() -> F + Clone + 'static,
    F: ServiceFactory<
            Request,
            Config = AppConfig,
            Service = S,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        >,
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    fn_factory(move || {
        let factory = app();
        async move {
            let service = Rc::new(factory.new_service(AppConfig::default()).await?);
            Ok(fn_service(move |(req, framed): (Request, Framed<TcpStream, Codec>)| {
                let service = service.clone();
                async move {
                    // Boxed: the route's future is gone once answered, not kept for the socket's life.
                    let response = match Box::pin(service.call(req)).await {
                        Ok(response) => response.into_parts().1.map_into_boxed_body(),
                        Err(e) => e.error_response(),
                    };
                    upgrade(response, framed).await.map_err(actix_web::Error::from)
                }
            }))
        }
    })
}

/// Writes `response`; a WebSocket's 101 then runs the socket's work on the stream.
async fn upgrade(mut response: HttpResponse, mut framed: Framed<TcpStream, Codec>) -> std::io::Result<()> {
    let socket = response.extensions_mut().remove::<SocketWork>();
    let (mut head, body) = actix_http::Response::from(response).into_parts();
    let Some(SocketWork { work, sizes }) = socket else {
        head.head_mut().set_connection_type(ConnectionType::Close);
        let size = body.size();
        let bytes = actix_web::body::to_bytes(body).await.unwrap_or_default();
        // Head and body in one write: clients read a refusal's body from what came with its head.
        framed.feed(Message::Item((head, size))).await?;
        if !matches!(size, BodySize::None) {
            framed.feed(Message::Chunk(Some(bytes))).await?;
            framed.feed(Message::Chunk(None)).await?;
        }
        return framed.flush().await;
    };
    if let Err(e) = framed.send(Message::Item((head, BodySize::None))).await {
        work(None).await;
        return Err(e);
    }
    // The dispatcher's buffers (8 KiB each) go now, not when the socket ends; only bytes the
    // client already sent after its handshake are kept.
    let (io, early) = {
        let parts = framed.into_parts();
        (parts.io, parts.read_buf.to_vec())
    };
    let _ = io.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(sizes.read_buffer_bytes)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(sizes.max_message_bytes))
        .max_frame_size(Some(sizes.max_message_bytes));
    // A buffer cannot be empty; a 1-byte one is never filled (every read goes past it).
    let io = tokio::io::BufReader::with_capacity(sizes.read_ahead_bytes.max(1), io);
    let socket = WebSocketStream::from_partially_read(io, early, Role::Server, Some(config)).await;
    work(Some(socket)).await;
    Ok(())
}
