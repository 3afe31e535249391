//! `RedisChannelLayer`: the sorted-set layer of channels_redis 4.x, in Rust.
//!
//! A send, or a batch of group sends, is one pipeline of plain commands per shard:
//! `ZREMRANGEBYSCORE`, `ZADD`, `EXPIRE` and `ZCARD` for each receiving queue. A Lua script runs
//! only for a queue the `ZCARD` finds past its capacity, to take the message out again if it is
//! still full. A group send first reads its groups, one pipeline per shard holding them
//! (`ZREMRANGEBYSCORE`, `ZRANGE`), and puts the share of members in this process straight into
//! their mailboxes, as a send to a channel of this process does. Receiving is a task per shard
//! that pops this process's queue (`BZPOPMIN`, then `ZPOPMIN` for what else waits); a worker
//! channel is popped by its receiver, with channels_redis's in-flight backup.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the layer's handle and shared state, and its `ChannelLayer` implementation |
//! | `shards.rs` | connections, key names, which shard holds a key, which channels are ours |
//! | `send.rs` | the send path: payloads, scores, the pipelined commands that add to a queue, `send` |
//! | `group_send.rs` | group sends in batches: read the groups, deliver locally, write the queues |
//! | `groups.rs` | memberships in Redis and this process's record of them (rejoin, echo) |
//! | `liveness.rs` | heartbeats of this process, and pruning dead processes' members from groups |
//! | `local.rs` | this process's channels' mailboxes, and delivery into them |
//! | `pump.rs` | the task per shard that pops this process's queue |
//! | `worker.rs` | worker channels: channels_redis's in-flight backup protocol |
//! | `full_queues.rs` | process queues found full, checked before a group send writes to them again |
//! | `flush.rs` | `flush` |

mod flush;
pub(crate) use flush::{escape_glob, unlink_matching};
mod full_queues;
mod group_send;
mod groups;
mod liveness;
mod local;
mod pump;
mod send;
mod shards;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use channels_core::layer::{
    BackendError, ChannelLayer, ChannelReceiver, ConfigError, DroppedMessages, FlushError, GroupError, GroupSendReport,
    LayerConfig, Message, NewChannelError, PresenceStore, ReceiveError, SendError, validate_channel_name,
};
use tokio_util::sync::CancellationToken;

use crate::config::{RedisConfig, backend};
use crate::crypto::Encryption;
use crate::mailbox;
use crate::wire;
use local::Local;
use shards::Shard;
use worker::BlockingConnections;

/// A channel layer on Redis that speaks channels_redis 4.x's format, so Django Channels
/// processes and Rust processes share one Redis and each other's groups.
///
/// Each process has one queue (`<prefix>specific.<16 hex>!`) that all its consumers share; a
/// background task per shard pops it and hands each message to the local channel (or channels)
/// it names. A group send puts one message per receiving process queue, naming that process's
/// members, with one pipeline of plain commands per shard (see the layers guide in `docs/`).
///
/// Beyond channels_redis: the process queue is read on every shard (so Python's misrouted
/// multi-host direct sends still arrive), memberships of local channels are re-added after a
/// reconnect and every third of [`RedisConfig::process_ttl`] (a room whose keys Redis lost
/// heals), local buffers are bounded and honour `expiry`, messages for consumers that
/// are gone are dropped instead of piling up, an undecodable payload is logged and skipped,
/// and the members that a process of ours left behind when it died without leaving its groups
/// are pruned ([`RedisConfig::process_ttl`]).
/// Messages from this process to its own channels (a `send`, or the local members' share of a
/// `group_send`) go straight into their buffers instead of through Redis, and a sender's own
/// copy of a group message it queues goes there before the group is read
/// ([`ChannelLayer::group_send_echo`], for groups it joined in this process, while the group's
/// members here are less than half a buffer behind).
///
/// ```no_run
/// use channels_core::layer::ChannelLayer;
/// use channels_redis::RedisChannelLayer;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = RedisChannelLayer::from_url("redis://127.0.0.1:6379/0?prefix=asgi")?;
/// let me = layer.new_channel("specific").await?;
/// layer.group_add("chat_lobby", &me).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisChannelLayer {
    inner: Arc<Inner>,
}

/// What the clones of a layer, and its background tasks, share.
struct Inner {
    config: RedisConfig,
    encryption: Option<Encryption>,
    shards: Vec<Shard>,
    client_prefix: String,
    local: Mutex<Local>,
    round_robin: AtomicUsize,
    /// The score of the last message queued (see [`Inner::next_score`]).
    last_score: Mutex<f64>,
    dropped_full: AtomicU64,
    /// The drops counted in `dropped_full`, for the log: a summary line per interval.
    drops: DroppedMessages,
    /// Counts memberships made and reads of groups begun, to order them (see
    /// [`groups::Joined`]).
    ops: AtomicU64,
    /// Channels named by `new_channel` so far: the local part of the next name.
    channels_made: AtomicU64,
    /// The last read of groups failed: nothing is echoed (see
    /// [`ChannelLayer::group_send_echo`]) until one succeeds, so that a sender does not see
    /// its messages come back while they cannot reach anyone else.
    echo_paused: AtomicBool,
    /// The dead processes of ours, as the last heartbeat saw them (see [`liveness`]).
    liveness: Arc<Mutex<liveness::Liveness>>,
    /// Process queues the last write found full (see [`full_queues`]).
    full_queues: Mutex<std::collections::HashSet<String>>,
    /// The heartbeat task was started.
    heartbeating: AtomicBool,
    /// Which processes are dead was read once, by a heartbeat or by the first group send (see
    /// [`Inner::read_liveness_once`]).
    liveness_read: AtomicBool,
    stop: CancellationToken,
    /// Per worker channel: one blocking connection per shard, and a lock so that this
    /// process pops a channel once at a time (as channels_redis does).
    normal_receivers: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<BlockingConnections>>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ends the background pumps.
        self.stop.cancel();
    }
}

impl RedisChannelLayer {
    /// A layer with the given settings. Connections are made on first use.
    pub fn new(config: RedisConfig) -> Result<Self, ConfigError> {
        config.warn_if_unverified();
        let shards = config
            .open_endpoints()?
            .into_iter()
            .map(|endpoint| Shard { endpoint, commands: Default::default() })
            .collect();
        let encryption = config.encryption()?;
        Ok(Self {
            inner: Arc::new(Inner {
                encryption,
                config,
                shards,
                client_prefix: wire::process_id(),
                local: Mutex::new(Local::default()),
                round_robin: AtomicUsize::new(0),
                last_score: Mutex::new(0.0),
                dropped_full: AtomicU64::new(0),
                drops: DroppedMessages::new("redis", DroppedMessages::DEFAULT_INTERVAL),
                ops: AtomicU64::new(0),
                channels_made: AtomicU64::new(0),
                echo_paused: AtomicBool::new(false),
                liveness: Arc::default(),
                full_queues: Mutex::default(),
                heartbeating: AtomicBool::new(false),
                liveness_read: AtomicBool::new(false),
                stop: CancellationToken::new(),
                normal_receivers: tokio::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// A layer from a `redis://host:port/db?prefix=asgi&capacity=1000` URL.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        Self::new(RedisConfig::from_url(url)?)
    }

    /// The layer's Redis settings.
    pub fn redis_config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// Messages dropped because a channel or a local buffer was full, since creation.
    pub fn dropped_full(&self) -> u64 {
        self.inner.dropped_full.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expiry_secs(&self) -> u64 {
        self.config.layer.expiry.as_secs().max(1)
    }

    fn group_expiry_secs(&self) -> u64 {
        self.config.layer.group_expiry.as_secs().max(1)
    }
}

impl std::fmt::Debug for RedisChannelLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisChannelLayer")
            .field("hosts", &self.inner.config.hosts_without_passwords())
            .field("prefix", &self.inner.config.prefix)
            .finish()
    }
}

#[async_trait]
impl ChannelLayer for RedisChannelLayer {
    async fn new_channel(&self, prefix: &str) -> Result<String, NewChannelError> {
        let n = self.inner.channels_made.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}.{}!{}", self.inner.client_prefix, wire::local_id(n));
        validate_channel_name(&name)?;
        self.inner.lock().channels.entry(Arc::from(name.as_str())).or_default();
        self.ensure_pumps(&self.inner.queue_key(&name));
        self.ensure_heartbeats();
        Ok(name)
    }

    async fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        self.inner.send(channel, message).await
    }

    async fn receive(&self, channel: &str) -> Result<Message, ReceiveError> {
        // The hot path, a consumer receiving on its own channel, skips the checks (only valid
        // names of ours ever get a mailbox) and looks the mailbox up once per message.
        if let Some(message) = mailbox::receive(&self.inner.local, |local| local.channels.get_mut(channel)).await {
            return Ok(message);
        }
        validate_channel_name(channel)?;
        if !channel.contains('!') {
            return self.receive_normal(channel).await;
        }
        if !self.inner.is_ours(channel) {
            return Err(ReceiveError::Backend(
                format!("{channel:?} belongs to another process: a process receives only on channels it created")
                    .into(),
            ));
        }
        self.receive_local(channel).await
    }

    fn try_receive(&self, channel: &str) -> Option<Message> {
        self.inner.lock().channels.get_mut(channel)?.pop()
    }

    fn receiver(self: Arc<Self>, channel: Arc<str>) -> Box<dyn ChannelReceiver> {
        let local = self.inner.lock().channels.contains_key(&*channel);
        Box::new(mailbox::Receiver { layer: self, channel, local })
    }

    async fn group_add(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        self.inner.group_add(group, channel).await
    }

    async fn group_discard(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        self.inner.group_discard(group, channel).await
    }

    /// One `ZREM` per group, naming all its leaving channels, in one round trip per shard.
    async fn group_discard_many(&self, memberships: &[(String, String)]) -> Result<(), GroupError> {
        self.inner.group_discard_many(memberships).await
    }

    async fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, GroupError> {
        self.ensure_heartbeats();
        let mut reports = self.inner.send_batch(&[(group.to_owned(), message)], None).await;
        reports.pop().unwrap_or_else(|| unreachable!("one report per send"))
    }

    /// For the whole batch, one round trip per shard holding its groups reads every group it
    /// names, once each however many of its messages go to it (trimming expired members), and
    /// one per shard holding receiving queues adds each message to them, in order; a queue
    /// found past its capacity costs one more. Members in this process get theirs without a
    /// round trip.
    async fn group_send_many(&self, sends: &[(String, Message)]) -> Vec<Result<GroupSendReport, GroupError>> {
        self.ensure_heartbeats();
        self.inner.send_batch(sends, None).await
    }

    /// The sender's copy goes into its mailbox at once when the sender joined `group` in this
    /// process, the membership has not expired, no read of the group since found it gone, and
    /// the group's members here are less than half the sender's capacity behind (the sends
    /// echoed to them and not yet delivered here, and what waits for the sender).
    fn group_send_echo(&self, group: &str, channel: &str, message: &Message) -> bool {
        self.inner.echo(group, channel, message)
    }

    async fn group_send_many_echoed(
        &self,
        sends: &[(String, Message)],
        channel: &str,
        echoed: usize,
    ) -> Vec<Result<GroupSendReport, GroupError>> {
        self.ensure_heartbeats();
        self.inner.send_batch(sends, Some((channel, echoed))).await
    }

    /// [`RedisConfig::send_linger`].
    fn batch_linger(&self) -> Duration {
        self.inner.config.send_linger
    }

    async fn flush(&self) -> Result<(), FlushError> {
        self.inner.flush().await
    }

    /// A `PING` to every shard; an error names the host that did not answer.
    async fn ping(&self) -> Result<(), BackendError> {
        for index in 0..self.inner.shards.len() {
            let answered = match self.inner.conn(index).await {
                Ok(mut conn) => redis::cmd("PING").query_async::<()>(&mut conn).await,
                Err(e) => Err(e),
            };
            answered.map_err(|e| self.inner.config.connect_failure(index, &e))?;
        }
        Ok(())
    }

    async fn forget_channel(&self, channel: &str) {
        let mut local = self.inner.lock();
        local.channels.remove(channel);
        local.memberships.retain(|_, members| {
            members.remove(channel);
            !members.is_empty()
        });
    }

    /// Presence entries in Redis, beside the layer's keys (see `channels::presence`).
    fn presence_store(&self) -> Option<Arc<dyn PresenceStore>> {
        crate::presence::store_for(&self.inner.config)
    }

    /// A stream per group in Redis, under the layer's prefix (see `channels_core::layer::History`).
    fn history_store(&self) -> Option<Arc<dyn channels_core::layer::HistoryStore>> {
        crate::history::store_for(&self.inner.config)
    }

    fn config(&self) -> &LayerConfig {
        &self.inner.config.layer
    }
}

impl mailbox::LocalMailboxes for RedisChannelLayer {
    fn take_many(&self, channel: &str, max: usize, into: &mut Vec<Message>) {
        if let Some(mailbox) = self.inner.lock().channels.get_mut(channel) {
            mailbox.take_many(max, into);
        }
    }

    fn wait_in_mailbox<'a>(
        &'a self,
        channel: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Message, ReceiveError>> {
        Box::pin(mailbox::receive_or_create(&self.inner.local, |local| &mut local.channels, channel))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{SECRETS, config_with_secrets};

    #[test]
    fn debug_output_shows_no_password_or_encryption_key() {
        let layer = super::RedisChannelLayer::new(config_with_secrets()).expect("layer");
        let shown = format!("{layer:?}");
        for secret in SECRETS {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("a:6379/2"), "{shown}");
    }
}
