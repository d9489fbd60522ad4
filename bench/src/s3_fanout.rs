//! S3 fan-out: one sender POSTs to a conversation on node A; its K members listen on `/v1/ws`,
//! half on node A and half on node B (so every message also crosses Redis). Each message carries
//! its intended send time; each subscriber records send-to-receive latency. Figures per K:
//! deliveries/s at the ceiling, latency at 50% and 80% of it, and the delivery ratio, which must
//! be exactly 1 (nothing lost, nothing twice). Reference: `s3_relay`, a bare Redis relay. As a
//! delivery starts with a stored message, the sends' own answers at 50% are also reported next to
//! raw-driver inserts of copies of the messages at the same rate, alone on the database.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mongodb::bson::doc;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::loadgen::{self, Job, Level, Percentiles};
use crate::raw_inserts::RawInserts;
use crate::report::{Figure, Target};
use crate::s3_inbox::{Board, Frame, Receiver, drain};
use crate::stack::{Socket, SocketTasks, Stack, User, open_socket, ws_base};
use crate::{BoxError, Ctx, Measured, s3_relay};

/// Sockets opened at once.
const CONNECT_CONCURRENCY: usize = 32;
/// A drain gives up when no delivery arrived for this long.
const QUIET: Duration = Duration::from_secs(5);
/// How long subscribers may take to hear they joined a new conversation.
const JOIN_WAIT: Duration = Duration::from_secs(60);
const TEXT_BYTES: usize = 60;

/// One subscriber socket's state, shared with the task reading it.
struct Subscriber {
    receiver: Arc<Receiver>,
    conversations: Mutex<HashSet<String>>,
    closed: Mutex<Option<String>>,
}

/// Reads frames until the socket ends, recording `message.new` deliveries and joins.
async fn listen(mut socket: Socket, sub: Arc<Subscriber>, board: Arc<Board>, frame_len: Arc<AtomicUsize>) {
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    let reason = loop {
        let text = match socket.next().await {
            Some(Ok(WsMessage::Text(text))) => text,
            Some(Ok(WsMessage::Close(frame))) => break format!("closed: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => break format!("socket error: {e}"),
            None => break "socket ended".to_string(),
        };
        let Ok(frame) = serde_json::from_str::<Frame>(&text) else { continue };
        match (frame.kind, frame.conversation_id, frame.message) {
            ("message.new", Some(conversation), Some(message)) => {
                let seq = message.seq.unwrap_or_default();
                if !last_seq.contains_key(conversation) {
                    last_seq.insert(conversation.to_string(), 0);
                }
                let last = last_seq.get_mut(conversation).expect("inserted above");
                if seq <= *last {
                    sub.receiver.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                *last = seq;
                if let Some(stamp) = message.metadata {
                    sub.receiver.record(&board, &stamp);
                    frame_len.store(text.len(), Ordering::Relaxed);
                }
            }
            ("conversation.joined", Some(conversation), _) => {
                sub.conversations.lock().expect("subscriber lock").insert(conversation.to_string());
            }
            _ => {}
        }
    };
    *sub.closed.lock().expect("subscriber lock") = Some(reason);
}

/// Opens `user`'s socket on `node` and waits for `ready`; returns the subscriber once listening,
/// and the task that listens.
async fn subscribe(
    node: &str,
    user: &User,
    board: Arc<Board>,
    frame_len: Arc<AtomicUsize>,
) -> Result<(Arc<Subscriber>, JoinHandle<()>), String> {
    let mut socket = open_socket(&format!("{}/v1/ws", ws_base(node)), &user.token, None, None).await?;
    let ready = tokio::time::timeout(Duration::from_secs(30), socket.next()).await.map_err(|_| "no ready frame")?;
    let Some(Ok(WsMessage::Text(text))) = ready else { return Err(format!("expected ready, got {ready:?}")) };
    let ready: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let conversations = ready["conversations"].as_array().cloned().unwrap_or_default();
    let ids = conversations.iter().filter_map(|c| c["id"].as_str().map(str::to_string)).collect();
    let sub = Arc::new(Subscriber {
        receiver: Arc::new(Receiver::default()),
        conversations: Mutex::new(ids),
        closed: Mutex::new(None),
    });
    let task = tokio::spawn(listen(socket, sub.clone(), board, frame_len));
    Ok((sub, task))
}

async fn wait_joined(subs: &[Arc<Subscriber>], conversation: &str) -> Result<(), BoxError> {
    let deadline = Instant::now() + JOIN_WAIT;
    loop {
        let missing: Vec<&Arc<Subscriber>> =
            subs.iter().filter(|s| !s.conversations.lock().expect("lock").contains(conversation)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let closed = missing.iter().find_map(|s| s.closed.lock().expect("lock").clone());
            let n = missing.len();
            return Err(format!("{n} subscribers never heard they joined the conversation (closed: {closed:?})").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(ctx: &Ctx) -> Result<Measured, BoxError> {
    let (stack, p) = (ctx.stack.clone(), &ctx.params);
    let tenant = stack.create_tenant("s3").await?;
    let sender = stack.user(&tenant, "sender".into()).await?;
    let most = p.s3_subscribers.iter().copied().max().unwrap_or(1);
    let users = stack.users(&tenant, "sub-", most).await?;
    let board = Arc::new(Board::default());
    let frame_len = Arc::new(AtomicUsize::new(0));
    let mut subs: Vec<Arc<Subscriber>> = Vec::new();
    let mut sockets = SocketTasks::default();
    let (mut figures, mut details, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    for &k in &p.s3_subscribers {
        let members: Vec<&User> = users[..k].iter().collect();
        let conversation = stack.group(&sender, &members).await?;
        eprintln!("  K={k}: connecting {} more subscribers...", k.saturating_sub(subs.len()));
        let connecting = Instant::now();
        let opened = futures_util::stream::iter(subs.len()..k)
            .map(|i| {
                let node = if i % 2 == 0 { &stack.node_a } else { &stack.node_b };
                subscribe(node, &users[i], board.clone(), frame_len.clone())
            })
            .buffered(CONNECT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        for opened in opened {
            let (sub, task) = opened?;
            subs.push(sub);
            sockets.0.push(task);
        }
        wait_joined(&subs[..k], &conversation).await?;
        let connect_secs = connecting.elapsed().as_secs_f64();
        let run = Fanout {
            stack: stack.clone(),
            db: stack.tenant_db(&tenant),
            sender: sender.clone(),
            conversation,
            board: board.clone(),
        };
        let measured = run.measure(ctx, &subs[..k]).await?;
        let frame_bytes = frame_len.load(Ordering::Relaxed).max(200);
        let relay = s3_relay::measure(ctx, k, frame_bytes).await?;
        eprintln!("    reference relay: {:.0} deliveries/s", relay.deliveries_per_sec);
        figures.extend(measured.figures(k, &relay));
        let closed: Vec<String> = subs[..k].iter().filter_map(|s| s.closed.lock().expect("lock").clone()).collect();
        if measured.ratio != 1.0 {
            problems.push(format!("K={k}: delivery ratio {} (closed sockets: {:?})", measured.ratio, closed.first()));
        }
        if measured.errors > 0 {
            problems.push(format!("K={k}: {} sends failed", measured.errors));
        }
        details.push(json!({"subscribers": k, "connect_and_join_secs": connect_secs, "frame_bytes": frame_bytes, "confab": measured.details,
            "closed_sockets": closed.len(), "reference_relay": relay}));
    }
    drop(sockets); // closes every subscriber socket before the next scenario
    Ok(Measured { figures, details: json!({ "per_k": details }), problems })
}

struct Fanout {
    stack: Arc<Stack>,
    /// The tenant's database, whose stored messages the raw-insert reference copies.
    db: mongodb::Database,
    sender: User,
    conversation: String,
    board: Arc<Board>,
}

struct FanoutResult {
    ceiling: f64,
    half: Percentiles,
    eighty: Percentiles,
    /// The sends' own answers (201: stored) at 50%, and raw inserts alone at the same rate.
    half_sends: Percentiles,
    half_stored_alone: Percentiles,
    ratio: f64,
    errors: u64,
    details: Value,
}

impl Fanout {
    async fn measure(&self, ctx: &Ctx, subs: &[Arc<Subscriber>]) -> Result<FanoutResult, BoxError> {
        let (p, k) = (&ctx.params, subs.len() as u64);
        let receivers: Vec<Arc<Receiver>> = subs.iter().map(|s| s.receiver.clone()).collect();
        let op = {
            let (stack, sender, conversation, board) =
                (self.stack.clone(), self.sender.clone(), self.conversation.clone(), self.board.clone());
            Arc::new(move |job: Job| {
                let (stack, sender, conversation) = (stack.clone(), sender.clone(), conversation.clone());
                let phase = board.phase.load(Ordering::SeqCst);
                async move {
                    let id = format!("s3-{phase}-{}-{}", job.worker, job.seq);
                    let text = crate::stack::message_text(job.seq, TEXT_BYTES);
                    let stamp = json!({"t": job.intended_us, "p": phase});
                    stack.send(&stack.node_a, &sender, &conversation, &id, &text, Some(stamp)).await
                }
            })
        };
        let (sent, delivered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let per_level = Arc::new(Mutex::new(Vec::new()));
        let ceiling = loadgen::find_ceiling(&p.s3_levels, |workers| {
            let (op, board, receivers) = (op.clone(), self.board.clone(), receivers.clone());
            let (sent, delivered, per_level) = (sent.clone(), delivered.clone(), per_level.clone());
            async move {
                board.next_phase();
                let start = loadgen::now_us();
                let outcome = loadgen::closed_loop(op, workers, Duration::from_secs_f64(p.s3_ceiling_secs)).await;
                let got = drain(&receivers, outcome.ok * k, QUIET).await;
                sent.fetch_add(outcome.ok, Ordering::Relaxed);
                delivered.fetch_add(got.received, Ordering::Relaxed);
                let rate = got.received as f64 / (got.last_us.saturating_sub(start) as f64 / 1e6).max(1e-3);
                let latency = Percentiles::of(&got.latency);
                per_level
                    .lock()
                    .expect("lock")
                    .push(json!({"workers": workers, "deliveries": got.received, "latency": latency}));
                Ok(Level { workers, rate, outcome })
            }
        })
        .await?;
        let (mut open, mut open_latency, mut open_sends, mut open_errors) = (Vec::new(), Vec::new(), Vec::new(), 0);
        let secs = Duration::from_secs_f64(p.s3_open_secs);
        let send_rate = |share: f64| ceiling.best.rate / k as f64 * share;
        for share in [0.5, 0.8] {
            self.board.next_phase();
            let rate = send_rate(share);
            let outcome = loadgen::open_loop(op.clone(), rate, secs, p.max_in_flight).await;
            let got = drain(&receivers, outcome.ok * k, QUIET).await;
            sent.fetch_add(outcome.ok, Ordering::Relaxed);
            delivered.fetch_add(got.received, Ordering::Relaxed);
            let latency = Percentiles::of(&got.latency);
            eprintln!("    open loop at {:.0}%: {rate:.1} sends/s -> p99 {:.2} ms", share * 100.0, latency.p99_ms);
            open_latency.push(latency);
            open_sends.push(outcome.latency);
            open_errors += outcome.errors;
            open.push(json!({"share": share, "send_rate": rate, "sends": outcome, "deliveries": got.received, "latency": latency}));
        }
        // Every delivery starts with a stored message: the database alone at the 50% send rate.
        let sampled = doc! { "conversation_id": &self.conversation };
        let raw = RawInserts::prepare(&self.stack, &self.db, sampled, "s3").await?;
        let stored_alone = loadgen::open_loop(raw.op(1), send_rate(0.5), secs, p.max_in_flight).await;
        raw.scratch.drop().await?;
        eprintln!("    raw insert_one alone at the 50% rate: p99 {:.2} ms", stored_alone.latency.p99_ms);
        let (sent, delivered) = (sent.load(Ordering::Relaxed), delivered.load(Ordering::Relaxed));
        let duplicates: u64 = receivers.iter().map(|r| r.duplicates.load(Ordering::Relaxed)).sum();
        let strays: u64 = receivers.iter().map(|r| r.strays.load(Ordering::Relaxed)).sum();
        let errors = ceiling.levels.iter().map(|l| l.outcome.errors).sum::<u64>() + open_errors;
        Ok(FanoutResult {
            ceiling: ceiling.best.rate,
            half: open_latency[0],
            eighty: open_latency[1],
            half_sends: open_sends[0],
            half_stored_alone: stored_alone.latency,
            ratio: delivered as f64 / (sent * k).max(1) as f64,
            errors,
            details: json!({"ceiling": ceiling, "deliveries_per_level": *per_level.lock().expect("lock"),
                "open_loop": open, "reference_insert_one_at_half": stored_alone, "sent": sent, "delivered": delivered, "duplicates": duplicates, "late_strays": strays}),
        })
    }
}

impl FanoutResult {
    fn figures(&self, k: usize, relay: &s3_relay::RelayResult) -> Vec<Figure> {
        let hundred = k == 100;
        let deliveries = Figure::new(format!("K={k}: deliveries/s, ceiling"), self.ceiling, "/s");
        let deliveries = if hundred { deliveries.target(Target::AtLeast(100_000.0)) } else { deliveries };
        let p99 = Figure::new(format!("K={k}: send->receive p99 at 50%"), self.half.p99_ms, "ms");
        let p99 = if hundred { p99.target(Target::AtMost(25.0)) } else { p99 };
        vec![
            deliveries.against("Redis relay deliveries/s", relay.deliveries_per_sec),
            Figure::new(format!("K={k}: send->receive p50 at 50%"), self.half.p50_ms, "ms")
                .against("relay p50 at 50%", relay.half_load.p50_ms),
            p99.against("relay p99 at 50%", relay.half_load.p99_ms),
            Figure::new(format!("K={k}: send answer (stored) p99 at 50%"), self.half_sends.p99_ms, "ms")
                .against("raw insert_one p99, same rate", self.half_stored_alone.p99_ms),
            Figure::new(format!("K={k}: send->receive p99 at 80%"), self.eighty.p99_ms, "ms"),
            Figure::new(format!("K={k}: delivery ratio"), self.ratio, "")
                .target(Target::Exactly(1.0))
                .against("relay delivery ratio", relay.delivery_ratio),
        ]
    }
}
