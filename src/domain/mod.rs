//! Pure types shared by every layer: validated identifiers, tenant settings, scopes and
//! audit entries. Nothing here does I/O; parsing happens once, at the edge, into these types.

mod audit;
mod ids;
mod page;
mod scope;
mod tenant;

pub use audit::{AuditActor, AuditEntry, AuditTarget, ChainBreak, GENESIS_HASH, verify_chain};
pub use ids::{ApiKeyId, InvalidId, TenantId};
pub use page::{Page, PageRequest};
pub use scope::{Scope, UnknownScope};
pub use tenant::{ApiKey, LimitsError, PlanName, SigningKey, Tenant, TenantLimits, TenantLimitsPatch, TenantStatus};
