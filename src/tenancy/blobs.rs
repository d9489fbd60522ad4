//! File bytes in GridFS, in the tenant's own database (`fs.files` / `fs.chunks`).
//!
//! Writes go through the driver's upload stream (one chunk buffered at a time). Reads query the
//! chunks collection by an exact `n` range, so a byte range costs only the chunks it touches.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::io::AsyncWriteExt;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::{Bson, Document, doc};
use mongodb::gridfs::{GridFsBucket, GridFsUploadStream};
use mongodb::{Collection, Database};

use crate::files::{BlobStore, BlobWriter, StorageError, StorageResult};

pub struct GridFsBlobs {
    bucket: GridFsBucket,
    files: Collection<Document>,
    chunks: Collection<Document>,
}

fn backend_error(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

impl GridFsBlobs {
    pub(super) fn new(db: &Database) -> Self {
        Self { bucket: db.gridfs_bucket(None), files: db.collection("fs.files"), chunks: db.collection("fs.chunks") }
    }
}

struct GridFsWriter {
    stream: GridFsUploadStream,
}

impl BlobWriter for GridFsWriter {
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> BoxFuture<'a, StorageResult<()>> {
        Box::pin(async move { self.stream.write_all(bytes).await.map_err(backend_error) })
    }

    fn finish(mut self: Box<Self>) -> BoxFuture<'static, StorageResult<()>> {
        Box::pin(async move { self.stream.close().await.map_err(backend_error) })
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, StorageResult<()>> {
        Box::pin(async move { self.stream.abort().await.map_err(backend_error) })
    }
}

impl BlobStore for GridFsBlobs {
    fn backend(&self) -> &'static str {
        "gridfs"
    }

    fn create(&self, key: &str) -> BoxFuture<'static, StorageResult<Box<dyn BlobWriter>>> {
        let (bucket, key) = (self.bucket.clone(), key.to_string());
        Box::pin(async move {
            let stream = bucket.open_upload_stream(&key).id(Bson::String(key.clone())).await.map_err(backend_error)?;
            Ok(Box::new(GridFsWriter { stream }) as Box<dyn BlobWriter>)
        })
    }

    fn read(&self, key: &str, start: u64, end: u64) -> BoxStream<'static, StorageResult<Bytes>> {
        let (files, chunks, key) = (self.files.clone(), self.chunks.clone(), key.to_string());
        let opened = async move {
            let file =
                files.find_one(doc! { "_id": &key }).await.map_err(backend_error)?.ok_or(StorageError::NotFound)?;
            let chunk_size = file.get_i32("chunkSize").map_err(backend_error)? as u64;
            let (first, last) = ((start / chunk_size) as i64, (end / chunk_size) as i64);
            let cursor = chunks
                .find(doc! { "files_id": &key, "n": { "$gte": first, "$lte": last } })
                .sort(doc! { "files_id": 1, "n": 1 })
                .batch_size(4)
                .await
                .map_err(backend_error)?;
            Ok::<_, StorageError>(cursor.map(move |chunk| {
                let chunk = chunk.map_err(backend_error)?;
                let n =
                    chunk.get_i32("n").map(i64::from).or_else(|_| chunk.get_i64("n")).map_err(backend_error)? as u64;
                let data = chunk.get_binary_generic("data").map_err(backend_error)?;
                let chunk_start = n * chunk_size;
                let from = start.saturating_sub(chunk_start) as usize;
                let to = ((end + 1).saturating_sub(chunk_start) as usize).min(data.len());
                Ok(Bytes::copy_from_slice(&data[from.min(to)..to]))
            }))
        };
        futures_util::stream::once(opened).try_flatten().boxed()
    }

    fn delete(&self, key: &str) -> BoxFuture<'static, StorageResult<()>> {
        let (bucket, key) = (self.bucket.clone(), key.to_string());
        Box::pin(async move {
            match bucket.delete(Bson::String(key)).await {
                Ok(()) => Ok(()),
                Err(e)
                    if matches!(
                        *e.kind,
                        mongodb::error::ErrorKind::GridFs(mongodb::error::GridFsErrorKind::FileNotFound { .. })
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(backend_error(e)),
            }
        })
    }
}
