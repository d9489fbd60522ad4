//! The pool of Redis connections commands go through.
//!
//! Each pooled connection is multiplexed (it pipelines whatever its users send), so handing one
//! out again needs no check. deadpool-redis's own manager sends `UNWATCH` + `PING` every time a
//! connection is handed out, a second round trip for every command; confab never `WATCH`es.
//! Instead, a connection whose command failed at the connection level (I/O, dropped, no answer in
//! time) is marked, and replaced when it is next handed out.

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{Client, RedisError};

pub(super) struct Manager {
    client: Client,
}

pub(super) struct Connection {
    pub(super) multiplexed: MultiplexedConnection,
    /// Set when a command on it failed at the connection level: it is replaced, not reused.
    pub(super) broken: bool,
}

pub(super) type Pool = managed::Pool<Manager>;

impl Manager {
    pub(super) fn new(url: &str) -> Result<Self, RedisError> {
        Ok(Self { client: Client::open(url)? })
    }
}

impl managed::Manager for Manager {
    type Type = Connection;
    type Error = RedisError;

    async fn create(&self) -> Result<Connection, RedisError> {
        Ok(Connection { multiplexed: self.client.get_multiplexed_async_connection().await?, broken: false })
    }

    async fn recycle(&self, connection: &mut Connection, _: &Metrics) -> RecycleResult<RedisError> {
        if connection.broken { Err(RecycleError::message("a command on it failed")) } else { Ok(()) }
    }
}

/// Whether `error` says the connection itself is no good (rather than the command).
pub(super) fn breaks_connection(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_timeout() || error.is_unrecoverable_error()
}
