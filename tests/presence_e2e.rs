//! Who is online, end to end, on the chat example: a join storm coalesced into diffs, and two
//! processes on one Redis that see each other's users until one is killed.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use channels::redis::testing::RedisServer;
use futures_util::StreamExt;
use support::{Client, Example, connect};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// A client's view of the room: connections per user, from `chat.presence` and the
/// `chat.presence_diff`s after it, as the chat page keeps it.
#[derive(Debug, Default, Clone)]
struct View {
    connections: BTreeMap<String, i64>,
    states: usize,
    diffs: usize,
}

impl View {
    fn apply(&mut self, event: &serde_json::Value) {
        let counts = |field: &serde_json::Value| -> Vec<(String, i64)> {
            field.as_object().into_iter().flatten().map(|(user, n)| (user.clone(), n.as_i64().unwrap_or(0))).collect()
        };
        match event["type"].as_str() {
            Some("chat.presence") => {
                self.states += 1;
                self.connections = counts(&event["connections"]).into_iter().collect();
            }
            Some("chat.presence_diff") => {
                self.diffs += 1;
                for (user, n) in counts(&event["joins"]) {
                    *self.connections.entry(user).or_default() += n;
                }
                for (user, n) in counts(&event["leaves"]) {
                    let count = self.connections.entry(user.clone()).or_default();
                    *count -= n;
                    if *count <= 0 {
                        self.connections.remove(&user);
                    }
                }
            }
            _ => {}
        }
    }

    fn users(&self) -> usize {
        self.connections.len()
    }
}

/// Reads `client` until told to stop, keeping its view in `views[index]` and counting the
/// presence frames it got in `frames`; `complete` counts views that reached `expected` users.
async fn watch_room(
    mut client: Client,
    index: usize,
    views: Arc<Vec<std::sync::Mutex<View>>>,
    frames: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) {
    {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                frame = client.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        let event: serde_json::Value = serde_json::from_str(&text).expect("JSON events");
                        if event["type"].as_str().is_some_and(|t| t.starts_with("chat.presence")) {
                            frames.fetch_add(1, Ordering::Relaxed);
                        }
                        views[index].lock().expect("view").apply(&event);
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
            }
        }
    }
}

/// Waits until every view in `range` has `users` users; panics with the laggards after `limit`.
async fn until_views(views: &[std::sync::Mutex<View>], range: std::ops::Range<usize>, users: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let short: Vec<(usize, usize)> =
            range.clone().map(|i| (i, views[i].lock().expect("view").users())).filter(|(_, n)| *n != users).collect();
        if short.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} views never reached {users} users, e.g. {:?}",
            short.len(),
            &short[..short.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const STORM: usize = 2_000;

/// 2,000 clients join one room within about a second: every client's view (state plus diffs)
/// ends with all 2,000, and the room's presence costs each client a handful of frames per
/// interval rather than one per join (2,000² = 4 million frames without coalescing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_storm_is_coalesced_and_every_view_completes() {
    let chat = Example::start("chat", &[]);
    let views: Arc<Vec<std::sync::Mutex<View>>> = Arc::new((0..STORM).map(|_| Default::default()).collect());
    let frames = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop) = watch::channel(false);
    let started = Instant::now();
    let mut readers = Vec::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(200));
    let connected = Arc::new(AtomicUsize::new(0));
    for i in 0..STORM {
        let url = chat.url(&format!("/ws/chat/storm/?user=u{i}"));
        let (views, frames, stop, permits, connected) =
            (views.clone(), frames.clone(), stop.clone(), permits.clone(), connected.clone());
        readers.push(tokio::spawn(async move {
            let client = {
                let _permit = permits.acquire().await;
                connect(&url).await
            };
            connected.fetch_add(1, Ordering::SeqCst);
            watch_room(client, i, views, frames, stop).await;
        }));
    }
    while connected.load(Ordering::SeqCst) < STORM {
        assert!(started.elapsed() < Duration::from_secs(120), "clients could not connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let joined = started.elapsed();
    until_views(&views, 0..STORM, STORM, Duration::from_secs(60)).await;
    let settled = started.elapsed();
    let presence_frames = frames.load(Ordering::Relaxed);
    let most_diffs = views.iter().map(|v| v.lock().expect("view").diffs).max().unwrap_or(0);
    let states = views.iter().map(|v| v.lock().expect("view").states).sum::<usize>();
    eprintln!(
        "{STORM} joined in {joined:?}, every view complete after {settled:?}; {presence_frames} presence frames \
         ({:.1} per client, at most {most_diffs} diffs for one), {states} states",
        presence_frames as f64 / STORM as f64
    );
    assert_eq!(states, STORM, "one state per client: no diff was lost");
    // One state each, and at most one diff per interval (100 ms) while the room fills and
    // settles: a client that joined first saw the storm as ~10 diffs per second.
    let bound = STORM * (1 + 10 * (settled.as_secs() as usize + 1));
    assert!(presence_frames <= bound, "{presence_frames} presence frames is more than {bound}");
    assert!(presence_frames < STORM * STORM / 10, "coalesced: far fewer than n^2 frames");
    let _ = stop_tx.send(true);
    for reader in readers {
        let _ = reader.await;
    }
}

/// Two chat processes on one Redis: users on each see the others'; when one process is
/// SIGKILLed (no disconnect hook runs, nothing is cleaned up), its users leave the other's
/// views within the presence time to live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_see_each_other_and_a_killed_ones_users_leave() {
    const PER_PROCESS: usize = 20;
    const TTL_SECS: u64 = 3;
    let redis = RedisServer::start();
    let layer = format!("{}/0?prefix=presence", redis.url());
    let ttl = TTL_SECS.to_string();
    let east = Example::start("chat", &["--layer", &layer, "--presence-ttl", &ttl]);
    let mut west = Example::start("chat", &["--layer", &layer, "--presence-ttl", &ttl]);
    let views: Arc<Vec<std::sync::Mutex<View>>> = Arc::new((0..2 * PER_PROCESS).map(|_| Default::default()).collect());
    let frames = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop) = watch::channel(false);
    let mut readers = Vec::new();
    for i in 0..2 * PER_PROCESS {
        let (example, name) = if i < PER_PROCESS { (&east, format!("east{i}")) } else { (&west, format!("west{i}")) };
        let client = connect(&example.url(&format!("/ws/chat/lobby/?user={name}"))).await;
        readers.push(tokio::spawn(watch_room(client, i, views.clone(), frames.clone(), stop.clone())));
    }
    until_views(&views, 0..2 * PER_PROCESS, 2 * PER_PROCESS, Duration::from_secs(10)).await;
    let kill = std::process::Command::new("kill").args(["-KILL", &west.child.id().to_string()]).status();
    assert!(kill.is_ok_and(|s| s.success()), "SIGKILL");
    let _ = west.child.wait();
    let killed = Instant::now();
    until_views(&views, 0..PER_PROCESS, PER_PROCESS, Duration::from_secs(TTL_SECS) + Duration::from_millis(500)).await;
    let gone_after = killed.elapsed();
    eprintln!("the killed process's users left the other's views after {gone_after:?} (ttl {TTL_SECS} s)");
    for view in &views[..PER_PROCESS] {
        assert!(view.lock().expect("view").connections.keys().all(|user| user.starts_with("east")));
    }
    let _ = stop_tx.send(true);
    for reader in readers {
        let _ = reader.await;
    }
}
