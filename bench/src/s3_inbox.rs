//! What S3's receivers (confab WebSocket subscribers, or the Redis relay's in-process receivers)
//! record: per receiver, deliveries of the current phase and their send-to-receive latency, read
//! from the `{"t": µs, "p": phase}` stamp the sender put in the message's metadata.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Deserialize;

use crate::loadgen::{histogram, now_us};

/// How often a drain looks at the counts.
const POLL: Duration = Duration::from_millis(10);

/// The part of a `message.new` frame a receiver reads; unknown fields are skipped unparsed.
#[derive(Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(borrow)]
    pub conversation_id: Option<&'a str>,
    pub message: Option<FrameMessage>,
}

#[derive(Deserialize)]
pub struct FrameMessage {
    pub seq: Option<i64>,
    pub metadata: Option<Stamp>,
}

/// The benchmark's stamp: intended send time (µs on the `now_us` clock) and phase.
#[derive(Deserialize)]
pub struct Stamp {
    pub t: Option<u64>,
    pub p: Option<u32>,
}

/// The phase whose deliveries count now; stamps of other phases are strays (late arrivals).
#[derive(Default)]
pub struct Board {
    pub phase: AtomicU32,
}

impl Board {
    pub fn next_phase(&self) -> u32 {
        self.phase.fetch_add(1, Ordering::SeqCst) + 1
    }
}

struct PhaseTally {
    received: u64,
    last_us: u64,
    latency: Histogram<u64>,
}

/// One receiver's counts.
pub struct Receiver {
    tally: Mutex<PhaseTally>,
    pub strays: AtomicU64,
    pub duplicates: AtomicU64,
}

impl Default for Receiver {
    fn default() -> Self {
        Self {
            tally: Mutex::new(PhaseTally { received: 0, last_us: 0, latency: histogram() }),
            strays: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }
}

impl Receiver {
    /// Records a delivery stamped `stamp`, if it belongs to the board's current phase.
    pub fn record(&self, board: &Board, stamp: &Stamp) {
        let (Some(sent), Some(phase)) = (stamp.t, stamp.p) else { return };
        if phase != board.phase.load(Ordering::SeqCst) {
            self.strays.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = now_us();
        let mut tally = self.tally.lock().expect("receiver lock");
        tally.received += 1;
        tally.last_us = tally.last_us.max(now);
        tally.latency.saturating_record(now.saturating_sub(sent).max(1));
    }

    fn received(&self) -> u64 {
        self.tally.lock().expect("receiver lock").received
    }

    fn take(&self) -> PhaseTally {
        let mut tally = self.tally.lock().expect("receiver lock");
        std::mem::replace(&mut *tally, PhaseTally { received: 0, last_us: 0, latency: histogram() })
    }
}

/// A phase's deliveries over all receivers.
pub struct Drained {
    pub received: u64,
    /// When the last delivery arrived (µs on the `now_us` clock).
    pub last_us: u64,
    pub latency: Histogram<u64>,
}

/// Waits until `expected` deliveries arrived, or none arrived for `quiet`; then takes the counts
/// (resetting them for the next phase).
pub async fn drain(receivers: &[Arc<Receiver>], expected: u64, quiet: Duration) -> Drained {
    let mut seen = 0;
    let mut since = Instant::now();
    loop {
        let now: u64 = receivers.iter().map(|r| r.received()).sum();
        if now >= expected {
            break;
        }
        if now > seen {
            (seen, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let mut drained = Drained { received: 0, last_us: 0, latency: histogram() };
    for receiver in receivers {
        let tally = receiver.take();
        drained.received += tally.received;
        drained.last_us = drained.last_us.max(tally.last_us);
        drained.latency.add(&tally.latency).expect("same histogram bounds");
    }
    drained
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_without_reading_the_rest() {
        let raw = r#"{"type":"message.new","conversation_id":"c1","message":{"id":"x","seq":7,
            "text":"hi","metadata":{"t":12,"p":3,"other":[1,2]},"attachments":[]}}"#;
        let frame: Frame = serde_json::from_str(raw).unwrap();
        assert_eq!(frame.kind, "message.new");
        let stamp = frame.message.unwrap().metadata.unwrap();
        assert_eq!((stamp.t, stamp.p), (Some(12), Some(3)));
    }

    #[tokio::test]
    async fn only_the_current_phase_counts() {
        let board = Board::default();
        let phase = board.next_phase();
        let receiver = Arc::new(Receiver::default());
        receiver.record(&board, &Stamp { t: Some(now_us()), p: Some(phase) });
        receiver.record(&board, &Stamp { t: Some(now_us()), p: Some(phase + 5) });
        let drained = drain(std::slice::from_ref(&receiver), 1, Duration::from_millis(50)).await;
        assert_eq!(drained.received, 1);
        assert_eq!(receiver.strays.load(Ordering::Relaxed), 1);
    }
}
