//! Expiry in the background: a task that drops expired messages and memberships, and the
//! buffers of queues nobody uses.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::groups::retain_live;
use crate::layer::{InMemoryChannelLayer, Inner};

impl InMemoryChannelLayer {
    /// Starts the background sweep of expired messages and memberships once, on first use. The
    /// task holds only a weak reference and ends when the layer is dropped.
    pub(crate) fn ensure_sweeper(&self) {
        // A load first: the swap writes, and every receive comes here.
        if self.inner.sweeper_started.load(Ordering::Relaxed)
            || self.inner.sweeper_started.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.sweeper_started.store(false, Ordering::Relaxed);
            return;
        };
        let period = (self.inner.config.expiry.min(self.inner.config.group_expiry) / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                InMemoryChannelLayer { inner }.sweep();
            }
        });
    }

    /// Drops expired messages (and their channels' memberships), expired memberships, and
    /// empty queues nobody waits on; an empty queue with a waiter gives its buffer back, so an
    /// idle consumer holds none.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let group_expiry = self.inner.config.group_expiry;
        let mut state = self.lock();
        let mut expired = Vec::new();
        state.channels.retain(|name, queue| {
            if queue.purge_expired(now) {
                expired.push(name.clone());
            }
            if queue.items.is_empty() {
                queue.items = VecDeque::new();
            }
            !queue.items.is_empty() || queue.has_waiters()
        });
        for name in expired {
            state.remove_from_groups(&name);
        }
        state.groups.retain(|_, members| {
            retain_live(members, now.checked_sub(group_expiry), |_, _| {});
            !members.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use channels_core::layer::{ChannelLayer, LayerConfig};

    use crate::layer::InMemoryChannelLayer;
    use crate::test_support::msg;

    #[tokio::test]
    async fn a_drained_queue_keeps_its_buffer_until_the_sweep() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let a = layer.new_channel("specific").await.unwrap();
        let buffer = |layer: &InMemoryChannelLayer| layer.lock().channels.get(a.as_str()).map(|q| q.items.capacity());
        for n in 0..3 {
            layer.send(&a, msg(n)).await.unwrap();
        }
        for _ in 0..3 {
            layer.receive(&a).await.unwrap();
        }
        assert!(buffer(&layer) > Some(0), "kept for the next burst");
        let waiting = tokio::spawn({
            let (layer, a) = (layer.clone(), a.clone());
            async move { layer.receive(&a).await.unwrap() }
        });
        tokio::task::yield_now().await;
        layer.sweep();
        assert_eq!(buffer(&layer), Some(0), "a waiting consumer's empty queue gives its buffer back");
        let sent = msg(7);
        layer.send(&a, sent.clone()).await.unwrap();
        assert!(waiting.await.unwrap().shares_buffer_with(&sent), "the waiter still gets the next message");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_cleans_expired_messages_and_memberships() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default().expiry(Duration::from_secs(2)));
        let a = layer.new_channel("specific").await.unwrap();
        layer.group_add("g", &a).await.unwrap();
        layer.send(&a, msg(1)).await.unwrap();
        assert_eq!(layer.stats().queued, 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let stats = layer.stats();
        assert_eq!((stats.channels, stats.groups, stats.queued), (0, 0, 0), "{stats:?}");
    }

    #[tokio::test]
    async fn the_sweeper_ends_when_the_layer_is_dropped() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default().expiry(Duration::from_secs(1)));
        layer.send("x", msg(1)).await.unwrap();
        let weak = Arc::downgrade(&layer.inner);
        drop(layer);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(weak.upgrade().is_none());
    }
}
