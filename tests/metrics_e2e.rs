//! Metrics over real sockets: a scripted session against the chat example, then its
//! `GET /metrics` parsed by Python's `prometheus_client` (its OpenMetrics parser, in the venv
//! `scripts/install-test-deps` makes) and compared with what the clients saw.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{Client, Example, close_code, connect, http, next_json, send_text};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn venv_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/install-test-deps first", python.display());
    python
}

/// Samples by `name{label="value",...}` (labels sorted), as Python's parser reads them.
type Samples = BTreeMap<String, f64>;

const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        out["%s{%s}" % (s.name, labels)] = s.value
print(json.dumps(out))
"#;

async fn scrape(example: &Example) -> Samples {
    let (status, text) = http(example.addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200, "{text}");
    let mut child = Command::new(venv_python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let output = child.wait_with_output().expect("python output");
    assert!(
        output.status.success(),
        "the parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON from the parser")
}

fn get(samples: &Samples, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or_else(|| panic!("no sample {key} in {samples:#?}"))
}

/// What one client has received: data frames and their payload bytes.
#[derive(Default, Debug)]
struct Seen {
    frames: u64,
    bytes: u64,
}

/// Reads every frame that arrives until the line is quiet for `quiet`.
async fn drain(client: &mut Client, seen: &mut Seen, quiet: Duration) {
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(quiet, client.next()).await {
        match frame {
            Message::Text(text) => {
                seen.frames += 1;
                seen.bytes += text.len() as u64;
            }
            Message::Binary(data) => {
                seen.frames += 1;
                seen.bytes += data.len() as u64;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_metrics_equal_a_scripted_session() {
    const N: usize = 4;
    const M: usize = 6;
    let example = Example::start("chat", &[]);
    let route = r#"route="/ws/chat/{room}/",transport="websocket""#;

    let before = scrape(&example).await;
    assert_eq!(before.get(&format!("channels_connections_open{{{route}}}")), None, "nothing is open yet");

    let mut clients = Vec::new();
    let mut seen: Vec<Seen> = (0..N).map(|_| Seen::default()).collect();
    for i in 0..N {
        clients.push(connect(&example.url(&format!("/ws/chat/metered/?user=u{i}"))).await);
    }
    let mut sent_bytes = 0;
    for k in 0..M {
        let text = format!("message {k}");
        sent_bytes += text.len() as u64;
        send_text(&mut clients[k % N], &text).await;
    }
    for (client, seen) in clients.iter_mut().zip(&mut seen) {
        drain(client, seen, Duration::from_millis(500)).await;
    }
    // A handshake the consumer denies (a room name the chat refuses) and one the origin check
    // refuses.
    let denied = tokio_tungstenite::connect_async(example.url("/ws/chat/no!good/")).await;
    assert!(denied.is_err(), "the chat denies a bad room");
    let mut request = example.url("/ws/chat/metered/").into_client_request().expect("request");
    request.headers_mut().insert("origin", "http://evil.example".parse().expect("header"));
    assert!(tokio_tungstenite::connect_async(request).await.is_err(), "a foreign origin is refused");

    let during = scrape(&example).await;
    let frames: u64 = seen.iter().map(|s| s.frames).sum();
    let bytes: u64 = seen.iter().map(|s| s.bytes).sum();
    assert!(frames >= (N * M + N) as u64, "each client saw the presence and every message: {seen:?}");
    assert_eq!(get(&during, r#"channels_messages_sent_total{transport="websocket"}"#), frames as f64);
    assert_eq!(get(&during, r#"channels_sent_bytes_total{transport="websocket"}"#), bytes as f64);
    assert_eq!(get(&during, r#"channels_messages_received_total{transport="websocket"}"#), M as f64);
    assert_eq!(get(&during, r#"channels_received_bytes_total{transport="websocket"}"#), sent_bytes as f64);
    assert_eq!(get(&during, &format!("channels_connections_open{{{route}}}")), N as f64);
    assert_eq!(get(&during, &format!("channels_connections_accepted_total{{{route}}}")), N as f64);
    assert_eq!(get(&during, r#"channels_handshakes_denied_total{reason="denied"}"#), 1.0);
    assert_eq!(get(&during, r#"channels_handshakes_denied_total{reason="middleware"}"#), 1.0);
    assert_eq!(get(&during, r#"channels_handler_duration_seconds_count{hook="receive"}"#), M as f64);
    // The `message` hook is timed one burst in 64 on each thread: a sample, whatever its size.
    assert_eq!(
        get(&during, r#"channels_handler_duration_seconds_count{hook="message"}"#),
        get(&during, r#"channels_handler_duration_seconds_bucket{hook="message",le="+Inf"}"#)
    );
    assert_eq!(get(&during, r#"channels_handler_duration_seconds_bucket{hook="receive",le="+Inf"}"#), M as f64);
    // Each message is one group send, reaching every member of the room.
    assert_eq!(get(&during, r#"channels_group_sends_total{layer="default"}"#), M as f64);
    assert_eq!(get(&during, r#"channels_group_deliveries_total{layer="default"}"#), (M * N) as f64);
    assert_eq!(get(&during, r#"channels_group_dropped_total{layer="default"}"#), 0.0);

    // A message over the 1 MiB limit: the server closes with 1009.
    let mut big = connect(&example.url("/ws/chat/big/?user=big")).await;
    next_json(&mut big).await;
    let _ = big.send(Message::text("x".repeat(2 << 20))).await;
    assert_eq!(close_code(&mut big).await, 1009);

    // Everybody leaves; the connections close and their durations are observed.
    for client in &mut clients {
        let _ = client.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(2), client.next()).await {}
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = scrape(&example).await;
        if get(&after, &format!("channels_connections_open{{{route}}}")) == 0.0
            || tokio::time::Instant::now() > deadline
        {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(get(&after, &format!("channels_connections_open{{{route}}}")), 0.0);
    assert_eq!(get(&after, &format!("channels_connections_accepted_total{{{route}}}")), (N + 1) as f64);
    assert_eq!(get(&after, r#"channels_closes_sent_total{code="1009"}"#), 1.0);
    assert_eq!(get(&after, r#"channels_connection_duration_seconds_count{transport="websocket"}"#), (N + 1) as f64);
    assert_eq!(
        get(&after, r#"channels_messages_received_total{transport="websocket"}"#),
        M as f64,
        "the oversized message is not one"
    );
    assert_eq!(get(&after, r#"channels_handshakes_denied_total{reason="denied"}"#), 1.0);
}

#[tokio::test]
async fn metrics_off_serves_no_metrics() {
    let example = Example::start("chat", &["--metrics", "off"]);
    let (status, _) = http(example.addr, "GET", "/metrics", "").await;
    assert_eq!(status, 404);
    let mut client = connect(&example.url("/ws/chat/quiet/?user=q")).await;
    next_json(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_shows_as_layer_errors() {
    let mut redis = channels::redis::testing::RedisServer::start();
    let layer = format!("{}/0?prefix=metered", redis.url());
    // History on (the default): its store's connection, dropped by the restart, reconnects
    // without failing the first send after it.
    let example = Example::start("chat", &["--layer", &layer]);
    let mut client = connect(&example.url("/ws/chat/outage/?user=o")).await;
    assert_eq!(next_json(&mut client).await["type"], "chat.presence");
    send_text(&mut client, "before").await;
    assert_eq!(support::next_of_type(&mut client, "chat.message").await["text"], "before");
    // The sender's own copy comes at once; the send through Redis is done a little later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while scrape(&example).await.get(r#"channels_group_sends_total{layer="default"}"#) != Some(&1.0) {
        assert!(tokio::time::Instant::now() < deadline, "the first group send never completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    redis.stop();
    const FAILED: usize = 3;
    for k in 0..FAILED {
        send_text(&mut client, &format!("during {k}")).await;
        // The chat tells the sender each message it could not deliver.
        assert_eq!(support::next_of_type(&mut client, "chat.error").await["type"], "chat.error");
    }
    let samples = scrape(&example).await;
    let layer_samples: Vec<_> = samples.iter().filter(|(k, _)| k.contains("group") || k.contains("layer")).collect();
    assert_eq!(
        get(&samples, r#"channels_group_sends_total{layer="default"}"#),
        (1 + FAILED) as f64,
        "{layer_samples:?}"
    );
    assert_eq!(get(&samples, r#"channels_group_deliveries_total{layer="default"}"#), 1.0);
    assert_eq!(get(&samples, r#"channels_layer_errors_total{layer="default",operation="group_send"}"#), FAILED as f64);
    assert_eq!(get(&samples, r#"channels_layer_recoveries_total{layer="default"}"#), 0.0);

    // Redis comes back (empty: the room's membership is gone until the connection renews it):
    // the next send is answered, and the layer counts one recovery.
    redis.restart();
    send_text(&mut client, "after").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let samples = scrape(&example).await;
        if get(&samples, r#"channels_group_sends_total{layer="default"}"#) == (2 + FAILED) as f64 {
            break samples;
        }
        assert!(tokio::time::Instant::now() < deadline, "the send after the outage never completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(get(&samples, r#"channels_layer_errors_total{layer="default",operation="group_send"}"#), FAILED as f64);
    assert_eq!(get(&samples, r#"channels_layer_recoveries_total{layer="default"}"#), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sent_event_stream_counts_as_an_sse_connection() {
    let example = Example::start("chat", &[]);
    let route = r#"route="/chat/{room}/stream",transport="sse""#;
    let mut stream = support::EventStream::open(example.addr, "/chat/streamed/stream?user=s").await;
    assert_eq!(stream.next().await["type"], "chat.presence");
    let (status, _) = http(example.addr, "POST", "/chat/streamed/messages?user=p", r#"{"message": "hi"}"#).await;
    assert!(status < 300, "posted: {status}");
    assert_eq!(stream.next_of_type("chat.message").await["text"], "hi");

    let samples = scrape(&example).await;
    assert_eq!(get(&samples, &format!("channels_connections_open{{{route}}}")), 1.0);
    assert_eq!(get(&samples, &format!("channels_connections_accepted_total{{{route}}}")), 1.0);
    // The presence and the message, and any keep-alive comments between them.
    assert!(get(&samples, r#"channels_messages_sent_total{transport="sse"}"#) >= 2.0);
    assert_eq!(get(&samples, r#"channels_messages_sent_total{transport="websocket"}"#), 0.0);

    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let samples = scrape(&example).await;
        if get(&samples, &format!("channels_connections_open{{{route}}}")) == 0.0 {
            assert_eq!(get(&samples, r#"channels_connection_duration_seconds_count{transport="sse"}"#), 1.0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stream is still counted open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chats_long_polls_and_posts_are_counted() {
    let example = Example::start("chat", &[]);
    let addr = example.addr;
    let route = r#"route="/chat/{room}/events",transport="long-poll""#;
    let events = "/chat/polled/events?client=c1&user=poller";
    let (mut answered_events, mut answered_bytes) = (0u64, 0u64);
    let mut count_answer = |status: u16, body: &str| {
        assert_eq!(status, 200, "{body}");
        let answer: Vec<serde_json::Value> = serde_json::from_str(body).expect("a JSON array of events");
        answered_events += answer.len() as u64;
        answered_bytes += body.len() as u64;
        answer
    };

    // The first poll answers with the presence snapshot.
    let (status, body) = http(addr, "GET", &format!("{events}&wait=0"), "").await;
    let first = count_answer(status, &body);
    assert!(first.iter().any(|e| e["type"] == "chat.presence"), "{first:?}");

    // A held poll is an open long-poll connection until it answers.
    let held = tokio::spawn(async move { http(addr, "GET", &format!("{events}&wait=10"), "").await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while scrape(&example).await.get(&format!("channels_connections_open{{{route}}}")) != Some(&1.0) {
        assert!(tokio::time::Instant::now() < deadline, "the held poll is never counted open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let post = r#"{"message": "hello pollers"}"#;
    let (status, _) = http(addr, "POST", "/chat/polled/messages?user=poster", post).await;
    assert_eq!(status, 202);
    let (status, body) = held.await.expect("the held poll");
    let second = count_answer(status, &body);
    assert!(second.iter().any(|e| e["text"] == "hello pollers"), "{second:?}");

    let samples = scrape(&example).await;
    assert_eq!(get(&samples, &format!("channels_connections_accepted_total{{{route}}}")), 2.0);
    assert_eq!(get(&samples, &format!("channels_connections_open{{{route}}}")), 0.0);
    assert_eq!(get(&samples, r#"channels_connection_duration_seconds_count{transport="long-poll"}"#), 2.0);
    assert_eq!(get(&samples, r#"channels_messages_sent_total{transport="long-poll"}"#), answered_events as f64);
    assert_eq!(get(&samples, r#"channels_sent_bytes_total{transport="long-poll"}"#), answered_bytes as f64);
    assert_eq!(get(&samples, r#"channels_messages_received_total{transport="long-poll"}"#), 1.0);
    assert_eq!(get(&samples, r#"channels_received_bytes_total{transport="long-poll"}"#), post.len() as f64);
    assert_eq!(get(&samples, r#"channels_messages_sent_total{transport="websocket"}"#), 0.0);
}
