//! S3's reference: a bare Redis PUBLISH -> SUBSCRIBE relay, shaped like confab's fan-out (one
//! subscriber connection per node, two "nodes", each re-fanning every message to its half of the
//! K in-process receivers through bounded channels), with payloads the size of a real
//! `message.new` frame that receivers parse the same way. What confab adds on top (storing,
//! authorising, WebSocket framing, TCP to each client) is what the ratio shows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::loadgen::{self, Job, Level, Percentiles};
use crate::s3_inbox::{Board, Frame, Receiver, drain};
use crate::{BoxError, Ctx};

/// Messages queued per receiver (confab's outbox, as the benchmark configures it).
const RECEIVER_QUEUE: usize = 4096;
/// Nodes relaying, as in the stack under test.
const NODES: usize = 2;

#[derive(Debug, Clone, Serialize)]
pub struct RelayResult {
    pub subscribers: usize,
    pub ceiling: loadgen::Ceiling,
    pub deliveries_per_sec: f64,
    /// Latency at 50% of the relay's own ceiling.
    pub half_load: Percentiles,
    pub delivery_ratio: f64,
}

fn payload(phase: u32, job: &Job, pad: usize) -> String {
    let head = format!(
        r#"{{"type":"message.new","conversation_id":"relay","message":{{"seq":{},"metadata":{{"t":{},"p":{phase}}},"text":""#,
        job.seq, job.intended_us
    );
    format!("{head}{}\"}}}}", "x".repeat(pad.saturating_sub(head.len())))
}

pub async fn measure(ctx: &Ctx, k: usize, frame_bytes: usize) -> Result<RelayResult, BoxError> {
    let p = &ctx.params;
    let client = redis::Client::open(ctx.stack.redis_url.as_str())?;
    let channel = format!("bench:relay:{}", rand::random::<u32>());
    let board = Arc::new(Board::default());
    let mut receivers = Vec::new();
    let mut relays = Vec::new();
    for node in 0..NODES {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&channel).await?;
        let mut outboxes = Vec::new();
        for _ in (node..k).step_by(NODES) {
            let (tx, mut rx) = mpsc::channel::<Arc<[u8]>>(RECEIVER_QUEUE);
            let (receiver, board) = (Arc::new(Receiver::default()), board.clone());
            receivers.push(receiver.clone());
            tokio::spawn(async move {
                while let Some(bytes) = rx.recv().await {
                    if let Ok(Frame { message: Some(m), .. }) = serde_json::from_slice::<Frame>(&bytes)
                        && let Some(stamp) = m.metadata
                    {
                        receiver.record(&board, &stamp);
                    }
                }
            });
            outboxes.push(tx);
        }
        relays.push(tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let bytes: Arc<[u8]> = message.get_payload_bytes().into();
                for outbox in &outboxes {
                    let _ = outbox.send(bytes.clone()).await;
                }
            }
        }));
    }
    let connection = client.get_multiplexed_async_connection().await?;
    let op = {
        let (board, channel) = (board.clone(), channel.clone());
        Arc::new(move |job: Job| {
            let (mut connection, channel) = (connection.clone(), channel.clone());
            let body = payload(board.phase.load(Ordering::SeqCst), &job, frame_bytes);
            async move {
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(body)
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(())
            }
        })
    };
    let quiet = Duration::from_secs(3);
    let delivered = Arc::new(AtomicU64::new(0));
    let ceiling = loadgen::find_ceiling(&p.s3_levels, |workers| {
        let (op, board, receivers, delivered) = (op.clone(), board.clone(), receivers.clone(), delivered.clone());
        async move {
            board.next_phase();
            let start = loadgen::now_us();
            let outcome = loadgen::closed_loop(op, workers, Duration::from_secs_f64(p.s3_ceiling_secs)).await;
            let got = drain(&receivers, outcome.ok * k as u64, quiet).await;
            let rate = got.received as f64 / ((got.last_us.saturating_sub(start)) as f64 / 1e6).max(1e-3);
            delivered.fetch_add(got.received, Ordering::Relaxed);
            Ok(Level { workers, rate, outcome })
        }
    })
    .await?;
    board.next_phase();
    let send_rate = ceiling.best.rate / k as f64 * 0.5;
    let outcome = loadgen::open_loop(op, send_rate, Duration::from_secs_f64(p.s3_open_secs), p.max_in_flight).await;
    let got = drain(&receivers, outcome.ok * k as u64, quiet).await;
    let published = ceiling.levels.iter().map(|l| l.outcome.ok).sum::<u64>() + outcome.ok;
    let delivered = delivered.load(Ordering::Relaxed) + got.received;
    for relay in relays {
        relay.abort();
    }
    Ok(RelayResult {
        subscribers: k,
        deliveries_per_sec: ceiling.best.rate,
        ceiling,
        half_load: Percentiles::of(&got.latency),
        delivery_ratio: delivered as f64 / (published * k as u64).max(1) as f64,
    })
}
