//! Memory per idle WebSocket: open 5,000 connections to a server, wait until every one is
//! accepted and the server is quiet, and compare the server's `VmRSS` with the value before.
//!
//! Measured for the chat example (release) and the hand-written baseline, with every
//! connection in one room (the headline) and with a room per connection, and on request for
//! the framework bench server (`framework`: silent joins, no 10,000-connection cap; see
//! `common/framework.rs`). Clients connect from 127.0.0.2, 127.0.0.3, … in turn
//! (`common/net.rs`), so more than the ~28,000 connections one source address allows fit.
//!
//! Left out, with a note: the chat example above 10,000 sockets (its connection limit is the
//! framework default, 10,000), the chat example with all sockets in one room above 5,000 (the
//! chat protocol announces every join to the whole room: 10,000 joins would be 50 million
//! deliveries), the baseline with a room each above 10,000 (48 KiB per room), and any count
//! the open-files limit does not allow (both this process and the server need one file per
//! socket; the hard limit can only be raised with CAP_SYS_RESOURCE).
//!
//! Bars: at most 4 KiB of server RSS per idle socket; 50,000 idle sockets held by one process.
//!
//! `cargo bench --bench idle_memory` (see docs/performance.md). `BENCH_RUNS=N` changes the
//! number of runs per configuration (default 3); `IDLE_CONNECTIONS=N` the connection count;
//! `IDLE_ONLY=chat` (or another name) or `IDLE_SERVERS=chat,baseline,framework` the servers;
//! `IDLE_ROOMS=one` (or `per-conn`) one layout only; `IDLE_LAYER=redis` runs the chat example
//! on the Redis layer (a redis-server started here on a free port) instead of in memory.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use channels::redis::testing::RedisServer;
use common::server::{self, Kind, ServerProcess};
use common::stats::median;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

/// The bar for the framework's servers.
const BAR_KIB: f64 = 4.0;
/// Idle sockets one process must hold.
const BAR_HELD: usize = 50_000;
/// The chat example's connection limit (the framework's default `max_connections`).
const CHAT_MAX_CONNECTIONS: usize = 10_000;
const CONNECT_CONCURRENCY: usize = 32;
/// How long connecting plus draining the join events may take.
const SETUP_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rooms {
    One,
    PerConnection,
}

struct Measurement {
    before_kib: u64,
    after_kib: u64,
    frames: u64,
    setup: Duration,
}

impl Measurement {
    fn per_connection_kib(&self, connections: usize) -> f64 {
        (self.after_kib as f64 - self.before_kib as f64) / connections as f64
    }
}

fn main() -> ExitCode {
    if common::baseline::run_if_requested() || !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    let connections = common::env_number("IDLE_CONNECTIONS", 5000);
    let runs = common::runs();
    println!("== idle memory: {connections} idle WebSocket connections, server VmRSS after minus before");
    let limit = common::open_files_limit();
    if let Some(limit) = limit.filter(|&limit| (connections as u64) + 100 > limit) {
        println!(
            "cannot open {connections} sockets: the open-files limit is {limit} (hard limit; this process and the server each need one file per socket, and raising the hard limit needs CAP_SYS_RESOURCE)"
        );
        println!("bar: {BAR_HELD} idle sockets held by one process: not measured here (open-files limit {limit})");
        return ExitCode::SUCCESS;
    }
    let Some(chat) = server::prepare(connections as u64 + 200) else { return ExitCode::FAILURE };
    println!(
        "{runs} runs per configuration; cpus: {}; pinned: {}; open-files limit {} (server inherits it); clients from 127.0.0.2.. in turn",
        common::cpus(),
        server::pinning(),
        limit.map_or("unknown".to_owned(), |l| l.to_string())
    );
    let kinds: Vec<Kind> = match (std::env::var("IDLE_SERVERS"), std::env::var("IDLE_ONLY")) {
        (Ok(list), _) => list.split(',').filter_map(Kind::from_name).collect(),
        (_, Ok(only)) => Kind::from_name(&only).into_iter().collect(),
        _ => vec![Kind::Chat, Kind::Baseline],
    };
    // The chat example's layer: in memory, or a Redis of its own for this bench.
    let redis = match std::env::var("IDLE_LAYER").as_deref() {
        Ok("redis") => Some(RedisServer::start()),
        Ok("memory") | Err(_) => None,
        Ok(other) => {
            println!("IDLE_LAYER must be memory or redis, not {other:?}");
            return ExitCode::FAILURE;
        }
    };
    let chat_args: Vec<String> = redis.iter().flat_map(|redis| ["--layer".to_owned(), redis.url()]).collect();
    for kind in &kinds {
        match kind {
            Kind::Chat if redis.is_some() => {
                println!("  chat = examples/chat (release, Redis layer: a redis-server started here)")
            }
            _ => println!("  {}", kind.legend()),
        }
    }
    let layouts: Vec<Rooms> = match std::env::var("IDLE_ROOMS").as_deref() {
        Ok("one") => vec![Rooms::One],
        Ok("per-conn") => vec![Rooms::PerConnection],
        _ => vec![Rooms::One, Rooms::PerConnection],
    };
    println!(
        "{:<9} {:<15} {:>3} {:>12} {:>12} {:>10} {:>12} {:>8}",
        "server", "rooms", "run", "RSS before", "RSS after", "KiB/conn", "frames recv", "setup s"
    );
    let mut summary = Vec::new();
    for rooms in layouts {
        let mut per_kind: Vec<(Kind, Vec<f64>)> = kinds
            .iter()
            .filter(|&&kind| match skip_reason(kind, rooms, connections) {
                Some(reason) => {
                    println!("note: {} with {} left out: {reason}", kind.name(), rooms_name(rooms));
                    false
                }
                None => true,
            })
            .map(|&kind| (kind, Vec::new()))
            .collect();
        for round in 1..=runs {
            for (kind, values) in &mut per_kind {
                let args: &[String] = if *kind == Kind::Chat { &chat_args } else { &[] };
                let result = ServerProcess::start_with(*kind, &chat, args).and_then(|server| {
                    let measured = measure(&server, connections, rooms);
                    let log = server.stop();
                    for line in &log.first {
                        println!("          server log: {line}");
                    }
                    measured
                });
                let rooms_name = rooms_name(rooms);
                match result {
                    Ok(m) => {
                        let per = m.per_connection_kib(connections);
                        println!(
                            "{:<9} {:<15} {:>3} {:>8} KiB {:>8} KiB {:>10.2} {:>12} {:>8.1}",
                            kind.name(),
                            rooms_name,
                            round,
                            m.before_kib,
                            m.after_kib,
                            per,
                            m.frames,
                            m.setup.as_secs_f64()
                        );
                        values.push(per);
                    }
                    Err(e) => println!("{:<9} {:<15} {:>3} failed: {e}", kind.name(), rooms_name, round),
                }
            }
        }
        for (kind, values) in per_kind {
            let held = values.len();
            summary.push((kind, rooms, median(&values), held));
        }
    }
    println!("-- medians of {runs} runs (KiB of server RSS per idle connection)");
    for (kind, rooms, value, _) in &summary {
        let rooms = match rooms {
            Rooms::One => "all in one room",
            Rooms::PerConnection => "one room each",
        };
        println!("{:<9} {:<16} {:>8.2} KiB", kind.name(), rooms, value);
    }
    for (kind, rooms, value, held) in &summary {
        if kind.is_bare() || *kind == Kind::Django {
            continue;
        }
        println!(
            "bar: <= {BAR_KIB} KiB server RSS per idle socket ({}, {}, {connections} sockets): {value:.2} KiB -> {}",
            kind.name(),
            rooms_name(*rooms),
            common::verdict(*value <= BAR_KIB)
        );
        if connections >= BAR_HELD {
            println!(
                "bar: {BAR_HELD} idle sockets held by one process ({}, {}): {held} of {runs} runs held all {connections} -> {}",
                kind.name(),
                rooms_name(*rooms),
                common::verdict(*held == runs)
            );
        }
    }
    ExitCode::SUCCESS
}

fn rooms_name(rooms: Rooms) -> &'static str {
    match rooms {
        Rooms::One => "one room",
        Rooms::PerConnection => "room per socket",
    }
}

/// Why a configuration is not run, if it is not.
fn skip_reason(kind: Kind, rooms: Rooms, connections: usize) -> Option<&'static str> {
    match (kind, rooms) {
        (Kind::Chat, _) if connections > CHAT_MAX_CONNECTIONS => {
            Some("the chat example accepts at most 10,000 sockets (the framework default); see framework")
        }
        (Kind::Chat, Rooms::One) if connections > 5_000 => {
            Some("the chat protocol announces each join to the room (n^2/2 deliveries); see framework")
        }
        (Kind::Baseline | Kind::BaselineBatched, Rooms::PerConnection) if connections > 10_000 => {
            Some("each baseline room preallocates 1,024 broadcast slots (~48 KiB)")
        }
        (Kind::Django, _) => Some("not an idle-memory contender here"),
        _ => None,
    }
}

fn measure(server: &ServerProcess, connections: usize, rooms: Rooms) -> Result<Measurement, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before_kib = server.rss_kib().ok_or("could not read the server's VmRSS")?;
        let start = Instant::now();
        let connected = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let frames = Arc::new(AtomicU64::new(0));
        let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::with_capacity(connections);
        for index in 0..connections {
            let room = match rooms {
                Rooms::One => "idle".to_owned(),
                Rooms::PerConnection => format!("idle{index}"),
            };
            let addr = server.addr();
            let url = format!("ws://{addr}/ws/chat/{room}/?user=u{index}");
            let (connected, failed, frames, permits) =
                (connected.clone(), failed.clone(), frames.clone(), permits.clone());
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let attempt = {
                    let _permit = permits.acquire().await;
                    common::net::connect(addr, &url).await
                };
                let Ok(mut ws) = attempt else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                connected.fetch_add(1, Ordering::Relaxed);
                // Idle: read (and drop) whatever the server sends until told to stop.
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        frame = ws.next() => match frame {
                            // Pings (every 20 s per idle socket on the chat server) do not count.
                            Some(Ok(Message::Text(_))) => {
                                frames.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(Ok(_)) => {}
                            _ => break,
                        },
                    }
                }
                drop(ws);
            }));
        }
        let finish = |stop_tx: watch::Sender<bool>, tasks: Vec<tokio::task::JoinHandle<()>>| {
            let _ = stop_tx.send(true);
            tasks.iter().for_each(|task| task.abort());
        };
        while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < connections {
            if start.elapsed() > SETUP_LIMIT {
                finish(stop_tx, tasks);
                return Err(format!("only {} connections were accepted", connected.load(Ordering::Relaxed)));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if failed.load(Ordering::Relaxed) > 0 {
            let failures = failed.load(Ordering::Relaxed);
            finish(stop_tx, tasks);
            return Err(format!("{failures} of {connections} connections failed"));
        }
        // Quiet: no frame arrived and the server used < 2 % of a CPU for a whole second.
        let mut last = (frames.load(Ordering::Relaxed), server.cpu(), Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = (frames.load(Ordering::Relaxed), server.cpu(), Instant::now());
            if now.0 != last.0 || now.1.saturating_sub(last.1) > now.2.duration_since(last.2) / 50 {
                last = now;
            } else if now.2.duration_since(last.2) >= Duration::from_secs(1) {
                break;
            }
            if start.elapsed() > SETUP_LIMIT {
                finish(stop_tx, tasks);
                return Err("the server did not become quiet".into());
            }
        }
        let setup = start.elapsed();
        let after_kib = server.rss_kib().ok_or("could not read the server's VmRSS")?;
        let frames = frames.load(Ordering::Relaxed);
        finish(stop_tx, tasks);
        Ok(Measurement { before_kib, after_kib, frames, setup })
    })
}
