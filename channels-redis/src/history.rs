//! Group history in Redis, for recovery (see `channels_core::layer::History`): per group, a
//! stream of messages and a hash holding the epoch and the last offset, under the layer's
//! prefix, on the shard the group's name hashes to.
//!
//! - `<prefix>:history:<group>`: stream; each entry has fields `o` (the offset) and `p` (the
//!   message, msgpack as sent);
//! - `<prefix>:history:<group>:meta`: hash, `epoch` and `offset`;
//! - `<prefix>:history:<group>:id:<key>`: string `OFFSET:EPOCH`, for an append once per key
//!   (`append_once`), living a window.
//!
//! An append is one script: it makes the hash with a new epoch if it is missing (history lost:
//! a flush, an expiry, a new Redis), increments the offset and adds the entry with it, trimmed
//! to the size (`MAXLEN`) and the window (`MINID`, Redis's clock). A read is one script too.
//! The stream expires a window after its last append, the hash [`META_TTL`] after: a client that
//! missed nothing keeps its position through a quiet spell longer than the window. These keys
//! are this crate's own: channels_redis keys and messages are untouched, and a Python
//! process's `group_send` reaches the members but gets no position and is not stored.

use std::time::Duration;

use async_trait::async_trait;
use channels_core::layer::{
    BackendError, ConfigError, HistoryOptions, HistoryStore, Message, StoredSince, StreamPosition, new_epoch,
    select_since,
};
use redis::aio::ConnectionManager;

use crate::config::{RedisConfig, backend};
use crate::endpoint::{CommandConnection, Endpoint};
use crate::scripts;
use crate::wire::consistent_hash;

/// How long a group's epoch and offset outlive its last message: a week.
pub(crate) const META_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A [`HistoryStore`] on the Redis hosts of a layer, with connections of its own.
pub(crate) struct RedisHistoryStore {
    prefix: String,
    shards: Vec<(std::sync::Arc<Endpoint>, CommandConnection)>,
}

impl std::fmt::Debug for RedisHistoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHistoryStore").field("prefix", &self.prefix).field("shards", &self.shards.len()).finish()
    }
}

/// The history store of a Redis layer with `config`.
pub(crate) fn store_for(config: &RedisConfig) -> Option<std::sync::Arc<dyn HistoryStore>> {
    match RedisHistoryStore::new(config) {
        Ok(store) => Some(std::sync::Arc::new(store)),
        Err(e) => {
            tracing::warn!(error = %e, "no group history: no Redis client");
            None
        }
    }
}

impl RedisHistoryStore {
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, ConfigError> {
        let shards =
            config.open_endpoints()?.into_iter().map(|endpoint| (endpoint, CommandConnection::default())).collect();
        Ok(Self { prefix: config.prefix.clone(), shards })
    }

    fn keys(&self, group: &str) -> (String, String) {
        let stream = format!("{}:history:{group}", self.prefix);
        let meta = format!("{stream}:meta");
        (stream, meta)
    }

    async fn conn(&self, group: &str) -> Result<ConnectionManager, redis::RedisError> {
        let (endpoint, cell) = &self.shards[consistent_hash(group, self.shards.len())];
        cell.connect(endpoint).await
    }

    /// Runs `script` on `group`'s shard, once more when the connection turns out to have
    /// dropped (Redis restarted since the last use): the connection reconnects on that error,
    /// and the command was not carried out, so the retry neither fails needlessly nor writes
    /// twice.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        group: &str,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BackendError> {
        let mut conn = self.conn(group).await.map_err(backend)?;
        match script.invoke_async(&mut conn).await {
            Err(e) if e.is_connection_dropped() => {
                tracing::debug!(error = %e, %group, "history connection dropped; retrying once");
                let mut conn = self.conn(group).await.map_err(backend)?;
                script.invoke_async(&mut conn).await.map_err(backend)
            }
            other => other.map_err(backend),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// One stream entry as the read script returns it: id, then `o`, offset, `p`, payload.
type Entry = (String, (String, u64, String, Vec<u8>));

#[async_trait]
impl HistoryStore for RedisHistoryStore {
    async fn append(
        &self,
        group: &str,
        message: &Message,
        options: HistoryOptions,
    ) -> Result<StreamPosition, BackendError> {
        let (stream, meta) = self.keys(group);
        let window = millis(options.window);
        let mut script = scripts::HISTORY_APPEND.key(&stream);
        script
            .key(&meta)
            .arg(message.as_bytes())
            .arg(options.size.max(1))
            .arg(window)
            .arg(new_epoch())
            .arg(window.saturating_add(millis(META_TTL)));
        let (epoch, offset): (String, u64) = self.invoke(group, &script).await?;
        Ok(StreamPosition { epoch: epoch.into(), offset })
    }

    async fn append_once(
        &self,
        group: &str,
        key: &str,
        message: &Message,
        options: HistoryOptions,
    ) -> Result<(StreamPosition, bool), BackendError> {
        let (stream, meta) = self.keys(group);
        let marker = format!("{stream}:id:{key}");
        let window = millis(options.window);
        let mut script = scripts::HISTORY_APPEND_ONCE.key(&stream);
        script
            .key(&meta)
            .key(&marker)
            .arg(message.as_bytes())
            .arg(options.size.max(1))
            .arg(window)
            .arg(new_epoch())
            .arg(window.saturating_add(millis(META_TTL)));
        let (epoch, offset, new): (String, u64, u8) = self.invoke(group, &script).await?;
        Ok((StreamPosition { epoch: epoch.into(), offset }, new == 1))
    }

    async fn since(&self, group: &str, since: &StreamPosition, window: Duration) -> Result<StoredSince, BackendError> {
        let (stream, meta) = self.keys(group);
        let window = millis(window);
        let mut script = scripts::HISTORY_READ.key(&stream);
        script.key(&meta).arg(window).arg(new_epoch()).arg(window.saturating_add(millis(META_TTL))).arg(&*since.epoch);
        let (epoch, top, entries): (String, u64, Vec<Entry>) = self.invoke(group, &script).await?;
        let mut messages = Vec::with_capacity(entries.len());
        for (_, (_, offset, _, payload)) in entries {
            messages.push((offset, Message::from_msgpack(payload).map_err(backend)?));
        }
        Ok(select_since(StreamPosition { epoch: epoch.into(), offset: top }, since, messages))
    }
}
