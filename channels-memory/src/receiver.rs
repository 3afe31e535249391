//! Receiving: a channel's receiver, which remembers where its queue sits, and the receive
//! loops the layer's own `receive` and `try_receive` share with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use channels_core::layer::{ChannelReceiver, Message, ReceiveError, validate_channel_name};
use futures_util::future::BoxFuture;

use crate::layer::InMemoryChannelLayer;
use crate::queue::Queue;
use crate::state::NO_SLOT;

/// The in-memory layer's [`ChannelReceiver`]: it remembers where its channel's queue sits, so
/// receiving does not hash the channel's name.
pub(crate) struct Receiver {
    layer: InMemoryChannelLayer,
    channel: Arc<str>,
    slot: AtomicUsize,
}

impl Receiver {
    /// A receiver on `channel` of `layer`. It shares its queue's name (made here when the
    /// channel has none yet), so finding the queue compares pointers, not bytes.
    pub(crate) fn new(layer: &InMemoryChannelLayer, channel: Arc<str>) -> Self {
        let (channel, slot) = {
            let mut state = layer.lock();
            match state.channels.get_full(&*channel) {
                Some((slot, key, _)) => (key.clone(), slot),
                None if validate_channel_name(&channel).is_ok() => {
                    (channel.clone(), state.channels.insert_full(channel, Queue::default()).0)
                }
                None => (channel, NO_SLOT),
            }
        };
        Self { layer: layer.clone(), channel, slot: AtomicUsize::new(slot) }
    }
}

impl ChannelReceiver for Receiver {
    fn receive(&self) -> BoxFuture<'_, Result<Message, ReceiveError>> {
        Box::pin(self.layer.receive_on(&self.channel, &self.slot))
    }

    fn try_receive(&self) -> Option<Message> {
        self.layer.try_receive_on(&self.channel, &self.slot)
    }

    fn try_receive_many(&self, max: usize, into: &mut Vec<Message>) {
        let mut state = self.layer.lock();
        let Some(at) = state.slot_of(&self.channel, &self.slot) else { return };
        if state.channels[at].take_many(max, into) {
            state.remove_from_groups(&self.channel);
        }
    }
}

impl InMemoryChannelLayer {
    /// Waits for the next message on `channel`, looking for its queue where `slot` says first
    /// (and keeping `slot` up to date).
    pub(crate) async fn receive_on(&self, channel: &str, slot: &AtomicUsize) -> Result<Message, ReceiveError> {
        self.ensure_sweeper();
        loop {
            let notify = {
                let mut state = self.lock();
                // The hot path (a consumer's own, existing queue) neither allocates nor re-checks
                // the name: only valid names ever get a queue.
                let at = match state.slot_of(channel, slot) {
                    Some(at) => at,
                    None => {
                        validate_channel_name(channel)?;
                        let at = state.channels.insert_full(channel.into(), Queue::default()).0;
                        slot.store(at, Ordering::Relaxed);
                        at
                    }
                };
                let (popped, expired) = state.channels[at].take();
                if expired {
                    // Django's rule: a channel with an expired message leaves its groups.
                    state.remove_from_groups(channel);
                }
                if let Some(message) = popped {
                    return Ok(message);
                }
                state.channels[at].notify.clone()
            };
            // notify_one stores a permit when nobody waits yet, so a send between the unlock
            // and this await is not missed. Dropping this future loses no message.
            notify.notified().await;
        }
    }

    /// The message waiting on `channel`, if any, looking where `slot` says first.
    pub(crate) fn try_receive_on(&self, channel: &str, slot: &AtomicUsize) -> Option<Message> {
        let mut state = self.lock();
        let at = state.slot_of(channel, slot)?;
        let (popped, expired) = state.channels[at].take();
        if expired {
            state.remove_from_groups(channel);
        }
        popped
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use channels_core::layer::ChannelLayer;

    use crate::layer::InMemoryChannelLayer;
    use crate::test_support::{channels_behind_an_idle_queue, msg, n_of};
    use channels_core::layer::LayerConfig;

    #[tokio::test]
    async fn a_receiver_finds_its_queue_after_it_moved_or_was_made_again() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let channels = channels_behind_an_idle_queue(&layer, 3, None).await;
        let receivers: Vec<_> = channels.iter().map(|c| Arc::new(layer.clone()).receiver(c.as_str().into())).collect();
        for receiver in &receivers {
            assert_eq!(receiver.try_receive().map(|m| n_of(&m)), Some(9), "slot learnt");
        }
        for (n, channel) in channels.iter().enumerate() {
            layer.send(channel, msg(n as u32)).await.unwrap();
        }
        // The sweep drops the idle queue in front (the others move up one); forgetting the first
        // channel moves the last queue into its place.
        layer.sweep();
        layer.forget_channel(&channels[0]).await;
        assert!(receivers[0].try_receive().is_none(), "a forgotten channel's queue is gone");
        for (n, receiver) in receivers.iter().enumerate().skip(1) {
            assert_eq!(receiver.try_receive().map(|m| n_of(&m)), Some(n as u32));
            assert!(receiver.try_receive().is_none());
        }
        // A receive on a channel without a queue makes one, where the receiver finds it next.
        layer.send(&channels[0], msg(5)).await.unwrap();
        assert_eq!(n_of(&receivers[0].receive().await.unwrap()), 5);
    }
}
