//! The chat example scaled out: two processes on one Redis share one room.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use channels::redis::testing::RedisServer;
use support::{Example, Online, connect, next_json, next_of_type, online_until, send_text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chat_processes_on_one_redis_share_a_room() {
    let redis = RedisServer::start();
    let layer = format!("{}/0?prefix=chat", redis.url());
    let east = Example::start("chat", &["--layer", &layer]);
    let west = Example::start("chat", &["--layer", &layer]);
    let mut clients = Vec::new();
    for i in 0..6 {
        let example = if i % 2 == 0 { &east } else { &west };
        let mut client = connect(&example.url(&format!("/ws/chat/shared/?user=c{i}"))).await;
        assert_eq!(next_json(&mut client).await["type"], "chat.presence");
        clients.push(client);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        send_text(client, &format!("hello from c{i}")).await;
    }
    for client in &mut clients {
        let mut heard = HashSet::new();
        while heard.len() < 6 {
            let event = next_of_type(client, "chat.message").await;
            heard.insert(event["text"].as_str().unwrap_or_default().to_owned());
        }
    }
    // Presence crosses processes too: a newcomer on west is announced on east, and sees
    // everyone, in both processes.
    let mut late = connect(&west.url("/ws/chat/shared/?user=late")).await;
    let mut online = Online::default();
    online_until(&mut late, &mut online, |o| o.users() == ["c0", "c1", "c2", "c3", "c4", "c5", "late"]).await;
    let announced = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = next_of_type(&mut clients[0], "chat.presence_diff").await;
            if event["joins"]["late"] == 1 {
                break;
            }
        }
    })
    .await;
    assert!(announced.is_ok(), "east heard west's newcomer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_survives_a_redis_restart() {
    let mut redis = RedisServer::start();
    let layer = redis.url();
    let example = Example::start("chat", &["--layer", &layer]);
    let mut ann = connect(&example.url("/ws/chat/outage/?user=ann")).await;
    next_json(&mut ann).await;
    let mut bob = connect(&example.url("/ws/chat/outage/?user=bob")).await;
    next_json(&mut bob).await;
    send_text(&mut ann, "before").await;
    assert_eq!(next_of_type(&mut bob, "chat.message").await["text"], "before");

    redis.stop();
    // During the outage the sender is told its message did not go out; the server stays up.
    send_text(&mut ann, "during").await;
    let error = next_of_type(&mut ann, "chat.error").await;
    assert!(error["error"].as_str().unwrap_or_default().contains("not delivered"), "{error}");
    redis.restart();

    // Within 5 s of the restart, new and surviving connections chat again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut carol = loop {
        if let Ok((mut client, _)) = tokio_tungstenite::connect_async(example.url("/ws/chat/outage/?user=carol")).await
            && next_json(&mut client).await["type"] == "chat.presence"
        {
            break client;
        }
        assert!(tokio::time::Instant::now() < deadline, "no connection within 5 s of the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let recovered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            send_text(&mut carol, "after").await;
            let got = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    let event = next_of_type(&mut bob, "chat.message").await;
                    if event["text"] == "after" {
                        break;
                    }
                }
            })
            .await;
            if got.is_ok() {
                break;
            }
        }
    })
    .await;
    assert!(recovered.is_ok(), "bob (connected through the outage) hears carol within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_join_and_leave_notices_on_the_layer_reach_the_room_as_they_are() {
    use channels::layers::{ChannelLayer, Message as LayerMessage};
    use channels::redis::RedisChannelLayer;

    let redis = RedisServer::start();
    let chat = Example::start("chat", &["--layer", &redis.url()]);
    let mut ann = connect(&chat.url("/ws/chat/peers/?user=ann")).await;
    assert_eq!(next_json(&mut ann).await["type"], "chat.presence");
    // What a Django consumer on the same layer might announce; the chat never sends these.
    let peer = RedisChannelLayer::from_url(&redis.url()).expect("layer");
    for kind in ["chat.join", "chat.leave"] {
        let event = serde_json::json!({ "type": kind, "user": "django", "ts": 1.5e9 });
        peer.group_send("chat_peers", LayerMessage::new(&event).expect("message")).await.expect("group_send");
        assert_eq!(next_json(&mut ann).await, event);
    }
}

/// Redis loses the room's keys (`FLUSHALL`: an operator, eviction, a failover to a replica
/// that missed them) in the middle of a chat on two processes: every client hears every other
/// one again within a heartbeat (a third of `process_ttl`), without reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_heals_after_redis_lost_its_keys() {
    let redis = RedisServer::start();
    // Heartbeats, and so the re-adding of memberships, every second.
    let layer = format!("{}/0?prefix=chat&process_ttl=3", redis.url());
    let east = Example::start("chat", &["--layer", &layer]);
    let west = Example::start("chat", &["--layer", &layer]);
    let mut clients = Vec::new();
    for i in 0..4 {
        let example = if i % 2 == 0 { &east } else { &west };
        let mut client = connect(&example.url(&format!("/ws/chat/heal/?user=c{i}"))).await;
        assert_eq!(next_json(&mut client).await["type"], "chat.presence");
        clients.push(client);
    }
    send_text(&mut clients[0], "before").await;
    for client in &mut clients[1..] {
        assert_eq!(next_of_type(client, "chat.message").await["text"], "before");
    }
    assert_eq!(redis.cli(&["FLUSHALL"]).trim(), "OK");
    let flushed = tokio::time::Instant::now();
    // Each round every client says something; the room has healed once every client hears
    // every other one's line of the same round.
    for round in 0.. {
        assert!(flushed.elapsed() < Duration::from_secs(5), "the room was still silent 5 s after FLUSHALL");
        for (i, client) in clients.iter_mut().enumerate() {
            send_text(client, &format!("r{round}c{i}")).await;
        }
        let mut everyone_heard = true;
        for client in &mut clients {
            let mut heard = HashSet::new();
            let _ = tokio::time::timeout(Duration::from_millis(300), async {
                while heard.len() < 4 {
                    let event = next_of_type(client, "chat.message").await;
                    if let Some(text) = event["text"].as_str().filter(|t| t.starts_with(&format!("r{round}c"))) {
                        heard.insert(text.to_owned());
                    }
                }
            })
            .await;
            everyone_heard &= heard.len() == 4;
        }
        if everyone_heard {
            println!("healed {:?} after FLUSHALL", flushed.elapsed());
            break;
        }
    }
}
