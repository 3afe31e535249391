//! Groups: memberships in Redis, and this process's record of the ones its channels made, which
//! re-adds them after Redis loses them and decides when a sender's own group send may be echoed.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use channels_core::layer::{GroupError, Message, validate_channel_name, validate_group_name};

use super::local::Local;
use super::shards::query;
use super::{Inner, backend};
use crate::wire;

/// A local channel's membership of a group, as this process made it (24 bytes: most groups of
/// an idle server hold one connection, and this is most of what it keeps for one).
pub(super) struct Joined {
    /// When this process last added it to the group in Redis.
    at: std::time::Instant,
    /// The layer's operation count then ([`Inner::ops`]), while the channel's own group sends
    /// may be echoed (see [`ChannelLayer::group_send_echo`]); `None` once a read of the group,
    /// made after that count, found it missing from Redis (another process discarded it, or
    /// Redis lost it), until this process adds it again.
    echo_since: Option<NonZeroU64>,
}

/// A group, and the channels of this process in it.
type LocalMembers = (String, Vec<Arc<str>>);

impl Joined {
    pub(super) fn new(ops: &AtomicU64) -> Self {
        // The count is taken after the membership is in Redis: a read of the group that took a
        // later count was sent after that, and would have seen it.
        Self { at: std::time::Instant::now(), echo_since: NonZeroU64::new(ops.fetch_add(1, Ordering::SeqCst) + 1) }
    }
}

impl Inner {
    /// [`ChannelLayer::group_add`](channels_core::layer::ChannelLayer::group_add): in Redis,
    /// then in this process's record when the channel is one of its own.
    pub(super) async fn group_add(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        validate_group_name(group)?;
        validate_channel_name(channel)?;
        self.raw_group_add(group, channel).await.map_err(|e| GroupError::Backend(backend(e)))?;
        if self.is_ours(channel) {
            let mut local = self.lock();
            if let Some((name, _)) = local.channels.get_key_value(channel) {
                let name = name.clone();
                local.memberships.entry(group.to_owned()).or_default().insert(name, Joined::new(&self.ops));
            }
        }
        Ok(())
    }

    /// [`ChannelLayer::group_discard`](channels_core::layer::ChannelLayer::group_discard).
    pub(super) async fn group_discard(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        validate_group_name(group)?;
        validate_channel_name(channel)?;
        {
            let mut local = self.lock();
            if let Some(members) = local.memberships.get_mut(group) {
                members.remove(channel);
                if members.is_empty() {
                    local.memberships.remove(group);
                }
            }
        }
        let mut conn = self.conn(self.shard_for(group)).await.map_err(|e| GroupError::Backend(backend(e)))?;
        redis::cmd("ZREM")
            .arg(self.group_key(group))
            .arg(channel)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| GroupError::Backend(backend(e)))
    }

    /// [`ChannelLayer::group_discard_many`](channels_core::layer::ChannelLayer::group_discard_many):
    /// one `ZREM` per group naming all its leaving channels, in one pipeline per shard.
    pub(super) async fn group_discard_many(&self, memberships: &[(String, String)]) -> Result<(), GroupError> {
        let mut by_group: HashMap<&str, Vec<&str>> = HashMap::new();
        for (group, channel) in memberships {
            validate_group_name(group)?;
            validate_channel_name(channel)?;
            by_group.entry(group).or_default().push(channel);
        }
        {
            let mut local = self.lock();
            for (group, channels) in &by_group {
                if let Some(members) = local.memberships.get_mut(*group) {
                    for channel in channels {
                        members.remove(channel);
                    }
                    if members.is_empty() {
                        local.memberships.remove(*group);
                    }
                }
            }
        }
        let mut by_shard: HashMap<usize, redis::Pipeline> = HashMap::new();
        for (group, channels) in &by_group {
            let pipe = by_shard.entry(self.shard_for(group)).or_insert_with(redis::pipe);
            pipe.cmd("ZREM").arg(self.group_key(group)).arg(channels).ignore();
        }
        let mut first_error = None;
        for (shard, pipe) in by_shard {
            if let Err(e) = query::<()>(self, shard, &pipe).await {
                first_error.get_or_insert(GroupError::Backend(backend(e)));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Adds every membership of this process's channels to Redis again, one pipeline per shard
    /// (a `ZADD` naming all of a group's channels here, and an `EXPIRE`): Redis may have lost
    /// them (a restart without persistence, a failover to a replica that missed them,
    /// `FLUSHALL`, eviction) or another process may have taken this one for dead. The
    /// heartbeat runs it every third of `process_ttl`, and the pumps after a reconnect. A
    /// membership discarded meanwhile is removed again.
    pub(super) async fn rejoin_groups(&self) {
        let memberships: Vec<LocalMembers> = self
            .lock()
            .memberships
            .iter()
            .map(|(group, members)| (group.clone(), members.iter().map(|(channel, _)| channel.clone()).collect()))
            .collect();
        let mut by_shard: HashMap<usize, Vec<&LocalMembers>> = HashMap::new();
        for membership in &memberships {
            by_shard.entry(self.shard_for(&membership.0)).or_default().push(membership);
        }
        for (shard, groups) in by_shard {
            let now = wire::now_seconds();
            let mut pipe = redis::pipe();
            for (group, channels) in &groups {
                let key = self.group_key(group);
                let zadd = pipe.cmd("ZADD").arg(&key);
                for channel in channels {
                    zadd.arg(now).arg(&**channel);
                }
                zadd.ignore();
                pipe.cmd("EXPIRE").arg(&key).arg(self.group_expiry_secs()).ignore();
            }
            if let Err(e) = query::<()>(self, shard, &pipe).await {
                tracing::warn!(error = %e, "could not re-add this process's memberships");
                continue;
            }
            if let Some(discarded) = self.rejoined(&groups)
                && let Err(e) = query::<()>(self, shard, &discarded).await
            {
                tracing::warn!(error = %e, "could not remove memberships discarded while they were re-added");
            }
        }
    }

    /// Records that the channels of `groups` were added to them again; returns the `ZREM`s of
    /// those discarded meanwhile, if any.
    fn rejoined(&self, groups: &[&LocalMembers]) -> Option<redis::Pipeline> {
        let mut discarded: Option<redis::Pipeline> = None;
        let mut local = self.lock();
        for (group, channels) in groups {
            let mut members = local.memberships.get_mut(group);
            let gone: Vec<&str> = channels
                .iter()
                .filter(|channel| match members.as_mut().and_then(|members| members.get_mut(channel)) {
                    Some(joined) => {
                        *joined = Joined::new(&self.ops);
                        false
                    }
                    None => true,
                })
                .map(|channel| &**channel)
                .collect();
            if !gone.is_empty() {
                discarded.get_or_insert_with(redis::pipe).cmd("ZREM").arg(self.group_key(group)).arg(gone).ignore();
            }
        }
        discarded
    }

    pub(super) async fn raw_group_add(&self, group: &str, channel: &str) -> Result<(), redis::RedisError> {
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

    /// [`ChannelLayer::group_send_echo`](channels_core::layer::ChannelLayer::group_send_echo):
    /// the sender's copy goes into its mailbox at once when the sender joined `group` in this
    /// process, the membership has not expired, no read of the group since found it gone, and
    /// the group's members here are not too far behind (below).
    ///
    /// An echo lets the sender's client go on before its message reached anyone else: a
    /// client that waits for its own messages (a chat window, a sender with a window of
    /// messages in flight) is then paced by its echoes, not by the layer. When the layer is
    /// slow (a dead process's members still in the group, each send writing their names into
    /// its queue), the senders of a room would queue up to the outbox's limit each, and the
    /// members here would get all of it at once when the batches land: more than their
    /// mailboxes hold, dropped. So the echoes not yet delivered to the group's members here,
    /// together with what waits in the sender's own mailbox (which gets what they get), stay
    /// under half the sender's capacity; past that a send is not echoed, its sender gets its
    /// copy with the batch, and a client paced by its echoes waits for the layer.
    pub(super) fn echo(&self, group: &str, channel: &str, message: &Message) -> bool {
        let expires = self.local_expiry();
        let group_expiry = self.config.layer.group_expiry;
        let mut local = self.lock();
        let Local { channels, memberships, echoed_ahead, .. } = &mut *local;
        let trusted = !self.echo_paused.load(Ordering::Relaxed)
            && memberships
                .get(group)
                .and_then(|members| members.get(channel))
                .is_some_and(|joined| joined.echo_since.is_some() && joined.at.elapsed() < group_expiry);
        let Some(mailbox) = channels.get_mut(channel).filter(|_| trusted) else { return false };
        let ahead = echoed_ahead.get_mut(group);
        let behind = mailbox.len() + ahead.as_ref().map_or(0, |ahead| **ahead);
        if behind >= self.config.layer.capacity_for(channel) / 2 || !self.push_into(mailbox, channel, message, expires)
        {
            return false;
        }
        match ahead {
            Some(ahead) => *ahead += 1,
            None => {
                echoed_ahead.insert(group.to_owned(), 1);
            }
        }
        true
    }

    /// The echoed `sends` have reached their groups' members in this process, or failed:
    /// they no longer count as ahead of them (see [`Inner::echo`]).
    pub(super) fn echoes_delivered(&self, sends: &[(String, Message)]) {
        if sends.is_empty() {
            return;
        }
        let mut local = self.lock();
        for run in sends.chunk_by(|(a, _), (b, _)| a == b) {
            let group = &run[0].0;
            if let Some(ahead) = local.echoed_ahead.get_mut(group) {
                *ahead = ahead.saturating_sub(run.len());
                if *ahead == 0 {
                    local.echoed_ahead.remove(group);
                }
            }
        }
    }

    /// Stops echoing `channel`'s sends to `group` (see [`Joined::echo_since`]) unless this
    /// process added the membership after `op`, when the read that missed it began: the read
    /// may have come before it.
    pub(super) fn stop_echoing(&self, group: &str, channel: &str, op: u64) {
        let mut local = self.lock();
        if let Some(joined) = local.memberships.get_mut(group).and_then(|members| members.get_mut(channel))
            && joined.echo_since.is_some_and(|since| since.get() < op)
        {
            joined.echo_since = None;
            tracing::debug!(%group, %channel, "membership gone from Redis; its sends are no longer echoed");
        }
    }
}
