//! Connect storm: open N WebSockets (default 5,000) with C handshakes in flight (default 64)
//! and measure handshakes per second, from the first TCP connect to the last `101 Switching
//! Protocols`; the chat example against the hand-written baseline and the framework bench
//! server (silent joins).
//!
//! Each socket joins a room of its own (`storm{i}`), so the chat protocol's join
//! announcements cost one delivery per socket, not the n^2/2 of one shared room. Sockets stay
//! open until all are connected (so the server holds N at the end), then all close. Clients
//! connect from 127.0.0.2, 127.0.0.3, … in turn (`common/net.rs`).
//!
//! Bar (the general aim, as it sets none for this scenario): chat handshakes/s at
//! least 0.95 x the bare baseline's.
//!
//! `cargo bench --bench connect_storm` (see docs/performance.md). `BENCH_RUNS=N` changes the
//! number of runs per server (default 3); `STORM_CONNECTIONS=N` and `STORM_CONCURRENCY=C` the
//! storm; `BENCH_SERVERS=chat,baseline,framework` the servers.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::server::{self, Kind, ServerProcess};
use common::stats::{median, percentile, si};
use tokio::sync::Semaphore;

/// Longest a storm may take before the run is reported as failed.
const STORM_LIMIT: Duration = Duration::from_secs(120);
const BAR_RATIO: f64 = 0.95;

struct Storm {
    connected: usize,
    failed: usize,
    first_error: Option<String>,
    wall: Duration,
    server_cpu: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    rss_per_socket_kib: f64,
}

impl Storm {
    fn per_second(&self) -> f64 {
        self.connected as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn cpu_us_per_handshake(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.connected.max(1) as f64
    }
}

fn main() -> ExitCode {
    if common::baseline::run_if_requested() || !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    let connections = common::env_number("STORM_CONNECTIONS", 5000);
    let concurrency = common::env_number("STORM_CONCURRENCY", 64);
    let Some(chat) = server::prepare(connections as u64 + 200) else { return ExitCode::FAILURE };
    let runs = common::runs();
    let kinds: Vec<Kind> = match std::env::var("BENCH_SERVERS") {
        Ok(list) => list.split(',').filter_map(Kind::from_name).filter(|&k| k != Kind::Django).collect(),
        Err(_) => vec![Kind::Chat, Kind::Baseline, Kind::Framework],
    };
    println!("== connect storm: {connections} WebSocket handshakes, {concurrency} in flight, a room per socket");
    println!(
        "{runs} runs per server, alternating; cpus: {}; pinned: {}",
        common::cpus(),
        if server::pinning() { "server CPU 0, load generator CPU 1" } else { "no (taskset missing)" }
    );
    for kind in &kinds {
        println!("  {}", kind.legend());
    }
    println!(
        "{:<9} {:>3} {:>13} {:>8} {:>12} {:>8} {:>8} {:>8} {:>9} {:>12} {:>10}",
        "server",
        "run",
        "connected",
        "wall s",
        "handshakes/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "srv CPU s",
        "CPU µs/hs",
        "KiB/socket"
    );
    let mut results: Vec<(Kind, Vec<Storm>)> = kinds.iter().map(|&k| (k, Vec::new())).collect();
    for round in 1..=runs {
        for (kind, storms) in &mut results {
            let result = ServerProcess::start(*kind, &chat).and_then(|server| {
                let storm = storm(&server, connections, concurrency);
                let log = server.stop();
                for line in log.first.iter().take(3) {
                    println!("          server log: {line}");
                }
                storm
            });
            match result {
                Ok(s) => {
                    println!(
                        "{:<9} {:>3} {:>13} {:>8.3} {:>12} {:>8.2} {:>8.2} {:>8.2} {:>9.3} {:>12.1} {:>10.2}",
                        kind.name(),
                        round,
                        format!("{}/{}", s.connected, connections),
                        s.wall.as_secs_f64(),
                        si(s.per_second()),
                        s.p50.as_secs_f64() * 1e3,
                        s.p99.as_secs_f64() * 1e3,
                        s.max.as_secs_f64() * 1e3,
                        s.server_cpu.as_secs_f64(),
                        s.cpu_us_per_handshake(),
                        s.rss_per_socket_kib,
                    );
                    if let Some(e) = &s.first_error {
                        println!("          {} failed, first: {e}", s.failed);
                    }
                    storms.push(s);
                }
                Err(e) => println!("{:<9} {:>3} failed: {e}", kind.name(), round),
            }
        }
    }
    let med = |storms: &[Storm], f: fn(&Storm) -> f64| median(&storms.iter().map(f).collect::<Vec<_>>());
    println!("-- medians of {runs} runs");
    for (kind, storms) in &results {
        println!(
            "{:<9} {} handshakes/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, server CPU {:.1} µs per handshake, {:.2} KiB server RSS per open socket, failed max {}",
            kind.name(),
            si(med(storms, Storm::per_second)),
            med(storms, |s| s.p50.as_secs_f64() * 1e3),
            med(storms, |s| s.p99.as_secs_f64() * 1e3),
            med(storms, |s| s.max.as_secs_f64() * 1e3),
            med(storms, Storm::cpu_us_per_handshake),
            med(storms, |s| s.rss_per_socket_kib),
            storms.iter().map(|s| s.failed).max().unwrap_or(0),
        );
    }
    let of = |kind: Kind| results.iter().find(|(k, _)| *k == kind).map(|(_, s)| s.as_slice()).filter(|s| !s.is_empty());
    for contender in [Kind::Chat, Kind::Framework] {
        let (Some(ours), Some(bare)) = (of(contender), of(Kind::Baseline)) else { continue };
        let ratio = med(ours, Storm::per_second) / med(bare, Storm::per_second);
        let paired = median(&ours.iter().zip(bare).map(|(a, b)| a.per_second() / b.per_second()).collect::<Vec<_>>());
        println!(
            "{}/baseline: handshakes/s {ratio:.2} (median of per-run ratios {paired:.2}); server CPU per handshake {:.2}",
            contender.name(),
            med(ours, Storm::cpu_us_per_handshake) / med(bare, Storm::cpu_us_per_handshake)
        );
        if contender == Kind::Chat {
            println!(
                "bar: chat handshakes/s >= {BAR_RATIO} x baseline (the issue's general aim): {ratio:.2} -> {}",
                common::verdict(ratio >= BAR_RATIO)
            );
        }
    }
    ExitCode::SUCCESS
}

fn storm(server: &ServerProcess, connections: usize, concurrency: usize) -> Result<Storm, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_before = server.rss_kib().unwrap_or(0);
        let permits = Arc::new(Semaphore::new(concurrency));
        let addr = server.addr();
        let cpu_before = server.cpu();
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(connections);
        for index in 0..connections {
            let permits = permits.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire().await;
                let begun = Instant::now();
                let url = format!("ws://{addr}/ws/chat/storm{index}/?user=u{index}");
                common::net::connect(addr, &url).await.map(|ws| (ws, begun.elapsed()))
            }));
        }
        let mut open = Vec::with_capacity(connections);
        let mut latencies_us = Vec::with_capacity(connections);
        let (mut failed, mut first_error) = (0, None);
        let deadline = tokio::time::Instant::now() + STORM_LIMIT;
        for task in tasks {
            let abort = task.abort_handle();
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(Ok((ws, took)))) => {
                    latencies_us.push(took.as_micros().min(u128::from(u32::MAX)) as u32);
                    open.push(ws);
                }
                Ok(Ok(Err(e))) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
                Ok(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
                Err(_) => {
                    abort.abort();
                    failed += 1;
                    first_error.get_or_insert_with(|| "storm time limit".to_owned());
                }
            }
        }
        let wall = start.elapsed();
        let server_cpu = server.cpu().saturating_sub(cpu_before);
        // Let the server finish the work the handshakes started (connect hooks, joins).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_after = server.rss_kib().unwrap_or(0);
        let connected = open.len();
        drop(open);
        latencies_us.sort_unstable();
        let us = |v: u32| Duration::from_micros(u64::from(v));
        Ok(Storm {
            connected,
            failed,
            first_error,
            wall,
            server_cpu,
            p50: us(percentile(&latencies_us, 50.0)),
            p99: us(percentile(&latencies_us, 99.0)),
            max: us(latencies_us.last().copied().unwrap_or(0)),
            rss_per_socket_kib: (rss_after as f64 - rss_before as f64) / connected.max(1) as f64,
        })
    })
}
