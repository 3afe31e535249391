//! Message history and recovery for groups: every message sent to a group through [`History`]
//! gets a position (an epoch and an offset) and is kept for a window, so that a consumer that
//! comes back with the last position it saw gets exactly what followed it.
//!
//! - The **offset** grows by one with each message sent to the group through [`History`].
//! - The **epoch** names one unbroken history of the group: it changes when the history is
//!   lost (the in-memory layer restarted, Redis flushed, the layer's `flush`), and a position
//!   of another epoch cannot be recovered.
//! - [`History::recover`] returns the messages after a position, in order, or says the
//!   position is gone (older than the window, or of another epoch): "not recovered".
//! - No gap, no duplicate with the live stream: join the group first, then recover, then pass
//!   every live message through the [`LiveFilter`] the recovery returns; it drops those the
//!   recovery already returned.
//!
//! ```
//! use std::sync::Arc;
//! use channels_core::layer::{ChannelLayer, History, HistoryOptions, MemoryHistoryStore, Message};
//!
//! # async fn demo(layer: Arc<dyn ChannelLayer>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let history = History::new(layer.clone(), HistoryOptions::default()).expect("the layer keeps history");
//! let me = layer.new_channel("specific").await?;
//! layer.group_add("chat_lobby", &me).await?;
//! let sent = history.group_send("chat_lobby", Message::new(&serde_json::json!({"type": "chat.message", "text": "hi"}))?).await?;
//! // Later, with the last position the client saw:
//! let recovery = history.recover("chat_lobby", &sent).await?;
//! assert!(recovery.recovered && recovery.messages.is_empty());
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;

use super::{BackendError, ChannelLayer, GroupError, GroupSendReport, Message, MessageError};

/// Where a message stands in its group's history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The history's epoch: changes when the history is lost.
    pub epoch: Arc<str>,
    /// The message's offset: one more than the message before it in the group (the first is 1);
    /// 0 before any message.
    pub offset: u64,
}

impl StreamPosition {
    /// The position `offset` of `epoch`.
    pub fn new(epoch: impl Into<Arc<str>>, offset: u64) -> Self {
        Self { epoch: epoch.into(), offset }
    }
}

/// `EPOCH:OFFSET`, the form [`FromStr`] reads back.
impl fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// Why a position did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPosition(String);

impl fmt::Display for InvalidPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid stream position {:?}: expected EPOCH:OFFSET", self.0)
    }
}

impl std::error::Error for InvalidPosition {}

/// Reads `EPOCH:OFFSET` (the epoch may not be empty; the offset is a decimal integer).
///
/// ```
/// use channels_core::layer::StreamPosition;
/// let p: StreamPosition = "k3x9:42".parse().unwrap();
/// assert_eq!(p, StreamPosition::new("k3x9", 42));
/// assert!("42".parse::<StreamPosition>().is_err());
/// ```
impl FromStr for StreamPosition {
    type Err = InvalidPosition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidPosition(s.chars().take(100).collect());
        let (epoch, offset) = s.rsplit_once(':').ok_or_else(bad)?;
        if epoch.is_empty() || offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Ok(Self { epoch: epoch.into(), offset: offset.parse().map_err(|_| bad())? })
    }
}

/// How much history a group keeps: at most `size` messages, none older than `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryOptions {
    /// Most messages kept per group (100 by default).
    pub size: usize,
    /// How long a message is kept (300 s by default).
    pub window: Duration,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        Self { size: 100, window: Duration::from_secs(300) }
    }
}

impl HistoryOptions {
    /// Keeps at most `size` messages, each for at most `window`.
    pub fn new(size: usize, window: Duration) -> Self {
        Self { size, window }
    }
}

/// What a [`HistoryStore`] has after a position.
#[derive(Debug, Clone)]
pub struct StoredSince {
    /// The history's current position: its epoch and the offset of its last message.
    pub top: StreamPosition,
    /// Whether every message after the asked position is here (same epoch, none trimmed).
    pub complete: bool,
    /// The messages after the asked position, in order, as `(offset, message)`; empty when
    /// not `complete`.
    pub messages: Vec<(u64, Message)>,
}

/// Where a layer keeps group history: what [`ChannelLayer::history_store`] returns.
///
/// The in-memory layer keeps a ring per group ([`MemoryHistoryStore`]); the Redis layers keep
/// a stream per group under the layer's prefix. Messages are opaque to the store.
#[async_trait]
pub trait HistoryStore: Send + Sync + fmt::Debug + 'static {
    /// Appends `message` to `group`'s history, trimmed to `options`, and returns its position.
    /// The offset and the message are written together: a reader never sees one without the
    /// other.
    async fn append(
        &self,
        group: &str,
        message: &Message,
        options: HistoryOptions,
    ) -> Result<StreamPosition, BackendError>;

    /// The messages of `group` after `since`, with the current position. A store may trim
    /// messages older than `window` as it reads.
    async fn since(&self, group: &str, since: &StreamPosition, window: Duration) -> Result<StoredSince, BackendError>;

    /// [`append`](Self::append), unless a message appended to `group` with the same `key` is
    /// remembered: then nothing is written, and the earlier message's position comes back with
    /// `false`. A key is remembered at least as long as its message stays in the history, and
    /// at most the window. Checked and written together, so two appends with one key racing
    /// each other store one message.
    async fn append_once(
        &self,
        group: &str,
        key: &str,
        message: &Message,
        options: HistoryOptions,
    ) -> Result<(StreamPosition, bool), BackendError>;
}

/// A new random epoch: 12 letters and digits.
pub fn new_epoch() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..12).map(|_| rng.sample(rand::distr::Alphanumeric) as char).collect()
}

/// The in-memory [`HistoryStore`]: a ring of messages per group, in this process. A new store
/// (a restarted process) starts a new epoch, and so does [`clear`](Self::clear).
#[derive(Debug)]
pub struct MemoryHistoryStore {
    state: Mutex<MemoryState>,
}

#[derive(Debug)]
struct MemoryState {
    epoch: Arc<str>,
    groups: foldhash::HashMap<String, Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    /// Offset of the last message appended.
    top: u64,
    /// `(offset, kept since, key for `append_once`, message)`, oldest first.
    entries: VecDeque<(u64, Instant, Option<Box<str>>, Message)>,
}

impl Ring {
    fn trim(&mut self, size: usize, window: Duration, now: Instant) {
        while self.entries.len() > size {
            self.entries.pop_front();
        }
        while self.entries.front().is_some_and(|(_, at, _, _)| now.duration_since(*at) > window) {
            self.entries.pop_front();
        }
    }
}

impl Default for MemoryHistoryStore {
    fn default() -> Self {
        Self { state: Mutex::new(MemoryState { epoch: new_epoch().into(), groups: foldhash::HashMap::default() }) }
    }
}

impl MemoryHistoryStore {
    /// An empty store with a new epoch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every group's history and starts a new epoch (what the layer's `flush` does).
    pub fn clear(&self) {
        let mut state = self.lock();
        state.groups.clear();
        state.epoch = new_epoch().into();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(
        &self,
        group: &str,
        key: Option<&str>,
        message: &Message,
        options: HistoryOptions,
    ) -> (StreamPosition, bool) {
        let now = Instant::now();
        let mut state = self.lock();
        let epoch = state.epoch.clone();
        // Looked up before inserted: a send to a known group allocates no key.
        let ring = match state.groups.get_mut(group) {
            Some(ring) => ring,
            None => state.groups.entry(group.to_owned()).or_default(),
        };
        if let Some(key) = key {
            ring.trim(options.size, options.window, now);
            if let Some((offset, ..)) = ring.entries.iter().find(|(_, _, k, _)| k.as_deref() == Some(key)) {
                return (StreamPosition { epoch, offset: *offset }, false);
            }
        }
        ring.top += 1;
        ring.entries.push_back((ring.top, now, key.map(Box::from), message.clone()));
        ring.trim(options.size, options.window, now);
        (StreamPosition { epoch, offset: ring.top }, true)
    }
}

#[async_trait]
impl HistoryStore for MemoryHistoryStore {
    async fn append(
        &self,
        group: &str,
        message: &Message,
        options: HistoryOptions,
    ) -> Result<StreamPosition, BackendError> {
        Ok(self.push(group, None, message, options).0)
    }

    async fn append_once(
        &self,
        group: &str,
        key: &str,
        message: &Message,
        options: HistoryOptions,
    ) -> Result<(StreamPosition, bool), BackendError> {
        Ok(self.push(group, Some(key), message, options))
    }

    async fn since(&self, group: &str, since: &StreamPosition, window: Duration) -> Result<StoredSince, BackendError> {
        let now = Instant::now();
        let mut state = self.lock();
        let epoch = state.epoch.clone();
        let Some(ring) = state.groups.get_mut(group) else {
            let top = StreamPosition { epoch: epoch.clone(), offset: 0 };
            let complete = since.epoch == epoch && since.offset == 0;
            return Ok(StoredSince { top, complete, messages: Vec::new() });
        };
        ring.trim(usize::MAX, window, now);
        let top = StreamPosition { epoch: epoch.clone(), offset: ring.top };
        let entries = ring.entries.iter().map(|(offset, _, _, message)| (*offset, message.clone()));
        Ok(select_since(top, since, entries))
    }
}

/// What a store returns for `since` from the entries it holds (`(offset, message)`, oldest
/// first) and its current position: every store's rule, in one place.
pub fn select_since(
    top: StreamPosition,
    since: &StreamPosition,
    entries: impl IntoIterator<Item = (u64, Message)>,
) -> StoredSince {
    if since.epoch != top.epoch || since.offset > top.offset {
        return StoredSince { top, complete: false, messages: Vec::new() };
    }
    let messages: Vec<(u64, Message)> = entries.into_iter().filter(|(offset, _)| *offset > since.offset).collect();
    let wanted = top.offset - since.offset;
    let complete = messages.len() as u64 == wanted && messages.first().is_none_or(|(o, _)| *o == since.offset + 1);
    if complete { StoredSince { top, complete, messages } } else { StoredSince { top, complete, messages: Vec::new() } }
}

/// Why a [`History`] operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum HistoryError {
    /// The history store failed; a send may not have been stored or delivered.
    Backend(BackendError),
    /// The group send failed after the message was stored.
    Group(GroupError),
    /// The message is not a map to which a position can be added.
    Message(MessageError),
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Backend(e) => write!(f, "history backend error: {e}"),
            Self::Group(e) => e.fmt(f),
            Self::Message(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for HistoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Backend(e) => Some(&**e),
            Self::Group(e) => Some(e),
            Self::Message(e) => Some(e),
        }
    }
}

/// The outcome of [`History::recover`].
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Whether every message after the asked position was found. When false the messages are
    /// lost to this client ("not recovered") and `messages` is empty: the application reloads
    /// its state.
    pub recovered: bool,
    /// The messages after the asked position, in order, each with its `epoch` and `offset`.
    pub messages: Vec<Message>,
    /// The history's position when it was read.
    pub position: StreamPosition,
}

impl Recovery {
    /// A [`StreamCursor`] after this recovery: it drops the live messages the recovery returned
    /// already and fills any later gap.
    pub fn cursor(&self) -> StreamCursor {
        StreamCursor::at(self.position.clone())
    }

    /// The filter for the live messages after this recovery: it drops those at or below the
    /// position read, which the recovery returned already.
    pub fn live_filter(&self) -> LiveFilter {
        LiveFilter { position: self.position.clone() }
    }
}

/// Drops the live messages a [`Recovery`] returned already: those of its epoch at or below its
/// position. Messages without a position pass.
#[derive(Debug, Clone)]
pub struct LiveFilter {
    position: StreamPosition,
}

impl LiveFilter {
    /// Whether `message` is new to the client.
    pub fn admit(&self, message: &Message) -> bool {
        position_ref(message).is_none_or(|p| self.admit_position(p))
    }

    /// Whether a message at `position` is new to the client.
    pub fn admit_position(&self, position: &StreamPosition) -> bool {
        position.epoch != self.position.epoch || position.offset > self.position.offset
    }
}

/// One client's place in a group's stream: it delivers each positioned message once and in
/// offset order, filling a gap from the history.
///
/// Live messages reach a member in offset order when one process sends them, but not always
/// when several do: two processes sending at the same moment may be delivered in either order,
/// and a process that dies between storing a message and sending it leaves a hole. A cursor
/// says, for each live message, whether to deliver it ([`Admit::Deliver`]: the next offset), drop
/// it ([`Admit::Duplicate`]: at or below the last delivered) or first fetch what is missing
/// ([`Admit::Gap`], then [`fill`](Self::fill)). Messages without a position, or of another epoch
/// (the history was lost), are delivered as they come.
///
/// ```
/// use channels_core::layer::{Admit, Message, StreamCursor, StreamPosition, with_position};
///
/// let at = |offset| {
///     let message = Message::new(&serde_json::json!({"type": "chat.message"})).unwrap();
///     with_position(&message, &StreamPosition::new("e", offset)).unwrap()
/// };
/// let mut cursor = StreamCursor::at(StreamPosition::new("e", 4));
/// assert_eq!(cursor.admit(&at(5)), Admit::Deliver);
/// assert_eq!(cursor.admit(&at(5)), Admit::Duplicate);
/// assert_eq!(cursor.admit(&at(7)), Admit::Gap); // offset 6 is missing: `cursor.fill(...)`
/// ```
#[derive(Debug, Clone, Default)]
pub struct StreamCursor {
    last: Option<StreamPosition>,
}

/// What a [`StreamCursor`] makes of a live message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// New and next (or without a position): deliver it.
    Deliver,
    /// Delivered already: drop it.
    Duplicate,
    /// Messages before it are missing: deliver what [`StreamCursor::fill`] returns instead.
    Gap,
}

/// What [`StreamCursor::fill`] returns.
#[derive(Debug, Clone)]
pub struct GapFill {
    /// Whether every missing message was found; when false, some are lost to this client (the
    /// history no longer has them) and the application may tell it to reload.
    pub complete: bool,
    /// The messages to deliver, in order: the missing ones, then the live one.
    pub messages: Vec<Message>,
}

impl StreamCursor {
    /// A cursor that delivers from the first message it is shown.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cursor after `position`: it delivers from the offset after it.
    pub fn at(position: StreamPosition) -> Self {
        Self { last: Some(position) }
    }

    /// The position of the last message delivered (or the start).
    pub fn position(&self) -> Option<&StreamPosition> {
        self.last.as_ref()
    }

    /// What to do with the live `message`; [`Admit::Deliver`] moves the cursor past it.
    #[inline]
    pub fn admit(&mut self, message: &Message) -> Admit {
        match position_ref(message) {
            Some(p) => self.admit_position(p),
            None => Admit::Deliver,
        }
    }

    /// [`admit`](Self::admit) for a message at `position`.
    #[inline]
    pub fn admit_position(&mut self, position: &StreamPosition) -> Admit {
        // The common case first, without a call: the next offset of the same epoch.
        if let Some(last) = &mut self.last
            && position.offset == last.offset.wrapping_add(1)
            && (Arc::ptr_eq(&position.epoch, &last.epoch) || position.epoch == last.epoch)
        {
            last.offset = position.offset;
            return Admit::Deliver;
        }
        self.admit_other(position)
    }

    fn admit_other(&mut self, position: &StreamPosition) -> Admit {
        match &mut self.last {
            Some(last) if last.epoch == position.epoch => {
                if position.offset <= last.offset {
                    Admit::Duplicate
                } else if position.offset == last.offset + 1 {
                    last.offset = position.offset;
                    Admit::Deliver
                } else {
                    Admit::Gap
                }
            }
            _ => {
                self.last = Some(position.clone());
                Admit::Deliver
            }
        }
    }

    /// After [`Admit::Gap`]: reads what `group`'s history holds after the cursor, and returns
    /// it (the live `message` included) to deliver in order; the cursor moves past it all. When
    /// the history no longer has the missing messages, or cannot be read, `message` alone, not
    /// `complete`.
    pub async fn fill(&mut self, history: &History, group: &str, message: &Message) -> GapFill {
        let live = position_ref(message).cloned();
        let recovered = match &self.last {
            Some(last) => history.recover(group, last).await,
            None => return GapFill { complete: true, messages: vec![message.clone()] },
        };
        match recovered {
            Ok(r) if r.recovered => {
                let mut messages = r.messages;
                let mut last = r.position;
                // Stored before it was sent, the live message is in what was read; if not, after.
                if let Some(l) = live.filter(|l| l.epoch == last.epoch && l.offset > last.offset) {
                    messages.push(message.clone());
                    last = l;
                }
                self.last = Some(last);
                GapFill { complete: true, messages }
            }
            other => {
                if let Err(e) = other {
                    tracing::warn!(error = %e, %group, "could not read the history to fill a gap");
                }
                self.last = live;
                GapFill { complete: false, messages: vec![message.clone()] }
            }
        }
    }
}

/// The `epoch` and `offset` keys of a message sent through [`History`], if it has both.
pub fn position_of(message: &Message) -> Option<StreamPosition> {
    position_ref(message).cloned()
}

/// [`position_of`] borrowed: read once per message and shared by its clones (every member's
/// copy of a group send).
#[inline]
fn position_ref(message: &Message) -> Option<&StreamPosition> {
    if let Some(read) = message.position_cell().get() {
        return read.as_ref();
    }
    read_position(message)
}

fn read_position(message: &Message) -> Option<&StreamPosition> {
    #[derive(Deserialize)]
    struct Stamped {
        epoch: Option<String>,
        offset: Option<u64>,
    }
    message
        .position_cell()
        .get_or_init(|| {
            let s: Stamped = message.decode().ok()?;
            Some(StreamPosition { epoch: s.epoch?.into(), offset: s.offset? })
        })
        .as_ref()
}

/// `message` with `"epoch"` and `"offset"` keys set to `position` (replacing any already there).
pub fn with_position(message: &Message, position: &StreamPosition) -> Result<Message, MessageError> {
    stamp(message, position.clone())
}

/// [`with_position`], keeping `position` in the stamped message (no copy of the epoch).
fn stamp(message: &Message, position: StreamPosition) -> Result<Message, MessageError> {
    let stamped = if message.has_position_keys() {
        let rmpv::Value::Map(mut entries) = message.to_value()? else {
            return Err(MessageError::NotAMap);
        };
        entries.retain(|(k, _)| !matches!(k.as_str(), Some("epoch" | "offset")));
        entries.push((rmpv::Value::from("epoch"), rmpv::Value::from(&*position.epoch)));
        entries.push((rmpv::Value::from("offset"), rmpv::Value::from(position.offset)));
        let mut bytes = Vec::with_capacity(message.as_bytes().len() + position.epoch.len() + 24);
        rmpv::encode::write_value(&mut bytes, &rmpv::Value::Map(entries))
            .map_err(|e| MessageError::Codec(e.to_string()))?;
        Message::from_msgpack(bytes)?
    } else {
        // The common case, a message without a position yet: the two keys go at the end of
        // the map as it is, without decoding it.
        message.with_entries_appended(2, position.epoch.len() + 24, |out| {
            let codec = |e: rmp::encode::ValueWriteError| MessageError::Codec(e.to_string());
            rmp::encode::write_str(out, "epoch").map_err(codec)?;
            rmp::encode::write_str(out, &position.epoch).map_err(codec)?;
            rmp::encode::write_str(out, "offset").map_err(codec)?;
            rmp::encode::write_uint(out, position.offset).map_err(codec)?;
            Ok(())
        })?
    };
    let _ = stamped.position_cell().set(Some(position));
    Ok(stamped)
}

/// Group sends with history, and recovery, on a layer that keeps history (see the module).
///
/// The sends of one process to one group are stored and delivered in offset order. Sends to
/// one group from several processes get distinct increasing offsets, but two sent at the same
/// moment from two processes may be delivered live in either order.
pub struct History {
    layer: Arc<dyn ChannelLayer>,
    store: Arc<dyn HistoryStore>,
    options: HistoryOptions,
    /// Each group's send-order lock. Kept while unused (a send to a known group allocates
    /// nothing); the unused ones are dropped when the map grows past [`ORDER_LOCKS_KEPT`].
    order: Mutex<foldhash::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// How many groups' send-order locks [`History`] keeps before it drops the unused ones.
const ORDER_LOCKS_KEPT: usize = 1024;

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History").field("store", &self.store).field("options", &self.options).finish()
    }
}

impl History {
    /// History on `layer` with `options`; `None` when the layer keeps no history.
    pub fn new(layer: Arc<dyn ChannelLayer>, options: HistoryOptions) -> Option<Self> {
        let store = layer.history_store()?;
        Some(Self { layer, store, options, order: Mutex::default() })
    }

    /// The options given.
    pub fn options(&self) -> HistoryOptions {
        self.options
    }

    pub(crate) fn group_lock(&self, group: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut order = self.order.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(lock) = order.get(group) {
            return lock.clone();
        }
        if order.len() >= ORDER_LOCKS_KEPT {
            // Only the map holds an unused lock.
            order.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        order.insert(group.to_owned(), lock.clone());
        lock
    }

    /// Stores `message` in `group`'s history and sends it to the group with its position
    /// (`"epoch"` and `"offset"` keys added); returns the position.
    ///
    /// # Errors
    /// The store's or the group send's failure, or a message that is not a map.
    pub async fn group_send(&self, group: &str, message: Message) -> Result<StreamPosition, HistoryError> {
        let lock = self.group_lock(group);
        let _ordered = lock.lock().await;
        let position = self.store.append(group, &message, self.options).await.map_err(HistoryError::Backend)?;
        let stamped = with_position(&message, &position).map_err(HistoryError::Message)?;
        self.layer.group_send(group, stamped).await.map_err(HistoryError::Group)?;
        Ok(position)
    }

    /// [`group_send`](Self::group_send) once per `key`: when a message sent with the same
    /// `key` is still in `group`'s history (a client resending what it could not confirm),
    /// nothing is stored or sent, and the earlier message's position comes back with `false`.
    ///
    /// # Errors
    /// As [`group_send`](Self::group_send).
    pub async fn group_send_once(
        &self,
        group: &str,
        key: &str,
        message: Message,
    ) -> Result<(StreamPosition, bool), HistoryError> {
        let lock = self.group_lock(group);
        let _ordered = lock.lock().await;
        let (position, new) =
            self.store.append_once(group, key, &message, self.options).await.map_err(HistoryError::Backend)?;
        if new {
            let stamped = with_position(&message, &position).map_err(HistoryError::Message)?;
            self.layer.group_send(group, stamped).await.map_err(HistoryError::Group)?;
        }
        Ok((position, new))
    }

    /// The messages of `group` after `since`, each with its position, or "not recovered".
    /// Join the group before, and filter the live messages after with
    /// [`Recovery::live_filter`].
    ///
    /// # Errors
    /// The store's failure.
    pub async fn recover(&self, group: &str, since: &StreamPosition) -> Result<Recovery, HistoryError> {
        let stored = self.store.since(group, since, self.options.window).await.map_err(HistoryError::Backend)?;
        let mut messages = Vec::with_capacity(stored.messages.len());
        for (offset, message) in &stored.messages {
            let position = StreamPosition { epoch: stored.top.epoch.clone(), offset: *offset };
            messages.push(stamp(message, position).map_err(HistoryError::Message)?);
        }
        Ok(Recovery { recovered: stored.complete, messages, position: stored.top })
    }

    /// `group`'s current position: where a new client starts.
    ///
    /// # Errors
    /// The store's failure.
    pub async fn position(&self, group: &str) -> Result<StreamPosition, HistoryError> {
        let none = StreamPosition { epoch: "".into(), offset: 0 };
        Ok(self.store.since(group, &none, self.options.window).await.map_err(HistoryError::Backend)?.top)
    }
}

/// A layer that sends with history: every group send to a group `keep` selects (through
/// `group_send`, `group_send_many` or a connection's queued sends) is stored and gets its
/// position, as [`History::group_send`] does; everything else goes to the wrapped layer as it
/// is. A connection's queued sends keep their batches: each batch is stamped in order and sent
/// as one, so history costs the live path one store write per message and nothing per member.
///
/// ```
/// use std::sync::Arc;
/// use channels_core::layer::{ChannelLayer, HistoryLayer, HistoryOptions, Message, position_of};
///
/// # async fn demo(inner: Arc<dyn ChannelLayer>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let layer = HistoryLayer::wrap(inner, HistoryOptions::default(), |group| group.starts_with("chat_")).expect("history");
/// let history = layer.history();
/// let layer: Arc<dyn ChannelLayer> = Arc::new(layer);
/// let me = layer.new_channel("specific").await?;
/// layer.group_add("chat_lobby", &me).await?;
/// layer.group_send("chat_lobby", Message::new(&serde_json::json!({"type": "chat.message"}))?).await?;
/// let got = layer.receive(&me).await?;
/// assert_eq!(position_of(&got), Some(history.position("chat_lobby").await?));
/// # Ok(()) }
/// ```
pub struct HistoryLayer {
    inner: Arc<dyn ChannelLayer>,
    history: Arc<History>,
    keep: Box<dyn Fn(&str) -> bool + Send + Sync>,
    key_of: Option<KeyOf>,
}

/// What [`HistoryLayer::dedupe_by`] takes.
type KeyOf = Box<dyn Fn(&str, &Message) -> Option<String> + Send + Sync>;

impl fmt::Debug for HistoryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryLayer").field("history", &self.history).finish_non_exhaustive()
    }
}

impl HistoryLayer {
    /// `inner` with history for the groups `keep` selects; `None` when `inner` keeps no
    /// history.
    pub fn wrap(
        inner: Arc<dyn ChannelLayer>,
        options: HistoryOptions,
        keep: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Option<Self> {
        let history = Arc::new(History::new(inner.clone(), options)?);
        Some(Self { inner, history, keep: Box::new(keep), key_of: None })
    }

    /// Stores and sends a message once per key: a send to a kept group for which `key_of`
    /// (given the group and the message) returns a key is skipped while a message with that
    /// key is still in the group's history (see [`HistoryStore::append_once`]); its report is
    /// then empty. Clients that resend what they could not confirm after a reconnect, each
    /// message with an ID of its own, so get every message stored and delivered once.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use channels_core::layer::{ChannelLayer, HistoryLayer, HistoryOptions, Message};
    ///
    /// # async fn demo(inner: Arc<dyn ChannelLayer>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// #[derive(serde::Deserialize)]
    /// struct Id { id: Option<String> }
    /// let layer = HistoryLayer::wrap(inner, HistoryOptions::default(), |_| true)
    ///     .expect("history")
    ///     .dedupe_by(|_group, message| message.decode::<Id>().ok()?.id);
    /// let history = layer.history();
    /// let message = Message::new(&serde_json::json!({"type": "chat.message", "id": "a1"}))?;
    /// layer.group_send("room", message.clone()).await?;
    /// layer.group_send("room", message).await?; // a resend: not stored, not sent
    /// assert_eq!(history.position("room").await?.offset, 1);
    /// # Ok(()) }
    /// ```
    pub fn dedupe_by(mut self, key_of: impl Fn(&str, &Message) -> Option<String> + Send + Sync + 'static) -> Self {
        self.key_of = Some(Box::new(key_of));
        self
    }

    /// The history, for [`History::recover`].
    pub fn history(&self) -> Arc<History> {
        self.history.clone()
    }

    /// Stamps the sends `keep` selects, in order, with their groups locked, then sends the
    /// batch through `inner` as one.
    async fn send_batch(
        &self,
        sends: &[(String, Message)],
        channel: Option<(&str, usize)>,
    ) -> Vec<Result<GroupSendReport, GroupError>> {
        let mut groups: Vec<&str> = sends.iter().map(|(g, _)| g.as_str()).filter(|g| (self.keep)(g)).collect();
        if groups.is_empty() {
            return match channel {
                Some((channel, echoed)) => self.inner.group_send_many_echoed(sends, channel, echoed).await,
                None => self.inner.group_send_many(sends).await,
            };
        }
        groups.sort_unstable();
        groups.dedup();
        let locks: Vec<_> = groups.iter().map(|g| self.history.group_lock(g)).collect();
        let mut _held = Vec::with_capacity(locks.len());
        for lock in &locks {
            // Free almost always: taken without a wait, which would spend the task's
            // scheduling budget and could send the batch later than the messages it follows.
            _held.push(match lock.try_lock() {
                Ok(held) => held,
                Err(_) => lock.lock().await,
            });
        }
        let mut reports: Vec<Option<Result<GroupSendReport, GroupError>>> = Vec::with_capacity(sends.len());
        let mut batch = Vec::with_capacity(sends.len());
        for (group, message) in sends {
            if !(self.keep)(group) {
                batch.push((group.clone(), message.clone()));
                reports.push(None);
                continue;
            }
            let key = self.key_of.as_ref().and_then(|key_of| key_of(group, message));
            let stored = match &key {
                Some(key) => self.history.store.append_once(group, key, message, self.history.options).await,
                None => self.history.store.append(group, message, self.history.options).await.map(|p| (p, true)),
            };
            match stored.map_err(GroupError::Backend).and_then(|(position, new)| {
                if new {
                    stamp(message, position).map(Some).map_err(|e| GroupError::Backend(Box::new(e)))
                } else {
                    Ok(None)
                }
            }) {
                Ok(None) => reports.push(Some(Ok(GroupSendReport::default()))),
                Ok(Some(stamped)) => {
                    batch.push((group.clone(), stamped));
                    reports.push(None);
                }
                Err(e) => reports.push(Some(Err(e))),
            }
        }
        let sent = match channel {
            Some((channel, echoed)) => self.inner.group_send_many_echoed(&batch, channel, echoed).await,
            None => self.inner.group_send_many(&batch).await,
        };
        let mut sent = sent.into_iter();
        reports
            .into_iter()
            .map(|r| r.unwrap_or_else(|| sent.next().unwrap_or_else(|| Ok(GroupSendReport::default()))))
            .collect()
    }
}

#[async_trait]
impl ChannelLayer for HistoryLayer {
    async fn new_channel(&self, prefix: &str) -> Result<String, super::NewChannelError> {
        self.inner.new_channel(prefix).await
    }

    async fn send(&self, channel: &str, message: Message) -> Result<(), super::SendError> {
        self.inner.send(channel, message).await
    }

    async fn receive(&self, channel: &str) -> Result<Message, super::ReceiveError> {
        self.inner.receive(channel).await
    }

    fn try_receive(&self, channel: &str) -> Option<Message> {
        self.inner.try_receive(channel)
    }

    fn receiver(self: Arc<Self>, channel: Arc<str>) -> Box<dyn super::ChannelReceiver> {
        self.inner.clone().receiver(channel)
    }

    async fn group_add(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        self.inner.group_add(group, channel).await
    }

    async fn group_discard(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        self.inner.group_discard(group, channel).await
    }

    async fn group_discard_many(&self, memberships: &[(String, String)]) -> Result<(), GroupError> {
        self.inner.group_discard_many(memberships).await
    }

    async fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, GroupError> {
        if !(self.keep)(group) {
            return self.inner.group_send(group, message).await;
        }
        let one = [(group.to_owned(), message)];
        self.send_batch(&one, None).await.pop().unwrap_or_else(|| Ok(GroupSendReport::default()))
    }

    async fn group_send_many(&self, sends: &[(String, Message)]) -> Vec<Result<GroupSendReport, GroupError>> {
        self.send_batch(sends, None).await
    }

    /// Never for a group with history: the sender's copy must carry its position too.
    fn group_send_echo(&self, group: &str, channel: &str, message: &Message) -> bool {
        !(self.keep)(group) && self.inner.group_send_echo(group, channel, message)
    }

    async fn group_send_many_echoed(
        &self,
        sends: &[(String, Message)],
        channel: &str,
        echoed: usize,
    ) -> Vec<Result<GroupSendReport, GroupError>> {
        self.send_batch(sends, Some((channel, echoed))).await
    }

    fn batch_linger(&self) -> Duration {
        self.inner.batch_linger()
    }

    async fn flush(&self) -> Result<(), super::FlushError> {
        self.inner.flush().await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.inner.ping().await
    }

    async fn forget_channel(&self, channel: &str) {
        self.inner.forget_channel(channel).await
    }

    fn presence_store(&self) -> Option<Arc<dyn super::PresenceStore>> {
        self.inner.presence_store()
    }

    fn history_store(&self) -> Option<Arc<dyn HistoryStore>> {
        self.inner.history_store()
    }

    fn config(&self) -> &super::LayerConfig {
        self.inner.config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u64) -> Message {
        Message::new(&serde_json::json!({"type": "t", "n": n})).unwrap()
    }

    #[test]
    fn positions_parse_and_print() {
        let p = StreamPosition::new("a:b", 7);
        assert_eq!(p.to_string().parse::<StreamPosition>().unwrap(), p);
        for bad in ["", ":1", "e:", "e:-1", "e:1x", "e", "e:99999999999999999999999"] {
            assert!(bad.parse::<StreamPosition>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_position_is_added_to_a_message() {
        let m = with_position(&msg(1), &StreamPosition::new("e", 3)).unwrap();
        assert_eq!(position_of(&m), Some(StreamPosition::new("e", 3)));
        let again = with_position(&m, &StreamPosition::new("f", 4)).unwrap();
        let v: serde_json::Value = again.decode().unwrap();
        assert_eq!(v, serde_json::json!({"type": "t", "n": 1, "epoch": "f", "offset": 4}));
    }

    #[test]
    fn a_position_goes_at_the_end_of_maps_of_every_size() {
        for keys in [0, 12, 13, 14, 15, 16, 70_000] {
            let mut map: serde_json::Map<String, serde_json::Value> =
                (0..keys).map(|k| (format!("k{k}"), serde_json::Value::from(k))).collect();
            map.insert("type".into(), "t".into());
            let m = with_position(&Message::new(&map).unwrap(), &StreamPosition::new("e", 300)).unwrap();
            map.insert("epoch".into(), "e".into());
            map.insert("offset".into(), 300.into());
            let back: serde_json::Map<String, serde_json::Value> = m.decode().unwrap();
            assert_eq!(back, map, "{keys} keys");
            assert_eq!(m.message_type(), "t");
        }
    }

    #[test]
    fn a_text_that_names_the_keys_keeps_one_of_each() {
        let said = serde_json::json!({"type": "t", "text": "epoch", "note": "offset"});
        let m = with_position(&Message::new(&said).unwrap(), &StreamPosition::new("e", 1)).unwrap();
        let v: serde_json::Value = m.decode().unwrap();
        assert_eq!(v, serde_json::json!({"type": "t", "text": "epoch", "note": "offset", "epoch": "e", "offset": 1}));
    }

    #[test]
    fn a_position_key_in_a_longer_string_encoding_is_replaced() {
        // {"type": "t", "epoch": "x"}, the key "epoch" as a str8 rather than a fixstr.
        let mut bytes = vec![0x82, 0xa4];
        bytes.extend_from_slice(b"type");
        bytes.extend_from_slice(&[0xa1, b't', 0xd9, 5]);
        bytes.extend_from_slice(b"epoch");
        bytes.extend_from_slice(&[0xa1, b'x']);
        let m = with_position(&Message::from_msgpack(bytes).unwrap(), &StreamPosition::new("e", 2)).unwrap();
        let rmpv::Value::Map(entries) = m.to_value().unwrap() else { panic!("not a map") };
        let keys: Vec<_> = entries.iter().map(|(k, _)| k.as_str().unwrap_or_default()).collect();
        assert_eq!(keys, ["type", "epoch", "offset"]);
        let v: serde_json::Value = m.decode().unwrap();
        assert_eq!(v, serde_json::json!({"type": "t", "epoch": "e", "offset": 2}));
    }

    #[tokio::test]
    async fn the_ring_keeps_its_size_and_window() {
        let store = MemoryHistoryStore::new();
        let opts = HistoryOptions::new(3, Duration::from_secs(60));
        for n in 1..=5 {
            store.append("g", &msg(n), opts).await.unwrap();
        }
        let epoch = store.since("g", &StreamPosition::new("", 0), opts.window).await.unwrap().top.epoch;
        let got = store.since("g", &StreamPosition::new(epoch.clone(), 2), opts.window).await.unwrap();
        assert_eq!(got.messages.iter().map(|(o, _)| *o).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(!store.since("g", &StreamPosition::new(epoch.clone(), 1), opts.window).await.unwrap().complete);
        let short = store.since("g", &StreamPosition::new(epoch, 2), Duration::ZERO).await.unwrap();
        assert!(!short.complete);
    }
}
