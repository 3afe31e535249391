//! `RedisChannelLayer`: the sorted-set layer of channels_redis 4.x, in Rust.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use channels_core::layer::{
    BackendError, ChannelLayer, ChannelReceiver, ConfigError, FlushError, GroupError, GroupSendReport, LayerConfig,
    Members, Message, NewChannelError, ReceiveError, SendError, non_local_name, validate_channel_name,
    validate_group_name,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{OnceCell, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{RedisConfig, command_connection};
use crate::crypto::Encryption;
use crate::mailbox::{self, Mailbox, Mailboxes};
use crate::scripts;
use crate::wire::{self, Routing, consistent_hash};

/// A channel layer on Redis that speaks channels_redis 4.x's format, so Django Channels
/// processes and Rust processes share one Redis and each other's groups.
///
/// Each process has one queue (`<prefix>specific.<16 hex>!`) that all its consumers share; a
/// background task per shard pops it and hands each message to the local channel (or channels)
/// it names. Group sends put one message per receiving process, encoded once.
///
/// Beyond channels_redis: the process queue is read on every shard (so Python's misrouted
/// multi-host direct sends still arrive), memberships of local channels are re-added after a
/// Redis restart, local buffers are bounded and honour `expiry`, messages for consumers that
/// are gone are dropped instead of piling up, and an undecodable payload is logged and skipped.
/// Messages from this process to its own channels (a `send`, or the local members' share of a
/// `group_send`) go straight into their buffers instead of through Redis, and a sender's own
/// copy of a group message it queues goes there before the group is read
/// ([`ChannelLayer::group_send_echo`], for groups it joined in this process).
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

struct Shard {
    client: redis::Client,
    commands: OnceCell<ConnectionManager>,
}

#[derive(Default)]
struct Local {
    /// Channels created here and not yet forgotten, with what has arrived for them.
    channels: Mailboxes,
    /// Groups local channels joined, so they can be re-joined after Redis loses them, and so
    /// that a member's own group sends can be echoed without a read of the group.
    memberships: HashMap<String, Members<Joined>>,
    /// Process queue keys a pump already reads.
    pumped: HashSet<String>,
}

/// A local channel's membership of a group, as this process made it (24 bytes: most groups of
/// an idle server hold one connection, and this is most of what it keeps for one).
struct Joined {
    /// When this process last added it to the group in Redis.
    at: std::time::Instant,
    /// The layer's operation count then ([`Inner::ops`]), while the channel's own group sends
    /// may be echoed (see [`ChannelLayer::group_send_echo`]); `None` once a read of the group,
    /// made after that count, found it missing from Redis (another process discarded it, or
    /// Redis lost it), until this process adds it again.
    echo_since: Option<NonZeroU64>,
}

impl Joined {
    fn new(ops: &AtomicU64) -> Self {
        // The count is taken after the membership is in Redis: a read of the group that took a
        // later count was sent after that, and would have seen it.
        Self { at: std::time::Instant::now(), echo_since: NonZeroU64::new(ops.fetch_add(1, Ordering::SeqCst) + 1) }
    }
}

/// Blocking connections of one worker channel, by shard, made on first use.
type BlockingConnections = HashMap<usize, ConnectionManager>;

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
    /// Counts memberships made and reads of groups begun, to order them (see [`Joined`]).
    ops: AtomicU64,
    /// Channels named by `new_channel` so far: the local part of the next name.
    channels_made: AtomicU64,
    /// The last read of groups failed: nothing is echoed (see
    /// [`ChannelLayer::group_send_echo`]) until one succeeds, so that a sender does not see
    /// its messages come back while they cannot reach anyone else.
    echo_paused: AtomicBool,
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

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> BackendError {
    Box::new(e)
}

impl RedisChannelLayer {
    /// A layer with the given settings. Connections are made on first use.
    pub fn new(config: RedisConfig) -> Result<Self, ConfigError> {
        let shards =
            config.open_clients()?.into_iter().map(|client| Shard { client, commands: OnceCell::new() }).collect();
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
                ops: AtomicU64::new(0),
                channels_made: AtomicU64::new(0),
                echo_paused: AtomicBool::new(false),
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

    fn queue_key(&self, channel: &str) -> String {
        format!("{}{}", self.config.prefix, non_local_name(channel))
    }

    fn group_key(&self, group: &str) -> String {
        format!("{}:group:{}", self.config.prefix, group)
    }

    fn shard_for(&self, value: &str) -> usize {
        consistent_hash(value, self.shards.len())
    }

    fn is_ours(&self, channel: &str) -> bool {
        // `<prefix>.<client_prefix>!<local>`: our id between the last '.' and the first '!'.
        channel.split_once('!').is_some_and(|(non_local, _)| self.is_our_id(non_local))
    }

    /// Whether `non_local` (up to its `!`) ends in `.` and this process's id.
    fn is_our_id(&self, non_local: &str) -> bool {
        non_local.strip_suffix(self.client_prefix.as_str()).is_some_and(|rest| rest.ends_with('.'))
    }

    /// Whether a process queue's name (`<prefix>.<client_prefix>!`) is one this layer reads.
    fn is_our_queue(&self, non_local: &str) -> bool {
        non_local.strip_suffix('!').is_some_and(|id| self.is_our_id(id))
    }

    /// `random(12) || body`, the body encrypted when keys are configured.
    fn seal(&self, body: Vec<u8>) -> Vec<u8> {
        match &self.encryption {
            Some(encryption) => wire::frame(&encryption.encrypt(&body)),
            None => wire::frame(&body),
        }
    }

    /// A queue member's body: the member without its random prefix, decrypted when keys are
    /// configured.
    fn unseal<'a>(&self, member: &'a [u8]) -> Result<Cow<'a, [u8]>, wire::WireError> {
        let body = wire::unframe(member)?;
        Ok(match &self.encryption {
            // channels_redis decrypts with a TTL of expiry + 10 s.
            Some(encryption) => Cow::Owned(encryption.decrypt(body, Some(self.expiry_secs() + 10))?),
            None => Cow::Borrowed(body),
        })
    }

    /// The queue score for a message sent now: later than every score this process handed
    /// out before, so its messages keep their order in a queue even where the clock reads the
    /// same twice (a batch of group sends is scored at one reading).
    fn next_score(&self, now: f64) -> f64 {
        let mut last = self.last_score.lock().unwrap_or_else(|p| p.into_inner());
        *last = now.max(*last + SCORE_STEP);
        *last
    }

    fn expiry_secs(&self) -> u64 {
        self.config.layer.expiry.as_secs().max(1)
    }

    fn group_expiry_secs(&self) -> u64 {
        self.config.layer.group_expiry.as_secs().max(1)
    }

    async fn conn(&self, shard: usize) -> Result<ConnectionManager, redis::RedisError> {
        let shard = &self.shards[shard];
        command_connection(&shard.client, &shard.commands).await
    }

    /// Hands popped process-queue members, in order, to the local channels they name.
    fn deliver(&self, popped: &[Vec<u8>]) {
        let bodies: Vec<Cow<'_, [u8]>> =
            popped.iter().filter_map(|member| self.unseal(member).map_err(|e| undecodable(&e)).ok()).collect();
        let decoded: Vec<(Message, wire::RawRouting<'_>)> =
            bodies.iter().filter_map(|body| wire::split_body(body).map_err(|e| undecodable(&e)).ok()).collect();
        // The messages of one group send batch name the same members, in the same bytes: each
        // run of them has its names read once, and goes in member by member.
        for run in decoded.chunk_by(|(_, a), (_, b)| a == b) {
            let routing = match run[0].1.read() {
                Ok(routing) => routing,
                Err(e) => {
                    undecodable(&e);
                    continue;
                }
            };
            let targets = match &routing {
                Routing::One(channel) => std::slice::from_ref(channel),
                Routing::Many(channels) => channels.as_slice(),
                Routing::None => {
                    tracing::warn!(messages = run.len(), "skipping messages with no target channel");
                    continue;
                }
            };
            let messages: Vec<(&Message, Option<&str>)> = run.iter().map(|(message, _)| (message, None)).collect();
            self.push_local(&messages, targets);
        }
    }

    /// Puts `messages` into the mailboxes of `targets`, channels of this process: what the
    /// pump does with popped messages, and what a group send from this process does for its
    /// own members instead of a round trip through Redis. A message's channel to skip (a
    /// sender whose copy was echoed) does not get it. Returns, per message, how many
    /// mailboxes took it and how many were full; a channel without a mailbox is gone, and
    /// the messages are dropped for it.
    ///
    /// Member by member: each mailbox, seldom in the CPU's cache, is reached once for all the
    /// messages rather than once per message.
    fn push_local(&self, messages: &[(&Message, Option<&str>)], targets: &[&str]) -> Vec<(usize, usize)> {
        let expires = self.local_expiry();
        let mut counts = vec![(0, 0); messages.len()];
        let mut local = self.lock();
        for &channel in targets {
            let Some(mailbox) = local.channels.get_mut(channel) else {
                tracing::debug!(%channel, "message for a channel that is gone; dropped");
                continue;
            };
            for (&(message, skip), (queued, full)) in messages.iter().zip(&mut counts) {
                if skip == Some(channel) {
                    continue;
                }
                if self.push_into(mailbox, channel, message, expires) {
                    *queued += 1;
                } else {
                    *full += 1;
                }
            }
        }
        counts
    }

    /// A `send` to `channel` of this process, straight into its mailbox: whether it took the
    /// message, or `None` when the channel has no mailbox here (yet).
    fn send_own(&self, channel: &str, message: &Message) -> Option<bool> {
        let expires = self.local_expiry();
        let mut local = self.lock();
        let mailbox = local.channels.get_mut(channel)?;
        Some(self.push_into(mailbox, channel, message, expires))
    }

    /// When a message put into a local mailbox now expires.
    fn local_expiry(&self) -> Option<tokio::time::Instant> {
        Some(tokio::time::Instant::now() + self.config.layer.expiry)
    }

    /// Queues `message` in `channel`'s `mailbox`; false (counted and logged) when it is full.
    fn push_into(
        &self,
        mailbox: &mut Mailbox,
        channel: &str,
        message: &Message,
        expires: Option<tokio::time::Instant>,
    ) -> bool {
        if mailbox.push(message.clone(), self.config.layer.capacity_for(channel), expires) {
            return true;
        }
        self.dropped_full.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%channel, "local buffer full; dropping a message");
        false
    }

    /// Re-adds every local membership after Redis lost its data (a restart without persistence).
    async fn rejoin_groups(&self) {
        let memberships: Vec<(String, String)> = self
            .lock()
            .memberships
            .iter()
            .flat_map(|(group, channels)| channels.iter().map(move |(c, _)| (group.clone(), c.to_string())))
            .collect();
        for (group, channel) in memberships {
            if let Err(e) = self.raw_group_add(&group, &channel).await {
                tracing::warn!(%group, error = %e, "could not re-join a group");
                return;
            }
            if let Some(joined) = self.lock().memberships.get_mut(&group).and_then(|m| m.get_mut(&channel)) {
                *joined = Joined::new(&self.ops);
            }
        }
    }

    async fn raw_group_add(&self, group: &str, channel: &str) -> Result<(), redis::RedisError> {
        let mut conn = self.conn(self.shard_for(group)).await?;
        redis::pipe()
            .atomic()
            .cmd("ZADD")
            .arg(self.group_key(group))
            .arg(wire::now_seconds())
            .arg(channel)
            .ignore()
            .cmd("EXPIRE")
            .arg(self.group_key(group))
            .arg(self.group_expiry_secs())
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }
}

/// The smallest gap between the scores of two group messages of one process: a microsecond,
/// well above an `f64`'s resolution at today's Unix time (about 0.24 µs).
const SCORE_STEP: f64 = 1e-6;

/// Most queued messages a pump takes in one round trip after its blocking pop.
const POP_BATCH: usize = 127;

/// Pops one process queue on one shard, forever, until the layer is dropped.
async fn pump(weak: Weak<Inner>, client: redis::Client, key: String, timeout: Duration, stop: CancellationToken) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(None)
        .set_number_of_retries(1);
    let mut conn: Option<ConnectionManager> = None;
    let mut failing = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let popped = tokio::select! {
            () = stop.cancelled() => return,
            popped = async {
                if conn.is_none() {
                    conn = Some(client.get_connection_manager_with_config(config.clone()).await?);
                }
                let Some(c) = conn.as_mut() else { unreachable!() };
                if failing {
                    // Answer quickly once Redis is back, instead of after a whole blocking pop.
                    redis::cmd("PING").query_async::<()>(c).await?;
                    return Ok(None);
                }
                let first = redis::cmd("BZPOPMIN")
                    .arg(&key)
                    .arg(timeout.as_secs_f64())
                    .query_async::<Option<(Vec<u8>, Vec<u8>, f64)>>(c)
                    .await?;
                let Some((_, member, _)) = first else { return Ok(None) };
                // Whatever else is queued comes in the same round trip.
                let more: Vec<(Vec<u8>, f64)> =
                    redis::cmd("ZPOPMIN").arg(&key).arg(POP_BATCH).query_async(c).await?;
                Ok::<_, redis::RedisError>(Some(std::iter::once(member).chain(more.into_iter().map(|(m, _)| m)).collect::<Vec<_>>()))
            } => popped,
        };
        let Some(inner) = weak.upgrade() else { return };
        match popped {
            Ok(popped) => {
                if failing {
                    failing = false;
                    backoff = Duration::from_millis(100);
                    tracing::info!(%key, "Redis is back; re-joining groups");
                    inner.rejoin_groups().await;
                }
                if let Some(popped) = popped {
                    inner.deliver(&popped);
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(%key, error = %e, "lost the Redis connection; retrying");
                }
                failing = true;
                drop(inner);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

impl RedisChannelLayer {
    /// Starts the pumps (one per shard) for a process queue, once.
    fn ensure_pumps(&self, queue_key: &str) {
        if !self.inner.lock().pumped.insert(queue_key.to_owned()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.lock().pumped.remove(queue_key);
            return;
        };
        let timeout = self.inner.config.blocking_timeout;
        for shard in &self.inner.shards {
            runtime.spawn(pump(
                Arc::downgrade(&self.inner),
                shard.client.clone(),
                queue_key.to_owned(),
                timeout,
                self.inner.stop.clone(),
            ));
        }
    }

    async fn receive_local(&self, channel: &str) -> Result<Message, ReceiveError> {
        // A channel made by `new_channel` has its mailbox and its pumps already: the hot path
        // neither allocates nor starts anything.
        if !self.inner.lock().channels.contains_key(channel) {
            self.ensure_pumps(&self.inner.queue_key(channel));
        }
        mailbox::receive_or_create(&self.inner.local, |local| &mut local.channels, channel).await
    }

    /// A worker channel: channels_redis's restore → pop → back up → clean up dance, so Python
    /// and Rust receivers can share the channel. Cancel-safe: the pop runs in its own task and
    /// puts the message back if nobody is waiting for it any more.
    async fn receive_normal(&self, channel: &str) -> Result<Message, ReceiveError> {
        let slot = {
            let mut receivers = self.inner.normal_receivers.lock().await;
            receivers.entry(channel.to_owned()).or_default().clone()
        };
        let (tx, rx) = oneshot::channel();
        let layer = self.clone();
        let channel = channel.to_owned();
        tokio::spawn(async move {
            let mut blocking = slot.lock().await;
            let result = layer.pop_normal(&channel, &mut blocking, tx).await;
            if let Err(e) = result {
                tracing::warn!(%channel, error = %e, "worker channel receive failed");
            }
        });
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(ReceiveError::Backend("the receive task ended".into())),
        }
    }

    async fn pop_normal(
        &self,
        channel: &str,
        blocking: &mut BlockingConnections,
        reply: oneshot::Sender<Result<Message, ReceiveError>>,
    ) -> Result<(), redis::RedisError> {
        let queue = self.inner.queue_key(channel);
        let backup = format!("{queue}$inflight");
        let shards = self.inner.shards.len();
        let timeout = if shards > 1 { Duration::from_secs(1) } else { self.inner.config.blocking_timeout };
        let mut reply = Some(reply);
        loop {
            if reply.as_ref().is_some_and(|r| r.is_closed()) {
                return Ok(());
            }
            let shard = self.inner.round_robin.fetch_add(1, Ordering::Relaxed) % shards;
            let popped = async {
                let mut commands = self.inner.conn(shard).await?;
                scripts::RESTORE.key(&queue).key(&backup).invoke_async::<()>(&mut commands).await?;
                // Blocking pops get connections of their own (one per shard), so they never
                // hold up other commands; with several shards each pop goes to the next one.
                let client = &self.inner.shards[shard].client;
                let config = ConnectionManagerConfig::new().set_response_timeout(None).set_number_of_retries(1);
                let blocking = match blocking.entry(shard) {
                    std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                    std::collections::hash_map::Entry::Vacant(entry) => {
                        entry.insert(client.get_connection_manager_with_config(config).await?)
                    }
                };
                let popped: Option<(Vec<u8>, Vec<u8>, f64)> =
                    redis::cmd("BZPOPMIN").arg(&queue).arg(timeout.as_secs_f64()).query_async(blocking).await?;
                if let Some((_, member, score)) = &popped {
                    redis::cmd("ZADD").arg(&backup).arg(*score).arg(member).query_async::<()>(&mut commands).await?;
                }
                Ok::<_, redis::RedisError>(popped.map(|(_, member, _)| (member, commands)))
            }
            .await;
            let (member, mut commands) = match popped {
                Ok(Some(pair)) => pair,
                Ok(None) => continue,
                Err(e) => {
                    if let Some(reply) = reply.take() {
                        let _ = reply.send(Err(ReceiveError::Backend(backend(e))));
                    }
                    return Ok(());
                }
            };
            match self.inner.unseal(&member).and_then(|body| wire::decode_body(&body).map(|(message, _)| message)) {
                Ok(message) => {
                    let delivered = reply.take().map(|r| r.send(Ok(message)).is_ok()).unwrap_or(false);
                    if delivered {
                        redis::cmd("ZPOPMIN").arg(&backup).query_async::<()>(&mut commands).await?;
                    } else {
                        // The caller gave up: put the message back where it was.
                        scripts::RESTORE.key(&queue).key(&backup).invoke_async::<()>(&mut commands).await?;
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "skipping a worker message that does not decode");
                    redis::cmd("ZPOPMIN").arg(&backup).query_async::<()>(&mut commands).await?;
                }
            }
        }
    }
}

impl std::fmt::Debug for RedisChannelLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisChannelLayer")
            .field("hosts", &self.inner.config.hosts)
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
        Ok(name)
    }

    async fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        validate_channel_name(channel)?;
        let inner = &self.inner;
        // Our own channel: straight into its mailbox, as the pump would put it. One with no
        // mailbox here yet goes through Redis and waits in our queue as before.
        if inner.is_ours(channel)
            && let Some(taken) = inner.send_own(channel, &message)
        {
            return if taken { Ok(()) } else { Err(SendError::ChannelFull { channel: channel.to_owned() }) };
        }
        let (routing, shard) = if channel.contains('!') {
            // channels_redis hashes the full name here (channels#1492); the receiver listens
            // on hash(non-local name), so that is where we write.
            (Routing::One(channel), inner.shard_for(non_local_name(channel)))
        } else {
            (Routing::None, inner.round_robin.fetch_add(1, Ordering::Relaxed) % inner.shards.len())
        };
        let payload = inner.seal(wire::body_with_routing(&message, &routing));
        let now = wire::now_seconds();
        let queue = inner.queue_key(channel);
        let mut pipe = redis::pipe();
        inner.push_commands(&mut pipe, &queue, now, inner.next_score(now), &payload);
        let kept = async {
            let mut conn = inner.conn(shard).await?;
            let lengths: Vec<usize> = pipe.query_async(&mut conn).await?;
            let capacity = inner.config.layer.capacity_for(channel);
            stays(&mut conn, &queue, lengths.first().copied().unwrap_or_default(), capacity, &payload).await
        };
        match kept.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SendError::ChannelFull { channel: channel.to_owned() }),
            Err(e) => Err(SendError::Backend(backend(e))),
        }
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
        validate_group_name(group)?;
        validate_channel_name(channel)?;
        self.inner.raw_group_add(group, channel).await.map_err(|e| GroupError::Backend(backend(e)))?;
        if self.inner.is_ours(channel) {
            let mut local = self.inner.lock();
            if let Some((name, _)) = local.channels.get_key_value(channel) {
                let name = name.clone();
                local.memberships.entry(group.to_owned()).or_default().insert(name, Joined::new(&self.inner.ops));
            }
        }
        Ok(())
    }

    async fn group_discard(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        validate_group_name(group)?;
        validate_channel_name(channel)?;
        {
            let mut local = self.inner.lock();
            if let Some(members) = local.memberships.get_mut(group) {
                members.remove(channel);
                if members.is_empty() {
                    local.memberships.remove(group);
                }
            }
        }
        let mut conn =
            self.inner.conn(self.inner.shard_for(group)).await.map_err(|e| GroupError::Backend(backend(e)))?;
        redis::cmd("ZREM")
            .arg(self.inner.group_key(group))
            .arg(channel)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| GroupError::Backend(backend(e)))
    }

    async fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, GroupError> {
        let mut reports = self.inner.send_batch(&[(group.to_owned(), message)], None).await;
        reports.pop().unwrap_or_else(|| unreachable!("one report per send"))
    }

    /// Two round trips per shard for the whole batch: one reads every group the batch names,
    /// once each however many of its messages go to it (trimming expired members), one adds
    /// each message to its receiving queues, in order.
    async fn group_send_many(&self, sends: &[(String, Message)]) -> Vec<Result<GroupSendReport, GroupError>> {
        self.inner.send_batch(sends, None).await
    }

    /// The sender's copy goes into its mailbox at once when the sender joined `group` in this
    /// process, the membership has not expired, and no read of the group since found it gone.
    fn group_send_echo(&self, group: &str, channel: &str, message: &Message) -> bool {
        let inner = &self.inner;
        let expires = inner.local_expiry();
        let group_expiry = inner.config.layer.group_expiry;
        let mut local = inner.lock();
        let Local { channels, memberships, .. } = &mut *local;
        let trusted = !inner.echo_paused.load(Ordering::Relaxed)
            && memberships
                .get(group)
                .and_then(|members| members.get(channel))
                .is_some_and(|joined| joined.echo_since.is_some() && joined.at.elapsed() < group_expiry);
        let Some(mailbox) = channels.get_mut(channel).filter(|_| trusted) else { return false };
        inner.push_into(mailbox, channel, message, expires);
        true
    }

    async fn group_send_many_echoed(
        &self,
        sends: &[(String, Message)],
        channel: &str,
        echoed: usize,
    ) -> Vec<Result<GroupSendReport, GroupError>> {
        self.inner.send_batch(sends, Some((channel, echoed))).await
    }

    /// [`RedisConfig::send_linger`].
    fn batch_linger(&self) -> Duration {
        self.inner.config.send_linger
    }

    async fn flush(&self) -> Result<(), FlushError> {
        let pattern = escape_glob(&self.inner.config.prefix) + "*";
        for shard in 0..self.inner.shards.len() {
            let mut conn = self.inner.conn(shard).await.map_err(|e| FlushError::Backend(backend(e)))?;
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| FlushError::Backend(backend(e)))?;
                if !keys.is_empty() {
                    redis::cmd("UNLINK")
                        .arg(keys)
                        .query_async::<()>(&mut conn)
                        .await
                        .map_err(|e| FlushError::Backend(backend(e)))?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let mut local = self.inner.lock();
        local.memberships.clear();
        for mailbox in local.channels.values_mut() {
            mailbox.clear();
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

    fn config(&self) -> &LayerConfig {
        &self.inner.config.layer
    }
}

impl Inner {
    /// Stops echoing `channel`'s sends to `group` (see [`Joined::echo_since`]) unless this
    /// process added the membership after `op`, when the read that missed it began: the read
    /// may have come before it.
    fn stop_echoing(&self, group: &str, channel: &str, op: u64) {
        let mut local = self.lock();
        if let Some(joined) = local.memberships.get_mut(group).and_then(|members| members.get_mut(channel))
            && joined.echo_since.is_some_and(|since| since.get() < op)
        {
            joined.echo_since = None;
            tracing::debug!(%group, %channel, "membership gone from Redis; its sends are no longer echoed");
        }
    }

    /// Appends to `pipe` what adds `payload` with `score` to `queue`: channels_redis's send
    /// (trim the expired, add, refresh the key's time to live) in plain commands, then the
    /// queue's length, the pipeline's one reply for it, which [`stays`] checks against the
    /// capacity. A Lua script would do the check first, but Redis hashes every byte of a
    /// string handed to Lua: for a group message naming 500 members that was 2.5 times the
    /// redis-server CPU of these commands.
    fn push_commands(&self, pipe: &mut redis::Pipeline, queue: &str, now: f64, score: f64, payload: &[u8]) {
        let trim_before = now.floor() as i64 - self.expiry_secs() as i64;
        pipe.cmd("ZREMRANGEBYSCORE").arg(queue).arg(0).arg(trim_before).ignore();
        pipe.cmd("ZADD").arg(queue).arg(score).arg(payload).ignore();
        pipe.cmd("EXPIRE").arg(queue).arg(self.expiry_secs()).ignore();
        pipe.cmd("ZCARD").arg(queue);
    }

    /// [`ChannelLayer::group_send_many`], and [`ChannelLayer::group_send_many_echoed`] when
    /// `sender` names the sending channel and how many of the sends, from the first, were
    /// echoed to it.
    async fn send_batch(
        &self,
        sends: &[(String, Message)],
        sender: Option<(&str, usize)>,
    ) -> Vec<Result<GroupSendReport, GroupError>> {
        let mut reports: Vec<Result<GroupSendReport, GroupError>> = sends
            .iter()
            .map(|(group, _)| validate_group_name(group).map(|()| GroupSendReport::default()).map_err(GroupError::from))
            .collect();
        let now = wire::now_seconds();

        // The distinct groups, in order of first use, and which of them each valid send goes to.
        let mut groups: Vec<&str> = Vec::new();
        let group_of: Vec<Option<usize>> = sends
            .iter()
            .zip(&reports)
            .map(|((group, _), report)| {
                report.is_ok().then(|| {
                    groups.iter().position(|&g| g == group.as_str()).unwrap_or_else(|| {
                        groups.push(group);
                        groups.len() - 1
                    })
                })
            })
            .collect();

        // Taken before the groups are read: memberships this process made after it may be
        // missing from what the read finds without having been removed.
        let op = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        // Members of every group, one pipeline per shard holding groups: trim the expired
        // memberships, then read the rest (plain commands, as channels_redis does: a script
        // would make redis-server hash every name into a Lua string).
        let mut members: Vec<Vec<Vec<u8>>> = vec![Vec::new(); groups.len()];
        let mut by_group_shard: HashMap<usize, Vec<usize>> = HashMap::new();
        for (g, group) in groups.iter().enumerate() {
            by_group_shard.entry(self.shard_for(group)).or_default().push(g);
        }
        for (shard, read) in by_group_shard {
            let mut pipe = redis::pipe();
            let trim_before = now.floor() as i64 - self.group_expiry_secs() as i64;
            for &g in &read {
                let key = self.group_key(groups[g]);
                pipe.cmd("ZREMRANGEBYSCORE").arg(&key).arg(0).arg(trim_before).ignore();
                pipe.cmd("ZRANGE").arg(&key).arg(0).arg(-1);
            }
            match query::<Vec<Vec<Vec<u8>>>>(self, shard, &pipe).await {
                Ok(found) => {
                    for (&g, found) in read.iter().zip(found) {
                        members[g] = found;
                    }
                }
                Err(e) => {
                    let failed: Vec<usize> =
                        (0..sends.len()).filter(|&i| group_of[i].is_some_and(|g| read.contains(&g))).collect();
                    fail_all(&mut reports, &failed, &e);
                }
            }
        }
        // A sender whose echoed send's group, read successfully, does not list it: someone else
        // removed the membership from Redis (a `group_discard` from another process, a
        // `flush`, or Redis losing its data).
        if let Some((channel, echoed)) = sender {
            for (g, group) in groups.iter().enumerate() {
                let read = (0..echoed.min(sends.len())).any(|i| group_of[i] == Some(g) && reports[i].is_ok());
                if read && !members[g].iter().any(|member| member == channel.as_bytes()) {
                    self.stop_echoing(group, channel, op);
                }
            }
        }
        // Each group's members by receiving process queue: this process's own queues, and the
        // others by shard.
        let buckets: Vec<Vec<(&str, Vec<&str>)>> = members.iter().map(|names| by_process(names)).collect();
        let (own, per_shard): (Vec<_>, Vec<_>) = buckets
            .iter()
            .map(|buckets| {
                let (mut own, mut per_shard) = (Vec::new(), HashMap::<usize, Vec<usize>>::new());
                for (b, (non_local, _)) in buckets.iter().enumerate() {
                    if self.is_our_queue(non_local) {
                        own.push(b);
                    } else {
                        per_shard.entry(self.shard_for(non_local)).or_default().push(b);
                    }
                }
                (own, per_shard)
            })
            .unzip();

        // Members in this process get each message at once, in the order of the sends, a run
        // of sends to one group member by member; an echoed sender has its copy already.
        let to_push: Vec<(usize, usize)> =
            (0..sends.len()).filter_map(|i| group_of[i].filter(|_| reports[i].is_ok()).map(|g| (i, g))).collect();
        for run in to_push.chunk_by(|(_, a), (_, b)| a == b) {
            let g = run[0].1;
            let messages: Vec<(&Message, Option<&str>)> = run
                .iter()
                .map(|&(i, _)| (&sends[i].1, sender.filter(|&(_, echoed)| i < echoed).map(|(channel, _)| channel)))
                .collect();
            for (&(i, _), &(_, skip)) in run.iter().zip(&messages) {
                if let (Ok(report), Some(_)) = (&mut reports[i], skip) {
                    report.queued += 1;
                }
            }
            for &b in &own[g] {
                let counts = self.push_local(&messages, &buckets[g][b].1);
                for (&(i, _), (queued, full)) in run.iter().zip(counts) {
                    if let Ok(report) = &mut reports[i] {
                        report.queued += queued;
                        report.dropped_full += full;
                    }
                }
            }
        }

        // One payload per receiving process queue and message, naming every member it holds;
        // the commands of one shard go in one pipeline, in the order of the sends, each
        // message with a later score than the one before (a queue is ordered by score).
        let scores: Vec<f64> = sends.iter().map(|_| self.next_score(now)).collect();
        struct Pushed {
            send: usize,
            members: usize,
            queue: String,
            capacity: usize,
            payload: Vec<u8>,
        }
        let mut by_queue_shard: HashMap<usize, (redis::Pipeline, Vec<Pushed>)> = HashMap::new();
        for (i, (_, message)) in sends.iter().enumerate() {
            let (Ok(_), Some(g)) = (&reports[i], group_of[i]) else { continue };
            let buckets = &buckets[g];
            for (&shard, bucket_indices) in &per_shard[g] {
                let (pipe, pushed) = by_queue_shard.entry(shard).or_insert_with(|| (redis::pipe(), Vec::new()));
                for &b in bucket_indices {
                    let (non_local, members) = &buckets[b];
                    let queue = format!("{}{non_local}", self.config.prefix);
                    let payload = self.seal(wire::body_with_routing(message, &Routing::Many(members.clone())));
                    self.push_commands(pipe, &queue, now, scores[i], &payload);
                    let capacity = self.config.layer.capacity_for(members[0]);
                    pushed.push(Pushed { send: i, members: members.len(), queue, capacity, payload });
                }
            }
        }
        let mut dropped_total = 0;
        for (shard, (pipe, pushed)) in by_queue_shard {
            let settled = async {
                let mut conn = self.conn(shard).await?;
                let lengths: Vec<usize> = pipe.query_async(&mut conn).await?;
                let mut kept = Vec::with_capacity(pushed.len());
                for (p, &length) in pushed.iter().zip(&lengths) {
                    kept.push(stays(&mut conn, &p.queue, length, p.capacity, &p.payload).await?);
                }
                Ok::<_, redis::RedisError>(kept)
            };
            match settled.await {
                Ok(kept) => {
                    for (p, kept) in pushed.iter().zip(kept) {
                        let Ok(report) = &mut reports[p.send] else { continue };
                        if kept {
                            report.queued += p.members;
                        } else {
                            report.dropped_full += p.members;
                            dropped_total += p.members;
                        }
                    }
                }
                Err(e) => {
                    let failed: Vec<usize> = pushed.iter().map(|p| p.send).collect();
                    fail_all(&mut reports, &failed, &e);
                }
            }
        }
        if dropped_total > 0 {
            self.dropped_full.fetch_add(dropped_total as u64, Ordering::Relaxed);
            tracing::info!(dropped = dropped_total, "group_send dropped messages for full channels");
        }
        let failed = reports.iter().any(|report| matches!(report, Err(GroupError::Backend(_))));
        self.echo_paused.store(failed, Ordering::Relaxed);
        reports
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

fn escape_glob(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A group's members by the process queue they share (their non-local name), in order of
/// first appearance. A name that is not UTF-8 (no channels client writes one) is skipped.
fn by_process(names: &[Vec<u8>]) -> Vec<(&str, Vec<&str>)> {
    let mut buckets: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut index: foldhash::HashMap<&str, usize> = foldhash::HashMap::default();
    for member in names.iter().filter_map(|name| std::str::from_utf8(name).ok()) {
        if member.is_empty() {
            continue;
        }
        let non_local = non_local_name(member);
        match index.get(non_local) {
            Some(&b) => buckets[b].1.push(member),
            None => {
                index.insert(non_local, buckets.len());
                buckets.push((non_local, vec![member]));
            }
        }
    }
    buckets
}

/// Whether a payload added to `queue` by [`Inner::push_commands`] stays there: yes when the
/// queue's `length` after the add was within `capacity`; otherwise it is taken out again
/// unless the queue has room by now, so a full queue drops the message as channels_redis's
/// check-then-add script would (the queue holds one more than its capacity only until then).
async fn stays(
    conn: &mut ConnectionManager,
    queue: &str,
    length: usize,
    capacity: usize,
    payload: &[u8],
) -> Result<bool, redis::RedisError> {
    if length <= capacity {
        return Ok(true);
    }
    let removed: i64 = scripts::DROP_IF_OVER.key(queue).arg(capacity).arg(payload).invoke_async(conn).await?;
    Ok(removed == 0)
}

fn undecodable(e: &wire::WireError) {
    tracing::warn!(error = %e, "skipping a channel layer message that does not decode");
}

/// Runs `pipe` on `shard`'s command connection.
async fn query<T: redis::FromRedisValue>(
    inner: &Inner,
    shard: usize,
    pipe: &redis::Pipeline,
) -> Result<T, redis::RedisError> {
    let mut conn = inner.conn(shard).await?;
    pipe.query_async(&mut conn).await
}

/// Marks the sends at `indices` failed with `error`.
fn fail_all(reports: &mut [Result<GroupSendReport, GroupError>], indices: &[usize], error: &redis::RedisError) {
    for &i in indices {
        reports[i] = Err(GroupError::Backend(backend(error.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::by_process;

    #[test]
    fn group_members_are_bucketed_by_process_queue_in_order() {
        let names: Vec<Vec<u8>> = [&b"specific.a!1"[..], b"specific.b!1", b"specific.a!2", b"\xff\xfe", b"", b"worker"]
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(
            by_process(&names),
            [
                ("specific.a!", vec!["specific.a!1", "specific.a!2"]),
                ("specific.b!", vec!["specific.b!1"]),
                ("worker", vec!["worker"]),
            ]
        );
        assert!(by_process(&[]).is_empty(), "an empty group");
    }

    #[test]
    fn a_channel_is_ours_only_with_our_whole_id_before_its_bang() {
        let layer = super::RedisChannelLayer::from_url("redis://127.0.0.1:1/0").expect("layer");
        let id = layer.inner.client_prefix.clone();
        assert!(layer.inner.is_ours(&format!("specific.{id}!abc")));
        assert!(layer.inner.is_ours(&format!("chat.{id}!abc")), "any new_channel prefix");
        assert!(layer.inner.is_our_queue(&format!("specific.{id}!")));
        for other in [
            format!("specific.0{id}!abc"),
            format!("specific.{}!abc", &id[1..]),
            format!("{id}!abc"),
            format!("specific.{id}"),
            "specific.0123456789abcdef0123456789abcdef!abc".to_owned(),
        ] {
            assert!(!layer.inner.is_ours(&other), "{other}");
        }
        assert!(!layer.inner.is_our_queue(&format!("specific.0{id}!")));
    }
}
