//! How big and how long each mode runs. `full` is the real measurement; `quick` runs every
//! scenario briefly (under 3 minutes); `smoke` uses tiny loads so CI can keep the harness working.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Smoke,
    Quick,
    Full,
}

#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub mode: Mode,
    /// Closed-loop concurrency levels tried for S1 and S2, in order.
    pub levels: Vec<usize>,
    pub ceiling_secs: f64,
    pub open_secs: f64,
    /// Most requests outstanding in an open-loop run.
    pub max_in_flight: usize,
    /// S1: senders, and as many conversations (4 members each).
    pub s1_users: usize,
    /// S2: conversations preloaded, messages in each.
    pub s2_conversations: usize,
    pub s2_messages: usize,
    /// S2: alternating rounds (pages, then the raw reference, at their best levels) behind the
    /// ceiling figures.
    pub s2_rounds: usize,
    /// S3: subscriber counts, sender concurrency levels, and its (shorter) phase lengths.
    pub s3_subscribers: Vec<usize>,
    pub s3_levels: Vec<usize>,
    pub s3_ceiling_secs: f64,
    pub s3_open_secs: f64,
    /// S4: idle connections wanted (capped by the open-files limits).
    pub s4_connections: usize,
    /// S4: seconds the node is left to settle before each RSS reading and after the closes.
    pub s4_settle_secs: f64,
    /// S5: single-character edits in the synthetic trace.
    pub s5_edits: usize,
}

impl Params {
    pub fn for_mode(mode: Mode) -> Self {
        match mode {
            Mode::Full => Self {
                mode,
                levels: vec![8, 32, 128],
                ceiling_secs: 10.0,
                open_secs: 20.0,
                max_in_flight: 4096,
                s1_users: 64,
                s2_conversations: 4,
                s2_messages: 10_000,
                s2_rounds: 3,
                s3_subscribers: vec![1, 10, 100, 1000],
                s3_levels: vec![1, 4, 16, 64],
                s3_ceiling_secs: 8.0,
                s3_open_secs: 15.0,
                s4_connections: 50_000,
                s4_settle_secs: 3.0,
                s5_edits: 120_000,
            },
            Mode::Quick => Self {
                mode,
                levels: vec![8, 32, 128],
                ceiling_secs: 2.5,
                open_secs: 3.0,
                max_in_flight: 2048,
                s1_users: 32,
                s2_conversations: 1,
                s2_messages: 2_000,
                s2_rounds: 3,
                s3_subscribers: vec![1, 10, 100, 1000],
                s3_levels: vec![2, 8, 32],
                s3_ceiling_secs: 2.0,
                s3_open_secs: 2.0,
                s4_connections: 5_000,
                s4_settle_secs: 3.0,
                s5_edits: 20_000,
            },
            Mode::Smoke => Self {
                mode,
                levels: vec![2, 4],
                ceiling_secs: 1.0,
                open_secs: 1.0,
                max_in_flight: 64,
                s1_users: 4,
                s2_conversations: 1,
                s2_messages: 120,
                s2_rounds: 1,
                s3_subscribers: vec![1, 10],
                s3_levels: vec![1, 2],
                s3_ceiling_secs: 1.0,
                s3_open_secs: 1.0,
                s4_connections: 100,
                s4_settle_secs: 0.5,
                s5_edits: 500,
            },
        }
    }

    pub fn ceiling(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.ceiling_secs)
    }

    pub fn open(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.open_secs)
    }
}
