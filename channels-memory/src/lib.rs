//! The in-memory channel layer: every channel and group lives in this process.
//!
//! Use it for one-process deployments, development and tests. It implements the full
//! [`ChannelLayer`] semantics (capacity, `ChannelFull`, counted drops on `group_send`, message
//! and group expiry), passes the shared semantics suite, and never holds a lock across an await.
//! For several processes, use the Redis layer.
//!
//! ```
//! use channels_core::layer::{ChannelLayer, LayerConfig, Message};
//! use channels_memory::InMemoryChannelLayer;
//! use std::collections::HashMap;
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = InMemoryChannelLayer::new(LayerConfig::default());
//! let me = layer.new_channel("specific").await.unwrap();
//! layer.group_add("lobby", &me).await.unwrap();
//! let event = HashMap::from([("type", "chat.message"), ("text", "hi")]);
//! layer.group_send("lobby", Message::new(&event).unwrap()).await.unwrap();
//! assert_eq!(layer.receive(&me).await.unwrap().message_type(), "chat.message");
//!
//! // Receiving on one channel again and again, as a connection does on its own: a receiver
//! // remembers where the channel's queue is instead of looking its name up each time.
//! let receiver = Arc::new(layer.clone()).receiver(me.as_str().into());
//! layer.group_send("lobby", Message::new(&event).unwrap()).await.unwrap();
//! assert_eq!(receiver.try_receive().unwrap().message_type(), "chat.message");
//! assert!(receiver.try_receive().is_none());
//!
//! // A burst that waits is taken at once: up to `max` messages, in order.
//! for _ in 0..3 {
//!     layer.group_send("lobby", Message::new(&event).unwrap()).await.unwrap();
//! }
//! let mut burst = Vec::new();
//! receiver.try_receive_many(64, &mut burst);
//! assert_eq!(burst.len(), 3);
//! # }
//! ```

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use channels_core::layer::{
    ChannelLayer, ChannelReceiver, ConfigError, FlushError, GroupError, GroupSendReport, LayerConfig, LayerUrl,
    Members, Message, NewChannelError, ReceiveError, SendError, validate_channel_name, validate_group_name,
};
use futures_util::future::BoxFuture;
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Maps keyed by group names, with a fast hash (foldhash, seeded per process) rather than
/// SipHash.
type HashMap<K, V> = foldhash::HashMap<K, V>;

/// The queues by channel name. An index map: a group member remembers where its channel's queue
/// sits, so `group_send` reaches each member's queue without hashing its name.
type Channels = indexmap::IndexMap<Arc<str>, Queue, foldhash::fast::RandomState>;

/// A snapshot of the layer's contents and counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerStats {
    /// Channels that hold messages or have a waiting receiver.
    pub channels: usize,
    /// Groups with at least one member.
    pub groups: usize,
    /// Messages waiting in all channels.
    pub queued: usize,
    /// Messages `group_send` dropped because a member's channel was full, since creation.
    pub dropped_full: u64,
}

/// The in-memory channel layer. Cheap to clone; clones share one layer.
#[derive(Clone)]
pub struct InMemoryChannelLayer {
    inner: Arc<Inner>,
}

struct Inner {
    config: LayerConfig,
    state: Mutex<State>,
    dropped_full: AtomicU64,
    sweeper_started: AtomicBool,
}

#[derive(Default)]
struct State {
    channels: Channels,
    groups: HashMap<String, Members<Membership>>,
}

/// One channel's place in a group (a group's members are a short list while the group is
/// small, so a personal group costs one small allocation; see [`Members`]).
struct Membership {
    /// The time of its last `group_add`.
    joined: Instant,
    /// Where its queue was last seen in [`State::channels`]: a hint, checked on every use.
    slot: usize,
}

/// Drops the members that joined at or before `cutoff` (expired) and calls `f` on each other
/// one, in one pass.
fn retain_live(
    members: &mut Members<Membership>,
    cutoff: Option<Instant>,
    mut f: impl FnMut(&Arc<str>, &mut Membership),
) {
    members.retain(|channel, membership| {
        let live = cutoff.is_none_or(|cutoff| membership.joined > cutoff);
        if live {
            f(channel, membership);
        }
        live
    });
}

/// Whether two channel names are equal, without reading their bytes when both are the same
/// allocation (a receiver's or member's name shared with its queue's key, the usual case).
fn same_name(a: &str, b: &str) -> bool {
    (std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()) || a == b
}

/// The queue of a group member's channel: where the member's slot hint points when that is still
/// its queue, else found by name (or created) and the hint refreshed. Queues move when others are
/// removed, so the hint is a shortcut, never trusted.
fn member_queue<'a>(channels: &'a mut Channels, channel: &Arc<str>, membership: &mut Membership) -> &'a mut Queue {
    let hit = channels.get_index(membership.slot).is_some_and(|(key, _)| same_name(key, channel));
    if !hit {
        membership.slot = match channels.get_index_of(&**channel) {
            Some(slot) => slot,
            None => channels.insert_full(channel.clone(), Queue::default()).0,
        };
    }
    &mut channels[membership.slot]
}

#[derive(Default)]
struct Queue {
    /// (expires at, message)
    items: VecDeque<(Instant, Message)>,
    /// When the first of `items` expires (meaningless while there is none): a copy kept beside
    /// the queue's bookkeeping, so the check a `group_send` makes for every member does not
    /// read the member's buffer, which is seldom in the CPU's cache by then.
    front_expires: Option<Instant>,
    /// Held (cloned) by receivers while they wait, so a queue with waiters is never dropped.
    notify: Arc<Notify>,
}

impl Queue {
    /// Drops expired messages from the front; true if any expired.
    #[inline]
    fn purge_expired(&mut self, now: Instant) -> bool {
        if self.items.is_empty() || self.front_expires.is_some_and(|expires| expires > now) {
            return false;
        }
        self.purge_from_front(now)
    }

    /// [`Self::purge_expired`] once the first message has expired: the rare path, out of line.
    #[cold]
    fn purge_from_front(&mut self, now: Instant) -> bool {
        let before = self.items.len();
        while self.items.front().is_some_and(|(expires, _)| *expires <= now) {
            self.items.pop_front();
        }
        self.front_moved();
        self.items.len() != before
    }

    /// Records the new first message's expiry after messages left the front.
    fn front_moved(&mut self) {
        self.front_expires = self.items.front().map(|(expires, _)| *expires);
    }

    /// Takes the next message that has not expired, and says whether any had expired. The clock
    /// is read only when there is a message to check. A drained queue keeps its buffer for the
    /// next burst; the sweeper frees it if the queue is still empty then.
    ///
    /// Only a push into an empty queue wakes a receiver, so the caller must hold no wake-up of
    /// its own: when it leaves messages behind and other receivers wait, one of them is woken
    /// here, as nothing else would wake them for messages already queued.
    fn take(&mut self) -> (Option<Message>, bool) {
        if self.items.is_empty() {
            return (None, false);
        }
        let expired = self.purge_expired(Instant::now());
        let taken = self.items.pop_front().map(|(_, message)| message);
        self.front_moved();
        if taken.is_some() {
            self.wake_next();
        }
        (taken, expired)
    }

    /// [`Self::take`] for up to `max` messages, appended to `into`, with one look at the
    /// clock: expiry times only grow along the queue, so once the front has not expired, none
    /// behind it has.
    fn take_many(&mut self, max: usize, into: &mut Vec<Message>) -> bool {
        if self.items.is_empty() || max == 0 {
            return false;
        }
        let expired = self.purge_expired(Instant::now());
        let n = max.min(self.items.len());
        into.extend(self.items.drain(..n).map(|(_, message)| message));
        self.front_moved();
        if n > 0 {
            self.wake_next();
        }
        expired
    }

    /// After a take: wakes one other waiting receiver if messages are left, as nothing else
    /// would wake it for messages already queued.
    fn wake_next(&self) {
        if !self.items.is_empty() && self.has_waiters() {
            self.notify.notify_one();
        }
    }

    fn has_waiters(&self) -> bool {
        Arc::strong_count(&self.notify) > 1
    }

    /// Queues a message; returns the waiters' wake-up when this is the queue's first message,
    /// the only push a waiting receiver needs to hear of (it takes what follows without
    /// waiting).
    #[inline]
    fn push(&mut self, expires: Instant, message: Message) -> Option<Arc<Notify>> {
        let was_empty = self.items.is_empty();
        if was_empty {
            self.front_expires = Some(expires);
        }
        self.items.push_back((expires, message));
        (was_empty && self.has_waiters()).then(|| self.notify.clone())
    }
}

/// A slot no queue has.
const NO_SLOT: usize = usize::MAX;

/// The in-memory layer's [`ChannelReceiver`]: it remembers where its channel's queue sits, so
/// receiving does not hash the channel's name.
struct Receiver {
    layer: InMemoryChannelLayer,
    channel: Arc<str>,
    slot: AtomicUsize,
}

impl ChannelReceiver for Receiver {
    fn receive(&self) -> BoxFuture<'_, Result<Message, ReceiveError>> {
        Box::pin(self.layer.receive_on(&self.channel, &self.slot))
    }

    fn try_receive(&self) -> Option<Message> {
        self.layer.try_receive_on(&self.channel, &self.slot)
    }

    fn try_receive_many(&self, max: usize, into: &mut Vec<Message>) {
        let mut state = self.layer.lock();
        let Some(at) = state.slot_of(&self.channel, &self.slot) else { return };
        if state.channels[at].take_many(max, into) {
            state.remove_from_groups(&self.channel);
        }
    }
}

impl State {
    /// Where `channel`'s queue is: at `slot` if it still is, else found by name (and `slot`
    /// updated); `None` if it has none.
    fn slot_of(&self, channel: &str, slot: &AtomicUsize) -> Option<usize> {
        let at = slot.load(Ordering::Relaxed);
        if self.channels.get_index(at).is_some_and(|(key, _)| same_name(key, channel)) {
            return Some(at);
        }
        let at = self.channels.get_index_of(channel)?;
        slot.store(at, Ordering::Relaxed);
        Some(at)
    }

    /// Django's rule: a channel with an expired message is removed from every group.
    fn remove_from_groups(&mut self, channel: &str) {
        self.groups.retain(|_, members| {
            members.remove(channel);
            !members.is_empty()
        });
    }

    /// Queues `message` on `channel` unless it holds `capacity` messages. Returns the wake-up
    /// to send (after unlocking) if any, or `Err` when the channel is full.
    fn push(
        &mut self,
        channel: &str,
        message: Message,
        capacity: usize,
        expiry: Duration,
        now: Instant,
    ) -> Result<Option<Arc<Notify>>, ()> {
        let queue = match self.channels.get_mut(channel) {
            Some(queue) => queue,
            None => self.channels.entry(channel.into()).or_default(),
        };
        let expired = queue.purge_expired(now);
        let result = if queue.items.len() >= capacity { Err(()) } else { Ok(queue.push(now + expiry, message)) };
        if expired {
            self.remove_from_groups(channel);
        }
        result
    }
}

impl InMemoryChannelLayer {
    /// A layer with the given settings.
    pub fn new(config: LayerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
                dropped_full: AtomicU64::new(0),
                sweeper_started: AtomicBool::new(false),
            }),
        }
    }

    /// A layer from a `memory://?capacity=100&expiry=60&group_expiry=86400` URL.
    pub fn from_url(mut url: LayerUrl) -> Result<Self, ConfigError> {
        if url.scheme != "memory" {
            return Err(ConfigError(format!("expected a memory:// URL, got {}://", url.scheme)));
        }
        if !url.hosts.is_empty() || !url.path.trim_matches('/').is_empty() {
            return Err(ConfigError("memory:// takes no host or path, only ?parameters".into()));
        }
        let config = LayerConfig::take_from(&mut url)?;
        url.reject_unknown_params()?;
        Ok(Self::new(config))
    }

    /// Counts of what the layer holds.
    pub fn stats(&self) -> LayerStats {
        let state = self.lock();
        LayerStats {
            channels: state.channels.len(),
            groups: state.groups.len(),
            queued: state.channels.values().map(|q| q.items.len()).sum(),
            dropped_full: self.inner.dropped_full.load(Ordering::Relaxed),
        }
    }

    /// Waits for the next message on `channel`, looking for its queue where `slot` says first
    /// (and keeping `slot` up to date).
    async fn receive_on(&self, channel: &str, slot: &AtomicUsize) -> Result<Message, ReceiveError> {
        self.ensure_sweeper();
        loop {
            let notify = {
                let mut state = self.lock();
                // The hot path (a consumer's own, existing queue) neither allocates nor re-checks
                // the name: only valid names ever get a queue.
                let at = match state.slot_of(channel, slot) {
                    Some(at) => at,
                    None => {
                        validate_channel_name(channel)?;
                        let at = state.channels.insert_full(channel.into(), Queue::default()).0;
                        slot.store(at, Ordering::Relaxed);
                        at
                    }
                };
                let (popped, expired) = state.channels[at].take();
                if expired {
                    // Django's rule: a channel with an expired message leaves its groups.
                    state.remove_from_groups(channel);
                }
                if let Some(message) = popped {
                    return Ok(message);
                }
                state.channels[at].notify.clone()
            };
            // notify_one stores a permit when nobody waits yet, so a send between the unlock
            // and this await is not missed. Dropping this future loses no message.
            notify.notified().await;
        }
    }

    /// The message waiting on `channel`, if any, looking where `slot` says first.
    fn try_receive_on(&self, channel: &str, slot: &AtomicUsize) -> Option<Message> {
        let mut state = self.lock();
        let at = state.slot_of(channel, slot)?;
        let (popped, expired) = state.channels[at].take();
        if expired {
            state.remove_from_groups(channel);
        }
        popped
    }

    /// Queues each message on every live member of its group, in order, under one lock, and
    /// counts into `reports` (one per send; a send whose report is an error, an invalid name,
    /// is skipped); the receivers are woken once it is released. Consecutive sends to one group
    /// are a run: one pass over its members queues them all, looking each member's queue up
    /// once.
    fn send_to_groups<G: AsRef<str>, M: Borrow<Message>>(
        &self,
        sends: &[(G, M)],
        reports: &mut [Result<GroupSendReport, GroupError>],
    ) {
        self.ensure_sweeper();
        let config = &self.inner.config;
        let now = Instant::now();
        let expires = now + config.expiry;
        let mut wake = Vec::new();
        {
            let mut state = self.lock();
            let mut at = 0;
            while at < sends.len() {
                let group = sends[at].0.as_ref();
                let run = at..at + sends[at..].iter().take_while(|(g, _)| g.as_ref() == group).count();
                at = run.end;
                if reports[run.start].is_err() {
                    // The same name for the whole run: all invalid.
                    continue;
                }
                let State { channels, groups } = &mut *state;
                let Some(members) = groups.get_mut(group) else { continue };
                let (run_sends, run_reports) = (&sends[run.clone()], &mut reports[run]);
                let mut expired = Vec::new();
                retain_live(members, now.checked_sub(config.group_expiry), |channel, membership| {
                    let queue = member_queue(channels, channel, membership);
                    // A channel whose queue held an expired message leaves its groups after this
                    // send (Django's rule), so it gets the run's first message only, as it
                    // would from one `group_send` after another.
                    let mut take = run_sends.len();
                    if queue.purge_expired(now) {
                        expired.push(channel.clone());
                        take = 1;
                    }
                    let capacity = config.capacity_for(channel);
                    for ((_, message), report) in run_sends.iter().zip(run_reports.iter_mut()).take(take) {
                        let Ok(report) = report else { continue };
                        if queue.items.len() >= capacity {
                            report.dropped_full += 1;
                        } else {
                            wake.extend(queue.push(expires, message.borrow().clone()));
                            report.queued += 1;
                        }
                    }
                });
                if members.is_empty() {
                    groups.remove(group);
                }
                for channel in expired {
                    state.remove_from_groups(&channel);
                }
            }
        }
        for notify in wake {
            notify.notify_one();
        }
        for ((group, _), report) in sends.iter().zip(reports.iter()) {
            let group = group.as_ref();
            if let Ok(report) = report
                && report.dropped_full > 0
            {
                self.inner.dropped_full.fetch_add(report.dropped_full as u64, Ordering::Relaxed);
                tracing::info!(
                    group,
                    dropped = report.dropped_full,
                    of = report.queued + report.dropped_full,
                    "group_send dropped messages for full channels"
                );
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock, but a poisoned lock still holds consistent data.
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the background sweep of expired messages and memberships once, on first use. The
    /// task holds only a weak reference and ends when the layer is dropped.
    fn ensure_sweeper(&self) {
        // A load first: the swap writes, and every receive comes here.
        if self.inner.sweeper_started.load(Ordering::Relaxed)
            || self.inner.sweeper_started.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.sweeper_started.store(false, Ordering::Relaxed);
            return;
        };
        let period = (self.inner.config.expiry.min(self.inner.config.group_expiry) / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                InMemoryChannelLayer { inner }.sweep();
            }
        });
    }

    /// Drops expired messages (and their channels' memberships), expired memberships, and
    /// empty queues nobody waits on; an empty queue with a waiter gives its buffer back, so an
    /// idle consumer holds none.
    fn sweep(&self) {
        let now = Instant::now();
        let group_expiry = self.inner.config.group_expiry;
        let mut state = self.lock();
        let mut expired = Vec::new();
        state.channels.retain(|name, queue| {
            if queue.purge_expired(now) {
                expired.push(name.clone());
            }
            if queue.items.is_empty() {
                queue.items = VecDeque::new();
            }
            !queue.items.is_empty() || queue.has_waiters()
        });
        for name in expired {
            state.remove_from_groups(&name);
        }
        state.groups.retain(|_, members| {
            retain_live(members, now.checked_sub(group_expiry), |_, _| {});
            !members.is_empty()
        });
    }
}

impl std::fmt::Debug for InMemoryChannelLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryChannelLayer")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish()
    }
}

#[async_trait]
impl ChannelLayer for InMemoryChannelLayer {
    async fn new_channel(&self, prefix: &str) -> Result<String, NewChannelError> {
        let suffix: String = rand::rng().sample_iter(&Alphanumeric).take(12).map(char::from).collect();
        let name = format!("{prefix}.inmemory!{suffix}");
        validate_channel_name(&name)?;
        Ok(name)
    }

    async fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        validate_channel_name(channel)?;
        self.ensure_sweeper();
        let config = &self.inner.config;
        let pushed = self.lock().push(channel, message, config.capacity_for(channel), config.expiry, Instant::now());
        match pushed {
            Ok(wake) => {
                if let Some(notify) = wake {
                    notify.notify_one();
                }
                Ok(())
            }
            Err(()) => Err(SendError::ChannelFull { channel: channel.to_owned() }),
        }
    }

    async fn receive(&self, channel: &str) -> Result<Message, ReceiveError> {
        self.receive_on(channel, &AtomicUsize::new(NO_SLOT)).await
    }

    fn try_receive(&self, channel: &str) -> Option<Message> {
        self.try_receive_on(channel, &AtomicUsize::new(NO_SLOT))
    }

    fn receiver(self: Arc<Self>, channel: Arc<str>) -> Box<dyn ChannelReceiver> {
        // The receiver shares its queue's name (made here when the channel has none yet), so
        // finding the queue compares pointers, not bytes.
        let (channel, slot) = {
            let mut state = self.lock();
            match state.channels.get_full(&*channel) {
                Some((slot, key, _)) => (key.clone(), slot),
                None if validate_channel_name(&channel).is_ok() => {
                    (channel.clone(), state.channels.insert_full(channel, Queue::default()).0)
                }
                None => (channel, NO_SLOT),
            }
        };
        Box::new(Receiver { layer: (*self).clone(), channel, slot: AtomicUsize::new(slot) })
    }

    async fn group_add(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        validate_group_name(group)?;
        validate_channel_name(channel)?;
        self.ensure_sweeper();
        let mut state = self.lock();
        let State { channels, groups } = &mut *state;
        // The member shares its queue's name (made here when the channel has none yet), which
        // makes its slot hint hit at once and compares pointers, not bytes.
        let (channel, slot) = match channels.get_full(channel) {
            Some((slot, name, _)) => (name.clone(), slot),
            None => {
                let name: Arc<str> = channel.into();
                (name.clone(), channels.insert_full(name, Queue::default()).0)
            }
        };
        let members = match groups.get_mut(group) {
            Some(members) => members,
            None => groups.entry(group.to_owned()).or_default(),
        };
        members.insert(channel, Membership { joined: Instant::now(), slot });
        Ok(())
    }

    async fn group_discard(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        validate_group_name(group)?;
        validate_channel_name(channel)?;
        let mut state = self.lock();
        if let Some(members) = state.groups.get_mut(group) {
            members.remove(channel);
            if members.is_empty() {
                state.groups.remove(group);
            }
        }
        Ok(())
    }

    async fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, GroupError> {
        validate_group_name(group)?;
        let mut report = [Ok(GroupSendReport::default())];
        self.send_to_groups(&[(group, &message)], &mut report);
        let [report] = report;
        report
    }

    /// One lock for the batch, and one pass over a group's members for each run of sends to
    /// the same group (a connection's queued messages to its room, say): each member's queue
    /// is found and checked once and takes the run's messages in order.
    async fn group_send_many(&self, sends: &[(String, Message)]) -> Vec<Result<GroupSendReport, GroupError>> {
        let mut reports: Vec<Result<GroupSendReport, GroupError>> = sends
            .iter()
            .map(|(group, _)| validate_group_name(group).map(|()| GroupSendReport::default()).map_err(GroupError::from))
            .collect();
        self.send_to_groups(sends, &mut reports);
        reports
    }

    async fn flush(&self) -> Result<(), FlushError> {
        let mut state = self.lock();
        state.groups.clear();
        state.channels.retain(|_, queue| {
            queue.items.clear();
            queue.has_waiters()
        });
        Ok(())
    }

    async fn forget_channel(&self, channel: &str) {
        let mut state = self.lock();
        if state.channels.get(channel).is_some_and(|q| !q.has_waiters()) {
            state.channels.swap_remove(channel);
        }
        state.remove_from_groups(channel);
    }

    fn config(&self) -> &LayerConfig {
        &self.inner.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    channels_core::layer_conformance_tests!(|config: LayerConfig| async move {
        Arc::new(InMemoryChannelLayer::new(config)) as Arc<dyn ChannelLayer>
    });

    fn msg(n: u32) -> Message {
        Message::new(&std::collections::HashMap::from([("type", "t".to_string()), ("n", n.to_string())])).unwrap()
    }

    #[tokio::test]
    async fn a_burst_that_leaves_messages_behind_wakes_another_waiter() {
        let mut queue = Queue::default();
        let waiter = queue.notify.clone();
        let expires = Instant::now() + Duration::from_secs(60);
        for n in 0..3 {
            queue.push(expires, msg(n));
        }
        let mut taken = Vec::new();
        assert!(!queue.take_many(2, &mut taken), "nothing expired");
        assert_eq!(taken.iter().map(n_of).collect::<Vec<_>>(), [0, 1]);
        let woken = tokio::time::timeout(Duration::from_millis(100), waiter.notified()).await;
        assert!(woken.is_ok(), "a message was left behind: another waiter is woken");
        queue.take_many(5, &mut taken);
        assert_eq!(taken.len(), 3);
        let woken = tokio::time::timeout(Duration::from_millis(100), waiter.notified()).await;
        assert!(woken.is_err(), "nothing left: nobody is woken");
    }

    #[test]
    fn the_front_expiry_follows_the_first_message() {
        let front = |queue: &Queue| queue.items.front().map(|(expires, _)| *expires);
        let start = Instant::now();
        let mut queue = Queue::default();
        for n in 0..6 {
            queue.push(start + Duration::from_secs(10 + u64::from(n)), msg(n));
            assert_eq!(queue.front_expires, front(&queue), "after push {n}");
        }
        assert_eq!(queue.take().0.as_ref().map(n_of), Some(0));
        assert_eq!(queue.front_expires, front(&queue), "after take");
        queue.take_many(2, &mut Vec::new());
        assert_eq!(queue.front_expires, front(&queue), "after take_many");
        // Messages 3 and 4 have expired by then; 5 has not.
        assert!(queue.purge_expired(start + Duration::from_secs(14)));
        assert_eq!(queue.front_expires, Some(start + Duration::from_secs(15)), "after purge");
        assert!(!queue.purge_expired(start + Duration::from_secs(14)), "nothing more to purge");
        queue.take_many(5, &mut Vec::new());
        queue.push(start + Duration::from_secs(20), msg(6));
        assert_eq!(queue.front_expires, front(&queue), "after a push into a drained queue");
    }

    fn n_of(message: &Message) -> u32 {
        message.decode::<std::collections::HashMap<String, String>>().unwrap()["n"].parse().unwrap()
    }

    #[tokio::test]
    async fn groups_keep_their_members_when_they_outgrow_the_short_list() {
        // 24 members: past the eight a short list holds, then 4 leave.
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let mut channels = Vec::new();
        for _ in 0..24 {
            let channel = layer.new_channel("specific").await.unwrap();
            layer.group_add("big", &channel).await.unwrap();
            layer.group_add("big", &channel).await.unwrap(); // a refresh, not a second member
            channels.push(channel);
        }
        for gone in channels.drain(..4) {
            layer.group_discard("big", &gone).await.unwrap();
        }
        let sent = msg(1);
        let report = layer.group_send("big", sent.clone()).await.unwrap();
        assert_eq!(report.queued, channels.len());
        for channel in &channels {
            assert_eq!(layer.receive(channel).await.unwrap().as_bytes(), sent.as_bytes());
        }
        for channel in &channels {
            layer.group_discard("big", channel).await.unwrap();
        }
        assert_eq!(layer.stats().groups, 0, "an emptied group is removed");
    }

    /// `n` channels with a message (9) waiting on each, their queues behind an idle one that a
    /// sweep drops (so theirs all move up one), each in `group` if one is given.
    async fn channels_behind_an_idle_queue(layer: &InMemoryChannelLayer, n: usize, group: Option<&str>) -> Vec<String> {
        let idle = layer.new_channel("specific").await.unwrap();
        layer.send(&idle, msg(0)).await.unwrap();
        layer.receive(&idle).await.unwrap();
        let mut channels = Vec::new();
        for _ in 0..n {
            let channel = layer.new_channel("specific").await.unwrap();
            layer.send(&channel, msg(9)).await.unwrap();
            if let Some(group) = group {
                layer.group_add(group, &channel).await.unwrap();
            }
            channels.push(channel);
        }
        channels
    }

    #[tokio::test]
    async fn group_send_finds_queues_that_moved() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let channels = channels_behind_an_idle_queue(&layer, 5, Some("g")).await;
        // The sweep drops the idle queue in front of the members' (they all move up one);
        // forgetting the first member moves the last one into its place.
        layer.sweep();
        layer.forget_channel(&channels[0]).await;
        for n in [1, 2] {
            assert_eq!(layer.group_send("g", msg(n)).await.unwrap().queued, 4);
        }
        for channel in &channels[1..] {
            for n in [9, 1, 2] {
                assert_eq!(n_of(&layer.try_receive(channel).unwrap()), n, "{channel}");
            }
            assert!(layer.try_receive(channel).is_none());
        }
        assert!(layer.try_receive(&channels[0]).is_none(), "a forgotten channel gets nothing");
    }

    #[tokio::test]
    async fn a_receiver_finds_its_queue_after_it_moved_or_was_made_again() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let channels = channels_behind_an_idle_queue(&layer, 3, None).await;
        let receivers: Vec<_> = channels.iter().map(|c| Arc::new(layer.clone()).receiver(c.as_str().into())).collect();
        for receiver in &receivers {
            assert_eq!(receiver.try_receive().map(|m| n_of(&m)), Some(9), "slot learnt");
        }
        for (n, channel) in channels.iter().enumerate() {
            layer.send(channel, msg(n as u32)).await.unwrap();
        }
        // The sweep drops the idle queue in front (the others move up one); forgetting the first
        // channel moves the last queue into its place.
        layer.sweep();
        layer.forget_channel(&channels[0]).await;
        assert!(receivers[0].try_receive().is_none(), "a forgotten channel's queue is gone");
        for (n, receiver) in receivers.iter().enumerate().skip(1) {
            assert_eq!(receiver.try_receive().map(|m| n_of(&m)), Some(n as u32));
            assert!(receiver.try_receive().is_none());
        }
        // A receive on a channel without a queue makes one, where the receiver finds it next.
        layer.send(&channels[0], msg(5)).await.unwrap();
        assert_eq!(n_of(&receivers[0].receive().await.unwrap()), 5);
    }

    #[tokio::test]
    async fn members_and_receivers_share_their_queues_name() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let a = layer.new_channel("specific").await.unwrap();
        layer.group_add("g", &a).await.unwrap();
        {
            let state = layer.lock();
            let (key, _) = state.channels.get_key_value(a.as_str()).expect("group_add made the queue");
            let (member, _) = state.groups["g"].iter().next().expect("one member");
            assert!(Arc::ptr_eq(member, key), "the member shares the queue's name");
        }
        // A receiver for a name allocated elsewhere takes the queue's; one for a channel with no
        // queue yet makes it, so messages sent later find the same name.
        let receiver = Arc::new(layer.clone()).receiver(a.as_str().into());
        let b = layer.new_channel("specific").await.unwrap();
        let other = Arc::new(layer.clone()).receiver(b.as_str().into());
        assert_eq!(layer.stats().channels, 2);
        layer.group_send("g", msg(1)).await.unwrap();
        layer.send(&b, msg(2)).await.unwrap();
        assert_eq!(receiver.try_receive().as_ref().map(n_of), Some(1));
        assert_eq!(other.try_receive().as_ref().map(n_of), Some(2));
        assert!(same_name("specific.x", &String::from("specific.x")), "equal names in two allocations");
        assert!(!same_name("specific.x", "specific.y"));
    }

    #[tokio::test]
    async fn a_drained_queue_keeps_its_buffer_until_the_sweep() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let a = layer.new_channel("specific").await.unwrap();
        let buffer = |layer: &InMemoryChannelLayer| layer.lock().channels.get(a.as_str()).map(|q| q.items.capacity());
        for n in 0..3 {
            layer.send(&a, msg(n)).await.unwrap();
        }
        for _ in 0..3 {
            layer.receive(&a).await.unwrap();
        }
        assert!(buffer(&layer) > Some(0), "kept for the next burst");
        let waiting = tokio::spawn({
            let (layer, a) = (layer.clone(), a.clone());
            async move { layer.receive(&a).await.unwrap() }
        });
        tokio::task::yield_now().await;
        layer.sweep();
        assert_eq!(buffer(&layer), Some(0), "a waiting consumer's empty queue gives its buffer back");
        let sent = msg(7);
        layer.send(&a, sent.clone()).await.unwrap();
        assert!(waiting.await.unwrap().shares_buffer_with(&sent), "the waiter still gets the next message");
    }

    #[tokio::test]
    async fn group_send_shares_one_encoded_buffer_with_every_member() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let (a, b) = (layer.new_channel("specific").await.unwrap(), layer.new_channel("specific").await.unwrap());
        layer.group_add("g", &a).await.unwrap();
        layer.group_add("g", &b).await.unwrap();
        let sent = msg(1);
        layer.group_send("g", sent.clone()).await.unwrap();
        assert!(layer.receive(&a).await.unwrap().shares_buffer_with(&sent));
        assert!(layer.receive(&b).await.unwrap().shares_buffer_with(&sent));
    }

    #[tokio::test]
    async fn drained_and_forgotten_channels_leave_nothing_behind() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let a = layer.new_channel("specific").await.unwrap();
        layer.group_add("g", &a).await.unwrap();
        layer.send(&a, msg(1)).await.unwrap();
        layer.receive(&a).await.unwrap();
        layer.forget_channel(&a).await;
        assert_eq!(layer.stats(), LayerStats::default());
    }

    #[tokio::test]
    async fn a_member_with_an_expired_message_gets_one_message_of_a_run_and_leaves() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let (a, b) = (layer.new_channel("specific").await.unwrap(), layer.new_channel("specific").await.unwrap());
        layer.group_add("g", &a).await.unwrap();
        layer.group_add("g", &b).await.unwrap();
        // A message for `a` that has expired by the time of the group sends.
        layer.lock().push(&a, msg(0), 100, Duration::ZERO, Instant::now()).unwrap();
        let sends = [("g".to_owned(), msg(1)), ("g".to_owned(), msg(2))];
        let counts: Vec<usize> =
            layer.group_send_many(&sends).await.iter().map(|r| r.as_ref().unwrap().queued).collect();
        assert_eq!(counts, [2, 1], "as from two group_sends: `a` left the group after the first");
        assert_eq!(n_of(&layer.receive(&a).await.unwrap()), 1);
        assert!(layer.try_receive(&a).is_none());
        assert_eq!(layer.group_send("g", msg(3)).await.unwrap().queued, 1, "only `b` is left");
        let at_b: Vec<u32> = (0..3).map(|_| n_of(&layer.try_receive(&b).unwrap())).collect();
        assert_eq!(at_b, [1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_cleans_expired_messages_and_memberships() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default().expiry(Duration::from_secs(2)));
        let a = layer.new_channel("specific").await.unwrap();
        layer.group_add("g", &a).await.unwrap();
        layer.send(&a, msg(1)).await.unwrap();
        assert_eq!(layer.stats().queued, 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let stats = layer.stats();
        assert_eq!((stats.channels, stats.groups, stats.queued), (0, 0, 0), "{stats:?}");
    }

    #[tokio::test]
    async fn the_sweeper_ends_when_the_layer_is_dropped() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default().expiry(Duration::from_secs(1)));
        layer.send("x", msg(1)).await.unwrap();
        let weak = Arc::downgrade(&layer.inner);
        drop(layer);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            InMemoryChannelLayer::from_url(LayerUrl::parse("memory://?capacity=7").unwrap()).unwrap().config().capacity,
            7
        );
        for bad in ["memory://?capacity=0", "memory://?bogus=1", "memory://host", "redis://x"] {
            assert!(InMemoryChannelLayer::from_url(LayerUrl::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod stress {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_receivers_and_group_senders() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default().capacity(100_000));
        let mut receivers = Vec::new();
        for _ in 0..20 {
            let ch = layer.new_channel("specific").await.unwrap();
            layer.group_add("g", &ch).await.unwrap();
            let layer = layer.clone();
            receivers.push(tokio::spawn(async move {
                let mut n = 0;
                while n < 2000 {
                    match tokio::time::timeout(Duration::from_secs(3), layer.receive(&ch)).await {
                        Ok(_) => n += 1,
                        Err(_) => break,
                    }
                    if n % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                n
            }));
        }
        let senders: Vec<_> = (0..20)
            .map(|_| {
                let layer = layer.clone();
                tokio::spawn(async move {
                    for i in 0..100u32 {
                        layer
                            .group_send(
                                "g",
                                Message::new(&std::collections::HashMap::from([
                                    ("type", "t".to_string()),
                                    ("i", i.to_string()),
                                ]))
                                .unwrap(),
                            )
                            .await
                            .unwrap();
                        if i % 3 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for s in senders {
            s.await.unwrap();
        }
        for r in receivers {
            assert_eq!(r.await.unwrap(), 2000);
        }
    }
}
