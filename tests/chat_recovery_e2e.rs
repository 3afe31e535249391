//! The chat example's history and recovery over real sockets: positions on every
//! `chat.message`, `?since=` on the WebSocket, SSE (and `Last-Event-ID`) and long-poll URLs,
//! `chat.unrecovered` when the position is gone, and recovery across processes on Redis.

mod support;

use channels::redis::testing::RedisServer;
use serde_json::Value;
use support::{Client, EventStream, Example, connect, next_json, next_of_type, send_text};

/// The next `n` chat messages' texts and `(epoch, offset)`s.
async fn messages(client: &mut Client, n: usize) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let m = next_of_type(client, "chat.message").await;
        out.push(position(&m));
    }
    out
}

fn position(m: &Value) -> (String, String, u64) {
    let text = m["text"].as_str().expect("a text").to_owned();
    let epoch = m["epoch"].as_str().unwrap_or_else(|| panic!("an epoch string in {m}")).to_owned();
    (text, epoch, m["offset"].as_u64().unwrap_or_else(|| panic!("an integer offset in {m}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_has_a_position_and_since_replays_what_followed_then_goes_live() {
    let example = Example::start("chat", &[]);
    let mut bob = connect(&example.url("/ws/chat/r/?user=bob")).await;
    assert_eq!(next_json(&mut bob).await["type"], "chat.presence");
    for k in 1..=5 {
        send_text(&mut bob, &format!("m{k}")).await;
    }
    let seen = messages(&mut bob, 5).await;
    let epoch = seen[0].1.clone();
    assert!(!epoch.is_empty());
    assert_eq!(seen, (1..=5).map(|k| (format!("m{k}"), epoch.clone(), k)).collect::<Vec<_>>());

    // A client that saw up to m2 comes back: m3..m5 first, before anything else, then live.
    let mut ann = connect(&example.url(&format!("/ws/chat/r/?user=ann&since={epoch}:2"))).await;
    let mut replayed = Vec::new();
    for _ in 0..3 {
        let m = next_json(&mut ann).await;
        assert_eq!(m["type"], "chat.message", "the replay comes first: {m}");
        replayed.push(position(&m));
    }
    assert_eq!(replayed, seen[2..]);
    send_text(&mut bob, "m6").await;
    send_text(&mut bob, "m7").await;
    assert_eq!(messages(&mut ann, 2).await, vec![("m6".into(), epoch.clone(), 6), ("m7".into(), epoch.clone(), 7)]);

    // From the current position: nothing replayed, the live stream only.
    let mut cal = connect(&example.url(&format!("/ws/chat/r/?user=cal&since={epoch}:7"))).await;
    assert_eq!(next_json(&mut cal).await["type"], "chat.presence");
    send_text(&mut bob, "m8").await;
    assert_eq!(messages(&mut cal, 1).await, vec![("m8".into(), epoch.clone(), 8)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_that_is_gone_gets_chat_unrecovered_first() {
    let example = Example::start("chat", &["--history", "3"]);
    let mut bob = connect(&example.url("/ws/chat/g/?user=bob")).await;
    next_json(&mut bob).await;
    for k in 1..=6 {
        send_text(&mut bob, &format!("m{k}")).await;
    }
    let seen = messages(&mut bob, 6).await;
    let epoch = &seen[0].1;
    for since in [format!("{epoch}:1"), "another-epoch:3".to_owned(), format!("{epoch}:99")] {
        let mut ann = connect(&example.url(&format!("/ws/chat/g/?user=ann&since={since}"))).await;
        let first = next_json(&mut ann).await;
        assert_eq!(first["type"], "chat.unrecovered", "since={since}: {first}");
        assert_eq!((first["epoch"].as_str(), first["offset"].as_u64()), (Some(epoch.as_str()), Some(6)));
    }
    // Within the size of 3: recovered.
    let mut ann = connect(&example.url(&format!("/ws/chat/g/?user=ann&since={epoch}:3"))).await;
    assert_eq!(messages(&mut ann, 3).await, seen[3..]);
    // Malformed: told, then live.
    let mut bad = connect(&example.url("/ws/chat/g/?user=bad&since=nonsense")).await;
    let error = next_json(&mut bad).await;
    assert_eq!(error["type"], "chat.error");
    assert!(error["error"].as_str().unwrap_or_default().contains("EPOCH:OFFSET"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_off_messages_have_no_position_and_since_is_unrecovered() {
    let example = Example::start("chat", &["--history", "0"]);
    let mut bob = connect(&example.url("/ws/chat/off/?user=bob")).await;
    next_json(&mut bob).await;
    send_text(&mut bob, "hello").await;
    let m = next_of_type(&mut bob, "chat.message").await;
    assert!(m.get("epoch").is_none() && m.get("offset").is_none(), "{m}");
    let mut ann = connect(&example.url("/ws/chat/off/?user=ann&since=abc:1")).await;
    assert_eq!(next_json(&mut ann).await["type"], "chat.unrecovered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_long_polling_replay_since_a_position_and_last_event_id_wins() {
    let example = Example::start("chat", &[]);
    let mut bob = connect(&example.url("/ws/chat/h/?user=bob")).await;
    next_json(&mut bob).await;
    for k in 1..=4 {
        send_text(&mut bob, &format!("m{k}")).await;
    }
    let seen = messages(&mut bob, 4).await;
    let epoch = seen[0].1.clone();

    // SSE: ?since= replays, each event with its id.
    let mut sse = EventStream::open(example.addr, &format!("/chat/h/stream?user=s&since={epoch}:1")).await;
    for (text, _, offset) in &seen[1..] {
        let (id, m) = sse.next_with_id().await;
        assert_eq!(m["type"], "chat.message", "the replay comes first: {m}");
        assert_eq!((m["text"].as_str(), id), (Some(text.as_str()), Some(format!("{epoch}:{offset}"))));
    }
    send_text(&mut bob, "m5").await;
    assert_eq!(next_of_type(&mut bob, "chat.message").await["text"], "m5");
    let live = sse.next_of_type("chat.message").await;
    assert_eq!((live["text"].as_str(), live["offset"].as_u64()), (Some("m5"), Some(5)));

    // Last-Event-ID (what EventSource sends when it reconnects) wins over the first URL's ?since=.
    let mut again = EventStream::open_with(
        example.addr,
        &format!("/chat/h/stream?user=s&since={epoch}:1"),
        &[("last-event-id", &format!("{epoch}:4"))],
    )
    .await;
    let (id, m) = again.next_with_id().await;
    assert_eq!((m["text"].as_str(), id), (Some("m5"), Some(format!("{epoch}:5"))));
    let mut gone = EventStream::open_with(example.addr, "/chat/h/stream?user=s", &[("last-event-id", "zzz:2")]).await;
    assert_eq!(gone.next().await["type"], "chat.unrecovered");
    let (status, _) = support::http(example.addr, "GET", "/chat/h/stream?since=bad", "").await;
    assert_eq!(status, 400);

    // Long polling: a new client's first answer holds the replay.
    let (status, body) =
        support::http(example.addr, "GET", &format!("/chat/h/events?client=p1&user=p&since={epoch}:3&wait=1"), "")
            .await;
    assert_eq!(status, 200, "{body}");
    let events: Vec<Value> = serde_json::from_str(&body).expect("a JSON array");
    let texts: Vec<&str> =
        events.iter().filter(|e| e["type"] == "chat.message").filter_map(|e| e["text"].as_str()).collect();
    assert_eq!(texts, ["m4", "m5"], "{body}");
    assert_eq!(events.iter().filter(|e| e["type"] == "chat.presence").count(), 1, "{body}");
    let (status, body) =
        support::http(example.addr, "GET", "/chat/h/events?client=p2&user=p&since=gone:3&wait=1", "").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Vec<Value>>(&body).expect("JSON")[0]["type"], "chat.unrecovered", "{body}");
    let (status, _) = support::http(example.addr, "GET", "/chat/h/events?client=p3&since=x", "").await;
    assert_eq!(status, 400);
    // Posted messages get positions too.
    let (status, _) = support::http(example.addr, "POST", "/chat/h/messages?user=p", "posted").await;
    assert_eq!(status, 202);
    let posted = next_of_type(&mut bob, "chat.message").await;
    assert_eq!((posted["text"].as_str(), posted["offset"].as_u64()), (Some("posted"), Some(6)));
}

/// On Redis the history outlives a chat process: a client of a process that stopped comes back
/// to another and gets what was said meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_client_recovers_through_another_process() {
    let redis = RedisServer::start();
    let layer = format!("{}/0?prefix=chat", redis.url());
    let mut east = Example::start("chat", &["--layer", &layer]);
    let west = Example::start("chat", &["--layer", &layer]);
    let mut ann = connect(&east.url("/ws/chat/x/?user=ann")).await;
    next_json(&mut ann).await;
    let mut bob = connect(&west.url("/ws/chat/x/?user=bob")).await;
    next_json(&mut bob).await;
    send_text(&mut bob, "before").await;
    let before = position(&next_of_type(&mut ann, "chat.message").await);
    assert_eq!(before.2, 1);
    assert!(east.terminate(), "east stops");
    for k in 1..=3 {
        send_text(&mut bob, &format!("while away {k}")).await;
    }
    let said = messages(&mut bob, 4).await;
    let mut ann = connect(&west.url(&format!("/ws/chat/x/?user=ann&since={}:{}", before.1, before.2))).await;
    assert_eq!(messages(&mut ann, 3).await, said[1..]);
}

/// A message sent with an ID carries it back; sent again with the same ID by the same user
/// (a client resending after a reconnect), it is neither stored nor delivered again, on the
/// WebSocket and on `POST`; another user's same ID is another message; a bad ID is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_resent_with_its_id_is_delivered_once() {
    let example = Example::start("chat", &[]);
    let mut bob = connect(&example.url("/ws/chat/ids/?user=bob")).await;
    next_json(&mut bob).await;
    let with_id = |text: &str, id: &str| serde_json::json!({ "message": text, "id": id }).to_string();
    send_text(&mut bob, &with_id("one", "b-1")).await;
    let one = next_of_type(&mut bob, "chat.message").await;
    assert_eq!((one["text"].as_str(), one["id"].as_str(), one["offset"].as_u64()), (Some("one"), Some("b-1"), Some(1)));
    send_text(&mut bob, &with_id("one", "b-1")).await;
    let (status, body) =
        support::http(example.addr, "POST", "/chat/ids/messages?user=bob", &with_id("one", "b-1")).await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = support::http(example.addr, "POST", "/chat/ids/messages?user=ann", &with_id("hers", "b-1")).await;
    assert_eq!(status, 202);
    send_text(&mut bob, &with_id("two", "b-2")).await;
    let next = next_of_type(&mut bob, "chat.message").await;
    assert_eq!(
        (next["user"].as_str(), next["id"].as_str(), next["offset"].as_u64()),
        (Some("ann"), Some("b-1"), Some(2))
    );
    let two = next_of_type(&mut bob, "chat.message").await;
    assert_eq!((two["text"].as_str(), two["offset"].as_u64()), (Some("two"), Some(3)));

    send_text(&mut bob, &with_id("bad", "no spaces")).await;
    let error = next_json(&mut bob).await;
    assert_eq!(error["type"], "chat.error", "{error}");
    let (status, _) = support::http(example.addr, "POST", "/chat/ids/messages?user=bob", &with_id("bad", "")).await;
    assert_eq!(status, 400);
}
