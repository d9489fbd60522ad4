//! S5 collaborative editing: a synthetic trace of single-character edits (`s5_trace`) sent as
//! y-websocket update messages through one file's socket, as fast as the socket takes them.
//! "Applied" is when the room answers a sync step 1 sent after the last update (a room handles
//! one socket's messages in order). "Persisted" is when what MongoDB holds (newest snapshot + the
//! updates after it) contains every insertion and deletion of the trace, read from the stored
//! updates without applying them; after the clock stops, the document rebuilt from them must have
//! exactly the trace's final text, or the run fails. The figure is updates / time-to-persisted;
//! the reference is applying the same updates to a local `yrs` doc.

use std::time::{Duration, Instant};

use crate::http1::Method;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use mongodb::bson::{Document, doc};
use serde_json::json;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::report::{Figure, Target};
use crate::s5_trace::{self, Trace};
use crate::stack::{Tenant, open_socket, ws_base};
use crate::{BoxError, Ctx, Measured};

const SEED: u64 = 20_240_601;
/// Local applications of the trace whose median is the reference, and passes through confab
/// whose median is its figure.
const RUNS: usize = 3;
/// Messages written before the socket is flushed (a browser's socket batches the same way).
const FLUSH_EVERY: usize = 256;
/// How long the document may take to be applied and stored before the run counts as failed.
const PERSIST_WAIT: Duration = Duration::from_secs(300);
/// How often the stored log is looked at; the document is rebuilt only when it grew.
const POLL: Duration = Duration::from_millis(5);

/// The newest stored update's seq and the newest snapshot's (cheap to ask often).
async fn stored_head(db: &mongodb::Database, item: &str, epoch: i64) -> Result<(i64, i64), BoxError> {
    let newest = |collection: &'static str, field: &'static str| {
        let db = db.clone();
        async move {
            let found = db
                .collection::<Document>(collection)
                .find_one(doc! { "doc_id": item, "epoch": epoch })
                .sort(doc! { field: -1 })
                .projection(doc! { field: 1 })
                .await?;
            Ok::<_, BoxError>(found.and_then(|d| d.get_i64(field).ok()).unwrap_or(0))
        }
    };
    Ok((newest("collab_updates", "seq").await?, newest("collab_snapshots", "upto_seq").await?))
}

/// What was stored since the last look, in the order a node loading the document applies it (a
/// newer snapshot, then the updates after it); `upto` is the newest seq seen.
async fn stored_since(
    db: &mongodb::Database,
    item: &str,
    epoch: i64,
    upto: &mut i64,
) -> Result<Vec<Vec<u8>>, BoxError> {
    let mut found = Vec::new();
    let snapshot = db
        .collection::<Document>("collab_snapshots")
        .find_one(doc! { "doc_id": item, "epoch": epoch, "upto_seq": { "$gt": *upto } })
        .sort(doc! { "upto_seq": -1 })
        .await?;
    if let Some(snapshot) = snapshot {
        found.push(snapshot.get_binary_generic("state")?.clone());
        *upto = snapshot.get_i64("upto_seq")?;
    }
    let filter = doc! { "doc_id": item, "epoch": epoch, "seq": { "$gt": *upto } };
    let stored: Vec<Document> =
        db.collection::<Document>("collab_updates").find(filter).sort(doc! { "seq": 1 }).await?.try_collect().await?;
    for update in &stored {
        found.push(update.get_binary_generic("update")?.clone());
        *upto = update.get_i64("seq")?;
    }
    Ok(found)
}

/// One pass of the trace through a new file's socket: seconds until the room answered and
/// until MongoDB held every edit, and how many bytes went out.
struct Pass {
    sent_secs: f64,
    applied_secs: f64,
    persisted_secs: f64,
    bytes_sent: usize,
    polls: usize,
}

pub async fn run(ctx: &Ctx) -> Result<Measured, BoxError> {
    let (stack, p) = (ctx.stack.clone(), &ctx.params);
    let tenant = stack.create_tenant("s5").await?;
    let editor = stack.user(&tenant, "editor".into()).await?;
    let node = &stack.node_a;
    let session =
        stack.call(node, Method::POST, "/v1/sessions", &editor.token, Some(&json!({"name": "bench"}))).await?;
    let session = session["id"].as_str().ok_or("no session id")?.to_string();

    let edits = p.s5_edits;
    eprintln!("  generating a trace of {edits} edits...");
    let trace: Trace = tokio::task::spawn_blocking(move || s5_trace::generate(edits, SEED)).await?;
    let target = s5_trace::Coverage::of_trace(&trace)?;
    // The reference is the median of a few local runs: one run of a short trace varies a lot.
    let mut local_runs = Vec::new();
    for _ in 0..RUNS {
        let updates = trace.updates.clone();
        let (secs, text) = tokio::task::spawn_blocking(move || s5_trace::apply_locally(&updates)).await??;
        if text != trace.final_text {
            return Err("the trace does not replay to its own text".into());
        }
        local_runs.push(secs);
    }
    local_runs.sort_by(f64::total_cmp);
    let local_secs = local_runs[local_runs.len() / 2];
    let local_rate = edits as f64 / local_secs;
    eprintln!("  local yrs applies {local_rate:.0} updates/s; sending through the socket ({RUNS} files)...");

    // confab's figure is the median of as many passes, each through a file of its own: the
    // first pass pays for a new process's memory (page faults), as the first local run does.
    let editing = Editing { tenant: &tenant, token: &editor.token, session: &session, trace: &trace, target: &target };
    let mut passes = Vec::new();
    for n in 0..RUNS {
        let body = json!({"name": format!("trace-{n}.txt"), "kind": "file"});
        let path = format!("/v1/sessions/{session}/items");
        let item = stack.call(node, Method::POST, &path, &editor.token, Some(&body)).await?;
        let epoch = item["epoch"].as_i64().ok_or("no epoch")?;
        let item = item["id"].as_str().ok_or("no item id")?.to_string();
        let pass = one_pass(ctx, &editing, &item, epoch).await?;
        eprintln!(
            "    sent in {:.2} s, applied at {:.2} s, persisted at {:.2} s",
            pass.sent_secs, pass.applied_secs, pass.persisted_secs
        );
        passes.push(pass);
    }
    passes.sort_by(|a, b| a.persisted_secs.total_cmp(&b.persisted_secs));
    let median = &passes[passes.len() / 2];
    let rate = edits as f64 / median.persisted_secs;

    let figures = vec![
        Figure::new("updates/s applied + persisted", rate, "upd/s")
            .target(Target::RatioAtLeast(0.5))
            .against("local yrs apply upd/s", local_rate),
        Figure::new("updates/s applied (room answered)", edits as f64 / median.applied_secs, "upd/s")
            .against("local yrs apply upd/s", local_rate),
    ];
    let details = json!({
        "edits": edits, "final_text_bytes": trace.final_text.len(), "bytes_sent": median.bytes_sent,
        "sent_secs": median.sent_secs, "applied_secs": median.applied_secs, "persisted_secs": median.persisted_secs,
        "persist_polls": median.polls, "passes_persisted_secs": passes.iter().map(|p| p.persisted_secs).collect::<Vec<_>>(),
        "local_apply_secs": local_secs, "local_apply_runs_secs": local_runs, "seed": SEED,
    });
    Ok(Measured { figures, details, problems: Vec::new() })
}

/// What every pass shares: who edits, in which session, and the trace with what it covers.
struct Editing<'a> {
    tenant: &'a Tenant,
    token: &'a str,
    session: &'a str,
    trace: &'a Trace,
    target: &'a s5_trace::Coverage,
}

async fn one_pass(ctx: &Ctx, editing: &Editing<'_>, item: &str, epoch: i64) -> Result<Pass, BoxError> {
    let Editing { tenant, token, session, trace, target } = *editing;
    let stack = &ctx.stack;
    let node = &stack.node_a;
    let url = format!("{}/v1/sessions/{session}/files/{item}/yjs?epoch={epoch}", ws_base(node));
    let socket = open_socket(&url, token, None, None).await?;
    let (mut sink, mut stream) = socket.split();
    let (answered_tx, answered) = oneshot::channel::<Result<(), String>>();
    let (asked_tx, mut asked) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut answered_tx = Some(answered_tx);
        let outcome = loop {
            match stream.next().await {
                Some(Ok(WsMessage::Binary(bytes))) if *asked.borrow_and_update() && s5_trace::is_sync_step2(&bytes) => {
                    break Ok(());
                }
                Some(Ok(WsMessage::Close(frame))) => break Err(format!("the server closed the socket: {frame:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(format!("socket error: {e}")),
                None => break Err("the socket ended".to_string()),
            }
        };
        if let Some(tx) = answered_tx.take() {
            let _ = tx.send(outcome);
        }
        // Keep reading (pings) until the run drops the socket.
        while let Some(Ok(_)) = stream.next().await {}
    });

    let started = Instant::now();
    let mut bytes_sent = 0usize;
    for (i, update) in trace.updates.iter().enumerate() {
        let message = s5_trace::sync_update(update.clone());
        bytes_sent += message.len();
        sink.feed(WsMessage::Binary(message.into())).await?;
        if (i + 1) % FLUSH_EVERY == 0 {
            sink.flush().await?;
        }
    }
    sink.flush().await?;
    let sent_secs = started.elapsed().as_secs_f64();
    asked_tx.send(true)?;
    sink.send(WsMessage::Binary(s5_trace::sync_step1(trace.state_vector.clone()).into())).await?;
    tokio::time::timeout(PERSIST_WAIT, answered).await.map_err(|_| "the room never answered")???;
    let applied_secs = started.elapsed().as_secs_f64();

    let db = stack.tenant_db(tenant);
    let (mut polls, mut checked, mut upto) = (0, None, 0);
    let (mut stored, mut coverage) = (Vec::new(), s5_trace::Coverage::default());
    let persisted_secs = loop {
        polls += 1;
        let head = stored_head(&db, item, epoch).await?;
        if checked != Some(head) {
            checked = Some(head);
            for update in stored_since(&db, item, epoch, &mut upto).await? {
                coverage.add(&update)?;
                stored.push(update);
            }
            if coverage.covers(target) {
                break started.elapsed().as_secs_f64();
            }
        }
        if started.elapsed() > PERSIST_WAIT {
            return Err("the stored document never held every edit of the trace".into());
        }
        tokio::time::sleep(POLL).await;
    };
    let _ = sink.close().await;
    let (_, rebuilt) = s5_trace::apply_locally(&stored)?;
    if rebuilt != trace.final_text {
        return Err("the stored document holds every edit but does not rebuild the trace's text".into());
    }
    Ok(Pass { sent_secs, applied_secs, persisted_secs, bytes_sent, polls })
}
