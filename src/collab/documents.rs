//! One Yjs document per file, behind confab's own functions (nothing outside `collab/` names `yrs`
//! types): the text lives in a `Y.Text` named `content`. Stored as an append-only log of
//! updates with a gapless per-document seq, compacted into snapshots by loading the log into a
//! document and re-encoding its state (never by concatenating updates).

use yrs::updates::decoder::Decode;
use yrs::{GetString, ReadTxn, StateVector, Text, Transact, Update};

use crate::domain::{ItemId, WorkspaceItem};
use crate::tenancy::{Snapshot, StoredUpdate, TenantDb, binary};

/// The name of the shared text every editor binds to.
pub const TEXT_NAME: &str = "content";

/// A loaded document and how far the stored log has been applied to it.
pub struct LoadedDoc {
    pub doc: yrs::Doc,
    pub epoch: i64,
    /// Every stored update up to this seq is in `doc`.
    pub applied_seq: i64,
    /// The seq the newest snapshot covers.
    pub snapshot_seq: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("storage: {0}")]
    Storage(#[from] mongodb::error::Error),
    #[error("a stored update does not decode: {0}")]
    Corrupt(String),
}

/// Applies an encoded update; `false` if it does not decode.
pub fn apply(doc: &yrs::Doc, update: &[u8]) -> bool {
    let Ok(update) = Update::decode_v1(update) else { return false };
    doc.transact_mut().apply_update(update).is_ok()
}

/// A decoded update waiting to be applied with others (`apply_all`); `None` if it does not decode.
pub struct Decoded(Update);

pub fn decode(update: &[u8]) -> Option<Decoded> {
    Update::decode_v1(update).ok().map(Decoded)
}

/// Applies decoded updates in one transaction (a transaction's commit costs about as much as
/// integrating a small edit, so a batch pays it once). Returns what the batch changed as one
/// update (what to store: exactly what was new, already merged; `None` if nothing was) and the
/// indices of the updates that failed.
pub fn apply_all(doc: &yrs::Doc, updates: Vec<Decoded>) -> (Option<Vec<u8>>, Vec<usize>) {
    let mut txn = doc.transact_mut();
    let failed = updates
        .into_iter()
        .enumerate()
        .filter_map(|(i, Decoded(update))| txn.apply_update(update).is_err().then_some(i))
        .collect();
    let changed = !txn.insert_set().is_empty() || !txn.delete_set().is_empty();
    (changed.then(|| txn.encode_update_v1()), failed)
}

/// The text (empty before anyone wrote). Read in a read transaction: `get_or_insert_text`
/// would open and commit a write transaction every time.
pub fn text(doc: &yrs::Doc) -> String {
    let txn = doc.transact();
    txn.get_text(TEXT_NAME).map(|text| text.get_string(&txn)).unwrap_or_default()
}

/// Updates merged at once: yrs merges n updates in O(n²), so long runs are merged in rounds of
/// this many (a run of n costs about n x this).
const MERGE_FAN_IN: usize = 32;

/// Merges a run of updates into one (for storing), in rounds of `MERGE_FAN_IN`.
pub fn merge(updates: &[Vec<u8>]) -> Result<Vec<u8>, yrs::encoding::read::Error> {
    let mut round: Vec<Vec<u8>> = updates.to_vec();
    while round.len() > 1 {
        round = round
            .chunks(MERGE_FAN_IN)
            .map(|chunk| if chunk.len() == 1 { Ok(chunk[0].clone()) } else { yrs::merge_updates_v1(chunk) })
            .collect::<Result<_, _>>()?;
    }
    Ok(round.pop().unwrap_or_default())
}

/// The text's length in UTF-8 bytes, without materialising it (documents use yrs's default
/// byte offsets, and the branch keeps its length).
pub fn text_len(doc: &yrs::Doc) -> usize {
    let txn = doc.transact();
    txn.get_text(TEXT_NAME).map_or(0, |text| text.len(&txn) as usize)
}

/// The whole state as one update.
pub fn state(doc: &yrs::Doc) -> Vec<u8> {
    doc.transact().encode_state_as_update_v1(&StateVector::default())
}

pub fn state_vector(doc: &yrs::Doc) -> Vec<u8> {
    use yrs::updates::encoder::Encode;
    doc.transact().state_vector().encode_v1()
}

/// What `doc` has that a peer with state vector `sv` lacks.
pub fn diff(doc: &yrs::Doc, sv: &yrs::StateVector) -> Vec<u8> {
    doc.transact().encode_diff_v1(sv)
}

/// Would applying `update` keep the text within `max_bytes`? Checked on a scratch copy only
/// when the update could possibly pass the limit.
pub fn fits(doc: &yrs::Doc, update: &[u8], max_bytes: usize) -> bool {
    let current = text_len(doc);
    if current + update.len() <= max_bytes {
        return true;
    }
    let scratch = yrs::Doc::new();
    apply(&scratch, &state(doc));
    apply(&scratch, update);
    text_len(&scratch) <= max_bytes
}

/// Replaces the text with `new` as one edit (keeping the common prefix and suffix, so
/// concurrent cursors elsewhere stay put); returns the update, or `None` if nothing changed.
pub fn replace_text(doc: &yrs::Doc, new: &str) -> Option<Vec<u8>> {
    let text = doc.get_or_insert_text(TEXT_NAME);
    let mut txn = doc.transact_mut();
    let old = text.get_string(&txn);
    if old == new {
        return None;
    }
    // Yjs indexes text in UTF-16 code units by default in y-websocket peers; yrs's default
    // offset kind is bytes, so work in chars via the char boundaries of both strings.
    let prefix = old.chars().zip(new.chars()).take_while(|(a, b)| a == b).count();
    let old_rest: Vec<char> = old.chars().skip(prefix).collect();
    let new_rest: Vec<char> = new.chars().skip(prefix).collect();
    let suffix = old_rest.iter().rev().zip(new_rest.iter().rev()).take_while(|(a, b)| a == b).count();
    let removed: String = old_rest[..old_rest.len() - suffix].iter().collect();
    let inserted: String = new_rest[..new_rest.len() - suffix].iter().collect();
    let start: usize = old.chars().take(prefix).map(char::len_utf8).sum();
    if !removed.is_empty() {
        text.remove_range(&mut txn, start as u32, removed.len() as u32);
    }
    if !inserted.is_empty() {
        text.insert(&mut txn, start as u32, &inserted);
    }
    Some(txn.encode_update_v1())
}

/// Loads the current epoch of a file's document: newest snapshot, then the updates after it.
pub async fn load(db: &TenantDb, item: &WorkspaceItem) -> Result<LoadedDoc, DocError> {
    let doc = yrs::Doc::new();
    let repo = db.collab_docs();
    let snapshot = repo.latest_snapshot(&item.id, item.epoch).await?;
    let snapshot_seq = snapshot.as_ref().map_or(0, |s| s.upto_seq);
    if let Some(snapshot) = snapshot
        && !apply(&doc, &snapshot.state.bytes)
    {
        return Err(DocError::Corrupt(format!("snapshot of {} at {}", item.id, snapshot.upto_seq)));
    }
    let last = repo.last_seq(&item.id).await?;
    let mut loaded = LoadedDoc { doc, epoch: item.epoch, applied_seq: snapshot_seq, snapshot_seq };
    catch_up(db, &item.id, &mut loaded, last).await?;
    Ok(loaded)
}

/// Applies stored updates after `applied_seq` up to `upto`. Seqs claimed but not yet written
/// (another node is storing them) stop the watermark; they are retried later.
pub async fn catch_up(db: &TenantDb, id: &ItemId, loaded: &mut LoadedDoc, upto: i64) -> Result<(), DocError> {
    if upto <= loaded.applied_seq {
        return Ok(());
    }
    let updates = db.collab_docs().updates(id, loaded.epoch, loaded.applied_seq + 1, upto).await?;
    for stored in updates {
        apply(&loaded.doc, &stored.update.bytes);
        if stored.seq == loaded.applied_seq + 1 {
            loaded.applied_seq = stored.seq;
        }
    }
    Ok(())
}

/// Stores one update; returns its seq.
pub async fn append(db: &TenantDb, id: &ItemId, epoch: i64, update: Vec<u8>) -> Result<i64, DocError> {
    let repo = db.collab_docs();
    let seq = repo.claim_seqs(id, 1).await?;
    let stored = StoredUpdate { doc_id: id.to_string(), epoch, seq, update: binary(update) };
    repo.append(std::slice::from_ref(&stored)).await?;
    Ok(seq)
}

/// Replaces the stored log up to `applied_seq` with a snapshot of the document.
pub async fn snapshot(db: &TenantDb, id: &ItemId, loaded: &mut LoadedDoc) -> Result<(), DocError> {
    if loaded.applied_seq <= loaded.snapshot_seq {
        return Ok(());
    }
    let snapshot = Snapshot {
        doc_id: id.to_string(),
        epoch: loaded.epoch,
        upto_seq: loaded.applied_seq,
        state: binary(state(&loaded.doc)),
    };
    db.collab_docs().compact(&snapshot).await?;
    loaded.snapshot_seq = loaded.applied_seq;
    Ok(())
}

/// Writes a new document for a file: used for files created with content and for forks.
pub async fn create_with_text(db: &TenantDb, item: &WorkspaceItem, content: &str) -> Result<(), DocError> {
    let doc = yrs::Doc::new();
    if let Some(update) = replace_text(&doc, content) {
        append(db, &item.id, item.epoch, update).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_text_produces_an_update_others_can_apply() {
        let server = yrs::Doc::new();
        let first = replace_text(&server, "fn main() {}\n").unwrap();
        let client = yrs::Doc::new();
        assert!(apply(&client, &first));
        let second = replace_text(&server, "fn main() { println!(\"ü\"); }\n").unwrap();
        assert!(apply(&client, &second));
        assert_eq!(text(&client), "fn main() { println!(\"ü\"); }\n");
        assert!(replace_text(&server, "fn main() { println!(\"ü\"); }\n").is_none());
    }

    #[test]
    fn size_checks_use_the_resulting_text() {
        let doc = yrs::Doc::new();
        replace_text(&doc, "abc");
        let other = yrs::Doc::new();
        apply(&other, &state(&doc));
        let big = replace_text(&other, &"x".repeat(100)).unwrap();
        assert!(!fits(&doc, &big, 50));
        assert!(fits(&doc, &big, 200));
    }

    #[test]
    fn a_batch_applies_in_one_transaction_and_yields_exactly_what_it_changed() {
        let author = yrs::Doc::new();
        let content = author.get_or_insert_text(TEXT_NAME);
        let edits: Vec<Vec<u8>> = (0..50u32)
            .map(|i| {
                let mut txn = author.transact_mut();
                content.insert(&mut txn, i / 2, &char::from(b'a' + (i % 26) as u8).to_string());
                if i % 9 == 0 {
                    content.remove_range(&mut txn, 0, 1);
                }
                txn.encode_update_v1()
            })
            .collect();
        let server = yrs::Doc::new();
        let (first, second) = edits.split_at(20);
        let (head, failed) = apply_all(&server, first.iter().map(|u| decode(u).unwrap()).collect());
        assert!(failed.is_empty());
        let (tail, _) = apply_all(&server, second.iter().map(|u| decode(u).unwrap()).collect());
        assert_eq!(text(&server), text(&author));
        // What a batch returns is what it added: both rebuild the document elsewhere.
        let rebuilt = yrs::Doc::new();
        assert!(apply(&rebuilt, &head.unwrap()) && apply(&rebuilt, &tail.unwrap()));
        assert_eq!(text(&rebuilt), text(&author));
        // A batch of nothing new changes nothing and yields nothing to store.
        let (again, failed) = apply_all(&server, edits.iter().map(|u| decode(u).unwrap()).collect());
        assert!(again.is_none() && failed.is_empty());
        assert!(decode(&[0xff, 0xff, 0xff]).is_none());
    }

    #[test]
    fn merging_in_rounds_gives_the_same_document() {
        let author = yrs::Doc::new();
        let content = author.get_or_insert_text(TEXT_NAME);
        let updates: Vec<Vec<u8>> = (0..1000)
            .map(|i| {
                let mut txn = author.transact_mut();
                let at = if i % 7 == 0 { 0 } else { content.len(&txn) };
                content.insert(&mut txn, at, &char::from(b'a' + (i % 26) as u8).to_string());
                if i % 11 == 0 {
                    content.remove_range(&mut txn, 0, 1);
                }
                txn.encode_update_v1()
            })
            .collect();
        let merged = merge(&updates).unwrap();
        let rebuilt = yrs::Doc::new();
        assert!(apply(&rebuilt, &merged));
        assert_eq!(text(&rebuilt), text(&author));
        assert_eq!(merge(&updates[..1]).unwrap(), updates[0]);
    }

    #[test]
    fn text_length_is_in_utf8_bytes() {
        let doc = yrs::Doc::new();
        replace_text(&doc, "héllo wörld ✓");
        assert_eq!(text_len(&doc), "héllo wörld ✓".len());
        replace_text(&doc, "ü");
        assert_eq!(text_len(&doc), 2);
    }
}
