//! One channel's queue: its messages in order, their expiry, and the wake-up its receivers wait on.

use std::collections::VecDeque;
use std::sync::Arc;

use channels_core::layer::Message;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The messages waiting on one channel.
#[derive(Default)]
pub(crate) struct Queue {
    /// (expires at, message)
    pub(crate) items: VecDeque<(Instant, Message)>,
    /// When the first of `items` expires (meaningless while there is none): a copy kept beside
    /// the queue's bookkeeping, so the check a `group_send` makes for every member does not
    /// read the member's buffer, which is seldom in the CPU's cache by then.
    pub(crate) front_expires: Option<Instant>,
    /// Held (cloned) by receivers while they wait, so a queue with waiters is never dropped.
    pub(crate) notify: Arc<Notify>,
}

impl Queue {
    /// Drops expired messages from the front; true if any expired.
    #[inline]
    pub(crate) fn purge_expired(&mut self, now: Instant) -> bool {
        if self.items.is_empty() || self.front_expires.is_some_and(|expires| expires > now) {
            return false;
        }
        self.purge_from_front(now)
    }

    /// [`Self::purge_expired`] once the first message has expired: the rare path, out of line.
    #[cold]
    fn purge_from_front(&mut self, now: Instant) -> bool {
        let before = self.items.len();
        while self.items.front().is_some_and(|(expires, _)| *expires <= now) {
            self.items.pop_front();
        }
        self.front_moved();
        self.items.len() != before
    }

    /// Records the new first message's expiry after messages left the front.
    fn front_moved(&mut self) {
        self.front_expires = self.items.front().map(|(expires, _)| *expires);
    }

    /// Takes the next message that has not expired, and says whether any had expired. The clock
    /// is read only when there is a message to check. A drained queue keeps its buffer for the
    /// next burst; the sweeper frees it if the queue is still empty then.
    ///
    /// Only a push into an empty queue wakes a receiver, so the caller must hold no wake-up of
    /// its own: when it leaves messages behind and other receivers wait, one of them is woken
    /// here, as nothing else would wake them for messages already queued.
    pub(crate) fn take(&mut self) -> (Option<Message>, bool) {
        if self.items.is_empty() {
            return (None, false);
        }
        let expired = self.purge_expired(Instant::now());
        let taken = self.items.pop_front().map(|(_, message)| message);
        self.front_moved();
        if taken.is_some() {
            self.wake_next();
        }
        (taken, expired)
    }

    /// [`Self::take`] for up to `max` messages, appended to `into`, with one look at the
    /// clock: expiry times only grow along the queue, so once the front has not expired, none
    /// behind it has.
    pub(crate) fn take_many(&mut self, max: usize, into: &mut Vec<Message>) -> bool {
        if self.items.is_empty() || max == 0 {
            return false;
        }
        let expired = self.purge_expired(Instant::now());
        let n = max.min(self.items.len());
        into.extend(self.items.drain(..n).map(|(_, message)| message));
        self.front_moved();
        if n > 0 {
            self.wake_next();
        }
        expired
    }

    /// After a take: wakes one other waiting receiver if messages are left, as nothing else
    /// would wake it for messages already queued.
    fn wake_next(&self) {
        if !self.items.is_empty() && self.has_waiters() {
            self.notify.notify_one();
        }
    }

    pub(crate) fn has_waiters(&self) -> bool {
        Arc::strong_count(&self.notify) > 1
    }

    /// Queues a message; returns the waiters' wake-up when this is the queue's first message,
    /// the only push a waiting receiver needs to hear of (it takes what follows without
    /// waiting).
    #[inline]
    pub(crate) fn push(&mut self, expires: Instant, message: Message) -> Option<Arc<Notify>> {
        let was_empty = self.items.is_empty();
        if was_empty {
            self.front_expires = Some(expires);
        }
        self.items.push_back((expires, message));
        (was_empty && self.has_waiters()).then(|| self.notify.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::test_support::{msg, n_of};

    #[tokio::test]
    async fn a_burst_that_leaves_messages_behind_wakes_another_waiter() {
        let mut queue = Queue::default();
        let waiter = queue.notify.clone();
        let expires = Instant::now() + Duration::from_secs(60);
        for n in 0..3 {
            queue.push(expires, msg(n));
        }
        let mut taken = Vec::new();
        assert!(!queue.take_many(2, &mut taken), "nothing expired");
        assert_eq!(taken.iter().map(n_of).collect::<Vec<_>>(), [0, 1]);
        let woken = tokio::time::timeout(Duration::from_millis(100), waiter.notified()).await;
        assert!(woken.is_ok(), "a message was left behind: another waiter is woken");
        queue.take_many(5, &mut taken);
        assert_eq!(taken.len(), 3);
        let woken = tokio::time::timeout(Duration::from_millis(100), waiter.notified()).await;
        assert!(woken.is_err(), "nothing left: nobody is woken");
    }

    #[test]
    fn the_front_expiry_follows_the_first_message() {
        let front = |queue: &Queue| queue.items.front().map(|(expires, _)| *expires);
        let start = Instant::now();
        let mut queue = Queue::default();
        for n in 0..6 {
            queue.push(start + Duration::from_secs(10 + u64::from(n)), msg(n));
            assert_eq!(queue.front_expires, front(&queue), "after push {n}");
        }
        assert_eq!(queue.take().0.as_ref().map(n_of), Some(0));
        assert_eq!(queue.front_expires, front(&queue), "after take");
        queue.take_many(2, &mut Vec::new());
        assert_eq!(queue.front_expires, front(&queue), "after take_many");
        // Messages 3 and 4 have expired by then; 5 has not.
        assert!(queue.purge_expired(start + Duration::from_secs(14)));
        assert_eq!(queue.front_expires, Some(start + Duration::from_secs(15)), "after purge");
        assert!(!queue.purge_expired(start + Duration::from_secs(14)), "nothing more to purge");
        queue.take_many(5, &mut Vec::new());
        queue.push(start + Duration::from_secs(20), msg(6));
        assert_eq!(queue.front_expires, front(&queue), "after a push into a drained queue");
    }
}
