//! Files: streaming uploads with size, type and quota checks; downloads with ranges; sharing;
//! signed URLs; file messages. Bytes live behind `BlobStore` (GridFS by default).

pub mod access;
pub mod manage;
mod storage;
pub mod upload;

pub use storage::{BlobStore, BlobWriter, StorageError, StorageResult};
