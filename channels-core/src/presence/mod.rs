//! Who is connected to a group, in this process and every other on the same layer.
//!
//! A connection **tracks** itself in a group under a key (a user name, say) with a small JSON
//! *meta* (`{"device": "phone"}`); a key with several connections is one entry with several
//! metas. Channels that track or **subscribe** to a group receive the group's presence as
//! channel-layer messages on their own channel:
//!
//! - once, the **state**: every key with its metas, as the group's members were last told;
//! - then **diffs**: the metas that joined and left since the previous diff, **coalesced per
//!   group over [`PresenceConfig::interval`]** (100 ms by default), so that a storm of N joins
//!   costs each member one message per interval instead of N.
//!
//! State plus the diffs that follow it is always the current view: a diff never repeats what
//! the state holds, and a channel whose diff could not be delivered (its queue was full) gets
//! a new state instead, which replaces its view. A meta that changes (tracked again with a new
//! meta) leaves and joins in one diff.
//!
//! Over a layer shared by several processes (the Redis layers), presence is shared too: each
//! process writes its entries to the layer's [`PresenceStore`] and tells the others its diffs
//! through the layer; every process keeps a copy of the groups its connections watch. The
//! entries of a process that died without cleaning up (SIGKILL) leave everyone's view within
//! [`PresenceConfig::ttl`] (30 s by default): an entry expires two thirds of it after its
//! process last wrote it, a live process writes its entries again every third of it, and every
//! process reads the store that often. In memory, the same API serves one process.
//!
//! Presence never holds up the message path: [`Presence::track`] and [`Presence::untrack`]
//! only note the change; a background task talks to the store and the layer. When the store
//! cannot be reached, views go stale and recover once it answers again; connections stay open.
//!
//! The `channels` crate's `presence` module has a runnable example.

mod group;
mod sync;
mod types;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::layer::{ChannelLayer, InvalidName, Message, PresenceStore, validate_group_name};
use group::{Entry, Group};
pub use types::{PresenceDiff, PresenceMeta, Presences};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Longest meta, in bytes of JSON.
pub const MAX_META_BYTES: usize = 4096;

/// A name or key [`Presence`] keeps: an `Arc<str>` is shared as it is; `&str`, `String` and
/// `&String` are copied into one.
pub trait IntoArcStr {
    /// The shared string.
    fn into_arc_str(self) -> Arc<str>;
}

impl IntoArcStr for Arc<str> {
    fn into_arc_str(self) -> Arc<str> {
        self
    }
}

impl IntoArcStr for &Arc<str> {
    fn into_arc_str(self) -> Arc<str> {
        self.clone()
    }
}

impl IntoArcStr for &str {
    fn into_arc_str(self) -> Arc<str> {
        self.into()
    }
}

impl IntoArcStr for String {
    fn into_arc_str(self) -> Arc<str> {
        self.into()
    }
}

impl IntoArcStr for &String {
    fn into_arc_str(self) -> Arc<str> {
        self.as_str().into()
    }
}

/// How a presence service behaves: see [`Presence::with_config`].
#[derive(Clone)]
pub struct PresenceConfig {
    interval: Duration,
    ttl: Duration,
    events: Arc<dyn PresenceEvents>,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self { interval: Duration::from_millis(100), ttl: Duration::from_secs(30), events: Arc::new(DefaultEvents) }
    }
}

impl fmt::Debug for PresenceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceConfig")
            .field("interval", &self.interval)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl PresenceConfig {
    /// How long changes are collected into one diff per group (default 100 ms). Zero sends
    /// every change as soon as the background task gets to it.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long the entries of a process that died without untracking them can stay in the
    /// others' views (default 30 s, at least 1 s). Each process writes its entries again, and
    /// reads the store, every third of it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// The messages watchers get (default [`DefaultEvents`]).
    pub fn events(mut self, events: impl PresenceEvents) -> Self {
        self.events = Arc::new(events);
        self
    }

    /// The coalescing interval.
    pub fn get_interval(&self) -> Duration {
        self.interval
    }

    /// The entries' time to live.
    pub fn get_ttl(&self) -> Duration {
        self.ttl
    }

    /// How long an entry lives in the store after a write: two thirds of the time to live, so
    /// that with a read every third of it, a dead process's entries are gone within it.
    fn entry_ttl(&self) -> Duration {
        self.ttl * 2 / 3
    }
}

/// Turns a group's presence into the channel-layer messages its watchers receive. Each is
/// called once per group and interval, whatever the number of watchers: a message made here
/// is shared by all of them, so a consumer that forwards it to its client as JSON (with
/// [`WebsocketContext::send_message_json`](crate::WebsocketContext::send_message_json)) has it
/// encoded once for the whole group.
///
/// ```
/// use channels_core::layer::Message;
/// use channels_core::presence::{PresenceConfig, PresenceDiff, PresenceEvents, Presences};
///
/// /// Users with their connection counts, for a page that shows who is online.
/// struct Counts;
///
/// impl PresenceEvents for Counts {
///     fn state(&self, _group: &str, state: &Presences) -> Option<Message> {
///         let users: serde_json::Map<_, _> = state.iter().map(|(key, metas)| (key.to_owned(), metas.len().into())).collect();
///         Message::new(&serde_json::json!({ "type": "online.state", "users": users })).ok()
///     }
///     fn diff(&self, _group: &str, diff: &PresenceDiff) -> Option<Message> {
///         let counts = |p: &Presences| -> serde_json::Map<_, _> { p.iter().map(|(k, m)| (k.to_owned(), m.len().into())).collect() };
///         let event = serde_json::json!({ "type": "online.diff", "joins": counts(&diff.joins), "leaves": counts(&diff.leaves) });
///         Message::new(&event).ok()
///     }
/// }
///
/// let config = PresenceConfig::default().events(Counts);
/// ```
pub trait PresenceEvents: Send + Sync + 'static {
    /// The message a new watcher gets first; `None` sends nothing.
    fn state(&self, group: &str, state: &Presences) -> Option<Message>;
    /// The message watchers get for a diff (never empty); `None` sends nothing.
    fn diff(&self, group: &str, diff: &PresenceDiff) -> Option<Message>;
}

/// The default messages, in the shapes of Phoenix's `presence_state` and `presence_diff`:
/// `{"type": "presence.state", "group": G, "state": {KEY: {"metas": [META, ...]}}}` and
/// `{"type": "presence.diff", "group": G, "joins": {KEY: {"metas": [...]}}, "leaves": {...}}`,
/// where each meta is the tracked object with its `"presence_ref"` added (a tracked value that
/// is not an object is under `"meta"`).
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultEvents;

impl PresenceEvents for DefaultEvents {
    fn state(&self, group: &str, state: &Presences) -> Option<Message> {
        let event = serde_json::json!({ "type": "presence.state", "group": group, "state": state });
        Message::new(&event).ok()
    }

    fn diff(&self, group: &str, diff: &PresenceDiff) -> Option<Message> {
        let event =
            serde_json::json!({ "type": "presence.diff", "group": group, "joins": diff.joins, "leaves": diff.leaves });
        Message::new(&event).ok()
    }
}

/// Why a presence call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PresenceError {
    /// The group name breaks the layer's naming rules.
    InvalidName(InvalidName),
    /// The key is empty or longer than [`MAX_KEY_BYTES`].
    InvalidKey,
    /// The meta's JSON is longer than [`MAX_META_BYTES`].
    MetaTooLarge {
        /// Its length in bytes.
        bytes: usize,
    },
    /// The shared store could not be read (for [`Presence::list`] of a group no connection of
    /// this process watches).
    Store(crate::layer::BackendError),
}

impl fmt::Display for PresenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName(e) => write!(f, "invalid presence group: {e}"),
            Self::InvalidKey => write!(f, "a presence key must be 1 to {MAX_KEY_BYTES} bytes"),
            Self::MetaTooLarge { bytes } => {
                write!(f, "presence meta of {bytes} bytes is over the limit of {MAX_META_BYTES}")
            }
            Self::Store(e) => write!(f, "presence store: {e}"),
        }
    }
}

impl std::error::Error for PresenceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidName(e) => Some(e),
            Self::Store(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<InvalidName> for PresenceError {
    fn from(e: InvalidName) -> Self {
        Self::InvalidName(e)
    }
}

/// A presence service on one channel layer: see the [module](self) documentation. Cheap to
/// clone; every clone is the same service. Make one per application (per layer) and hand it
/// to the consumers; its background task ends when the last clone is dropped.
#[derive(Clone)]
pub struct Presence {
    shared: Arc<Shared>,
}

impl fmt::Debug for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presence")
            .field("process", &self.shared.process)
            .field("shared_store", &self.shared.store.is_some())
            .field("config", &self.shared.config)
            .finish()
    }
}

/// What every clone of a [`Presence`] shares.
struct Shared {
    layer: Arc<dyn ChannelLayer>,
    store: Option<Arc<dyn PresenceStore>>,
    config: PresenceConfig,
    /// This service's id, the first part of every entry reference it makes.
    process: Box<str>,
    state: Mutex<State>,
    /// Rung when there is something to send.
    wake: Arc<Notify>,
    /// Cancelled when the last handle is dropped: ends the background tasks.
    cancel: CancellationToken,
    /// The channel other processes' diffs arrive on (over a shared store), once made.
    listener: OnceLock<Arc<str>>,
    last_warning: Mutex<Option<Instant>>,
    /// Set once the background task runs.
    started: OnceLock<()>,
    /// Held while a round of sends and writes runs, so that rounds do not interleave and every
    /// watcher gets its messages in order.
    round: tokio::sync::Mutex<()>,
}

/// The groups this process watches, behind the service's lock.
#[derive(Default)]
struct State {
    groups: foldhash::HashMap<Arc<str>, Group>,
    /// Groups with something to send or write.
    dirty: Vec<Arc<str>>,
}

impl State {
    fn mark(&mut self, group: &Arc<str>) {
        let g = self.groups.get_mut(group).expect("marked groups exist");
        if !g.dirty {
            g.dirty = true;
            self.dirty.push(group.clone());
        }
    }

    /// The group, made if new (with `name`, shared).
    fn group(&mut self, name: Arc<str>) -> (Arc<str>, &mut Group) {
        let name: Arc<str> = match self.groups.get_key_value(&*name) {
            Some((known, _)) => known.clone(),
            None => {
                self.groups.insert(name.clone(), Group::default());
                name
            }
        };
        let group = self.groups.get_mut(&name).expect("just found or made");
        (name, group)
    }
}

impl Presence {
    /// A presence service on `layer`, with the default [`PresenceConfig`].
    pub fn new(layer: Arc<dyn ChannelLayer>) -> Self {
        Self::with_config(layer, PresenceConfig::default())
    }

    /// A presence service on `layer`: shared with every process on the layer's backend when
    /// the layer has a [`PresenceStore`], in this process otherwise.
    pub fn with_config(layer: Arc<dyn ChannelLayer>, config: PresenceConfig) -> Self {
        let store = layer.presence_store();
        let shared = Shared {
            layer,
            store,
            config,
            process: sync::process_id().into(),
            state: Mutex::default(),
            wake: Arc::default(),
            cancel: CancellationToken::new(),
            listener: OnceLock::new(),
            last_warning: Mutex::default(),
            started: OnceLock::new(),
            round: tokio::sync::Mutex::new(()),
        };
        Self { shared: Arc::new(shared) }
    }

    /// The service's settings.
    pub fn config(&self) -> &PresenceConfig {
        &self.shared.config
    }

    /// Tracks `channel` in `group` under `key` with `meta`, and makes it a watcher of the
    /// group (it gets the state, then diffs). Tracking the same channel in the same group
    /// again replaces its key and meta. Returns at once: the change reaches watchers with the
    /// next diff. Call [`untrack`](Self::untrack) when the connection ends (in `disconnect`).
    /// Must be called within a Tokio runtime.
    ///
    /// The entry's reference is the channel's name, which layers make unique across
    /// processes. `group`, `channel` and `key` may be `Arc<str>`s the consumer keeps anyway
    /// (`WebsocketContext::shared_channel_name`, say): they are shared, not copied (a `&str`
    /// or a `String` is copied).
    pub fn track(
        &self,
        group: impl IntoArcStr,
        channel: impl IntoArcStr,
        key: impl IntoArcStr,
        meta: serde_json::Value,
    ) -> Result<(), PresenceError> {
        let group = group.into_arc_str();
        validate_group_name(&group)?;
        let key = key.into_arc_str();
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(PresenceError::InvalidKey);
        }
        let entry = Entry::new(key, meta)?;
        self.start();
        let channel = channel.into_arc_str();
        let mut state = self.shared.lock();
        let (name, g) = state.group(group);
        g.track_local(&channel, Arc::new(entry));
        state.mark(&name);
        drop(state);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Makes `channel` a watcher of `group` without tracking it: it gets the state, then
    /// diffs, until [`untrack`](Self::untrack). Must be called within a Tokio runtime.
    pub fn subscribe(&self, group: impl IntoArcStr, channel: impl IntoArcStr) -> Result<(), PresenceError> {
        let group = group.into_arc_str();
        validate_group_name(&group)?;
        self.start();
        let channel = channel.into_arc_str();
        let mut state = self.shared.lock();
        let (name, g) = state.group(group);
        if g.watch(&channel) {
            state.mark(&name);
            drop(state);
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Ends `channel`'s entry in `group` and its watching of the group. A no-op for a channel
    /// that neither tracks nor watches it.
    pub fn untrack(&self, group: &str, channel: &str) {
        let mut state = self.shared.lock();
        let Some(name) = state.groups.get_key_value(group).map(|(name, _)| name.clone()) else { return };
        let g = state.groups.get_mut(&name).expect("just found");
        g.untrack_local(&Arc::from(channel));
        state.mark(&name);
        drop(state);
        self.shared.wake.notify_one();
    }

    /// Who is in `group` now, changes not yet sent to watchers included. A group a connection
    /// of this process watches is answered from this process's copy; another is read from the
    /// shared store (empty without one).
    pub async fn list(&self, group: &str) -> Result<Presences, PresenceError> {
        validate_group_name(group)?;
        if let Some(g) = self.shared.lock().groups.get(group) {
            return Ok(g.current());
        }
        let Some(store) = &self.shared.store else { return Ok(Presences::default()) };
        let entries = store.read(group).await.map_err(PresenceError::Store)?;
        Ok(Presences::from_entries(entries.iter().filter_map(|(r, value)| Some((r.as_str(), Entry::decode(value)?)))))
    }

    /// Sends what is pending now (diffs, states, writes to the store) instead of at the end of
    /// the interval, and waits until it is sent: for a graceful shutdown after the
    /// connections' `disconnect`, so that their entries leave the store and others' views at
    /// once.
    pub async fn flush(&self) {
        self.shared.round(false).await;
    }

    fn start(&self) {
        self.shared.started.get_or_init(|| {
            let weak = Arc::downgrade(&self.shared);
            tokio::spawn(sync::run(weak));
        });
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
