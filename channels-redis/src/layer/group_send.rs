//! Group sends, in batches: `group_send`, `group_send_many` and `group_send_many_echoed` are
//! one [`Inner::send_batch`].
//!
//! A batch reads every group it names, one pipeline per shard holding groups (trim the expired
//! memberships, read the rest); puts each message straight into the mailboxes of the members
//! in this process; and adds one payload per other receiving process queue and message, naming
//! every member that queue holds, one pipeline per shard holding queues (see
//! [`Inner::push_commands`]). Only a queue found past its capacity costs a further command,
//! the Lua script of [`stays`]; the next batch checks it is still full before writing to it
//! (see [`super::full_queues`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use channels_core::layer::{GroupError, GroupSendReport, Message, non_local_name, validate_group_name};

use super::full_queues::Suspect;
use super::send::stays;
use super::shards::query_retried;
use super::{Inner, backend};
use crate::wire::{self, Routing};

/// One batch of group sends on its way: the sends, what has become of each, and the distinct
/// groups they go to.
struct Batch<'a> {
    sends: &'a [(String, Message)],
    /// The sending channel and how many of the sends, from the first, were echoed to it
    /// already, for [`ChannelLayer::group_send_many_echoed`](channels_core::layer::ChannelLayer::group_send_many_echoed).
    sender: Option<(&'a str, usize)>,
    /// One per send: an error once it failed, else what it did so far.
    reports: Vec<Result<GroupSendReport, GroupError>>,
    /// The distinct groups, in order of first use.
    groups: Vec<&'a str>,
    /// Which of `groups` each send goes to; `None` for a send whose group name is invalid.
    group_of: Vec<Option<usize>>,
}

impl<'a> Batch<'a> {
    /// The batch of `sends`, each checked for a valid group name.
    fn new(sends: &'a [(String, Message)], sender: Option<(&'a str, usize)>) -> Self {
        let reports: Vec<Result<GroupSendReport, GroupError>> = sends
            .iter()
            .map(|(group, _)| validate_group_name(group).map(|()| GroupSendReport::default()).map_err(GroupError::from))
            .collect();
        let mut groups: Vec<&str> = Vec::new();
        let group_of: Vec<Option<usize>> = sends
            .iter()
            .zip(&reports)
            .map(|((group, _), report)| {
                report.is_ok().then(|| {
                    groups.iter().position(|&g| g == group.as_str()).unwrap_or_else(|| {
                        groups.push(group);
                        groups.len() - 1
                    })
                })
            })
            .collect();
        Self { sends, sender, reports, groups, group_of }
    }

    /// The indices of the sends to any of the groups `groups` (indices into [`Self::groups`]).
    fn sends_to(&self, groups: &[usize]) -> Vec<usize> {
        (0..self.sends.len()).filter(|&i| self.group_of[i].is_some_and(|g| groups.contains(&g))).collect()
    }
}

/// A batch's echoed sends, counted ahead of their groups' members in this process until it is
/// dropped (see [`Inner::echo`]).
struct EchoedAhead<'a> {
    inner: &'a Inner,
    sends: &'a [(String, Message)],
}

impl Drop for EchoedAhead<'_> {
    fn drop(&mut self) {
        self.inner.echoes_delivered(self.sends);
    }
}

/// What a receiving process queue is sent for one message: the send it belongs to, the members
/// the payload names, and what [`stays`] needs to check the queue's capacity.
struct Pushed {
    send: usize,
    members: usize,
    queue: String,
    capacity: usize,
    payload: Vec<u8>,
}

/// The commands of one shard's queue writes, and what each of its `ZCARD` replies is for.
type ShardWrites = (redis::Pipeline, Vec<Pushed>);

/// A group's members by the process queue they share: `(non-local name, members)`.
type Buckets<'m> = Vec<(&'m str, Vec<&'m str>)>;

/// Indices into a group's [`Buckets`], by the shard that holds their queue.
type BucketsByShard = HashMap<usize, Vec<usize>>;

impl Inner {
    /// [`ChannelLayer::group_send_many`](channels_core::layer::ChannelLayer::group_send_many),
    /// and [`ChannelLayer::group_send_many_echoed`](channels_core::layer::ChannelLayer::group_send_many_echoed)
    /// when `sender` names the sending channel and how many of the sends, from the first, were
    /// echoed to it.
    pub(super) async fn send_batch(
        &self,
        sends: &[(String, Message)],
        sender: Option<(&str, usize)>,
    ) -> Vec<Result<GroupSendReport, GroupError>> {
        let mut batch = Batch::new(sends, sender);
        // Until its messages are in the mailboxes of the members here, or it failed (or this
        // future was dropped), the batch's echoed sends are ahead of those members.
        let echoed =
            EchoedAhead { inner: self, sends: &sends[..sender.map_or(0, |(_, echoed)| echoed.min(sends.len()))] };
        let now = wire::now_seconds();
        // Taken before the groups are read: memberships this process made after it may be
        // missing from what the read finds without having been removed.
        let op = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        let mut members = self.read_members(&mut batch, now).await;
        // Once Redis answered (when it is down, a send's error must not wait for this read).
        if batch.reports.iter().any(Result::is_ok) {
            self.read_liveness_once().await;
        }
        self.notice_removed_echoes(&batch, &members, op);
        self.leave_out_dead(&batch.groups, &mut members);
        // Each group's members by receiving process queue: this process's own queues, and the
        // others by shard.
        let buckets: Vec<Buckets<'_>> = members.iter().map(|names| by_process(names)).collect();
        let (own, per_shard) = self.split_own_queues(&buckets);
        self.push_to_own_members(&mut batch, &buckets, &own);
        drop(echoed);
        let suspects = self.suspects(&buckets, &per_shard);
        let still_full = if suspects.is_empty() { HashSet::new() } else { self.still_full(&suspects, now).await };
        let (writes, skipped) = self.queue_writes(&batch, &buckets, &per_shard, &still_full, now);
        let mut dropped_total = self.write_queues(&mut batch.reports, writes).await;
        for (send, members) in skipped {
            if let Ok(report) = &mut batch.reports[send] {
                report.dropped_full += members;
                dropped_total += members;
            }
        }
        if dropped_total > 0 {
            self.dropped_full.fetch_add(dropped_total as u64, Ordering::Relaxed);
        }
        let failed = batch.reports.iter().any(|report| matches!(report, Err(GroupError::Backend(_))));
        self.echo_paused.store(failed, Ordering::Relaxed);
        batch.reports
    }

    /// The members of each of the batch's groups, one pipeline per shard holding groups: trim
    /// the expired memberships, then read the rest (plain commands, as channels_redis does: a
    /// script would make redis-server hash every name into a Lua string). The sends to the
    /// groups of a shard that fails fail.
    async fn read_members(&self, batch: &mut Batch<'_>, now: f64) -> Vec<Vec<Vec<u8>>> {
        let mut members: Vec<Vec<Vec<u8>>> = vec![Vec::new(); batch.groups.len()];
        let mut by_group_shard: HashMap<usize, Vec<usize>> = HashMap::new();
        for (g, group) in batch.groups.iter().enumerate() {
            by_group_shard.entry(self.shard_for(group)).or_default().push(g);
        }
        for (shard, read) in by_group_shard {
            let mut pipe = redis::pipe();
            let trim_before = now.floor() as i64 - self.group_expiry_secs() as i64;
            for &g in &read {
                let key = self.group_key(batch.groups[g]);
                pipe.cmd("ZREMRANGEBYSCORE").arg(&key).arg(0).arg(trim_before).ignore();
                pipe.cmd("ZRANGE").arg(&key).arg(0).arg(-1);
            }
            // Reading twice is harmless: a connection that dropped since its last use (Redis
            // restarted) fails the first send after the restart otherwise.
            match query_retried::<Vec<Vec<Vec<u8>>>>(self, shard, &pipe).await {
                Ok(found) => {
                    for (&g, found) in read.iter().zip(found) {
                        members[g] = found;
                    }
                }
                Err(e) => {
                    let failed = batch.sends_to(&read);
                    fail_all(&mut batch.reports, &failed, &e);
                }
            }
        }
        members
    }

    /// Stops echoing the sender's sends to a group of an echoed send that was read and does
    /// not list it: someone else removed the membership from Redis (a `group_discard` from
    /// another process, a `flush`, or Redis losing its data).
    fn notice_removed_echoes(&self, batch: &Batch<'_>, members: &[Vec<Vec<u8>>], op: u64) {
        let Some((channel, echoed)) = batch.sender else { return };
        for (g, group) in batch.groups.iter().enumerate() {
            let read =
                (0..echoed.min(batch.sends.len())).any(|i| batch.group_of[i] == Some(g) && batch.reports[i].is_ok());
            if read && !members[g].iter().any(|member| member == channel.as_bytes()) {
                self.stop_echoing(group, channel, op);
            }
        }
    }

    /// Per group, which of its buckets are this process's own queues, and the others by the
    /// shard that holds their queue.
    fn split_own_queues(&self, buckets: &[Buckets<'_>]) -> (Vec<Vec<usize>>, Vec<BucketsByShard>) {
        buckets
            .iter()
            .map(|buckets| {
                let (mut own, mut per_shard) = (Vec::new(), BucketsByShard::new());
                for (b, (non_local, _)) in buckets.iter().enumerate() {
                    if self.is_our_queue(non_local) {
                        own.push(b);
                    } else {
                        per_shard.entry(self.shard_for(non_local)).or_default().push(b);
                    }
                }
                (own, per_shard)
            })
            .unzip()
    }

    /// Members in this process get each message at once, in the order of the sends, a run of
    /// sends to one group member by member; an echoed sender has its copy already (counted as
    /// queued).
    fn push_to_own_members(&self, batch: &mut Batch<'_>, buckets: &[Buckets<'_>], own: &[Vec<usize>]) {
        let Batch { sends, sender, reports, group_of, .. } = batch;
        let to_push: Vec<(usize, usize)> =
            (0..sends.len()).filter_map(|i| group_of[i].filter(|_| reports[i].is_ok()).map(|g| (i, g))).collect();
        for run in to_push.chunk_by(|(_, a), (_, b)| a == b) {
            let g = run[0].1;
            let messages: Vec<(&Message, Option<&str>)> = run
                .iter()
                .map(|&(i, _)| (&sends[i].1, sender.filter(|&(_, echoed)| i < echoed).map(|(channel, _)| channel)))
                .collect();
            for (&(i, _), &(_, skip)) in run.iter().zip(&messages) {
                if let (Ok(report), Some(_)) = (&mut reports[i], skip) {
                    report.queued += 1;
                }
            }
            for &b in &own[g] {
                let counts = self.push_local(&messages, &buckets[g][b].1);
                for (&(i, _), (queued, full)) in run.iter().zip(counts) {
                    if let Ok(report) = &mut reports[i] {
                        report.queued += queued;
                        report.dropped_full += full;
                    }
                }
            }
        }
    }

    /// The receiving process queues that the last write found full (see [`super::full_queues`]).
    fn suspects(&self, buckets: &[Buckets<'_>], per_shard: &[BucketsByShard]) -> Vec<Suspect> {
        let mut suspects = Vec::new();
        for (buckets, per_shard) in buckets.iter().zip(per_shard) {
            for (&shard, bucket_indices) in per_shard {
                for &b in bucket_indices {
                    let (non_local, members) = &buckets[b];
                    let queue = format!("{}{non_local}", self.config.prefix);
                    if self.was_full(&queue) && !suspects.iter().any(|s: &Suspect| s.queue == queue) {
                        let capacity = self.config.layer.capacity_for(members[0]);
                        suspects.push(Suspect { queue, shard, capacity });
                    }
                }
            }
        }
        suspects
    }

    /// One payload per receiving process queue and message, naming every member it holds; the
    /// commands of one shard go in one pipeline, in the order of the sends, each message with a
    /// later score than the one before (a queue is ordered by score). A queue in `still_full`
    /// gets nothing: the second value lists, per such queue and send, the send and how many
    /// members missed it.
    fn queue_writes(
        &self,
        batch: &Batch<'_>,
        buckets: &[Buckets<'_>],
        per_shard: &[BucketsByShard],
        still_full: &HashSet<String>,
        now: f64,
    ) -> (HashMap<usize, ShardWrites>, Vec<(usize, usize)>) {
        let scores: Vec<f64> = batch.sends.iter().map(|_| self.next_score(now)).collect();
        let mut by_queue_shard: HashMap<usize, ShardWrites> = HashMap::new();
        let mut skipped = Vec::new();
        for (i, (_, message)) in batch.sends.iter().enumerate() {
            let (Ok(_), Some(g)) = (&batch.reports[i], batch.group_of[i]) else { continue };
            let buckets = &buckets[g];
            for (&shard, bucket_indices) in &per_shard[g] {
                let (pipe, pushed) = by_queue_shard.entry(shard).or_insert_with(|| (redis::pipe(), Vec::new()));
                for &b in bucket_indices {
                    let (non_local, members) = &buckets[b];
                    let queue = format!("{}{non_local}", self.config.prefix);
                    if still_full.contains(&queue) {
                        skipped.push((i, members.len()));
                        continue;
                    }
                    let payload = self.seal(wire::body_with_routing(message, &Routing::Many(members.clone())));
                    self.push_commands(pipe, &queue, now, scores[i], &payload);
                    let capacity = self.config.layer.capacity_for(members[0]);
                    pushed.push(Pushed { send: i, members: members.len(), queue, capacity, payload });
                }
            }
        }
        (by_queue_shard, skipped)
    }

    /// Runs each shard's queue writes and counts, per send, the members whose queue kept the
    /// message and those whose queue was full; the sends of a shard that fails fail. Returns
    /// the members dropped for full queues.
    async fn write_queues(
        &self,
        reports: &mut [Result<GroupSendReport, GroupError>],
        writes: HashMap<usize, ShardWrites>,
    ) -> usize {
        let mut dropped_total = 0;
        for (shard, (pipe, pushed)) in writes {
            let settled = async {
                let mut conn = self.conn(shard).await?;
                let lengths: Vec<usize> = pipe.query_async(&mut conn).await?;
                let mut kept = Vec::with_capacity(pushed.len());
                for (p, &length) in pushed.iter().zip(&lengths) {
                    kept.push(stays(&mut conn, &p.queue, length, p.capacity, &p.payload).await?);
                }
                Ok::<_, redis::RedisError>(kept)
            };
            match settled.await {
                Ok(kept) => {
                    for (p, kept) in pushed.iter().zip(kept) {
                        self.note_full(&p.queue, !kept);
                        let Ok(report) = &mut reports[p.send] else { continue };
                        if kept {
                            report.queued += p.members;
                        } else {
                            report.dropped_full += p.members;
                            dropped_total += p.members;
                            self.drops.record(&p.queue, p.members as u64);
                        }
                    }
                }
                Err(e) => {
                    let failed: Vec<usize> = pushed.iter().map(|p| p.send).collect();
                    fail_all(reports, &failed, &e);
                }
            }
        }
        dropped_total
    }
}

/// A group's members by the process queue they share (their non-local name), in order of
/// first appearance. A name that is not UTF-8 (no channels client writes one) is skipped.
fn by_process(names: &[Vec<u8>]) -> Buckets<'_> {
    let mut buckets: Buckets<'_> = Vec::new();
    let mut index: foldhash::HashMap<&str, usize> = foldhash::HashMap::default();
    for member in names.iter().filter_map(|name| std::str::from_utf8(name).ok()) {
        if member.is_empty() {
            continue;
        }
        let non_local = non_local_name(member);
        match index.get(non_local) {
            Some(&b) => buckets[b].1.push(member),
            None => {
                index.insert(non_local, buckets.len());
                buckets.push((non_local, vec![member]));
            }
        }
    }
    buckets
}

/// Marks the sends at `indices` failed with `error`.
fn fail_all(reports: &mut [Result<GroupSendReport, GroupError>], indices: &[usize], error: &redis::RedisError) {
    for &i in indices {
        reports[i] = Err(GroupError::Backend(backend(error.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::by_process;

    #[test]
    fn group_members_are_bucketed_by_process_queue_in_order() {
        let names: Vec<Vec<u8>> = [&b"specific.a!1"[..], b"specific.b!1", b"specific.a!2", b"\xff\xfe", b"", b"worker"]
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(
            by_process(&names),
            [
                ("specific.a!", vec!["specific.a!1", "specific.a!2"]),
                ("specific.b!", vec!["specific.b!1"]),
                ("worker", vec!["worker"]),
            ]
        );
        assert!(by_process(&[]).is_empty(), "an empty group");
    }
}
