//! Who is calling. Three principals: the operator (platform admin, bootstrap token), a tenant's
//! server (API key) and, later, end users (JWT). The extractors here are the only way to get a
//! `TenantScope`, and so the only way to reach a tenant's database.

pub mod api_key;
mod extractors;
mod secret;

pub use api_key::{GeneratedKey, ParsedKey};
pub use extractors::{OperatorCaller, TenantCaller, TenantScope};
pub use secret::SecretString;
