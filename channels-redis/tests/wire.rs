//! What the layer writes into a real Redis, byte for byte, and what it does with bad data there.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use channels_core::layer::{ChannelLayer, LayerConfig, Message};
use channels_redis::wire::{self, Routing};
use channels_redis::{RedisChannelLayer, RedisConfig};
use redis::AsyncCommands;

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).expect("client").get_multiplexed_async_connection().await.expect("connection")
}

fn chat(text: &str) -> Message {
    Message::new(&BTreeMap::from([("type", "chat.message"), ("text", text)])).expect("message")
}

fn layer(url: &str, prefix: &str) -> RedisChannelLayer {
    RedisChannelLayer::from_url(&format!("{url}?prefix={prefix}")).expect("layer")
}

#[tokio::test]
async fn a_direct_send_to_another_process_is_a_scored_member_with_a_random_prefix() {
    let server = support::shared();
    let layer = layer(&server.url(), "w1");
    let target = "specific.0123456789abcdef0123456789abcdef!xyz";
    let before = wire::now_seconds();
    layer.send(target, chat("hi")).await.expect("send");
    let mut conn = raw(&server.url()).await;
    let key = "w1specific.0123456789abcdef0123456789abcdef!";
    let members: Vec<(Vec<u8>, f64)> = conn.zrange_withscores(key, 0, -1).await.expect("zrange");
    assert_eq!(members.len(), 1);
    let (member, score) = &members[0];
    assert!(*score >= before && *score <= wire::now_seconds(), "scored by the send time in float seconds");
    assert_eq!(&member[12..], wire::body_with_routing(&chat("hi"), &Routing::One(target)));
    let ttl: i64 = conn.ttl(key).await.expect("ttl");
    assert!((55..=60).contains(&ttl), "the key expires with the message expiry: {ttl}");
}

#[tokio::test]
async fn identical_messages_stay_distinct_members() {
    let server = support::shared();
    let layer = layer(&server.url(), "w2");
    for _ in 0..3 {
        layer.send("worker", chat("same")).await.expect("send");
    }
    let mut conn = raw(&server.url()).await;
    let count: usize = conn.zcard("w2worker").await.expect("zcard");
    assert_eq!(count, 3, "the random prefix keeps equal payloads apart");
}

#[tokio::test]
async fn group_keys_and_members_follow_channels_redis() {
    let server = support::shared();
    let layer = layer(&server.url(), "w3");
    layer.group_add("room", "specific.aaaa!1").await.expect("group_add");
    layer.group_add("room", "specific.aaaa!2").await.expect("group_add");
    layer.group_add("room", "specific.bbbb!1").await.expect("group_add");
    let mut conn = raw(&server.url()).await;
    let members: Vec<String> = conn.zrange("w3:group:room", 0, -1).await.expect("zrange");
    assert_eq!(members.len(), 3);
    let ttl: i64 = conn.ttl("w3:group:room").await.expect("ttl");
    assert!(ttl > 86_000, "group_expiry sets the key TTL: {ttl}");

    let report = layer.group_send("room", chat("all")).await.expect("group_send");
    assert_eq!(report.queued, 3);
    // One message per receiving process, naming its members.
    let a: Vec<Vec<u8>> = conn.zrange("w3specific.aaaa!", 0, -1).await.expect("zrange");
    let b: Vec<Vec<u8>> = conn.zrange("w3specific.bbbb!", 0, -1).await.expect("zrange");
    assert_eq!((a.len(), b.len()), (1, 1));
    fn routing(member: &[u8]) -> Routing<'_> {
        wire::decode_body(&member[12..]).expect("decodes").1
    }
    assert_eq!(routing(&a[0]), Routing::Many(vec!["specific.aaaa!1", "specific.aaaa!2"]));
    assert_eq!(routing(&b[0]), Routing::Many(vec!["specific.bbbb!1"]));
    layer.group_discard("room", "specific.aaaa!1").await.expect("discard");
    let left: Vec<String> = conn.zrange("w3:group:room", 0, -1).await.expect("zrange");
    assert_eq!(left.len(), 2);
}

#[tokio::test]
async fn flush_removes_only_this_prefix() {
    let server = support::shared();
    let layer = layer(&server.url(), "w4:");
    layer.send("worker", chat("x")).await.expect("send");
    layer.group_add("g", "worker").await.expect("group_add");
    let mut conn = raw(&server.url()).await;
    let _: () = conn.set("w4other", "untouched").await.expect("set");
    layer.flush().await.expect("flush");
    let keys: Vec<String> = conn.keys("w4:*").await.expect("keys");
    assert!(keys.is_empty(), "{keys:?}");
    let other: Option<String> = conn.get("w4other").await.expect("get");
    assert_eq!(other.as_deref(), Some("untouched"));
}

#[tokio::test]
async fn a_poison_payload_in_our_queue_is_skipped_and_the_next_message_arrives() {
    let server = support::shared();
    let layer = layer(&server.url(), "w5");
    let me = layer.new_channel("specific").await.expect("new_channel");
    let key = format!("w5{}", channels_core::layer::non_local_name(&me));
    let mut conn = raw(&server.url()).await;
    let now = wire::now_seconds();
    for poison in [b"short".to_vec(), vec![0u8; 40], [vec![1u8; 12], vec![0x92, 1, 2]].concat()] {
        let _: () = conn.zadd(&key, poison, now).await.expect("zadd");
    }
    // From another process, so that it travels through the queue behind the poison.
    let other = self::layer(&server.url(), "w5");
    other.send(&me, chat("good")).await.expect("send");
    let got = tokio::time::timeout(Duration::from_secs(5), layer.receive(&me)).await.expect("arrives").expect("ok");
    assert_eq!(got.as_bytes(), chat("good").as_bytes());
}

#[tokio::test]
async fn channel_names_share_the_process_id_and_end_in_a_short_count() {
    let server = support::shared();
    let layer = layer(&server.url(), "w6");
    let a = layer.new_channel("specific").await.expect("new_channel");
    let b = layer.new_channel("specific").await.expect("new_channel");
    for name in [&a, &b] {
        let (process, local) = name.strip_prefix("specific.").and_then(|n| n.split_once('!')).expect("prefix.id!local");
        assert!(process.len() == 16 && process.bytes().all(|c| c.is_ascii_hexdigit()), "{name}");
        assert!(!local.is_empty() && local.len() <= 2 && local.bytes().all(|c| c.is_ascii_alphanumeric()), "{name}");
    }
    assert_eq!(channels_core::layer::non_local_name(&a), channels_core::layer::non_local_name(&b));
    assert_ne!(a, b);
}

/// How many times redis-server has run `ZADD`, from a script or not.
async fn zadd_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.expect("info");
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_zadd:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count"))
}

#[tokio::test]
async fn a_process_delivers_to_its_own_channels_without_redis_and_in_order() {
    // A server of its own, so that its command counts are this test's alone.
    let server = support::RedisServer::start();
    let here = layer(&server.url(), "w6");
    let there = layer(&server.url(), "w6");
    let mine = here.new_channel("specific").await.expect("new_channel");
    let theirs = there.new_channel("specific").await.expect("new_channel");
    here.group_add("mine", &mine).await.expect("group_add");
    here.group_add("both", &mine).await.expect("group_add");
    there.group_add("both", &theirs).await.expect("group_add");
    let mut conn = raw(&server.url()).await;
    let before = zadd_calls(&mut conn).await;

    here.send(&mine, chat("1")).await.expect("send");
    let report = here.group_send("mine", chat("2")).await.expect("group_send");
    assert_eq!((report.queued, report.dropped_full), (1, 0));
    let reports = here.group_send_many(&[("mine".to_owned(), chat("3")), ("mine".to_owned(), chat("4"))]).await;
    assert!(reports.iter().all(|r| r.as_ref().is_ok_and(|r| r.queued == 1)), "{reports:?}");
    here.send(&mine, chat("5")).await.expect("send");
    assert_eq!(zadd_calls(&mut conn).await, before, "nothing for this process's own channels went to Redis");
    for expected in ["1", "2", "3", "4", "5"] {
        let got = here.try_receive(&mine).expect("already in the mailbox");
        assert_eq!(got.as_bytes(), chat(expected).as_bytes());
    }

    // A group spanning both processes: the other process's share goes through Redis.
    let report = here.group_send("both", chat("6")).await.expect("group_send");
    assert_eq!((report.queued, report.dropped_full), (2, 0));
    assert_eq!(zadd_calls(&mut conn).await, before + 1, "one queued message for the other process");
    assert_eq!(here.try_receive(&mine).expect("at once").as_bytes(), chat("6").as_bytes());
    let got = tokio::time::timeout(Duration::from_secs(5), there.receive(&theirs)).await.expect("arrives").expect("ok");
    assert_eq!(got.as_bytes(), chat("6").as_bytes());
}

#[tokio::test]
async fn direct_sends_across_two_shards_reach_the_receiver() {
    let a = support::RedisServer::start();
    let b = support::RedisServer::start();
    let url = format!("redis://127.0.0.1:{},127.0.0.1:{}", a.port, b.port);
    let sender = RedisChannelLayer::from_url(&format!("{url}?prefix=s")).expect("layer");
    let receiver = RedisChannelLayer::from_url(&format!("{url}?prefix=s")).expect("layer");
    let mut names = Vec::new();
    for _ in 0..8 {
        names.push(receiver.new_channel("specific").await.expect("new_channel"));
    }
    for (i, name) in names.iter().enumerate() {
        sender.send(name, chat(&i.to_string())).await.expect("send");
        receiver.group_add("both", name).await.expect("group_add");
    }
    for name in &names {
        tokio::time::timeout(Duration::from_secs(5), receiver.receive(name)).await.expect("direct").expect("ok");
    }
    sender.group_send("both", chat("group")).await.expect("group_send");
    for name in &names {
        let got =
            tokio::time::timeout(Duration::from_secs(5), receiver.receive(name)).await.expect("group").expect("ok");
        assert_eq!(got.as_bytes(), chat("group").as_bytes());
    }
    // A message written where channels_redis's sender puts it (hash of the full name) arrives too.
    let name = &names[0];
    let wrong_shard = wire::consistent_hash(name, 2);
    let port = if wrong_shard == 0 { a.port } else { b.port };
    let mut conn = raw(&format!("redis://127.0.0.1:{port}")).await;
    let body = wire::body_with_routing(&chat("misrouted"), &Routing::One(name));
    let key = format!("s{}", channels_core::layer::non_local_name(name));
    let _: () = conn.zadd(key, wire::frame(&body), wire::now_seconds()).await.expect("zadd");
    let got =
        tokio::time::timeout(Duration::from_secs(5), receiver.receive(name)).await.expect("misrouted").expect("ok");
    assert_eq!(got.as_bytes(), chat("misrouted").as_bytes());
}

#[tokio::test]
async fn operations_fail_with_errors_while_redis_is_down_and_work_after_it_returns() {
    let mut server = support::RedisServer::start();
    let layer = RedisChannelLayer::new(RedisConfig::from_url(&server.url()).expect("config")).expect("layer");
    let me = layer.new_channel("specific").await.expect("new_channel");
    layer.group_add("g", &me).await.expect("group_add");
    server.stop();
    assert!(layer.send("worker", chat("x")).await.is_err());
    assert!(layer.group_send("g", chat("x")).await.is_err(), "a failed group_send is an error, not silence");
    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // The membership comes back on its own once the pump reconnects.
        if let Ok(report) = layer.group_send("g", chat("back")).await
            && report.queued == 1
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not working again within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = tokio::time::timeout(Duration::from_secs(5), layer.receive(&me)).await.expect("arrives").expect("ok");
    assert_eq!(got.as_bytes(), chat("back").as_bytes());
    let _ = LayerConfig::default();
}

#[tokio::test]
async fn worker_channels_spread_over_two_shards_are_all_received() {
    let a = support::RedisServer::start();
    let b = support::RedisServer::start();
    let url = format!("redis://127.0.0.1:{},127.0.0.1:{}", a.port, b.port);
    let layer = RedisChannelLayer::from_url(&format!("{url}?prefix=n")).expect("layer");
    for i in 0..6 {
        layer.send("jobs", chat(&i.to_string())).await.expect("send");
    }
    let mut seen = Vec::new();
    for _ in 0..6 {
        let got =
            tokio::time::timeout(Duration::from_secs(10), layer.receive("jobs")).await.expect("arrives").expect("ok");
        seen.push(got.decode::<BTreeMap<String, String>>().expect("map")["text"].clone());
    }
    seen.sort();
    assert_eq!(seen, ["0", "1", "2", "3", "4", "5"]);
}

fn text_of(message: &Message) -> String {
    message.decode::<BTreeMap<String, String>>().expect("map")["text"].clone()
}

/// What a worker channel holds in Redis, oldest first, without taking it.
async fn queued_texts(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    let members: Vec<Vec<u8>> = conn.zrange(key, 0, -1).await.expect("zrange");
    members
        .iter()
        .map(|member| text_of(&wire::decode_body(wire::unframe(member).expect("framed")).expect("body").0))
        .collect()
}

/// A send adds its payload and then checks the queue's length, taking the payload out again
/// if the queue was full: concurrent senders in two processes must still leave exactly the
/// capacity queued, and exactly the messages whose sends succeeded.
#[tokio::test]
async fn concurrent_sends_to_a_full_queue_keep_exactly_the_accepted_messages() {
    let server = support::RedisServer::start();
    let url = format!("{}?prefix=cap&capacity=5", server.url());
    let (a, b) = (RedisChannelLayer::from_url(&url).expect("layer"), RedisChannelLayer::from_url(&url).expect("layer"));
    let sends = (0..40).map(|i| {
        let layer = if i % 2 == 0 { &a } else { &b };
        async move { (i, layer.send("jobs", chat(&i.to_string())).await) }
    });
    let results = futures_util::future::join_all(sends).await;
    let mut accepted: Vec<String> = Vec::new();
    for (i, result) in results {
        match result {
            Ok(()) => accepted.push(i.to_string()),
            Err(channels_core::layer::SendError::ChannelFull { .. }) => {}
            Err(e) => panic!("send {i}: {e}"),
        }
    }
    assert_eq!(accepted.len(), 5, "the capacity, no more and no fewer: {accepted:?}");
    let mut conn = raw(&server.url()).await;
    let mut queued = queued_texts(&mut conn, "capjobs").await;
    queued.sort();
    accepted.sort();
    assert_eq!(queued, accepted, "what is queued is what was accepted");
    a.receive("jobs").await.expect("receive");
    a.send("jobs", chat("room again")).await.expect("room after a receive");
}

/// The same for group sends from two processes to a member whose queue fills up: each
/// report's `queued` or `dropped_full` matches what the queue holds afterwards.
#[tokio::test]
async fn concurrent_group_sends_to_a_full_member_report_what_was_kept() {
    let server = support::RedisServer::start();
    let url = format!("{}?prefix=gcap&capacity=3", server.url());
    let (a, b) = (RedisChannelLayer::from_url(&url).expect("layer"), RedisChannelLayer::from_url(&url).expect("layer"));
    a.group_add("g", "slow-worker").await.expect("group_add");
    let sends = (0..30).map(|i| {
        let layer = if i % 2 == 0 { &a } else { &b };
        async move { (i, layer.group_send("g", chat(&i.to_string())).await.expect("group_send")) }
    });
    let mut kept: Vec<String> = Vec::new();
    for (i, report) in futures_util::future::join_all(sends).await {
        match (report.queued, report.dropped_full) {
            (1, 0) => kept.push(i.to_string()),
            (0, 1) => {}
            other => panic!("send {i}: {other:?}"),
        }
    }
    assert_eq!(kept.len(), 3, "{kept:?}");
    let mut queued = queued_texts(&mut raw(&server.url()).await, "gcapslow-worker").await;
    queued.sort();
    kept.sort();
    assert_eq!(queued, kept);
}

/// The receiving process puts a popped run of messages for the same members in member by
/// member: every member still gets its messages in the order sent, when runs for different
/// member lists alternate.
#[tokio::test]
async fn popped_messages_for_different_members_arrive_in_order_for_each() {
    let server = support::RedisServer::start();
    let (here, there) = (layer(&server.url(), "ord"), layer(&server.url(), "ord"));
    let (x, y) = (there.new_channel("specific").await.expect("x"), there.new_channel("specific").await.expect("y"));
    there.group_add("gx", &x).await.expect("group_add");
    there.group_add("gxy", &x).await.expect("group_add");
    there.group_add("gxy", &y).await.expect("group_add");
    let plan = [("gxy", 1), ("gx", 2), ("gxy", 3), ("gxy", 4), ("gx", 5), ("gx", 6), ("gxy", 7)];
    let sends: Vec<(String, Message)> = plan.iter().map(|&(g, n)| (g.to_owned(), chat(&n.to_string()))).collect();
    let reports = here.group_send_many(&sends).await;
    let queued: Vec<usize> = reports.iter().map(|r| r.as_ref().expect("sent").queued).collect();
    assert_eq!(queued, [2, 1, 2, 2, 1, 1, 2]);
    let mut at_x = Vec::new();
    for _ in 0..7 {
        let got = tokio::time::timeout(Duration::from_secs(5), there.receive(&x)).await.expect("x").expect("ok");
        at_x.push(text_of(&got));
    }
    assert_eq!(at_x, ["1", "2", "3", "4", "5", "6", "7"]);
    let mut at_y = Vec::new();
    for _ in 0..4 {
        let got = tokio::time::timeout(Duration::from_secs(5), there.receive(&y)).await.expect("y").expect("ok");
        at_y.push(text_of(&got));
    }
    assert_eq!(at_y, ["1", "3", "4", "7"]);
    assert!(there.try_receive(&y).is_none());
}

/// `send_linger` is the wait a connection's batches of queued group sends take between them
/// (`batch_linger`, kept by each connection); the layer itself sends every batch at once.
#[tokio::test]
async fn the_send_linger_is_the_connections_wait_and_the_layer_never_waits() {
    let server = support::shared();
    let linger = Duration::from_millis(300);
    let layer =
        RedisChannelLayer::from_url(&format!("{}?prefix=linger&send_linger_ms=300", server.url())).expect("layer");
    assert_eq!(layer.batch_linger(), linger);
    let me = layer.new_channel("specific").await.expect("new_channel");
    layer.group_add("g", &me).await.expect("group_add");
    let started = tokio::time::Instant::now();
    for _ in 0..3 {
        layer.group_send_many(&[("g".to_owned(), chat("x"))]).await;
    }
    assert!(started.elapsed() < linger, "batch after batch, at once");
    for _ in 0..3 {
        layer.receive(&me).await.expect("every message arrives");
    }
}

/// Echoes (`group_send_echo`) rest on this process's record of its memberships; these check
/// that the record follows Redis when someone else changes it.
mod echo {
    use super::*;

    fn texts(layer: &RedisChannelLayer, channel: &str) -> Vec<String> {
        std::iter::from_fn(|| layer.try_receive(channel))
            .map(|m| m.to_value().expect("value")["text"].as_str().expect("text").to_owned())
            .collect()
    }

    async fn send(layer: &RedisChannelLayer, me: &str, text: &str) -> bool {
        let sends = [("room".to_owned(), chat(text))];
        let echoed = layer.group_send_echo("room", me, &sends[0].1);
        let reports = layer.group_send_many_echoed(&sends, me, usize::from(echoed)).await;
        assert!(reports[0].is_ok(), "{reports:?}");
        echoed
    }

    /// Waits for the copy that went through Redis (the strict path delivers after a read).
    async fn arrives(layer: &RedisChannelLayer, channel: &str) -> String {
        let got = tokio::time::timeout(Duration::from_secs(5), layer.receive(channel)).await.expect("arrives");
        got.expect("ok").to_value().expect("value")["text"].as_str().expect("text").to_owned()
    }

    #[tokio::test]
    async fn a_membership_another_process_removed_stops_the_echo_after_one_read() {
        let (here, there) = support::layer_pair(&support::shared().url(), LayerConfig::default());
        let me = here.new_channel("specific").await.expect("new_channel");
        here.group_add("room", &me).await.expect("group_add");
        assert!(send(&here, &me, "1").await, "joined here: echoed");
        assert_eq!(texts(&here, &me), ["1"]);
        // Every heartbeat adds this process's memberships again, and would undo the discard
        // below: the first ones, at start-up, are over once the process is listed; the next is
        // a third of `process_ttl` (20 s) away.
        let processes = format!("{}:processes", here.redis_config().prefix);
        let id = me.trim_start_matches("specific.").split('!').next().expect("process id");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while support::shared().cli(&["ZSCORE", &processes, id]).trim().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "this process was never listed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Another process removes it (as a Django admin command might).
        there.group_discard("room", &me).await.expect("group_discard");
        // The record is stale until a send reads the group: that one is still echoed...
        assert!(send(&here, &me, "2").await);
        assert_eq!(texts(&here, &me), ["2"]);
        // ...and the read found the membership gone: no more echoes, and nothing arrives.
        assert!(!send(&here, &me, "3").await);
        assert!(tokio::time::timeout(Duration::from_millis(300), here.receive(&me)).await.is_err());

        // Joining again here restores the echo.
        here.group_add("room", &me).await.expect("group_add");
        assert!(send(&here, &me, "4").await);
        assert_eq!(texts(&here, &me), ["4"]);
    }

    #[tokio::test]
    async fn a_membership_another_process_made_is_served_after_the_read() {
        let (here, there) = support::layer_pair(&support::shared().url(), LayerConfig::default());
        let me = here.new_channel("specific").await.expect("new_channel");
        there.group_add("room", &me).await.expect("group_add");
        assert!(!send(&here, &me, "1").await, "not joined by this process: no echo");
        assert_eq!(arrives(&here, &me).await, "1", "but the member gets it through the read");
        assert!(here.try_receive(&me).is_none(), "once");
    }

    #[tokio::test]
    async fn nothing_is_echoed_while_redis_fails_and_echoes_resume_after() {
        // A server of its own, to stop and restart.
        let mut server = support::RedisServer::start();
        let here = support::layer_on(&server.url(), LayerConfig::default());
        let me = here.new_channel("specific").await.expect("new_channel");
        here.group_add("room", &me).await.expect("group_add");
        assert!(send(&here, &me, "up").await);
        assert_eq!(texts(&here, &me), ["up"]);

        server.stop();
        let sends = [("room".to_owned(), chat("down"))];
        let echoed = here.group_send_echo("room", &me, &sends[0].1);
        let reports = here.group_send_many_echoed(&sends, &me, usize::from(echoed)).await;
        assert!(reports[0].is_err(), "Redis is down: {reports:?}");
        let _ = texts(&here, &me);
        assert!(!here.group_send_echo("room", &me, &chat("still down")), "no echo after a failed send");
        assert!(here.try_receive(&me).is_none());

        server.restart();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let sends = [("room".to_owned(), chat("back?"))];
            let echoed = here.group_send_echo("room", &me, &sends[0].1);
            let reports = here.group_send_many_echoed(&sends, &me, usize::from(echoed)).await;
            if echoed && reports[0].is_ok() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "echoes never resumed: {reports:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn echoes_stop_half_a_mailbox_ahead_of_the_members_here_and_resume_once_delivered() {
        let here = support::layer_on(&support::shared().url(), LayerConfig::default().capacity(10));
        let (me, other) =
            (here.new_channel("specific").await.expect("me"), here.new_channel("specific").await.expect("other"));
        here.group_add("room", &me).await.expect("group_add");
        here.group_add("room", &other).await.expect("group_add");
        // The sender reads its copies as they come; the sends wait for their batch meanwhile.
        let sends: Vec<(String, Message)> = (0..6).map(|n| ("room".to_owned(), chat(&n.to_string()))).collect();
        let mut echoed = 0;
        while echoed < sends.len() && here.group_send_echo("room", &me, &sends[echoed].1) {
            assert_eq!(texts(&here, &me), [echoed.to_string()]);
            echoed += 1;
        }
        assert_eq!(echoed, 5, "5 sends ahead of the other member: half its capacity of 10");
        let reports = here.group_send_many_echoed(&sends, &me, echoed).await;
        assert!(reports.iter().all(Result::is_ok), "{reports:?}");
        assert_eq!(texts(&here, &other), ["0", "1", "2", "3", "4", "5"], "the other member got them all");
        assert_eq!(texts(&here, &me), ["5"], "the sender's copy of the send not echoed came with the batch");
        // A sender that does not read its copies is echoed less: what waits for it counts, as the
        // members here get what it gets.
        assert!(here.group_send_echo("room", &me, &chat("6")), "delivered: echoed again");
        assert!(here.group_send_echo("room", &me, &chat("7")), "1 waiting + 1 ahead, under 5");
        assert!(here.group_send_echo("room", &me, &chat("8")), "2 + 2, under 5");
        assert!(!here.group_send_echo("room", &me, &chat("9")), "3 + 3");
    }

    #[tokio::test]
    async fn an_expired_membership_is_not_echoed() {
        let config = LayerConfig::default().group_expiry(Duration::from_secs(1));
        let here = support::layer_on(&support::shared().url(), config);
        let me = here.new_channel("specific").await.expect("new_channel");
        here.group_add("room", &me).await.expect("group_add");
        assert!(here.group_send_echo("room", &me, &chat("fresh")));
        assert_eq!(texts(&here, &me), ["fresh"]);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(!here.group_send_echo("room", &me, &chat("stale")), "past group_expiry");
        assert!(here.try_receive(&me).is_none());
    }
}
