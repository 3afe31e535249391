//! Worker channels (names without `!`): channels_redis's restore, pop, back up, clean up
//! protocol, so Python and Rust workers can share one channel.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use channels_core::layer::{Message, ReceiveError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::oneshot;

use super::{RedisChannelLayer, backend};
use crate::scripts;
use crate::wire;

/// Blocking connections of one worker channel, by shard, made on first use, with the
/// generation of the shard's endpoint they were made for (see [`crate::endpoint`]).
pub(super) type BlockingConnections = HashMap<usize, (u64, ConnectionManager)>;

impl RedisChannelLayer {
    /// A worker channel: channels_redis's restore → pop → back up → clean up dance, so Python
    /// and Rust receivers can share the channel. Cancel-safe: the pop runs in its own task and
    /// puts the message back if nobody is waiting for it any more.
    pub(super) async fn receive_normal(&self, channel: &str) -> Result<Message, ReceiveError> {
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

    pub(super) async fn pop_normal(
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
                let endpoint = &self.inner.shards[shard].endpoint;
                if blocking.get(&shard).is_none_or(|(generation, _)| *generation != endpoint.generation()) {
                    let (generation, client) = endpoint.client().await?;
                    let config = ConnectionManagerConfig::new().set_response_timeout(None).set_number_of_retries(1);
                    blocking.insert(shard, (generation, client.get_connection_manager_with_config(config).await?));
                }
                let Some((_, blocking)) = blocking.get_mut(&shard) else { unreachable!("inserted above") };
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
                    self.inner.shards[shard].endpoint.suspect();
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
