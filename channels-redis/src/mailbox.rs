//! Per-channel buffers inside a process: what the background readers put, `receive` takes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use channels_core::layer::{ChannelLayer, ChannelReceiver, Message, ReceiveError};
use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Every local channel's mailbox, by name: looked up for each member a message names and for
/// each receive, so with a fast hash (foldhash, seeded per process) rather than SipHash. The
/// names are shared with the channel's group memberships.
pub(crate) type Mailboxes = foldhash::HashMap<Arc<str>, Mailbox>;

/// A bounded buffer of messages for one local channel.
#[derive(Default)]
pub(crate) struct Mailbox {
    /// (expires at, message)
    items: VecDeque<(Option<Instant>, Message)>,
    /// Cloned by receivers while they wait.
    notify: Arc<Notify>,
}

impl Mailbox {
    /// Queues `message` (to expire at `expires`) unless `capacity` messages wait already;
    /// false when dropped. Only the first message of an empty mailbox wakes a receiver: a
    /// receiver takes what follows without waiting.
    pub(crate) fn push(&mut self, message: Message, capacity: usize, expires: Option<Instant>) -> bool {
        if self.items.len() >= capacity {
            return false;
        }
        self.items.push_back((expires, message));
        if self.items.len() == 1 {
            self.notify.notify_one();
        }
        true
    }

    /// The next message that has not expired (the clock is read only if one waits). The
    /// caller must hold no wake-up of its own: when it leaves messages behind and other
    /// receivers wait, one of them is woken, as nothing else would wake them for those.
    pub(crate) fn pop(&mut self) -> Option<Message> {
        if self.items.is_empty() {
            return None;
        }
        self.drop_expired();
        let taken = self.items.pop_front().map(|(_, message)| message);
        if taken.is_some() {
            self.wake_next();
        }
        taken
    }

    /// [`Self::pop`], or what to wait on for the next push (a receiver waits outside the
    /// layer's lock, so on its own handle).
    fn pop_or_notify(&mut self) -> Result<Message, Arc<Notify>> {
        self.pop().ok_or_else(|| self.notify.clone())
    }

    /// [`Self::pop`] for up to `max` messages, appended to `into`, with one look at the clock.
    pub(crate) fn take_many(&mut self, max: usize, into: &mut Vec<Message>) {
        if self.items.is_empty() || max == 0 {
            return;
        }
        self.drop_expired();
        let n = max.min(self.items.len());
        into.extend(self.items.drain(..n).map(|(_, message)| message));
        if n > 0 {
            self.wake_next();
        }
    }

    /// Drops expired messages from the front. Expiry times only grow along the mailbox, so
    /// once the front has not expired, nothing behind it has.
    fn drop_expired(&mut self) {
        let now = Instant::now();
        while self.items.front().is_some_and(|(expires, _)| expires.is_some_and(|e| e <= now)) {
            self.items.pop_front();
        }
    }

    /// After a take: wakes one other waiting receiver if messages are left, as nothing else
    /// would wake it for messages already queued.
    fn wake_next(&self) {
        if !self.items.is_empty() && Arc::strong_count(&self.notify) > 1 {
            self.notify.notify_one();
        }
    }

    /// The messages waiting, expired ones included.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn clear(&mut self) {
        self.items.clear();
    }
}

/// The mailbox of `channel`, looked up without allocating when it exists.
fn get_or_create<'a>(mailboxes: &'a mut Mailboxes, channel: &str) -> &'a mut Mailbox {
    if !mailboxes.contains_key(channel) {
        mailboxes.insert(Arc::from(channel), Mailbox::default());
    }
    mailboxes.get_mut(channel).unwrap_or_else(|| unreachable!("inserted above"))
}

/// Waits for the next message in the mailbox `find` picks out of the shared state; `None` when
/// `find` finds none. Cancel-safe: nothing is taken until it is returned.
pub(crate) async fn receive<T>(state: &Mutex<T>, find: impl Fn(&mut T) -> Option<&mut Mailbox>) -> Option<Message> {
    loop {
        let notify = {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            match find(&mut state)?.pop_or_notify() {
                Ok(message) => return Some(message),
                Err(notify) => notify,
            }
        };
        // notify_one leaves a permit when nobody waits yet, so a push between the unlock and
        // this await is not missed.
        notify.notified().await;
    }
}

/// [`receive`] on `channel`'s mailbox in `mailboxes`, made first if it is missing; never an
/// error. Not built on `receive`, and an `async` block rather than an `async fn`: this is the
/// future an idle connection holds, and either would keep its arguments twice (112 bytes as
/// it is, 144 and more otherwise).
#[allow(clippy::manual_async_fn)]
pub(crate) fn receive_or_create<'a, T>(
    state: &'a Mutex<T>,
    mailboxes: fn(&mut T) -> &mut Mailboxes,
    channel: &'a str,
) -> impl Future<Output = Result<Message, ReceiveError>> + 'a {
    async move {
        loop {
            let notify = {
                let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                match get_or_create(mailboxes(&mut state), channel).pop_or_notify() {
                    Ok(message) => return Ok(message),
                    Err(notify) => notify,
                }
            };
            // As in `receive`: a push between the unlock and this await leaves a permit.
            notify.notified().await;
        }
    }
}

/// A layer whose channels' messages wait in mailboxes in this process.
pub(crate) trait LocalMailboxes: ChannelLayer {
    /// [`Mailbox::take_many`] on `channel`'s mailbox under the layer's lock, if it has one.
    fn take_many(&self, channel: &str, max: usize, into: &mut Vec<Message>);

    /// [`receive_or_create`] on `channel`'s mailbox: for a channel that has one, a receive
    /// without the layer's `receive`, whose future covers every kind of channel (a worker
    /// channel's Redis commands included) and is more than twice as large.
    fn wait_in_mailbox<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Message, ReceiveError>>;
}

/// A receiver on one channel of such a layer: the layer's own `receive` and `try_receive`, and
/// a burst taken under one lock.
pub(crate) struct Receiver<L> {
    pub(crate) layer: Arc<L>,
    pub(crate) channel: Arc<str>,
    /// The channel had a mailbox when the receiver was made (a channel of this process, or a
    /// subscribed one): its receives wait on the mailbox alone.
    pub(crate) local: bool,
}

impl<L: LocalMailboxes> ChannelReceiver for Receiver<L> {
    fn receive(&self) -> BoxFuture<'_, Result<Message, ReceiveError>> {
        if self.local { self.layer.wait_in_mailbox(&self.channel) } else { self.layer.receive(&self.channel) }
    }

    fn try_receive(&self) -> Option<Message> {
        self.layer.try_receive(&self.channel)
    }

    fn try_receive_many(&self, max: usize, into: &mut Vec<Message>) {
        self.layer.take_many(&self.channel, max, into);
    }
}
