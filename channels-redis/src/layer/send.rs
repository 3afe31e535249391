//! The send path: a message's payload and score, the commands that add it to a queue, and
//! `send` to one channel.
//!
//! A message is added to a queue by plain commands in a pipeline (trim the expired, add,
//! refresh the time to live, count), one pipeline per shard; only a queue the count finds past
//! its capacity gets a Lua script, which takes the message out again if the queue is still
//! full ([`stays`]).

use std::sync::atomic::Ordering;

use channels_core::layer::{Message, SendError, non_local_name, validate_channel_name};
use redis::aio::ConnectionManager;

use super::{Inner, backend};
use crate::scripts;
use crate::wire::{self, Routing};

/// The smallest gap between the scores of two group messages of one process: a microsecond,
/// well above an `f64`'s resolution at today's Unix time (about 0.24 µs).
const SCORE_STEP: f64 = 1e-6;

impl Inner {
    /// [`ChannelLayer::send`](channels_core::layer::ChannelLayer::send).
    pub(super) async fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        validate_channel_name(channel)?;
        // Our own channel: straight into its mailbox, as the pump would put it. One with no
        // mailbox here yet goes through Redis and waits in our queue as before.
        if self.is_ours(channel)
            && let Some(taken) = self.send_own(channel, &message)
        {
            return if taken { Ok(()) } else { Err(SendError::ChannelFull { channel: channel.to_owned() }) };
        }
        let (routing, shard) = if channel.contains('!') {
            // channels_redis hashes the full name here (channels#1492); the receiver listens
            // on hash(non-local name), so that is where we write.
            (Routing::One(channel), self.shard_for(non_local_name(channel)))
        } else {
            (Routing::None, self.round_robin.fetch_add(1, Ordering::Relaxed) % self.shards.len())
        };
        let payload = self.seal(wire::body_with_routing(&message, &routing));
        let now = wire::now_seconds();
        let queue = self.queue_key(channel);
        let mut pipe = redis::pipe();
        self.push_commands(&mut pipe, &queue, now, self.next_score(now), &payload);
        let kept = async {
            let mut conn = self.conn(shard).await?;
            let lengths: Vec<usize> = pipe.query_async(&mut conn).await?;
            let capacity = self.config.layer.capacity_for(channel);
            stays(&mut conn, &queue, lengths.first().copied().unwrap_or_default(), capacity, &payload).await
        };
        match kept.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SendError::ChannelFull { channel: channel.to_owned() }),
            Err(e) => Err(SendError::Backend(backend(e))),
        }
    }

    /// `random(12) || body`, the body encrypted when keys are configured.
    pub(super) fn seal(&self, body: Vec<u8>) -> Vec<u8> {
        match &self.encryption {
            Some(encryption) => wire::frame(&encryption.encrypt(&body)),
            None => wire::frame(&body),
        }
    }

    /// The queue score for a message sent now: later than every score this process handed
    /// out before, so its messages keep their order in a queue even where the clock reads the
    /// same twice (a batch of group sends is scored at one reading).
    pub(super) fn next_score(&self, now: f64) -> f64 {
        let mut last = self.last_score.lock().unwrap_or_else(|p| p.into_inner());
        *last = now.max(*last + SCORE_STEP);
        *last
    }

    /// Appends to `pipe` what adds `payload` with `score` to `queue`: channels_redis's send
    /// (trim the expired, add, refresh the key's time to live) in plain commands, then the
    /// queue's length, the pipeline's one reply for it, which [`stays`] checks against the
    /// capacity. A Lua script would do the check first, but Redis hashes every byte of a
    /// string handed to Lua: for a group message naming 500 members that was 2.5 times the
    /// redis-server CPU of these commands.
    pub(super) fn push_commands(&self, pipe: &mut redis::Pipeline, queue: &str, now: f64, score: f64, payload: &[u8]) {
        let trim_before = now.floor() as i64 - self.expiry_secs() as i64;
        pipe.cmd("ZREMRANGEBYSCORE").arg(queue).arg(0).arg(trim_before).ignore();
        pipe.cmd("ZADD").arg(queue).arg(score).arg(payload).ignore();
        pipe.cmd("EXPIRE").arg(queue).arg(self.expiry_secs()).ignore();
        pipe.cmd("ZCARD").arg(queue);
    }
}

/// Whether a payload added to `queue` by [`Inner::push_commands`] stays there: yes when the
/// queue's `length` after the add was within `capacity`; otherwise it is taken out again
/// unless the queue has room by now, so a full queue drops the message as channels_redis's
/// check-then-add script would (the queue holds one more than its capacity only until then).
pub(super) async fn stays(
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
