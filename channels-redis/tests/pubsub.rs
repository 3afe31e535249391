//! The pub/sub layer against a real redis-server, and against Python's pub/sub layer.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use channels_core::layer::{ChannelLayer, LayerConfig, Message};
use channels_core::testing::layer_suite;
use channels_redis::{RedisConfig, RedisPubSubChannelLayer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn layer_on(url: &str, config: LayerConfig) -> RedisPubSubChannelLayer {
    let prefix = format!("p{:08x}", rand::random::<u32>());
    let mut redis = RedisConfig::from_url(&format!("{url}?prefix={prefix}")).expect("config");
    redis.layer = config;
    RedisPubSubChannelLayer::new(redis).expect("layer")
}

async fn factory(config: LayerConfig) -> Arc<dyn ChannelLayer> {
    Arc::new(layer_on(&support::shared().url(), config))
}

// The checks of the shared suite that pub/sub can honour: it keeps nothing in Redis, so there
// is no capacity, expiry or delivery to a channel nobody subscribed to yet.
macro_rules! suite {
    ($($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            layer_suite::$name(&factory).await;
        }
    )*};
}
suite!(
    send_then_receive_is_fifo,
    receive_waits_for_a_later_send,
    receive_is_cancel_safe,
    group_send_reaches_every_member,
    group_add_is_idempotent_and_discard_stops_delivery,
    group_send_to_an_empty_group_is_fine,
    concurrent_senders_lose_nothing,
    concurrent_group_sends_reach_everyone,
    try_receive_takes_only_what_is_waiting,
    every_waiting_receiver_is_served,
    a_receiver_receives_like_the_layer,
    a_receiver_takes_a_burst_at_once
);

fn msg(text: &str) -> Message {
    Message::new(&json!({"type": "chat.message", "user": "rust", "text": text, "ts": 1.0})).expect("message")
}

#[tokio::test]
async fn flush_drops_buffered_messages_and_groups() {
    let layer = layer_on(&support::shared().url(), LayerConfig::default());
    let ch = layer.new_channel("specific").await.expect("new_channel");
    layer.group_add("room", &ch).await.expect("group_add");
    layer.send(&ch, msg("buffered")).await.expect("send");
    // A publish is delivered asynchronously: let it land in the local buffer first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    layer.flush().await.expect("flush");
    layer.group_send("room", msg("after")).await.expect("group_send");
    assert!(tokio::time::timeout(Duration::from_millis(300), layer.receive(&ch)).await.is_err());
}

#[tokio::test]
async fn names_and_payloads_follow_channels_redis_pubsub() {
    let server = support::shared();
    let layer = RedisPubSubChannelLayer::from_url(&format!("{}?prefix=asgi", server.url())).expect("layer");
    let name = layer.new_channel("specific").await.expect("new_channel");
    assert!(name.starts_with("asgispecific.") && name.len() == "asgispecific.".len() + 32, "{name}");
    // A raw PUBLISH of bare msgpack to the group channel reaches members.
    layer.group_add("room", &name).await.expect("group_add");
    let payload = msg("raw").as_bytes().to_vec();
    let mut conn =
        redis::Client::open(server.url()).expect("client").get_multiplexed_async_connection().await.expect("c");
    let receivers: i64 =
        redis::cmd("PUBLISH").arg("asgi__group__room").arg(payload).query_async(&mut conn).await.expect("pub");
    assert_eq!(receivers, 1);
    let got = tokio::time::timeout(Duration::from_secs(5), layer.receive(&name)).await.expect("arrives").expect("ok");
    assert_eq!(got.as_bytes(), msg("raw").as_bytes());
}

#[tokio::test]
async fn garbage_on_a_subscribed_channel_is_skipped() {
    let server = support::shared();
    let layer = layer_on(&server.url(), LayerConfig::default());
    let name = layer.new_channel("specific").await.expect("new_channel");
    let mut conn =
        redis::Client::open(server.url()).expect("client").get_multiplexed_async_connection().await.expect("c");
    for garbage in [b"".to_vec(), b"\x92\x01\x02".to_vec(), b"\xc1\xc1".to_vec()] {
        let _: i64 = redis::cmd("PUBLISH").arg(&name).arg(garbage).query_async(&mut conn).await.expect("pub");
    }
    layer.send(&name, msg("fine")).await.expect("send");
    let got = tokio::time::timeout(Duration::from_secs(5), layer.receive(&name)).await.expect("arrives").expect("ok");
    assert_eq!(got.as_bytes(), msg("fine").as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_come_back_after_a_redis_restart() {
    let mut server = support::RedisServer::start();
    let layer = layer_on(&server.url(), LayerConfig::default());
    let name = layer.new_channel("specific").await.expect("new_channel");
    layer.group_add("room", &name).await.expect("group_add");
    server.stop();
    assert!(layer.group_send("room", msg("lost")).await.is_err(), "publishing during the outage is an error");
    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let _ = layer.group_send("room", msg("back")).await;
        if let Ok(Ok(got)) = tokio::time::timeout(Duration::from_millis(200), layer.receive(&name)).await {
            assert_eq!(got.as_bytes(), msg("back").as_bytes());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not resubscribed within 5 s of the restart");
    }
}

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join("target/test-venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/install-test-deps first", python.display());
    python
}

async fn python_peer(
    hosts: &str,
    prefix: &str,
    args: &[&str],
) -> (tokio::process::Child, tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = Command::new(python())
        .arg(root.join("tests/python/channels_redis_peer.py"))
        .args([hosts, prefix])
        .args(args)
        .env("CHANNELS_PUBSUB", "1")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

async fn next_json(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("in time").expect("read");
    serde_json::from_str(&line.expect("a line")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_pubsub_layer_interoperates_both_ways() {
    let server = support::shared();
    let layer = RedisPubSubChannelLayer::from_url(&format!("{}?prefix=ps", server.url())).expect("layer");
    // Python listens, Rust publishes to its group and to its channel.
    let (mut child, mut lines) = python_peer(&server.url(), "ps", &["listen", "chat_lobby", "2"]).await;
    let python_channel = next_json(&mut lines).await["channel"].as_str().expect("channel").to_owned();
    layer.group_send("chat_lobby", msg("group to python")).await.expect("group_send");
    assert_eq!(next_json(&mut lines).await["text"], "group to python");
    layer.send(&python_channel, msg("direct to python")).await.expect("send");
    assert_eq!(next_json(&mut lines).await["text"], "direct to python");
    assert_eq!(next_json(&mut lines).await, json!({"done": true}));
    let _ = child.wait().await;
    // Rust listens, Python publishes.
    let me = layer.new_channel("specific").await.expect("new_channel");
    layer.group_add("chat_lobby", &me).await.expect("group_add");
    let event = r#"{"type": "chat.message", "user": "py", "text": "from python", "ts": 1.0}"#;
    let (mut child, mut lines) = python_peer(&server.url(), "ps", &["group_send", "chat_lobby", event]).await;
    assert_eq!(next_json(&mut lines).await, json!({"done": true}));
    let _ = child.wait().await;
    let got = tokio::time::timeout(Duration::from_secs(5), layer.receive(&me)).await.expect("arrives").expect("ok");
    let value: Value = got.decode().expect("decode");
    assert_eq!(value["text"], "from python");
}
