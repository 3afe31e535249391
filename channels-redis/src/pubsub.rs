//! `RedisPubSubChannelLayer`: channels_redis's pub/sub layer, in Rust.
//!
//! Wire format (channels_redis `pubsub.py`): a channel is a Redis pub/sub channel named
//! `<prefix><new_channel prefix>.<32 hex>`; a group is the pub/sub channel
//! `<prefix>__group__<group>`; a payload is the bare msgpack map (no random prefix, no routing
//! key), Fernet-encrypted when keys are set; every name is placed on shard
//! `consistent_hash(full pub/sub channel name)`.
//!
//! Delivery is pub/sub's: at most once, nothing is kept for a subscriber that is not connected,
//! and there is no capacity, expiry or group expiry in Redis. Local buffers are still bounded by
//! `capacity`. After a Redis restart every subscription is made again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use channels_core::layer::{
    BackendError, ChannelLayer, ChannelReceiver, ConfigError, DroppedMessages, FlushError, GroupError, GroupSendReport,
    LayerConfig, Message, NewChannelError, PresenceStore, ReceiveError, SendError, validate_channel_name,
    validate_group_name,
};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{RedisConfig, backend};
use crate::crypto::Encryption;
use crate::endpoint::{CommandConnection, Endpoint};
use crate::mailbox::{self, Mailboxes};
use crate::wire::{self, consistent_hash};

/// A channel layer on Redis publish/subscribe, compatible with
/// `channels_redis.pubsub.RedisPubSubChannelLayer` (`redis+pubsub://` URLs).
///
/// ```no_run
/// let layer = channels_redis::RedisPubSubChannelLayer::from_url("redis+pubsub://127.0.0.1:6379").unwrap();
/// ```
#[derive(Clone)]
pub struct RedisPubSubChannelLayer {
    inner: Arc<Inner>,
}

struct Shard {
    /// Where it is: a fixed host, or the master its sentinels name.
    endpoint: Arc<Endpoint>,
    publisher: CommandConnection,
    /// The live subscription connection's sink; `None` while disconnected.
    sink: watch::Receiver<Option<PubSubSink>>,
    sink_tx: watch::Sender<Option<PubSubSink>>,
    /// What this shard must be subscribed to (made again after every reconnect).
    subscriptions: Mutex<HashSet<String>>,
    started: std::sync::Once,
}

#[derive(Default)]
struct Local {
    channels: Mailboxes,
    /// group pub/sub channel -> local channels in it
    groups: HashMap<String, HashSet<String>>,
}

struct Inner {
    config: RedisConfig,
    encryption: Option<Encryption>,
    shards: Vec<Shard>,
    local: Mutex<Local>,
    dropped_full: AtomicU64,
    /// The drops counted in `dropped_full`, for the log: a summary line per interval.
    drops: DroppedMessages,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn group_channel(&self, group: &str) -> String {
        format!("{}__group__{}", self.config.prefix, group)
    }

    fn shard_for(&self, name: &str) -> usize {
        consistent_hash(name, self.shards.len())
    }

    fn encode(&self, message: &Message) -> Vec<u8> {
        match &self.encryption {
            Some(encryption) => encryption.encrypt(message.as_bytes()),
            None => message.as_bytes().to_vec(),
        }
    }

    fn decode(&self, payload: &[u8]) -> Result<Message, String> {
        let body = match &self.encryption {
            Some(encryption) => encryption.decrypt(payload, None).map_err(|e| e.to_string())?,
            None => payload.to_vec(),
        };
        Message::from_msgpack(body).map_err(|e| e.to_string())
    }

    fn deliver(&self, pubsub_channel: &str, payload: &[u8]) {
        let message = match self.decode(payload) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(channel = pubsub_channel, error = %e, "skipping a pub/sub message that does not decode");
                return;
            }
        };
        let mut local = self.lock();
        let targets: Vec<String> = match local.groups.get(pubsub_channel) {
            Some(members) => members.iter().cloned().collect(),
            None => vec![pubsub_channel.to_owned()],
        };
        for channel in targets {
            let capacity = self.config.layer.capacity_for(&channel);
            if let Some(mailbox) = local.channels.get_mut(channel.as_str())
                && !mailbox.push(message.clone(), capacity, None)
            {
                self.dropped_full.fetch_add(1, Ordering::Relaxed);
                self.drops.record(&channel, 1);
            }
        }
    }

    async fn publisher(&self, shard: usize) -> Result<ConnectionManager, redis::RedisError> {
        let shard = &self.shards[shard];
        shard.publisher.connect(&shard.endpoint).await
    }
}

/// Keeps one shard's subscription connection alive, subscribing again after every reconnect
/// (and on the new master after a failover).
async fn subscriber(weak: Weak<Inner>, index: usize, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let shard = &inner.shards[index];
        let mut master_changed = shard.endpoint.subscribe();
        let connected = match shard.endpoint.client().await {
            Ok((_, client)) => client.get_async_pubsub().await,
            Err(e) => Err(e),
        };
        master_changed.borrow_and_update();
        let (mut sink, mut stream) = match connected {
            Ok(pubsub) => {
                failing = false;
                pubsub.split()
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "pub/sub connection failed; retrying");
                }
                failing = true;
                shard.endpoint.suspect();
                drop(inner);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Publish the sink first, then subscribe to everything wanted: a name added meanwhile
        // is subscribed by whoever added it, or is in this snapshot.
        shard.sink_tx.send_replace(Some(sink.clone()));
        let wanted: Vec<String> =
            shard.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        if !wanted.is_empty()
            && let Err(e) = sink.subscribe(&wanted).await
        {
            tracing::warn!(error = %e, "could not subscribe again after a reconnect");
        }
        backoff = Duration::from_millis(100);
        drop(inner);
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = stream.next() => message,
                // A failover: subscribe on the new master.
                Ok(()) = master_changed.changed() => None,
            };
            let Some(message) = message else { break };
            let Some(inner) = weak.upgrade() else { return };
            inner.deliver(message.get_channel_name(), message.get_payload_bytes());
        }
        tracing::warn!("pub/sub connection lost; reconnecting");
        if let Some(inner) = weak.upgrade() {
            inner.shards[index].sink_tx.send_replace(None);
            inner.shards[index].endpoint.suspect();
        }
    }
}

impl RedisPubSubChannelLayer {
    /// A layer with the given settings (`prefix`, `hosts`, encryption keys; `capacity` bounds
    /// the local buffers).
    pub fn new(config: RedisConfig) -> Result<Self, ConfigError> {
        config.warn_if_unverified();
        let shards = config
            .open_endpoints()?
            .into_iter()
            .map(|endpoint| {
                let (sink_tx, sink) = watch::channel(None);
                Shard {
                    endpoint,
                    publisher: CommandConnection::default(),
                    sink,
                    sink_tx,
                    subscriptions: Mutex::new(HashSet::new()),
                    started: std::sync::Once::new(),
                }
            })
            .collect();
        let encryption = config.encryption()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                encryption,
                shards,
                local: Mutex::new(Local::default()),
                dropped_full: AtomicU64::new(0),
                drops: DroppedMessages::new("redis+pubsub", DroppedMessages::DEFAULT_INTERVAL),
                stop: CancellationToken::new(),
            }),
        })
    }

    /// A layer from a `redis+pubsub://host:port/db?prefix=asgi` URL.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        Self::new(RedisConfig::from_url(url)?)
    }

    /// Messages dropped because a local buffer was full, since creation.
    pub fn dropped_full(&self) -> u64 {
        self.inner.dropped_full.load(Ordering::Relaxed)
    }

    /// Subscribes this process to `name` (on its shard) and waits for Redis to confirm.
    async fn subscribe(&self, name: &str) -> Result<(), BackendError> {
        let index = self.inner.shard_for(name);
        let shard = &self.inner.shards[index];
        if !shard.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned()) {
            return Ok(());
        }
        shard.started.call_once(|| {
            tokio::spawn(subscriber(Arc::downgrade(&self.inner), index, self.inner.stop.clone()));
        });
        let mut sink_rx = shard.sink.clone();
        let sink = tokio::time::timeout(Duration::from_secs(5), sink_rx.wait_for(Option::is_some))
            .await
            .map_err(|_| backend(std::io::Error::other("no pub/sub connection to Redis within 5 s")))?
            .map_err(backend)?
            .clone();
        if let Some(mut sink) = sink {
            sink.subscribe(name).await.map_err(backend)?;
        }
        Ok(())
    }

    async fn unsubscribe(&self, name: &str) {
        let shard = &self.inner.shards[self.inner.shard_for(name)];
        shard.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        let sink = shard.sink.borrow().clone();
        if let Some(mut sink) = sink {
            let _ = sink.unsubscribe(name).await;
        }
    }

    async fn publish(&self, name: &str, message: &Message) -> Result<(), BackendError> {
        let mut conn = self.inner.publisher(self.inner.shard_for(name)).await.map_err(backend)?;
        redis::cmd("PUBLISH")
            .arg(name)
            .arg(self.inner.encode(message))
            .query_async::<()>(&mut conn)
            .await
            .map_err(backend)
    }
}

impl std::fmt::Debug for RedisPubSubChannelLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPubSubChannelLayer").field("hosts", &self.inner.config.hosts_without_passwords()).finish()
    }
}

impl mailbox::LocalMailboxes for RedisPubSubChannelLayer {
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

#[async_trait]
impl ChannelLayer for RedisPubSubChannelLayer {
    async fn new_channel(&self, prefix: &str) -> Result<String, NewChannelError> {
        let name = format!("{}{prefix}.{}", self.inner.config.prefix, wire::random_hex());
        validate_channel_name(&name)?;
        self.inner.lock().channels.entry(Arc::from(name.as_str())).or_default();
        self.subscribe(&name).await.map_err(NewChannelError::Backend)?;
        Ok(name)
    }

    async fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        validate_channel_name(channel)?;
        self.publish(channel, &message).await.map_err(SendError::Backend)
    }

    async fn receive(&self, channel: &str) -> Result<Message, ReceiveError> {
        // The hot path: a channel with a mailbox is valid and subscribed already.
        if let Some(message) = mailbox::receive(&self.inner.local, |local| local.channels.get_mut(channel)).await {
            return Ok(message);
        }
        validate_channel_name(channel)?;
        // A name this process did not create is a worker channel: subscribe to it on first use.
        let known = {
            let mut local = self.inner.lock();
            let known = local.channels.contains_key(channel);
            if !known {
                local.channels.insert(Arc::from(channel), Default::default());
            }
            known
        };
        if !known {
            self.subscribe(channel).await.map_err(ReceiveError::Backend)?;
        }
        mailbox::receive_or_create(&self.inner.local, |local| &mut local.channels, channel).await
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
        let group_channel = self.inner.group_channel(group);
        {
            let mut local = self.inner.lock();
            if !local.channels.contains_key(channel) {
                return Err(GroupError::Backend(
                    format!("{channel:?} was not created by this process; pub/sub groups are per process").into(),
                ));
            }
            local.groups.entry(group_channel.clone()).or_default().insert(channel.to_owned());
        }
        self.subscribe(&group_channel).await.map_err(GroupError::Backend)
    }

    async fn group_discard(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        validate_group_name(group)?;
        validate_channel_name(channel)?;
        let group_channel = self.inner.group_channel(group);
        let now_empty = {
            let mut local = self.inner.lock();
            match local.groups.get_mut(&group_channel) {
                Some(members) => {
                    members.remove(channel);
                    let empty = members.is_empty();
                    if empty {
                        local.groups.remove(&group_channel);
                    }
                    empty
                }
                None => false,
            }
        };
        if now_empty {
            self.unsubscribe(&group_channel).await;
        }
        Ok(())
    }

    async fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, GroupError> {
        validate_group_name(group)?;
        self.publish(&self.inner.group_channel(group), &message).await.map_err(GroupError::Backend)?;
        // Pub/sub does not say who received it; report the one publish.
        Ok(GroupSendReport::new(1, 0))
    }

    async fn flush(&self) -> Result<(), FlushError> {
        let groups: Vec<String> = {
            let mut local = self.inner.lock();
            for mailbox in local.channels.values_mut() {
                mailbox.clear();
            }
            local.groups.drain().map(|(name, _)| name).collect()
        };
        for group in groups {
            self.unsubscribe(&group).await;
        }
        // Group history is the one thing this layer keeps in Redis: a flush starts it anew.
        let pattern = format!("{}:history:*", crate::layer::escape_glob(&self.inner.config.prefix));
        for index in 0..self.inner.shards.len() {
            let mut conn = self.inner.publisher(index).await.map_err(|e| FlushError::Backend(backend(e)))?;
            crate::layer::unlink_matching(&mut conn, &pattern).await.map_err(|e| FlushError::Backend(backend(e)))?;
        }
        Ok(())
    }

    /// A `PING` to every shard's publishing connection; an error names the host.
    async fn ping(&self) -> Result<(), BackendError> {
        for index in 0..self.inner.shards.len() {
            let answered = match self.inner.publisher(index).await {
                Ok(mut conn) => redis::cmd("PING").query_async::<()>(&mut conn).await,
                Err(e) => Err(e),
            };
            answered.map_err(|e| self.inner.config.connect_failure(index, &e))?;
        }
        Ok(())
    }

    async fn forget_channel(&self, channel: &str) {
        let emptied: Vec<String> = {
            let mut local = self.inner.lock();
            local.channels.remove(channel);
            let mut emptied = Vec::new();
            local.groups.retain(|name, members| {
                members.remove(channel);
                if members.is_empty() {
                    emptied.push(name.clone());
                }
                !members.is_empty()
            });
            emptied
        };
        self.unsubscribe(channel).await;
        for group in emptied {
            self.unsubscribe(&group).await;
        }
    }

    /// Presence entries in Redis, beside the layer's keys (see `channels::presence`).
    fn presence_store(&self) -> Option<Arc<dyn PresenceStore>> {
        crate::presence::store_for(&self.inner.config)
    }

    /// A stream per group in Redis, under the layer's prefix, as the sorted-set layer keeps it:
    /// sends through `History` are stored there and published as usual.
    fn history_store(&self) -> Option<Arc<dyn channels_core::layer::HistoryStore>> {
        crate::history::store_for(&self.inner.config)
    }

    fn config(&self) -> &LayerConfig {
        &self.inner.config.layer
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{SECRETS, config_with_secrets};

    #[test]
    fn debug_output_shows_no_password_or_encryption_key() {
        let layer = super::RedisPubSubChannelLayer::new(config_with_secrets()).expect("layer");
        let shown = format!("{layer:?}");
        for secret in SECRETS {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("a:6379/2"), "{shown}");
    }
}
