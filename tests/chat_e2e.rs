//! The chat example over real sockets: a real process, real TCP, a real WebSocket client.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::{Example, Online, close_code, connect, next_json, next_of_type, online_until, send_text};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

fn http_get(example: &Example, path: &str, extra_headers: &str) -> String {
    let mut stream = std::net::TcpStream::connect(example.addr).expect("tcp connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{extra_headers}\r\n", example.addr)
        .expect("write request");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_in_a_room_get_all_200_messages_in_order_and_other_rooms_hear_nothing() {
    let example = Example::start("chat", &[]);
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut client = connect(&example.url(&format!("/ws/chat/e2e/?user=u{i}"))).await;
        assert_eq!(next_json(&mut client).await["type"], "chat.presence");
        clients.push(client);
    }
    let mut outsider = connect(&example.url("/ws/chat/elsewhere/?user=x")).await;
    assert_eq!(next_json(&mut outsider).await["type"], "chat.presence");

    for (i, client) in clients.iter_mut().enumerate() {
        for k in 0..10 {
            send_text(client, &format!("{{\"message\": \"u{i}:{k}\"}}")).await;
        }
    }
    let readers = clients.into_iter().map(|mut client| {
        tokio::spawn(async move {
            let mut next_from: HashMap<String, usize> = HashMap::new();
            for _ in 0..200 {
                let event = next_of_type(&mut client, "chat.message").await;
                let text = event["text"].as_str().expect("text").to_owned();
                let (user, k) = text.split_once(':').expect("user:k");
                assert_eq!(event["user"], user, "sender is named");
                assert!(event["ts"].as_f64().expect("ts") > 1.0e9);
                let expected = next_from.entry(user.to_owned()).or_default();
                assert_eq!(k.parse::<usize>().expect("k"), *expected, "messages from {user} out of order");
                *expected += 1;
            }
            assert_eq!(next_from.len(), 20);
        })
    });
    for reader in readers {
        reader.await.expect("every client gets all 200 messages");
    }
    // The other room heard nothing of it.
    let heard = tokio::time::timeout(Duration::from_millis(300), outsider.next()).await;
    assert!(heard.is_err(), "another room must hear nothing, got {heard:?}");
}

#[tokio::test]
async fn plain_text_and_presence_diffs_reach_the_room() {
    let example = Example::start("chat", &[]);
    let mut ann = connect(&example.url("/ws/chat/lobby/?user=ann")).await;
    let presence = next_json(&mut ann).await;
    assert_eq!(presence, json!({"type": "chat.presence", "users": ["ann"], "connections": {"ann": 1}}));
    let mut bob = connect(&example.url("/ws/chat/lobby/?user=bob")).await;
    assert_eq!(next_json(&mut bob).await["users"], json!(["ann", "bob"]));
    // The first diff ann gets is bob's arrival: her own is in her presence, never in a diff.
    let joined = next_json(&mut ann).await;
    assert_eq!(joined, json!({"type": "chat.presence_diff", "joins": {"bob": 1}, "leaves": {}}));
    send_text(&mut bob, "<b>hello</b>").await;
    let event = next_of_type(&mut ann, "chat.message").await;
    assert_eq!((event["user"].as_str(), event["text"].as_str()), (Some("bob"), Some("<b>hello</b>")));
    assert_eq!(
        next_json(&mut bob).await["text"],
        "<b>hello</b>",
        "the sender gets its own message, and no diff of its own arrival"
    );
    bob.close(None).await.expect("close");
    let left = next_of_type(&mut ann, "chat.presence_diff").await;
    assert_eq!(left, json!({"type": "chat.presence_diff", "joins": {}, "leaves": {"bob": 1}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_storm_reaches_a_member_in_a_few_coalesced_diffs() {
    let example = Example::start("chat", &["--presence-interval", "200"]);
    let mut watcher = connect(&example.url("/ws/chat/storm/?user=watcher")).await;
    let mut online = Online::default();
    online.apply(&next_json(&mut watcher).await);
    let started = std::time::Instant::now();
    let mut crowd = Vec::new();
    for i in 0..30 {
        crowd.push(connect(&example.url(&format!("/ws/chat/storm/?user=u{}", i % 10))).await);
    }
    let mut diffs = 0u128;
    while online.0.values().sum::<u64>() < 31 {
        let event = next_json(&mut watcher).await;
        assert_eq!(event["type"], "chat.presence_diff", "only diffs follow the presence");
        online.apply(&event);
        diffs += 1;
    }
    let expected: Vec<String> = (0..10).map(|i| format!("u{i}")).chain(["watcher".into()]).collect();
    assert_eq!(online.users(), expected.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(online.0.iter().all(|(user, n)| *n == if user == "watcher" { 1 } else { 3 }), "{online:?}");
    // At most one diff per 200 ms interval, however many joined in it.
    let intervals = started.elapsed().as_millis() / 200;
    assert!(diffs <= intervals + 2, "30 connections joined in {diffs} diffs over {intervals} intervals");
    drop(crowd);
    online_until(&mut watcher, &mut online, |o| o.users() == ["watcher"]).await;
}

#[tokio::test]
async fn the_close_word_closes_the_connection_cleanly() {
    let example = Example::start("chat", &[]);
    for word in ["关闭", "/close"] {
        let mut client = connect(&example.url("/ws/chat/lobby/")).await;
        send_text(&mut client, word).await;
        assert_eq!(close_code(&mut client).await, 1000);
    }
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_the_server_stays_up() {
    let example = Example::start("chat", &[]);
    let mut bystander = connect(&example.url("/ws/chat/lobby/?user=calm")).await;
    next_json(&mut bystander).await;
    let mut client = connect(&example.url("/ws/chat/lobby/")).await;
    let frame = Frame::message(vec![0xff, 0xfe, b'a'], OpCode::Data(Data::Text), true);
    client.send(Message::Frame(frame)).await.expect("send bad frame");
    assert_eq!(close_code(&mut client).await, 1007);
    send_text(&mut bystander, "still here").await;
    assert_eq!(next_of_type(&mut bystander, "chat.message").await["text"], "still here");
}

#[tokio::test]
async fn a_two_mebibyte_message_closes_with_1009_and_the_server_stays_up() {
    let example = Example::start("chat", &[]);
    let mut client = connect(&example.url("/ws/chat/lobby/")).await;
    next_json(&mut client).await;
    let _ = client.send(Message::text("x".repeat(2 << 20))).await;
    assert_eq!(close_code(&mut client).await, 1009);
    let mut next = connect(&example.url("/ws/chat/lobby/")).await;
    assert_eq!(next_json(&mut next).await["type"], "chat.presence");
}

#[tokio::test]
async fn a_foreign_origin_gets_403_and_a_local_one_is_accepted() {
    let example = Example::start("chat", &[]);
    let mut request = example.url("/ws/chat/lobby/").into_client_request().expect("request");
    request.headers_mut().insert("origin", "http://evil.example".parse().expect("header"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected HTTP 403, got {other:?}"),
    }
    let mut request = example.url("/ws/chat/lobby/").into_client_request().expect("request");
    let origin = format!("http://{}", example.addr);
    request.headers_mut().insert("origin", origin.parse().expect("header"));
    tokio_tungstenite::connect_async(request).await.expect("same-origin page is accepted");
}

#[tokio::test]
async fn unknown_paths_get_404_over_http_and_403_over_websocket() {
    let example = Example::start("chat", &[]);
    assert!(http_get(&example, "/no/such/page", "").starts_with("HTTP/1.1 404"));
    match tokio_tungstenite::connect_async(example.url("/ws/nowhere/")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected HTTP 403, got {other:?}"),
    }
    match tokio_tungstenite::connect_async(example.url("/ws/chat/bad%20room/")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("an invalid room is denied with 403, got {other:?}"),
    }
}

#[tokio::test]
async fn the_page_is_served_at_root_and_home() {
    let example = Example::start("chat", &[]);
    for path in ["/", "/home/"] {
        let response = http_get(&example, path, "");
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
        assert!(response.contains("text/html"), "{path}");
    }
    let redirect = http_get(&example, "/home", "");
    assert!(redirect.starts_with("HTTP/1.1 308"), "{redirect}");
    assert!(redirect.to_ascii_lowercase().contains("location: ./home/"), "{redirect}");
}

#[tokio::test]
async fn ping_gets_pong() {
    let example = Example::start("chat", &[]);
    let mut client = connect(&example.url("/ws/chat/lobby/")).await;
    client.send(Message::Ping(b"are you there".to_vec().into())).await.expect("ping");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), client.next()).await.expect("a frame") {
            Some(Ok(Message::Pong(payload))) => {
                assert_eq!(&payload[..], b"are you there");
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected pong, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1001_and_exits_cleanly() {
    let mut example = Example::start("chat", &[]);
    let mut clients = Vec::new();
    for i in 0..10 {
        let mut client = connect(&example.url(&format!("/ws/chat/room{}/", i % 3))).await;
        next_json(&mut client).await;
        clients.push(client);
    }
    let exited = tokio::task::spawn_blocking(move || {
        let ok = example.terminate();
        (ok, example)
    });
    for client in &mut clients {
        assert_eq!(close_code(client).await, 1001);
    }
    let (ok, _example) = exited.await.expect("join");
    assert!(ok, "the server exits with success after a graceful shutdown");
}

#[tokio::test]
async fn presence_counts_every_connection_of_a_user() {
    let example = Example::start("chat", &[]);
    let mut first = connect(&example.url("/ws/chat/tabs/?user=dave")).await;
    next_json(&mut first).await;
    let mut second = connect(&example.url("/ws/chat/tabs/?user=dave")).await;
    next_json(&mut second).await;
    let mut bob = connect(&example.url("/ws/chat/tabs/?user=bob")).await;
    let presence = next_json(&mut bob).await;
    assert_eq!(presence["users"], json!(["bob", "dave"]));
    assert_eq!(presence["connections"], json!({"bob": 1, "dave": 2}));
}

#[tokio::test]
async fn an_empty_channels_layer_variable_counts_as_unset() {
    let example = Example::start_with_env("chat", &[], &[("CHANNELS_LAYER", "")]);
    let mut client = connect(&example.url("/ws/chat/env/?user=ann")).await;
    assert_eq!(next_json(&mut client).await["type"], "chat.presence");
}

#[tokio::test]
async fn a_channel_layer_that_cannot_be_reached_is_reported_at_start_up_and_refused_with_503() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let layer = format!("redis://127.0.0.1:{port}/0");
    let example = Example::start("chat", &["--layer", &layer]);
    let mut reported = String::new();
    for _ in 0..100 {
        reported = example.log.lock().expect("log").clone();
        if reported.contains("cannot be reached") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reported.contains("channel layer \"default\" cannot be reached") && reported.contains(&format!(":{port}")),
        "one warning names the layer and the host: {reported}"
    );
    match tokio_tungstenite::connect_async(example.url("/ws/chat/down/?user=ann")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected a 503 refusal, got {other:?}"),
    }
}
