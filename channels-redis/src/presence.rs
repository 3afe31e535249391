//! Presence entries in Redis, shared by every process of a deployment (see
//! `channels::presence`): per group, a hash of entries and a sorted set of their expiry times,
//! under the layer's prefix, on the shard the group's name hashes to.
//!
//! - `<prefix>:presence:<group>`: hash, entry reference → entry (JSON);
//! - `<prefix>:presence:<group>:expiry`: sorted set, entry reference → expiry time (Unix
//!   milliseconds, this process's clock).
//!
//! A write adds entries to both and removes untracked ones from both, in one pipeline, and
//! gives both keys a time to live of twice the entries' (every live process writes its entries
//! again well within that). A read removes the expired entries from both, then returns the
//! rest, in one script. channels_redis keys (`<prefix>:group:*`, queues) are not touched.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use channels_core::layer::{BackendError, ConfigError, PresenceStore};
use redis::aio::ConnectionManager;

use crate::config::{RedisConfig, backend};
use crate::endpoint::{CommandConnection, Endpoint};
use crate::scripts;
use crate::wire::consistent_hash;

/// Most arguments one command of a write takes.
const CHUNK: usize = 1000;

/// A [`PresenceStore`] on the Redis hosts of a layer, with connections of its own so that
/// presence traffic never queues behind the layer's messages.
pub(crate) struct RedisPresenceStore {
    prefix: String,
    shards: Vec<(std::sync::Arc<Endpoint>, CommandConnection)>,
}

impl std::fmt::Debug for RedisPresenceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresenceStore").field("prefix", &self.prefix).field("shards", &self.shards.len()).finish()
    }
}

/// The presence store of a Redis layer with `config`: what both layers'
/// `ChannelLayer::presence_store` return.
pub(crate) fn store_for(config: &RedisConfig) -> Option<std::sync::Arc<dyn PresenceStore>> {
    match RedisPresenceStore::new(config) {
        Ok(store) => Some(std::sync::Arc::new(store)),
        Err(e) => {
            tracing::warn!(error = %e, "presence stays in this process: no Redis client");
            None
        }
    }
}

impl RedisPresenceStore {
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, ConfigError> {
        let shards =
            config.open_endpoints()?.into_iter().map(|endpoint| (endpoint, CommandConnection::default())).collect();
        Ok(Self { prefix: config.prefix.clone(), shards })
    }

    fn keys(&self, group: &str) -> (String, String) {
        let entries = format!("{}:presence:{group}", self.prefix);
        let expiry = format!("{entries}:expiry");
        (entries, expiry)
    }

    async fn conn(&self, group: &str) -> Result<ConnectionManager, BackendError> {
        let (endpoint, cell) = &self.shards[consistent_hash(group, self.shards.len())];
        cell.connect(endpoint).await.map_err(backend)
    }
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[async_trait]
impl PresenceStore for RedisPresenceStore {
    async fn write(
        &self,
        group: &str,
        tracked: &[(&str, &str)],
        untracked: &[&str],
        ttl: Duration,
    ) -> Result<(), BackendError> {
        let (entries, expiry) = self.keys(group);
        let ttl_ms = ttl.as_millis() as u64;
        let expires = now_millis() + ttl_ms;
        let mut pipe = redis::pipe();
        for chunk in tracked.chunks(CHUNK) {
            pipe.cmd("HSET").arg(&entries);
            for (reference, value) in chunk {
                pipe.arg(reference).arg(value);
            }
            pipe.ignore();
            pipe.cmd("ZADD").arg(&expiry);
            for (reference, _) in chunk {
                pipe.arg(expires).arg(reference);
            }
            pipe.ignore();
        }
        for chunk in untracked.chunks(CHUNK) {
            pipe.cmd("HDEL").arg(&entries).arg(chunk).ignore();
            pipe.cmd("ZREM").arg(&expiry).arg(chunk).ignore();
        }
        if !tracked.is_empty() {
            pipe.cmd("PEXPIRE").arg(&entries).arg(2 * ttl_ms).ignore();
            pipe.cmd("PEXPIRE").arg(&expiry).arg(2 * ttl_ms).ignore();
        }
        let mut conn = self.conn(group).await?;
        pipe.query_async::<()>(&mut conn).await.map_err(backend)
    }

    async fn read(&self, group: &str) -> Result<Vec<(String, String)>, BackendError> {
        let (entries, expiry) = self.keys(group);
        let mut conn = self.conn(group).await?;
        let (all, live): (Vec<(String, String)>, Vec<String>) = scripts::PRESENCE_READ
            .key(&entries)
            .key(&expiry)
            .arg(now_millis())
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        let live: std::collections::HashSet<String> = live.into_iter().collect();
        Ok(all.into_iter().filter(|(reference, _)| live.contains(reference)).collect())
    }
}
