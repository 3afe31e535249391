//! Soak: churn against the release chat example for a fixed time (default 10 minutes), then
//! check that the server's memory, threads and open files came back to where they were.
//!
//! 60 clients connect, join one of 10 rooms, send a few messages, wait for their own last
//! message to come back, and leave: most with a close handshake, every fifth by dropping the
//! TCP connection. Then they do it again, until the time is up. 20 listeners stay in the rooms
//! the whole time, so every message fans out. The server's RSS, thread count and open file
//! descriptors (`/proc/PID/status`, `/proc/PID/fd`) are sampled every 30 s.
//!
//! `cargo bench --bench soak` (numbers in docs/reliability.md). `SOAK_SECS=N` changes the
//! duration. Exits with an error when the end is not flat: RSS more than 10 % above the
//! sample after warm-up, more threads than then, or open descriptors left over.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::server::{Kind, ServerProcess};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const CHURNERS: usize = 60;
const LISTENERS: usize = 20;
const ROOMS: usize = 10;
const WARM_UP: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    threads: u64,
    fds: u64,
}

fn sample(pid: u32, at: Duration) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    Sample { at, rss_kib: field("VmRSS:"), threads: field("Threads:"), fds }
}

#[derive(Default)]
struct Counts {
    sessions: AtomicU64,
    messages: AtomicU64,
    abrupt: AtomicU64,
    failures: AtomicU64,
}

/// One connect-join-send-leave cycle; `Err` on anything unexpected.
async fn session(url: &str, n: u64, counts: &Counts) -> Result<(), String> {
    let mut client = common::load::connect_client(url).await?;
    let messages = 1 + n % 3;
    for i in 0..messages {
        client.send(Message::text(format!("soak {n}.{i}"))).await.map_err(|e| e.to_string())?;
    }
    let last = format!("soak {n}.{}", messages - 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, client.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.contains(&last) => break,
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("waiting for its own message: {other:?}")),
        }
    }
    counts.messages.fetch_add(messages, Ordering::Relaxed);
    if n % 5 == 4 {
        counts.abrupt.fetch_add(1, Ordering::Relaxed);
        drop(client); // no close frame: the server sees 1006
    } else {
        client.close(None).await.map_err(|e| e.to_string())?;
        let _ = tokio::time::timeout(Duration::from_secs(5), async { while client.next().await.is_some() {} }).await;
    }
    counts.sessions.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn main() -> ExitCode {
    if !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    let Some(chat) = common::server::prepare(4096) else { return ExitCode::FAILURE };
    let duration = Duration::from_secs(common::env_number("SOAK_SECS", 600) as u64);
    let server = match ServerProcess::start(Kind::Chat, &chat) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let pid = server.pid();
    let addr = server.addr();
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let idle = sample(pid, Duration::ZERO);
    let mut samples = vec![idle];

    runtime.block_on(async {
        let deadline = started + duration;
        let mut listeners = Vec::new();
        for i in 0..LISTENERS {
            let url = format!("ws://{addr}/ws/chat/soak{}/?user=listener{i}", i % ROOMS);
            let mut client = common::load::connect_client(&url).await.expect("listener connects");
            let counts = counts.clone();
            listeners.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    match tokio::time::timeout(Duration::from_secs(1), client.next()).await {
                        Ok(Some(Ok(_))) | Err(_) => {}
                        Ok(_) => {
                            counts.failures.fetch_add(1, Ordering::Relaxed);
                            return None;
                        }
                    }
                }
                Some(client)
            }));
        }
        let mut churners = Vec::new();
        for w in 0..CHURNERS {
            let counts = counts.clone();
            churners.push(tokio::spawn(async move {
                let mut n = w as u64;
                while Instant::now() < deadline {
                    let url = format!("ws://{addr}/ws/chat/soak{}/?user=c{w}", n as usize % ROOMS);
                    if let Err(e) = session(&url, n, &counts).await {
                        if counts.failures.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("session failed: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    n += CHURNERS as u64;
                }
            }));
        }
        let mut next_sample = WARM_UP;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if started.elapsed() >= next_sample {
                let s = sample(pid, started.elapsed());
                eprintln!(
                    "{:>5.0} s  rss {:>7} KiB  threads {:>3}  fds {:>4}  sessions {}",
                    s.at.as_secs_f64(),
                    s.rss_kib,
                    s.threads,
                    s.fds,
                    counts.sessions.load(Ordering::Relaxed)
                );
                samples.push(s);
                next_sample += SAMPLE_EVERY;
            }
        }
        for churner in churners {
            let _ = churner.await;
        }
        for listener in listeners {
            if let Ok(Some(mut client)) = listener.await {
                let _ = client.close(None).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), async { while client.next().await.is_some() {} })
                    .await;
            }
        }
        // Let the server finish every teardown (disconnect hooks, leave notices).
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let end = sample(pid, started.elapsed());
    samples.push(end);
    let log = server.stop();

    let warmed = samples.get(1).copied().unwrap_or(idle);
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let sessions = counts.sessions.load(Ordering::Relaxed);
    let failures = counts.failures.load(Ordering::Relaxed);
    println!("soak: {:.0} s of churn against the chat example (release)", duration.as_secs_f64());
    println!(
        "  {} sessions ({} ended by a dropped TCP connection), {} messages sent, {} failures, {} server log lines",
        sessions,
        counts.abrupt.load(Ordering::Relaxed),
        counts.messages.load(Ordering::Relaxed),
        failures,
        log.lines
    );
    println!("  {:<22} {:>10} {:>8} {:>6}", "sample", "RSS KiB", "threads", "fds");
    for (name, s) in [("idle, before", idle), ("after warm-up (60 s)", warmed), ("end, all closed", end)] {
        println!("  {:<22} {:>10} {:>8} {:>6}", name, s.rss_kib, s.threads, s.fds);
    }
    println!("  peak RSS {peak} KiB");
    let rss_flat = end.rss_kib as f64 <= warmed.rss_kib as f64 * 1.10;
    let threads_flat = end.threads <= warmed.threads;
    let fds_flat = end.fds <= idle.fds;
    println!(
        "  flat: RSS {} ({:+.1} % against warm-up), threads {}, fds {}",
        if rss_flat { "yes" } else { "NO" },
        (end.rss_kib as f64 / warmed.rss_kib.max(1) as f64 - 1.0) * 100.0,
        if threads_flat { "yes" } else { "NO" },
        if fds_flat { "yes" } else { "NO" }
    );
    if rss_flat && threads_flat && fds_flat && failures == 0 && sessions > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
