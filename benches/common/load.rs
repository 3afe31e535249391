//! The chat load generator: N WebSocket clients in one room (or spread over several rooms),
//! some of which send numbered, timestamped messages with a bounded window, all of which
//! count and time deliveries.
//!
//! Phases: connect every client ([`super::lean_ws`]: a client that costs less per delivery
//! than the servers; bounded concurrency, from several loopback source addresses, see
//! [`super::net`]); warm up (the first client of each room sends `w K` until every client
//! has seen one, which also drains the join/presence events that were queued before it); settle; then the measured send phase, which ends when every expected delivery
//! arrived or the time limit passed. It runs on a single-threaded tokio runtime, pinned to one
//! CPU by the caller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::lean_ws::{Event, LeanWs, Received};
use super::profile::Profiler;
use super::server::ServerProcess;
use super::stats::percentile;
use super::stats::si;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Clients in all rooms together.
    pub clients: usize,
    /// Rooms: client `i` joins room `i % rooms` (named `{room}{i % rooms}`; just `{room}`
    /// when there is one).
    pub rooms: usize,
    /// Clients `0..senders` send.
    pub senders: usize,
    /// Messages each sender sends.
    pub messages_per_sender: usize,
    /// Messages a sender may have sent and not yet seen come back.
    pub window: usize,
    /// The room every client joins (the prefix of the room names when there are several).
    pub room: &'static str,
    /// Longest send phase; the run reports what was delivered by then.
    pub time_limit: Duration,
}

impl Scenario {
    /// The seed scenario in `room`: 20 clients, each sending 200 messages with at most 8 not
    /// yet seen back, within 60 s.
    pub fn seed(room: &'static str) -> Self {
        Self {
            clients: 20,
            rooms: 1,
            senders: 20,
            messages_per_sender: 200,
            window: 8,
            room,
            time_limit: Duration::from_secs(60),
        }
    }

    /// Every client receives every message sent in its room, its own included.
    pub fn expected(&self) -> u64 {
        let rooms = self.rooms.max(1);
        let per_message: usize = (0..rooms)
            .map(|room| {
                let members = (0..self.clients).filter(|i| i % rooms == room).count();
                let senders = (0..self.senders.min(self.clients)).filter(|i| i % rooms == room).count();
                members * senders
            })
            .sum();
        (per_message * self.messages_per_sender) as u64
    }

    /// The room of client `index`.
    fn room_of(&self, index: usize) -> String {
        if self.rooms <= 1 { self.room.to_owned() } else { format!("{}{}", self.room, index % self.rooms) }
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Deliveries the scenario should make: messages sent times the members of each room.
    pub expected: u64,
    /// Deliveries the clients received.
    pub delivered: u64,
    /// From the start of the send phase to the last delivery (or the time limit).
    pub wall: Duration,
    /// Server CPU time used during the send phase.
    pub server_cpu: Duration,
    /// The part of `server_cpu` spent in the kernel (socket I/O), from `stime` (10 ms ticks).
    pub server_system: Duration,
    /// The part spent in user space (the server's own code), from `utime` (10 ms ticks).
    pub server_user: Duration,
    /// Load-generator CPU time used during the send phase.
    pub client_cpu: Duration,
    /// Median delivery latency.
    pub p50: Duration,
    /// 99th-percentile delivery latency.
    pub p99: Duration,
    /// Slowest delivery.
    pub max: Duration,
    /// Connect plus warm-up time.
    pub setup: Duration,
    /// Frames other than `chat.message` seen (presence, join, leave).
    pub setup_events: u64,
    /// The send phase hit its time limit.
    pub timed_out: bool,
    /// Deliveries stopped arriving before all came ([`STALL`]); `wall` ends at the last one.
    pub stalled: bool,
    /// The server processes' summed `VmRSS` at the end of the send phase, in KiB.
    pub server_rss_kib: u64,
}

impl Outcome {
    /// Deliveries per second of wall time.
    pub fn per_second(&self) -> f64 {
        self.delivered as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Deliveries per second of server CPU time.
    pub fn per_server_cpu_second(&self) -> f64 {
        self.delivered as f64 / self.server_cpu.as_secs_f64().max(1e-9)
    }

    /// Deliveries that did not arrive.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }

    /// Share of the server's CPU time spent in the kernel, in percent.
    pub fn kernel_percent(&self) -> f64 {
        100.0 * self.server_system.as_secs_f64() / (self.server_system + self.server_user).as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    Warmup(u32),
    Go,
    Stop,
}

struct Shared {
    base: Instant,
    expected: u64,
    delivered: AtomicU64,
    /// Microseconds since `base` of the delivery that completed the run.
    done_at_us: AtomicU64,
    /// Microseconds since `base` of the latest delivery.
    last_at_us: AtomicU64,
    connected: AtomicUsize,
    failed: AtomicUsize,
    ready: AtomicUsize,
    setup_events: AtomicU64,
}

struct ClientReport {
    latencies_us: Vec<u32>,
    error: Option<String>,
}

const CONNECT_CONCURRENCY: usize = 32;
const CONNECT_LIMIT: Duration = Duration::from_secs(120);
const WARMUP_LIMIT: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_millis(300);
/// A send phase with no delivery for this long has lost what is missing (Django's layers drop
/// messages silently): it ends there, and its wall time runs to the last delivery.
pub const STALL: Duration = Duration::from_secs(5);

/// Where the clients connect and whose CPU time counts as the server's.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Client `i` connects to `addrs[i % addrs.len()]` (so client 0, the first sender, to the
    /// first address).
    pub addrs: Vec<SocketAddr>,
    /// Every server-side process (for the Redis runs: the chat processes and redis-server);
    /// their CPU times are summed.
    pub pids: Vec<u32>,
}

impl Targets {
    fn cpu(&self) -> Duration {
        self.pids.iter().map(|&pid| super::cpu_time(pid)).sum()
    }

    fn rss_kib(&self) -> u64 {
        self.pids.iter().filter_map(|&pid| super::rss_kib(pid)).sum()
    }

    fn user_system(&self) -> (Duration, Duration) {
        self.pids
            .iter()
            .map(|&pid| super::user_system_time(pid))
            .fold((Duration::ZERO, Duration::ZERO), |(user, system), (u, s)| (user + u, system + s))
    }
}

/// Runs `scenario` against `server` and measures it.
/// The column titles of [`print_row`], the first column being `what`.
pub fn print_header(what: &str) {
    println!(
        "{:<9} {:>3} {:>19} {:>9} {:>12} {:>8} {:>8} {:>8} {:>9} {:>6} {:>13} {:>8} {:>8} {:>6}",
        what,
        "run",
        "delivered",
        "wall s",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "srv CPU s",
        "kernel",
        "deliv/CPU-s",
        "gen CPU",
        "setup s",
        "warns"
    );
}

/// One run's line of the results table.
pub fn print_row(name: &str, round: usize, outcome: &Outcome, warns: usize) {
    println!(
        "{:<9} {:>3} {:>19} {:>9.3} {:>12} {:>8.2} {:>8.2} {:>8.2} {:>9.3} {:>5.0}% {:>13} {:>7.0}% {:>8.1} {:>6}{}",
        name,
        round,
        format!("{}/{}", outcome.delivered, outcome.expected),
        outcome.wall.as_secs_f64(),
        si(outcome.per_second()),
        outcome.p50.as_secs_f64() * 1e3,
        outcome.p99.as_secs_f64() * 1e3,
        outcome.max.as_secs_f64() * 1e3,
        outcome.server_cpu.as_secs_f64(),
        outcome.kernel_percent(),
        si(outcome.per_server_cpu_second()),
        100.0 * outcome.client_cpu.as_secs_f64() / outcome.wall.as_secs_f64().max(1e-9),
        outcome.setup.as_secs_f64(),
        warns,
        if outcome.timed_out {
            "  TIMED OUT"
        } else if outcome.stalled {
            "  STALLED (lost the rest)"
        } else {
            ""
        },
    );
}

/// Opens one benchmark client (4 KiB read buffer), waiting at most 30 s.
pub async fn connect_client(
    url: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, String> {
    let config = WebSocketConfig::default().read_buffer_size(4096);
    match tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async_with_config(url, Some(config), true),
    )
    .await
    {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out after 30 s".into()),
    }
}

/// Runs `scenario` against one server process.
pub fn run(scenario: &Scenario, server: &ServerProcess) -> Result<Outcome, String> {
    run_on(scenario, &Targets { addrs: vec![server.addr()], pids: vec![server.pid()] })
}

/// Runs `scenario` with its clients spread over several server processes (profiling their
/// send phase when `BENCH_PERF_DIR` is set, see [`Profiler`]).
pub fn run_on(scenario: &Scenario, targets: &Targets) -> Result<Outcome, String> {
    let profiler = std::cell::RefCell::new(None);
    run_on_with(
        scenario,
        targets,
        &mut || {
            *profiler.borrow_mut() = Some(Profiler::start(&targets.pids));
            Ok(())
        },
        &mut || {
            profiler.borrow_mut().take();
            Ok(())
        },
    )
}

/// [`run_on`], calling `before` right before the measured send phase and `after` right after
/// its last delivery (to switch a profiler on and read it); their errors end the run.
pub fn run_on_with(
    scenario: &Scenario,
    targets: &Targets,
    before: &mut dyn FnMut() -> Result<(), String>,
    after: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Outcome, String> {
    if targets.addrs.is_empty() {
        return Err("no server address".into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(drive(scenario, targets, before, after))
}

async fn drive(
    scenario: &Scenario,
    server: &Targets,
    before: &mut dyn FnMut() -> Result<(), String>,
    after: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Outcome, String> {
    let shared = Arc::new(Shared {
        base: Instant::now(),
        expected: scenario.expected(),
        delivered: AtomicU64::new(0),
        done_at_us: AtomicU64::new(0),
        last_at_us: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        ready: AtomicUsize::new(0),
        setup_events: AtomicU64::new(0),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let setup_start = Instant::now();
    let mut tasks = Vec::with_capacity(scenario.clients);
    for index in 0..scenario.clients {
        let addr = server.addrs[index % server.addrs.len()];
        let path = format!("/ws/chat/{}/?user=u{index}", scenario.room_of(index));
        tasks.push(tokio::spawn(client(
            index,
            addr,
            path,
            scenario.clone(),
            shared.clone(),
            phase_rx.clone(),
            permits.clone(),
        )));
    }
    let stop = |tasks: Vec<tokio::task::JoinHandle<ClientReport>>, phase_tx: &watch::Sender<Phase>| {
        let _ = phase_tx.send(Phase::Stop);
        tasks.iter().for_each(|task| task.abort());
    };

    // Connect.
    while shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < scenario.clients {
        if setup_start.elapsed() > CONNECT_LIMIT {
            stop(tasks, &phase_tx);
            return Err(format!("only {} clients connected", shared.connected.load(Ordering::Relaxed)));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if shared.failed.load(Ordering::Relaxed) > 0 {
        let _ = phase_tx.send(Phase::Stop);
        let mut first_error = None;
        for task in tasks {
            if let Ok(report) = task.await {
                first_error = first_error.or(report.error);
            }
        }
        return Err(format!(
            "{} of {} clients failed to connect: {}",
            shared.failed.load(Ordering::Relaxed),
            scenario.clients,
            first_error.unwrap_or_default()
        ));
    }

    // Warm up: every client has drained what was queued for it before the warm-up message.
    let warmup_start = Instant::now();
    let mut round = 0;
    while shared.ready.load(Ordering::Relaxed) < scenario.clients {
        if warmup_start.elapsed() > WARMUP_LIMIT {
            let ready = shared.ready.load(Ordering::Relaxed);
            stop(tasks, &phase_tx);
            return Err(format!("only {ready} of {} clients saw the warm-up message", scenario.clients));
        }
        let _ = phase_tx.send(Phase::Warmup(round));
        round += 1;
        let wait = Instant::now();
        while wait.elapsed() < Duration::from_millis(500) && shared.ready.load(Ordering::Relaxed) < scenario.clients {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(SETTLE).await;
    let setup = setup_start.elapsed();
    let setup_events = shared.setup_events.load(Ordering::Relaxed);

    // The measured phase.
    if let Err(e) = before() {
        stop(tasks, &phase_tx);
        return Err(e);
    }
    let server_cpu_before = server.cpu();
    let (user_before, system_before) = server.user_system();
    let client_cpu_before = super::cpu_time(std::process::id());
    let go_us = shared.base.elapsed().as_micros() as u64;
    let go = Instant::now();
    let _ = phase_tx.send(Phase::Go);
    let mut timed_out = false;
    let mut stalled = false;
    let mut progress = (0, Instant::now());
    while shared.delivered.load(Ordering::Acquire) < shared.expected {
        if go.elapsed() >= scenario.time_limit {
            timed_out = true;
            break;
        }
        let delivered = shared.delivered.load(Ordering::Acquire);
        if delivered != progress.0 {
            progress = (delivered, Instant::now());
        } else if progress.1.elapsed() >= STALL {
            stalled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let server_cpu = server.cpu().saturating_sub(server_cpu_before);
    let (user_after, system_after) = server.user_system();
    let client_cpu = super::cpu_time(std::process::id()).saturating_sub(client_cpu_before);
    let server_rss_kib = server.rss_kib();
    let delivered = shared.delivered.load(Ordering::Acquire);
    if let Err(e) = after() {
        stop(tasks, &phase_tx);
        return Err(e);
    }
    let wall = if timed_out {
        go.elapsed()
    } else if stalled {
        Duration::from_micros(shared.last_at_us.load(Ordering::Acquire).saturating_sub(go_us))
    } else {
        Duration::from_micros(shared.done_at_us.load(Ordering::Acquire).saturating_sub(go_us))
    };

    let _ = phase_tx.send(Phase::Stop);
    let mut latencies = Vec::with_capacity(delivered as usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for task in tasks {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(report)) => latencies.extend(report.latencies_us),
            Ok(Err(_)) => {}
            Err(_) => abort.abort(),
        }
    }
    latencies.sort_unstable();
    let us = |v: u32| Duration::from_micros(u64::from(v));
    Ok(Outcome {
        expected: shared.expected,
        delivered,
        wall,
        server_cpu,
        server_system: system_after.saturating_sub(system_before),
        server_user: user_after.saturating_sub(user_before),
        client_cpu,
        p50: us(percentile(&latencies, 50.0)),
        p99: us(percentile(&latencies, 99.0)),
        max: us(latencies.last().copied().unwrap_or(0)),
        setup,
        setup_events,
        timed_out,
        stalled,
        server_rss_kib,
    })
}

async fn client(
    index: usize,
    addr: SocketAddr,
    path: String,
    scenario: Scenario,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    permits: Arc<Semaphore>,
) -> ClientReport {
    let mut report = ClientReport { latencies_us: Vec::new(), error: None };
    let connected = {
        let _permit = permits.acquire().await;
        LeanWs::connect(addr, &path).await
    };
    let mut ws = match connected {
        Ok(ws) => {
            shared.connected.fetch_add(1, Ordering::Relaxed);
            ws
        }
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            report.error = Some(format!("ws://{addr}{path}: {e}"));
            return report;
        }
    };

    let sends = if index < scenario.senders { scenario.messages_per_sender } else { 0 };
    report.latencies_us.reserve(scenario.senders * scenario.messages_per_sender);
    let (mut go, mut ready) = (false, false);
    let (mut sent, mut echoed) = (0usize, 0usize);
    loop {
        if go && sent < sends && sent - echoed < scenario.window {
            let now_us = shared.base.elapsed().as_micros();
            if ws.send_text(&format!("m {index} {sent} {now_us}")).await.is_err() {
                break;
            }
            sent += 1;
            continue;
        }
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = *phase.borrow_and_update();
                match current {
                    Phase::Stop => break,
                    Phase::Go => go = true,
                    Phase::Warmup(round) if index < scenario.rooms.max(1) => {
                        if ws.send_text(&format!("w {round}")).await.is_err() {
                            break;
                        }
                    }
                    Phase::Warmup(_) | Phase::Setup => {}
                }
            }
            frame = ws.next() => {
                let text = match frame {
                    Some(Received::Text(text)) => text,
                    Some(Received::Other) => continue,
                    None => break,
                };
                let Some(incoming) = Event::parse(text) else { continue };
                if incoming.kind != "chat.message" {
                    shared.setup_events.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Some(body) = incoming.text else { continue };
                if body.starts_with("w ") {
                    if !ready {
                        ready = true;
                        shared.ready.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                let mut fields = body.strip_prefix("m ").unwrap_or_default().split(' ');
                let from: Option<usize> = fields.next().and_then(|v| v.parse().ok());
                let sent_us: Option<u64> = fields.nth(1).and_then(|v| v.parse().ok());
                let (Some(from), Some(sent_us)) = (from, sent_us) else { continue };
                let now_us = shared.base.elapsed().as_micros() as u64;
                shared.last_at_us.fetch_max(now_us, Ordering::Relaxed);
                report.latencies_us.push(now_us.saturating_sub(sent_us).min(u64::from(u32::MAX)) as u32);
                if from == index {
                    echoed += 1;
                }
                if shared.delivered.fetch_add(1, Ordering::AcqRel) + 1 == shared.expected {
                    shared.done_at_us.store(now_us, Ordering::Release);
                }
            }
        }
    }
    report
}
