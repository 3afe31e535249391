//! Memory per idle WebSocket: open 5,000 connections to a server, wait until every one is
//! accepted and the server is quiet, and compare the server's `VmRSS` with the value before.
//!
//! Measured for the chat example (release) and the hand-written baseline, with every
//! connection in one room (the headline) and with a room per connection.
//! `cargo bench --bench idle_memory` (see docs/performance.md). `BENCH_RUNS=N` changes the
//! number of runs per configuration (default 3); `IDLE_CONNECTIONS=N` the connection count;
//! `IDLE_ONLY=chat` (or `baseline`) measures one server only.

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::server::{self, Kind, ServerProcess};
use common::stats::median;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

/// The bar for the chat example.
const BAR_KIB: f64 = 8.0;
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
    let Some(chat) = server::prepare(connections as u64 + 200) else { return ExitCode::FAILURE };
    let runs = common::runs();
    println!("== idle memory: {connections} idle WebSocket connections, server VmRSS after minus before");
    println!("{runs} runs per configuration; cpus: {}; pinned: {}", common::cpus(), server::pinning());
    println!(
        "{:<9} {:<9} {:>3} {:>12} {:>12} {:>10} {:>12} {:>8}",
        "server", "rooms", "run", "RSS before", "RSS after", "KiB/conn", "frames recv", "setup s"
    );
    let mut summary = Vec::new();
    let only = std::env::var("IDLE_ONLY").unwrap_or_default();
    for rooms in [Rooms::One, Rooms::PerConnection] {
        let mut per_kind: Vec<(Kind, Vec<f64>)> = [Kind::Chat, Kind::Baseline]
            .into_iter()
            .filter(|kind| only.is_empty() || only == kind.name())
            .map(|kind| (kind, Vec::new()))
            .collect();
        for round in 1..=runs {
            for (kind, values) in &mut per_kind {
                let result = ServerProcess::start(*kind, &chat).and_then(|server| {
                    let measured = measure(&server, connections, rooms);
                    let log = server.stop();
                    for line in &log.first {
                        println!("          server log: {line}");
                    }
                    measured
                });
                let rooms_name = match rooms {
                    Rooms::One => "one",
                    Rooms::PerConnection => "per-conn",
                };
                match result {
                    Ok(m) => {
                        let per = m.per_connection_kib(connections);
                        println!(
                            "{:<9} {:<9} {:>3} {:>8} KiB {:>8} KiB {:>10.2} {:>12} {:>8.1}",
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
                    Err(e) => println!("{:<9} {:<9} {:>3} failed: {e}", kind.name(), rooms_name, round),
                }
            }
        }
        for (kind, values) in per_kind {
            summary.push((kind, rooms, median(&values)));
        }
    }
    println!("-- medians of {runs} runs (KiB of server RSS per idle connection)");
    for (kind, rooms, value) in &summary {
        let rooms = match rooms {
            Rooms::One => "all in one room",
            Rooms::PerConnection => "one room each",
        };
        let verdict = match kind {
            Kind::Chat if *value <= BAR_KIB => format!("  (bar <= {BAR_KIB} KiB: met)"),
            Kind::Chat => format!("  (bar <= {BAR_KIB} KiB: MISSED)"),
            Kind::Baseline => String::new(),
        };
        println!("{:<9} {:<16} {:>8.2} KiB{}", kind.name(), rooms, value, verdict);
    }
    ExitCode::SUCCESS
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
            let url = format!("ws://{}/ws/chat/{room}/?user=u{index}", server.addr());
            let (connected, failed, frames, permits) =
                (connected.clone(), failed.clone(), frames.clone(), permits.clone());
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let attempt = {
                    let _permit = permits.acquire().await;
                    common::load::connect_client(&url).await
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
