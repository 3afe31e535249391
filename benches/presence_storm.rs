//! A big room filling up at once, on the chat example (release): how long until every
//! client's view of who is online is complete, what the server holds per socket afterwards,
//! and whether the room still carries the seed scenario; then two processes on one Redis, and
//! one of them SIGKILLed.
//!
//! Part 1, one process (in memory): `STORM_CLIENTS` clients (default 5,000) connect to room
//! `big` at once (256 handshakes in flight). Each keeps its view as the chat page does
//! (`chat.presence`, then `chat.presence_diff` counts). Measured: the time until every client
//! is connected, until every view lists every client (from the first connect and from the
//! last), the presence frames per client, and the server's RSS per socket once it is quiet
//! (no frame and < 2 % CPU for a second) against its RSS before. Then the seed scenario (20
//! clients x 200 messages, window 8) runs in room `room0` of the same process, the big room's
//! clients still connected. Each run is done with glibc's allocator and with each of
//! jemalloc and mimalloc found as a shared library (`LD_PRELOAD`; `STORM_ALLOCATORS=glibc`
//! for glibc only).
//!
//! Part 2, two processes on one Redis (`STORM_TWO=0` skips it): `STORM_CLIENTS` clients on
//! each, all in room `big`, connecting at once; measured: the time from the last connect until
//! every view on both lists all of them; then one process is SIGKILLed and the time until
//! every view on the other has lost its users (chat `--presence-ttl`, `STORM_TTL` seconds,
//! default 30).
//!
//! Bars: at most 8 KiB of server RSS per socket after the storm; every view complete within
//! 5 s; the seed scenario loses nothing afterwards; two processes' views converge within 2 s
//! of the last join; a killed process's users leave within the TTL.
//!
//! `cargo bench --bench presence_storm`; `BENCH_RUNS=N` runs per configuration (default 3).

use std::fmt;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use channels::redis::testing::RedisServer;
use common::load::{self, Scenario};
use common::server::{self, Kind, ServerProcess};
use common::stats::median;
use futures_util::StreamExt;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

const BAR_KIB: f64 = 8.0;
const BAR_SETTLE: Duration = Duration::from_secs(5);
const BAR_CONVERGE: Duration = Duration::from_secs(2);
const CONNECT_CONCURRENCY: usize = 256;
const LIMIT: Duration = Duration::from_secs(120);
/// Where Debian's packages put the allocators (`libjemalloc2`, `libmimalloc2.0`).
const ALLOCATORS: [(&str, &str); 2] = [
    ("jemalloc", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ("mimalloc", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
];

fn main() -> ExitCode {
    if common::baseline::run_if_requested() || !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    let clients = common::env_number("STORM_CLIENTS", 5_000);
    let Some(chat) = server::prepare(2 * clients as u64 + 1_000) else { return ExitCode::FAILURE };
    let runs = common::runs();
    let mut allocators: Vec<(&str, Option<&str>)> = vec![("glibc", None)];
    if std::env::var("STORM_ALLOCATORS").as_deref() != Ok("glibc") {
        for (name, path) in ALLOCATORS {
            if std::path::Path::new(path).exists() {
                allocators.push((name, Some(path)));
            } else {
                println!("note: {name} left out: {path} not found (apt-get install libjemalloc2 libmimalloc2.0)");
            }
        }
    }
    println!("== {clients} clients join one room of one chat process (in memory)");
    println!(
        "{:<9} {:>3} {:>9} {:>9} {:>11} {:>9} {:>10} {:>12} {:>12} {:>6}",
        "allocator",
        "run",
        "joined s",
        "settled s",
        "after last",
        "KiB/sock",
        "frames/cl",
        "seed msg/s",
        "seed lost",
        "quiet"
    );
    let mut results: Vec<(&str, Vec<Storm>)> = allocators.iter().map(|(name, _)| (*name, Vec::new())).collect();
    for round in 1..=runs {
        for ((name, preload), (_, storms)) in allocators.iter().zip(&mut results) {
            match one_process(&chat, clients, *preload) {
                Ok(storm) => {
                    println!("{name:<9} {round:>3} {storm}");
                    storms.push(storm);
                }
                Err(e) => println!("{name:<9} {round:>3} failed: {e}"),
            }
        }
    }
    println!("-- medians of {runs} runs");
    for (name, storms) in &results {
        let kib = median(&storms.iter().map(|s| s.kib_per_socket).collect::<Vec<_>>());
        let settled = median(&storms.iter().map(|s| s.settled.as_secs_f64()).collect::<Vec<_>>());
        let after = median(&storms.iter().map(|s| s.after_last_join.as_secs_f64()).collect::<Vec<_>>());
        let lost: u64 = storms.iter().map(|s| s.seed_lost).sum();
        println!(
            "{name:<9} {kib:>6.2} KiB/socket, settled {settled:.2} s ({after:.2} s after the last join), seed lost {lost}"
        );
        if *name == "glibc" {
            println!(
                "bar: <= {BAR_KIB} KiB server RSS per socket after the storm: {kib:.2} -> {}",
                common::verdict(kib <= BAR_KIB)
            );
            println!(
                "bar: every view complete within {} s: {settled:.2} s -> {}",
                BAR_SETTLE.as_secs(),
                common::verdict(settled <= BAR_SETTLE.as_secs_f64())
            );
            println!("bar: the seed scenario afterwards loses nothing: {lost} lost -> {}", common::verdict(lost == 0));
        }
    }
    if std::env::var("STORM_TWO").as_deref() != Ok("0") {
        let ttl = common::env_number("STORM_TTL", 30) as u64;
        println!("== two chat processes on one Redis, {clients} clients each in one room; one SIGKILLed (ttl {ttl} s)");
        println!("{:>3} {:>9} {:>13} {:>12}", "run", "joined s", "converged s", "gone after s");
        let (mut converged, mut gone) = (Vec::new(), Vec::new());
        for round in 1..=runs {
            match two_processes(&chat, clients, ttl) {
                Ok((joined, c, g)) => {
                    println!(
                        "{round:>3} {:>9.2} {:>13.2} {:>12.2}",
                        joined.as_secs_f64(),
                        c.as_secs_f64(),
                        g.as_secs_f64()
                    );
                    converged.push(c.as_secs_f64());
                    gone.push(g.as_secs_f64());
                }
                Err(e) => println!("{round:>3} failed: {e}"),
            }
        }
        let (c, g) = (median(&converged), median(&gone));
        println!(
            "bar: views converge within {} s of the last join: {c:.2} s -> {}",
            BAR_CONVERGE.as_secs(),
            common::verdict(c <= BAR_CONVERGE.as_secs_f64())
        );
        println!(
            "bar: a killed process's users gone within the ttl ({ttl} s): {g:.2} s -> {}",
            common::verdict(g <= ttl as f64)
        );
    }
    ExitCode::SUCCESS
}

/// One storm in one process.
struct Storm {
    joined: Duration,
    settled: Duration,
    after_last_join: Duration,
    kib_per_socket: f64,
    frames_per_client: f64,
    seed_per_second: f64,
    seed_lost: u64,
    quiet: bool,
}

impl fmt::Display for Storm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>9.2} {:>9.2} {:>11.2} {:>9.2} {:>10.1} {:>12.0} {:>12} {:>6}",
            self.joined.as_secs_f64(),
            self.settled.as_secs_f64(),
            self.after_last_join.as_secs_f64(),
            self.kib_per_socket,
            self.frames_per_client,
            self.seed_per_second,
            self.seed_lost,
            if self.quiet { "yes" } else { "no" }
        )
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("tokio runtime: {e}"))
}

fn start_chat(chat: &std::path::Path, preload: Option<&str>, args: &[String]) -> Result<ServerProcess, String> {
    match preload {
        None => ServerProcess::start_with(Kind::Chat, chat, args),
        Some(path) => ServerProcess::start_under(&["env", &format!("LD_PRELOAD={path}")], Kind::Chat, chat, args),
    }
}

fn one_process(chat: &std::path::Path, clients: usize, preload: Option<&str>) -> Result<Storm, String> {
    let server = start_chat(chat, preload, &[])?;
    let runtime = runtime()?;
    let storm = runtime.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = server.rss_kib().ok_or("no VmRSS")?;
        let room = Room::new(clients);
        let start = Instant::now();
        let (stop_tx, stop) = watch::channel(false);
        let users: Vec<usize> = (0..clients).collect();
        let tasks = room.join(server.addr(), &users, stop.clone()).await?;
        let joined = start.elapsed();
        room.until_complete(start).await?;
        let settled = start.elapsed();
        let quiet = until_quiet(&server, &room.frames).await;
        let after = server.rss_kib().ok_or("no VmRSS")?;
        let frames = room.frames.load(Ordering::Relaxed) as f64 / clients as f64;
        Ok::<_, String>((
            Storm {
                joined,
                settled,
                after_last_join: settled.saturating_sub(joined),
                kib_per_socket: after.saturating_sub(before) as f64 / clients as f64,
                frames_per_client: frames,
                seed_per_second: 0.0,
                seed_lost: 0,
                quiet,
            },
            tasks,
            stop_tx,
        ))
    });
    let (mut storm, tasks, stop_tx) = storm?;
    // The seed scenario in another room of the same process, the big room still connected.
    let scenario = Scenario::seed("room0");
    let seed = load::run(&scenario, &server);
    let _ = stop_tx.send(true);
    runtime.block_on(async {
        for task in tasks {
            task.abort();
        }
    });
    server.stop();
    let seed = seed?;
    storm.seed_per_second = seed.per_second();
    storm.seed_lost = seed.lost();
    Ok(storm)
}

/// Two processes on one Redis, `clients` each: (time to connect all, from the last connect
/// until every view is complete, from the SIGKILL of one until the other's views lost its
/// users).
fn two_processes(chat: &std::path::Path, clients: usize, ttl: u64) -> Result<(Duration, Duration, Duration), String> {
    let redis = RedisServer::start();
    let args = vec!["--layer".to_owned(), redis.url(), "--presence-ttl".to_owned(), ttl.to_string()];
    let east = start_chat(chat, None, &args)?;
    let west = start_chat(chat, None, &args)?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let room = Room::new(2 * clients);
        let (stop_tx, stop) = watch::channel(false);
        let start = Instant::now();
        let east_users: Vec<usize> = (0..clients).collect();
        let west_users: Vec<usize> = (clients..2 * clients).collect();
        let (east_tasks, west_tasks) = tokio::join!(
            room.join(east.addr(), &east_users, stop.clone()),
            room.join(west.addr(), &west_users, stop.clone())
        );
        let (east_tasks, west_tasks) = (east_tasks?, west_tasks?);
        let joined = start.elapsed();
        room.until_complete(start).await?;
        let converged = start.elapsed().saturating_sub(joined);
        // West's clients stop counting; east's views must drop to `clients` users.
        for task in west_tasks {
            task.abort();
        }
        room.expect_users(clients, clients);
        let killed = Instant::now();
        west.stop();
        room.until_complete(killed).await?;
        let gone = killed.elapsed();
        let _ = stop_tx.send(true);
        for task in east_tasks {
            task.abort();
        }
        east.stop();
        Ok((joined, converged, gone))
    })
}

/// The clients of one room: their views' completeness, and the presence frames they got.
#[derive(Clone)]
struct Room {
    /// Users a complete view lists.
    expected: Arc<AtomicUsize>,
    /// Clients whose view must be complete, and how many are.
    watching: Arc<AtomicUsize>,
    complete: Arc<AtomicUsize>,
    frames: Arc<AtomicU64>,
    /// Bumped when `expected` changes, so that every view is judged again.
    epoch: Arc<AtomicUsize>,
}

impl Room {
    fn new(users: usize) -> Self {
        Self {
            expected: Arc::new(AtomicUsize::new(users)),
            watching: Arc::new(AtomicUsize::new(users)),
            complete: Arc::default(),
            frames: Arc::default(),
            epoch: Arc::default(),
        }
    }

    /// From now on, `watching` views are complete with `users` users.
    fn expect_users(&self, users: usize, watching: usize) {
        self.expected.store(users, Ordering::SeqCst);
        self.watching.store(watching, Ordering::SeqCst);
        self.complete.store(0, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Connects user `u<i>` for each `i` in `users` to room `big` on `addr`, each then reading
    /// its presence until `stop`.
    async fn join(
        &self,
        addr: SocketAddr,
        users: &[usize],
        stop: watch::Receiver<bool>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
        let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let connected = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(users.len());
        for &user in users {
            let url = format!("ws://{addr}/ws/chat/big/?user=u{user}");
            let (room, permits, connected, failed, stop) =
                (self.clone(), permits.clone(), connected.clone(), failed.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let attempt = {
                    let _permit = permits.acquire().await;
                    common::net::connect(addr, &url).await
                };
                match attempt {
                    Ok(ws) => {
                        connected.fetch_add(1, Ordering::Relaxed);
                        room.read(ws, stop).await;
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        let start = Instant::now();
        while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < users.len() {
            if start.elapsed() > LIMIT {
                return Err(format!("only {} connected", connected.load(Ordering::Relaxed)));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match failed.load(Ordering::Relaxed) {
            0 => Ok(tasks),
            n => Err(format!("{n} connections failed")),
        }
    }

    /// One client: its view (connections per user number), judged complete after each event.
    async fn read(&self, mut ws: common::net::Client, mut stop: watch::Receiver<bool>) {
        let mut view = vec![0u8; self.expected.load(Ordering::Relaxed).max(1) * 2];
        let mut users = 0usize;
        let (mut counted, mut epoch) = (false, self.epoch.load(Ordering::SeqCst));
        loop {
            let text = tokio::select! {
                _ = stop.changed() => return,
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(_)) => continue,
                    _ => return,
                },
            };
            let Ok(event) = serde_json::from_str::<Event<'_>>(&text) else { continue };
            match event.kind {
                "chat.presence" => {
                    view.iter_mut().for_each(|n| *n = 0);
                    users = 0;
                    apply(&mut view, &mut users, &event.connections.0, 1);
                }
                "chat.presence_diff" => {
                    apply(&mut view, &mut users, &event.joins.0, 1);
                    apply(&mut view, &mut users, &event.leaves.0, -1);
                }
                _ => continue,
            }
            self.frames.fetch_add(1, Ordering::Relaxed);
            let now = self.epoch.load(Ordering::SeqCst);
            if now != epoch {
                (epoch, counted) = (now, false);
            }
            let complete = users == self.expected.load(Ordering::SeqCst);
            if complete != counted {
                if complete {
                    self.complete.fetch_add(1, Ordering::SeqCst);
                } else {
                    self.complete.fetch_sub(1, Ordering::SeqCst);
                }
                counted = complete;
            }
        }
    }

    async fn until_complete(&self, start: Instant) -> Result<(), String> {
        while self.complete.load(Ordering::SeqCst) < self.watching.load(Ordering::SeqCst) {
            if start.elapsed() > LIMIT {
                return Err(format!(
                    "{} of {} views complete after {} s",
                    self.complete.load(Ordering::SeqCst),
                    self.watching.load(Ordering::SeqCst),
                    LIMIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// Adds `sign * n` connections of each user to `view`, keeping `users` (those above zero).
fn apply(view: &mut Vec<u8>, users: &mut usize, counts: &[(usize, i64)], sign: i64) {
    for &(user, n) in counts {
        if user >= view.len() {
            view.resize(user + 1, 0);
        }
        let before = view[user];
        let after = (i64::from(before) + sign * n).clamp(0, 255) as u8;
        view[user] = after;
        match (before, after) {
            (0, 1..) => *users += 1,
            (1.., 0) => *users -= 1,
            _ => {}
        }
    }
}

/// Waits until no presence frame arrived and the server used < 2 % of a CPU for a second
/// (at most 30 s); whether it got there.
async fn until_quiet(server: &ServerProcess, frames: &AtomicU64) -> bool {
    let start = Instant::now();
    let mut last = (frames.load(Ordering::Relaxed), server.cpu(), Instant::now());
    while start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = (frames.load(Ordering::Relaxed), server.cpu(), Instant::now());
        if now.0 != last.0 || now.1.saturating_sub(last.1) > now.2.duration_since(last.2) / 50 {
            last = now;
        } else if now.2.duration_since(last.2) >= Duration::from_secs(1) {
            return true;
        }
    }
    false
}

/// The fields of a chat event a view needs; users are `u<number>`.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    connections: Counts,
    #[serde(default)]
    joins: Counts,
    #[serde(default)]
    leaves: Counts,
    #[serde(default, rename = "users")]
    _users: IgnoredAny,
}

/// `{"u12": 1, ...}` as `(12, 1)` pairs, without allocating a string per user.
#[derive(Default)]
struct Counts(Vec<(usize, i64)>);

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountsVisitor;
        impl<'de> Visitor<'de> for CountsVisitor {
            type Value = Counts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of user to count")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Counts, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((user, n)) = map.next_entry::<&'de str, i64>()? {
                    if let Some(number) = user.strip_prefix('u').and_then(|n| n.parse().ok()) {
                        out.push((number, n));
                    }
                }
                Ok(Counts(out))
            }
        }
        deserializer.deserialize_map(CountsVisitor)
    }
}
