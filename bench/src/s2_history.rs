//! S2 history: random pages of 50 from long conversations, read through
//! `GET /v1/conversations/{id}/messages?before_seq=&limit=50`. The reference is the raw driver's
//! `find` of the same exact seq range on the tenant's `messages` collection (the query confab's
//! history page itself boils down to), at the same concurrency levels, counting the documents as
//! they arrive without decoding them (the least a client of the driver can do with a page, so
//! the reference is the server's cost and the driver's, not a decoder's). Both ceilings are then
//! measured again in alternating rounds at their best levels, and the headline figures are the
//! round whose ratio is the median: the two searches run minutes apart, and the database drifts
//! meanwhile.

use std::sync::Arc;

use crate::http1::Method;
use futures_util::StreamExt;
use mongodb::bson::{RawDocumentBuf, doc};
use serde::de::IgnoredAny;
use serde_json::json;

use crate::loadgen::{self, Job};
use crate::report::{Figure, Target};
use crate::stack::{User, message_text};
use crate::{BoxError, Ctx, Measured};

const PAGE: u64 = 50;
/// Readers (users with tokens) the requests are spread over.
const READERS: usize = 8;
/// Concurrent sends while preloading (spread over the conversations).
const PRELOAD_CONCURRENCY: usize = 32;
const TEXT_BYTES: usize = 120;

/// A history page as S2 checks it: its items counted, not built.
#[derive(serde::Deserialize)]
struct PageItems {
    items: Vec<IgnoredAny>,
}

struct Plan {
    readers: Vec<User>,
    conversations: Vec<String>,
    messages: u64,
}

/// A well-mixed 64-bit hash (SplitMix64's finaliser): random pages without shared RNG state.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Plan {
    /// Reader, conversation and the page's `before_seq` (the page is before_seq-50..before_seq-1).
    fn pick(&self, job: &Job) -> (&User, &str, u64) {
        let r = mix(((job.worker as u64) << 40) ^ job.seq);
        let reader = &self.readers[(r % self.readers.len() as u64) as usize];
        let conversation = &self.conversations[((r >> 16) % self.conversations.len() as u64) as usize];
        let before = PAGE + 1 + (r >> 24) % (self.messages - PAGE + 1);
        (reader, conversation, before)
    }
}

pub async fn run(ctx: &Ctx) -> Result<Measured, BoxError> {
    let (stack, p) = (ctx.stack.clone(), &ctx.params);
    let tenant = stack.create_tenant("s2").await?;
    let writer = stack.user(&tenant, "writer".into()).await?;
    let readers = stack.users(&tenant, "reader-", READERS).await?;
    let mut conversations = Vec::new();
    for _ in 0..p.s2_conversations {
        conversations.push(stack.group(&writer, &readers.iter().collect::<Vec<_>>()).await?);
    }
    let messages = p.s2_messages.max(PAGE as usize) as u64;
    eprintln!("  preloading {} x {messages} messages through the API...", conversations.len());
    let sends = conversations.iter().flat_map(|c| (0..messages).map(move |i| (c.clone(), i)));
    let failed = futures_util::stream::iter(sends)
        .map(|(conversation, i)| {
            let (stack, writer) = (stack.clone(), writer.clone());
            async move {
                let id = format!("pre-{i}");
                stack.send(&stack.node_a, &writer, &conversation, &id, &message_text(i, TEXT_BYTES), None).await
            }
        })
        .buffer_unordered(PRELOAD_CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect::<Vec<_>>()
        .await;
    if let Some(first) = failed.first() {
        return Err(format!("{} preload sends failed; first: {first}", failed.len()).into());
    }
    let plan = Arc::new(Plan { readers, conversations, messages });
    let db = stack.tenant_db(&tenant);

    let op = {
        let (stack, plan) = (stack.clone(), plan.clone());
        Arc::new(move |job: Job| {
            let (stack, plan) = (stack.clone(), plan.clone());
            async move {
                let (reader, conversation, before) = plan.pick(&job);
                let path = format!("/v1/conversations/{conversation}/messages?before_seq={before}&limit={PAGE}");
                let page: PageItems = stack.call_as(&stack.node_a, Method::GET, &path, &reader.token, None).await?;
                let got = page.items.len();
                if got as u64 != PAGE { Err(format!("a page held {got} messages, not {PAGE}")) } else { Ok(()) }
            }
        })
    };
    let raw_op = {
        let (collection, plan) = (db.collection::<RawDocumentBuf>("messages"), plan.clone());
        Arc::new(move |job: Job| {
            let (collection, plan) = (collection.clone(), plan.clone());
            async move {
                let (_, conversation, before) = plan.pick(&job);
                let range = doc! { "$gte": (before - PAGE) as i64, "$lte": (before - 1) as i64 };
                let mut cursor = collection
                    .find(doc! { "conversation_id": conversation, "seq": range })
                    .sort(doc! { "conversation_id": 1, "seq": 1 })
                    .await
                    .map_err(|e| e.to_string())?;
                let mut found = 0;
                while cursor.advance().await.map_err(|e| e.to_string())? {
                    found += 1;
                }
                if found != PAGE { Err(format!("found {found} documents")) } else { Ok(()) }
            }
        })
    };

    eprintln!("  ceiling (closed loop, pages/s):");
    let ceiling = loadgen::ceiling_of(op.clone(), &p.levels, p.ceiling()).await?;
    eprintln!("  reference ceiling (raw driver range find):");
    let raw = loadgen::ceiling_of(raw_op.clone(), &p.levels, p.ceiling()).await?;
    // Each search ran at its own time; the figures come from rounds that alternate the two at
    // their best levels, so drift during the run does not decide the ratio.
    eprintln!("  both at their best levels, alternating ({} rounds):", p.s2_rounds);
    let (workers, raw_workers) = (ceiling.best.workers, raw.best.workers);
    let (rounds, raw_rounds) =
        loadgen::alternate((op.clone(), workers), (raw_op.clone(), raw_workers), p.s2_rounds, p.ceiling()).await;
    let (pages, raw_pages) = loadgen::median_pair(&rounds, &raw_rounds);
    let mut open = Vec::new();
    for share in [0.5, 0.8] {
        let rate = pages * share;
        let outcome = loadgen::open_loop(op.clone(), rate, p.open(), p.max_in_flight).await;
        eprintln!("  open loop at {:.0}%: {rate:.0}/s -> p99 {:.2} ms", share * 100.0, outcome.latency.p99_ms);
        eprintln!("    slowest per second (ms): {:.0?}", outcome.slowest_per_second_ms);
        open.push((share, rate, outcome));
    }
    eprintln!("  reference at the same offered rates:");
    let mut raw_open = Vec::new();
    for (_, rate, _) in &open {
        raw_open.push(loadgen::open_loop(raw_op.clone(), *rate, p.open(), p.max_in_flight).await);
    }

    let n = p.s2_rounds;
    let mut figures = vec![
        Figure::new(format!("pages/s, ceiling ({workers} readers; the median-ratio round of {n})"), pages, "page/s")
            .target(Target::RatioAtLeast(0.8))
            .against(format!("raw range find/s ({raw_workers} workers; same round)"), raw_pages),
    ];
    for ((share, _, outcome), raw) in open.iter().zip(&raw_open) {
        let at = format!("{:.0}%", share * 100.0);
        let (l, r) = (&outcome.latency, &raw.latency);
        figures.push(Figure::new(format!("achieved read rate at {at}"), outcome.rate, "page/s"));
        figures.push(
            Figure::new(format!("read p50 at {at}"), l.p50_ms, "ms").against("raw find p50, same rate", r.p50_ms),
        );
        let p99 = Figure::new(format!("read p99 at {at}"), l.p99_ms, "ms");
        let p99 = if *share == 0.8 { p99.target(Target::AtMost(20.0)) } else { p99 };
        figures.push(p99.against("raw find p99, same rate", r.p99_ms));
    }
    let outcomes = || ceiling.levels.iter().map(|l| &l.outcome).chain(&rounds).chain(open.iter().map(|o| &o.2));
    let errors: u64 = outcomes().map(|o| o.errors).sum();
    let mut problems = Vec::new();
    if errors > 0 {
        let first = outcomes().find_map(|o| o.first_error.clone()).unwrap_or_default();
        problems.push(format!("{errors} history reads failed; first: {first}"));
    }
    let details = json!({
        "conversations": plan.conversations.len(), "messages_per_conversation": messages, "page": PAGE,
        "readers": READERS, "ceiling": ceiling,
        "open_loop": open.iter().map(|(share, rate, o)| json!({"share": share, "target_rate": rate, "outcome": o})).collect::<Vec<_>>(),
        "reference_range_find": raw, "reference_range_find_open_loop": raw_open,
        "alternating_rounds": {"pages": rounds, "reference_range_find": raw_rounds},
    });
    Ok(Measured { figures, details, problems })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_stay_inside_the_conversation() {
        let user = User { id: "u".into(), token: "t".into() };
        let plan = Plan { readers: vec![user], conversations: vec!["c".into()], messages: 120 };
        for seq in 0..10_000 {
            let (_, _, before) = plan.pick(&Job { worker: 3, seq, intended_us: 0 });
            assert!((PAGE + 1..=121).contains(&before), "{before}");
        }
    }
}
