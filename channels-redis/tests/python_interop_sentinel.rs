//! Interop with real Python through Redis Sentinel: channels_redis 4.3 configured with its
//! own `sentinels`/`master_name` dicts, one per shard, and our `redis+sentinel://` URL with
//! `master_name` repeated (or one URL per set of sentinels, `;`-separated), on two
//! Sentinel-managed masters: group sends both ways, on groups that live on each shard (so both
//! sides agree where a key lives).

use std::time::Duration;

mod support;

use channels_core::layer::{ChannelLayer, Message};
use channels_redis::RedisChannelLayer;
use channels_redis::testing::SentinelDeployment;
use channels_redis::wire::consistent_hash;
use serde_json::{Value, json};
use support::peer::Peer;

/// A group name starting with `stem` that lives on `shard` of two.
fn group_on(shard: usize, stem: &str) -> String {
    (0..).map(|i| format!("{stem}{i}")).find(|g| consistent_hash(g, 2) == shard).expect("a name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_share_sharded_groups_through_sentinel() {
    let deployment = SentinelDeployment::start_sharded(&["shard_a", "shard_b"]);
    let sentinels: Vec<Value> = deployment.sentinels.iter().map(|s| json!(["127.0.0.1", s.port])).collect();
    // channels_redis's own form: one dict per shard, in the same order as our master_names.
    let python = json!([
        {"sentinels": sentinels, "master_name": "shard_a"},
        {"sentinels": sentinels, "master_name": "shard_b"},
    ]);
    let masters = ["shard_a", "shard_b"].map(|name| deployment.master_port_of(name).expect("a master"));
    share_groups_both_ways(&python, &format!("{}&prefix=snt", deployment.url()), "snt", masters).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_share_groups_on_masters_behind_different_sentinels() {
    let east = SentinelDeployment::start("east");
    let west = SentinelDeployment::start("west");
    let sentinels =
        |d: &SentinelDeployment| -> Vec<Value> { d.sentinels.iter().map(|s| json!(["127.0.0.1", s.port])).collect() };
    let python = json!([
        {"sentinels": sentinels(&east), "master_name": "east"},
        {"sentinels": sentinels(&west), "master_name": "west"},
    ]);
    // Our form: one URL per set of sentinels, `;`-separated, in the same order.
    let rust = format!("{}&prefix=two;{}&prefix=two", east.url(), west.url());
    let masters = [&east, &west].map(|d| d.master_port().expect("a master"));
    share_groups_both_ways(&python, &rust, "two", masters).await;
}

/// Group sends from Python (configured with `python` as its `hosts`) to Rust (on `rust_url`)
/// and back, on a group that lives on each of the two shards; then each shard's master (on
/// `masters`) holds the group keys that hash to it, and only those.
async fn share_groups_both_ways(python: &Value, rust_url: &str, prefix: &str, masters: [u16; 2]) {
    let rust = RedisChannelLayer::from_url(rust_url).expect("layer");
    for shard in 0..2 {
        let group = group_on(shard, "chat_rs");
        let me = rust.new_channel("specific").await.expect("new_channel");
        rust.group_add(&group, &me).await.expect("group_add");
        let event = json!({"type": "chat.message", "user": "django", "text": format!("python to {group}"), "ts": 2.5});
        Peer::spawn_with_hosts_json(python, prefix, &["group_send", &group, &event.to_string()]).finish().await;
        let got = tokio::time::timeout(Duration::from_secs(10), rust.receive(&me)).await.expect("arrives").expect("ok");
        assert_eq!(got.decode::<Value>().expect("decodes")["text"], format!("python to {group}"));

        let py_group = group_on(shard, "chat_py");
        let mut listener = Peer::spawn_with_hosts_json(python, prefix, &["listen", &py_group, "1"]);
        listener.next().await; // {"channel": ...}: Python has joined
        let message =
            Message::new(&json!({"type": "chat.message", "text": format!("rust to {py_group}")})).expect("message");
        rust.group_send(&py_group, message).await.expect("group_send");
        assert_eq!(listener.next().await["text"], format!("rust to {py_group}"));
        listener.finish().await;
    }
    for (shard, port) in masters.into_iter().enumerate() {
        let keys = channels_redis::testing::redis_cli(port, &["KEYS", &format!("{prefix}:group:*")]);
        assert_eq!(keys.lines().filter(|k| !k.is_empty()).count(), 2, "two groups on shard {shard}: {keys}");
        for key in keys.lines().filter(|k| !k.is_empty()) {
            let group = key.trim_start_matches(&format!("{prefix}:group:"));
            assert_eq!(consistent_hash(group, 2), shard, "{key} on shard {shard}");
        }
    }
}
