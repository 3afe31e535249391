//! The history and recovery semantics suite on real Redis, and what only Redis can lose: the
//! whole server's data.

mod support;

use std::sync::Arc;
use std::time::Duration;

use channels_core::layer::{ChannelLayer, History, HistoryOptions, LayerConfig, Message};

channels_core::history_conformance_tests!(|config| async move { support::fresh_layer(config) });

/// The same suite on the pub/sub layer: its history is the same streams, beside the
/// publishes.
mod pubsub {
    use super::*;
    use channels_redis::{RedisConfig, RedisPubSubChannelLayer};

    fn layer(config: LayerConfig) -> Arc<dyn ChannelLayer> {
        let url = format!("{}?prefix=p{:016x}", support::shared().url(), rand::random::<u64>());
        let mut redis = RedisConfig::from_url(&url).expect("config");
        redis.layer = config;
        Arc::new(RedisPubSubChannelLayer::new(redis).expect("layer"))
    }

    channels_core::history_conformance_tests!(|config| async move { layer(config) });
}

fn msg(n: u64) -> Message {
    Message::new(&serde_json::json!({"type": "chat.message", "n": n})).expect("a message")
}

/// Redis emptied under the layer (FLUSHALL, or a new server without its data): a new epoch,
/// and the old positions are not recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_starts_a_new_epoch() {
    let server = support::RedisServer::start();
    let layer: Arc<dyn ChannelLayer> = Arc::new(support::layer_on(&server.url(), LayerConfig::default()));
    let h = History::new(layer, HistoryOptions::new(100, Duration::from_secs(60))).expect("history");
    h.group_send("room", msg(1)).await.expect("send");
    let before = h.group_send("room", msg(2)).await.expect("send");
    support::redis_cli(server.port, &["FLUSHALL"]);
    let r = h.recover("room", &before).await.expect("recover");
    assert!(!r.recovered);
    assert_ne!(r.position.epoch, before.epoch);
    let after = h.group_send("room", msg(3)).await.expect("send");
    assert_eq!((after.epoch == before.epoch, after.offset), (false, 1));
}

/// Two processes sending to one group share one history: distinct, increasing offsets, and
/// either recovers what the other sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_one_history() {
    let (one, two) = support::layer_pair(&support::shared().url(), LayerConfig::default());
    let (one, two): (Arc<dyn ChannelLayer>, Arc<dyn ChannelLayer>) = (Arc::new(one), Arc::new(two));
    let h1 = History::new(one, HistoryOptions::default()).expect("history");
    let h2 = History::new(two, HistoryOptions::default()).expect("history");
    let start = h1.position("room").await.expect("position");
    let mut offsets = Vec::new();
    for n in 0..10 {
        let h = if n % 2 == 0 { &h1 } else { &h2 };
        offsets.push(h.group_send("room", msg(n)).await.expect("send").offset);
    }
    assert_eq!(offsets, (1..=10).collect::<Vec<_>>());
    let r = h2.recover("room", &start).await.expect("recover");
    assert!(r.recovered);
    assert_eq!(r.messages.len(), 10);
}

/// Redis restarted between two appends: the second is stored at the first try, and so is a
/// read after another restart (the history's own connection, dropped by the restart,
/// reconnects and the command is retried once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_history_write_and_read_after_a_redis_restart_succeed() {
    let mut server = support::RedisServer::start();
    let layer: Arc<dyn ChannelLayer> = Arc::new(support::layer_on(&server.url(), LayerConfig::default()));
    let store = layer.history_store().expect("history");
    let options = HistoryOptions::new(100, Duration::from_secs(60));
    let before = store.append("room", &msg(1), options).await.expect("append");
    server.stop();
    server.restart();
    let after = store.append("room", &msg(2), options).await.expect("the first append after the restart");
    assert_ne!(after.epoch, before.epoch, "a restarted Redis without its data starts a new epoch");
    server.stop();
    server.restart();
    let got = store.since("room", &after, options.window).await.expect("the first read after another restart");
    assert!(!got.complete, "the history went with the restart");
}

/// The same through the layer: the first group send with history after a Redis restart is
/// stored and delivered (the layer's read of the group's members retries a dropped connection
/// too; with history on, nothing else touched that connection during the outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_group_send_with_history_after_a_redis_restart_succeeds() {
    let mut server = support::RedisServer::start();
    let layer: Arc<dyn ChannelLayer> = Arc::new(support::layer_on(&server.url(), LayerConfig::default()));
    let h = History::new(layer.clone(), HistoryOptions::new(100, Duration::from_secs(60))).expect("history");
    h.group_send("room", msg(1)).await.expect("send");
    server.stop();
    server.restart();
    h.group_send("room", msg(2)).await.expect("the first send after the restart");
}
