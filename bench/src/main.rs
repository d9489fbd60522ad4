//! confab's benchmark suite. `scripts/bench` starts the stack (secantusd-rs, Redis, two confab
//! nodes) and runs this binary against it; each scenario sets up its own tenant through the
//! public API, finds its ceiling closed-loop, measures latency open-loop at 50% and 80% of it,
//! and reports every figure next to a reference measured in the same run on the same machine.

mod cpu;
mod http1;
mod loadgen;
mod params;
mod raw_inserts;
mod report;
mod s1_send;
mod s2_history;
mod s3_fanout;
mod s3_inbox;
mod s3_relay;
mod s4_idle;
mod s5_collab;
mod s5_trace;
mod stack;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use serde_json::{Value, json};

use cpu::{CpuMeter, Watched};
use http1::Http1;
use params::{Mode, Params};
use report::{Figure, ScenarioReport};
use stack::Stack;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "confab's benchmark suite (run it through scripts/bench, which starts the stack)")]
struct Args {
    /// smoke: tiny loads, seconds (CI); quick: every scenario briefly; full: the real thing.
    #[arg(long, value_enum, default_value = "full")]
    mode: Mode,
    /// Scenarios to run, e.g. S1,S3 (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// S3's subscriber counts K, e.g. 100 (default: the mode's, 1,10,100,1000).
    #[arg(long, value_delimiter = ',')]
    subscribers: Vec<usize>,
    /// Base URL of confab node A (senders, S4's sockets).
    #[arg(long)]
    node_a: String,
    /// Base URL of confab node B (half of S3's subscribers).
    #[arg(long)]
    node_b: String,
    #[arg(long, env = "CONFAB_BENCH_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: String,
    #[arg(long)]
    mongo_uri: String,
    #[arg(long)]
    redis_url: String,
    /// The nodes' `mongodb.db_prefix`, to find tenant databases for raw-driver references.
    #[arg(long)]
    db_prefix: String,
    /// A process to account CPU to, as name=pid (repeat); `confab-a` is also S4's node.
    #[arg(long = "watch", value_parser = parse_watched)]
    watch: Vec<Watched>,
    #[arg(long, default_value = "bench/results")]
    results_dir: PathBuf,
    #[arg(long, default_value = "unknown")]
    git_commit: String,
    /// Clock ticks per second of /proc/<pid>/stat (`getconf CLK_TCK`).
    #[arg(long, env = "CONFAB_BENCH_CLK_TCK", default_value_t = 100.0)]
    clock_ticks: f64,
}

fn parse_watched(raw: &str) -> Result<Watched, String> {
    let (name, pid) = raw.split_once('=').ok_or("expected name=pid")?;
    Ok(Watched { name: name.to_string(), pid: pid.parse().map_err(|e| format!("{pid}: {e}"))? })
}

/// What the scenarios share.
pub struct Ctx {
    pub stack: Arc<Stack>,
    pub params: Params,
    pub watched: Vec<Watched>,
}

impl Ctx {
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.watched.iter().find(|w| w.name == name).map(|w| w.pid)
    }
}

/// A scenario's measurements. `problems` are correctness failures (lost deliveries, failed
/// requests, a document stored wrong): they fail a smoke run, and are reported otherwise.
pub struct Measured {
    pub figures: Vec<Figure>,
    pub details: Value,
    pub problems: Vec<String>,
}

const SCENARIOS: [(&str, &str); 5] = [
    ("S1", "send: REST POST message"),
    ("S2", "history: pages of 50"),
    ("S3", "fan-out to WebSocket subscribers on two nodes"),
    ("S4", "idle WebSocket connections"),
    ("S5", "collaborative editing over y-websocket"),
];

async fn run_scenario(id: &str, ctx: &Ctx) -> Result<Measured, BoxError> {
    match id {
        "S1" => s1_send::run(ctx).await,
        "S2" => s2_history::run(ctx).await,
        "S3" => s3_fanout::run(ctx).await,
        "S4" => s4_idle::run(ctx).await,
        "S5" => s5_collab::run(ctx).await,
        other => Err(format!("no scenario {other}").into()),
    }
}

fn machine() -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let mem_kib = meminfo.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1));
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|p| p.1);
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_kib": mem_kib.and_then(|m| m.parse::<u64>().ok()),
        "cpu": model.map(str::trim),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "open_files_limit": cpu::open_files_limit(std::process::id()),
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("confab-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the selected scenarios; `Ok(false)` when a smoke run found a failure.
async fn run(args: Args) -> Result<bool, BoxError> {
    loadgen::now_us(); // fixes the clock's origin before any timestamp is taken
    let started = chrono::Utc::now();
    let mut params = Params::for_mode(args.mode);
    if !args.subscribers.is_empty() {
        params.s3_subscribers = args.subscribers.clone();
    }
    // The raw references get as many connections as a confab node has (`mongodb.max_pool_size`).
    let mut mongo_options = mongodb::options::ClientOptions::parse(&args.mongo_uri).await?;
    mongo_options.max_pool_size = mongo_options.max_pool_size.or(Some(100));
    let mongo = mongodb::Client::with_options(mongo_options)?;
    let stack = Stack {
        node_a: args.node_a.trim_end_matches('/').to_string(),
        node_b: args.node_b.trim_end_matches('/').to_string(),
        operator_token: args.operator_token.clone(),
        db_prefix: args.db_prefix.clone(),
        redis_url: args.redis_url.clone(),
        mongo,
        http: Http1::default(),
    };
    let mut watched = args.watch.clone();
    watched.push(Watched { name: "loadgen".into(), pid: std::process::id() });
    let ctx = Ctx { stack: Arc::new(stack), params: params.clone(), watched };
    let wanted = |id: &str| args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(id));
    let mut reports = Vec::new();
    let mut failed = false;
    for (id, title) in SCENARIOS.into_iter().filter(|(id, _)| wanted(id)) {
        eprintln!("== {id} {title}");
        let meter = CpuMeter::start(&ctx.watched, args.clock_ticks);
        let began = Instant::now();
        let result = run_scenario(id, &ctx).await;
        let wall_secs = began.elapsed().as_secs_f64();
        let cpu_seconds = meter.stop();
        let report = match result {
            Ok(measured) => {
                for problem in &measured.problems {
                    eprintln!("   {id} problem: {problem}");
                }
                failed |= !measured.problems.is_empty() && params.mode == Mode::Smoke;
                let (figures, details, problems) = (measured.figures, measured.details, measured.problems);
                ScenarioReport { id, title, figures, details, cpu_seconds, wall_secs, error: None, problems }
            }
            Err(e) => {
                eprintln!("   {id} failed: {e}");
                failed = true;
                let error = Some(e.to_string());
                let (figures, details, problems) = (vec![], Value::Null, vec![]);
                ScenarioReport { id, title, figures, details, cpu_seconds, wall_secs, error, problems }
            }
        };
        eprintln!("   done in {wall_secs:.1} s");
        reports.push(report);
    }
    let results = json!({
        "started_at": started.to_rfc3339(),
        "mode": params.mode,
        "git_commit": args.git_commit,
        "machine": machine(),
        "parameters": params,
        "processes": ctx.watched.iter().map(|w| json!({"name": w.name, "pid": w.pid})).collect::<Vec<_>>(),
        "scenarios": reports,
    });
    std::fs::create_dir_all(&args.results_dir)?;
    let path = args.results_dir.join(format!("{}.json", started.format("%Y%m%dT%H%M%SZ")));
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    println!("{}", report::markdown(&reports));
    println!("Results: {}", path.display());
    // Ends the driver's sessions now: a client dropped while the runtime shuts down would start
    // that from its Drop on a runtime that no longer runs anything, and panic.
    ctx.stack.mongo.clone().shutdown().immediate(true).await;
    Ok(!failed)
}
