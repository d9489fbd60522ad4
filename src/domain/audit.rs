//! Audit entries: an append-only, per-tenant hash chain.
//!
//! Each entry's `hash` is SHA-256 over the canonical JSON of every other field, including the
//! previous entry's hash, so editing, removing or reordering an entry breaks the chain.

use super::bson_time::chrono_datetime_as_bson_datetime;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::TenantId;

/// `prev_hash` of the first entry of every chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditActor {
    /// `operator`, `api_key` or `manifest`.
    pub kind: String,
    /// The API key id for `api_key`; empty otherwise.
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditTarget {
    /// `tenant` or `api_key`.
    pub kind: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub tenant_id: TenantId,
    pub seq: i64,
    pub actor: AuditActor,
    /// Dotted verb, e.g. `tenant.create`, `api_key.rotate`.
    pub action: String,
    pub target: AuditTarget,
    #[serde(with = "chrono_datetime_as_bson_datetime")]
    pub at: DateTime<Utc>,
    pub request_id: String,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Serialize)]
struct HashedFields<'a> {
    tenant_id: &'a str,
    seq: i64,
    actor: &'a AuditActor,
    action: &'a str,
    target: &'a AuditTarget,
    at_ms: i64,
    request_id: &'a str,
    details: &'a serde_json::Value,
    prev_hash: &'a str,
}

impl AuditEntry {
    /// The hash this entry must carry, computed from its other fields.
    pub fn compute_hash(&self) -> String {
        let fields = HashedFields {
            tenant_id: self.tenant_id.as_str(),
            seq: self.seq,
            actor: &self.actor,
            action: &self.action,
            target: &self.target,
            at_ms: self.at.timestamp_millis(),
            request_id: &self.request_id,
            details: &self.details,
            prev_hash: &self.prev_hash,
        };
        // Struct fields serialise in declaration order and `details` keeps its key order
        // through BSON, so the same entry always encodes to the same bytes.
        let canonical = serde_json::to_vec(&fields).expect("audit fields serialise");
        hex::encode(Sha256::digest(canonical))
    }
}

/// Why a chain failed verification: the first entry that does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// An entry is missing or out of order: `expected` seq was not found where it should be.
    Gap { expected: i64, found: i64 },
    /// The entry does not link to its predecessor's hash.
    BrokenLink { seq: i64 },
    /// The entry's fields no longer match its hash.
    Tampered { seq: i64 },
}

impl ChainBreak {
    pub fn seq(&self) -> i64 {
        match self {
            ChainBreak::Gap { expected, .. } => *expected,
            ChainBreak::BrokenLink { seq } | ChainBreak::Tampered { seq } => *seq,
        }
    }
}

/// Checks a run of consecutive entries, in seq order. `prev` is the hash of the entry before
/// the run (`GENESIS_HASH` when the run starts at seq 1).
pub fn verify_chain<'a>(
    entries: impl IntoIterator<Item = &'a AuditEntry>,
    first_seq: i64,
    prev: &str,
) -> Result<u64, ChainBreak> {
    let mut prev = prev.to_string();
    let mut checked = 0;
    for (expected, entry) in (first_seq..).zip(entries) {
        if entry.seq != expected {
            return Err(ChainBreak::Gap { expected, found: entry.seq });
        }
        if entry.prev_hash != prev {
            return Err(ChainBreak::BrokenLink { seq: entry.seq });
        }
        if entry.compute_hash() != entry.hash {
            return Err(ChainBreak::Tampered { seq: entry.seq });
        }
        prev = entry.hash.clone();
        checked += 1;
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let mut entry = AuditEntry {
                    tenant_id: TenantId::parse("acme").unwrap(),
                    seq,
                    actor: AuditActor { kind: "operator".into(), id: String::new() },
                    action: "api_key.create".into(),
                    target: AuditTarget { kind: "api_key".into(), id: format!("k{seq}") },
                    at: DateTime::from_timestamp_millis(1_700_000_000_000 + seq).unwrap(),
                    request_id: format!("r{seq}"),
                    details: serde_json::json!({"name": "ci", "n": seq}),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                entry.hash = entry.compute_hash();
                prev = entry.hash.clone();
                entry
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5), 1, GENESIS_HASH), Ok(5));
    }

    #[test]
    fn edited_fields_are_detected() {
        let mut entries = chain(5);
        entries[2].action = "api_key.revoke".into();
        assert_eq!(verify_chain(&entries, 1, GENESIS_HASH), Err(ChainBreak::Tampered { seq: 3 }));
    }

    #[test]
    fn a_recomputed_hash_breaks_the_next_link() {
        let mut entries = chain(5);
        entries[1].details = serde_json::json!({"name": "evil"});
        entries[1].hash = entries[1].compute_hash();
        assert_eq!(verify_chain(&entries, 1, GENESIS_HASH), Err(ChainBreak::BrokenLink { seq: 3 }));
    }

    #[test]
    fn a_removed_entry_is_a_gap() {
        let mut entries = chain(5);
        entries.remove(3);
        assert_eq!(verify_chain(&entries, 1, GENESIS_HASH), Err(ChainBreak::Gap { expected: 4, found: 5 }));
    }
}
