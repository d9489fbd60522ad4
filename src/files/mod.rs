//! Files: streaming uploads with size, type and quota checks; downloads with ranges; sharing;
//! signed URLs; file messages. Bytes live behind `BlobStore` (GridFS by default).

mod storage;
pub mod upload;

pub use storage::{BlobStore, BlobWriter, StorageError, StorageResult};
