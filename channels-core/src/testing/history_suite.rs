//! The history and recovery semantics suite, written once and run against every backend that
//! keeps history (see [`History`]).
//!
//! A backend's tests call [`history_conformance_tests!`](crate::history_conformance_tests) with
//! the same kind of factory as the layer suite (a fresh layer on a fresh backend per check):
//!
//! ```ignore
//! channels_core::history_conformance_tests!(|config: LayerConfig| async move {
//!     std::sync::Arc::new(MyLayer::new(config)) as std::sync::Arc<dyn ChannelLayer>
//! });
//! ```

use std::sync::Arc;
use std::time::Duration;

use super::layer_suite::LayerFactory;
use crate::layer::{ChannelLayer, History, HistoryOptions, LayerConfig, Message, StreamPosition, position_of};

/// Long enough for a delivery on a busy machine.
const PATIENCE: Duration = Duration::from_secs(10);

fn msg(n: u64) -> Message {
    Message::new(&serde_json::json!({"type": "chat.message", "n": n})).expect("a message")
}

fn n_of(message: &Message) -> u64 {
    let v: serde_json::Value = message.decode().expect("decodes");
    v["n"].as_u64().expect("an n")
}

async fn layer<F: LayerFactory>(factory: &F) -> Arc<dyn ChannelLayer> {
    factory.make(LayerConfig { capacity: 10_000, ..LayerConfig::default() }).await
}

fn history(layer: &Arc<dyn ChannelLayer>, size: usize, window: Duration) -> History {
    History::new(layer.clone(), HistoryOptions::new(size, window)).expect("the layer keeps history")
}

async fn receive(layer: &dyn ChannelLayer, channel: &str) -> Message {
    tokio::time::timeout(PATIENCE, layer.receive(channel)).await.expect("a message in time").expect("receive")
}

/// Offsets grow by one per group from 1, in one epoch, and every member gets the message with
/// its position.
pub async fn positions_are_monotonic_per_group<F: LayerFactory>(factory: &F) {
    let layer = layer(factory).await;
    let h = history(&layer, 100, Duration::from_secs(60));
    let member = layer.new_channel("specific").await.expect("a channel");
    layer.group_add("one", &member).await.expect("join");
    let start = h.position("one").await.expect("position");
    assert_eq!(start.offset, 0);
    let mut ones = Vec::new();
    let mut twos = Vec::new();
    for n in 1..=20 {
        ones.push(h.group_send("one", msg(n)).await.expect("send"));
        if n % 4 == 0 {
            twos.push(h.group_send("two", msg(n)).await.expect("send").offset);
        }
    }
    assert!(ones.iter().all(|p| p.epoch == start.epoch), "{ones:?} not all of epoch {start}");
    assert_eq!(ones.iter().map(|p| p.offset).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
    assert_eq!(twos, (1..=5).collect::<Vec<_>>());
    for (n, sent) in (1..=20).zip(&ones) {
        let got = receive(&*layer, &member).await;
        assert_eq!((n_of(&got), position_of(&got).as_ref()), (n, Some(sent)));
    }
    assert_eq!(h.position("one").await.expect("position"), ones[19]);
}

/// Recovery from a position returns exactly the messages after it, in order, with their
/// positions; from the current position, nothing.
pub async fn recovery_returns_exactly_the_missed_messages<F: LayerFactory>(factory: &F) {
    let layer = layer(factory).await;
    let h = history(&layer, 100, Duration::from_secs(60));
    let start = h.position("room").await.expect("position");
    let mut sent = Vec::new();
    for n in 1..=10 {
        sent.push(h.group_send("room", msg(n)).await.expect("send"));
    }
    let r = h.recover("room", &sent[3]).await.expect("recover");
    assert!(r.recovered);
    assert_eq!(r.messages.iter().map(n_of).collect::<Vec<_>>(), (5..=10).collect::<Vec<_>>());
    let positions: Vec<_> = r.messages.iter().map(|m| position_of(m).expect("a position")).collect();
    assert_eq!(positions, sent[4..]);
    assert_eq!(r.position, sent[9]);
    let all = h.recover("room", &start).await.expect("recover");
    assert!(all.recovered);
    assert_eq!(all.messages.len(), 10);
    let none = h.recover("room", &sent[9]).await.expect("recover");
    assert!(none.recovered && none.messages.is_empty());
}

/// A position older than the history's size or window, of another epoch, or ahead of the
/// history is not recovered; the history still answers for the positions it has.
pub async fn a_position_that_is_gone_is_not_recovered<F: LayerFactory>(factory: &F) {
    let layer = layer(factory).await;
    let h = history(&layer, 5, Duration::from_secs(60));
    let mut sent = Vec::new();
    for n in 1..=10 {
        sent.push(h.group_send("room", msg(n)).await.expect("send"));
    }
    let old = h.recover("room", &sent[1]).await.expect("recover");
    assert!(!old.recovered && old.messages.is_empty(), "offset 2 is past a size of 5");
    assert_eq!(old.position, sent[9]);
    let edge = h.recover("room", &sent[4]).await.expect("recover");
    assert!(edge.recovered);
    assert_eq!(edge.messages.iter().map(n_of).collect::<Vec<_>>(), (6..=10).collect::<Vec<_>>());
    let other = StreamPosition::new(format!("{}x", sent[0].epoch), 9);
    assert!(!h.recover("room", &other).await.expect("recover").recovered, "another epoch");
    let ahead = StreamPosition::new(sent[0].epoch.clone(), 11);
    assert!(!h.recover("room", &ahead).await.expect("recover").recovered, "ahead of the history");

    let short = history(&layer, 100, Duration::from_secs(1));
    let first = short.group_send("brief", msg(1)).await.expect("send");
    short.group_send("brief", msg(2)).await.expect("send");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = short.recover("brief", &first).await.expect("recover");
    assert!(!expired.recovered, "a message older than the window is gone");
    let top = short.position("brief").await.expect("position");
    assert_eq!(top.offset, 2);
    assert!(short.recover("brief", &top).await.expect("recover").recovered, "nothing missed");
}

/// Flushing the layer loses the history: a new epoch, offsets from 1, old positions not
/// recovered.
pub async fn a_flush_starts_a_new_epoch<F: LayerFactory>(factory: &F) {
    let layer = layer(factory).await;
    let h = history(&layer, 100, Duration::from_secs(60));
    h.group_send("room", msg(1)).await.expect("send");
    let before = h.group_send("room", msg(2)).await.expect("send");
    layer.flush().await.expect("flush");
    let r = h.recover("room", &before).await.expect("recover");
    assert!(!r.recovered);
    assert_ne!(r.position.epoch, before.epoch);
    let after = h.group_send("room", msg(3)).await.expect("send");
    assert_ne!(after.epoch, before.epoch);
    assert_eq!(after.offset, 1);
}

/// Many senders send while a client recovers: the recovered messages followed by the live
/// ones that pass the filter are every message after the client's position, in offset order,
/// once each.
pub async fn no_gap_and_no_duplicate_while_senders_send<F: LayerFactory>(factory: &F) {
    const SENDERS: u64 = 8;
    const EACH: u64 = 60;
    let layer = layer(factory).await;
    let h = Arc::new(history(&layer, 1000, Duration::from_secs(60)));
    for n in 0..20 {
        h.group_send("room", msg(n)).await.expect("send");
    }
    let seen = h.position("room").await.expect("position");
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                h.group_send("room", msg(1000 * (s + 1) + i)).await.expect("send");
                if i % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    // Come back while the senders are sending: join, recover, then the live stream.
    while h.position("room").await.expect("position").offset < seen.offset + SENDERS * EACH / 4 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let me = layer.new_channel("specific").await.expect("a channel");
    layer.group_add("room", &me).await.expect("join");
    let recovery = h.recover("room", &seen).await.expect("recover");
    assert!(recovery.recovered);
    assert!(!recovery.messages.is_empty(), "the senders had sent some already");
    let filter = recovery.live_filter();
    let mut offsets: Vec<u64> = recovery.messages.iter().map(|m| position_of(m).expect("a position").offset).collect();
    let last = seen.offset + SENDERS * EACH;
    while offsets.last().copied() < Some(last) {
        let m = receive(&*layer, &me).await;
        if filter.admit(&m) {
            offsets.push(position_of(&m).expect("a position").offset);
        }
    }
    for t in tasks {
        t.await.expect("a sender");
    }
    assert_eq!(offsets, (seen.offset + 1..=last).collect::<Vec<_>>(), "a gap or a duplicate");
    let nothing_more = tokio::time::timeout(Duration::from_millis(200), layer.receive(&me)).await;
    assert!(nothing_more.is_err(), "a message after the last: {nothing_more:?}");
}

/// Through a [`HistoryLayer`](crate::layer::HistoryLayer), batches of group sends from
/// several tasks are stamped and delivered in offset order, the groups it does not keep are
/// sent as they are, and recovery returns them all.
pub async fn a_history_layer_stamps_batches_in_order<F: LayerFactory>(factory: &F) {
    use crate::layer::HistoryLayer;
    let inner = layer(factory).await;
    let wrapped =
        HistoryLayer::wrap(inner, HistoryOptions::new(1000, Duration::from_secs(60)), |g| g.starts_with("kept"))
            .expect("the layer keeps history");
    let history = wrapped.history();
    let layer: Arc<dyn ChannelLayer> = Arc::new(wrapped);
    let start = history.position("kept").await.expect("position");
    let member = layer.new_channel("specific").await.expect("a channel");
    layer.group_add("kept", &member).await.expect("join");
    layer.group_add("plain", &member).await.expect("join");
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let layer = layer.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..10u64 {
                let batch: Vec<(String, Message)> =
                    (0..5).map(|i| ("kept".to_owned(), msg(t * 1000 + b * 10 + i))).collect();
                for report in layer.group_send_many(&batch).await {
                    report.expect("a send");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a sender");
    }
    layer.group_send("plain", msg(7)).await.expect("send");
    let mut offsets = Vec::new();
    for _ in 0..200 {
        let m = receive(&*layer, &member).await;
        offsets.push(position_of(&m).expect("a position").offset);
    }
    assert_eq!(offsets, (1..=200).collect::<Vec<_>>());
    let plain = receive(&*layer, &member).await;
    assert_eq!((n_of(&plain), position_of(&plain)), (7, None));
    let r = history.recover("kept", &start).await.expect("recover");
    assert!(r.recovered);
    assert_eq!(r.messages.len(), 200);
}

/// A message sent again with the same key (a client resending what it could not confirm) is
/// stored and delivered once, also when the two sends race, through [`History`] and through a
/// deduplicating [`HistoryLayer`](crate::layer::HistoryLayer).
pub async fn a_resend_with_the_same_key_is_stored_once<F: LayerFactory>(factory: &F) {
    use crate::layer::HistoryLayer;
    let inner = layer(factory).await;
    let h = Arc::new(history(&inner, 100, Duration::from_secs(60)));
    let member = inner.new_channel("specific").await.expect("a channel");
    inner.group_add("room", &member).await.expect("join");
    let (first, new) = h.group_send_once("room", "k1", msg(1)).await.expect("send");
    assert!(new);
    let (again, new) = h.group_send_once("room", "k1", msg(1)).await.expect("send");
    assert_eq!((again, new), (first.clone(), false));
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.group_send_once("room", "k2", msg(2)).await.expect("send") })
        })
        .collect();
    let mut stored = 0;
    for r in racers {
        stored += usize::from(r.await.expect("a racer").1);
    }
    assert_eq!(stored, 1);
    #[derive(serde::Deserialize)]
    struct Key {
        n: u64,
    }
    let wrapped = HistoryLayer::wrap(inner.clone(), HistoryOptions::new(100, Duration::from_secs(60)), |_| true)
        .expect("the layer keeps history")
        .dedupe_by(|_, m| Some(format!("n{}", m.decode::<Key>().ok()?.n)));
    let batch: Vec<(String, Message)> = [3, 3, 1, 4].iter().map(|n| ("room".to_owned(), msg(*n))).collect();
    for report in wrapped.group_send_many(&batch).await {
        report.expect("a send");
    }
    // k1 and k2 were other keys: n1 is new to the layer's keys.
    let mut got = Vec::new();
    for _ in 0..5 {
        let m = receive(&*inner, &member).await;
        got.push((n_of(&m), position_of(&m).expect("a position").offset));
    }
    assert_eq!(got, vec![(1, 1), (2, 2), (3, 3), (1, 4), (4, 5)]);
    let nothing_more = tokio::time::timeout(Duration::from_millis(200), inner.receive(&member)).await;
    assert!(nothing_more.is_err(), "a resend was delivered: {nothing_more:?}");
}

/// A [`StreamCursor`](crate::layer::StreamCursor) delivers each message once and in order: a
/// message stored but never sent (its process died in between) is filled in from the history
/// when the next one arrives, and what was delivered already is dropped.
pub async fn a_cursor_fills_a_gap_from_the_history<F: LayerFactory>(factory: &F) {
    use crate::layer::{Admit, StreamCursor};
    let layer = layer(factory).await;
    let h = history(&layer, 100, Duration::from_secs(60));
    let store = layer.history_store().expect("the layer keeps history");
    let member = layer.new_channel("specific").await.expect("a channel");
    layer.group_add("room", &member).await.expect("join");
    let mut cursor = StreamCursor::at(h.position("room").await.expect("position"));
    h.group_send("room", msg(1)).await.expect("send");
    store.append("room", &msg(2), h.options()).await.expect("stored, never sent");
    h.group_send("room", msg(3)).await.expect("send");
    let one = receive(&*layer, &member).await;
    assert_eq!(cursor.admit(&one), Admit::Deliver);
    let three = receive(&*layer, &member).await;
    assert_eq!(cursor.admit(&three), Admit::Gap);
    let filled = cursor.fill(&h, "room", &three).await;
    assert!(filled.complete);
    let offsets: Vec<u64> = filled.messages.iter().map(|m| position_of(m).expect("a position").offset).collect();
    assert_eq!((offsets, filled.messages.iter().map(n_of).collect::<Vec<_>>()), (vec![2, 3], vec![2, 3]));
    assert_eq!(cursor.admit(&three), Admit::Duplicate);
    assert_eq!(cursor.position().map(|p| p.offset), Some(3));
}

/// Generates one `#[tokio::test]` per history check for a layer factory.
#[macro_export]
macro_rules! history_conformance_tests {
    ($factory:expr) => {
        $crate::history_conformance_tests!(@tests $factory;
            positions_are_monotonic_per_group,
            recovery_returns_exactly_the_missed_messages,
            a_position_that_is_gone_is_not_recovered,
            a_flush_starts_a_new_epoch,
            no_gap_and_no_duplicate_while_senders_send,
            a_history_layer_stamps_batches_in_order,
            a_resend_with_the_same_key_is_stored_once,
            a_cursor_fills_a_gap_from_the_history,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $crate::testing::history_suite::$name(&$factory).await;
        }
    )*};
}
