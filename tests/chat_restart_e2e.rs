//! A chat process killed and restarted mid-conversation on Redis: twenty WebSocket clients in
//! one room, half on each of two processes, send a thousand messages between them; the clients
//! of the killed process reconnect with `?since=` their last position and resend what they
//! could not confirm, with the same message IDs. Two server-sent-event readers on the killed
//! process come back with `Last-Event-ID`. Afterwards every client holds the same transcript:
//! every message exactly once, in offset order, nothing lost and nothing doubled.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use channels::redis::testing::RedisServer;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::Example;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as Frame;

const CLIENTS: usize = 20;
/// Readers over server-sent events, on the process that is killed.
const READERS: usize = 2;
const MESSAGES: usize = 1000;
const PER_CLIENT: usize = MESSAGES / CLIENTS;
/// Pause between one client's sends: the thousand messages take about two seconds.
const PACE: Duration = Duration::from_millis(40);
/// Everything is over well within this, or the test fails.
const LIMIT: Duration = Duration::from_secs(30);

/// The address of each chat process, by slot: a restarted process comes back at a new one.
type Slots = Arc<Mutex<Vec<SocketAddr>>>;

/// What one client saw and did.
#[derive(Debug, Default)]
struct Outcome {
    /// `(offset, message ID)` of every `chat.message`, in arrival order.
    transcript: Vec<(u64, String)>,
    epochs: HashSet<String>,
    unrecovered: Vec<Value>,
    errors: Vec<Value>,
    reconnects: usize,
    resent: usize,
}

/// A chat client that keeps its conversation: it remembers the last position it saw and comes
/// back with `?since=` after losing its connection, and resends, with the same ID, each of its
/// messages it has not seen come back from the room.
struct Resilient {
    name: String,
    slot: usize,
    slots: Slots,
    /// `(id, text)` of the messages not sent yet, oldest first.
    to_send: std::collections::VecDeque<(String, String)>,
    /// Sent, not yet seen in the room: resent on every reconnect.
    unconfirmed: BTreeMap<String, String>,
    /// The last message seen confirmed: resent on a reconnect too, as by a client whose
    /// confirmation raced the cut (the server must not store it twice).
    last_confirmed: Option<(String, String)>,
    last: Option<(String, u64)>,
    outcome: Outcome,
}

impl Resilient {
    fn new(index: usize, slots: Slots) -> Self {
        let name = format!("c{index}");
        let to_send = (0..PER_CLIENT).map(|k| (format!("{name}-{k}"), format!("{name} says {k}"))).collect();
        Resilient {
            slot: index % 2,
            name,
            slots,
            to_send,
            unconfirmed: BTreeMap::new(),
            last_confirmed: None,
            last: None,
            outcome: Outcome::default(),
        }
    }

    fn url(&self) -> String {
        let addr = self.slots.lock().expect("the slots")[self.slot];
        let since = self.last.as_ref().map(|(e, o)| format!("&since={e}:{o}")).unwrap_or_default();
        format!("ws://{addr}/ws/chat/restart/?user={}{since}", self.name)
    }

    /// Connects, retrying while the process is down.
    async fn connect(&mut self, deadline: Instant) -> support::Client {
        loop {
            assert!(Instant::now() < deadline, "{} could not reconnect", self.name);
            if let Ok(Ok((client, _))) =
                tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(self.url())).await
            {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn frame(id: &str, text: &str) -> Frame {
        Frame::text(serde_json::json!({ "message": text, "id": id }).to_string())
    }

    /// Takes one event; returns whether it was the presence snapshot.
    fn on_event(&mut self, event: &Value, confirmed: &AtomicUsize) -> bool {
        match event["type"].as_str() {
            Some("chat.message") => {
                let epoch = event["epoch"].as_str().expect("an epoch").to_owned();
                let offset = event["offset"].as_u64().expect("an offset");
                let id = event["id"].as_str().expect("the sender's ID").to_owned();
                if event["user"] == self.name.as_str()
                    && let Some(text) = self.unconfirmed.remove(&id)
                {
                    confirmed.fetch_add(1, Ordering::Relaxed);
                    self.last_confirmed = Some((id.clone(), text));
                }
                self.outcome.transcript.push((offset, id));
                self.outcome.epochs.insert(epoch.clone());
                self.last = Some((epoch, offset));
            }
            Some("chat.unrecovered") => self.outcome.unrecovered.push(event.clone()),
            Some("chat.error") => self.outcome.errors.push(event.clone()),
            Some("chat.presence") => return true,
            _ => {}
        }
        false
    }

    /// Chats until it has sent everything, seen all of it confirmed, and seen `MESSAGES`
    /// messages in the room.
    async fn run(mut self, ready: Arc<tokio::sync::Barrier>, confirmed: Arc<AtomicUsize>) -> Outcome {
        let deadline = Instant::now() + LIMIT;
        let mut client = self.connect(deadline).await;
        // The snapshot comes after the server has placed this client in the room's stream.
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), client.next()).await.expect("the snapshot");
            if let Some(Ok(Frame::Text(t))) = frame
                && self.on_event(&serde_json::from_str(&t).expect("JSON"), &confirmed)
            {
                break;
            }
        }
        ready.wait().await;
        let mut pace = tokio::time::interval(PACE);
        loop {
            let done = self.to_send.is_empty() && self.unconfirmed.is_empty();
            if done && self.outcome.transcript.len() >= MESSAGES {
                return self.outcome;
            }
            assert!(
                Instant::now() < deadline,
                "{} timed out: {} messages seen, last {:?}, {} to send, unconfirmed {:?}, {} reconnects, {:?} {:?}",
                self.name,
                self.outcome.transcript.len(),
                self.last,
                self.to_send.len(),
                self.unconfirmed.keys().collect::<Vec<_>>(),
                self.outcome.reconnects,
                self.outcome.unrecovered,
                self.outcome.errors,
            );
            let lost = tokio::select! {
                frame = client.next() => match frame {
                    Some(Ok(Frame::Text(t))) => {
                        self.on_event(&serde_json::from_str(&t).expect("JSON"), &confirmed);
                        false
                    }
                    Some(Ok(_)) => false,
                    Some(Err(_)) | None => true,
                },
                _ = pace.tick(), if !self.to_send.is_empty() => {
                    let (id, text) = self.to_send.pop_front().expect("one to send");
                    let sent = client.send(Self::frame(&id, &text)).await;
                    self.unconfirmed.insert(id, text);
                    sent.is_err()
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            if lost {
                self.outcome.reconnects += 1;
                client = self.connect(deadline).await;
                let unconfirmed = self.unconfirmed.iter();
                for (id, text) in self.last_confirmed.iter().map(|(id, text)| (id, text)).chain(unconfirmed) {
                    self.outcome.resent += 1;
                    // A failure here shows as a lost connection at the next read.
                    let _ = client.send(Self::frame(id, text)).await;
                }
            }
        }
    }
}

/// A chat process on `layer`, keeping more than the whole conversation: a client away for the
/// restart must find every message it missed still there.
/// A reader over server-sent events that comes back with `Last-Event-ID` when its stream ends.
struct SseReader {
    slots: Slots,
    last_id: Option<String>,
    outcome: Outcome,
}

impl SseReader {
    /// Opens the stream, retrying while the process is down.
    async fn open(&self, deadline: Instant) -> hyper::body::Incoming {
        loop {
            assert!(Instant::now() < deadline, "a reader could not reconnect");
            let addr = self.slots.lock().expect("the slots")[0];
            let opened = async {
                let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
                tokio::spawn(connection);
                let mut request =
                    hyper::Request::builder().uri("/chat/restart/stream?user=reader").header("host", addr.to_string());
                if let Some(id) = &self.last_id {
                    request = request.header("last-event-id", id.as_str());
                }
                let request = request.body(http_body_util::Empty::<bytes::Bytes>::new()).ok()?;
                let response = sender.send_request(request).await.ok()?;
                (response.status() == 200).then(|| response.into_body())
            };
            if let Ok(Some(body)) = tokio::time::timeout(Duration::from_secs(2), opened).await {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes one event (`id:` and `data:` lines); returns whether it was the presence snapshot.
    fn on_event(&mut self, event: &str) -> bool {
        let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { return false };
        let value: Value = serde_json::from_str(data).expect("JSON data");
        match value["type"].as_str() {
            Some("chat.message") => {
                let offset = value["offset"].as_u64().expect("an offset");
                self.outcome.transcript.push((offset, value["id"].as_str().expect("an ID").to_owned()));
                self.outcome.epochs.insert(value["epoch"].as_str().expect("an epoch").to_owned());
                self.last_id = event.lines().find_map(|l| l.strip_prefix("id: ")).map(str::to_owned);
            }
            Some("chat.unrecovered") => self.outcome.unrecovered.push(value),
            Some("chat.presence") => return true,
            _ => {}
        }
        false
    }

    async fn run(mut self, ready: Arc<tokio::sync::Barrier>) -> Outcome {
        use http_body_util::BodyExt;
        let deadline = Instant::now() + LIMIT;
        let mut body = self.open(deadline).await;
        let mut buffer = String::new();
        let mut waiting_for_snapshot = true;
        while self.outcome.transcript.len() < MESSAGES {
            assert!(Instant::now() < deadline, "a reader timed out: {} messages", self.outcome.transcript.len());
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                if self.on_event(&event) && waiting_for_snapshot {
                    waiting_for_snapshot = false;
                    ready.wait().await;
                }
            }
            match tokio::time::timeout(Duration::from_secs(1), body.frame()).await {
                Err(_) => {}
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        buffer.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                Ok(Some(Err(_)) | None) => {
                    self.outcome.reconnects += 1;
                    buffer.clear();
                    body = self.open(deadline).await;
                }
            }
        }
        self.outcome
    }
}

fn start_chat(layer: &str) -> Example {
    Example::start("chat", &["--layer", layer, "--history", "2000"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_process_loses_and_doubles_nothing_across_twenty_clients() {
    let redis = RedisServer::start();
    let layer = format!("{}/0?prefix=restart", redis.url());
    let mut one = start_chat(&layer);
    let two = start_chat(&layer);
    let slots: Slots = Arc::new(Mutex::new(vec![one.addr, two.addr]));
    let ready = Arc::new(tokio::sync::Barrier::new(CLIENTS + READERS + 1));
    let confirmed = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(Resilient::new(i, slots.clone()).run(ready.clone(), confirmed.clone())))
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let reader = SseReader { slots: slots.clone(), last_id: None, outcome: Outcome::default() };
            tokio::spawn(reader.run(ready.clone()))
        })
        .collect();
    ready.wait().await;

    // Halfway through, the first process dies without a word (SIGKILL) and a new one starts.
    let deadline = Instant::now() + LIMIT;
    while confirmed.load(Ordering::Relaxed) < MESSAGES / 2 {
        assert!(Instant::now() < deadline, "the first half was never sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    one.child.kill().expect("kill the first process");
    one.child.wait().expect("reap it");
    let layer2 = layer.clone();
    let restarted = tokio::task::spawn_blocking(move || start_chat(&layer2)).await.expect("restart");
    slots.lock().expect("the slots")[0] = restarted.addr;

    let mut outcomes = Vec::new();
    for c in clients {
        outcomes.push(c.await.expect("a client"));
    }
    let mut reader_reconnects = Vec::new();
    for r in readers {
        let outcome = r.await.expect("a reader");
        reader_reconnects.push(outcome.reconnects);
        outcomes.push(outcome);
    }
    assert!(reader_reconnects.iter().all(|&n| n >= 1), "the readers came back: {reader_reconnects:?}");
    let reconnects: usize = outcomes.iter().map(|o| o.reconnects).sum();
    let resent: usize = outcomes.iter().map(|o| o.resent).sum();
    eprintln!("{reconnects} reconnects, {resent} resends");
    assert!(reconnects >= CLIENTS / 2 + READERS, "the clients of the killed process reconnected: {reconnects}");

    let expected_ids: HashSet<String> =
        (0..CLIENTS).flat_map(|i| (0..PER_CLIENT).map(move |k| format!("c{i}-{k}"))).collect();
    let reference = &outcomes[0].transcript;
    for (i, o) in outcomes.iter().enumerate() {
        assert!(o.unrecovered.is_empty() && o.errors.is_empty(), "client {i}: {:?} {:?}", o.unrecovered, o.errors);
        assert_eq!(o.epochs.len(), 1, "client {i} saw one history");
        let offsets: Vec<u64> = o.transcript.iter().map(|(offset, _)| *offset).collect();
        assert_eq!(offsets, (1..=MESSAGES as u64).collect::<Vec<_>>(), "client {i}: each offset once, in order");
        let ids: HashSet<String> = o.transcript.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(ids.len(), MESSAGES, "client {i}: a message ID twice");
        assert_eq!(ids, expected_ids, "client {i}: every message sent, once");
        assert_eq!(&o.transcript, reference, "client {i}'s transcript differs from client 0's");
    }
    drop(restarted);
    drop(two);
}
