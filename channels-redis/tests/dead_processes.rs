//! A process of ours that dies without cleaning up (SIGKILL, OOM) stops costing the live
//! members of its groups: they lose nothing, and its members are pruned from the groups.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use channels_core::layer::{ChannelLayer, Message};
use channels_redis::RedisChannelLayer;
use support::RedisServer;

/// The environment variable that turns the test binary into the process to be killed: the
/// layer URL it joins its members on.
const DOOMED_LAYER: &str = "DEAD_PROCESSES_DOOMED_LAYER";
const ROOM: &str = "room0";
const DOOMED_MEMBERS: usize = 2_000;
const SENDERS: usize = 20;
const MESSAGES_PER_SENDER: usize = 200;
const WINDOW: usize = 8;

/// Not a test of its own: the child process the tests start and SIGKILL. It joins
/// [`DOOMED_MEMBERS`] channels to the room, says `ready`, and waits to be killed.
#[tokio::test]
#[ignore = "run as a child process by the tests of this file"]
async fn doomed_process() {
    let Ok(url) = std::env::var(DOOMED_LAYER) else { return };
    let layer = RedisChannelLayer::from_url(&url).expect("layer");
    for _ in 0..DOOMED_MEMBERS {
        let channel = layer.new_channel("specific").await.expect("channel");
        layer.group_add(ROOM, &channel).await.expect("group_add");
    }
    println!("ready");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

/// Starts the doomed process on `url`, waits until its members are in the room, and SIGKILLs it.
fn kill_a_process_with_members(url: &str) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "doomed_process", "--ignored", "--nocapture", "--test-threads=1"])
        .env(DOOMED_LAYER, url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the doomed process");
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line.contains("ready"));
    assert!(ready, "the doomed process did not get ready");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

/// The seed scenario on the layer: 20 members of the room, each sending 200 group messages (at
/// most 8 awaited at once) while reading its own. Returns the deliveries.
async fn seed_scenario(layer: &RedisChannelLayer) -> u64 {
    let layer = Arc::new(layer.clone());
    let mut members = Vec::new();
    for _ in 0..SENDERS {
        let channel = layer.new_channel("specific").await.expect("channel");
        layer.group_add(ROOM, &channel).await.expect("group_add");
        members.push(channel);
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let mut receivers = Vec::new();
    for channel in &members {
        let (layer, channel, delivered) = (layer.clone(), channel.clone(), delivered.clone());
        receivers.push(tokio::spawn(async move {
            for _ in 0..SENDERS * MESSAGES_PER_SENDER {
                match tokio::time::timeout(Duration::from_secs(10), layer.receive(&channel)).await {
                    Ok(Ok(_)) => delivered.fetch_add(1, Ordering::Relaxed),
                    _ => return,
                };
            }
        }));
    }
    let mut senders = Vec::new();
    for (s, _) in members.iter().enumerate() {
        let layer = layer.clone();
        senders.push(tokio::spawn(async move {
            use futures_util::StreamExt;
            futures_util::stream::iter(0..MESSAGES_PER_SENDER)
                .for_each_concurrent(WINDOW, |m| {
                    let layer = layer.clone();
                    async move {
                        let message = Message::new(&serde_json::json!({"type": "chat.message", "from": s, "n": m}))
                            .expect("message");
                        if let Err(e) = layer.group_send(ROOM, message).await {
                            eprintln!("group_send failed: {e}");
                        }
                    }
                })
                .await;
        }));
    }
    for task in senders.into_iter().chain(receivers) {
        task.await.expect("task");
    }
    delivered.load(Ordering::Relaxed)
}

/// The layer URL of a test on `redis`: a heartbeat TTL of 1 s, so that dead processes are
/// found dead within about 1.3 s.
fn layer_url(redis: &RedisServer) -> String {
    format!("{}/0?prefix=dead&process_ttl=1", redis.url())
}

/// The members of the room in Redis.
fn room_members(redis: &RedisServer) -> Vec<String> {
    redis.cli(&["ZRANGE", "dead:group:room0", "0", "-1"]).lines().map(str::to_owned).filter(|m| !m.is_empty()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_members_lose_nothing_after_a_process_with_members_was_killed() {
    let redis = RedisServer::start();
    kill_a_process_with_members(&layer_url(&redis));
    let layer = RedisChannelLayer::from_url(&layer_url(&redis)).expect("layer");
    let delivered = seed_scenario(&layer).await;
    assert_eq!(delivered, (SENDERS * SENDERS * MESSAGES_PER_SENDER) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_members_are_pruned_within_its_ttl_and_a_third() {
    let redis = RedisServer::start();
    kill_a_process_with_members(&layer_url(&redis));
    assert_eq!(room_members(&redis).len(), DOOMED_MEMBERS);
    let killed = Instant::now();
    let layer = RedisChannelLayer::from_url(&layer_url(&redis)).expect("layer");
    let member = layer.new_channel("specific").await.expect("channel");
    layer.group_add(ROOM, &member).await.expect("group_add");
    let pruned = async {
        loop {
            let message = Message::new(&serde_json::json!({"type": "chat.message"})).expect("message");
            layer.group_send(ROOM, message).await.expect("group_send");
            if room_members(&redis) == [member.clone()] {
                return killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let took = tokio::time::timeout(Duration::from_secs(5), pruned).await.expect("pruned within 5 s");
    // TTL 1 s, heartbeats every 1/3 s, and the next group send; with a margin for CI.
    assert!(took < Duration::from_millis(2_500), "pruned after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_processes_that_never_heartbeat_are_left_alone() {
    let redis = RedisServer::start();
    let python_member = "specific.0123456789abcdef0123456789abcdef!a1b2c3";
    redis.cli(&["ZADD", "dead:group:room0", "9999999999", python_member]);
    let layer = RedisChannelLayer::from_url(&layer_url(&redis)).expect("layer");
    for _ in 0..15 {
        let message = Message::new(&serde_json::json!({"type": "chat.message"})).expect("message");
        layer.group_send(ROOM, message).await.expect("group_send");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(room_members(&redis), [python_member]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_live_process_of_ours_are_left_alone() {
    let redis = RedisServer::start();
    let (alive, sender) = (
        RedisChannelLayer::from_url(&layer_url(&redis)).expect("layer"),
        RedisChannelLayer::from_url(&layer_url(&redis)).expect("layer"),
    );
    let member = alive.new_channel("specific").await.expect("channel");
    alive.group_add(ROOM, &member).await.expect("group_add");
    for _ in 0..15 {
        let message = Message::new(&serde_json::json!({"type": "chat.message"})).expect("message");
        sender.group_send(ROOM, message).await.expect("group_send");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(room_members(&redis), std::slice::from_ref(&member));
    assert!(alive.try_receive(&member).is_some(), "the live member got the messages");
}

/// A group of one member of another process, whose queue holds `capacity` messages already.
fn room_with_a_full_queue(redis: &RedisServer, capacity: usize) -> (RedisChannelLayer, String) {
    // Heartbeats only at the start, so that they do not count among the commands.
    let url = format!("{}/0?prefix=dead&process_ttl=3600&capacity={capacity}", redis.url());
    let layer = RedisChannelLayer::from_url(&url).expect("layer");
    let queue = "deadspecific.00000000feedbeef!";
    for n in 0..capacity {
        redis.cli(&["ZADD", queue, "9999999999", &format!("old{n}")]);
    }
    redis.cli(&["ZADD", "dead:group:room0", "9999999999", "specific.00000000feedbeef!a"]);
    (layer, queue.to_owned())
}

/// How many times redis-server ran `command` (from `INFO commandstats`).
fn calls(redis: &RedisServer, command: &str) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    let Some(line) = stats.lines().find(|line| line.starts_with(&format!("cmdstat_{command}:"))) else { return 0 };
    line.split(['=', ',']).nth(1).and_then(|calls| calls.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_found_full_is_not_written_again_while_it_stays_full() {
    let redis = RedisServer::start();
    let (layer, queue) = room_with_a_full_queue(&redis, 5);
    let writes = || ["zadd", "evalsha", "eval"].iter().map(|command| calls(&redis, command)).sum::<u64>();
    let mut writes_after_the_first = 0;
    for n in 0..10 {
        let writes_before = writes();
        let message = Message::new(&serde_json::json!({"type": "chat.message"})).expect("message");
        let report = layer.group_send(ROOM, message).await.expect("group_send");
        assert_eq!((report.queued, report.dropped_full), (0, 1));
        if n > 0 {
            writes_after_the_first += writes() - writes_before;
        }
    }
    assert_eq!(writes_after_the_first, 0, "no payload written once the queue was found full");
    assert_eq!(redis.cli(&["ZCARD", &queue]).trim(), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_found_full_gets_messages_again_once_it_has_room() {
    let redis = RedisServer::start();
    let (layer, queue) = room_with_a_full_queue(&redis, 5);
    let send = || async {
        let message = Message::new(&serde_json::json!({"type": "chat.message"})).expect("message");
        layer.group_send(ROOM, message).await.expect("group_send")
    };
    assert_eq!(send().await.dropped_full, 1);
    redis.cli(&["ZPOPMIN", &queue]);
    assert_eq!(send().await.queued, 1, "the popped message made room");
    assert_eq!(send().await.dropped_full, 1, "full again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_process_taken_for_dead_joins_its_groups_again() {
    let redis = RedisServer::start();
    // The process taken for dead heartbeats every second, the sender every third of one: the
    // sender sees it dead before it notices.
    let alive_url = format!("{}/0?prefix=dead&process_ttl=3", redis.url());
    let (alive, sender) = (
        RedisChannelLayer::from_url(&alive_url).expect("layer"),
        RedisChannelLayer::from_url(&layer_url(&redis)).expect("layer"),
    );
    let member = alive.new_channel("specific").await.expect("channel");
    alive.group_add(ROOM, &member).await.expect("group_add");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = member.trim_start_matches("specific.").split('!').next().expect("process id").to_owned();
    // As if its heartbeats had stalled for longer than the TTL.
    let redis_now: u64 = redis.cli(&["TIME"]).lines().next().and_then(|s| s.trim().parse().ok()).expect("TIME");
    redis.cli(&["ZADD", "dead:processes", &(redis_now - 10).to_string(), &id]);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut pruned = false;
    while Instant::now() < deadline {
        let message = Message::new(&serde_json::json!({"type": "chat.message"})).expect("message");
        sender.group_send(ROOM, message).await.expect("group_send");
        pruned |= room_members(&redis).is_empty();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pruned, "the sender took it for dead");
    assert_eq!(room_members(&redis), std::slice::from_ref(&member), "back in the room");
}
