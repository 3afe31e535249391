//! What the layer's lock guards: every channel's queue and every group's members.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use channels_core::layer::{Members, Message};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::groups::Membership;
use crate::queue::Queue;

/// Maps keyed by group names, with a fast hash (foldhash, seeded per process) rather than
/// SipHash.
pub(crate) type HashMap<K, V> = foldhash::HashMap<K, V>;

/// The queues by channel name. An index map: a group member remembers where its channel's queue
/// sits, so `group_send` reaches each member's queue without hashing its name.
pub(crate) type Channels = indexmap::IndexMap<Arc<str>, Queue, foldhash::fast::RandomState>;

/// Every queue and group of a layer, behind its one lock.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) channels: Channels,
    pub(crate) groups: HashMap<String, Members<Membership>>,
}

/// Whether two channel names are equal, without reading their bytes when both are the same
/// allocation (a receiver's or member's name shared with its queue's key, the usual case).
#[inline]
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    (std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()) || a == b
}

/// A slot no queue has.
pub(crate) const NO_SLOT: usize = usize::MAX;

impl State {
    /// Where `channel`'s queue is: at `slot` if it still is, else found by name (and `slot`
    /// updated); `None` if it has none.
    pub(crate) fn slot_of(&self, channel: &str, slot: &AtomicUsize) -> Option<usize> {
        let at = slot.load(Ordering::Relaxed);
        if self.channels.get_index(at).is_some_and(|(key, _)| same_name(key, channel)) {
            return Some(at);
        }
        let at = self.channels.get_index_of(channel)?;
        slot.store(at, Ordering::Relaxed);
        Some(at)
    }

    /// Django's rule: a channel with an expired message is removed from every group. The rare
    /// path (and a visit to every group): out of line, so that it does not weigh on the
    /// receive loop that calls it when a message expired.
    #[cold]
    pub(crate) fn remove_from_groups(&mut self, channel: &str) {
        self.groups.retain(|_, members| {
            members.remove(channel);
            !members.is_empty()
        });
    }

    /// Queues `message` on `channel` unless it holds `capacity` messages. Returns the wake-up
    /// to send (after unlocking) if any, or `Err` when the channel is full.
    pub(crate) fn push(
        &mut self,
        channel: &str,
        message: Message,
        capacity: usize,
        expiry: Duration,
        now: Instant,
    ) -> Result<Option<Arc<Notify>>, ()> {
        let queue = match self.channels.get_mut(channel) {
            Some(queue) => queue,
            None => self.channels.entry(channel.into()).or_default(),
        };
        let expired = queue.purge_expired(now);
        let result = if queue.items.len() >= capacity { Err(()) } else { Ok(queue.push(now + expiry, message)) };
        if expired {
            self.remove_from_groups(channel);
        }
        result
    }
}
