//! S1 send: many senders POST messages over many conversations. The figure is messages actually
//! stored per second (counted in MongoDB, not answers received); the references insert the very
//! same documents with the raw driver into a scratch collection with the same indexes, one by one
//! at the same concurrency and batched 100 at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use mongodb::bson::{Document, doc};
use serde_json::json;

use crate::loadgen::{self, Job, Level};
use crate::raw_inserts::RawInserts;
use crate::report::{Figure, Target};
use crate::stack::{User, message_text};
use crate::{BoxError, Ctx, Measured};

/// Members per conversation; each user is in this many conversations too.
const MEMBERS: usize = 4;
/// Bytes of text per message: a typical chat line.
const TEXT_BYTES: usize = 120;
/// Documents per `insert_many` in the batched reference.
const BATCH: usize = 100;

struct Plan {
    users: Vec<User>,
    conversations: Vec<String>,
}

impl Plan {
    /// Spreads requests over users and, per user, over the conversations they are in.
    fn pick(&self, job: &Job) -> (&User, &str) {
        let n = self.users.len();
        let slot = job.worker.wrapping_add(job.seq as usize);
        let user = slot % n;
        let conversation = (user + n * MEMBERS - (slot / n) % MEMBERS) % n;
        (&self.users[user], &self.conversations[conversation])
    }
}

async fn stored(db: &mongodb::Database, plan: &Plan) -> Result<u64, BoxError> {
    let filter = doc! { "conversation_id": { "$in": &plan.conversations } };
    Ok(db.collection::<Document>("messages").count_documents(filter).await?)
}

pub async fn run(ctx: &Ctx) -> Result<Measured, BoxError> {
    let (stack, p) = (ctx.stack.clone(), &ctx.params);
    let tenant = stack.create_tenant("s1").await?;
    let users = stack.users(&tenant, "sender-", p.s1_users.max(MEMBERS)).await?;
    let n = users.len();
    let mut conversations = Vec::with_capacity(n);
    for c in 0..n {
        let others: Vec<&User> = (1..MEMBERS).map(|k| &users[(c + k) % n]).collect();
        conversations.push(stack.group(&users[c], &others).await?);
    }
    let plan = Arc::new(Plan { users, conversations });
    let db = stack.tenant_db(&tenant);
    let phase = Arc::new(AtomicI64::new(0));
    let op = {
        let (stack, plan, phase) = (stack.clone(), plan.clone(), phase.clone());
        Arc::new(move |job: Job| {
            let (stack, plan) = (stack.clone(), plan.clone());
            let id = format!("s1-{}-{}-{}", phase.load(Ordering::Relaxed), job.worker, job.seq);
            async move {
                let (user, conversation) = plan.pick(&job);
                let text = message_text(job.seq, TEXT_BYTES);
                stack.send(&stack.node_a, user, conversation, &id, &text, None).await
            }
        })
    };

    eprintln!("  ceiling (closed loop, stored messages/s):");
    let ceiling = loadgen::find_ceiling(&p.levels, |workers| {
        let (op, db, plan) = (op.clone(), db.clone(), plan.clone());
        phase.fetch_add(1, Ordering::Relaxed);
        async move {
            let before = stored(&db, &plan).await?;
            let outcome = loadgen::closed_loop(op, workers, p.ceiling()).await;
            let after = stored(&db, &plan).await?;
            let rate = (after - before) as f64 / outcome.elapsed_secs;
            Ok(Level { workers, rate, outcome })
        }
    })
    .await?;
    let mut open = Vec::new();
    for share in [0.5, 0.8] {
        phase.fetch_add(1, Ordering::Relaxed);
        let rate = ceiling.best.rate * share;
        let outcome = loadgen::open_loop(op.clone(), rate, p.open(), p.max_in_flight).await;
        eprintln!("  open loop at {:.0}%: {rate:.0}/s -> p99 {:.2} ms", share * 100.0, outcome.latency.p99_ms);
        open.push((share, rate, outcome));
    }
    let total_stored = stored(&db, &plan).await?;

    eprintln!("  references (raw driver, {} workers, then at the same offered rates):", ceiling.best.workers);
    let sampled = doc! { "conversation_id": { "$in": &plan.conversations } };
    let raw = RawInserts::prepare(&stack, &db, sampled, "s1").await?;
    let one_by_one = raw.ceiling(ceiling.best.workers, 1, p.ceiling()).await?;
    let batched = raw.ceiling(ceiling.best.workers, BATCH, p.ceiling()).await?;
    let mut raw_open = Vec::new();
    for (_, rate, _) in &open {
        raw_open.push(loadgen::open_loop(raw.op(1), *rate, p.open(), p.max_in_flight).await);
    }
    raw.scratch.drop().await?;
    eprintln!("    insert_one {:.0}/s, insert_many x{BATCH} {:.0}/s", one_by_one.rate, batched.rate);

    let best = &ceiling.best;
    let mut figures = vec![
        Figure::new(format!("stored msgs/s, ceiling ({} senders)", best.workers), best.rate, "msg/s")
            .target(Target::AtLeast(10_000.0))
            .against("raw insert_one docs/s", one_by_one.rate),
        Figure::new("stored msgs/s vs batched inserts", best.rate, "msg/s")
            .against(format!("raw insert_many x{BATCH} docs/s"), batched.rate),
    ];
    for ((share, _, outcome), raw) in open.iter().zip(&raw_open) {
        let at = format!("{:.0}%", share * 100.0);
        let (l, r) = (&outcome.latency, &raw.latency);
        figures.push(Figure::new(format!("achieved send rate at {at}"), outcome.rate, "msg/s"));
        figures.push(
            Figure::new(format!("send p50 at {at}"), l.p50_ms, "ms").against("raw insert_one p50, same rate", r.p50_ms),
        );
        let p99 = Figure::new(format!("send p99 at {at}"), l.p99_ms, "ms");
        let p99 = if *share == 0.8 { p99.target(Target::AtMost(50.0)) } else { p99 };
        figures.push(p99.against("raw insert_one p99, same rate", r.p99_ms));
        figures.push(
            Figure::new(format!("send p99.9 at {at}"), l.p999_ms, "ms")
                .against("raw insert_one p99.9, same rate", r.p999_ms),
        );
    }
    let sent_ok: u64 =
        ceiling.levels.iter().map(|l| l.outcome.ok).sum::<u64>() + open.iter().map(|o| o.2.ok).sum::<u64>();
    let errors: u64 =
        ceiling.levels.iter().map(|l| l.outcome.errors).sum::<u64>() + open.iter().map(|o| o.2.errors).sum::<u64>();
    let mut problems = Vec::new();
    if errors > 0 {
        let first = ceiling
            .levels
            .iter()
            .map(|l| &l.outcome)
            .chain(open.iter().map(|o| &o.2))
            .find_map(|o| o.first_error.clone());
        problems.push(format!("{errors} sends failed; first: {}", first.unwrap_or_default()));
    }
    if total_stored != sent_ok {
        problems.push(format!("{sent_ok} sends answered 2xx but {total_stored} messages are stored"));
    }
    let details = json!({
        "senders": plan.users.len(), "conversations": plan.conversations.len(), "members_per_conversation": MEMBERS,
        "text_bytes": TEXT_BYTES, "ceiling": ceiling,
        "open_loop": open.iter().map(|(share, rate, o)| json!({"share": share, "target_rate": rate, "outcome": o})).collect::<Vec<_>>(),
        "sent_ok": sent_ok, "stored": total_stored,
        "reference_insert_one": one_by_one, "reference_insert_many": batched, "reference_insert_one_open_loop": raw_open,
    });
    Ok(Measured { figures, details, problems })
}
