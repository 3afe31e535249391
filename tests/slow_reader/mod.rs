//! One room of readers, one sender, and optionally one client that stops reading: the scenario
//! behind `tests/slow_clients.rs` (a CI check with loose bounds) and `benches/slow_clients.rs`
//! (the measured numbers in docs/reliability.md).
//!
//! Everything runs in one process: an application with an in-memory layer on a real socket,
//! and real WebSocket clients. The sender sends a message only when every reader that keeps
//! reading is at most `window` messages behind it, so the run measures how fast the server fans
//! out, not how far a busy load generator can fall behind; a run ends when every reader (the
//! stalled one apart) has every message, or at the time limit.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use channels::prelude::*;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// What a run does.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Readers in the room, the stalled one included when there is one.
    pub clients: usize,
    /// Messages the sender sends.
    pub messages: usize,
    /// Bytes of text in each message.
    pub message_size: usize,
    /// Messages sent and not yet received by the slowest reader that keeps reading.
    pub window: usize,
    /// Whether one of the readers stops reading right after it connects.
    pub stalled_reader: bool,
    /// The server's `send_timeout`: how long it waits on a client that does not read.
    pub send_timeout: Duration,
    /// Longest send phase.
    pub time_limit: Duration,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Messages delivered to the readers that kept reading, per second of the send phase.
    pub throughput: f64,
    pub delivered: u64,
    pub expected: u64,
    pub wall: Duration,
    /// From the moment the stalled reader stopped to its `disconnect`, and the code it got.
    pub stalled_closed: Option<(Duration, u16)>,
    /// Largest resident set of this process during the send phase, and before it.
    pub peak_rss_kib: u64,
    pub rss_before_kib: u64,
    /// Drops counted by the layer for full queues (the stalled reader's).
    pub dropped_full: u64,
    /// Connections still open on the server after the run (all clients closed).
    pub open_after: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename = "room.message")]
struct RoomMessage {
    text: String,
}

type Disconnects = Arc<Mutex<Vec<(Instant, u16, String)>>>;

/// Joins `room`; relays every text frame to the room, every room message to its client.
struct Member {
    user: String,
    disconnects: Disconnects,
    dropped_full: Arc<AtomicU64>,
}

impl WebsocketConsumer for Member {
    type Event = RoomMessage;

    fn groups(&self) -> Vec<String> {
        vec!["room".into()]
    }

    async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
        if let Some(text) = frame.as_text() {
            let report = ctx.group_send("room", &RoomMessage { text: text.to_owned() }).await?;
            self.dropped_full.fetch_add(report.dropped_full as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn event(&mut self, ctx: &mut WebsocketContext, event: RoomMessage) -> HandlerResult {
        ctx.send_text(event.text).await?;
        Ok(())
    }

    async fn disconnect(&mut self, _ctx: &mut WebsocketContext, code: u16) -> HandlerResult {
        self.disconnects.lock().expect("lock").push((Instant::now(), code, self.user.clone()));
        Ok(())
    }
}

struct Running {
    addr: SocketAddr,
    app: Application,
    disconnects: Disconnects,
    dropped_full: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(send_timeout: Duration) -> Running {
    let disconnects: Disconnects = Arc::default();
    let dropped_full = Arc::new(AtomicU64::new(0));
    let (d, f) = (disconnects.clone(), dropped_full.clone());
    let router = Router::new().websocket("/ws/room/", move |scope: &Scope| Member {
        user: scope.query_param("user").unwrap_or_default(),
        disconnects: d.clone(),
        dropped_full: f.clone(),
    });
    let app = Application::builder(router)
        .layer(channels::layers::from_url("memory://?capacity=100").expect("memory layer"))
        .websocket_limits(WebsocketLimits::default().send_timeout(send_timeout))
        .build();
    let server = channels::Server::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server.serve_with_shutdown(app.clone(), async move {
        let _ = stopped.await;
    }));
    Running { addr, app, disconnects, dropped_full, stop: Some(stop), done }
}

/// Resident set size of this process in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Runs the scenario once.
pub async fn run(scenario: &Scenario) -> Outcome {
    let running = start(scenario.send_timeout).await;
    let url = |user: &str| format!("ws://{}/ws/room/?user={user}", running.addr);
    let readers = if scenario.stalled_reader { scenario.clients - 1 } else { scenario.clients };
    let received = Arc::new(AtomicU64::new(0));
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..readers).map(|_| AtomicU64::new(0)).collect());
    let expected = (readers * scenario.messages) as u64;

    // Connect the readers, a few at a time.
    let gate = Arc::new(Semaphore::new(64));
    let mut connecting = Vec::new();
    for i in 0..readers {
        let (gate, url) = (gate.clone(), url(&format!("reader{i}")));
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.expect("gate");
            let (client, _) = tokio_tungstenite::connect_async(url).await.expect("reader connects");
            client
        }));
    }
    let mut clients = Vec::new();
    for c in connecting {
        clients.push(c.await.expect("connect task"));
    }
    let (sender, _) = tokio_tungstenite::connect_async(url("sender")).await.expect("sender connects");

    // The stalled reader: a small receive buffer, so that the server's writes to it block soon.
    let stalled = if scenario.stalled_reader {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(running.addr).await.expect("tcp connect");
        let (client, _) = tokio_tungstenite::client_async(url("stalled"), stream).await.expect("stalled connects");
        Some(client)
    } else {
        None
    };
    // Every member is in the group before the first message.
    wait_until(Duration::from_secs(30), || running.app.open_connections() == scenario.clients + 1).await;

    let rss_before_kib = rss_kib();
    let started = Instant::now();
    let deadline = started + scenario.time_limit;
    let mut readers_done = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let (received, progress) = (received.clone(), progress.clone());
        let per_reader = scenario.messages as u64;
        readers_done.push(tokio::spawn(async move {
            let mut mine = 0;
            while mine < per_reader {
                match tokio::time::timeout_at(deadline.into(), client.next()).await {
                    Ok(Some(Ok(WsMessage::Text(_)))) => {
                        mine += 1;
                        received.fetch_add(1, Ordering::Relaxed);
                        progress[i].store(mine, Ordering::Relaxed);
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            client
        }));
    }
    let peak = Arc::new(AtomicU64::new(rss_before_kib));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // The sender: a message goes out when the slowest reader is at most `window` behind. Its own
    // copies are drained by a task of their own.
    let (mut sink, mut echoes) = sender.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = echoes.next().await {} });
    let text = "x".repeat(scenario.message_size);
    let mut sent = 0u64;
    while sent < scenario.messages as u64 && Instant::now() < deadline {
        let slowest = progress.iter().map(|p| p.load(Ordering::Relaxed)).min().unwrap_or(sent);
        if sent - slowest < scenario.window as u64 {
            sink.send(WsMessage::text(text.clone())).await.expect("sender sends");
            sent += 1;
        } else {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let mut clients = Vec::new();
    for reader in readers_done {
        clients.push(reader.await.expect("reader task"));
    }
    let wall = started.elapsed();
    sampling.abort();
    let delivered = received.load(Ordering::Relaxed);

    let stalled_closed = if let Some(stalled) = stalled {
        // It never read: the server gives up on it `send_timeout` after its buffers filled.
        let found = |d: &Disconnects| d.lock().expect("lock").iter().find(|(_, _, u)| u == "stalled").cloned();
        wait_until(scenario.send_timeout + Duration::from_secs(10), || found(&running.disconnects).is_some()).await;
        let closed = found(&running.disconnects).map(|(at, code, _)| (at.saturating_duration_since(started), code));
        drop(stalled);
        closed
    } else {
        None
    };

    for mut client in clients {
        let _ = client.close(None).await;
    }
    let _ = sink.close().await;
    drain.abort();
    let app = running.app.clone();
    wait_until(Duration::from_secs(10), || app.open_connections() == 0).await;
    let open_after = app.open_connections();
    let mut running = running;
    let _ = running.stop.take().map(|s| s.send(()));
    let _ = (&mut running.done).await;
    Outcome {
        throughput: delivered as f64 / wall.as_secs_f64().max(1e-9),
        delivered,
        expected,
        wall,
        stalled_closed,
        peak_rss_kib: peak.load(Ordering::Relaxed),
        rss_before_kib,
        dropped_full: running.dropped_full.load(Ordering::Relaxed),
        open_after,
    }
}

async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
