//! `InMemoryChannelLayer`: the layer's handle, its settings and counters, and the
//! `ChannelLayer` implementation over the modules that do the work.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use channels_core::layer::{
    ChannelLayer, ChannelReceiver, ConfigError, DroppedMessages, FlushError, GroupError, GroupSendReport, LayerConfig,
    LayerUrl, Message, NewChannelError, ReceiveError, SendError, validate_channel_name, validate_group_name,
};
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::time::Instant;

use crate::receiver::Receiver;
use crate::state::{NO_SLOT, State};

/// A snapshot of the layer's contents and counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerStats {
    /// Channels that hold messages or have a waiting receiver.
    pub channels: usize,
    /// Groups with at least one member.
    pub groups: usize,
    /// Messages waiting in all channels.
    pub queued: usize,
    /// Messages `group_send` dropped because a member's channel was full, since creation.
    pub dropped_full: u64,
}

/// The in-memory channel layer. Cheap to clone; clones share one layer.
#[derive(Clone)]
pub struct InMemoryChannelLayer {
    pub(crate) inner: Arc<Inner>,
}

/// What the clones of a layer share.
pub(crate) struct Inner {
    pub(crate) config: LayerConfig,
    pub(crate) state: Mutex<State>,
    /// Messages `group_send` dropped for full members, since creation.
    pub(crate) dropped_full: AtomicU64,
    /// The drops counted in `dropped_full`, for the log: a summary line per interval.
    pub(crate) drops: DroppedMessages,
    /// Whether the sweeper task was started (see `ensure_sweeper`).
    pub(crate) sweeper_started: AtomicBool,
    /// Group history for recovery: a ring per group; a new layer starts a new epoch.
    pub(crate) history: Arc<channels_core::layer::MemoryHistoryStore>,
}

impl InMemoryChannelLayer {
    /// A layer with the given settings.
    pub fn new(config: LayerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
                dropped_full: AtomicU64::new(0),
                drops: DroppedMessages::new("memory", DroppedMessages::DEFAULT_INTERVAL),
                sweeper_started: AtomicBool::new(false),
                history: Arc::default(),
            }),
        }
    }

    /// A layer from a `memory://?capacity=100&expiry=60&group_expiry=86400` URL.
    pub fn from_url(mut url: LayerUrl) -> Result<Self, ConfigError> {
        if url.scheme != "memory" {
            return Err(ConfigError(format!("expected a memory:// URL, got {}://", url.scheme)));
        }
        if !url.hosts.is_empty() || !url.path.trim_matches('/').is_empty() {
            return Err(ConfigError("memory:// takes no host or path, only ?parameters".into()));
        }
        let config = LayerConfig::take_from(&mut url)?;
        url.reject_unknown_params()?;
        Ok(Self::new(config))
    }

    /// Counts of what the layer holds.
    pub fn stats(&self) -> LayerStats {
        let state = self.lock();
        LayerStats {
            channels: state.channels.len(),
            groups: state.groups.len(),
            queued: state.channels.values().map(|q| q.items.len()).sum(),
            dropped_full: self.inner.dropped_full.load(Ordering::Relaxed),
        }
    }

    /// The layer's channels and groups, locked.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock, but a poisoned lock still holds consistent data.
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for InMemoryChannelLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryChannelLayer")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish()
    }
}

#[async_trait]
impl ChannelLayer for InMemoryChannelLayer {
    async fn new_channel(&self, prefix: &str) -> Result<String, NewChannelError> {
        let suffix: String = rand::rng().sample_iter(&Alphanumeric).take(12).map(char::from).collect();
        let name = format!("{prefix}.inmemory!{suffix}");
        validate_channel_name(&name)?;
        Ok(name)
    }

    async fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        validate_channel_name(channel)?;
        self.ensure_sweeper();
        let config = &self.inner.config;
        let pushed = self.lock().push(channel, message, config.capacity_for(channel), config.expiry, Instant::now());
        match pushed {
            Ok(wake) => {
                if let Some(notify) = wake {
                    notify.notify_one();
                }
                Ok(())
            }
            Err(()) => Err(SendError::ChannelFull { channel: channel.to_owned() }),
        }
    }

    async fn receive(&self, channel: &str) -> Result<Message, ReceiveError> {
        self.receive_on(channel, &AtomicUsize::new(NO_SLOT)).await
    }

    fn try_receive(&self, channel: &str) -> Option<Message> {
        self.try_receive_on(channel, &AtomicUsize::new(NO_SLOT))
    }

    fn receiver(self: Arc<Self>, channel: Arc<str>) -> Box<dyn ChannelReceiver> {
        Box::new(Receiver::new(&self, channel))
    }

    async fn group_add(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        validate_group_name(group)?;
        validate_channel_name(channel)?;
        self.ensure_sweeper();
        self.lock().join(group, channel, Instant::now());
        Ok(())
    }

    async fn group_discard(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        validate_group_name(group)?;
        validate_channel_name(channel)?;
        self.lock().leave(group, channel);
        Ok(())
    }

    async fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, GroupError> {
        validate_group_name(group)?;
        let mut report = [Ok(GroupSendReport::default())];
        self.send_to_groups(&[(group, &message)], &mut report);
        let [report] = report;
        report
    }

    /// One lock for the batch, and one pass over a group's members for each run of sends to
    /// the same group (a connection's queued messages to its room, say): each member's queue
    /// is found and checked once and takes the run's messages in order.
    async fn group_send_many(&self, sends: &[(String, Message)]) -> Vec<Result<GroupSendReport, GroupError>> {
        let mut reports: Vec<Result<GroupSendReport, GroupError>> = sends
            .iter()
            .map(|(group, _)| validate_group_name(group).map(|()| GroupSendReport::default()).map_err(GroupError::from))
            .collect();
        self.send_to_groups(sends, &mut reports);
        reports
    }

    async fn flush(&self) -> Result<(), FlushError> {
        self.inner.history.clear();
        let mut state = self.lock();
        state.groups.clear();
        state.channels.retain(|_, queue| {
            queue.items.clear();
            queue.has_waiters()
        });
        Ok(())
    }

    async fn forget_channel(&self, channel: &str) {
        let mut state = self.lock();
        if state.channels.get(channel).is_some_and(|q| !q.has_waiters()) {
            state.channels.swap_remove(channel);
        }
        state.remove_from_groups(channel);
    }

    /// A ring per group, in this process (see [`channels_core::layer::History`]).
    fn history_store(&self) -> Option<Arc<dyn channels_core::layer::HistoryStore>> {
        Some(self.inner.history.clone())
    }

    fn config(&self) -> &LayerConfig {
        &self.inner.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::msg;

    channels_core::layer_conformance_tests!(|config: LayerConfig| async move {
        Arc::new(InMemoryChannelLayer::new(config)) as Arc<dyn ChannelLayer>
    });

    mod history {
        use super::*;

        channels_core::history_conformance_tests!(|config: LayerConfig| async move {
            Arc::new(InMemoryChannelLayer::new(config)) as Arc<dyn ChannelLayer>
        });

        /// A restarted process (a new layer) starts a new epoch: the old positions are gone.
        #[tokio::test]
        async fn a_new_layer_starts_a_new_epoch() {
            use channels_core::layer::{History, HistoryOptions};
            let one = Arc::new(InMemoryChannelLayer::new(LayerConfig::default())) as Arc<dyn ChannelLayer>;
            let two = Arc::new(InMemoryChannelLayer::new(LayerConfig::default())) as Arc<dyn ChannelLayer>;
            let h1 = History::new(one, HistoryOptions::default()).unwrap();
            let h2 = History::new(two, HistoryOptions::default()).unwrap();
            let sent = h1.group_send("g", msg(1)).await.unwrap();
            assert_ne!(h2.position("g").await.unwrap().epoch, sent.epoch);
            assert!(!h2.recover("g", &sent).await.unwrap().recovered);
        }
    }

    mod presence {
        use super::*;

        channels_core::presence_conformance_tests!(|| async {
            let layer = Arc::new(InMemoryChannelLayer::new(LayerConfig::default())) as Arc<dyn ChannelLayer>;
            (layer.clone(), layer)
        });
    }
    #[tokio::test]
    async fn drained_and_forgotten_channels_leave_nothing_behind() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let a = layer.new_channel("specific").await.unwrap();
        layer.group_add("g", &a).await.unwrap();
        layer.send(&a, msg(1)).await.unwrap();
        layer.receive(&a).await.unwrap();
        layer.forget_channel(&a).await;
        assert_eq!(layer.stats(), LayerStats::default());
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            InMemoryChannelLayer::from_url(LayerUrl::parse("memory://?capacity=7").unwrap()).unwrap().config().capacity,
            7
        );
        for bad in ["memory://?capacity=0", "memory://?bogus=1", "memory://host", "redis://x"] {
            assert!(InMemoryChannelLayer::from_url(LayerUrl::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod stress {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_receivers_and_group_senders() {
        let layer = InMemoryChannelLayer::new(LayerConfig::default().capacity(100_000));
        let mut receivers = Vec::new();
        for _ in 0..20 {
            let ch = layer.new_channel("specific").await.unwrap();
            layer.group_add("g", &ch).await.unwrap();
            let layer = layer.clone();
            receivers.push(tokio::spawn(async move {
                let mut n = 0;
                while n < 2000 {
                    match tokio::time::timeout(Duration::from_secs(3), layer.receive(&ch)).await {
                        Ok(_) => n += 1,
                        Err(_) => break,
                    }
                    if n % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                n
            }));
        }
        let senders: Vec<_> = (0..20)
            .map(|_| {
                let layer = layer.clone();
                tokio::spawn(async move {
                    for i in 0..100u32 {
                        layer
                            .group_send(
                                "g",
                                Message::new(&std::collections::HashMap::from([
                                    ("type", "t".to_string()),
                                    ("i", i.to_string()),
                                ]))
                                .unwrap(),
                            )
                            .await
                            .unwrap();
                        if i % 3 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for s in senders {
            s.await.unwrap();
        }
        for r in receivers {
            assert_eq!(r.await.unwrap(), 2000);
        }
    }
}
