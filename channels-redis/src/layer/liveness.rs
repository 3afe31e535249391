//! Which processes of ours are alive, and the pruning of dead ones' members from groups.
//!
//! A process that dies without leaving its groups (SIGKILL, OOM, a short grace period) leaves
//! its members in them until `group_expiry`, a day by default, and every group send to them
//! writes a payload naming all of them into a queue nobody reads. So each process of ours
//! heartbeats into one sorted set, `<prefix>:processes`: its id (the `client_prefix` of its
//! channel names) scored by when that heartbeat expires, on Redis's clock (`TIME`), every
//! third of [`RedisConfig::process_ttl`](crate::RedisConfig::process_ttl). A heartbeat also
//! reads the set: an id whose score has passed is a dead process of ours. So is an id whose
//! liveness channel, `<prefix>:processes:<id>`, has no subscriber: each process subscribes to
//! its own on a connection of its own before it first lists itself, and Redis drops that
//! subscription as soon as the process's connections close, which a SIGKILL, an OOM kill or a
//! crash does at once (`PUBSUB NUMSUB`, read with the set). A process whose host vanished
//! leaves its connections half-open; its score running out finds it then. A group send leaves
//! out the members of dead processes and removes them from the group (one `ZREM` per group, in
//! a task of its own). Ids never in the set (Python processes) are never touched. An entry
//! leaves the set `group_expiry` after it expired, when no membership it made can be left.
//!
//! Every heartbeat also adds this process's memberships to Redis again (see
//! [`Inner::rejoin_groups`]): a live process taken for dead (its liveness connection dropped,
//! or its heartbeats stalled for longer than `process_ttl`) is back in its groups a beat after
//! the others see it alive again, and so is a membership Redis lost.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use channels_core::layer::non_local_name;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Inner, RedisChannelLayer};
use crate::wire;

/// The dead processes of ours last seen in `<prefix>:processes`, the groups whose dead
/// members are being removed, and this process's subscription to its liveness channel.
#[derive(Default)]
pub(super) struct Liveness {
    dead: HashSet<String>,
    pruning: HashSet<String>,
    /// Subscribed to the liveness channel now.
    subscribed: bool,
    /// Subscriptions to the liveness channel made so far.
    subscriptions: u64,
}

/// The replies to a heartbeat: `TIME` (seconds, microseconds), this process's previous score,
/// and the whole set with scores.
type HeartbeatReplies = ((u64, u64), Option<f64>, Vec<(String, f64)>);

/// What one heartbeat learns.
struct Beat {
    /// Redis's clock, in seconds.
    redis_now: f64,
    /// This process's own score before the heartbeat renewed it.
    own_expiry: Option<f64>,
    /// Every process in the set, with its score.
    processes: Vec<(String, f64)>,
}

impl Inner {
    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn processes_key(&self) -> String {
        format!("{}:processes", self.config.prefix)
    }

    /// The pub/sub channel process `id` stays subscribed to while it lives.
    fn liveness_channel(&self, id: &str) -> String {
        format!("{}:processes:{id}", self.config.prefix)
    }

    /// The shard holding `<prefix>:processes` and the liveness channels.
    fn processes_shard(&self) -> usize {
        self.shard_for(&self.processes_key())
    }

    /// The id of the process whose queue holds `member` (`<prefix>.<id>!<local>`), if it has one.
    fn process_of(member: &str) -> Option<&str> {
        let non_local = non_local_name(member).strip_suffix('!')?;
        non_local.rsplit_once('.').map(|(_, id)| id)
    }

    /// Takes the members of dead processes of ours out of each group's `members`, and starts
    /// removing them from the group in Redis.
    pub(super) fn leave_out_dead(&self, groups: &[&str], members: &mut [Vec<Vec<u8>>]) {
        let mut liveness = self.liveness();
        if liveness.dead.is_empty() {
            return;
        }
        for (group, members) in groups.iter().zip(members.iter_mut()) {
            let mut dead_members = Vec::new();
            members.retain_mut(|member| {
                let dead = std::str::from_utf8(member)
                    .ok()
                    .and_then(Self::process_of)
                    .is_some_and(|id| liveness.dead.contains(id));
                if dead {
                    dead_members.push(std::mem::take(member));
                }
                !dead
            });
            if dead_members.is_empty() || !liveness.pruning.insert((*group).to_owned()) {
                continue;
            }
            self.spawn_prune(group, dead_members);
        }
    }

    /// Removes `dead_members` from `group` in a task of its own, off the send's path.
    fn spawn_prune(&self, group: &str, dead_members: Vec<Vec<u8>>) {
        let conn = self.shards[self.shard_for(group)].commands.get();
        let (Ok(runtime), Some(mut conn)) = (tokio::runtime::Handle::try_current(), conn) else {
            self.liveness().pruning.remove(group);
            return;
        };
        let (group, key, liveness) = (group.to_owned(), self.group_key(group), self.liveness.clone());
        runtime.spawn(async move {
            match redis::cmd("ZREM").arg(&key).arg(&dead_members).query_async::<usize>(&mut conn).await {
                Ok(removed) => tracing::info!(%group, removed, "removed the members of dead processes from a group"),
                Err(e) => tracing::warn!(%group, error = %e, "could not remove the members of dead processes"),
            }
            liveness.lock().unwrap_or_else(|p| p.into_inner()).pruning.remove(&group);
        });
    }

    /// Renews this process's entry in `<prefix>:processes` (only while it is subscribed to
    /// its liveness channel: listed without, it would be taken for dead) and reads the others.
    async fn heartbeat(&self, clock_offset: f64, subscribed: bool) -> Result<Beat, redis::RedisError> {
        let key = self.processes_key();
        let ttl = self.config.process_ttl.as_secs_f64();
        let estimated_now = wire::now_seconds() + clock_offset;
        let forgotten_before = estimated_now - ttl - self.config.layer.group_expiry.as_secs_f64();
        let mut conn = self.conn(self.processes_shard()).await?;
        let mut pipe = redis::pipe();
        pipe.cmd("TIME").cmd("ZSCORE").arg(&key).arg(&self.client_prefix);
        if subscribed {
            pipe.cmd("ZADD").arg(&key).arg(estimated_now + ttl).arg(&self.client_prefix).ignore();
        }
        pipe.cmd("ZREMRANGEBYSCORE").arg(&key).arg("-inf").arg(forgotten_before).ignore();
        let (time, own_expiry, processes): HeartbeatReplies =
            every_process(&mut pipe, &key).query_async(&mut conn).await?;
        Ok(Beat { redis_now: seconds(time), own_expiry, processes })
    }
}

/// Appends the read of every process in `key` with its score to `pipe`.
fn every_process<'a>(pipe: &'a mut redis::Pipeline, key: &str) -> &'a mut redis::Pipeline {
    pipe.cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES")
}

/// `TIME`'s reply (seconds, microseconds) in seconds.
fn seconds((seconds, micros): (u64, u64)) -> f64 {
    seconds as f64 + micros as f64 / 1e6
}

/// Longest the first group send waits to learn which processes are dead.
const FIRST_READ_LIMIT: Duration = Duration::from_millis(500);

impl Inner {
    /// The other processes of ours that are dead: those whose score is past Redis's clock
    /// `redis_now`, and those with no subscriber on their liveness channel. When the
    /// subscribers cannot be counted, only the first.
    async fn dead_among(&self, redis_now: f64, processes: Vec<(String, f64)>) -> HashSet<String> {
        let (mut dead, mut listed) = (HashSet::new(), Vec::new());
        for (id, expiry) in processes {
            if id == self.client_prefix {
                continue;
            }
            if expiry < redis_now {
                dead.insert(id);
            } else {
                listed.push(id);
            }
        }
        if listed.is_empty() {
            return dead;
        }
        let mut numsub = redis::cmd("PUBSUB");
        numsub.arg("NUMSUB");
        for id in &listed {
            numsub.arg(self.liveness_channel(id));
        }
        let counted = async {
            let mut conn = self.conn(self.processes_shard()).await?;
            numsub.query_async::<Vec<(String, u64)>>(&mut conn).await
        };
        match counted.await {
            Ok(counts) => {
                dead.extend(listed.into_iter().zip(counts).filter(|(_, (_, n))| *n == 0).map(|(id, _)| id));
            }
            Err(e) => tracing::debug!(error = %e, "could not count the liveness channels' subscribers"),
        }
        dead
    }

    /// Takes the dead among `processes`, read at `redis_now`, as the dead processes of ours
    /// from now on.
    async fn learn_dead(&self, redis_now: f64, processes: Vec<(String, f64)>) {
        let dead = self.dead_among(redis_now, processes).await;
        self.forget_full_queues(|queue| Inner::process_of(queue).is_some_and(|id| dead.contains(id)));
        self.liveness().dead = dead;
        // A heartbeat that got here before the first group send spares that send its own read.
        self.liveness_read.store(true, Ordering::Relaxed);
    }

    /// Reads the processes in `<prefix>:processes` and Redis's clock, writing nothing.
    async fn processes_now(&self) -> Result<(f64, Vec<(String, f64)>), redis::RedisError> {
        let key = self.processes_key();
        let mut conn = self.conn(self.processes_shard()).await?;
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        let (time, processes): ((u64, u64), Vec<(String, f64)>) =
            every_process(&mut pipe, &key).query_async(&mut conn).await?;
        Ok((seconds(time), processes))
    }

    /// At this process's first group send that reached Redis, once its groups are read, one
    /// read of the processes (waiting at most [`FIRST_READ_LIMIT`]; this process's own entry is
    /// the heartbeat's to write): a process started in a room that a dead process left members in
    /// then leaves them out from its first message, instead of writing their names into every
    /// message until its first heartbeat (a new process on a room a SIGKILLed one left 5,000
    /// members in ran the seed scenario at 0.04 of its speed on a clean Redis). Later sends
    /// skip it with one load.
    pub(super) async fn read_liveness_once(&self) {
        if self.liveness_read.load(Ordering::Relaxed) {
            return;
        }
        // Only over a connection made already: when Redis is down, the send's own error must
        // not wait for this read's attempt to connect (attempts run one after the other).
        if self.shards[self.processes_shard()].commands.get().is_none()
            || self.liveness_read.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let read = async {
            let (redis_now, processes) = self.processes_now().await?;
            self.learn_dead(redis_now, processes).await;
            Ok::<_, redis::RedisError>(())
        };
        let _ = tokio::time::timeout(FIRST_READ_LIMIT, read).await;
    }
}

/// How often the heartbeat task looks whether it can write its first beat.
const READY_POLL: Duration = Duration::from_millis(50);

/// Longest one attempt to subscribe to the liveness channel may take.
const SUBSCRIBE_LIMIT: Duration = Duration::from_secs(5);

/// Until the layer is dropped: keeps this process subscribed to its liveness channel, and
/// heartbeats every third of the TTL, the first time as soon as that subscription and the
/// command connection are made (or, at the latest, a third of the TTL after the start, then
/// without listing this process while it is not subscribed).
async fn heartbeats(weak: Weak<Inner>, stop: CancellationToken) {
    tokio::spawn(stay_subscribed(weak.clone(), stop.clone()));
    let started = tokio::time::Instant::now();
    let mut clock_offset = 0.0;
    let mut first = true;
    let mut subscriptions_seen = 0;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let interval = (inner.config.process_ttl / 3).max(Duration::from_millis(100));
        let (subscribed, subscriptions) = {
            let liveness = inner.liveness();
            (liveness.subscribed, liveness.subscriptions)
        };
        // The first beat waits for the command connection that the operation which started
        // this makes: it must not open one at the same moment (when Redis is down, attempts to
        // connect run one after the other, and that operation's error would wait for this
        // one's). Until then this process is not listed, and nobody prunes what is not listed.
        let connected = inner.shards[inner.processes_shard()].commands.get().is_some();
        if first && !(connected && subscribed) && started.elapsed() < interval {
            wait = READY_POLL;
            continue;
        }
        if subscriptions > subscriptions_seen {
            if subscriptions_seen > 0 {
                tracing::warn!(
                    "the liveness subscription was lost meanwhile: others may have taken this process for dead"
                );
            }
            subscriptions_seen = subscriptions;
        }
        wait = interval;
        match inner.heartbeat(clock_offset, subscribed).await {
            Ok(beat) => {
                clock_offset = beat.redis_now - wire::now_seconds();
                if beat.own_expiry.is_some_and(|expiry| expiry < beat.redis_now) {
                    tracing::warn!(
                        "this process missed its heartbeats for longer than process_ttl: others may have taken it for dead"
                    );
                }
                if first {
                    // The first score was written on this host's clock: write it again on Redis's,
                    // at once.
                    first = false;
                    wait = Duration::ZERO;
                    continue;
                }
                inner.learn_dead(beat.redis_now, beat.processes).await;
                // Whatever Redis lost, or others pruned while they took this process for dead,
                // is back within a beat of its cause.
                inner.rejoin_groups().await;
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat failed; retrying"),
        }
    }
}

/// Keeps this process subscribed to its liveness channel, on a connection of its own, until
/// the layer is dropped; counts the subscriptions made in [`Liveness`]. After a failover the
/// subscription moves to the new master (the old one, demoted, may still be up).
async fn stay_subscribed(weak: Weak<Inner>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    let Some(inner) = weak.upgrade() else { return };
    let endpoint = inner.shards[inner.processes_shard()].endpoint.clone();
    let channel = inner.liveness_channel(&inner.client_prefix);
    let liveness = inner.liveness.clone();
    drop(inner);
    let mut master_changed = endpoint.subscribe();
    loop {
        let subscribe = async {
            let (generation, client) = endpoint.client().await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>((generation, pubsub))
        };
        let subscribed = tokio::select! {
            () = stop.cancelled() => return,
            subscribed = tokio::time::timeout(SUBSCRIBE_LIMIT, subscribe) => subscribed,
        };
        match subscribed {
            Ok(Ok((generation, pubsub))) => {
                backoff = Duration::from_millis(100);
                set_subscribed(&liveness, true);
                // Nobody publishes on it: the stream ends when the connection does.
                let mut messages = pubsub.into_on_message();
                let failover = loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        message = messages.next() => if message.is_none() { break false },
                        Ok(()) = master_changed.changed() => if endpoint.generation() != generation { break true },
                    }
                };
                set_subscribed(&liveness, false);
                if failover {
                    tracing::info!("subscribing to the liveness channel on the new master");
                    continue;
                }
                tracing::warn!("lost the liveness subscription to Redis; subscribing again");
            }
            Ok(Err(e)) if !warned => {
                warned = true;
                tracing::warn!(
                    error = %e,
                    "could not subscribe to this process's liveness channel; retrying. Until it can, this process is \
                     not listed in <prefix>:processes, and if it dies its members stay in their groups until group_expiry"
                );
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "could not subscribe to the liveness channel; retrying"),
            Err(_) => tracing::debug!("subscribing to the liveness channel timed out; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn set_subscribed(liveness: &std::sync::Mutex<Liveness>, subscribed: bool) {
    let mut liveness = liveness.lock().unwrap_or_else(|p| p.into_inner());
    liveness.subscribed = subscribed;
    if subscribed {
        liveness.subscriptions += 1;
    }
}

impl RedisChannelLayer {
    /// Starts the heartbeats, once.
    pub(super) fn ensure_heartbeats(&self) {
        // A load first: this runs on every group send, and a swap would write a shared line.
        if self.inner.heartbeating.load(Ordering::Relaxed) || self.inner.heartbeating.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.heartbeating.store(false, Ordering::SeqCst);
            return;
        };
        runtime.spawn(heartbeats(Arc::downgrade(&self.inner), self.inner.stop.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::Inner;

    #[test]
    fn a_member_names_the_process_whose_queue_holds_it() {
        assert_eq!(Inner::process_of("specific.0123abcd!x1"), Some("0123abcd"));
        assert_eq!(Inner::process_of("chat.room.0123abcd!x1"), Some("0123abcd"));
        assert_eq!(Inner::process_of("worker"), None, "a worker channel has no process");
        assert_eq!(Inner::process_of("0123abcd!x1"), None);
    }
}
