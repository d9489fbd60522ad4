//! The two ways the suite drives an operation. Closed loop: N workers each issue requests back
//! to back, which finds how much the system can do (its ceiling) but hides queueing, because a
//! slow response also delays the next request. Open loop: requests follow a fixed-rate schedule
//! and each latency is measured from the request's *intended* send time, so time spent waiting
//! behind a stalled request counts (coordinated omission corrected).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;

/// Latencies are recorded in microseconds up to this (a minute); longer ones saturate.
const MAX_LATENCY_US: u64 = 60_000_000;
/// A level must beat the best so far by this factor to count as an improvement.
const IMPROVEMENT: f64 = 1.05;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the process-wide origin: the clock embedded in messages, so the sender
/// and the receivers (all in this process) compare like with like.
pub fn now_us() -> u64 {
    origin().elapsed().as_micros() as u64
}

fn origin() -> Instant {
    *ORIGIN.get_or_init(Instant::now)
}

pub fn at_us(instant: Instant) -> u64 {
    instant.saturating_duration_since(origin()).as_micros() as u64
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// One request to make: which worker (closed loop) or slot (open loop) makes it, its number,
/// and when it was meant to leave (µs on the `now_us` clock).
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub worker: usize,
    pub seq: u64,
    pub intended_us: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// What one run of either kind did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub ok: u64,
    pub errors: u64,
    /// The first error seen, to tell what went wrong without a log.
    pub first_error: Option<String>,
    pub elapsed_secs: f64,
    /// Successful operations per second over `elapsed_secs`.
    pub rate: f64,
    pub latency: Percentiles,
    /// Open loops only: the slowest operation (ms) among those due in each second of the run, to
    /// tell a steady queue from a stall and the backlog after it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub slowest_per_second_ms: Vec<f64>,
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn record(&self, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.first_error.lock().expect("tally lock").get_or_insert(e);
                false
            }
        }
    }

    fn outcome(&self, elapsed: Duration, latency: &Histogram<u64>) -> Outcome {
        let ok = self.ok.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64().max(1e-9);
        Outcome {
            ok,
            errors: self.errors.load(Ordering::Relaxed),
            first_error: self.first_error.lock().expect("tally lock").clone(),
            elapsed_secs: secs,
            rate: ok as f64 / secs,
            latency: Percentiles::of(latency),
            slowest_per_second_ms: Vec::new(),
        }
    }
}

/// `workers` tasks each run `op` back to back until `duration` has passed.
pub async fn closed_loop<F, Fut>(op: Arc<F>, workers: usize, duration: Duration) -> Outcome
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(workers);
    for worker in 0..workers {
        let (op, tally) = (op.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut seq = 0;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let result = op(Job { worker, seq, intended_us: at_us(sent) }).await;
                if tally.record(result) {
                    latency.saturating_record(sent.elapsed().as_micros() as u64);
                }
                seq += 1;
            }
            latency
        }));
    }
    let mut latency = histogram();
    for task in tasks {
        if let Ok(h) = task.await {
            latency.add(&h).expect("same histogram bounds");
        }
    }
    tally.outcome(start.elapsed(), &latency)
}

/// Runs `op` at `rate` per second for `duration` on a fixed schedule, with at most
/// `max_in_flight` outstanding (beyond that the schedule slips, and the slip counts as latency).
pub async fn open_loop<F, Fut>(op: Arc<F>, rate: f64, duration: Duration, max_in_flight: usize) -> Outcome
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let tally = Arc::new(Tally::default());
    let latency = Arc::new(Mutex::new(histogram()));
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let slowest = Arc::new(Mutex::new(vec![0_u64; duration.as_secs_f64().ceil() as usize + 1]));
    let start = Instant::now();
    for seq in 0..total {
        let intended = start + Duration::from_secs_f64(seq as f64 / rate);
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let permit = slots.clone().acquire_owned().await.expect("semaphore open");
        let (op, tally, latency, slowest) = (op.clone(), tally.clone(), latency.clone(), slowest.clone());
        let job = Job { worker: (seq % max_in_flight as u64) as usize, seq, intended_us: at_us(intended) };
        let second = (seq as f64 / rate) as usize;
        tokio::spawn(async move {
            let result = op(job).await;
            let waited = intended.elapsed().as_micros() as u64;
            if tally.record(result) {
                latency.lock().expect("latency lock").saturating_record(waited);
                let mut slowest = slowest.lock().expect("slowest lock");
                if let Some(worst) = slowest.get_mut(second) {
                    *worst = (*worst).max(waited);
                }
            }
            drop(permit);
        });
    }
    let _all = slots.acquire_many(max_in_flight as u32).await.expect("semaphore open");
    let latency = latency.lock().expect("latency lock").clone();
    let slowest = slowest.lock().expect("slowest lock").iter().map(|&us| us as f64 / 1000.0).collect();
    Outcome { slowest_per_second_ms: slowest, ..tally.outcome(start.elapsed(), &latency) }
}

/// One concurrency level of a ceiling search, as the scenario measured it.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub workers: usize,
    /// The scenario's own figure of merit (e.g. stored messages per second).
    pub rate: f64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub levels: Vec<Level>,
    pub best: Level,
}

/// Tries each concurrency level in turn (closed loop, via `run`) until the rate stops improving
/// by at least 5%; the ceiling is the best rate seen.
pub async fn find_ceiling<F, Fut>(levels: &[usize], mut run: F) -> Result<Ceiling, crate::BoxError>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<Level, crate::BoxError>>,
{
    let mut tried: Vec<Level> = Vec::new();
    for &workers in levels {
        let level = run(workers).await?;
        eprintln!(
            "    {workers:>5} workers: {:>10.1}/s  p99 {:>8.2} ms  errors {}",
            level.rate, level.outcome.latency.p99_ms, level.outcome.errors
        );
        let best_so_far = tried.iter().map(|l| l.rate).fold(0.0, f64::max);
        let improved = level.rate > best_so_far * IMPROVEMENT;
        tried.push(level);
        if !improved && tried.len() > 1 {
            break;
        }
    }
    // The first best level: at an equal rate, fewer workers means less queueing.
    let best = tried
        .iter()
        .fold(None::<&Level>, |best, l| if best.is_some_and(|b| b.rate >= l.rate) { best } else { Some(l) })
        .cloned()
        .ok_or("no concurrency levels to try")?;
    Ok(Ceiling { levels: tried, best })
}

/// The ceiling of an operation whose figure is simply its successful operations per second.
pub async fn ceiling_of<F, Fut>(op: Arc<F>, levels: &[usize], duration: Duration) -> Result<Ceiling, crate::BoxError>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    find_ceiling(levels, |workers| {
        let op = op.clone();
        async move {
            let outcome = closed_loop(op, workers, duration).await;
            Ok(Level { workers, rate: outcome.rate, outcome })
        }
    })
    .await
}

/// Runs `a` and then `b` closed-loop, each at its own worker count, `rounds` times over, so
/// whatever drifts during a run (the database's caches and checkpoints, the other processes on
/// the machine) weighs on both alike; returns each one's outcomes, round by round.
pub async fn alternate<FA, FutA, FB, FutB>(
    a: (Arc<FA>, usize),
    b: (Arc<FB>, usize),
    rounds: usize,
    duration: Duration,
) -> (Vec<Outcome>, Vec<Outcome>)
where
    FA: Fn(Job) -> FutA + Send + Sync + 'static,
    FutA: Future<Output = Result<(), String>> + Send + 'static,
    FB: Fn(Job) -> FutB + Send + Sync + 'static,
    FutB: Future<Output = Result<(), String>> + Send + 'static,
{
    let (mut of_a, mut of_b) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for round in 1..=rounds {
        let first = closed_loop(a.0.clone(), a.1, duration).await;
        let second = closed_loop(b.0.clone(), b.1, duration).await;
        eprintln!("    round {round}: {:>10.1}/s  against {:>10.1}/s", first.rate, second.rate);
        of_a.push(first);
        of_b.push(second);
    }
    (of_a, of_b)
}

/// Of rounds measured in pairs (`alternate`), the pair whose ratio a/b is the median (the lower
/// of the middle two for an even count), as (a's rate, b's rate); both 0 for no rounds. Pairs
/// keep each ratio to two runs next to each other in time.
pub fn median_pair(a: &[Outcome], b: &[Outcome]) -> (f64, f64) {
    let mut pairs: Vec<(f64, f64)> = a.iter().zip(b).map(|(a, b)| (a.rate, b.rate)).collect();
    pairs.sort_by(|x, y| (x.0 / x.1.max(f64::MIN_POSITIVE)).total_cmp(&(y.0 / y.1.max(f64::MIN_POSITIVE))));
    pairs.get(pairs.len().saturating_sub(1) / 2).copied().unwrap_or((0.0, 0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_loop_counts_the_wait_behind_a_stall() {
        // One slot and a 50 ms operation at 100/s: later requests queue, and their latency
        // (from the intended time) grows well past the 50 ms service time.
        let op = Arc::new(|_job: Job| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        });
        let outcome = open_loop(op, 100.0, Duration::from_millis(100), 1).await;
        assert_eq!(outcome.ok, 10);
        assert!(outcome.latency.max_ms > 300.0, "{:?}", outcome.latency);
    }

    #[test]
    fn the_median_pair_is_the_round_with_the_middle_ratio() {
        let of = |rates: &[f64]| -> Vec<Outcome> {
            rates
                .iter()
                .map(|&rate| Outcome { rate, ..Tally::default().outcome(Duration::from_secs(1), &histogram()) })
                .collect()
        };
        // Ratios 0.5, 0.9, 0.7: the middle one is the third round's, whatever each side's median.
        assert_eq!(median_pair(&of(&[50.0, 90.0, 70.0]), &of(&[100.0, 100.0, 100.0])), (70.0, 100.0));
        assert_eq!(median_pair(&of(&[80.0, 60.0]), &of(&[100.0, 100.0])), (60.0, 100.0), "the lower of two");
        assert_eq!(median_pair(&[], &[]), (0.0, 0.0));
    }

    #[tokio::test]
    async fn alternating_rounds_run_both_operations_each_round_at_their_own_concurrency() {
        let running = Arc::new(AtomicU64::new(0));
        let most_at_once = Arc::new(AtomicU64::new(0));
        let op = |running: Arc<AtomicU64>, most: Arc<AtomicU64>| {
            Arc::new(move |_job: Job| {
                let (running, most) = (running.clone(), most.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            })
        };
        let b_most = Arc::new(AtomicU64::new(0));
        let (a, b) = alternate(
            (op(running.clone(), most_at_once.clone()), 1),
            (op(running.clone(), b_most.clone()), 3),
            2,
            Duration::from_millis(60),
        )
        .await;
        assert_eq!((a.len(), b.len()), (2, 2));
        assert!(a.iter().chain(&b).all(|o| o.ok > 0 && o.errors == 0));
        assert_eq!(most_at_once.load(Ordering::SeqCst), 1, "a ran alone, one worker");
        assert_eq!(b_most.load(Ordering::SeqCst), 3, "b ran alone, three workers");
    }

    #[tokio::test]
    async fn ceiling_stops_when_the_rate_stops_improving() {
        let ceiling = find_ceiling(&[1, 2, 4, 8], |workers| async move {
            let rate = if workers >= 2 { 100.0 } else { 50.0 };
            let outcome = Tally::default().outcome(Duration::from_secs(1), &histogram());
            Ok(Level { workers, rate, outcome })
        })
        .await
        .unwrap();
        assert_eq!(ceiling.levels.len(), 3);
        assert_eq!(ceiling.best.workers, 2);
    }
}
