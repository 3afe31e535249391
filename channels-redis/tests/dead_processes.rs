//! A process of ours that dies without cleaning up (SIGKILL, OOM) stops costing the live
//! members of its groups: they lose nothing, and its members are pruned from the groups.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use channels_core::layer::{ChannelLayer, Message};
use channels_core::prelude::*;
use channels_core::testing::{Connected, WebsocketCommunicator};
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
/// [`DOOMED_MEMBERS`] channels to the room, waits until it is listed among the live processes,
/// says `ready <its id>`, and waits to be killed.
#[tokio::test]
#[ignore = "run as a child process by the tests of this file"]
async fn doomed_process() {
    let Ok(url) = std::env::var(DOOMED_LAYER) else { return };
    let layer = RedisChannelLayer::from_url(&url).expect("layer");
    let mut id = String::new();
    for _ in 0..DOOMED_MEMBERS {
        let channel = layer.new_channel("specific").await.expect("channel");
        layer.group_add(ROOM, &channel).await.expect("group_add");
        id = process_id(&channel);
    }
    let processes = redis::Client::open(url.split('?').next().expect("url")).expect("client");
    let mut conn = processes.get_multiplexed_async_connection().await.expect("connection");
    let key = format!("{}:processes", url.split("prefix=").nth(1).and_then(|p| p.split('&').next()).expect("prefix"));
    while redis::cmd("ZSCORE").arg(&key).arg(&id).query_async::<Option<f64>>(&mut conn).await.expect("ZSCORE").is_none()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("ready {id}");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

/// The id of the process that made `channel` (`specific.<id>!<local>`).
fn process_id(channel: &str) -> String {
    channel.trim_start_matches("specific.").split('!').next().expect("process id").to_owned()
}

/// Starts the doomed process on `url`, waits until its members are in the room, and SIGKILLs
/// it. Returns its id.
fn kill_a_process_with_members(url: &str) -> String {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "doomed_process", "--ignored", "--nocapture", "--test-threads=1"])
        .env(DOOMED_LAYER, url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the doomed process");
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.split_once("ready ").map(|(_, id)| id.trim().to_owned()));
    let id = ready.expect("the doomed process did not get ready");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    id
}

/// Holds a subscription to the liveness channel of process `id`, as the half-open connections
/// of a process whose host vanished would: Redis cannot tell that it died until its score runs
/// out.
async fn vanished_host(redis: &RedisServer, id: &str) -> redis::aio::PubSub {
    let client = redis::Client::open(redis.url()).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pub/sub connection");
    pubsub.subscribe(format!("dead:processes:{id}")).await.expect("subscribe");
    pubsub
}

/// A chat room's consumer, as the chat example's: a client's text goes to the room with
/// `group_send_nowait` (so the sender's own copy is echoed at once), and room messages go to
/// the client as they are.
struct Chatter;

impl WebsocketConsumer for Chatter {
    type Event = NoEvents;

    fn groups(&self) -> Vec<String> {
        vec![ROOM.to_owned()]
    }

    async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
        if let Some(text) = frame.as_text() {
            ctx.group_send_nowait(ROOM, &serde_json::json!({"type": "chat.message", "text": text}))?;
        }
        Ok(())
    }

    async fn message(&mut self, ctx: &mut WebsocketContext, message: Message) -> HandlerResult {
        ctx.send_message_json(&message).await?;
        Ok(())
    }
}

/// What the scenario's clients have seen so far, shared by them: how far the room's members
/// are behind what the senders were shown.
struct Seen {
    /// Per client, its own messages that came back to it.
    echoes: Vec<AtomicUsize>,
    /// Per client, the other clients' messages it received.
    others: Vec<AtomicUsize>,
    /// The most messages a client was behind: messages their senders saw come back that it
    /// had not received yet.
    most_behind: AtomicUsize,
}

impl Seen {
    fn new() -> Self {
        let counters = || (0..SENDERS).map(|_| AtomicUsize::new(0)).collect();
        Self { echoes: counters(), others: counters(), most_behind: AtomicUsize::new(0) }
    }

    /// Client `me` saw one of its own messages come back: every other client is behind by one
    /// more until it receives it.
    fn echoed(&self, me: usize) {
        self.echoes[me].fetch_add(1, Ordering::SeqCst);
        let echoes: usize = self.echoes.iter().map(|n| n.load(Ordering::SeqCst)).sum();
        for member in (0..SENDERS).filter(|&member| member != me) {
            let seen = self.echoes[member].load(Ordering::SeqCst) + self.others[member].load(Ordering::SeqCst);
            self.most_behind.fetch_max(echoes.saturating_sub(seen), Ordering::SeqCst);
        }
    }
}

/// One client of the seed scenario: sends `MESSAGES_PER_SENDER` messages, at most `WINDOW` of
/// them not yet seen back, and reads until it has every client's messages or nothing came for
/// 5 s. Returns the messages it received.
async fn seed_client(mut client: WebsocketCommunicator, me: usize, seen: Arc<Seen>) -> usize {
    let (mut sent, mut echoed, mut received) = (0, 0, 0);
    while received < SENDERS * MESSAGES_PER_SENDER {
        if sent < MESSAGES_PER_SENDER && sent - echoed < WINDOW {
            client.send_text(format!("{me} {sent}")).await.expect("send");
            sent += 1;
            continue;
        }
        let Ok(text) = client.receive_text().await else { break };
        let event: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let from = event["text"].as_str().and_then(|text| text.split(' ').next()).expect("sender");
        if from == me.to_string() {
            echoed += 1;
            seen.echoed(me);
        } else {
            seen.others[me].fetch_add(1, Ordering::SeqCst);
        }
        received += 1;
    }
    received
}

/// The seed scenario through consumers on `layer`: 20 clients in the room, each sending 200
/// messages with a window of 8 counted by its own echo, as the `dead_process` benchmark's
/// WebSocket clients do. Returns the deliveries, and the most messages a client was behind.
async fn seed_scenario(layer: &RedisChannelLayer) -> (usize, usize) {
    let router = Router::new().websocket("/ws/", |_: &Scope| Chatter);
    let app = Application::builder(router).layer(Arc::new(layer.clone())).build();
    let mut clients = Vec::new();
    for me in 0..SENDERS {
        let mut client = WebsocketCommunicator::new(&app, "/ws/").timeout(Duration::from_secs(5));
        assert!(matches!(client.connect().await, Ok(Connected::Accepted { .. })), "client {me} connected");
        clients.push(client);
    }
    let seen = Arc::new(Seen::new());
    let clients: Vec<_> =
        clients.into_iter().enumerate().map(|(me, c)| tokio::spawn(seed_client(c, me, seen.clone()))).collect();
    let mut delivered = 0;
    for client in clients {
        delivered += client.await.expect("client");
    }
    (delivered, seen.most_behind.load(Ordering::SeqCst))
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

/// The seed scenario after a process died in a way Redis cannot see (its host vanished), before
/// its score runs out: every group send still writes its 2,000 members' names into its queue,
/// and the layer is slow. A client paced by its own messages coming back must then be held
/// back with the layer, not shown its messages while the room is left far behind: the batches
/// that carry them would land together, more than the members' mailboxes hold, and be dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_members_lose_nothing_after_a_process_with_members_died_unseen() {
    let redis = RedisServer::start();
    // A TTL longer than the test: the dead process is not found dead during it.
    let url = format!("{}/0?prefix=dead&process_ttl=60", redis.url());
    let id = kill_a_process_with_members(&url);
    let _half_open = vanished_host(&redis, &id).await;
    let layer = RedisChannelLayer::from_url(&url).expect("layer");
    let (delivered, most_behind) = seed_scenario(&layer).await;
    assert_eq!(delivered, SENDERS * SENDERS * MESSAGES_PER_SENDER, "every client got every message");
    let capacity = layer.config().capacity;
    assert!(
        most_behind <= capacity,
        "a client was {most_behind} messages behind its senders (mailboxes hold {capacity})"
    );
}

/// A process killed on a host that stays up has its connections closed at once: a new
/// process leaves its members out from its first group send, long before its score runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_is_found_dead_at_once() {
    let redis = RedisServer::start();
    let url = format!("{}/0?prefix=dead&process_ttl=3600", redis.url());
    kill_a_process_with_members(&url);
    assert_eq!(room_members(&redis).len(), DOOMED_MEMBERS);
    let layer = RedisChannelLayer::from_url(&url).expect("layer");
    let member = layer.new_channel("specific").await.expect("channel");
    layer.group_add(ROOM, &member).await.expect("group_add");
    let message = Message::new(&serde_json::json!({"type": "chat.message"})).expect("message");
    let report = layer.group_send(ROOM, message).await.expect("group_send");
    assert_eq!(report.queued, 1, "only the live member was sent the first message: {report:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while room_members(&redis) != [member.clone()] {
        assert!(Instant::now() < deadline, "the dead members were not removed: {}", room_members(&redis).len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A process already running finds a killed one dead at its next heartbeat, a third of its
/// TTL later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_process_finds_a_killed_one_dead_at_its_next_heartbeat() {
    let redis = RedisServer::start();
    // Heartbeats every 2 s; the killed process's score would run out 6 s after its last one.
    let url = format!("{}/0?prefix=dead&process_ttl=6", redis.url());
    let layer = RedisChannelLayer::from_url(&url).expect("layer");
    let member = layer.new_channel("specific").await.expect("channel");
    layer.group_add(ROOM, &member).await.expect("group_add");
    // Its first send reads the processes once: later ones learn of the dead by heartbeats.
    let message = Message::new(&serde_json::json!({"type": "chat.message"})).expect("message");
    layer.group_send(ROOM, message).await.expect("group_send");
    kill_a_process_with_members(&url);
    let killed = Instant::now();
    loop {
        let message = Message::new(&serde_json::json!({"type": "chat.message"})).expect("message");
        layer.group_send(ROOM, message).await.expect("group_send");
        if room_members(&redis) == [member.clone()] {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(4), "not pruned within a heartbeat and a margin");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A process that died unseen by Redis (its host vanished, its connections half-open) is found
/// dead once its score runs out: within its TTL and a third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_died_unseen_is_pruned_within_its_ttl_and_a_third() {
    let redis = RedisServer::start();
    let id = kill_a_process_with_members(&layer_url(&redis));
    let _half_open = vanished_host(&redis, &id).await;
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

/// A process started after another one's heartbeat ran out prunes its members from its very
/// first group send, not from its first heartbeat a third of `process_ttl` later: the seed
/// scenario then runs at the speed of a clean Redis from its first message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_leaves_out_members_of_processes_dead_before_it_started() {
    let redis = RedisServer::start();
    let dead = "00000000deadbeef";
    // Its heartbeat ran out ten seconds ago.
    let redis_now: u64 = redis.cli(&["TIME"]).lines().next().and_then(|s| s.trim().parse().ok()).expect("TIME");
    redis.cli(&["ZADD", "dead:processes", &(redis_now - 10).to_string(), dead]);
    for n in 0..50 {
        redis.cli(&["ZADD", "dead:group:room0", "9999999999", &format!("specific.{dead}!m{n}")]);
    }
    // A TTL of an hour: the heartbeat task would not beat during the test.
    let layer = RedisChannelLayer::from_url(&format!("{}/0?prefix=dead&process_ttl=3600", redis.url())).expect("layer");
    let member = layer.new_channel("specific").await.expect("channel");
    layer.group_add(ROOM, &member).await.expect("group_add");
    let message = Message::new(&serde_json::json!({"type": "chat.message"})).expect("message");
    let report = layer.group_send(ROOM, message).await.expect("group_send");
    assert_eq!(report.queued, 1, "only the live member was sent the first message: {report:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while room_members(&redis) != [member.clone()] {
        assert!(Instant::now() < deadline, "the dead members were not removed: {:?}", room_members(&redis).len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        redis.cli(&["EXISTS", &format!("deadspecific.{dead}!")]).trim(),
        "0",
        "nothing into the dead process's queue"
    );
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
async fn room_with_a_full_queue(redis: &RedisServer, capacity: usize) -> (RedisChannelLayer, String) {
    // Heartbeats only at the start, so that they do not count among the commands.
    let url = format!("{}/0?prefix=dead&process_ttl=3600&capacity={capacity}", redis.url());
    let layer = RedisChannelLayer::from_url(&url).expect("layer");
    let channel = layer.new_channel("specific").await.expect("channel");
    layer.group_add("elsewhere", &channel).await.expect("group_add");
    let id = process_id(&channel);
    while redis.cli(&["ZSCORE", "dead:processes", &id]).trim().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first beat on this host's clock is written again on Redis's at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
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
    let (layer, queue) = room_with_a_full_queue(&redis, 5).await;
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
    let (layer, queue) = room_with_a_full_queue(&redis, 5).await;
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

/// A live process whose liveness connection was dropped is taken for dead meanwhile, and joins
/// its groups again once it is subscribed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_process_that_lost_its_liveness_connection_joins_its_groups_again() {
    let redis = RedisServer::start();
    let alive_url = format!("{}/0?prefix=dead&process_ttl=3", redis.url());
    let (alive, sender) = (
        RedisChannelLayer::from_url(&alive_url).expect("layer"),
        RedisChannelLayer::from_url(&layer_url(&redis)).expect("layer"),
    );
    let member = alive.new_channel("specific").await.expect("channel");
    alive.group_add(ROOM, &member).await.expect("group_add");
    let id = process_id(&member);
    while redis.cli(&["ZSCORE", "dead:processes", &id]).trim().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its liveness connection dropped (the sender's too, which does not matter here), and kept
    // from subscribing again for a while.
    redis.cli(&["ACL", "SETUSER", "default", "-subscribe"]);
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let allowed_again = Instant::now() + Duration::from_millis(1_500);
    let mut allowed = false;
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut pruned = false;
    while Instant::now() < deadline && !(pruned && room_members(&redis) == std::slice::from_ref(&member)) {
        let message = Message::new(&serde_json::json!({"type": "chat.message"})).expect("message");
        sender.group_send(ROOM, message).await.expect("group_send");
        pruned |= room_members(&redis).is_empty();
        if !allowed && Instant::now() > allowed_again {
            redis.cli(&["ACL", "SETUSER", "default", "+subscribe"]);
            allowed = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pruned, "the sender took it for dead");
    assert_eq!(room_members(&redis), std::slice::from_ref(&member), "back in the room");
}

/// A Redis that restarts with its data (as a replica promoted by a failover holds it) lists
/// every process while none is subscribed on it yet: a live process that is slow to come back
/// is not taken for dead meanwhile, and gets what was sent to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_restarted_with_its_data_takes_no_live_process_for_dead() {
    let mut redis = RedisServer::start();
    let user = ["ACL", "SETUSER", "late", "on", ">pw", "~*", "&*", "+@all"];
    redis.cli(&user);
    let late =
        RedisChannelLayer::from_url(&format!("redis://late:pw@127.0.0.1:{}/0?prefix=dead&process_ttl=60", redis.port))
            .expect("layer");
    let sender = RedisChannelLayer::from_url(&layer_url(&redis)).expect("layer");
    let member = late.new_channel("specific").await.expect("channel");
    late.group_add(ROOM, &member).await.expect("group_add");
    let numbered = |n: usize| Message::new(&serde_json::json!({"type": "chat.message", "n": n})).expect("message");
    sender.group_send(ROOM, numbered(0)).await.expect("group_send");
    late.receive(&member).await.expect("the first message");
    // Both listed, each with the server its subscription is on.
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cli(&["HLEN", "dead:processes:servers"]).trim() != "2" {
        assert!(Instant::now() < deadline, "both processes record their server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(redis.cli(&["SAVE"]).trim(), "OK");
    redis.stop();
    // Back with its data but without the user `late`, which cannot come back until it exists.
    redis.restart_keeping_data();
    assert_eq!(room_members(&redis), std::slice::from_ref(&member), "the data is back");
    let mut sent = Vec::new();
    let until = Instant::now() + Duration::from_secs(3); // nine of the sender's heartbeats
    for n in 1.. {
        if Instant::now() > until {
            break;
        }
        if sender.group_send(ROOM, numbered(n)).await.is_ok() {
            sent.push(n);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sent.len() > 20, "the sender's sends went through: {}", sent.len());
    assert_eq!(room_members(&redis), std::slice::from_ref(&member), "not taken for dead");
    redis.cli(&user);
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let message = tokio::time::timeout(Duration::from_secs(10), late.receive(&member))
            .await
            .unwrap_or_else(|_| panic!("{} of {} arrived", got.len(), sent.len()))
            .expect("message");
        got.push(message.decode::<serde_json::Value>().expect("decodes")["n"].as_u64().expect("n") as usize);
    }
    assert_eq!(got, sent, "everything sent meanwhile arrives, in order");
}
