//! Held long polls: 10,000 concurrent `GET /chat/{room}/events?client=ID&wait=25` requests on
//! one chat process (release, in-memory layer), each on its own TCP connection.
//!
//! The clients are spread over 100 rooms x 100 clients: every join is announced to the whole
//! room, so one room of 10,000 would make registration O(n^2). Each client registers with a
//! `wait=0` poll and is drained until it gets `[]`. Then the server's `VmRSS` is read, all
//! 10,000 long polls are opened and held, `VmRSS` is read again (KiB per held request; bar
//! <= 16 KiB), and one message is posted to each room (100 POSTs): the bench measures how long
//! until every held request has answered with that message, and checks that all did.
//!
//! `cargo bench --bench longpoll_memory` (see docs/performance.md). `BENCH_RUNS=N` changes the
//! number of runs (default 3); `LONGPOLL_ROOMS=N` and `LONGPOLL_PER_ROOM=N` the layout.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::server::{self, Kind, ServerProcess};
use common::stats::median;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

const BAR_KIB: f64 = 16.0;
/// Concurrent registrations and drains.
const SETUP_CONCURRENCY: usize = 64;
/// Concurrent connection attempts while opening the long polls.
const OPEN_CONCURRENCY: usize = 128;
/// The held requests' `wait` (seconds); opening all of them must take well under this.
const HOLD_WAIT_SECS: u64 = 25;
/// Longest registration plus draining.
const SETUP_LIMIT: Duration = Duration::from_secs(300);
/// Longest time for the held requests to be opened (and the server to go quiet).
const OPEN_LIMIT: Duration = Duration::from_secs(15);
/// Longest time from the first POST to the last answer.
const DELIVERY_LIMIT: Duration = Duration::from_secs(20);

struct Run {
    rss_before_kib: u64,
    rss_held_kib: u64,
    held: usize,
    open_time: Duration,
    answered_with_message: usize,
    failed: usize,
    /// From the first POST to the last answer carrying the message.
    delivery: Duration,
    setup: Duration,
    warns: usize,
}

impl Run {
    fn kib_per_request(&self) -> f64 {
        (self.rss_held_kib as f64 - self.rss_before_kib as f64) / self.held.max(1) as f64
    }
}

fn main() -> ExitCode {
    if common::baseline::run_if_requested() || !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    let rooms = common::env_number("LONGPOLL_ROOMS", 100);
    let per_room = common::env_number("LONGPOLL_PER_ROOM", 100);
    let clients = rooms * per_room;
    let Some(chat) = server::prepare(clients as u64 + 200) else { return ExitCode::FAILURE };
    let runs = common::runs();
    println!(
        "== held long polls: {rooms} rooms x {per_room} clients = {clients} concurrent wait={HOLD_WAIT_SECS} requests"
    );
    println!("{runs} runs; cpus: {}; pinned: {}", common::cpus(), server::pinning());
    println!(
        "{:>3} {:>11} {:>11} {:>7} {:>9} {:>7} {:>17} {:>7} {:>12} {:>8} {:>5}",
        "run",
        "RSS before",
        "RSS held",
        "held",
        "KiB/req",
        "open s",
        "answered w/ msg",
        "failed",
        "delivery ms",
        "setup s",
        "warns"
    );
    let mut done: Vec<Run> = Vec::new();
    for round in 1..=runs {
        // Polling clients that go quiet are dropped after --poll-timeout; registration and
        // draining must not count as quiet time.
        let args = vec!["--poll-timeout".to_owned(), "600".to_owned()];
        let server = match ServerProcess::start_with(Kind::Chat, &chat, &args) {
            Ok(server) => server,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("error: tokio runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = runtime.block_on(run(&server, rooms, per_room));
        drop(runtime);
        let log = server.stop();
        match result {
            Ok(mut r) => {
                r.warns = log.lines;
                println!(
                    "{:>3} {:>8} KiB {:>8} KiB {:>7} {:>9.2} {:>7.2} {:>17} {:>7} {:>12.1} {:>8.1} {:>5}",
                    round,
                    r.rss_before_kib,
                    r.rss_held_kib,
                    r.held,
                    r.kib_per_request(),
                    r.open_time.as_secs_f64(),
                    format!("{}/{}", r.answered_with_message, clients),
                    r.failed,
                    r.delivery.as_secs_f64() * 1e3,
                    r.setup.as_secs_f64(),
                    r.warns,
                );
                done.push(r);
            }
            Err(e) => println!("{round:>3} failed: {e}"),
        }
        for line in &log.first {
            println!("    server log: {line}");
        }
    }
    let med = |f: fn(&Run) -> f64| median(&done.iter().map(f).collect::<Vec<_>>());
    let kib = med(Run::kib_per_request);
    let all = done.iter().all(|r| r.answered_with_message == clients);
    println!("-- medians of {} runs", done.len());
    println!(
        "{:.2} KiB of server RSS per held long poll (bar <= {BAR_KIB}: {}); every held request answered with the message: {} ({}); delivery to all {clients}: {:.1} ms (from the first of {rooms} POSTs to the last answer)",
        kib,
        if kib <= BAR_KIB { "met" } else { "MISSED" },
        if all { "yes" } else { "NO" },
        done.iter().map(|r| format!("{}/{clients}", r.answered_with_message)).collect::<Vec<_>>().join(", "),
        med(|r| r.delivery.as_secs_f64() * 1e3),
    );
    ExitCode::SUCCESS
}

/// A minimal HTTP/1.1 exchange on a fresh TCP connection: the status and the body.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| format!("request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("send: {e}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    Ok((status, body))
}

fn events_path(room: usize, client: usize, wait: u64) -> String {
    format!("/chat/lp{room}/events?client=c{client}&user=u{client}&wait={wait}")
}

async fn run(server: &ServerProcess, rooms: usize, per_room: usize) -> Result<Run, String> {
    let local = tokio::task::LocalSet::new();
    local.run_until(run_local(server, rooms, per_room)).await
}

async fn run_local(server: &ServerProcess, rooms: usize, per_room: usize) -> Result<Run, String> {
    let addr = server.addr();
    let clients = rooms * per_room;
    let room_of = move |client: usize| client / per_room;
    let setup_start = Instant::now();

    // Register every client, room after room, then drain each until it answers `[]`.
    for drain in [false, true] {
        let permits = Rc::new(Semaphore::new(SETUP_CONCURRENCY));
        let mut tasks = Vec::with_capacity(clients);
        for client in 0..clients {
            let permits = permits.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let _permit = permits.acquire().await;
                let path = events_path(room_of(client), client, 0);
                for _ in 0..20 {
                    let (status, body) = request(addr, "GET", &path, "").await?;
                    if status != 200 {
                        return Err(format!("{path}: status {status}: {}", String::from_utf8_lossy(&body)));
                    }
                    if !drain || body.as_ref() == b"[]" {
                        return Ok(());
                    }
                }
                Err(format!("{path}: still not drained after 20 polls"))
            }));
        }
        let deadline = tokio::time::Instant::now() + SETUP_LIMIT.saturating_sub(setup_start.elapsed());
        for task in tasks {
            let abort = task.abort_handle();
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(e)) => return Err(format!("task: {e}")),
                Err(_) => {
                    abort.abort();
                    return Err("registration and draining took too long".into());
                }
            }
        }
    }
    let setup = setup_start.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_before_kib = server.rss_kib().ok_or("no VmRSS")?;

    // Open and hold every long poll.
    let message = "held-poll-check";
    let open_start = Instant::now();
    let opened = Rc::new(AtomicUsize::new(0));
    let permits = Rc::new(Semaphore::new(OPEN_CONCURRENCY));
    let mut held = Vec::with_capacity(clients);
    for client in 0..clients {
        let (permits, opened) = (permits.clone(), opened.clone());
        held.push(tokio::task::spawn_local(async move {
            let path = events_path(room_of(client), client, HOLD_WAIT_SECS);
            let stream = {
                let _permit = permits.acquire().await;
                let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
                let _ = stream.set_nodelay(true);
                stream
            };
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::task::spawn_local(async move {
                let _ = connection.await;
            });
            let request = http::Request::builder()
                .uri(path)
                .header(http::header::HOST, addr.to_string())
                .body(Full::new(Bytes::new()))
                .map_err(|e| format!("request: {e}"))?;
            let pending = sender.send_request(request);
            opened.fetch_add(1, Ordering::Relaxed);
            let response = pending.await.map_err(|e| format!("send: {e}"))?;
            let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            Ok::<(Bytes, Instant), String>((body, Instant::now()))
        }));
    }
    // `opened` counts requests handed to hyper; then wait until the server has read them all:
    // its CPU use drops to (almost) nothing for a second.
    while opened.load(Ordering::Relaxed) < clients && open_start.elapsed() < OPEN_LIMIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut quiet = Duration::ZERO;
    let mut last_cpu = server.cpu();
    while quiet < Duration::from_secs(1) && open_start.elapsed() < OPEN_LIMIT {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let cpu = server.cpu();
        let used = cpu.saturating_sub(last_cpu);
        last_cpu = cpu;
        if used < Duration::from_millis(5) {
            quiet += Duration::from_millis(250);
        } else {
            quiet = Duration::ZERO;
        }
    }
    let open_time = open_start.elapsed();
    let held_count = opened.load(Ordering::Relaxed);
    let rss_held_kib = server.rss_kib().ok_or("no VmRSS")?;
    if open_time > Duration::from_secs(HOLD_WAIT_SECS - 5) {
        for task in &held {
            task.abort();
        }
        return Err(format!("opening the long polls took {:.1} s", open_time.as_secs_f64()));
    }

    // One message per room.
    let post_start = Instant::now();
    let mut posts = Vec::with_capacity(rooms);
    for room in 0..rooms {
        posts.push(tokio::task::spawn_local(async move {
            request(addr, "POST", &format!("/chat/lp{room}/messages?user=poster"), message).await
        }));
    }
    for post in posts {
        match post.await {
            Ok(Ok((202, _))) => {}
            Ok(Ok((status, body))) => {
                return Err(format!("POST answered {status}: {}", String::from_utf8_lossy(&body)));
            }
            Ok(Err(e)) => return Err(format!("POST: {e}")),
            Err(e) => return Err(format!("POST task: {e}")),
        }
    }
    let (mut with_message, mut failed) = (0, 0);
    let mut last = post_start;
    let deadline = tokio::time::Instant::now() + DELIVERY_LIMIT;
    for task in held {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok((body, at)))) => {
                let events: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
                if events.iter().any(|e| e["type"] == "chat.message" && e["text"] == message) {
                    with_message += 1;
                    last = last.max(at);
                }
            }
            Ok(_) => failed += 1,
            Err(_) => {
                abort.abort();
                failed += 1;
            }
        }
    }
    Ok(Run {
        rss_before_kib,
        rss_held_kib,
        held: held_count,
        open_time,
        answered_with_message: with_message,
        failed,
        delivery: last.saturating_duration_since(post_start),
        setup,
        warns: 0,
    })
}
