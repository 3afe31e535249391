//! The receive pump: a task per shard that pops this process's queue and hands each message to
//! the local channels it names.

use std::borrow::Cow;
use std::sync::{Arc, Weak};
use std::time::Duration;

use channels_core::layer::{Message, ReceiveError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use super::{Inner, RedisChannelLayer};
use crate::endpoint::Endpoint;
use crate::mailbox;
use crate::wire::{self, Routing};

/// Most queued messages a pump takes in one round trip after its blocking pop.
const POP_BATCH: usize = 127;

/// Pops one process queue on one shard, forever, until the layer is dropped. When the
/// shard's sentinels name another master, the pop moves there and the memberships of this
/// process are added again, as after a Redis restart.
async fn pump(weak: Weak<Inner>, endpoint: Arc<Endpoint>, key: String, timeout: Duration, stop: CancellationToken) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(None)
        .set_number_of_retries(1);
    let mut conn: Option<(u64, ConnectionManager)> = None;
    let mut failing = false;
    let mut backoff = Duration::from_millis(100);
    let mut master_changed = endpoint.subscribe();
    loop {
        let popped = tokio::select! {
            () = stop.cancelled() => return,
            // A failover: the blocking pop on the old master is abandoned (its connection
            // closed), and the next one goes to the new master.
            Ok(()) = master_changed.changed(), if conn.is_some() => {
                if conn.as_ref().is_some_and(|(generation, _)| *generation == endpoint.generation()) {
                    Ok(None) // the connection was made for the new master already
                } else {
                    Err(redis::RedisError::from(std::io::Error::other("the sentinels named another master")))
                }
            }
            popped = async {
                if conn.as_ref().is_none_or(|(generation, _)| *generation != endpoint.generation()) {
                    let (generation, client) = endpoint.client().await?;
                    conn = Some((generation, client.get_connection_manager_with_config(config.clone()).await?));
                }
                let Some((_, c)) = conn.as_mut() else { unreachable!() };
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
                if failing && !e.is_io_error() {
                    // redis-rs's ConnectionManager keeps the error of a failed reconnection that
                    // is not an I/O one (a password refused while a restarted Redis lacks its
                    // users) and never tries again: make new connections, this pump's and the
                    // shard's command connection.
                    conn = None;
                    for shard in inner.shards.iter().filter(|shard| Arc::ptr_eq(&shard.endpoint, &endpoint)) {
                        shard.commands.reset();
                    }
                }
                failing = true;
                endpoint.suspect();
                drop(inner);
                // After a failover the next pop goes to the new master on a new connection,
                // at once; otherwise wait a little longer each time, or until the sentinels
                // name a new master.
                if conn.as_ref().is_some_and(|(generation, _)| *generation != endpoint.generation()) {
                    conn = None;
                    backoff = Duration::from_millis(100);
                    continue;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                    Ok(()) = master_changed.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

impl Inner {
    /// A queue member's body: the member without its random prefix, decrypted when keys are
    /// configured.
    pub(super) fn unseal<'a>(&self, member: &'a [u8]) -> Result<Cow<'a, [u8]>, wire::WireError> {
        let body = wire::unframe(member)?;
        Ok(match &self.encryption {
            // channels_redis decrypts with a TTL of expiry + 10 s.
            Some(encryption) => Cow::Owned(encryption.decrypt(body, Some(self.expiry_secs() + 10))?),
            None => Cow::Borrowed(body),
        })
    }

    /// Hands popped process-queue members, in order, to the local channels they name.
    pub(super) fn deliver(&self, popped: &[Vec<u8>]) {
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
}

impl RedisChannelLayer {
    /// Starts the pumps (one per shard) for a process queue, once.
    pub(super) fn ensure_pumps(&self, queue_key: &str) {
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
                shard.endpoint.clone(),
                queue_key.to_owned(),
                timeout,
                self.inner.stop.clone(),
            ));
        }
    }

    pub(super) async fn receive_local(&self, channel: &str) -> Result<Message, ReceiveError> {
        // A channel made by `new_channel` has its mailbox and its pumps already: the hot path
        // neither allocates nor starts anything.
        if !self.inner.lock().channels.contains_key(channel) {
            self.ensure_pumps(&self.inner.queue_key(channel));
        }
        mailbox::receive_or_create(&self.inner.local, |local| &mut local.channels, channel).await
    }
}

pub(super) fn undecodable(e: &wire::WireError) {
    tracing::warn!(error = %e, "skipping a channel layer message that does not decode");
}
