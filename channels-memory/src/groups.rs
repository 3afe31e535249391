//! Groups: memberships, their expiry, and the fan-out of group sends to every live member.

use std::borrow::Borrow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use channels_core::layer::{GroupError, GroupSendReport, Members, Message};
use tokio::time::Instant;

use crate::layer::InMemoryChannelLayer;
use crate::queue::Queue;
use crate::state::{Channels, State, same_name};

/// One channel's place in a group (a group's members are a short list while the group is
/// small, so a personal group costs one small allocation; see [`Members`]).
pub(crate) struct Membership {
    /// The time of its last `group_add`.
    joined: Instant,
    /// Where its queue was last seen in [`State::channels`]: a hint, checked on every use.
    slot: usize,
}

/// Drops the members that joined at or before `cutoff` (expired) and calls `f` on each other
/// one, in one pass.
pub(crate) fn retain_live(
    members: &mut Members<Membership>,
    cutoff: Option<Instant>,
    mut f: impl FnMut(&Arc<str>, &mut Membership),
) {
    members.retain(|channel, membership| {
        let live = cutoff.is_none_or(|cutoff| membership.joined > cutoff);
        if live {
            f(channel, membership);
        }
        live
    });
}

/// The queue of a group member's channel: where the member's slot hint points when that is still
/// its queue, else found by name (or created) and the hint refreshed. Queues move when others are
/// removed, so the hint is a shortcut, never trusted.
fn member_queue<'a>(channels: &'a mut Channels, channel: &Arc<str>, membership: &mut Membership) -> &'a mut Queue {
    let hit = channels.get_index(membership.slot).is_some_and(|(key, _)| same_name(key, channel));
    if !hit {
        membership.slot = match channels.get_index_of(&**channel) {
            Some(slot) => slot,
            None => channels.insert_full(channel.clone(), Queue::default()).0,
        };
    }
    &mut channels[membership.slot]
}

impl State {
    /// Adds `channel` to `group`, or renews its membership, as of `now`. The member shares its
    /// queue's name (made here when the channel has none yet), which makes its slot hint hit
    /// at once and compares pointers, not bytes.
    pub(crate) fn join(&mut self, group: &str, channel: &str, now: Instant) {
        let State { channels, groups } = self;
        let (channel, slot) = match channels.get_full(channel) {
            Some((slot, name, _)) => (name.clone(), slot),
            None => {
                let name: Arc<str> = channel.into();
                (name.clone(), channels.insert_full(name, Queue::default()).0)
            }
        };
        let members = match groups.get_mut(group) {
            Some(members) => members,
            None => groups.entry(group.to_owned()).or_default(),
        };
        members.insert(channel, Membership { joined: now, slot });
    }

    /// Removes `channel` from `group`, and the group once it has no members.
    pub(crate) fn leave(&mut self, group: &str, channel: &str) {
        if let Some(members) = self.groups.get_mut(group) {
            members.remove(channel);
            if members.is_empty() {
                self.groups.remove(group);
            }
        }
    }
}

impl InMemoryChannelLayer {
    /// Queues each message on every live member of its group, in order, under one lock, and
    /// counts into `reports` (one per send; a send whose report is an error, an invalid name,
    /// is skipped); the receivers are woken once it is released. Consecutive sends to one group
    /// are a run: one pass over its members queues them all, looking each member's queue up
    /// once.
    pub(crate) fn send_to_groups<G: AsRef<str>, M: Borrow<Message>>(
        &self,
        sends: &[(G, M)],
        reports: &mut [Result<GroupSendReport, GroupError>],
    ) {
        self.ensure_sweeper();
        let config = &self.inner.config;
        let now = Instant::now();
        let expires = now + config.expiry;
        let mut wake = Vec::new();
        // A channel that was full, for the log's summary line.
        let mut full_sample: Option<String> = None;
        {
            let mut state = self.lock();
            let mut at = 0;
            while at < sends.len() {
                let group = sends[at].0.as_ref();
                let run = at..at + sends[at..].iter().take_while(|(g, _)| g.as_ref() == group).count();
                at = run.end;
                if reports[run.start].is_err() {
                    // The same name for the whole run: all invalid.
                    continue;
                }
                let State { channels, groups } = &mut *state;
                let Some(members) = groups.get_mut(group) else { continue };
                let (run_sends, run_reports) = (&sends[run.clone()], &mut reports[run]);
                let mut expired = Vec::new();
                retain_live(members, now.checked_sub(config.group_expiry), |channel, membership| {
                    let queue = member_queue(channels, channel, membership);
                    // A channel whose queue held an expired message leaves its groups after this
                    // send (Django's rule), so it gets the run's first message only, as it
                    // would from one `group_send` after another.
                    let mut take = run_sends.len();
                    if queue.purge_expired(now) {
                        expired.push(channel.clone());
                        take = 1;
                    }
                    let capacity = config.capacity_for(channel);
                    for ((_, message), report) in run_sends.iter().zip(run_reports.iter_mut()).take(take) {
                        let Ok(report) = report else { continue };
                        if queue.items.len() >= capacity {
                            report.dropped_full += 1;
                            if full_sample.is_none() {
                                full_sample = Some(channel.to_string());
                            }
                        } else {
                            wake.extend(queue.push(expires, message.borrow().clone()));
                            report.queued += 1;
                        }
                    }
                });
                if members.is_empty() {
                    groups.remove(group);
                }
                for channel in expired {
                    state.remove_from_groups(&channel);
                }
            }
        }
        for notify in wake {
            notify.notify_one();
        }
        let dropped: u64 = reports.iter().flatten().map(|report| report.dropped_full as u64).sum();
        if let Some(channel) = full_sample {
            self.inner.dropped_full.fetch_add(dropped, Ordering::Relaxed);
            self.inner.drops.record(&channel, dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use channels_core::layer::{ChannelLayer, LayerConfig};
    use tokio::time::Instant;

    use crate::layer::InMemoryChannelLayer;
    use crate::state::same_name;
    use crate::test_support::{channels_behind_an_idle_queue, msg, n_of};

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_drops_for_full_channels_is_one_log_line_with_the_count() {
        let lines = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || crate::test_support::Captured(writer.clone()))
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let layer = InMemoryChannelLayer::new(LayerConfig::default().capacity(1));
        let full = layer.new_channel("specific").await.unwrap();
        layer.group_add("room", &full).await.unwrap();
        layer.group_send("room", msg(0)).await.unwrap();
        for n in 1..=500 {
            assert_eq!(layer.group_send("room", msg(n)).await.unwrap().dropped_full, 1);
        }
        tokio::time::sleep(Duration::from_secs(11)).await;
        let logged = String::from_utf8_lossy(&lines.lock().unwrap()).into_owned();
        assert_eq!(logged.lines().count(), 1, "{logged}");
        assert!(logged.contains("dropped=500"), "{logged}");
        assert!(logged.contains(&format!("sample_channel={full}")), "{logged}");
        assert_eq!(layer.stats().dropped_full, 500);
    }

    #[tokio::test]
    async fn groups_keep_their_members_when_they_outgrow_the_short_list() {
        // 24 members: past the eight a short list holds, then 4 leave.
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let mut channels = Vec::new();
        for _ in 0..24 {
            let channel = layer.new_channel("specific").await.unwrap();
            layer.group_add("big", &channel).await.unwrap();
            layer.group_add("big", &channel).await.unwrap(); // a refresh, not a second member
            channels.push(channel);
        }
        for gone in channels.drain(..4) {
            layer.group_discard("big", &gone).await.unwrap();
        }
        let sent = msg(1);
        let report = layer.group_send("big", sent.clone()).await.unwrap();
        assert_eq!(report.queued, channels.len());
        for channel in &channels {
            assert_eq!(layer.receive(channel).await.unwrap().as_bytes(), sent.as_bytes());
        }
        for channel in &channels {
            layer.group_discard("big", channel).await.unwrap();
        }
        assert_eq!(layer.stats().groups, 0, "an emptied group is removed");
    }

    /// `n` channels with a message (9) waiting on each, their queues behind an idle one that a

    #[tokio::test]
    async fn group_send_finds_queues_that_moved() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let channels = channels_behind_an_idle_queue(&layer, 5, Some("g")).await;
        // The sweep drops the idle queue in front of the members' (they all move up one);
        // forgetting the first member moves the last one into its place.
        layer.sweep();
        layer.forget_channel(&channels[0]).await;
        for n in [1, 2] {
            assert_eq!(layer.group_send("g", msg(n)).await.unwrap().queued, 4);
        }
        for channel in &channels[1..] {
            for n in [9, 1, 2] {
                assert_eq!(n_of(&layer.try_receive(channel).unwrap()), n, "{channel}");
            }
            assert!(layer.try_receive(channel).is_none());
        }
        assert!(layer.try_receive(&channels[0]).is_none(), "a forgotten channel gets nothing");
    }

    #[tokio::test]
    async fn members_and_receivers_share_their_queues_name() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let a = layer.new_channel("specific").await.unwrap();
        layer.group_add("g", &a).await.unwrap();
        {
            let state = layer.lock();
            let (key, _) = state.channels.get_key_value(a.as_str()).expect("group_add made the queue");
            let (member, _) = state.groups["g"].iter().next().expect("one member");
            assert!(Arc::ptr_eq(member, key), "the member shares the queue's name");
        }
        // A receiver for a name allocated elsewhere takes the queue's; one for a channel with no
        // queue yet makes it, so messages sent later find the same name.
        let receiver = Arc::new(layer.clone()).receiver(a.as_str().into());
        let b = layer.new_channel("specific").await.unwrap();
        let other = Arc::new(layer.clone()).receiver(b.as_str().into());
        assert_eq!(layer.stats().channels, 2);
        layer.group_send("g", msg(1)).await.unwrap();
        layer.send(&b, msg(2)).await.unwrap();
        assert_eq!(receiver.try_receive().as_ref().map(n_of), Some(1));
        assert_eq!(other.try_receive().as_ref().map(n_of), Some(2));
        assert!(same_name("specific.x", &String::from("specific.x")), "equal names in two allocations");
        assert!(!same_name("specific.x", "specific.y"));
    }

    #[tokio::test]
    async fn group_send_shares_one_encoded_buffer_with_every_member() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let (a, b) = (layer.new_channel("specific").await.unwrap(), layer.new_channel("specific").await.unwrap());
        layer.group_add("g", &a).await.unwrap();
        layer.group_add("g", &b).await.unwrap();
        let sent = msg(1);
        layer.group_send("g", sent.clone()).await.unwrap();
        assert!(layer.receive(&a).await.unwrap().shares_buffer_with(&sent));
        assert!(layer.receive(&b).await.unwrap().shares_buffer_with(&sent));
    }

    #[tokio::test]
    async fn a_member_with_an_expired_message_gets_one_message_of_a_run_and_leaves() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let (a, b) = (layer.new_channel("specific").await.unwrap(), layer.new_channel("specific").await.unwrap());
        layer.group_add("g", &a).await.unwrap();
        layer.group_add("g", &b).await.unwrap();
        // A message for `a` that has expired by the time of the group sends.
        layer.lock().push(&a, msg(0), 100, Duration::ZERO, Instant::now()).unwrap();
        let sends = [("g".to_owned(), msg(1)), ("g".to_owned(), msg(2))];
        let counts: Vec<usize> =
            layer.group_send_many(&sends).await.iter().map(|r| r.as_ref().unwrap().queued).collect();
        assert_eq!(counts, [2, 1], "as from two group_sends: `a` left the group after the first");
        assert_eq!(n_of(&layer.receive(&a).await.unwrap()), 1);
        assert!(layer.try_receive(&a).is_none());
        assert_eq!(layer.group_send("g", msg(3)).await.unwrap().queued, 1, "only `b` is left");
        let at_b: Vec<u32> = (0..3).map(|_| n_of(&layer.try_receive(&b).unwrap())).collect();
        assert_eq!(at_b, [1, 2, 3]);
    }
}
