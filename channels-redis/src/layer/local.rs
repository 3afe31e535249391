//! What this process keeps for its own channels: their mailboxes, the groups they joined, the
//! process queues it reads; and the delivery of messages into those mailboxes, from the pump
//! or straight from a send of this process.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use channels_core::layer::{Members, Message};

use super::Inner;
use super::groups::Joined;
use crate::mailbox::{Mailbox, Mailboxes};

/// This process's channels and memberships, behind the layer's lock.
#[derive(Default)]
pub(super) struct Local {
    /// Channels created here and not yet forgotten, with what has arrived for them.
    pub(super) channels: Mailboxes,
    /// Groups local channels joined, so they can be re-joined after Redis loses them, and so
    /// that a member's own group sends can be echoed without a read of the group.
    pub(super) memberships: HashMap<String, Members<Joined>>,
    /// Process queue keys a pump already reads.
    pub(super) pumped: HashSet<String>,
    /// Per group, the sends echoed to their senders here that have not reached the group's
    /// other members in this process yet (see [`Inner::echo`]); a group is listed only while
    /// it has some.
    pub(super) echoed_ahead: HashMap<String, usize>,
}

impl Inner {
    /// Puts `messages` into the mailboxes of `targets`, channels of this process: what the
    /// pump does with popped messages, and what a group send from this process does for its
    /// own members instead of a round trip through Redis. A message's channel to skip (a
    /// sender whose copy was echoed) does not get it. Returns, per message, how many
    /// mailboxes took it and how many were full; a channel without a mailbox is gone, and
    /// the messages are dropped for it.
    ///
    /// Member by member: each mailbox, seldom in the CPU's cache, is reached once for all the
    /// messages rather than once per message.
    pub(super) fn push_local(&self, messages: &[(&Message, Option<&str>)], targets: &[&str]) -> Vec<(usize, usize)> {
        let expires = self.local_expiry();
        let mut counts = vec![(0, 0); messages.len()];
        let mut local = self.lock();
        for &channel in targets {
            let Some(mailbox) = local.channels.get_mut(channel) else {
                tracing::debug!(%channel, "message for a channel that is gone; dropped");
                continue;
            };
            for (&(message, skip), (queued, full)) in messages.iter().zip(&mut counts) {
                if skip == Some(channel) {
                    continue;
                }
                if self.push_into(mailbox, channel, message, expires) {
                    *queued += 1;
                } else {
                    *full += 1;
                }
            }
        }
        counts
    }

    /// A `send` to `channel` of this process, straight into its mailbox: whether it took the
    /// message, or `None` when the channel has no mailbox here (yet).
    pub(super) fn send_own(&self, channel: &str, message: &Message) -> Option<bool> {
        let expires = self.local_expiry();
        let mut local = self.lock();
        let mailbox = local.channels.get_mut(channel)?;
        Some(self.push_into(mailbox, channel, message, expires))
    }

    /// When a message put into a local mailbox now expires.
    pub(super) fn local_expiry(&self) -> Option<tokio::time::Instant> {
        Some(tokio::time::Instant::now() + self.config.layer.expiry)
    }

    /// Queues `message` in `channel`'s `mailbox`; false (counted, and summed up in the log)
    /// when it is full.
    pub(super) fn push_into(
        &self,
        mailbox: &mut Mailbox,
        channel: &str,
        message: &Message,
        expires: Option<tokio::time::Instant>,
    ) -> bool {
        if mailbox.push(message.clone(), self.config.layer.capacity_for(channel), expires) {
            return true;
        }
        self.dropped_full.fetch_add(1, Ordering::Relaxed);
        self.drops.record(channel, 1);
        false
    }
}
