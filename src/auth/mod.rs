//! Who is calling. Three principals: the operator (platform admin, bootstrap token), a tenant's
//! server (API key) and end users (JWT, or a server key acting for a user). The extractors here are the only way to get a
//! `TenantScope`, and so the only way to reach a tenant's database.

mod acting_user;
pub mod api_key;
mod extractors;
pub mod jwt;
mod secret;
pub mod signed_url;
pub mod socket;

pub use acting_user::{ActingUser, AnyCaller, Via};
pub use api_key::{GeneratedKey, ParsedKey};
pub use extractors::{OperatorCaller, TenantCaller, TenantScope};
pub use secret::SecretString;
