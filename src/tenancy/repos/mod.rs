//! Typed collections, one file per aggregate. Only these touch `mongodb::Collection`.

mod api_keys;
mod audit;
mod tenants;

pub use api_keys::{ApiKeysRepo, Rotation};
pub use audit::{AuditHead, AuditRepo};
pub use tenants::{TenantUpdate, TenantsRepo};
