//! Per-channel buffers inside a process: what the background readers put, `receive` takes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use channels_core::layer::Message;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A bounded buffer of messages for one local channel.
#[derive(Default)]
pub(crate) struct Mailbox {
    /// (expires at, message)
    items: VecDeque<(Option<Instant>, Message)>,
    /// Cloned by receivers while they wait.
    notify: Arc<Notify>,
}

impl Mailbox {
    /// Queues `message` unless `capacity` messages wait already; false when dropped.
    pub(crate) fn push(&mut self, message: Message, capacity: usize, expiry: Option<Duration>) -> bool {
        if self.items.len() >= capacity {
            return false;
        }
        self.items.push_back((expiry.map(|e| Instant::now() + e), message));
        self.notify.notify_one();
        true
    }

    fn pop(&mut self) -> Option<Message> {
        let now = Instant::now();
        while let Some((expires, message)) = self.items.pop_front() {
            if expires.is_none_or(|e| e > now) {
                return Some(message);
            }
        }
        None
    }

    pub(crate) fn clear(&mut self) {
        self.items.clear();
    }
}

/// The mailbox of `channel`, looked up without allocating when it exists.
pub(crate) fn get_or_create<'a>(
    mailboxes: &'a mut std::collections::HashMap<String, Mailbox>,
    channel: &str,
) -> &'a mut Mailbox {
    if !mailboxes.contains_key(channel) {
        mailboxes.insert(channel.to_owned(), Mailbox::default());
    }
    mailboxes.get_mut(channel).unwrap_or_else(|| unreachable!("inserted above"))
}

/// Waits for the next message in the mailbox `find` picks out of the shared state (creating it
/// if needed). Cancel-safe: nothing is taken until it is returned.
pub(crate) async fn receive<T>(state: &Mutex<T>, find: impl Fn(&mut T) -> &mut Mailbox) -> Message {
    loop {
        let notify = {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            let mailbox = find(&mut state);
            if let Some(message) = mailbox.pop() {
                return message;
            }
            mailbox.notify.clone()
        };
        // notify_one leaves a permit when nobody waits yet, so a push between the unlock and
        // this await is not missed.
        notify.notified().await;
    }
}
