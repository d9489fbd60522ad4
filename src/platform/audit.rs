//! Appending to and reading the per-tenant audit hash chain.
//!
//! Appends are optimistic: the entry is inserted at `head + 1` under a unique (tenant, seq)
//! index, then the head moves forward with a compare-and-set. A writer that loses the race, or
//! finds an entry a crashed writer left past the head, moves the head over it and tries again.

use chrono::{DateTime, Utc};

use crate::domain::{AuditActor, AuditEntry, AuditTarget, ChainBreak, Page, TenantId, verify_chain};
use crate::error::{ApiError, current_request_id};
use crate::tenancy::repos::AuditHead;
use crate::tenancy::{AuditRepo, Store};

/// Appends give up after this many lost races (only under extreme contention on one tenant).
const MAX_APPEND_ATTEMPTS: usize = 32;
/// Verification reads the chain in ranges of this many entries.
const VERIFY_BATCH: i64 = 500;

/// What happened, by whom, to what.
pub struct AuditRecord {
    pub actor: AuditActor,
    pub action: &'static str,
    pub target: AuditTarget,
    pub details: serde_json::Value,
}

impl AuditRecord {
    pub fn new(actor: AuditActor, action: &'static str, target_kind: &str, target_id: &str) -> Self {
        Self {
            actor,
            action,
            target: AuditTarget { kind: target_kind.into(), id: target_id.into() },
            details: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

pub async fn append(store: &Store, tenant: &TenantId, record: AuditRecord) -> Result<AuditEntry, ApiError> {
    let repo = store.audit();
    let at = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_else(Utc::now);
    let request_id = current_request_id();
    for _ in 0..MAX_APPEND_ATTEMPTS {
        let head = repo.head(tenant).await?;
        let mut entry = AuditEntry {
            tenant_id: tenant.clone(),
            seq: head.seq + 1,
            actor: record.actor.clone(),
            action: record.action.to_string(),
            target: record.target.clone(),
            at,
            request_id: request_id.clone(),
            details: record.details.clone(),
            prev_hash: head.hash.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        if repo.insert(&entry).await? {
            repo.advance_head(&head, &head_of(&entry)).await?;
            return Ok(entry);
        }
        catch_up(&repo, &head).await?;
    }
    Err(ApiError::unavailable("audit log append kept losing races"))
}

fn head_of(entry: &AuditEntry) -> AuditHead {
    AuditHead { tenant_id: entry.tenant_id.clone(), seq: entry.seq, hash: entry.hash.clone() }
}

/// Moves a stale head over the entry that already sits at `head.seq + 1`.
async fn catch_up(repo: &AuditRepo, head: &AuditHead) -> Result<(), ApiError> {
    if let Some(next) = repo.get(&head.tenant_id, head.seq + 1).await? {
        repo.advance_head(head, &head_of(&next)).await?;
    }
    Ok(())
}

/// The true newest seq: the recorded head, moved over any entry a crashed writer left past it.
async fn current_head(repo: &AuditRepo, tenant: &TenantId) -> Result<AuditHead, ApiError> {
    let mut head = repo.head(tenant).await?;
    while let Some(next) = repo.get(tenant, head.seq + 1).await? {
        repo.advance_head(&head, &head_of(&next)).await?;
        head = head_of(&next);
    }
    Ok(head)
}

/// Newest entries first; the cursor is the seq to continue below.
pub async fn page(
    store: &Store,
    tenant: &TenantId,
    before: Option<i64>,
    limit: u32,
) -> Result<Page<AuditEntry>, ApiError> {
    let repo = store.audit();
    let head = current_head(&repo, tenant).await?;
    let before = before.unwrap_or(head.seq + 1).clamp(1, head.seq + 1);
    let from = (before - i64::from(limit)).max(1);
    let mut items = if before > 1 { repo.range(tenant, from, before - 1).await? } else { Vec::new() };
    items.reverse();
    let next_cursor = (from > 1).then(|| from.to_string());
    Ok(Page { items, next_cursor })
}

/// The outcome of checking a whole chain.
pub struct Verification {
    pub entries_checked: u64,
    pub head_seq: i64,
    pub first_invalid: Option<ChainBreak>,
}

/// Re-derives every hash of the tenant's chain and checks every link, up to the head.
pub async fn verify(store: &Store, tenant: &TenantId) -> Result<Verification, ApiError> {
    let repo = store.audit();
    let head = current_head(&repo, tenant).await?;
    let mut prev = crate::domain::GENESIS_HASH.to_string();
    let mut checked = 0;
    let mut from = 1;
    while from <= head.seq {
        let to = (from + VERIFY_BATCH - 1).min(head.seq);
        let batch = repo.range(tenant, from, to).await?;
        if let Err(broken) = verify_chain(&batch, from, &prev) {
            return Ok(Verification { entries_checked: checked, head_seq: head.seq, first_invalid: Some(broken) });
        }
        if batch.len() as i64 != to - from + 1 {
            let found = batch.last().map_or(0, |e| e.seq);
            let gap = ChainBreak::Gap { expected: found.max(from - 1) + 1, found: 0 };
            return Ok(Verification { entries_checked: checked, head_seq: head.seq, first_invalid: Some(gap) });
        }
        checked += batch.len() as u64;
        prev = batch.last().map(|e| e.hash.clone()).unwrap_or(prev);
        from = to + 1;
    }
    let head_matches = head.seq == 0 || prev == head.hash;
    let first_invalid = (!head_matches).then_some(ChainBreak::Tampered { seq: head.seq });
    Ok(Verification { entries_checked: checked, head_seq: head.seq, first_invalid })
}
