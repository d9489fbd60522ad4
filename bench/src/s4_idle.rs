//! S4 idle connections: as many authenticated `/v1/ws` sockets as the open-files limits allow,
//! all on node A, doing nothing but answering pings. The figure is node A's resident memory per
//! connection (RSS after - RSS before, over the count); the reference is its RSS with none.
//! Sockets come from 127.0.0.2, .3, ... so the ephemeral ports of one source never run out.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::cpu::{open_files, open_files_limit, rss_kib};
use crate::report::{Figure, Target};
use crate::stack::{SocketTasks, open_socket, ws_base};
use crate::{BoxError, Ctx, Measured};

/// File descriptors kept free in each process for everything else (database, Redis, logs).
const FD_HEADROOM: u64 = 1000;
/// Sockets per user (the benchmark raises `gateway.max_connections_per_user` above it).
const SOCKETS_PER_USER: usize = 100;
/// Sockets per source address, well under the ephemeral port range.
const SOCKETS_PER_SOURCE: usize = 20_000;
const CONNECT_CONCURRENCY: usize = 64;
/// Idle clients need no big buffers; the defaults (128 KiB) would cost the load generator GBs.
const CLIENT_BUFFER: usize = 4096;

pub async fn run(ctx: &Ctx) -> Result<Measured, BoxError> {
    let (stack, p) = (ctx.stack.clone(), &ctx.params);
    let node_pid = ctx.pid_of("confab-a").ok_or("no pid for confab-a (--watch confab-a=PID)")?;
    // Each socket costs a descriptor here and one in the node, on top of what both have open.
    let room = |pid: u32| {
        let limit = open_files_limit(pid).unwrap_or(1024);
        (limit, limit.saturating_sub(open_files(pid).unwrap_or(0)))
    };
    let ((own_limit, own_room), (node_limit, node_room)) = (room(std::process::id()), room(node_pid));
    let cap = own_room.min(node_room).saturating_sub(FD_HEADROOM) as usize;
    let wanted = p.s4_connections.min(cap);
    if wanted < p.s4_connections {
        eprintln!(
            "  open-files limits (ours {own_limit}, {own_room} free; node's {node_limit}, {node_room} free) allow {wanted} of {} sockets",
            p.s4_connections
        );
    }
    // Time for the node to settle (allocations of the last upgrades, closes) before measuring.
    let settle = Duration::from_secs_f64(p.s4_settle_secs);
    let tenant = stack.create_tenant("s4").await?;
    let users = stack.users(&tenant, "idle-", wanted.div_ceil(SOCKETS_PER_USER).max(1)).await?;
    tokio::time::sleep(settle).await;
    let rss_before = rss_kib(node_pid).ok_or("cannot read the node's RSS")?;

    eprintln!("  opening {wanted} idle sockets to node A...");
    let url = format!("{}/v1/ws", ws_base(&stack.node_a));
    let config = WebSocketConfig::default().read_buffer_size(CLIENT_BUFFER).write_buffer_size(0);
    let ended = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let results = futures_util::stream::iter(0..wanted)
        .map(|i| {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i / SOCKETS_PER_SOURCE) as u8));
            let (url, token) = (url.clone(), users[i / SOCKETS_PER_USER].token.clone());
            let ended = ended.clone();
            async move {
                let mut socket = open_socket(&url, &token, Some(source), Some(config)).await?;
                // Reading answers the server's pings; the socket stays until its task is aborted.
                Ok::<_, String>(tokio::spawn(async move {
                    while let Some(Ok(_)) = socket.next().await {}
                    ended.fetch_add(1, Ordering::Relaxed);
                }))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let connect_secs = started.elapsed().as_secs_f64();
    let failures: Vec<String> = results.iter().filter_map(|r| r.as_ref().err().cloned()).collect();
    let sockets = SocketTasks(results.into_iter().filter_map(Result::ok).collect());
    let opened = sockets.0.len();
    tokio::time::sleep(settle).await;
    let lost_while_idle = ended.load(Ordering::Relaxed);
    let connected = opened - lost_while_idle;
    let rss_after = rss_kib(node_pid).ok_or("cannot read the node's RSS")?;
    eprintln!(
        "  {connected} sockets open ({} refused) in {connect_secs:.1} s; RSS {rss_before} -> {rss_after} KiB",
        failures.len()
    );
    // Dropping the sockets closes them; the node gets time to see the closes before what follows.
    drop(sockets);
    tokio::time::sleep(settle).await;

    let per_connection = rss_after.saturating_sub(rss_before) as f64 / connected.max(1) as f64;
    let figures = vec![
        Figure::new(format!("node RSS per idle connection ({connected} sockets)"), per_connection, "KiB")
            .target(Target::AtMost(16.0))
            .beside("KiB node RSS with zero connections", rss_before as f64),
        Figure::new("idle sockets held", connected as f64, "").beside("sockets wanted", p.s4_connections as f64),
        Figure::new("socket opens/s", opened as f64 / connect_secs.max(1e-3), "/s"),
    ];
    let mut problems = Vec::new();
    if let Some(first) = failures.first() {
        problems.push(format!("{} sockets could not open; first: {first}", failures.len()));
    }
    if lost_while_idle > 0 {
        problems.push(format!("{lost_while_idle} idle sockets were closed by the server"));
    }
    let details = json!({
        "wanted": p.s4_connections, "fd_cap": cap, "open_files_limit_loadgen": own_limit, "open_files_limit_node": node_limit,
        "opened": opened, "refused": failures.len(), "closed_while_idle": lost_while_idle, "connect_secs": connect_secs,
        "users": users.len(), "rss_before_kib": rss_before, "rss_after_kib": rss_after, "kib_per_connection": per_connection,
    });
    Ok(Measured { figures, details, problems })
}
