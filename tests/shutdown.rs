//! Graceful shutdown, in-process: the connections closing leave their groups together, before
//! their `disconnect` hooks, and every hook still runs.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use channels::layers::{
    ChannelLayer, FlushError, GroupError, GroupSendReport, LayerConfig, Message, NewChannelError, ReceiveError,
    SendError,
};
use channels::memory::InMemoryChannelLayer;
use channels::prelude::*;
use support::{close_code, connect, next_text};

/// An in-memory layer that counts how connections leave their groups.
#[derive(Debug)]
struct CountingLayer {
    inner: InMemoryChannelLayer,
    discards: AtomicUsize,
    bulk_discards: AtomicUsize,
}

#[async_trait]
impl ChannelLayer for CountingLayer {
    async fn new_channel(&self, prefix: &str) -> Result<String, NewChannelError> {
        self.inner.new_channel(prefix).await
    }

    async fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        self.inner.send(channel, message).await
    }

    async fn receive(&self, channel: &str) -> Result<Message, ReceiveError> {
        self.inner.receive(channel).await
    }

    async fn group_add(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        self.inner.group_add(group, channel).await
    }

    async fn group_discard(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        self.discards.fetch_add(1, Ordering::SeqCst);
        self.inner.group_discard(group, channel).await
    }

    /// Takes a round trip's time, as a layer over the network does.
    async fn group_discard_many(&self, memberships: &[(String, String)]) -> Result<(), GroupError> {
        self.bulk_discards.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.inner.group_discard_many(memberships).await
    }

    async fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, GroupError> {
        self.inner.group_send(group, message).await
    }

    async fn flush(&self) -> Result<(), FlushError> {
        self.inner.flush().await
    }

    fn config(&self) -> &LayerConfig {
        self.inner.config()
    }
}

/// Joins `room`; its `disconnect` records the groups it still sees and announces the leave.
struct Member {
    seen_at_disconnect: Arc<Mutex<Vec<Vec<String>>>>,
}

impl WebsocketConsumer for Member {
    type Event = NoEvents;

    fn groups(&self) -> Vec<String> {
        vec!["room".into()]
    }

    async fn connect(&mut self, ctx: &mut WebsocketContext) -> HandlerResult {
        ctx.accept();
        ctx.send_text("in").await?;
        Ok(())
    }

    async fn disconnect(&mut self, ctx: &mut WebsocketContext, _code: u16) -> HandlerResult {
        self.seen_at_disconnect.lock().expect("lock").push(ctx.groups().to_vec());
        ctx.group_send("room", &serde_json::json!({"type": "left"})).await?;
        Ok(())
    }
}

const CONNECTIONS: usize = 50;

/// Says goodbye in `disconnect`, which fails: the connection is closed by then.
struct Polite;

impl WebsocketConsumer for Polite {
    type Event = NoEvents;

    async fn connect(&mut self, ctx: &mut WebsocketContext) -> HandlerResult {
        ctx.accept();
        ctx.send_text("in").await?;
        Ok(())
    }

    async fn disconnect(&mut self, ctx: &mut WebsocketContext, _code: u16) -> HandlerResult {
        ctx.send_text("bye").await?;
        Ok(())
    }
}

/// What this test process logs, from the first call on.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        #[derive(Clone)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = Captured(Arc::default());
        let writer = log.clone();
        tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).init();
        log.0
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_hooks_failing_on_closed_connections_at_shutdown_are_one_warning() {
    let log = captured_log();
    let app = Application::builder(Router::new().websocket("/ws/", |_: &Scope| Polite)).build();
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_shutdown(app, async move {
        let _ = stopped.await;
    }));
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut client = connect(&format!("ws://{addr}/ws/")).await;
        assert_eq!(next_text(&mut client).await, "in");
        clients.push(client);
    }

    let _ = stop.send(());
    futures_util::future::join_all(clients.iter_mut().map(close_code)).await;
    tokio::time::timeout(Duration::from_secs(5), serving).await.expect("shutdown ends").expect("task").expect("serve");

    let log = String::from_utf8_lossy(&log.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert!(!log.contains("disconnect handler failed"), "{log}");
    let summaries: Vec<&str> =
        log.lines().filter(|line| line.contains("disconnect handlers failed at shutdown")).collect();
    assert_eq!(summaries.len(), 1, "{log}");
    assert!(summaries[0].contains(&format!("failed={CONNECTIONS}")), "{}", summaries[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_connections_leave_their_groups_together_and_every_disconnect_runs() {
    let layer = Arc::new(CountingLayer {
        inner: InMemoryChannelLayer::new(LayerConfig::default()),
        discards: AtomicUsize::new(0),
        bulk_discards: AtomicUsize::new(0),
    });
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let recorded = seen.clone();
    let router = Router::new().websocket("/ws/", move |_: &Scope| Member { seen_at_disconnect: recorded.clone() });
    let app = Application::builder(router).layer(layer.clone()).build();
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_shutdown(app, async move {
        let _ = stopped.await;
    }));
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut client = connect(&format!("ws://{addr}/ws/")).await;
        assert_eq!(next_text(&mut client).await, "in");
        clients.push(client);
    }

    let _ = stop.send(());
    let codes = futures_util::future::join_all(clients.iter_mut().map(close_code)).await;
    assert!(codes.iter().all(|&code| code == 1001), "{codes:?}");
    tokio::time::timeout(Duration::from_secs(5), serving).await.expect("shutdown ends").expect("task").expect("serve");

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), CONNECTIONS, "every disconnect ran");
    assert!(seen.iter().all(|groups| groups == &["room"]), "disconnect still sees its groups: {seen:?}");
    assert_eq!(layer.discards.load(Ordering::SeqCst), 0, "no connection left on its own");
    let bulk = layer.bulk_discards.load(Ordering::SeqCst);
    assert!((1..=CONNECTIONS / 5).contains(&bulk), "{bulk} bulk removals for {CONNECTIONS} connections");
    let report = layer.group_send("room", Message::new(&serde_json::json!({"type": "t"})).expect("message")).await;
    assert_eq!(report.expect("group_send").queued, 0, "nobody is left in the room");
}
