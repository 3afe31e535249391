//! Interop with real Python: Django Channels 4.3 + channels_redis 4.3 on the same Redis.

mod support;

use std::time::Duration;

use channels_core::layer::{ChannelLayer, Message};
use channels_redis::RedisChannelLayer;
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::peer::Peer;

async fn run(hosts: &str, prefix: &str, args: &[&str]) {
    Peer::spawn(hosts, prefix, args).finish().await;
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type")]
enum ChatEvent {
    #[serde(rename = "chat.message")]
    Message { user: String, text: String, ts: f64 },
}

fn chat(text: &str) -> Message {
    Message::new(&ChatEvent::Message { user: "rust".into(), text: text.into(), ts: 1.25 }).expect("message")
}

async fn receive(layer: &RedisChannelLayer, channel: &str) -> Message {
    tokio::time::timeout(Duration::from_secs(10), layer.receive(channel)).await.expect("arrives").expect("ok")
}

fn layer(hosts: &str, prefix: &str) -> RedisChannelLayer {
    RedisChannelLayer::from_url(&format!("{hosts}?prefix={prefix}")).expect("layer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_group_send_reaches_a_rust_consumer_as_a_typed_event() {
    let hosts = support::shared().url();
    let rust = layer(&hosts, "i1");
    let me = rust.new_channel("specific").await.expect("new_channel");
    rust.group_add("chat_lobby", &me).await.expect("group_add");
    let event = r#"{"type": "chat.message", "user": "django", "text": "héllo from python", "ts": 1795.5}"#;
    run(&hosts, "i1", &["group_send", "chat_lobby", event]).await;
    let got: ChatEvent = receive(&rust, &me).await.decode().expect("typed event");
    assert_eq!(got, ChatEvent::Message { user: "django".into(), text: "héllo from python".into(), ts: 1795.5 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_group_send_reaches_a_python_consumer_as_a_dict() {
    let hosts = support::shared().url();
    let mut python = Peer::spawn(&hosts, "i2", &["listen", "chat_lobby", "2"]);
    python.next().await; // {"channel": ...}: Python has joined
    let rust = layer(&hosts, "i2");
    rust.group_send("chat_lobby", chat("hi python")).await.expect("group_send");
    let mut raw = std::collections::BTreeMap::new();
    raw.insert("type", rmpv::Value::from("raw.types"));
    raw.insert("bytes", rmpv::Value::Binary(vec![0, 1, 255]));
    raw.insert("big", rmpv::Value::from(1u64 << 40));
    raw.insert("none", rmpv::Value::Nil);
    raw.insert("list", rmpv::Value::Array(vec![1.into(), "two".into()]));
    rust.group_send("chat_lobby", Message::new(&raw).expect("message")).await.expect("group_send");
    assert_eq!(python.next().await, json!({"type": "chat.message", "user": "rust", "text": "hi python", "ts": 1.25}));
    assert_eq!(
        python.next().await,
        json!({"type": "raw.types", "big": 1u64 << 40, "bytes": {"__bytes__": "0001ff"}, "list": [1, "two"], "none": null})
    );
    python.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_sends_work_both_ways() {
    let hosts = support::shared().url();
    let rust = layer(&hosts, "i3");
    let mut python = Peer::spawn(&hosts, "i3", &["listen", "unused", "1"]);
    let python_channel = python.next().await["channel"].as_str().expect("channel").to_owned();
    rust.send(&python_channel, chat("to python")).await.expect("send");
    assert_eq!(python.next().await["text"], "to python");
    python.finish().await;

    let me = rust.new_channel("specific").await.expect("new_channel");
    run(&hosts, "i3", &["send", &me, r#"{"type": "chat.message", "user": "py", "text": "to rust", "ts": 2.0}"#]).await;
    let got: ChatEvent = receive(&rust, &me).await.decode().expect("typed");
    assert_eq!(got, ChatEvent::Message { user: "py".into(), text: "to rust".into(), ts: 2.0 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_channels_are_shared_with_python_receivers_and_senders() {
    let hosts = support::shared().url();
    let rust = layer(&hosts, "i4");
    rust.send("thumbnails", chat("job for python")).await.expect("send");
    let mut python = Peer::spawn(&hosts, "i4", &["worker", "thumbnails", "1"]);
    assert_eq!(python.next().await["text"], "job for python");
    python.finish().await;
    run(
        &hosts,
        "i4",
        &["send", "thumbnails", r#"{"type": "chat.message", "user": "py", "text": "job for rust", "ts": 3.0}"#],
    )
    .await;
    let got: ChatEvent = receive(&rust, "thumbnails").await.decode().expect("typed");
    assert_eq!(got, ChatEvent::Message { user: "py".into(), text: "job for rust".into(), ts: 3.0 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_interoperate_both_ways() {
    let a = support::RedisServer::start();
    let b = support::RedisServer::start();
    let hosts = format!("redis://127.0.0.1:{},redis://127.0.0.1:{}", a.port, b.port);
    let rust_hosts = format!("redis://127.0.0.1:{},127.0.0.1:{}", a.port, b.port);
    let rust = layer(&rust_hosts, "i5");
    let mut mine = Vec::new();
    for i in 0..6 {
        let ch = rust.new_channel("specific").await.expect("new_channel");
        rust.group_add(&format!("room{i}"), &ch).await.expect("group_add");
        mine.push(ch);
    }
    for i in 0..6 {
        let event = format!(r#"{{"type": "chat.message", "user": "py", "text": "room{i}", "ts": 1.0}}"#);
        run(&hosts, "i5", &["group_send", &format!("room{i}"), &event]).await;
    }
    for (i, ch) in mine.iter().enumerate() {
        let got: ChatEvent = receive(&rust, ch).await.decode().expect("typed");
        assert_eq!(got, ChatEvent::Message { user: "py".into(), text: format!("room{i}"), ts: 1.0 });
    }
    // Python's direct send to a specific channel hashes the full name (channels#1492); with two
    // shards it often lands where Python itself would never look, but we read every shard.
    for (i, ch) in mine.iter().enumerate() {
        let event = format!(r#"{{"type": "chat.message", "user": "py", "text": "direct{i}", "ts": 1.0}}"#);
        run(&hosts, "i5", &["send", ch, &event]).await;
        let got: ChatEvent = receive(&rust, ch).await.decode().expect("typed");
        assert_eq!(got, ChatEvent::Message { user: "py".into(), text: format!("direct{i}"), ts: 1.0 });
    }
    let mut python = Peer::spawn(&hosts, "i5", &["listen", "mixed", "1"]);
    python.next().await;
    rust.group_send("mixed", chat("across shards")).await.expect("group_send");
    assert_eq!(python.next().await["text"], "across shards");
    python.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_payloads_interoperate_both_ways_with_key_rotation() {
    let hosts = support::shared().url();
    let rust = RedisChannelLayer::from_url(&format!(
        "{hosts}?prefix=i6&symmetric_encryption_key=new-key&symmetric_encryption_key=old-key"
    ))
    .expect("layer");
    let me = rust.new_channel("specific").await.expect("new_channel");
    rust.group_add("secret", &me).await.expect("group_add");
    // Python still encrypts with the old key; we decrypt with our second key.
    let event = r#"{"type": "chat.message", "user": "py", "text": "sealed", "ts": 1.0}"#;
    Peer::spawn_with_keys(&hosts, "i6", &["group_send", "secret", event], "old-key").finish().await;
    let got: ChatEvent = receive(&rust, &me).await.decode().expect("typed");
    assert_eq!(got, ChatEvent::Message { user: "py".into(), text: "sealed".into(), ts: 1.0 });
    // We encrypt with our first key, which Python knows as its second.
    let mut python = Peer::spawn_with_keys(&hosts, "i6", &["listen", "secret", "1"], "other,new-key");
    python.next().await;
    rust.group_send("secret", chat("sealed for python")).await.expect("group_send");
    assert_eq!(python.next().await["text"], "sealed for python");
    python.finish().await;
    // Without the key, the payload is unreadable: it is skipped, never delivered as garbage.
    let plain = layer(&hosts, "i6");
    let outsider = plain.new_channel("specific").await.expect("new_channel");
    plain.group_add("secret", &outsider).await.expect("group_add");
    rust.group_send("secret", chat("not for you")).await.expect("group_send");
    assert!(tokio::time::timeout(Duration::from_millis(500), plain.receive(&outsider)).await.is_err());
}
