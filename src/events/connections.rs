//! The pool of Redis connections commands go through.
//!
//! Each pooled connection is multiplexed (it pipelines whatever its users send), so handing one
//! out again needs no check. deadpool-redis's own manager sends `UNWATCH` + `PING` every time a
//! connection is handed out, a second round trip for every command; confab never `WATCH`es.
//! Instead, a connection whose command failed at the connection level (I/O, dropped, no answer in
//! time) is marked, and replaced when it is next handed out.
//!
//! A command holds its pooled connection only while taking it out: it runs on a clone of the
//! multiplexed handle, and the connection goes straight back to the pool for the next command to
//! share. Holding it for the whole round trip capped a node at `redis.pool_size` commands in
//! flight, so under load commands queued for a connection instead of for Redis, and a history
//! page that waited past `HEAD_WAIT` read MongoDB instead (a node under thousands of requests
//! read hundreds of pages that way a second, making itself slower still).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{Client, RedisError};

pub(super) struct Manager {
    client: Client,
}

pub(super) struct Connection {
    pub(super) multiplexed: MultiplexedConnection,
    /// Set when a command on it failed at the connection level: it is replaced, not reused.
    /// Shared with the commands running on it, which may fail after it went back to the pool.
    pub(super) broken: Breakage,
}

/// Whether a connection has failed, as its commands report it.
#[derive(Clone, Default)]
pub(super) struct Breakage(Arc<AtomicBool>);

impl Breakage {
    pub(super) fn report(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_broken(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
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
        Ok(Connection {
            multiplexed: self.client.get_multiplexed_async_connection().await?,
            broken: Breakage::default(),
        })
    }

    async fn recycle(&self, connection: &mut Connection, _: &Metrics) -> RecycleResult<RedisError> {
        if connection.broken.is_broken() { Err(RecycleError::message("a command on it failed")) } else { Ok(()) }
    }
}

/// Whether `error` says the connection itself is no good (rather than the command).
pub(super) fn breaks_connection(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_timeout() || error.is_unrecoverable_error()
}
