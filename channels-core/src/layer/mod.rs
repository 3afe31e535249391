//! The channel layer: how consumers, processes and workers send each other messages.
//!
//! A layer moves [`Message`]s between *channels* (one per consumer, or a named worker channel)
//! and fans them out to *groups* of channels. The trait is backend-independent; pick a backend
//! by configuration (`memory://`, `redis://...`, `redis+pubsub://...`) and no consumer code
//! changes.

mod config;
mod drops;
mod history;
mod json;
mod members;
mod message;
mod names;
mod presence;
mod registry;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

pub use config::{ConfigError, LayerConfig, LayerUrl, redact_url};
pub use drops::DroppedMessages;
pub use history::{
    Admit, GapFill, History, HistoryError, HistoryLayer, HistoryOptions, HistoryStore, InvalidPosition, LiveFilter,
    MemoryHistoryStore, Recovery, StoredSince, StreamCursor, StreamPosition, new_epoch, position_of, select_since,
    with_position,
};
pub use members::Members;
pub use message::{MAX_NESTING_DEPTH, Message, MessageError, RESERVED_CHANNEL_KEY};
pub use names::{InvalidName, MAX_NAME_LENGTH, non_local_name, validate_channel_name, validate_group_name};
pub use presence::PresenceStore;
pub use registry::{ChannelLayers, DEFAULT_ALIAS};

/// A boxed error from a layer's backend (a lost Redis connection, say).
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// Why [`ChannelLayer::send`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SendError {
    /// The channel name breaks the naming rules.
    InvalidName(InvalidName),
    /// The channel already holds its capacity of messages (Django's `ChannelFull`).
    ChannelFull {
        /// The full channel.
        channel: String,
    },
    /// The backend failed; the message may not have been queued.
    Backend(BackendError),
}

/// Why [`ChannelLayer::receive`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The channel name breaks the naming rules.
    InvalidName(InvalidName),
    /// The backend failed.
    Backend(BackendError),
}

/// Why a group operation (`group_add`, `group_discard`, `group_send`) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum GroupError {
    /// The group or channel name breaks the naming rules.
    InvalidName(InvalidName),
    /// The backend failed; the operation may not have taken effect.
    Backend(BackendError),
}

/// Why [`ChannelLayer::new_channel`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum NewChannelError {
    /// The prefix makes a channel name that breaks the naming rules.
    InvalidName(InvalidName),
    /// The backend failed; no channel was made.
    Backend(BackendError),
}

/// Why [`ChannelLayer::flush`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FlushError {
    /// The backend failed; some messages and groups may be left.
    Backend(BackendError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName(e) => e.fmt(f),
            Self::ChannelFull { channel } => write!(f, "channel {channel:?} is full"),
            Self::Backend(e) => write!(f, "channel layer backend error: {e}"),
        }
    }
}

impl fmt::Display for ReceiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName(e) => e.fmt(f),
            Self::Backend(e) => write!(f, "channel layer backend error: {e}"),
        }
    }
}

impl fmt::Display for GroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName(e) => e.fmt(f),
            Self::Backend(e) => write!(f, "channel layer backend error: {e}"),
        }
    }
}

impl fmt::Display for NewChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName(e) => e.fmt(f),
            Self::Backend(e) => write!(f, "channel layer backend error: {e}"),
        }
    }
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Backend(e) => write!(f, "channel layer backend error: {e}"),
        }
    }
}

/// `source()` of a layer error is the error it wraps (the bad name, or the backend's error),
/// so a caller can walk down to the cause and downcast it.
macro_rules! name_or_backend_error {
    ($($ty:ident),*) => {$(
        impl std::error::Error for $ty {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                match self {
                    Self::InvalidName(e) => Some(e),
                    Self::Backend(e) => Some(&**e),
                }
            }
        }
        impl From<InvalidName> for $ty {
            fn from(e: InvalidName) -> Self {
                Self::InvalidName(e)
            }
        }
    )*};
}
name_or_backend_error!(ReceiveError, GroupError, NewChannelError);

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidName(e) => Some(e),
            Self::ChannelFull { .. } => None,
            Self::Backend(e) => Some(&**e),
        }
    }
}

impl From<InvalidName> for SendError {
    fn from(e: InvalidName) -> Self {
        Self::InvalidName(e)
    }
}

impl std::error::Error for FlushError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Backend(e) => Some(&**e),
        }
    }
}

/// What a [`ChannelLayer::group_send`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupSendReport {
    /// Queues the message was put on.
    pub queued: usize,
    /// Queues that were full, so the message was dropped for them (Django drops silently;
    /// we count and log it).
    pub dropped_full: usize,
}

impl GroupSendReport {
    /// A report of `queued` deliveries and `dropped_full` drops.
    pub fn new(queued: usize, dropped_full: usize) -> Self {
        Self { queued, dropped_full }
    }
}

/// Receives on one channel again and again: what [`ChannelLayer::receiver`] returns. The same
/// semantics as the layer's `receive` and `try_receive` on that channel; cancel-safe.
pub trait ChannelReceiver: Send + Sync {
    /// Waits for the next message, as [`ChannelLayer::receive`].
    fn receive(&self) -> BoxFuture<'_, Result<Message, ReceiveError>>;

    /// The next message if one is waiting already, as [`ChannelLayer::try_receive`].
    fn try_receive(&self) -> Option<Message>;

    /// Appends to `into`, in order, up to `max` messages that are waiting already: what `max`
    /// calls of [`Self::try_receive`] would take. A backend takes them at once where it can
    /// (one lock, one look at the clock); the server drains a burst with it.
    fn try_receive_many(&self, max: usize, into: &mut Vec<Message>) {
        into.extend(std::iter::from_fn(|| self.try_receive()).take(max));
    }
}

/// The default receiver: the layer's own methods, by name.
struct ByName<L: ?Sized> {
    layer: Arc<L>,
    channel: Arc<str>,
}

impl<L: ChannelLayer + ?Sized> ChannelReceiver for ByName<L> {
    fn receive(&self) -> BoxFuture<'_, Result<Message, ReceiveError>> {
        self.layer.receive(&self.channel)
    }

    fn try_receive(&self) -> Option<Message> {
        self.layer.try_receive(&self.channel)
    }
}

/// A channel layer backend.
///
/// Semantics follow Django Channels' channel layer spec: channels are FIFO with at-most-once
/// delivery; `send` fails with [`SendError::ChannelFull`] when a channel holds its capacity;
/// `group_send` never fails for a full member, it drops the message for that member and counts
/// it; messages expire after `expiry`, group memberships after `group_expiry`. The same
/// semantics suite (`channels_core::testing::layer_suite`, built with the `testing` feature)
/// runs against every backend.
///
/// Every method is cancel-safe: dropping a pending `receive` loses no message.
#[async_trait]
pub trait ChannelLayer: Send + Sync + 'static {
    /// Returns a new, unique, process-specific channel name starting with `prefix` (Django's
    /// default prefix is `"specific"`).
    async fn new_channel(&self, prefix: &str) -> Result<String, NewChannelError>;

    /// Puts `message` on `channel`.
    async fn send(&self, channel: &str, message: Message) -> Result<(), SendError>;

    /// Waits for the next message on `channel`.
    async fn receive(&self, channel: &str) -> Result<Message, ReceiveError>;

    /// The next message on `channel` if one is waiting already, without waiting; `None` when
    /// none is (or the channel cannot be read: `receive` then says why).
    ///
    /// The server drains a connection's waiting messages with it, to write a burst with one
    /// system call. The default polls `receive` once; a backend overrides it to skip making
    /// a future per message.
    fn try_receive(&self, channel: &str) -> Option<Message> {
        use futures_util::FutureExt;
        self.receive(channel).now_or_never().and_then(Result::ok)
    }

    /// A receiver for `channel`, for code that receives on one channel again and again, as a
    /// connection does on its own channel. The default receives by name; a backend overrides
    /// it to find the channel faster (the in-memory layer's receiver remembers where the
    /// channel's queue is instead of hashing its name for every message).
    fn receiver(self: Arc<Self>, channel: Arc<str>) -> Box<dyn ChannelReceiver> {
        Box::new(ByName { layer: self, channel })
    }

    /// Adds `channel` to `group` (idempotent; refreshes the membership's expiry).
    async fn group_add(&self, group: &str, channel: &str) -> Result<(), GroupError>;

    /// Removes `channel` from `group` (a no-op when it is not a member).
    async fn group_discard(&self, group: &str, channel: &str) -> Result<(), GroupError>;

    /// Removes each `(group, channel)` membership (a no-op for those that do not exist).
    ///
    /// The server calls it when it shuts down, for the groups of every connection closing then:
    /// thousands of connections leave their groups together instead of with one exchange each.
    /// A backend removes them in bulk where it can (the Redis layer: one pipeline per shard
    /// holding the groups); the default discards them one by one.
    ///
    /// # Errors
    /// The first failure; the memberships after it are still tried, and may be gone.
    ///
    /// ```
    /// use channels_core::layer::ChannelLayer;
    ///
    /// # async fn demo(layer: &dyn ChannelLayer) -> Result<(), channels_core::layer::GroupError> {
    /// let leaving = vec![("chat_lobby".to_owned(), "specific.a!1".to_owned())];
    /// layer.group_discard_many(&leaving).await?;
    /// # Ok(()) }
    /// ```
    async fn group_discard_many(&self, memberships: &[(String, String)]) -> Result<(), GroupError> {
        let mut first_error = None;
        for (group, channel) in memberships {
            if let Err(e) = self.group_discard(group, channel).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sends `message` to every member of `group`. The message is encoded once by the caller;
    /// a backend shares it between members (the Redis layer writes one payload per receiving
    /// process).
    async fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, GroupError>;

    /// Does a `group_send` for each `(group, message)`, in order, and reports on each.
    ///
    /// Messages to one group arrive in the order given. A backend may carry the whole batch in
    /// one exchange (the Redis layer does: one round trip for the lot instead of two per send);
    /// the default sends them one by one. This is what
    /// [`WebsocketContext::group_send_nowait`](crate::context::WebsocketContext::group_send_nowait)
    /// uses to send a connection's queued messages.
    async fn group_send_many(&self, sends: &[(String, Message)]) -> Vec<Result<GroupSendReport, GroupError>> {
        let mut reports = Vec::with_capacity(sends.len());
        for (group, message) in sends {
            reports.push(self.group_send(group, message.clone()).await);
        }
        reports
    }

    /// Puts the sender's own copy of a group message on its channel at once, when the layer
    /// can: true if it did. [`WebsocketContext::group_send_nowait`](crate::context::WebsocketContext::group_send_nowait)
    /// calls it with the connection's own `channel` before queueing the send, and the queued
    /// sends then go through [`group_send_many_echoed`](Self::group_send_many_echoed), which
    /// does not deliver `channel` the copies it got here.
    ///
    /// It is for backends whose group sends wait for a round trip: over Redis a connection's
    /// client would otherwise see its own message only after its group is read from Redis, and
    /// a client that waits for that (a chat window, or a sender with a window of messages in
    /// flight) sends its next ones that much later, so every member gets fewer messages per
    /// wake-up. A backend answers from what it knows without that round trip (the Redis layer:
    /// `channel` joined `group` in this process, the membership has not expired or been found
    /// missing from Redis since, and the last group send did not fail). The default returns
    /// false: the in-memory layer's group sends do not wait. A backend that returns true must
    /// implement [`group_send_many_echoed`](Self::group_send_many_echoed); the semantics suite
    /// checks it (`testing::layer_suite::an_echoing_layer_leaves_the_echoed_copies_out_of_the_batch`, with the `testing` feature).
    ///
    /// What a connection does with its queued sends, in short:
    ///
    /// ```
    /// use channels_core::layer::{ChannelLayer, GroupError, GroupSendReport, Message};
    ///
    /// async fn send_as(
    ///     layer: &dyn ChannelLayer,
    ///     me: &str,
    ///     sends: &[(String, Message)],
    /// ) -> Vec<Result<GroupSendReport, GroupError>> {
    ///     // Each copy for `me` now, where the layer can, up to the first it cannot (so that
    ///     // `me` gets them in order); the rest of each send after.
    ///     let echoed = sends.iter().take_while(|(group, message)| layer.group_send_echo(group, me, message)).count();
    ///     layer.group_send_many_echoed(sends, me, echoed).await
    /// }
    /// ```
    fn group_send_echo(&self, _group: &str, _channel: &str, _message: &Message) -> bool {
        false
    }

    /// [`group_send_many`](Self::group_send_many) for the sends of the connection whose channel
    /// is `channel`, the first `echoed` of which [`group_send_echo`](Self::group_send_echo) put
    /// on `channel` already: `channel` does not get those again (their reports count it as
    /// queued). The default, for backends that never echo, is `group_send_many`.
    async fn group_send_many_echoed(
        &self,
        sends: &[(String, Message)],
        channel: &str,
        echoed: usize,
    ) -> Vec<Result<GroupSendReport, GroupError>> {
        let _ = (channel, echoed);
        self.group_send_many(sends).await
    }

    /// How long a connection's batch of queued group sends waits when it would start less
    /// than this after the connection's previous batch was done: a connection that sends a
    /// stream of messages then sends them in fewer, larger batches, and each member gets
    /// more of them per wake-up, for at most this much more latency. A batch after a pause
    /// starts at once, and an awaited group send or a connection closing never waits.
    ///
    /// It is for backends where each batch costs a round trip and wakes every member once
    /// (the Redis layer's `RedisConfig::send_linger`, 1 ms by default). The default, zero,
    /// starts each batch as soon as the previous one is done: the in-memory layer's batches
    /// cost no round trip.
    ///
    /// What a connection does before each batch of its queued sends, in short:
    ///
    /// ```
    /// use channels_core::layer::ChannelLayer;
    /// use tokio::time::Instant;
    ///
    /// async fn before_next_batch(layer: &dyn ChannelLayer, previous_done: Instant) {
    ///     // Sends queued during the wait go in the batch too.
    ///     tokio::time::sleep_until(previous_done + layer.batch_linger()).await;
    /// }
    /// ```
    fn batch_linger(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Drops every message and group.
    async fn flush(&self) -> Result<(), FlushError>;

    /// Checks that the backend answers: the server asks every layer once at start-up and warns
    /// about each that does not (see [`crate::Server::serve`]). A backend with something to
    /// reach overrides it (the Redis layers send a `PING` to every host); the default, for one
    /// with nothing to reach (in memory), answers at once.
    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Releases whatever the layer holds for `channel` once its consumer is gone. Optional;
    /// memberships still expire on their own.
    async fn forget_channel(&self, _channel: &str) {}

    /// Where presence (`channels::presence`) shares its entries between processes on this backend; `None`
    /// (the default) for a backend that serves one process, where presence stays in the
    /// process.
    fn presence_store(&self) -> Option<Arc<dyn PresenceStore>> {
        None
    }

    /// Where group history is kept for recovery (see [`History`]); `None` (the default) for a
    /// backend that keeps none. The in-memory layer keeps a ring per group in the process; the
    /// Redis layers a stream per group under their prefix.
    fn history_store(&self) -> Option<Arc<dyn HistoryStore>> {
        None
    }

    /// The layer's settings.
    fn config(&self) -> &LayerConfig;
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn invalid_name() -> InvalidName {
        validate_channel_name("has space").expect_err("a space is not allowed")
    }

    fn backend_error() -> BackendError {
        Box::new(std::io::Error::other("connection refused"))
    }

    /// The cause at the bottom of `error`'s chain, found by walking `source()`.
    fn root_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> &'a (dyn std::error::Error + 'static) {
        let mut cause = error;
        while let Some(next) = cause.source() {
            cause = next;
        }
        cause
    }

    #[test]
    fn a_layer_error_from_the_backend_has_the_backend_error_as_its_source() {
        let errors: [Box<dyn std::error::Error>; 5] = [
            Box::new(SendError::Backend(backend_error())),
            Box::new(ReceiveError::Backend(backend_error())),
            Box::new(GroupError::Backend(backend_error())),
            Box::new(NewChannelError::Backend(backend_error())),
            Box::new(FlushError::Backend(backend_error())),
        ];
        for error in &errors {
            let cause = root_cause(&**error).downcast_ref::<std::io::Error>();
            assert_eq!(cause.map(ToString::to_string).as_deref(), Some("connection refused"), "{error}");
        }
    }

    #[test]
    fn a_layer_error_for_a_bad_name_has_the_name_error_as_its_source() {
        let errors: [Box<dyn std::error::Error>; 4] = [
            Box::new(SendError::from(invalid_name())),
            Box::new(ReceiveError::from(invalid_name())),
            Box::new(GroupError::from(invalid_name())),
            Box::new(NewChannelError::from(invalid_name())),
        ];
        for error in &errors {
            assert_eq!(error.source().and_then(|e| e.downcast_ref::<InvalidName>()), Some(&invalid_name()), "{error}");
        }
    }

    #[test]
    fn a_full_channel_wraps_no_other_error() {
        assert!(SendError::ChannelFull { channel: "c".into() }.source().is_none());
    }
}
