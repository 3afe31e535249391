//! Faults: the chat example on a throwaway Redis that is killed and restarted, or paused with
//! SIGSTOP; and a graceful shutdown under load. The server must not crash or hang, must report
//! errors while Redis is away, must work again within 5 s of its return, and on SIGTERM must
//! close every client with 1001, run every disconnect hook and leave no membership behind.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use channels::layers::ChannelLayer;
use channels::presence::Presence;
use channels::redis::RedisChannelLayer;
use channels::redis::testing::RedisServer;
use futures_util::{SinkExt, StreamExt};
use support::{Client, Example, connect, next_of_type, send_text};
use tokio_tungstenite::tungstenite::Message;

fn chat_on(redis: &RedisServer) -> Example {
    Example::start("chat", &["--layer", &redis.url()])
}

/// A room member, after the presence and join events of its own arrival.
async fn member(chat: &Example, room: &str, user: &str) -> Client {
    let mut client = connect(&chat.url(&format!("/ws/chat/{room}/?user={user}"))).await;
    next_of_type(&mut client, "chat.presence").await;
    client
}

/// The next `chat.message` or `chat.error` within `limit`, skipping other events.
async fn next_message_or_error(client: &mut Client, limit: Duration) -> Option<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let frame = tokio::time::timeout_at(deadline, client.next()).await.ok()??;
        if let Ok(Message::Text(text)) = frame {
            let event: serde_json::Value = serde_json::from_str(&text).expect("JSON event");
            if event["type"] == "chat.message" || event["type"] == "chat.error" {
                return Some(event);
            }
        }
    }
}

/// The next chat event after the sender's own copy of `sent`, if that comes first: a sender's
/// copy is put on its channel before the send goes through Redis, so it may arrive before the
/// send fails.
async fn next_after_own_copy(client: &mut Client, sent: &str, limit: Duration) -> Option<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + limit;
    let first = next_message_or_error(client, limit).await?;
    if first["type"] == "chat.message" && first["text"] == sent {
        return next_message_or_error(client, deadline.saturating_duration_since(tokio::time::Instant::now())).await;
    }
    Some(first)
}

/// Sends numbered messages from `from` until `to` hears one, and returns how long that took.
async fn time_to_recover(from: &mut Client, to: &mut Client, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < limit {
        n += 1;
        send_text(from, &format!("recovered? {n}")).await;
        while let Some(event) = next_message_or_error(to, Duration::from_millis(250)).await {
            if event["type"] == "chat.message" && event["text"].as_str().is_some_and(|t| t.starts_with("recovered?")) {
                return started.elapsed();
            }
        }
    }
    panic!("no message got through within {limit:?} of Redis's return");
}

fn alive(chat: &mut Example) -> bool {
    matches!(chat.child.try_wait(), Ok(None))
}

/// The pid of a running redis-server, from its own INFO.
fn redis_pid(redis: &RedisServer) -> u32 {
    redis
        .cli(&["INFO", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .expect("redis INFO names its process_id")
}

/// Sends SIGCONT when dropped, so that a failing test never leaves a stopped Redis behind.
struct Paused(u32);

impl Paused {
    fn pause(pid: u32) -> Paused {
        assert!(Command::new("kill").args(["-STOP", &pid.to_string()]).status().expect("kill").success());
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_errors_meanwhile_and_recovers_within_5_s() {
    let mut redis = RedisServer::start();
    let mut chat = chat_on(&redis);
    let mut alice = member(&chat, "faults", "alice").await;
    let mut bob = member(&chat, "faults", "bob").await;
    send_text(&mut alice, "before").await;
    assert_eq!(next_of_type(&mut bob, "chat.message").await["text"], "before");
    assert_eq!(next_of_type(&mut alice, "chat.message").await["text"], "before");

    redis.stop();
    send_text(&mut alice, "while Redis is down").await;
    let reply = next_after_own_copy(&mut alice, "while Redis is down", Duration::from_secs(10)).await;
    assert_eq!(reply.as_ref().map(|e| e["type"].clone()), Some("chat.error".into()), "the sender is told: {reply:?}");
    assert!(alive(&mut chat), "the server survives Redis's death");

    redis.restart();
    let took = time_to_recover(&mut alice, &mut bob, Duration::from_secs(5)).await;
    eprintln!("recovered {took:?} after the restart");
    assert!(alive(&mut chat));
    // New connections work again too.
    let mut carol = member(&chat, "faults", "carol").await;
    send_text(&mut carol, "hello again").await;
    assert_eq!(next_of_type(&mut bob, "chat.message").await["text"], "hello again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_for_10_s_errors_meanwhile_and_recovers_within_5_s() {
    let redis = RedisServer::start();
    let mut chat = chat_on(&redis);
    let mut alice = member(&chat, "pause", "alice").await;
    let mut bob = member(&chat, "pause", "bob").await;
    send_text(&mut alice, "before").await;
    assert_eq!(next_of_type(&mut bob, "chat.message").await["text"], "before");
    assert_eq!(next_of_type(&mut alice, "chat.message").await["text"], "before");

    let paused = Paused::pause(redis_pid(&redis));
    let stopped_at = Instant::now();
    send_text(&mut alice, "while Redis is paused").await;
    // The send times out inside the server; the sender hears about it before Redis returns.
    let reply = next_after_own_copy(&mut alice, "while Redis is paused", Duration::from_secs(9)).await;
    assert_eq!(
        reply.as_ref().map(|e| e["type"].clone()),
        Some("chat.error".into()),
        "the sender is told within {:?}: {reply:?}",
        stopped_at.elapsed()
    );
    eprintln!("the sender was told after {:?} of the pause", stopped_at.elapsed());
    // Someone arriving meanwhile is not left hanging forever either.
    let arrival = tokio::time::timeout(
        Duration::from_secs(9),
        tokio_tungstenite::connect_async(chat.url("/ws/chat/pause/?user=dave")),
    )
    .await;
    assert!(arrival.is_ok(), "a handshake during the pause got an answer");
    assert!(alive(&mut chat));
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped_at.elapsed())).await;
    drop(paused);

    let took = time_to_recover(&mut alice, &mut bob, Duration::from_secs(5)).await;
    eprintln!("recovered {took:?} after SIGCONT");
    assert!(alive(&mut chat));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_closes_all_with_1001_runs_every_disconnect_and_leaves_no_membership() {
    const ROOMS: usize = 4;
    const PER_ROOM: usize = 25;
    let redis = RedisServer::start();
    // Entries that no disconnect hook removed would expire only 120 s after they were written,
    // long after the observer below gives up (60 s): every leave it hears comes from a hook.
    let mut chat = Example::start("chat", &["--layer", &redis.url(), "--presence-ttl", "120"]);

    // An observer on the same Redis watches every room's presence: a disconnect hook takes its
    // connection out of the presence, which reaches the observer as a leave in a diff.
    let observer = RedisChannelLayer::from_url(&redis.url()).expect("observer layer");
    let me = observer.new_channel("specific").await.expect("observer channel");
    let presence = Presence::new(Arc::new(observer.clone()));
    for room in 0..ROOMS {
        presence.subscribe(format!("chat_r{room}"), &me).expect("observer watches the room");
    }

    // The observer reads all along, counting the connections that left, by user.
    let collector = {
        let (observer, me) = (observer.clone(), me.clone());
        tokio::spawn(async move {
            let mut left: HashMap<String, usize> = HashMap::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while left.values().sum::<usize>() < ROOMS * (PER_ROOM + 1) && Instant::now() < deadline {
                let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), observer.receive(&me)).await else {
                    continue;
                };
                if message.message_type() == "presence.diff" {
                    let diff: serde_json::Value = message.decode().expect("a presence diff");
                    for (user, entry) in diff["leaves"].as_object().into_iter().flatten() {
                        *left.entry(user.clone()).or_default() += entry["metas"].as_array().map_or(0, Vec::len);
                    }
                }
            }
            left
        })
    };

    let mut clients = Vec::new();
    for room in 0..ROOMS {
        for i in 0..PER_ROOM {
            clients.push(member(&chat, &format!("r{room}"), &format!("u{room}x{i}")).await);
        }
    }
    // Load: the first member of each room keeps talking until the server goes away.
    let mut talkers = Vec::new();
    for room in 0..ROOMS {
        let url = chat.url(&format!("/ws/chat/r{room}/?user=talker{room}"));
        talkers.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                n += 1;
                if client.send(Message::text(format!("load {n}"))).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (client, n)
        }));
    }
    // Readers keep reading (the server must not wait on them), and report the close code.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| tokio::spawn(async move { close_code_while_reading(&mut client).await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for room in 0..ROOMS {
        let members: usize = redis.cli(&["ZCARD", &format!("asgi:group:chat_r{room}")]).trim().parse().expect("ZCARD");
        assert!(members >= PER_ROOM, "room r{room} has {members} members before the shutdown");
    }

    assert!(chat.terminate(), "the server exits cleanly on SIGTERM");
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), 1001, "every client is closed with 1001");
    }
    for talker in talkers {
        let (_, sent) = talker.await.expect("talker");
        assert!(sent > 10, "the load was on during the shutdown ({sent} messages)");
    }

    // Every disconnect hook ran: each member's connection left the presence, once.
    let left = collector.await.expect("collector");
    assert_eq!(
        left.len(),
        ROOMS * (PER_ROOM + 1),
        "every disconnect hook ran (heard {} users leave; the observer dropped {} for a full buffer)",
        left.len(),
        observer.dropped_full()
    );
    assert!(left.values().all(|n| *n == 1), "each connection left once: {left:?}");
    for room in 0..ROOMS {
        let online = presence.list(&format!("chat_r{room}")).await.expect("presence");
        assert!(online.is_empty(), "the observer still sees {online:?} in room r{room}");
    }

    // And no membership of the stopped server is left in Redis.
    for room in 0..ROOMS {
        let members = redis.cli(&["ZRANGE", &format!("asgi:group:chat_r{room}"), "0", "-1"]);
        let members: Vec<&str> = members.lines().filter(|l| !l.is_empty()).collect();
        assert!(members.is_empty(), "room r{room} still lists the stopped server's channels: {members:?}");
    }
}

/// Reads until the server closes; returns the close code (1006 if it hung up without one).
async fn close_code_while_reading(client: &mut Client) -> u16 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, client.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                let code = frame.map_or(1005, |f| f.code.into());
                // Answer the close, as a browser would.
                let _ = tokio::time::timeout(Duration::from_secs(2), client.next()).await;
                return code;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return 1006,
            Err(_) => panic!("no close frame within 30 s"),
        }
    }
}
