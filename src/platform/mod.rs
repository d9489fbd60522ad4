//! Platform use cases: tenants (operator), API keys (operator and tenants), the audit log,
//! and declarative tenant manifests.

pub mod api_keys;
pub mod audit;
pub mod manifests;
pub mod tenants;
