//! S5's editing trace: a deterministic, synthetic session of single-character edits typed into a
//! local Yjs document (mostly inserts at a cursor that moves like real typing: forward with each
//! character, backspaces, now and then a jump elsewhere), each edit captured as the v1 update a
//! Yjs editor would send. The reference is how fast a local `yrs` document applies them.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ID, IdSet, ReadTxn, StateVector, Text, Transact, Update};

/// The shared text confab's documents bind to (`collab::documents::TEXT_NAME`).
pub const TEXT_NAME: &str = "content";
/// The trace's Yjs client id (32-bit, as Yjs 13 clients use).
const CLIENT_ID: u64 = 0x5eed_0001;
/// Per 100 edits: this many backspaces, then this many cursor jumps (before an insert).
const BACKSPACES: u32 = 7;
const JUMPS: u32 = 2;
/// Letters roughly by English frequency, so words and lines look like typing.
const LETTERS: &[u8] = b"eeeeetttaaaooiinnsshhrrdlcumwfgypbvk";

pub struct Trace {
    pub updates: Vec<Vec<u8>>,
    pub final_text: String,
    /// The final state vector, v1-encoded: what a client that saw everything has.
    pub state_vector: StateVector,
}

pub fn generate(edits: usize, seed: u64) -> Trace {
    let doc = Doc::with_client_id(CLIENT_ID);
    let text = doc.get_or_insert_text(TEXT_NAME);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut cursor, mut len) = (0u32, 0u32);
    let mut updates = Vec::with_capacity(edits);
    while updates.len() < edits {
        let roll = rng.random_range(0..100);
        let mut txn = doc.transact_mut();
        if roll < BACKSPACES && cursor > 0 {
            text.remove_range(&mut txn, cursor - 1, 1);
            cursor -= 1;
            len -= 1;
        } else {
            if roll < BACKSPACES + JUMPS && len > 0 {
                cursor = rng.random_range(0..=len);
            }
            let c = match rng.random_range(0..40) {
                0 => '\n',
                1..=6 => ' ',
                n => LETTERS[n as usize % LETTERS.len()] as char,
            };
            text.insert(&mut txn, cursor, c.encode_utf8(&mut [0; 4]));
            cursor += 1;
            len += 1;
        }
        updates.push(txn.encode_update_v1());
    }
    let txn = doc.transact();
    Trace { updates, final_text: text.get_string(&txn), state_vector: txn.state_vector() }
}

/// Applies every update to a fresh document, one transaction each as a server would; returns
/// the seconds it took and the resulting text.
pub fn apply_locally(updates: &[Vec<u8>]) -> Result<(f64, String), String> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text(TEXT_NAME);
    let started = Instant::now();
    for bytes in updates {
        let update = Update::decode_v1(bytes).map_err(|e| e.to_string())?;
        doc.transact_mut().apply_update(update).map_err(|e| e.to_string())?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((secs, text.get_string(&doc.transact())))
}

/// Which edits a set of updates holds, read without applying them: every inserted item's id
/// (deleted ones too) and every deletion. Stored updates that cover a trace's insertions and
/// deletions hold all of it; whether they also rebuild its text is checked apart.
#[derive(Default)]
pub struct Coverage {
    inserted: IdSet,
    deleted: IdSet,
}

impl Coverage {
    /// What a document with this final state vector holds, given every deletion in `updates`.
    pub fn of_trace(trace: &Trace) -> Result<Self, String> {
        let mut coverage = Self::default();
        for (client, clock) in trace.state_vector.iter() {
            coverage.inserted.insert(ID::new(*client, 0), *clock);
        }
        for update in &trace.updates {
            let update = Update::decode_v1(update).map_err(|e| e.to_string())?;
            coverage.deleted.merge_with(update.delete_set().clone());
        }
        Ok(coverage)
    }

    pub fn add(&mut self, update: &[u8]) -> Result<(), String> {
        let update = Update::decode_v1(update).map_err(|e| e.to_string())?;
        self.inserted.merge_with(update.insertions(true));
        self.deleted.merge_with(update.delete_set().clone());
        Ok(())
    }

    /// Whether every insertion and deletion of `target` is here.
    pub fn covers(&self, target: &Coverage) -> bool {
        target.inserted.diff(&self.inserted).is_empty() && target.deleted.diff(&self.deleted).is_empty()
    }
}

/// A y-websocket message (sync, type 0): an update (2) or a step 1 (0) with a state vector.
pub fn sync_update(update: Vec<u8>) -> Vec<u8> {
    yrs::sync::Message::Sync(yrs::sync::SyncMessage::Update(update)).encode_v1()
}

pub fn sync_step1(state_vector: StateVector) -> Vec<u8> {
    yrs::sync::Message::Sync(yrs::sync::SyncMessage::SyncStep1(state_vector)).encode_v1()
}

/// Is this y-websocket message a sync step 2 (the answer to a step 1)?
pub fn is_sync_step2(bytes: &[u8]) -> bool {
    matches!(yrs::sync::Message::decode_v1(bytes), Ok(yrs::sync::Message::Sync(yrs::sync::SyncMessage::SyncStep2(_))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_replays_to_its_text() {
        let trace = generate(3000, 7);
        assert_eq!(trace.updates.len(), 3000);
        assert!(trace.final_text.len() > 2000, "mostly inserts");
        let (_, text) = apply_locally(&trace.updates).unwrap();
        assert_eq!(text, trace.final_text);
        assert_eq!(generate(3000, 7).final_text, trace.final_text, "deterministic");
    }

    #[test]
    fn coverage_needs_every_insertion_and_deletion() {
        let trace = generate(2000, 11);
        let target = Coverage::of_trace(&trace).unwrap();
        let (first, rest) = trace.updates.split_at(1000);
        let mut stored = Coverage::default();
        stored.add(&Update::merge_updates(first.iter().map(|u| Update::decode_v1(u).unwrap())).encode_v1()).unwrap();
        assert!(!stored.covers(&target), "half the trace is not all of it");
        let (last, middle) = rest.split_last().unwrap();
        for update in middle {
            stored.add(update).unwrap();
        }
        assert!(!stored.covers(&target), "the last edit is missing");
        stored.add(last).unwrap();
        assert!(stored.covers(&target));
        let mut snapshot = Coverage::default();
        let doc = Doc::new();
        for update in &trace.updates {
            doc.transact_mut().apply_update(Update::decode_v1(update).unwrap()).unwrap();
        }
        snapshot.add(&doc.transact().encode_state_as_update_v1(&StateVector::default())).unwrap();
        assert!(snapshot.covers(&target), "a snapshot of the final state covers the trace");
    }

    #[test]
    fn messages_are_framed_as_y_websocket_sync() {
        let framed = sync_update(vec![1, 2, 3]);
        assert_eq!(&framed[..2], &[0, 2]);
        assert!(!is_sync_step2(&framed));
    }
}
