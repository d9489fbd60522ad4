//! Building and running the HTTP server: `Application::build(settings)` binds the port and
//! wires state and routes; `run_until_stopped` serves until SIGINT/SIGTERM, then stops without
//! losing what the node holds (`stop`).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_http::HttpService;
use actix_http::error::DispatchError;
use actix_service::{ServiceFactoryExt, fn_service, map_config};
use actix_web::dev::{AppConfig, Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, web};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpStream;

use crate::caches::Caches;
use crate::chat::Committers;
use crate::collab::Rooms;
use crate::config::Settings;
use crate::events::Channel;
use crate::events::Redis;
use crate::gateway::Hub;
use crate::http;
use crate::telemetry;
use crate::tenancy::Store;

/// Everything a request may need, shared by all workers.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub redis: Redis,
    pub metrics: PrometheusHandle,
    pub committers: Committers,
    pub caches: Caches,
    pub hub: Arc<Hub>,
    pub rooms: Rooms,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("redis: {0}")]
    Redis(#[from] crate::events::RedisSetupError),
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
}

impl AppState {
    /// Creates the clients (connections open lazily) without touching the network.
    pub async fn new(settings: Settings) -> Result<Self, StartupError> {
        let store = Store::connect(&settings.mongodb).await?;
        let redis = Redis::connect(&settings.redis)?;
        let committers = Committers::new(
            settings.chat.send_committers,
            settings.chat.send_batch_max,
            settings.chat.send_queue_capacity,
            Duration::from_millis(settings.chat.record_interval_ms),
            settings.chat.commit_threads,
            crate::chat::search_index::IndexPolicy {
                interval: std::time::Duration::from_millis(settings.chat.search_index_interval_ms),
                block_min_messages: settings.chat.search_block_min_messages.max(1),
                block_max_wait: std::time::Duration::from_millis(settings.chat.search_block_max_wait_ms),
                recent_texts_max_bytes: settings.chat.search_recent_texts_max_bytes,
            },
        )?;
        let caches = Caches::new(&settings.cache);
        let rooms = Rooms::start(settings.collab.room_threads)?;
        Ok(Self {
            settings: Arc::new(settings),
            store,
            redis,
            metrics: telemetry::metrics_handle(),
            committers,
            caches,
            hub: Arc::new(Hub::default()),
            rooms,
        })
    }
}

/// How long a closing connection may take to shut down (actix-web's default).
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Application {
    port: u16,
    server: Server,
    state: Arc<AppState>,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let listener = listen(&settings.server.host, settings.server.port, settings.server.backlog)?;
        let port = listener.local_addr()?.port();
        let workers = settings.server.workers;
        let shutdown_timeout = settings.server.shutdown_timeout_secs;
        let idle = Duration::from_secs(settings.server.keep_alive_secs);
        let head_timeout = Duration::from_millis(settings.server.request_head_timeout_ms);
        let state = AppState::new(settings).await?;
        state.store.ensure_platform_indexes().await?;
        let state = web::Data::new(state);
        let kept = state.clone().into_inner();
        let (subscribed, shared) = (state.hub.clone(), state.clone().into_inner());
        state.redis.spawn_subscriber(
            state.settings.redis.url.clone(),
            move || subscribed.subscribed(),
            move |delivery| match delivery.channel {
                Channel::Document(_) => shared.rooms.dispatch(shared.hub.node_id(), delivery),
                Channel::Cache => match bson::from_slice(&delivery.payload) {
                    Ok(event) => {
                        shared.caches.apply(&delivery.tenant, &event);
                        shared.rooms.apply(shared.hub.node_id(), &delivery.tenant, &event);
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable cache notice"),
                },
                _ => shared.hub.dispatch(delivery),
            },
        );
        tokio::spawn(crate::gateway::sweep_presence(state.clone().into_inner()));
        let refreshed = state.clone().into_inner();
        tokio::spawn(async move { crate::caches::refresh_behind(&refreshed.caches, &refreshed.store).await });
        let store = state.store.clone();
        let app = move || {
            App::new()
                .app_data(state.clone())
                .wrap(from_fn(http::request_context))
                .configure(http::configure)
                .default_service(web::to(http::route_not_found))
        };
        // actix-web's HttpServer, plus an upgrade service: WebSocket upgrades run through the
        // same application and then leave the HTTP/1 dispatcher (see `http::upgrade`).
        let mut server = actix_server::Server::build().shutdown_timeout(shutdown_timeout).disable_signals().listen(
            "confab",
            listener,
            move || {
                // Runs on each HTTP worker's thread, inside its runtime.
                if let Err(e) = store.own_client_here() {
                    tracing::warn!(error = %e, "an HTTP worker reads through the shared MongoDB client");
                }
                let upgrade_app = app.clone();
                let http = HttpService::build()
                    .keep_alive(idle)
                    .client_request_timeout(head_timeout)
                    .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                    .upgrade(http::upgrade::upgrades(move || {
                        actix_service::IntoServiceFactory::into_factory(upgrade_app())
                    }))
                    .finish(map_config(app(), |_| AppConfig::default()))
                    .tcp();
                fn_service(move |stream| first_bytes(stream, idle)).and_then(http)
            },
        )?;
        if workers > 0 {
            server = server.workers(workers);
        }
        Ok(Self { port, server: server.run(), state: kept })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGINT or SIGTERM, then `stop`s; a second signal stops at once. Once the
    /// server has stopped (its requests answered), the conversation records held behind the
    /// answers are written.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut terminate, mut interrupt) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
        let (handle, state) = (self.server.handle(), self.state.clone());
        let stopping = tokio::spawn(async move {
            let mut next_signal = async move || {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            };
            next_signal().await;
            tracing::info!("stopping: closing sockets and storing open documents");
            tokio::select! {
                () = stop(&state, &handle) => {}
                () = next_signal() => handle.stop(false).await,
            }
        });
        let served = self.server.await;
        stopping.abort();
        let limit = Duration::from_secs(self.state.settings.server.shutdown_timeout_secs);
        self.state.committers.flush_records(limit).await;
        served
    }
}

/// Stops the node without losing what it holds. It takes no new connection; chat sockets and
/// live-editing clients are closed with 1012 `shutting_down`, so clients reconnect (to another
/// node), and each socket's user is announced offline if it was their last; open documents store
/// their last edits and a snapshot; requests in flight (sends waiting for MongoDB) are answered.
/// Closing and storing, then the requests, take up to `server.shutdown_timeout_secs` each.
async fn stop(state: &AppState, server: &ServerHandle) {
    server.pause().await;
    state.hub.close_all();
    let limit = Duration::from_secs(state.settings.server.shutdown_timeout_secs);
    // Socket tasks run on the HTTP workers, which `server.stop` ends with whatever is unfinished.
    tokio::join!(state.hub.sockets_ended(limit), state.rooms.stop(limit));
    server.stop(true).await;
}

/// Holds a new connection until its client sends something, and closes it without a word if
/// nothing comes within `idle`. actix's dispatcher would start its request-head timer at once
/// and answer a silent connection with 408, which a pooling client that opened the connection
/// ahead of need can take for the answer to the request it sends into it just then.
async fn first_bytes(stream: TcpStream, idle: Duration) -> Result<TcpStream, DispatchError> {
    match tokio::time::timeout(idle, stream.readable()).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err(DispatchError::Io(e)),
        Err(_) => Err(DispatchError::SlowRequestTimeout),
    }
}

/// Binds the HTTP listener with a backlog of `backlog` connections (std's `bind` asks for 128,
/// which a burst of new clients overflows while the workers are busy).
fn listen(host: &str, port: u16, backlog: u32) -> std::io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let address = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, format!("no address for {host}")))?;
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// A connection past the backlog has its SYN dropped and waits a second for the retry; these
    /// all get in at once although nothing accepts them.
    #[test]
    fn the_listener_queues_its_whole_backlog() {
        let listener = super::listen("127.0.0.1", 0, 512).unwrap();
        let address = listener.local_addr().unwrap();
        let clients: Vec<_> = (0..400)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"))
            })
            .collect();
        assert_eq!(clients.len(), 400);
    }
}
