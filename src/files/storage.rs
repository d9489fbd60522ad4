//! Where file bytes live. Use cases see only these traits, so another backend (an
//! S3-compatible store, say) can be added without touching them; GridFS in the tenant's own
//! database is the default (`tenancy::GridFsBlobs`).

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("blob not found")]
    NotFound,
    #[error("storage backend: {0}")]
    Backend(String),
}

pub type StorageResult<T> = Result<T, StorageError>;

pub trait BlobStore: Send + Sync {
    /// The backend's name, recorded with each file.
    fn backend(&self) -> &'static str;

    /// Starts writing a new blob under `key`.
    fn create(&self, key: &str) -> BoxFuture<'static, StorageResult<Box<dyn BlobWriter>>>;

    /// Streams bytes `start..=end` of the blob.
    fn read(&self, key: &str, start: u64, end: u64) -> BoxStream<'static, StorageResult<Bytes>>;

    /// Removes the blob; removing a missing blob is not an error.
    fn delete(&self, key: &str) -> BoxFuture<'static, StorageResult<()>>;
}

pub trait BlobWriter: Send {
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> BoxFuture<'a, StorageResult<()>>;

    /// Makes the blob durable and visible.
    fn finish(self: Box<Self>) -> BoxFuture<'static, StorageResult<()>>;

    /// Discards everything written so far.
    fn abort(self: Box<Self>) -> BoxFuture<'static, StorageResult<()>>;
}
