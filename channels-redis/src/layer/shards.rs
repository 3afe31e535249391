//! Where things live in Redis: the shards and their command connections, the key names of
//! queues and groups, which shard holds a key, and which channels and queues are this
//! process's own.

use std::sync::Arc;

use channels_core::layer::non_local_name;
use redis::aio::ConnectionManager;

use super::Inner;
use crate::endpoint::{CommandConnection, Endpoint};
use crate::wire::consistent_hash;

/// One Redis host of the layer.
pub(super) struct Shard {
    /// Where it is: a fixed host, or the master its sentinels name.
    pub(super) endpoint: Arc<Endpoint>,
    /// The shared connection for ordinary commands, made on first use (and again after a
    /// failover).
    pub(super) commands: CommandConnection,
}

impl Inner {
    pub(super) fn queue_key(&self, channel: &str) -> String {
        format!("{}{}", self.config.prefix, non_local_name(channel))
    }

    pub(super) fn group_key(&self, group: &str) -> String {
        format!("{}:group:{}", self.config.prefix, group)
    }

    pub(super) fn shard_for(&self, value: &str) -> usize {
        consistent_hash(value, self.shards.len())
    }

    pub(super) fn is_ours(&self, channel: &str) -> bool {
        // `<prefix>.<client_prefix>!<local>`: our id between the last '.' and the first '!'.
        channel.split_once('!').is_some_and(|(non_local, _)| self.is_our_id(non_local))
    }

    /// Whether `non_local` (up to its `!`) ends in `.` and this process's id.
    pub(super) fn is_our_id(&self, non_local: &str) -> bool {
        non_local.strip_suffix(self.client_prefix.as_str()).is_some_and(|rest| rest.ends_with('.'))
    }

    /// Whether a process queue's name (`<prefix>.<client_prefix>!`) is one this layer reads.
    pub(super) fn is_our_queue(&self, non_local: &str) -> bool {
        non_local.strip_suffix('!').is_some_and(|id| self.is_our_id(id))
    }

    pub(super) async fn conn(&self, shard: usize) -> Result<ConnectionManager, redis::RedisError> {
        let shard = &self.shards[shard];
        shard.commands.connect(&shard.endpoint).await
    }
}

/// Runs `pipe` on `shard`'s command connection.
pub(super) async fn query<T: redis::FromRedisValue>(
    inner: &Inner,
    shard: usize,
    pipe: &redis::Pipeline,
) -> Result<T, redis::RedisError> {
    let mut conn = inner.conn(shard).await?;
    pipe.query_async(&mut conn).await
}

/// [`query`] for a pipeline that may run twice (reads, trims): once more when the connection
/// turns out to have dropped (Redis restarted since its last use), as the connection
/// reconnects on that error.
pub(super) async fn query_retried<T: redis::FromRedisValue>(
    inner: &Inner,
    shard: usize,
    pipe: &redis::Pipeline,
) -> Result<T, redis::RedisError> {
    // A connection that could not be made is not tried again: that would double the wait for
    // the error while Redis is down.
    let had_connection = inner.shards[shard].commands.get().is_some();
    match query(inner, shard, pipe).await {
        Err(e) if had_connection && e.is_connection_dropped() => {
            tracing::debug!(error = %e, shard, "command connection dropped; retrying once");
            query(inner, shard, pipe).await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_channel_is_ours_only_with_our_whole_id_before_its_bang() {
        let layer = crate::RedisChannelLayer::from_url("redis://127.0.0.1:1/0").expect("layer");
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
