//! `group_send` to a group of 10,000: how long from one send until every member has it.
//!
//! Two variants:
//!
//! - **in-process**: an `InMemoryChannelLayer` (default settings), 10,000 channels in one
//!   group, each with a task that keeps receiving (all on one current-thread tokio runtime,
//!   pinned to CPU 1). Each round waits until every task is parked in `receive`, then times
//!   one `group_send` until the last of the 10,000 receives has completed. This is the bar.
//! - **WebSocket**: 10,000 clients in one room on a server process (pinned to CPU 0); client 0
//!   sends one message, and the time runs until the last of the 10,000 clients (pinned to CPU
//!   1, one thread) has read it. The chat example announces every join to the whole room
//!   (10,000 joins would be 50 million deliveries before the test starts) and accepts at most
//!   10,000 sockets, so the framework's side is the bench server of `common/framework.rs`:
//!   the same framework and protocol, joining silently. Against the bare baseline, plain and
//!   batched. This includes 10,000 socket writes and 10,000 client reads.
//!
//! Bar: delivery to all 10,000 in at most 50 ms (p99 of the rounds).
//!
//! `cargo bench --bench group_send_10k` (see docs/performance.md). `BENCH_RUNS=N` changes the
//! number of runs per server (default 3); `GROUP_MEMBERS=N` the group size (default 10,000);
//! `GROUP_SENDS=N` the rounds per run (default 20 over WebSocket, 50 in-process);
//! `BENCH_SERVERS=framework,baseline,batched` the WebSocket servers.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use channels::layers::{ChannelLayer, LayerConfig, Message};
use channels::memory::InMemoryChannelLayer;
use common::server::{self, Kind, ServerProcess};
use common::stats::{median, percentile, si};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite;

const BAR_MS: f64 = 50.0;
const CONNECT_CONCURRENCY: usize = 64;
const SETUP_LIMIT: Duration = Duration::from_secs(180);
/// Longest one round may take before it counts as incomplete.
const ROUND_LIMIT: Duration = Duration::from_secs(10);

/// One run: the completion time of every round.
struct Rounds {
    members: usize,
    /// Time from the send to the last member's receipt; `None` for a round that timed out.
    completions: Vec<Option<Duration>>,
    delivered: u64,
    server_cpu: Duration,
    setup: Duration,
}

impl Rounds {
    fn sorted_us(&self) -> Vec<u32> {
        let mut us: Vec<u32> =
            self.completions.iter().flatten().map(|d| d.as_micros().min(u128::from(u32::MAX)) as u32).collect();
        us.sort_unstable();
        us
    }

    fn p(&self, p: f64) -> f64 {
        f64::from(percentile(&self.sorted_us(), p)) / 1e3
    }

    fn max_ms(&self) -> f64 {
        self.sorted_us().last().map_or(f64::NAN, |&us| f64::from(us) / 1e3)
    }

    fn lost(&self) -> u64 {
        (self.completions.len() * self.members) as u64 - self.delivered
    }

    /// Deliveries per second within a round (members / median completion).
    fn per_second(&self) -> f64 {
        self.members as f64 / (self.p(50.0) / 1e3).max(1e-9)
    }

    fn cpu_ms_per_round(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e3 / self.completions.len().max(1) as f64
    }
}

fn main() -> ExitCode {
    if common::baseline::run_if_requested() || !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    let members = common::env_number("GROUP_MEMBERS", 10_000);
    let Some(chat) = server::prepare(members as u64 + 200) else { return ExitCode::FAILURE };
    let runs = common::runs();
    println!("== group_send to {members} members: time from one send until all have received it");
    println!(
        "{runs} runs; cpus: {}; pinned: {}",
        common::cpus(),
        if server::pinning() { "server CPU 0, load generator CPU 1" } else { "no (taskset missing)" }
    );

    // In-process.
    let sends = common::env_number("GROUP_SENDS", 50);
    println!("-- in-process: InMemoryChannelLayer, {members} channels, {sends} rounds per run, current-thread runtime");
    let mut in_process = Vec::new();
    for round in 1..=runs {
        match in_process_run(members, sends) {
            Ok(r) => {
                println!(
                    "in-process run {round}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, delivered {}/{}",
                    r.p(50.0),
                    r.p(99.0),
                    r.max_ms(),
                    r.delivered,
                    r.completions.len() * members
                );
                in_process.push(r);
            }
            Err(e) => println!("in-process run {round} failed: {e}"),
        }
    }

    // Over WebSocket.
    let sends = common::env_number("GROUP_SENDS", 20);
    let kinds: Vec<Kind> = match std::env::var("BENCH_SERVERS") {
        Ok(list) => list.split(',').filter_map(Kind::from_name).filter(|&k| k != Kind::Django).collect(),
        Err(_) => vec![Kind::Framework, Kind::Baseline, Kind::BaselineBatched],
    };
    let kinds: Vec<Kind> = kinds
        .into_iter()
        .filter(|&kind| {
            let keep = kind != Kind::Chat || members < 1000;
            if !keep {
                println!("note: chat left out (join announcements are O(n^2) and it caps sockets at 10,000); framework stands for it");
            }
            keep
        })
        .collect();
    println!("-- over WebSocket: {members} clients in one room, client 0 sends, {sends} rounds per run");
    for kind in &kinds {
        println!("  {}", kind.legend());
    }
    println!(
        "{:<9} {:>3} {:>9} {:>9} {:>9} {:>17} {:>8} {:>13} {:>8}",
        "server", "run", "p50 ms", "p99 ms", "max ms", "delivered", "lost", "srv CPU/round", "setup s"
    );
    let mut results: Vec<(Kind, Vec<Rounds>)> = kinds.iter().map(|&k| (k, Vec::new())).collect();
    for round in 1..=runs {
        for (kind, all) in &mut results {
            let result = ServerProcess::start(*kind, &chat).and_then(|server| {
                let rounds = websocket_run(&server, members, sends);
                let log = server.stop();
                for line in log.first.iter().take(3) {
                    println!("          server log: {line}");
                }
                rounds
            });
            match result {
                Ok(r) => {
                    println!(
                        "{:<9} {:>3} {:>9.2} {:>9.2} {:>9.2} {:>17} {:>8} {:>10.2} ms {:>8.1}",
                        kind.name(),
                        round,
                        r.p(50.0),
                        r.p(99.0),
                        r.max_ms(),
                        format!("{}/{}", r.delivered, r.completions.len() * members),
                        r.lost(),
                        r.cpu_ms_per_round(),
                        r.setup.as_secs_f64()
                    );
                    all.push(r);
                }
                Err(e) => println!("{:<9} {:>3} failed: {e}", kind.name(), round),
            }
        }
    }

    let med = |rounds: &[Rounds], f: &dyn Fn(&Rounds) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    println!("-- medians of {runs} runs");
    let mut lines = vec![("in-process", in_process.as_slice())];
    lines.extend(results.iter().map(|(kind, r)| (kind.name(), r.as_slice())));
    for (name, rounds) in &lines {
        println!(
            "{:<10} completion p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} deliveries/s within a round; lost {}; server CPU {:.2} ms per round",
            name,
            med(rounds, &|r| r.p(50.0)),
            med(rounds, &|r| r.p(99.0)),
            med(rounds, &|r| r.max_ms()),
            si(med(rounds, &Rounds::per_second)),
            rounds.iter().map(Rounds::lost).sum::<u64>(),
            med(rounds, &Rounds::cpu_ms_per_round),
        );
    }
    let of = |kind: Kind| results.iter().find(|(k, _)| *k == kind).map(|(_, r)| r.as_slice()).filter(|r| !r.is_empty());
    if let Some(ours) = of(Kind::Framework) {
        for reference in [Kind::Baseline, Kind::BaselineBatched] {
            let Some(theirs) = of(reference) else { continue };
            println!(
                "framework/{}: completion p50 {:.2} (lower is better), server CPU per round {:.2}",
                reference.name(),
                med(ours, &|r| r.p(50.0)) / med(theirs, &|r| r.p(50.0)),
                med(ours, &Rounds::cpu_ms_per_round) / med(theirs, &Rounds::cpu_ms_per_round),
            );
        }
    }
    if !in_process.is_empty() {
        let p99 = med(&in_process, &|r| r.p(99.0));
        let lost: u64 = in_process.iter().map(Rounds::lost).sum();
        println!(
            "bar: in-memory group_send to {members} delivered to all in <= {BAR_MS} ms (p99 of rounds): {p99:.2} ms, {lost} lost -> {}",
            common::verdict(p99 <= BAR_MS && lost == 0)
        );
    }
    if let Some(ours) = of(Kind::Framework) {
        let p99 = med(ours, &|r| r.p(99.0));
        println!(
            "bar (end to end over WebSocket, framework): all {members} received in <= {BAR_MS} ms (p99 of rounds): {p99:.2} ms -> {}",
            common::verdict(p99 <= BAR_MS)
        );
    }
    ExitCode::SUCCESS
}

/// The in-process variant: one run of `sends` rounds.
fn in_process_run(members: usize, sends: usize) -> Result<Rounds, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        let setup_start = Instant::now();
        let layer = Arc::new(InMemoryChannelLayer::new(LayerConfig::default()));
        let base = Instant::now();
        let received = Arc::new(AtomicUsize::new(0));
        let last_us = Arc::new(AtomicU64::new(0));
        let waiting = Arc::new(AtomicUsize::new(0));
        let all_in = Arc::new(Notify::new());
        let mut tasks = Vec::with_capacity(members);
        for _ in 0..members {
            let channel = layer.new_channel("specific").await.map_err(|e| e.to_string())?;
            layer.group_add("big", &channel).await.map_err(|e| e.to_string())?;
            let (layer, received, last_us, waiting, all_in) =
                (layer.clone(), received.clone(), last_us.clone(), waiting.clone(), all_in.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    waiting.fetch_add(1, Ordering::Relaxed);
                    if layer.receive(&channel).await.is_err() {
                        break;
                    }
                    last_us.fetch_max(base.elapsed().as_micros() as u64, Ordering::Relaxed);
                    if received.fetch_add(1, Ordering::AcqRel) + 1 == members {
                        all_in.notify_one();
                    }
                }
            }));
        }
        let setup = setup_start.elapsed();
        let message =
            Message::new(&serde_json::json!({"type": "chat.message", "user": "u0", "text": "hello", "ts": 0.0}))
                .map_err(|e| e.to_string())?;
        let mut completions = Vec::with_capacity(sends);
        let mut delivered = 0u64;
        for _ in 0..sends {
            // Every receiver parked in `receive` again.
            while waiting.load(Ordering::Relaxed) < members {
                tokio::task::yield_now().await;
            }
            waiting.store(0, Ordering::Relaxed);
            received.store(0, Ordering::Relaxed);
            let sent_us = base.elapsed().as_micros() as u64;
            layer.group_send("big", message.clone()).await.map_err(|e| e.to_string())?;
            let done = tokio::time::timeout(ROUND_LIMIT, async {
                while received.load(Ordering::Acquire) < members {
                    all_in.notified().await;
                }
            })
            .await;
            delivered += received.load(Ordering::Acquire) as u64;
            completions.push(
                done.ok().map(|_| Duration::from_micros(last_us.load(Ordering::Relaxed).saturating_sub(sent_us))),
            );
        }
        tasks.iter().for_each(|task| task.abort());
        Ok(Rounds { members, completions, delivered, server_cpu: Duration::ZERO, setup })
    })
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow, default)]
    text: Option<&'a str>,
}

/// The WebSocket variant: one run of `sends` rounds against `server`.
fn websocket_run(server: &ServerProcess, members: usize, sends: usize) -> Result<Rounds, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        let base = Instant::now();
        let setup_start = Instant::now();
        let addr = server.addr();
        let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let connected = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let round = Arc::new(AtomicUsize::new(usize::MAX));
        let received = Arc::new(AtomicUsize::new(0));
        let last_us = Arc::new(AtomicU64::new(0));
        let all_in = Arc::new(Notify::new());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (send_tx, send_rx) = mpsc::channel::<String>(4);
        let mut send_rx = Some(send_rx);
        let mut tasks = Vec::with_capacity(members);
        for index in 0..members {
            let url = format!("ws://{addr}/ws/chat/big/?user=u{index}");
            let (permits, connected, failed, round, received, last_us, all_in) = (
                permits.clone(),
                connected.clone(),
                failed.clone(),
                round.clone(),
                received.clone(),
                last_us.clone(),
                all_in.clone(),
            );
            let mut stop = stop_rx.clone();
            let mut outbox = send_rx.take();
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
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        text = async { match outbox.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                            let Some(text) = text else { break };
                            if ws.send(tungstenite::Message::text(text)).await.is_err() {
                                break;
                            }
                        }
                        frame = ws.next() => {
                            let text = match frame {
                                Some(Ok(tungstenite::Message::Text(text))) => text,
                                Some(Ok(_)) => continue,
                                _ => break,
                            };
                            let Ok(incoming) = serde_json::from_str::<Incoming<'_>>(text.as_str()) else { continue };
                            if incoming.kind != "chat.message" {
                                continue;
                            }
                            let Some(k) = incoming.text.and_then(|t| t.strip_prefix("g ")).and_then(|k| k.parse::<usize>().ok()) else { continue };
                            if k != round.load(Ordering::Acquire) {
                                continue;
                            }
                            last_us.fetch_max(base.elapsed().as_micros() as u64, Ordering::Relaxed);
                            if received.fetch_add(1, Ordering::AcqRel) + 1 == members {
                                all_in.notify_one();
                            }
                        }
                    }
                }
            }));
        }
        let finish = |stop_tx: &watch::Sender<bool>, tasks: &[tokio::task::JoinHandle<()>]| {
            let _ = stop_tx.send(true);
            tasks.iter().for_each(|task| task.abort());
        };
        while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < members {
            if setup_start.elapsed() > SETUP_LIMIT {
                finish(&stop_tx, &tasks);
                return Err(format!("only {} of {members} connected", connected.load(Ordering::Relaxed)));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if failed.load(Ordering::Relaxed) > 0 {
            finish(&stop_tx, &tasks);
            return Err(format!("{} of {members} failed to connect", failed.load(Ordering::Relaxed)));
        }
        // Let the server finish the joins before the first round.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let setup = setup_start.elapsed();
        let cpu_before = server.cpu();
        let mut completions = Vec::with_capacity(sends);
        let mut delivered = 0u64;
        for k in 0..sends {
            received.store(0, Ordering::Release);
            round.store(k, Ordering::Release);
            let sent_us = base.elapsed().as_micros() as u64;
            if send_tx.send(format!("g {k}")).await.is_err() {
                finish(&stop_tx, &tasks);
                return Err("the sending client is gone".into());
            }
            let done = tokio::time::timeout(ROUND_LIMIT, async {
                while received.load(Ordering::Acquire) < members {
                    all_in.notified().await;
                }
            })
            .await;
            delivered += received.load(Ordering::Acquire) as u64;
            completions.push(
                done.ok().map(|_| Duration::from_micros(last_us.load(Ordering::Relaxed).saturating_sub(sent_us))),
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let server_cpu = server.cpu().saturating_sub(cpu_before);
        finish(&stop_tx, &tasks);
        Ok(Rounds { members, completions, delivered, server_cpu, setup })
    })
}
