//! The chat over every transport at once: WebSocket, long polling, polling, server-sent events.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use support::{EventStream, Example, Online, connect, http, next_json, next_of_type, online_until, send_text};

/// Long-polls until `count` chat messages arrived; returns their texts in order.
async fn poll_messages(example: &Example, room: &str, client: &str, wait: u32, count: usize) -> Vec<String> {
    let mut texts = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while texts.len() < count {
        assert!(tokio::time::Instant::now() < deadline, "{client} got only {texts:?}");
        let (status, body) =
            http(example.addr, "GET", &format!("/chat/{room}/events?client={client}&wait={wait}"), "").await;
        assert_eq!(status, 200, "{body}");
        let events: Vec<serde_json::Value> = serde_json::from_str(&body).expect("a JSON array");
        texts.extend(
            events.iter().filter(|e| e["type"] == "chat.message").map(|e| e["text"].as_str().unwrap_or("").to_owned()),
        );
        if wait == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    texts
}

fn in_order_per_sender(texts: &[String]) -> bool {
    let mut next: HashMap<&str, u32> = HashMap::new();
    texts.iter().all(|t| {
        let (sender, n) = t.split_once(':').unwrap_or(("", ""));
        let expected = next.entry(sender).or_default();
        let ok = n.parse::<u32>().ok() == Some(*expected);
        *expected += 1;
        ok
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_long_poll_poll_and_sse_users_share_one_room() {
    let example = Example::start("chat", &[]);
    let mut ws = connect(&example.url("/ws/chat/mixed/?user=w")).await;
    next_json(&mut ws).await;
    let mut sse = EventStream::open(example.addr, "/chat/mixed/stream?user=s").await;
    assert_eq!(sse.next().await["type"], "chat.presence");
    for client in ["longpoller", "poller"] {
        let (status, body) =
            http(example.addr, "GET", &format!("/chat/mixed/events?client={client}&user={client}"), "").await;
        assert_eq!(status, 200);
        assert!(body.contains("chat.presence"), "the first answer is the presence snapshot: {body}");
    }
    // Each transport sends three numbered messages.
    for n in 0..3 {
        send_text(&mut ws, &format!("w:{n}")).await;
        for (user, body) in
            [("l", format!("l:{n}")), ("p", format!("{{\"message\": \"p:{n}\"}}")), ("s", format!("s:{n}"))]
        {
            let (status, reply) = http(example.addr, "POST", &format!("/chat/mixed/messages?user={user}"), &body).await;
            assert_eq!(status, 202, "{reply}");
        }
    }
    let long_poll = poll_messages(&example, "mixed", "longpoller", 25, 12).await;
    let polled = poll_messages(&example, "mixed", "poller", 0, 12).await;
    let mut over_ws = Vec::new();
    while over_ws.len() < 12 {
        over_ws.push(next_of_type(&mut ws, "chat.message").await["text"].as_str().unwrap_or("").to_owned());
    }
    let mut over_sse = Vec::new();
    while over_sse.len() < 12 {
        over_sse.push(sse.next_of_type("chat.message").await["text"].as_str().unwrap_or("").to_owned());
    }
    for (name, texts) in [("long poll", &long_poll), ("poll", &polled), ("websocket", &over_ws), ("sse", &over_sse)] {
        assert_eq!(texts.len(), 12, "{name}: {texts:?}");
        assert!(in_order_per_sender(texts), "{name} out of order: {texts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_polling_client_is_dropped_and_announced() {
    let example = Example::start("chat", &["--poll-timeout", "1"]);
    let mut watcher = connect(&example.url("/ws/chat/quiet/?user=watcher")).await;
    assert_eq!(next_json(&mut watcher).await["users"], json!(["watcher"]));
    let (status, _) = http(example.addr, "GET", "/chat/quiet/events?client=ghost&user=ghost&wait=0", "").await;
    assert_eq!(status, 200);
    let joined = next_json(&mut watcher).await;
    assert_eq!(joined, json!({"type": "chat.presence_diff", "joins": {"ghost": 1}, "leaves": {}}));
    // The ghost never polls again.
    let left = tokio::time::timeout(Duration::from_secs(5), next_json(&mut watcher)).await;
    let left = left.expect("announced within 5 s");
    assert_eq!(left, json!({"type": "chat.presence_diff", "joins": {}, "leaves": {"ghost": 1}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pollers_first_answer_holds_its_presence_even_in_a_busy_room() {
    let example = Example::start("chat", &[]);
    let mut talker = connect(&example.url("/ws/chat/busy/?user=talker")).await;
    next_json(&mut talker).await;
    let chatter = tokio::spawn(async move {
        for n in 0..2000 {
            send_text(&mut talker, &format!("busy {n}")).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        talker
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for client in 0..5 {
        let (status, body) =
            http(example.addr, "GET", &format!("/chat/busy/events?client=newcomer{client}&user=n{client}&wait=0"), "")
                .await;
        assert_eq!(status, 200, "{body}");
        let events: Vec<serde_json::Value> = serde_json::from_str(&body).expect("a JSON array");
        let presence = events.iter().find(|e| e["type"] == "chat.presence");
        let presence = presence.unwrap_or_else(|| panic!("the first answer holds the presence snapshot: {body:.300}"));
        assert!(presence["users"].as_array().expect("users").contains(&json!(format!("n{client}"))), "{presence}");
    }
    chatter.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_posts_get_clear_errors_and_nothing_is_broadcast() {
    let example = Example::start("chat", &[]);
    let mut listener = connect(&example.url("/ws/chat/strict/?user=listener")).await;
    next_json(&mut listener).await;
    let big_text = "x".repeat(5000);
    let huge_body = "y".repeat((1 << 20) + 1);
    let cases: [(&str, &str, u16, &str); 6] = [
        ("/chat/strict/messages", "{\"message\": ", 400, "malformed JSON"),
        ("/chat/strict/messages", "{\"other\": 1}", 400, "malformed JSON"),
        ("/chat/strict/messages", "   ", 400, "empty"),
        ("/chat/strict/messages", &big_text, 413, "limited to"),
        ("/chat/strict/messages", &huge_body, 413, "too large"),
        ("/chat/bad%20room/messages", "hi", 400, "room names"),
    ];
    for (path, body, status, says) in cases {
        let (got, reply) = http(example.addr, "POST", path, body).await;
        assert_eq!(got, status, "{path} {:.20}: {reply}", body);
        assert!(reply.contains(says), "{reply}");
    }
    let (status, _) = http(example.addr, "GET", "/chat/strict/messages", "").await;
    assert_eq!(status, 405);
    let (status, reply) = http(example.addr, "GET", "/chat/strict/events?client=bad%20id", "").await;
    assert_eq!((status, reply.contains("client")), (400, true));
    let (status, reply) = http(example.addr, "GET", "/chat/strict/events?client=ok&wait=soon", "").await;
    assert_eq!((status, reply.contains("wait")), (400, true));
    let heard = tokio::time::timeout(Duration::from_millis(300), next_of_type(&mut listener, "chat.message")).await;
    assert!(heard.is_err(), "nothing was broadcast: {heard:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_that_hangs_up_mid_wait_still_times_out_and_delete_leaves_at_once() {
    let example = Example::start("chat", &["--poll-timeout", "1"]);
    let mut watcher = connect(&example.url("/ws/chat/cut/?user=watcher")).await;
    let mut online = Online::default();
    online.apply(&next_json(&mut watcher).await);
    for (client, user) in [("cutoff", "cutoff"), ("leaver", "leaver")] {
        let (status, _) = http(example.addr, "GET", &format!("/chat/cut/events?client={client}&user={user}"), "").await;
        assert_eq!(status, 200);
        online_until(&mut watcher, &mut online, |o| o.0.contains_key(user)).await;
    }
    // Drain what the cut-off poller was sent since, then start a long poll and hang up in the
    // middle of it.
    http(example.addr, "GET", "/chat/cut/events?client=cutoff&wait=0", "").await;
    let addr = example.addr;
    let held = tokio::spawn(async move { http(addr, "GET", "/chat/cut/events?client=cutoff&wait=25", "").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.abort();
    // The leaver says goodbye explicitly.
    let (status, _) = http(example.addr, "DELETE", "/chat/cut/events?client=leaver", "").await;
    assert_eq!(status, 200);
    online_until(&mut watcher, &mut online, |o| !o.0.contains_key("leaver")).await;
    let (status, _) = http(example.addr, "DELETE", "/chat/cut/events?client=leaver", "").await;
    assert_eq!(status, 404, "gone already");
    let timed_out = tokio::time::timeout(
        Duration::from_secs(5),
        online_until(&mut watcher, &mut online, |o| o.users() == ["watcher"]),
    );
    assert!(timed_out.await.is_ok(), "the cut-off poller times out within 5 s");
}
