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
//! crash does at once (`PUBSUB NUMSUB`, read with the set). A subscription lives on one Redis
//! server: after a failover, or a restart of a Redis that keeps its data, the set still lists
//! every process while none is subscribed on the server that now answers. So each process also
//! records, in the hash `<prefix>:processes:servers`, the `run_id` of the server its
//! subscription is on, and only a process subscribed on the server that answers now is judged
//! by its subscribers; the others, by their scores, until they subscribe there. A process whose host vanished
//! leaves its connections half-open; its score running out finds it then. A group send leaves
//! out the members of dead processes and removes them from the group (one `ZREM` per group, in
//! a task of its own). Ids never in the set (Python processes) are never touched. An entry
//! leaves the set `group_expiry` after it expired, when no membership it made can be left.
//!
//! Every heartbeat also adds this process's memberships to Redis again (see
//! [`Inner::rejoin_groups`]): a live process taken for dead (its liveness connection dropped,
//! or its heartbeats stalled for longer than `process_ttl`) is back in its groups a beat after
//! the others see it alive again, and so is a membership Redis lost.

use std::collections::{HashMap, HashSet};
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
    /// While subscribed to the liveness channel, the `run_id` of the server the subscription
    /// is on.
    subscribed_on: Option<String>,
    /// Subscriptions to the liveness channel made so far.
    subscriptions: u64,
}

/// The replies to a read of the processes: `TIME` (seconds, microseconds), `INFO server`,
/// the servers the processes' subscriptions are on, and the whole set with scores.
type ListingReplies = ((u64, u64), String, HashMap<String, String>, Vec<(String, f64)>);

/// The processes of ours as Redis lists them.
struct Listing {
    /// Redis's clock, in seconds.
    redis_now: f64,
    /// The `run_id` of the server that answered.
    server: Option<String>,
    /// Per process id, the `run_id` of the server it last said its subscription is on.
    servers: HashMap<String, String>,
    /// Every process in the set, with its score.
    processes: Vec<(String, f64)>,
}

impl Listing {
    fn from_replies((time, info, servers, processes): ListingReplies) -> Listing {
        let server = info.lines().find_map(|line| line.strip_prefix("run_id:")).map(|id| id.trim().to_owned());
        Listing { redis_now: seconds(time), server, servers, processes }
    }
}

/// What one heartbeat learns.
struct Beat {
    /// This process's own score before the heartbeat renewed it.
    own_expiry: Option<f64>,
    listing: Listing,
}

impl Inner {
    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn processes_key(&self) -> String {
        format!("{}:processes", self.config.prefix)
    }

    /// Per process id, the `run_id` of the server its liveness subscription is on.
    fn servers_key(&self) -> String {
        format!("{}:processes:servers", self.config.prefix)
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

    /// Renews this process's entry in `<prefix>:processes`, with the `run_id` of the server its
    /// subscription is on (only while it is subscribed to its liveness channel: listed
    /// without, it would be taken for dead), and reads the others.
    async fn heartbeat(&self, clock_offset: f64, subscribed_on: Option<&str>) -> Result<Beat, redis::RedisError> {
        let key = self.processes_key();
        let ttl = self.config.process_ttl.as_secs_f64();
        let estimated_now = wire::now_seconds() + clock_offset;
        let forgotten_before = estimated_now - ttl - self.config.layer.group_expiry.as_secs_f64();
        let mut conn = self.conn(self.processes_shard()).await?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZSCORE").arg(&key).arg(&self.client_prefix);
        if let Some(server) = subscribed_on {
            // The score first: a process that finds a server recorded for an id finds the id
            // in the set (see `forget_servers`).
            pipe.cmd("ZADD").arg(&key).arg(estimated_now + ttl).arg(&self.client_prefix).ignore();
            pipe.cmd("HSET").arg(self.servers_key()).arg(&self.client_prefix).arg(server).ignore();
        }
        pipe.cmd("ZREMRANGEBYSCORE").arg(&key).arg("-inf").arg(forgotten_before).ignore();
        let (own_expiry, listing): (Option<f64>, ListingReplies) =
            self.read_listing(&mut pipe).query_async(&mut conn).await.map(|(own, a, b, c, d)| (own, (a, b, c, d)))?;
        let listing = Listing::from_replies(listing);
        self.forget_servers(&listing).await;
        Ok(Beat { own_expiry, listing })
    }

    /// Appends to `pipe` the read of a [`Listing`]: the servers before the set, so that every
    /// id with a server recorded is in the set read after.
    fn read_listing<'a>(&self, pipe: &'a mut redis::Pipeline) -> &'a mut redis::Pipeline {
        pipe.cmd("TIME").cmd("INFO").arg("server").cmd("HGETALL").arg(self.servers_key());
        pipe.cmd("ZRANGE").arg(self.processes_key()).arg(0).arg(-1).arg("WITHSCORES")
    }

    /// Removes the servers recorded for processes the set has forgotten.
    async fn forget_servers(&self, listing: &Listing) {
        let listed: HashSet<&str> = listing.processes.iter().map(|(id, _)| id.as_str()).collect();
        let forgotten: Vec<&String> = listing.servers.keys().filter(|id| !listed.contains(id.as_str())).collect();
        if forgotten.is_empty() {
            return;
        }
        if let Ok(mut conn) = self.conn(self.processes_shard()).await {
            let _: Result<(), _> =
                redis::cmd("HDEL").arg(self.servers_key()).arg(&forgotten).query_async(&mut conn).await;
        }
    }
}

/// `TIME`'s reply (seconds, microseconds) in seconds.
fn seconds((seconds, micros): (u64, u64)) -> f64 {
    seconds as f64 + micros as f64 / 1e6
}

/// Longest the first group send waits to learn which processes are dead.
const FIRST_READ_LIMIT: Duration = Duration::from_millis(500);

impl Inner {
    /// The other processes of ours that are dead: those whose score is past Redis's clock,
    /// and those subscribed on the server that answered with no subscriber left on their
    /// liveness channel. When the subscribers cannot be counted, only the first.
    async fn dead_among(&self, listing: Listing) -> HashSet<String> {
        let Listing { redis_now, server, servers, processes } = listing;
        let (mut dead, mut listed) = (HashSet::new(), Vec::new());
        for (id, expiry) in processes {
            if id == self.client_prefix {
                continue;
            }
            if expiry < redis_now {
                dead.insert(id);
            } else if server.is_some() && servers.get(&id) == server.as_ref() {
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

    /// Takes the dead of `listing` as the dead processes of ours from now on.
    async fn learn_dead(&self, listing: Listing) {
        let dead = self.dead_among(listing).await;
        self.forget_full_queues(|queue| Inner::process_of(queue).is_some_and(|id| dead.contains(id)));
        self.liveness().dead = dead;
        // A heartbeat that got here before the first group send spares that send its own read.
        self.liveness_read.store(true, Ordering::Relaxed);
    }

    /// Reads the processes in `<prefix>:processes`, writing nothing.
    async fn processes_now(&self) -> Result<Listing, redis::RedisError> {
        let mut conn = self.conn(self.processes_shard()).await?;
        let replies = self.read_listing(&mut redis::pipe()).query_async(&mut conn).await?;
        Ok(Listing::from_replies(replies))
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
            let listing = self.processes_now().await?;
            self.learn_dead(listing).await;
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
        let (subscribed_on, subscriptions) = {
            let liveness = inner.liveness();
            (liveness.subscribed_on.clone(), liveness.subscriptions)
        };
        let subscribed = subscribed_on.is_some();
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
        match inner.heartbeat(clock_offset, subscribed_on.as_deref()).await {
            Ok(beat) => {
                clock_offset = beat.listing.redis_now - wire::now_seconds();
                if beat.own_expiry.is_some_and(|expiry| expiry < beat.listing.redis_now) {
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
                inner.learn_dead(beat.listing).await;
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
            // Which server holds the subscription: the one that counts it, asked over a
            // connection to the same address (a restart in between makes the count 0).
            let mut conn = client.get_multiplexed_async_connection().await?;
            let ((_, count), info): ((String, u64), String) = redis::pipe()
                .cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await?;
            let server = info.lines().find_map(|line| line.strip_prefix("run_id:")).map(|id| id.trim().to_owned());
            let server = server.filter(|_| count > 0).ok_or_else(|| {
                redis::RedisError::from(std::io::Error::other("the subscription is not on the server that answered"))
            })?;
            Ok::<_, redis::RedisError>((generation, pubsub, server))
        };
        let subscribed = tokio::select! {
            () = stop.cancelled() => return,
            subscribed = tokio::time::timeout(SUBSCRIBE_LIMIT, subscribe) => subscribed,
        };
        match subscribed {
            Ok(Ok((generation, pubsub, server))) => {
                backoff = Duration::from_millis(100);
                set_subscribed(&liveness, Some(server));
                // Nobody publishes on it: the stream ends when the connection does.
                let mut messages = pubsub.into_on_message();
                let failover = loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        message = messages.next() => if message.is_none() { break false },
                        Ok(()) = master_changed.changed() => if endpoint.generation() != generation { break true },
                    }
                };
                set_subscribed(&liveness, None);
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

fn set_subscribed(liveness: &std::sync::Mutex<Liveness>, server: Option<String>) {
    let mut liveness = liveness.lock().unwrap_or_else(|p| p.into_inner());
    if server.is_some() {
        liveness.subscriptions += 1;
    }
    liveness.subscribed_on = server;
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
