//! The presence semantics suite, written once and run against every backend.
//!
//! A backend's tests call [`presence_conformance_tests!`](crate::presence_conformance_tests)
//! with a factory that returns two layers on one fresh backend, as two processes of one
//! deployment would have (a backend for one process returns the same layer twice):
//!
//! ```ignore
//! channels_core::presence_conformance_tests!(|| async {
//!     let layer = std::sync::Arc::new(MyLayer::new(Default::default())) as std::sync::Arc<dyn ChannelLayer>;
//!     (layer.clone(), layer)
//! });
//! ```
//!
//! Checks that need two processes run only where the layer has a presence store.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::layer::{ChannelLayer, Message};
use crate::presence::{Presence, PresenceConfig, PresenceError};

/// Builds two layers on one fresh backend for one check.
pub trait PresenceFactory {
    /// The two layers (the same one twice for a backend that serves one process).
    fn make(&self) -> impl Future<Output = (Arc<dyn ChannelLayer>, Arc<dyn ChannelLayer>)>;
}

impl<F, Fut> PresenceFactory for F
where
    F: Fn() -> Fut,
    Fut: Future<Output = (Arc<dyn ChannelLayer>, Arc<dyn ChannelLayer>)>,
{
    fn make(&self) -> impl Future<Output = (Arc<dyn ChannelLayer>, Arc<dyn ChannelLayer>)> {
        self()
    }
}

/// Long enough for a round and a layer's delivery on a busy machine.
const PATIENCE: Duration = Duration::from_secs(10);

fn config(interval_ms: u64) -> PresenceConfig {
    PresenceConfig::default().interval(Duration::from_millis(interval_ms))
}

/// What a watcher knows: each key's references, from a state and the diffs after it.
#[derive(Debug, Default)]
struct View {
    keys: BTreeMap<String, BTreeSet<String>>,
    states: usize,
    diffs: usize,
}

impl View {
    /// Applies a `presence.state` or `presence.diff` message.
    fn apply(&mut self, message: &Message) {
        let value: serde_json::Value = message.decode().expect("presence messages decode");
        let refs = |v: &serde_json::Value| -> Vec<(String, String)> {
            let mut out = Vec::new();
            for (key, metas) in v.as_object().into_iter().flatten() {
                for meta in metas["metas"].as_array().into_iter().flatten() {
                    out.push((key.clone(), meta["presence_ref"].as_str().expect("a ref").to_owned()));
                }
            }
            out
        };
        match message.message_type() {
            "presence.state" => {
                self.states += 1;
                self.keys.clear();
                for (key, r) in refs(&value["state"]) {
                    self.keys.entry(key).or_default().insert(r);
                }
            }
            "presence.diff" => {
                self.diffs += 1;
                for (key, r) in refs(&value["leaves"]) {
                    if let Some(set) = self.keys.get_mut(&key) {
                        set.remove(&r);
                        if set.is_empty() {
                            self.keys.remove(&key);
                        }
                    }
                }
                for (key, r) in refs(&value["joins"]) {
                    self.keys.entry(key).or_default().insert(r);
                }
            }
            other => panic!("unexpected message type {other}"),
        }
    }

    fn counts(&self) -> BTreeMap<String, usize> {
        self.keys.iter().map(|(k, v)| (k.clone(), v.len())).collect()
    }

    /// Receives on `channel` until the view's counts are `expected` (or panics after a while).
    async fn until(&mut self, layer: &dyn ChannelLayer, channel: &str, expected: &BTreeMap<String, usize>) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.counts() != *expected {
            match tokio::time::timeout_at(deadline, layer.receive(channel)).await {
                Ok(Ok(message)) => self.apply(&message),
                Ok(Err(e)) => panic!("receive failed: {e}"),
                Err(_) => panic!("view {:?} never became {expected:?}", self.counts()),
            }
        }
    }
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

fn list_counts(presences: &crate::presence::Presences) -> BTreeMap<String, usize> {
    presences.iter().map(|(k, metas)| (k.to_owned(), metas.len())).collect()
}

/// Tracked keys are listed, a key with several connections once with several metas; metas
/// come back as tracked, with a reference each.
pub async fn track_and_list<F: PresenceFactory>(factory: &F) {
    let (layer, _) = factory.make().await;
    let presence = Presence::with_config(layer.clone(), config(20));
    let a = layer.new_channel("specific").await.expect("a channel");
    let b = layer.new_channel("specific").await.expect("a channel");
    let c = layer.new_channel("specific").await.expect("a channel");
    presence.track("room", &a, "alice", serde_json::json!({"device": "laptop"})).expect("track");
    presence.track("room", &b, "alice", serde_json::json!({"device": "phone"})).expect("track");
    presence.track("room", &c, "bob", serde_json::Value::Null).expect("track");
    let listed = presence.list("room").await.expect("list");
    assert_eq!(list_counts(&listed), counts(&[("alice", 2), ("bob", 1)]));
    let devices: BTreeSet<&str> =
        listed.get("alice").iter().map(|m| m.meta()["device"].as_str().expect("a device")).collect();
    assert_eq!(devices, BTreeSet::from(["laptop", "phone"]));
    let refs: BTreeSet<&str> = listed.iter().flat_map(|(_, metas)| metas.iter().map(|m| m.presence_ref())).collect();
    assert_eq!(refs.len(), 3, "every meta has its own reference");
    presence.flush().await;
    assert_eq!(list_counts(&presence.list("room").await.expect("list")), counts(&[("alice", 2), ("bob", 1)]));
    assert!(presence.list("elsewhere").await.expect("list").is_empty());
}

/// A watcher gets the state first, then diffs: joins, and leaves when a connection untracks.
pub async fn a_watcher_gets_the_state_then_diffs<F: PresenceFactory>(factory: &F) {
    let (layer, _) = factory.make().await;
    let presence = Presence::with_config(layer.clone(), config(20));
    let a = layer.new_channel("specific").await.expect("a channel");
    let b = layer.new_channel("specific").await.expect("a channel");
    presence.track("room", &a, "alice", serde_json::json!({})).expect("track");
    let mut view = View::default();
    view.until(&*layer, &a, &counts(&[("alice", 1)])).await;
    assert_eq!((view.states, view.diffs), (1, 0), "the first message is the state, which holds the tracker");
    presence.track("room", &b, "bob", serde_json::json!({})).expect("track");
    view.until(&*layer, &a, &counts(&[("alice", 1), ("bob", 1)])).await;
    assert_eq!(view.diffs, 1);
    presence.untrack("room", &b);
    view.until(&*layer, &a, &counts(&[("alice", 1)])).await;
    assert_eq!(view.diffs, 2);
    assert_eq!(list_counts(&presence.list("room").await.expect("list")), counts(&[("alice", 1)]));
}

/// Changes within one interval reach a watcher as one diff: 50 joins cost one message, not 50.
pub async fn diffs_are_coalesced_within_an_interval<F: PresenceFactory>(factory: &F) {
    let (layer, _) = factory.make().await;
    let presence = Presence::with_config(layer.clone(), config(300));
    let watcher = layer.new_channel("specific").await.expect("a channel");
    presence.subscribe("room", &watcher).expect("subscribe");
    let mut view = View::default();
    while view.states == 0 {
        view.apply(&tokio::time::timeout(PATIENCE, layer.receive(&watcher)).await.expect("in time").expect("receive"));
    }
    let mut expected = BTreeMap::new();
    for i in 0..50 {
        let channel = layer.new_channel("specific").await.expect("a channel");
        presence.track("room", &channel, format!("user{i}"), serde_json::json!({})).expect("track");
        expected.insert(format!("user{i}"), 1);
    }
    view.until(&*layer, &watcher, &expected).await;
    assert_eq!(view.diffs, 1, "50 joins within one interval make one diff");
}

/// A newcomer's state plus the diffs after it always equals the group: with joins, leaves and
/// new watchers interleaved, every watcher ends with the same view as `list`.
pub async fn every_watchers_view_is_the_group<F: PresenceFactory>(factory: &F) {
    let (layer, _) = factory.make().await;
    let presence = Presence::with_config(layer.clone(), config(10));
    let mut members = Vec::new();
    for round in 0..30 {
        let channel = layer.new_channel("specific").await.expect("a channel");
        presence
            .track("room", &channel, format!("user{}", round % 7), serde_json::json!({"round": round}))
            .expect("track");
        members.push(channel);
        if round % 3 == 2 {
            let leaving = members.remove(round % members.len());
            presence.untrack("room", &leaving);
        }
        if round % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
    presence.flush().await;
    let expected = list_counts(&presence.list("room").await.expect("list"));
    for channel in &members {
        let mut view = View::default();
        view.until(&*layer, channel, &expected).await;
        assert_eq!(view.states, 1, "one state per watcher when no message was lost");
    }
}

/// `untrack` ends a channel's entry in one group, not in the others; a watcher there sees it go.
pub async fn untrack_leaves_one_group_only<F: PresenceFactory>(factory: &F) {
    let (layer, _) = factory.make().await;
    let presence = Presence::with_config(layer.clone(), config(10));
    let leaving = layer.new_channel("specific").await.expect("a channel");
    let staying = layer.new_channel("specific").await.expect("a channel");
    for group in ["one", "two"] {
        presence.track(group, &leaving, "leaver", serde_json::json!({})).expect("track");
    }
    presence.track("one", &staying, "stayer", serde_json::json!({})).expect("track");
    let mut view = View::default();
    view.until(&*layer, &staying, &counts(&[("leaver", 1), ("stayer", 1)])).await;
    presence.untrack("one", &leaving);
    view.until(&*layer, &staying, &counts(&[("stayer", 1)])).await;
    presence.flush().await;
    assert_eq!(list_counts(&presence.list("one").await.expect("list")), counts(&[("stayer", 1)]));
    assert_eq!(list_counts(&presence.list("two").await.expect("list")), counts(&[("leaver", 1)]));
    presence.untrack("two", &leaving);
    presence.flush().await;
    assert!(presence.list("two").await.expect("list").is_empty());
}

/// With a zero interval every change goes out as soon as the background task runs.
pub async fn a_zero_interval_sends_at_once<F: PresenceFactory>(factory: &F) {
    let (layer, _) = factory.make().await;
    let presence = Presence::with_config(layer.clone(), config(0));
    let a = layer.new_channel("specific").await.expect("a channel");
    let b = layer.new_channel("specific").await.expect("a channel");
    presence.track("room", &a, "alice", serde_json::json!({})).expect("track");
    let mut view = View::default();
    view.until(&*layer, &a, &counts(&[("alice", 1)])).await;
    presence.track("room", &b, "bob", serde_json::json!({})).expect("track");
    tokio::time::timeout(Duration::from_secs(2), view.until(&*layer, &a, &counts(&[("alice", 1), ("bob", 1)])))
        .await
        .expect("a zero interval does not wait");
}

/// Bad input is an error naming the problem, and changes nothing.
pub async fn bad_input_is_refused<F: PresenceFactory>(factory: &F) {
    let (layer, _) = factory.make().await;
    let presence = Presence::with_config(layer.clone(), config(10));
    let a = layer.new_channel("specific").await.expect("a channel");
    let bad_group = presence.track("no spaces", &a, "alice", serde_json::json!({}));
    assert!(matches!(bad_group, Err(PresenceError::InvalidName(_))), "{bad_group:?}");
    assert!(matches!(presence.track("room", &a, "", serde_json::json!({})), Err(PresenceError::InvalidKey)));
    let long_key = "k".repeat(crate::presence::MAX_KEY_BYTES + 1);
    assert!(matches!(
        presence.track("room", &a, long_key.as_str(), serde_json::json!({})),
        Err(PresenceError::InvalidKey)
    ));
    let big = serde_json::json!({ "blob": "x".repeat(crate::presence::MAX_META_BYTES) });
    let too_big = presence.track("room", &a, "alice", big);
    assert!(matches!(too_big, Err(PresenceError::MetaTooLarge { .. })), "{too_big:?}");
    assert!(too_big.expect_err("too big").to_string().contains("over the limit"));
    assert!(presence.list("room").await.expect("list").is_empty());
}

/// Two processes on one backend see each other's entries, in lists and in diffs.
pub async fn processes_see_each_other<F: PresenceFactory>(factory: &F) {
    let (one, two) = factory.make().await;
    if one.presence_store().is_none() {
        return; // one process only
    }
    let (p1, p2) = (Presence::with_config(one.clone(), config(20)), Presence::with_config(two.clone(), config(20)));
    let a = one.new_channel("specific").await.expect("a channel");
    let b = two.new_channel("specific").await.expect("a channel");
    p1.track("room", &a, "alice", serde_json::json!({"on": 1})).expect("track");
    p2.track("room", &b, "bob", serde_json::json!({"on": 2})).expect("track");
    let both = counts(&[("alice", 1), ("bob", 1)]);
    let (mut view_a, mut view_b) = (View::default(), View::default());
    view_a.until(&*one, &a, &both).await;
    view_b.until(&*two, &b, &both).await;
    assert_eq!(list_counts(&p1.list("room").await.expect("list")), both);
    let third = two.new_channel("specific").await.expect("a channel");
    p2.track("room", &third, "alice", serde_json::json!({"on": 2})).expect("track");
    let more = counts(&[("alice", 2), ("bob", 1)]);
    view_a.until(&*one, &a, &more).await;
    p2.untrack("room", &b);
    view_a.until(&*one, &a, &counts(&[("alice", 2)])).await;
}

/// The entries of a process that stopped without untracking (SIGKILL: here its service is
/// dropped, so it neither writes nor removes anything) leave the others' views within the time
/// to live.
pub async fn entries_of_a_dead_process_expire<F: PresenceFactory>(factory: &F) {
    let (one, two) = factory.make().await;
    if one.presence_store().is_none() {
        return;
    }
    let ttl = Duration::from_secs(3);
    let dying = Presence::with_config(one.clone(), config(20).ttl(ttl));
    let survivor = Presence::with_config(two.clone(), config(20).ttl(ttl));
    let a = one.new_channel("specific").await.expect("a channel");
    let b = two.new_channel("specific").await.expect("a channel");
    dying.track("room", &a, "ghost", serde_json::json!({})).expect("track");
    survivor.track("room", &b, "alive", serde_json::json!({})).expect("track");
    let mut view = View::default();
    view.until(&*two, &b, &counts(&[("alive", 1), ("ghost", 1)])).await;
    dying.flush().await;
    drop(dying);
    let died = tokio::time::Instant::now();
    view.until(&*two, &b, &counts(&[("alive", 1)])).await;
    let took = died.elapsed();
    assert!(took <= ttl + Duration::from_millis(500), "the dead process's entry left after {took:?}");
    assert_eq!(list_counts(&survivor.list("room").await.expect("list")), counts(&[("alive", 1)]));
}

/// Generates one `#[tokio::test]` per presence check for a factory of two layers.
#[macro_export]
macro_rules! presence_conformance_tests {
    ($factory:expr) => {
        $crate::presence_conformance_tests!(@tests $factory;
            track_and_list,
            a_watcher_gets_the_state_then_diffs,
            diffs_are_coalesced_within_an_interval,
            every_watchers_view_is_the_group,
            untrack_leaves_one_group_only,
            a_zero_interval_sends_at_once,
            bad_input_is_refused,
            processes_see_each_other,
            entries_of_a_dead_process_expire,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $crate::testing::presence_suite::$name(&$factory).await;
        }
    )*};
}
