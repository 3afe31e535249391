//! Which processes of ours are alive, and the pruning of dead ones' members from groups.
//!
//! A process that dies without leaving its groups (SIGKILL, OOM, a short grace period) leaves
//! its members in them until `group_expiry`, a day by default, and every group send to them
//! writes a payload naming all of them into a queue nobody reads. So each process of ours
//! heartbeats into one sorted set, `<prefix>:processes`: its id (the `client_prefix` of its
//! channel names) scored by when that heartbeat expires, on Redis's clock (`TIME`), every
//! third of [`RedisConfig::process_ttl`](crate::RedisConfig::process_ttl). A heartbeat also
//! reads the set: an id whose score has passed is a dead process of ours. A group send then
//! leaves out the members of dead processes and removes them from the group (one `ZREM` per
//! group, in a task of its own). Ids never in the set (Python processes, or ours from before
//! this) are never touched. An entry leaves the set `group_expiry` after it expired, when no
//! membership it made can be left.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use channels_core::layer::non_local_name;
use tokio_util::sync::CancellationToken;

use super::{Inner, RedisChannelLayer};
use crate::wire;

/// The dead processes of ours last seen in `<prefix>:processes`, and the groups whose dead
/// members are being removed.
#[derive(Default)]
pub(super) struct Liveness {
    dead: HashSet<String>,
    pruning: HashSet<String>,
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

    /// Renews this process's entry in `<prefix>:processes` and reads the others.
    async fn heartbeat(&self, clock_offset: f64) -> Result<Beat, redis::RedisError> {
        let key = self.processes_key();
        let ttl = self.config.process_ttl.as_secs_f64();
        let estimated_now = wire::now_seconds() + clock_offset;
        let forgotten_before = estimated_now - ttl - self.config.layer.group_expiry.as_secs_f64();
        let mut conn = self.conn(self.shard_for(&key)).await?;
        let mut pipe = redis::pipe();
        pipe.cmd("TIME")
            .cmd("ZSCORE")
            .arg(&key)
            .arg(&self.client_prefix)
            .cmd("ZADD")
            .arg(&key)
            .arg(estimated_now + ttl)
            .arg(&self.client_prefix)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(forgotten_before)
            .ignore();
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
    /// The processes of ours whose score is past Redis's clock `redis_now`.
    fn dead_in(&self, redis_now: f64, processes: Vec<(String, f64)>) -> HashSet<String> {
        processes
            .into_iter()
            .filter(|(id, expiry)| *expiry < redis_now && *id != self.client_prefix)
            .map(|(id, _)| id)
            .collect()
    }

    /// Reads the processes in `<prefix>:processes` and Redis's clock, writing nothing.
    async fn processes_now(&self) -> Result<(f64, Vec<(String, f64)>), redis::RedisError> {
        let key = self.processes_key();
        let mut conn = self.conn(self.shard_for(&key)).await?;
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
    /// message until its first heartbeat, a third of `process_ttl` later (a new process on a
    /// room a SIGKILLed one left 5,000 members in ran the seed scenario at 0.04 of its speed
    /// on a clean Redis). Later sends skip it with one load.
    pub(super) async fn read_liveness_once(&self) {
        if self.liveness_read.load(Ordering::Relaxed) {
            return;
        }
        // Only over a connection made already: when Redis is down, the send's own error must
        // not wait for this read's attempt to connect (attempts run one after the other).
        let key = self.processes_key();
        if self.shards[self.shard_for(&key)].commands.get().is_none() || self.liveness_read.swap(true, Ordering::SeqCst)
        {
            return;
        }
        if let Ok(Ok((redis_now, processes))) = tokio::time::timeout(FIRST_READ_LIMIT, self.processes_now()).await {
            let dead = self.dead_in(redis_now, processes);
            self.forget_full_queues(|queue| Inner::process_of(queue).is_some_and(|id| dead.contains(id)));
            self.liveness().dead = dead;
        }
    }
}

/// Heartbeats every third of the TTL until the layer is dropped.
async fn heartbeats(weak: Weak<Inner>, stop: CancellationToken) {
    let mut clock_offset = 0.0;
    let mut first = true;
    let mut rejoins_due = 0u8;
    let mut interval = match weak.upgrade() {
        Some(inner) => inner.config.process_ttl / 3,
        None => return,
    };
    loop {
        // The first beat waits one interval too: it must not open the connection at the same
        // moment as the operation that started it (when Redis is down, attempts to connect run
        // one after the other, and that operation's error would wait for this one's). Until
        // then this process is not listed, and nobody prunes what is not listed.
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval.max(Duration::from_millis(100))) => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        interval = inner.config.process_ttl / 3;
        match inner.heartbeat(clock_offset).await {
            Ok(beat) => {
                clock_offset = beat.redis_now - wire::now_seconds();
                if beat.own_expiry.is_some_and(|expiry| expiry < beat.redis_now) {
                    tracing::warn!(
                        "this process missed its heartbeats for longer than process_ttl; re-adding its memberships"
                    );
                    // At the next beat, and once more a beat later: until the others' next
                    // heartbeat, their sends may still prune what this one re-adds.
                    rejoins_due = 2;
                }
                if first {
                    // The first score was written on this host's clock: write it again on Redis's,
                    // at once.
                    first = false;
                    interval = Duration::ZERO;
                    continue;
                }
                let dead = inner.dead_in(beat.redis_now, beat.processes);
                inner.forget_full_queues(|queue| Inner::process_of(queue).is_some_and(|id| dead.contains(id)));
                inner.liveness().dead = dead;
                if rejoins_due > 0 {
                    rejoins_due -= 1;
                    inner.rejoin_groups().await;
                }
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat failed; retrying"),
        }
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
