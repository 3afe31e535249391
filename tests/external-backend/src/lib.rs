//! A channel layer backend from outside the channels crates: [`PlainLayer`], built from a URL
//! by [`from_url`], which an application registers under a scheme of its choosing:
//!
//! ```rust,ignore
//! channels::layers::register("plain", external_backend::from_url)?;
//! let layer = channels::layers::from_env("plain://?capacity=100")?;
//! ```
//!
//! The layer is deliberately plain: every queue and group behind one mutex, and nothing
//! expires. It marks the channel names it makes with [`CHANNEL_MARK`], so that a test can
//! tell which backend a URL chose.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use channels_core::async_trait;
use channels_core::layer::{
    ChannelLayer, ConfigError, FlushError, GroupError, GroupSendReport, LayerConfig, LayerUrl, Message,
    NewChannelError, ReceiveError, SendError, validate_channel_name, validate_group_name,
};
use tokio::sync::Notify;

/// Part of every channel name a [`PlainLayer`] makes: `specific.plain-layer!3`.
pub const CHANNEL_MARK: &str = ".plain-layer!";

/// Builds a [`PlainLayer`] from a URL of any scheme: `SCHEME://?capacity=10`. It takes the
/// settings every layer takes (`capacity`, `expiry`, `group_expiry`, `channel_capacity`) and
/// refuses any other.
pub fn from_url(mut url: LayerUrl) -> Result<Arc<dyn ChannelLayer>, ConfigError> {
    if !url.hosts.is_empty() || !url.path.trim_matches('/').is_empty() {
        return Err(ConfigError(format!("{}:// takes no host or path, only ?parameters", url.scheme)));
    }
    let config = LayerConfig::take_from(&mut url)?;
    url.reject_unknown_params()?;
    Ok(Arc::new(PlainLayer::new(config)))
}

/// A channel layer for one process: queues and groups behind one mutex; nothing expires.
#[derive(Debug)]
pub struct PlainLayer {
    config: LayerConfig,
    state: Mutex<State>,
    /// Woken whenever a message is queued.
    arrived: Notify,
    next_channel: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    queues: HashMap<String, VecDeque<Message>>,
    groups: HashMap<String, HashSet<String>>,
}

impl State {
    /// Queues `message` on `channel` unless it holds its capacity already; true if queued.
    fn push(&mut self, config: &LayerConfig, channel: &str, message: Message) -> bool {
        let queue = self.queues.entry(channel.to_owned()).or_default();
        if queue.len() >= config.capacity_for(channel) {
            return false;
        }
        queue.push_back(message);
        true
    }

    fn pop(&mut self, channel: &str) -> Option<Message> {
        self.queues.get_mut(channel)?.pop_front()
    }
}

impl PlainLayer {
    /// An empty layer with `config`.
    pub fn new(config: LayerConfig) -> Self {
        Self { config, state: Mutex::default(), arrived: Notify::new(), next_channel: AtomicU64::new(0) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl ChannelLayer for PlainLayer {
    async fn new_channel(&self, prefix: &str) -> Result<String, NewChannelError> {
        let n = self.next_channel.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}{CHANNEL_MARK}{n}");
        validate_channel_name(&name)?;
        Ok(name)
    }

    async fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        validate_channel_name(channel)?;
        if !self.lock().push(&self.config, channel, message) {
            return Err(SendError::ChannelFull { channel: channel.to_owned() });
        }
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn receive(&self, channel: &str) -> Result<Message, ReceiveError> {
        validate_channel_name(channel)?;
        loop {
            // Registered before looking, so that a send between the look and the wait wakes it.
            let mut arrived = std::pin::pin!(self.arrived.notified());
            arrived.as_mut().enable();
            if let Some(message) = self.lock().pop(channel) {
                return Ok(message);
            }
            arrived.await;
        }
    }

    fn try_receive(&self, channel: &str) -> Option<Message> {
        self.lock().pop(channel)
    }

    async fn group_add(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        validate_group_name(group)?;
        validate_channel_name(channel)?;
        self.lock().groups.entry(group.to_owned()).or_default().insert(channel.to_owned());
        Ok(())
    }

    async fn group_discard(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        validate_group_name(group)?;
        validate_channel_name(channel)?;
        if let Some(members) = self.lock().groups.get_mut(group) {
            members.remove(channel);
        }
        Ok(())
    }

    async fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, GroupError> {
        validate_group_name(group)?;
        let (mut queued, mut dropped_full) = (0, 0);
        {
            let mut state = self.lock();
            let members: Vec<String> = state.groups.get(group).into_iter().flatten().cloned().collect();
            for member in members {
                if state.push(&self.config, &member, message.clone()) {
                    queued += 1;
                } else {
                    dropped_full += 1;
                }
            }
        }
        self.arrived.notify_waiters();
        Ok(GroupSendReport::new(queued, dropped_full))
    }

    async fn flush(&self) -> Result<(), FlushError> {
        *self.lock() = State::default();
        Ok(())
    }

    fn config(&self) -> &LayerConfig {
        &self.config
    }
}
