//! The channel layer semantics suite, written once and run against every backend.
//!
//! A backend's tests call [`layer_conformance_tests!`](crate::layer_conformance_tests) with a
//! factory that builds a fresh, empty layer from a [`LayerConfig`]:
//!
//! ```ignore
//! channels_core::layer_conformance_tests!(|config| async move {
//!     std::sync::Arc::new(MyLayer::new(config)) as std::sync::Arc<dyn ChannelLayer>
//! });
//! ```
//!
//! Each check is also a public function here, so a backend can run them its own way.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::layer::{ChannelLayer, ChannelReceiver, GroupError, LayerConfig, Message, ReceiveError, SendError};

/// Builds a fresh, empty layer for one check.
pub trait LayerFactory {
    /// Builds the layer.
    fn make(&self, config: LayerConfig) -> impl Future<Output = Arc<dyn ChannelLayer>>;
}

impl<F, Fut> LayerFactory for F
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Arc<dyn ChannelLayer>>,
{
    fn make(&self, config: LayerConfig) -> impl Future<Output = Arc<dyn ChannelLayer>> {
        self(config)
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename = "test.message")]
struct TestMessage {
    n: u32,
    from: u32,
}

fn msg(n: u32) -> Message {
    msg_from(0, n)
}

fn msg_from(from: u32, n: u32) -> Message {
    Message::new(&TestMessage { n, from }).expect("test message encodes")
}

fn n_of(message: &Message) -> u32 {
    message.decode::<TestMessage>().expect("test message decodes").n
}

const WAIT: Duration = Duration::from_secs(2);

async fn receive(layer: &dyn ChannelLayer, channel: &str) -> Message {
    tokio::time::timeout(WAIT, layer.receive(channel))
        .await
        .expect("a message should arrive")
        .expect("receive should succeed")
}

async fn receives_nothing(layer: &dyn ChannelLayer, channel: &str) -> bool {
    tokio::time::timeout(Duration::from_millis(200), layer.receive(channel)).await.is_err()
}

/// Messages on one channel arrive in the order they were sent.
pub async fn send_then_receive_is_fifo(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let ch = layer.new_channel("specific").await.expect("new_channel");
    for n in 0..20 {
        layer.send(&ch, msg(n)).await.expect("send");
    }
    for n in 0..20 {
        assert_eq!(n_of(&receive(&*layer, &ch).await), n);
    }
}

/// A receive that starts before the send gets the message.
pub async fn receive_waits_for_a_later_send(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let ch = layer.new_channel("specific").await.expect("new_channel");
    let waiter = {
        let (layer, ch) = (layer.clone(), ch.clone());
        tokio::spawn(async move { receive(&*layer, &ch).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    layer.send(&ch, msg(7)).await.expect("send");
    assert_eq!(n_of(&waiter.await.expect("join")), 7);
}

/// A receive dropped before it completes loses no message.
pub async fn receive_is_cancel_safe(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let ch = layer.new_channel("specific").await.expect("new_channel");
    assert!(receives_nothing(&*layer, &ch).await);
    layer.send(&ch, msg(1)).await.expect("send");
    assert_eq!(n_of(&receive(&*layer, &ch).await), 1);
}

/// Plain (worker) channel names work as well as process-specific ones.
pub async fn named_channels_work(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    layer.send("thumbnails-generate", msg(3)).await.expect("send");
    assert_eq!(n_of(&receive(&*layer, "thumbnails-generate").await), 3);
}

/// A [`ChannelLayer::receiver`] on a named (worker) channel receives what is sent there, as
/// the layer's `receive` does: a backend that serves its own channels' receivers from local
/// buffers must not take that path for a channel it did not make.
pub async fn a_receiver_on_a_named_channel_receives_what_is_sent_there(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let receiver = layer.clone().receiver("thumbnails-resize".into());
    layer.send("thumbnails-resize", msg(4)).await.expect("send");
    let got = tokio::time::timeout(WAIT, receiver.receive()).await.expect("the message arrives");
    assert_eq!(n_of(&got.expect("receive")), 4);
    let later = tokio::time::timeout(WAIT, async {
        let (got, ()) = tokio::join!(receiver.receive(), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            layer.send("thumbnails-resize", msg(5)).await.expect("send");
        });
        got
    })
    .await
    .expect("a later send arrives");
    assert_eq!(n_of(&later.expect("receive")), 5);
}

/// `new_channel` names are unique, valid, and start with the prefix.
pub async fn new_channel_names_are_unique_and_valid(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let name = layer.new_channel("specific").await.expect("new_channel");
        assert!(name.starts_with("specific"), "{name}");
        assert!(name.contains('!'), "process-specific names contain '!': {name}");
        crate::layer::validate_channel_name(&name).expect("valid name");
        assert!(seen.insert(name));
    }
}

/// `group_send` reaches every member, and only members.
pub async fn group_send_reaches_every_member(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let a = layer.new_channel("specific").await.expect("new_channel");
    let b = layer.new_channel("specific").await.expect("new_channel");
    let outsider = layer.new_channel("specific").await.expect("new_channel");
    layer.group_add("room", &a).await.expect("group_add");
    layer.group_add("room", &b).await.expect("group_add");
    layer.group_add("other", &outsider).await.expect("group_add");
    let report = layer.group_send("room", msg(1)).await.expect("group_send");
    assert_eq!(report.dropped_full, 0);
    assert_eq!(n_of(&receive(&*layer, &a).await), 1);
    assert_eq!(n_of(&receive(&*layer, &b).await), 1);
    assert!(receives_nothing(&*layer, &outsider).await);
}

/// Adding a channel twice is one membership; discarding stops delivery; discarding a
/// non-member is a no-op.
pub async fn group_add_is_idempotent_and_discard_stops_delivery(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let a = layer.new_channel("specific").await.expect("new_channel");
    layer.group_add("room", &a).await.expect("group_add");
    layer.group_add("room", &a).await.expect("group_add");
    layer.group_send("room", msg(1)).await.expect("group_send");
    assert_eq!(n_of(&receive(&*layer, &a).await), 1);
    assert!(receives_nothing(&*layer, &a).await, "one membership, one delivery");
    layer.group_discard("room", &a).await.expect("group_discard");
    layer.group_discard("room", &a).await.expect("discarding twice is fine");
    layer.group_discard("never-joined", &a).await.expect("discarding a non-member is fine");
    layer.group_send("room", msg(2)).await.expect("group_send");
    assert!(receives_nothing(&*layer, &a).await);
}

/// `group_discard_many` removes exactly the memberships it names, in several groups at once;
/// naming a membership that does not exist is fine.
pub async fn group_discard_many_removes_just_the_memberships_named(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let (a, b) = (layer.new_channel("specific").await.expect("a"), layer.new_channel("specific").await.expect("b"));
    for (group, channel) in [("room", &a), ("room", &b), ("hall", &a)] {
        layer.group_add(group, channel).await.expect("group_add");
    }
    let leaving = [("room", &a), ("hall", &a), ("never-joined", &b)];
    let leaving: Vec<(String, String)> = leaving.iter().map(|(g, c)| ((*g).to_owned(), (*c).clone())).collect();
    layer.group_discard_many(&leaving).await.expect("group_discard_many");
    layer.group_send("room", msg(1)).await.expect("group_send");
    layer.group_send("hall", msg(2)).await.expect("group_send");
    assert!(receives_nothing(&*layer, &a).await, "a left both groups");
    assert_eq!(n_of(&receive(&*layer, &b).await), 1, "b stays in room");
    assert!(receives_nothing(&*layer, &b).await);
}

/// `group_send` to a group nobody joined succeeds and delivers nothing.
pub async fn group_send_to_an_empty_group_is_fine(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let report = layer.group_send("nobody-here", msg(1)).await.expect("group_send");
    assert_eq!(report.dropped_full, 0);
}

/// `send` to a channel at capacity fails with `ChannelFull`; the queued messages survive.
///
/// Named (worker) channels are used because a backend may share one queue, and so one
/// capacity, among all process-specific channels of a process (channels_redis does).
pub async fn send_to_a_full_channel_is_channel_full(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default().capacity(3)).await;
    let ch = "full-queue";
    for n in 0..3 {
        layer.send(ch, msg(n)).await.expect("send under capacity");
    }
    match layer.send(ch, msg(3)).await {
        Err(SendError::ChannelFull { .. }) => {}
        other => panic!("expected ChannelFull, got {other:?}"),
    }
    for n in 0..3 {
        assert_eq!(n_of(&receive(&*layer, ch).await), n);
    }
    layer.send(ch, msg(4)).await.expect("room again after receiving");
}

/// `group_send` never fails for a full member: it drops the message for that member,
/// counts the drop, and still delivers to the others.
pub async fn group_send_drops_for_full_members_and_counts(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default().capacity(1)).await;
    let (full, free) = ("full-worker", "free-worker");
    layer.send(full, msg(0)).await.expect("fill");
    layer.group_add("room", full).await.expect("group_add");
    layer.group_add("room", free).await.expect("group_add");
    let report = layer.group_send("room", msg(1)).await.expect("group_send never fails for a full member");
    assert_eq!((report.queued, report.dropped_full), (1, 1), "{report:?}");
    assert_eq!(n_of(&receive(&*layer, free).await), 1);
    assert_eq!(n_of(&receive(&*layer, full).await), 0);
    assert!(receives_nothing(&*layer, full).await);
}

/// A per-channel capacity pattern overrides the default capacity.
pub async fn channel_capacity_patterns_apply(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default().capacity(1).channel_capacity("big-*", 5)).await;
    for n in 0..5 {
        layer.send("big-queue", msg(n)).await.expect("send under pattern capacity");
    }
    assert!(matches!(layer.send("big-queue", msg(5)).await, Err(SendError::ChannelFull { .. })));
    layer.send("small-queue", msg(0)).await.expect("send");
    assert!(matches!(layer.send("small-queue", msg(1)).await, Err(SendError::ChannelFull { .. })));
}

/// Undelivered messages expire after `expiry`.
pub async fn messages_expire(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default().expiry(Duration::from_secs(1))).await;
    let ch = layer.new_channel("specific").await.expect("new_channel");
    layer.send(&ch, msg(1)).await.expect("send");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    layer.send(&ch, msg(2)).await.expect("send");
    assert_eq!(n_of(&receive(&*layer, &ch).await), 2, "the expired message is gone");
}

/// A group membership ends `group_expiry` after the last `group_add`.
pub async fn group_membership_expires(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default().group_expiry(Duration::from_secs(1))).await;
    let ch = layer.new_channel("specific").await.expect("new_channel");
    layer.group_add("room", &ch).await.expect("group_add");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    layer.group_send("room", msg(1)).await.expect("group_send");
    assert!(receives_nothing(&*layer, &ch).await);
}

/// Bad names are errors, not panics; 99 characters is the longest name.
pub async fn invalid_names_are_errors(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let long_ok = "a".repeat(99);
    let too_long = "a".repeat(100);
    layer.send(&long_ok, msg(1)).await.expect("99 characters is valid");
    assert_eq!(n_of(&receive(&*layer, &long_ok).await), 1);
    layer.group_add(&long_ok, &long_ok).await.expect("99-character group is valid");
    for bad in [too_long.as_str(), "", "has space", "two!bangs!", "é"] {
        assert!(matches!(layer.send(bad, msg(1)).await, Err(SendError::InvalidName(_))), "send {bad:?}");
        assert!(matches!(layer.receive(bad).await, Err(ReceiveError::InvalidName(_))), "receive {bad:?}");
        assert!(matches!(layer.group_add("ok", bad).await, Err(GroupError::InvalidName(_))), "group_add {bad:?}");
        assert!(matches!(layer.group_add(bad, "ok").await, Err(GroupError::InvalidName(_))), "group {bad:?}");
        assert!(matches!(layer.group_send(bad, msg(1)).await, Err(GroupError::InvalidName(_))), "group_send {bad:?}");
        assert!(
            matches!(layer.group_discard(bad, "ok").await, Err(GroupError::InvalidName(_))),
            "group_discard {bad:?}"
        );
    }
    assert!(matches!(layer.group_add("no!bang", "ok").await, Err(GroupError::InvalidName(_))));
}

/// `flush` drops every message and every group.
pub async fn flush_empties_the_layer(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let ch = layer.new_channel("specific").await.expect("new_channel");
    layer.send(&ch, msg(1)).await.expect("send");
    layer.group_add("room", &ch).await.expect("group_add");
    layer.flush().await.expect("flush");
    assert!(receives_nothing(&*layer, &ch).await);
    layer.group_send("room", msg(2)).await.expect("group_send");
    assert!(receives_nothing(&*layer, &ch).await);
}

/// Many concurrent senders lose nothing, and each sender's messages stay in order.
pub async fn concurrent_senders_lose_nothing(factory: &impl LayerFactory) {
    const SENDERS: u32 = 8;
    const EACH: u32 = 50;
    let layer = factory.make(LayerConfig::default().capacity(1000)).await;
    let ch = layer.new_channel("specific").await.expect("new_channel");
    let tasks: Vec<_> = (0..SENDERS)
        .map(|from| {
            let (layer, ch) = (layer.clone(), ch.clone());
            tokio::spawn(async move {
                for n in 0..EACH {
                    layer.send(&ch, msg_from(from, n)).await.expect("send");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("sender");
    }
    let mut next: HashMap<u32, u32> = HashMap::new();
    for _ in 0..SENDERS * EACH {
        let m: TestMessage = receive(&*layer, &ch).await.decode().expect("decode");
        let expected = next.entry(m.from).or_insert(0);
        assert_eq!(m.n, *expected, "sender {} out of order", m.from);
        *expected += 1;
    }
    assert!(receives_nothing(&*layer, &ch).await);
}

/// Many concurrent group senders reach every member with nothing lost.
pub async fn concurrent_group_sends_reach_everyone(factory: &impl LayerFactory) {
    const MEMBERS: usize = 5;
    const SENDS: u32 = 40;
    let layer = factory.make(LayerConfig::default().capacity(1000)).await;
    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        let ch = layer.new_channel("specific").await.expect("new_channel");
        layer.group_add("crowd", &ch).await.expect("group_add");
        members.push(ch);
    }
    let tasks: Vec<_> = (0..4u32)
        .map(|from| {
            let layer = layer.clone();
            tokio::spawn(async move {
                for n in 0..SENDS / 4 {
                    layer.group_send("crowd", msg_from(from, n)).await.expect("group_send");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("sender");
    }
    for ch in &members {
        for _ in 0..SENDS {
            receive(&*layer, ch).await;
        }
        assert!(receives_nothing(&*layer, ch).await);
    }
}

/// `group_send_many` does each send in order and reports on each: a bad name fails only its
/// own send, and a full member is counted per send.
pub async fn group_send_many_keeps_order_and_reports_each(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default().capacity(100).channel_capacity("full-*", 1)).await;
    let (a, b) = (layer.new_channel("specific").await.expect("a"), layer.new_channel("specific").await.expect("b"));
    layer.send("full-worker", msg(0)).await.expect("fill");
    for (group, channel) in [("one", &a), ("one", &b), ("one", &"full-worker".to_owned()), ("two", &a)] {
        layer.group_add(group, channel).await.expect("group_add");
    }
    let sends: Vec<(String, Message)> =
        [("one", 1), ("two", 2), ("bad name", 3), ("one", 4), ("nobody", 5), ("two", 6)]
            .into_iter()
            .map(|(group, n)| (group.to_owned(), msg(n)))
            .collect();
    let reports = layer.group_send_many(&sends).await;
    assert_eq!(reports.len(), sends.len());
    let counts: Vec<Option<(usize, usize)>> =
        reports.iter().map(|r| r.as_ref().ok().map(|r| (r.queued, r.dropped_full))).collect();
    assert_eq!(counts, [Some((2, 1)), Some((1, 0)), None, Some((2, 1)), Some((0, 0)), Some((1, 0))]);
    assert!(matches!(reports[2], Err(GroupError::InvalidName(_))), "{:?}", reports[2]);
    let mut at_a = Vec::new();
    for _ in 0..4 {
        at_a.push(n_of(&receive(&*layer, &a).await));
    }
    assert_eq!(at_a, [1, 2, 4, 6], "in the order given");
    assert_eq!(n_of(&receive(&*layer, &b).await), 1);
    assert_eq!(n_of(&receive(&*layer, &b).await), 4);
    assert!(receives_nothing(&*layer, &b).await);
    assert_eq!(n_of(&receive(&*layer, "full-worker").await), 0);
}

/// A sender's copy of a group message arrives exactly once, whether the layer echoes it
/// (`group_send_echo` true: it is waiting at once) or not; a channel that is not a member gets
/// no echo; the other members get every message, in order.
pub async fn echoed_group_sends_reach_the_sender_once(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let (me, other, outsider) = (
        layer.new_channel("specific").await.expect("me"),
        layer.new_channel("specific").await.expect("other"),
        layer.new_channel("specific").await.expect("outsider"),
    );
    layer.group_add("room", &me).await.expect("group_add");
    layer.group_add("room", &other).await.expect("group_add");
    assert!(!layer.group_send_echo("room", &outsider, &msg(0)), "not a member: no echo");
    assert!(layer.try_receive(&outsider).is_none());

    let sends: Vec<(String, Message)> = (1..=3).map(|n| ("room".to_owned(), msg(n))).collect();
    let echoed: Vec<bool> = sends.iter().map(|(group, message)| layer.group_send_echo(group, &me, message)).collect();
    let mut at_me = Vec::new();
    if !echoed.contains(&false) {
        // Echoed: waiting before the group send itself.
        while let Some(message) = layer.try_receive(&me) {
            at_me.push(n_of(&message));
        }
        assert_eq!(at_me, [1, 2, 3], "echoed copies wait at once, in order");
    } else {
        assert!(!echoed.contains(&true), "a layer echoes a member's sends alike: {echoed:?}");
    }
    let reports = layer.group_send_many_echoed(&sends, &me, echoed.iter().filter(|&&e| e).count()).await;
    let queued: Vec<usize> = reports.iter().map(|r| r.as_ref().expect("sent").queued).collect();
    assert_eq!(queued, [2, 2, 2], "the echoed copy counts as queued");
    while at_me.len() < 3 {
        at_me.push(n_of(&receive(&*layer, &me).await));
    }
    assert_eq!(at_me, [1, 2, 3]);
    assert!(receives_nothing(&*layer, &me).await, "the sender gets each message once");
    for n in 1..=3 {
        assert_eq!(n_of(&receive(&*layer, &other).await), n);
    }
    assert!(receives_nothing(&*layer, &other).await);
}

/// The rule of [`ChannelLayer::group_send_echo`]: a layer that returns true (it put the
/// sender's copy on the sender's channel) must implement
/// [`ChannelLayer::group_send_many_echoed`] so that the batch leaves that copy out, for the
/// first `echoed` sends and no others; the trait's default, `group_send_many`, would deliver it
/// a second time. A layer that does not echo has nothing to check here.
pub async fn an_echoing_layer_leaves_the_echoed_copies_out_of_the_batch(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let (me, other) =
        (layer.new_channel("specific").await.expect("me"), layer.new_channel("specific").await.expect("other"));
    layer.group_add("room", &me).await.expect("group_add");
    layer.group_add("room", &other).await.expect("group_add");
    let sends: Vec<(String, Message)> = (1..=2).map(|n| ("room".to_owned(), msg(n))).collect();
    if !layer.group_send_echo("room", &me, &sends[0].1) {
        return;
    }
    // The first send was echoed, the second was not: the batch brings `me` the second only.
    for report in layer.group_send_many_echoed(&sends, &me, 1).await {
        report.expect("sent");
    }
    let mut at_me = Vec::new();
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(200), layer.receive(&me)).await {
        at_me.push(n_of(&message));
    }
    assert_eq!(
        at_me,
        [1, 2],
        "group_send_echo returned true, so group_send_many_echoed must leave out the sender's copy of the \
         first `echoed` sends, and only theirs (does the layer implement group_send_many_echoed?)"
    );
    for n in 1..=2 {
        assert_eq!(n_of(&receive(&*layer, &other).await), n);
    }
}

/// Consecutive sends to one group in a `group_send_many` fill a member up to its capacity one
/// message at a time, and a member of two groups gets every message in the order given, as
/// from one `group_send` after another.
pub async fn group_send_many_fills_members_message_by_message(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default().capacity(100).channel_capacity("small-*", 3)).await;
    let roomy = layer.new_channel("specific").await.expect("new_channel");
    for (group, channel) in [("g", "small-worker"), ("h", "small-worker"), ("g", roomy.as_str())] {
        layer.group_add(group, channel).await.expect("group_add");
    }
    let sends: Vec<(String, Message)> =
        [("g", 1), ("g", 2), ("g", 3), ("h", 4), ("g", 5)].into_iter().map(|(g, n)| (g.to_owned(), msg(n))).collect();
    let reports = layer.group_send_many(&sends).await;
    let counts: Vec<(usize, usize)> =
        reports.iter().map(|r| r.as_ref().map(|r| (r.queued, r.dropped_full)).expect("valid names")).collect();
    assert_eq!(counts, [(2, 0), (2, 0), (2, 0), (0, 1), (1, 1)]);
    let mut small = Vec::new();
    for _ in 0..3 {
        small.push(n_of(&receive(&*layer, "small-worker").await));
    }
    assert_eq!(small, [1, 2, 3], "filled up to its capacity, the rest dropped");
    let mut at_roomy = Vec::new();
    for _ in 0..4 {
        at_roomy.push(n_of(&receive(&*layer, &roomy).await));
    }
    assert_eq!(at_roomy, [1, 2, 3, 5]);
    assert!(receives_nothing(&*layer, "small-worker").await);
    assert!(receives_nothing(&*layer, &roomy).await);
}

/// `try_receive` takes a waiting message at once, in order, and returns `None` when nothing
/// waits; what it took is not received again.
pub async fn try_receive_takes_only_what_is_waiting(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let ch = layer.new_channel("specific").await.expect("new_channel");
    assert!(layer.try_receive(&ch).is_none(), "nothing waits yet");
    layer.send(&ch, msg(1)).await.expect("send");
    layer.send(&ch, msg(2)).await.expect("send");
    assert_eq!(n_of(&receive(&*layer, &ch).await), 1);
    // A backend may deliver asynchronously: the second message may still be on its way.
    let deadline = tokio::time::Instant::now() + WAIT;
    let second = loop {
        if let Some(message) = layer.try_receive(&ch) {
            break message;
        }
        assert!(tokio::time::Instant::now() < deadline, "the second message never became waiting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(n_of(&second), 2);
    assert!(layer.try_receive(&ch).is_none(), "drained");
    assert!(receives_nothing(&*layer, &ch).await, "what try_receive took is gone");
}

/// Two receivers waiting on one channel get the two messages sent to it, one each: a backend
/// that wakes a receiver only when a channel stops being empty must wake the next one when
/// the first leaves a message behind. (The receivers run on this thread, so neither runs
/// between the two sends where the layer does not make the sender wait.)
pub async fn every_waiting_receiver_is_served(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let ch = layer.new_channel("specific").await.expect("new_channel");
    let local = tokio::task::LocalSet::new();
    let mut got = local
        .run_until(async {
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    let (layer, ch) = (layer.clone(), ch.clone());
                    tokio::task::spawn_local(async move { n_of(&receive(&*layer, &ch).await) })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(50)).await;
            layer.send(&ch, msg(1)).await.expect("send");
            layer.send(&ch, msg(2)).await.expect("send");
            let mut got = Vec::new();
            for waiter in waiters {
                got.push(waiter.await.expect("each waiter gets a message"));
            }
            got
        })
        .await;
    got.sort_unstable();
    assert_eq!(got, [1, 2]);
}

/// A [`ChannelReceiver`]'s `receive` is cancel-safe, as the trait says: one dropped before it
/// returns loses no message, whether it was still waiting or had the message in hand (a
/// backend that overrides [`ChannelLayer::receiver`] must keep that).
pub async fn a_receivers_receive_is_cancel_safe(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let ch = layer.new_channel("specific").await.expect("new_channel");
    let receiver = layer.clone().receiver(ch.as_str().into());
    assert!(tokio::time::timeout(Duration::from_millis(50), receiver.receive()).await.is_err(), "nothing waits");
    for n in 1..=2 {
        layer.send(&ch, msg(n)).await.expect("send");
    }
    // Dropped after a moment: by then it may have the first message in hand.
    let taken = match tokio::time::timeout(Duration::from_millis(5), receiver.receive()).await {
        Ok(first) => vec![n_of(&first.expect("receive"))],
        Err(_) => Vec::new(),
    };
    let mut got = taken;
    while got.len() < 2 {
        match tokio::time::timeout(WAIT, receiver.receive()).await {
            Ok(message) => got.push(n_of(&message.expect("receive"))),
            Err(_) => panic!("a message was lost to a receive that was dropped: got only {got:?}"),
        }
    }
    assert_eq!(got, [1, 2]);
}

/// A channel's [`ChannelLayer::receiver`] sees what the layer's own `receive` and
/// `try_receive` on that channel would: the messages in order, nothing when nothing waits, a
/// send made while it waits.
pub async fn a_receiver_receives_like_the_layer(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let ch = layer.new_channel("specific").await.expect("new_channel");
    let receiver = layer.clone().receiver(ch.as_str().into());
    assert!(receiver.try_receive().is_none(), "nothing waits yet");
    for n in 0..3 {
        layer.send(&ch, msg(n)).await.expect("send");
    }
    let first = tokio::time::timeout(WAIT, receiver.receive()).await.expect("a message arrives");
    assert_eq!(n_of(&first.expect("receive")), 0);
    // A backend may deliver asynchronously: the others may still be on their way.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut rest = Vec::new();
    while rest.len() < 2 {
        match receiver.try_receive() {
            Some(message) => rest.push(n_of(&message)),
            None => {
                assert!(tokio::time::Instant::now() < deadline, "the other messages never became waiting");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert_eq!(rest, [1, 2]);
    assert!(receiver.try_receive().is_none(), "drained");
    let (_, later) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            layer.send(&ch, msg(9)).await.expect("send");
        },
        tokio::time::timeout(WAIT, receiver.receive())
    );
    assert_eq!(n_of(&later.expect("the later send arrives").expect("receive")), 9);
    layer.send(&ch, msg(10)).await.expect("send");
    assert_eq!(n_of(&receive(&*layer, &ch).await), 10, "the layer and the receiver share one channel");
}

/// Calls `try_receive_many` (at most `max` each time, never past `len`) until `into` holds
/// `len` messages: a backend may deliver asynchronously.
async fn take_until(receiver: &dyn ChannelReceiver, len: usize, max: usize, into: &mut Vec<Message>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        receiver.try_receive_many(max.min(len.saturating_sub(into.len())), into);
        if into.len() >= len {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} of {len} messages became waiting", into.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`ChannelReceiver::try_receive_many`] takes at most `max` waiting messages at once, in
/// order, appending them, and takes nothing when nothing waits.
///
/// [`ChannelReceiver::try_receive_many`]: crate::layer::ChannelReceiver::try_receive_many
pub async fn a_receiver_takes_a_burst_at_once(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default()).await;
    let ch = layer.new_channel("specific").await.expect("new_channel");
    let receiver = layer.clone().receiver(ch.as_str().into());
    let mut taken = Vec::new();
    receiver.try_receive_many(8, &mut taken);
    assert!(taken.is_empty(), "nothing waits yet");
    for n in 0..5 {
        layer.send(&ch, msg(n)).await.expect("send");
    }
    taken.push(msg(100));
    take_until(&*receiver, 3, 2, &mut taken).await;
    let ns: Vec<u32> = taken.iter().map(n_of).collect();
    assert_eq!(ns, [100, 0, 1], "appended, in order, at most `max`");
    let mut rest = Vec::new();
    receiver.try_receive_many(0, &mut rest);
    assert!(rest.is_empty(), "max 0 takes nothing");
    take_until(&*receiver, 3, 10, &mut rest).await;
    assert_eq!(rest.iter().map(n_of).collect::<Vec<_>>(), [2, 3, 4]);
    receiver.try_receive_many(usize::MAX, &mut rest);
    assert_eq!(rest.len(), 3, "drained");
    assert!(receives_nothing(&*layer, &ch).await, "what it took is gone");
}

/// A burst taken with [`ChannelReceiver::try_receive_many`] leaves out what expired while it
/// waited.
///
/// [`ChannelReceiver::try_receive_many`]: crate::layer::ChannelReceiver::try_receive_many
pub async fn a_burst_leaves_out_what_expired(factory: &impl LayerFactory) {
    let layer = factory.make(LayerConfig::default().expiry(Duration::from_secs(1))).await;
    let ch = layer.new_channel("specific").await.expect("new_channel");
    let receiver = layer.clone().receiver(ch.as_str().into());
    layer.send(&ch, msg(90)).await.expect("send");
    layer.send(&ch, msg(91)).await.expect("send");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in 0..2 {
        layer.send(&ch, msg(n)).await.expect("send");
    }
    let mut taken = Vec::new();
    take_until(&*receiver, 2, 10, &mut taken).await;
    assert_eq!(taken.iter().map(n_of).collect::<Vec<_>>(), [0, 1], "the expired ones are left out");
}

/// Generates one `#[tokio::test]` per semantics check for a layer factory.
#[macro_export]
macro_rules! layer_conformance_tests {
    ($factory:expr) => {
        $crate::layer_conformance_tests!(@tests $factory;
            send_then_receive_is_fifo,
            receive_waits_for_a_later_send,
            receive_is_cancel_safe,
            named_channels_work,
            a_receiver_on_a_named_channel_receives_what_is_sent_there,
            new_channel_names_are_unique_and_valid,
            group_send_reaches_every_member,
            group_add_is_idempotent_and_discard_stops_delivery,
            group_discard_many_removes_just_the_memberships_named,
            group_send_to_an_empty_group_is_fine,
            send_to_a_full_channel_is_channel_full,
            group_send_drops_for_full_members_and_counts,
            channel_capacity_patterns_apply,
            messages_expire,
            group_membership_expires,
            invalid_names_are_errors,
            flush_empties_the_layer,
            concurrent_senders_lose_nothing,
            concurrent_group_sends_reach_everyone,
            group_send_many_keeps_order_and_reports_each,
            group_send_many_fills_members_message_by_message,
            echoed_group_sends_reach_the_sender_once,
            an_echoing_layer_leaves_the_echoed_copies_out_of_the_batch,
            try_receive_takes_only_what_is_waiting,
            every_waiting_receiver_is_served,
            a_receiver_receives_like_the_layer,
            a_receivers_receive_is_cancel_safe,
            a_receiver_takes_a_burst_at_once,
            a_burst_leaves_out_what_expired,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $crate::testing::layer_suite::$name(&$factory).await;
        }
    )*};
}

#[cfg(test)]
mod tests {
    //! The checks of the trait's rules, against small layers that keep them and that break them.

    use std::collections::{HashMap, VecDeque};
    use std::panic::AssertUnwindSafe;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use futures_util::FutureExt;

    use super::*;
    use crate::layer::{FlushError, GroupSendReport, NewChannelError};

    /// A layer of plain maps, for checking the checks: it echoes a member's group sends and
    /// leaves the echoed copies out of `group_send_many_echoed`, as the rule asks (unless
    /// `ignores_the_echoed_count`: then it leaves the sender out of every send of a batch that
    /// had any echoed).
    ///
    /// Its receivers receive by name, and if `receivers_lose_on_cancel`, hold a message they
    /// took for a moment before they return it: one dropped then loses it.
    #[derive(Default)]
    struct Maps {
        ignores_the_echoed_count: bool,
        receivers_lose_on_cancel: bool,
        config: LayerConfig,
        queues: Mutex<HashMap<String, VecDeque<Message>>>,
        groups: Mutex<HashMap<String, Vec<String>>>,
        made: AtomicUsize,
    }

    impl Maps {
        fn push(&self, channel: &str, message: Message) {
            self.queues.lock().expect("queues").entry(channel.to_owned()).or_default().push_back(message);
        }

        fn members(&self, group: &str) -> Vec<String> {
            self.groups.lock().expect("groups").get(group).cloned().unwrap_or_default()
        }
    }

    #[async_trait]
    impl ChannelLayer for Maps {
        async fn new_channel(&self, prefix: &str) -> Result<String, NewChannelError> {
            Ok(format!("{prefix}.maps!{}", self.made.fetch_add(1, Ordering::Relaxed)))
        }

        async fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
            self.push(channel, message);
            Ok(())
        }

        async fn receive(&self, channel: &str) -> Result<Message, ReceiveError> {
            loop {
                if let Some(message) = self.try_receive(channel) {
                    return Ok(message);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }

        fn try_receive(&self, channel: &str) -> Option<Message> {
            self.queues.lock().expect("queues").get_mut(channel)?.pop_front()
        }

        fn receiver(self: Arc<Self>, channel: Arc<str>) -> Box<dyn ChannelReceiver> {
            Box::new(MapsReceiver { layer: self, channel })
        }

        async fn group_add(&self, group: &str, channel: &str) -> Result<(), GroupError> {
            let mut groups = self.groups.lock().expect("groups");
            let members = groups.entry(group.to_owned()).or_default();
            if !members.iter().any(|member| member == channel) {
                members.push(channel.to_owned());
            }
            Ok(())
        }

        async fn group_discard(&self, group: &str, channel: &str) -> Result<(), GroupError> {
            self.groups.lock().expect("groups").entry(group.to_owned()).or_default().retain(|member| member != channel);
            Ok(())
        }

        async fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, GroupError> {
            let members = self.members(group);
            for member in &members {
                self.push(member, message.clone());
            }
            Ok(GroupSendReport::new(members.len(), 0))
        }

        fn group_send_echo(&self, group: &str, channel: &str, message: &Message) -> bool {
            let member = self.members(group).iter().any(|member| member == channel);
            if member {
                self.push(channel, message.clone());
            }
            member
        }

        async fn group_send_many_echoed(
            &self,
            sends: &[(String, Message)],
            channel: &str,
            echoed: usize,
        ) -> Vec<Result<GroupSendReport, GroupError>> {
            let mut reports = Vec::new();
            for (i, (group, message)) in sends.iter().enumerate() {
                let members = self.members(group);
                let left_out = if self.ignores_the_echoed_count { echoed > 0 } else { i < echoed };
                for member in members.iter().filter(|&member| !left_out || member != channel) {
                    self.push(member, message.clone());
                }
                reports.push(Ok(GroupSendReport::new(members.len(), 0)));
            }
            reports
        }

        async fn flush(&self) -> Result<(), FlushError> {
            self.queues.lock().expect("queues").clear();
            self.groups.lock().expect("groups").clear();
            Ok(())
        }

        fn config(&self) -> &LayerConfig {
            &self.config
        }
    }

    /// A receiver of [`Maps`].
    struct MapsReceiver {
        layer: Arc<Maps>,
        channel: Arc<str>,
    }

    impl ChannelReceiver for MapsReceiver {
        fn receive(&self) -> futures_util::future::BoxFuture<'_, Result<Message, ReceiveError>> {
            Box::pin(async move {
                let message = self.layer.receive(&self.channel).await?;
                if self.layer.receivers_lose_on_cancel {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(message)
            })
        }

        fn try_receive(&self) -> Option<Message> {
            self.layer.try_receive(&self.channel)
        }
    }

    /// [`Maps`] against the rule: it echoes, but leaves `group_send_many_echoed` to the trait's
    /// default.
    #[derive(Default)]
    struct EchoesWithoutLeavingOut(Maps);

    #[async_trait]
    impl ChannelLayer for EchoesWithoutLeavingOut {
        async fn new_channel(&self, prefix: &str) -> Result<String, NewChannelError> {
            self.0.new_channel(prefix).await
        }

        async fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
            self.0.send(channel, message).await
        }

        async fn receive(&self, channel: &str) -> Result<Message, ReceiveError> {
            self.0.receive(channel).await
        }

        fn try_receive(&self, channel: &str) -> Option<Message> {
            self.0.try_receive(channel)
        }

        async fn group_add(&self, group: &str, channel: &str) -> Result<(), GroupError> {
            self.0.group_add(group, channel).await
        }

        async fn group_discard(&self, group: &str, channel: &str) -> Result<(), GroupError> {
            self.0.group_discard(group, channel).await
        }

        async fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, GroupError> {
            self.0.group_send(group, message).await
        }

        fn group_send_echo(&self, group: &str, channel: &str, message: &Message) -> bool {
            self.0.group_send_echo(group, channel, message)
        }

        async fn flush(&self) -> Result<(), FlushError> {
            self.0.flush().await
        }

        fn config(&self) -> &LayerConfig {
            self.0.config()
        }
    }

    /// Whether `check` panics.
    async fn fails<F: Future<Output = ()>>(check: F) -> bool {
        AssertUnwindSafe(check).catch_unwind().await.is_err()
    }

    async fn maps(_: LayerConfig) -> Arc<dyn ChannelLayer> {
        Arc::new(Maps::default())
    }

    async fn echoes_without_leaving_out(_: LayerConfig) -> Arc<dyn ChannelLayer> {
        Arc::new(EchoesWithoutLeavingOut::default())
    }

    async fn ignores_the_echoed_count(_: LayerConfig) -> Arc<dyn ChannelLayer> {
        Arc::new(Maps { ignores_the_echoed_count: true, ..Maps::default() })
    }

    #[tokio::test]
    async fn the_echo_checks_pass_for_a_layer_that_leaves_echoed_copies_out() {
        assert!(!fails(an_echoing_layer_leaves_the_echoed_copies_out_of_the_batch(&maps)).await);
        assert!(!fails(echoed_group_sends_reach_the_sender_once(&maps)).await);
    }

    #[tokio::test]
    async fn the_echo_checks_fail_for_a_layer_that_echoes_without_group_send_many_echoed() {
        let factory = echoes_without_leaving_out;
        assert!(fails(an_echoing_layer_leaves_the_echoed_copies_out_of_the_batch(&factory)).await);
        assert!(fails(echoed_group_sends_reach_the_sender_once(&factory)).await);
    }

    #[tokio::test]
    async fn the_batch_check_fails_for_a_layer_that_leaves_the_sender_out_of_sends_it_did_not_echo() {
        let factory = ignores_the_echoed_count;
        assert!(fails(an_echoing_layer_leaves_the_echoed_copies_out_of_the_batch(&factory)).await);
        assert!(
            !fails(echoed_group_sends_reach_the_sender_once(&factory)).await,
            "a batch echoed whole does not tell the two apart"
        );
    }

    #[tokio::test]
    async fn the_receiver_check_passes_for_a_receiver_that_keeps_what_it_took_when_dropped() {
        assert!(!fails(a_receivers_receive_is_cancel_safe(&maps)).await);
    }

    #[tokio::test]
    async fn the_receiver_check_fails_for_a_receiver_that_loses_what_it_took_when_dropped() {
        let factory = |_: LayerConfig| async {
            Arc::new(Maps { receivers_lose_on_cancel: true, ..Maps::default() }) as Arc<dyn ChannelLayer>
        };
        assert!(fails(a_receivers_receive_is_cancel_safe(&factory)).await);
    }
}
