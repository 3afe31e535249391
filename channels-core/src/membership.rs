//! A connection's, request's or worker's place on the channel layer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::ContextError;
use crate::layer::{ChannelLayer, GroupSendReport, Message};

/// A connection's (or request's, or worker's) place on the channel layer: its channel and the
/// groups it joined. Shared by every kind of context.
#[derive(Default)]
pub(crate) struct Membership {
    pub(crate) layer: Option<Arc<dyn ChannelLayer>>,
    /// Shared, so that the connection's receive loop can hold it without a copy.
    pub(crate) channel_name: Option<Arc<str>>,
    pub(crate) groups: Vec<String>,
}

impl Membership {
    pub(crate) fn new(layer: Option<Arc<dyn ChannelLayer>>, channel_name: Option<String>) -> Self {
        Self { layer, channel_name: channel_name.map(Arc::from), groups: Vec::new() }
    }

    fn layer(&self) -> Result<&Arc<dyn ChannelLayer>, ContextError> {
        self.layer.as_ref().ok_or(ContextError::NoLayer)
    }

    fn layer_and_channel(&self) -> Result<(&Arc<dyn ChannelLayer>, &str), ContextError> {
        match (&self.layer, &self.channel_name) {
            (Some(layer), Some(name)) => Ok((layer, name)),
            _ => Err(ContextError::NoLayer),
        }
    }

    pub(crate) async fn group_add(&mut self, group: &str) -> Result<(), ContextError> {
        let (layer, channel) = self.layer_and_channel()?;
        layer.group_add(group, channel).await.map_err(ContextError::Group)?;
        if !self.groups.iter().any(|g| g == group) {
            // Most connections join one group and keep it for their life: room for that one,
            // not the four names a first push makes room for.
            if self.groups.capacity() == 0 {
                self.groups.reserve_exact(1);
            }
            self.groups.push(group.to_owned());
        }
        Ok(())
    }

    pub(crate) async fn group_discard(&mut self, group: &str) -> Result<(), ContextError> {
        let (layer, channel) = self.layer_and_channel()?;
        layer.group_discard(group, channel).await.map_err(ContextError::Group)?;
        self.groups.retain(|g| g != group);
        Ok(())
    }

    pub(crate) async fn group_send<T: Serialize + ?Sized>(
        &self,
        group: &str,
        event: &T,
    ) -> Result<GroupSendReport, ContextError> {
        let layer = self.layer()?;
        let message = Message::new(event).map_err(ContextError::Message)?;
        layer.group_send(group, message).await.map_err(ContextError::Group)
    }

    pub(crate) async fn send_to<T: Serialize + ?Sized>(&self, channel: &str, event: &T) -> Result<(), ContextError> {
        let layer = self.layer()?;
        let message = Message::new(event).map_err(ContextError::Message)?;
        layer.send(channel, message).await.map_err(ContextError::Send)
    }

    /// Once shutdown has begun: leaves every group together with the other connections closing
    /// (see [`Shutdown`]) and returns the groups left, which stay listed in [`Self::groups`]
    /// until [`Self::leave_all`]. Before that, or without a layer: leaves nothing.
    pub(crate) async fn leave_at_shutdown(&self, shutdown: &Shutdown) -> Vec<String> {
        match (&self.layer, &self.channel_name) {
            (Some(layer), Some(channel)) if shutdown.has_begun() && !self.groups.is_empty() => {
                shutdown.leave_together(layer, channel, &self.groups).await;
                self.groups.clone()
            }
            _ => Vec::new(),
        }
    }

    /// Leaves every group (errors are logged), then lets the layer release the channel. `left`:
    /// groups left already (by [`Self::leave_at_shutdown`]); once shutdown has begun, the rest
    /// are left together with the other connections closing.
    pub(crate) async fn leave_all(&mut self, left: &[String], shutdown: Option<&Shutdown>) {
        self.groups.retain(|group| !left.contains(group));
        if let Some(shutdown) = shutdown {
            let joined_since = self.leave_at_shutdown(shutdown).await;
            self.groups.retain(|group| !joined_since.contains(group));
        }
        for group in std::mem::take(&mut self.groups) {
            if let (Some(layer), Some(channel)) = (&self.layer, &self.channel_name)
                && let Err(e) = layer.group_discard(&group, channel).await
            {
                tracing::warn!(%group, error = %e, "could not leave a group");
            }
        }
        if let (Some(layer), Some(channel)) = (&self.layer, &self.channel_name) {
            layer.forget_channel(channel).await;
        }
    }
}

/// The server's shutdown as connections see it: the signal, and where the connections closing
/// then leave their groups together.
///
/// Thousands of connections closing at once would otherwise each leave its groups with an
/// exchange of its own, and each `disconnect` hook that sends to its group would send to all
/// the others that are closing too. Instead, once shutdown begins, a connection hands its
/// memberships over before its `disconnect` hook runs and waits until they are gone; the first
/// to hand over removes them with [`ChannelLayer::group_discard_many`], for everyone who
/// handed over meanwhile, until none are left. It runs in a connection's task, which shutdown
/// waits for: the layer is in use until the last connection is done with it.
#[derive(Clone, Default)]
pub(crate) struct Shutdown(Arc<ShutdownState>);

#[derive(Default)]
struct ShutdownState {
    signal: CancellationToken,
    leaving: Mutex<Leaving>,
    /// The number of the last batch of memberships removed (or tried).
    removed: tokio::sync::watch::Sender<u64>,
    /// `disconnect` hooks that failed because the connection was already closed.
    failed_on_closed: AtomicUsize,
}

/// `(group, channel)` pairs, as [`ChannelLayer::group_discard_many`] takes them.
type Memberships = Vec<(String, String)>;

/// Memberships handed over and not yet being removed.
#[derive(Default)]
struct Leaving {
    pending: Vec<(Arc<dyn ChannelLayer>, String, String)>,
    /// The number of the batch `pending` goes in.
    batch: u64,
    /// A connection's task is removing batches.
    removing: bool,
}

impl Shutdown {
    pub(crate) fn new(signal: CancellationToken) -> Self {
        Self(Arc::new(ShutdownState { signal, ..ShutdownState::default() }))
    }

    /// Cancelled when shutdown begins.
    pub(crate) fn signal(&self) -> &CancellationToken {
        &self.0.signal
    }

    pub(crate) fn has_begun(&self) -> bool {
        self.0.signal.is_cancelled()
    }

    /// Counts a `disconnect` hook that failed because its connection was closed, for
    /// [`Self::take_failed_on_closed`].
    pub(crate) fn count_failed_on_closed(&self) {
        self.0.failed_on_closed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn take_failed_on_closed(&self) -> usize {
        self.0.failed_on_closed.swap(0, Ordering::Relaxed)
    }

    /// Removes `channel` from `groups` together with the other connections leaving now;
    /// returns once they are gone (or their removal failed, which is logged).
    async fn leave_together(&self, layer: &Arc<dyn ChannelLayer>, channel: &str, groups: &[String]) {
        let (ticket, remove) = {
            let mut leaving = self.0.leaving.lock().unwrap_or_else(|p| p.into_inner());
            leaving.pending.extend(groups.iter().map(|g| (layer.clone(), g.clone(), channel.to_owned())));
            (leaving.batch + 1, !std::mem::replace(&mut leaving.removing, true))
        };
        if remove {
            self.remove_batches().await;
        }
        let mut removed = self.0.removed.subscribe();
        // The sender lives in `self`: the wait ends.
        let _ = removed.wait_for(|&done| done >= ticket).await;
    }

    /// Removes the pending memberships, batch after batch, until none are left.
    async fn remove_batches(&self) {
        // Should this task end mid-way (a layer that panics), the next connection to hand over
        // takes over, and those waiting for the batch in hand stop waiting.
        let mut in_hand = InHand { state: &self.0, batch: None };
        loop {
            let (batch, pending) = {
                let mut leaving = self.0.leaving.lock().unwrap_or_else(|p| p.into_inner());
                if leaving.pending.is_empty() {
                    leaving.removing = false;
                    return;
                }
                leaving.batch += 1;
                (leaving.batch, std::mem::take(&mut leaving.pending))
            };
            in_hand.batch = Some(batch);
            let mut by_layer: Vec<(Arc<dyn ChannelLayer>, Memberships)> = Vec::new();
            for (layer, group, channel) in pending {
                match by_layer.iter_mut().find(|(l, _)| Arc::ptr_eq(l, &layer)) {
                    Some((_, memberships)) => memberships.push((group, channel)),
                    None => by_layer.push((layer, vec![(group, channel)])),
                }
            }
            for (layer, memberships) in by_layer {
                if let Err(e) = layer.group_discard_many(&memberships).await {
                    tracing::warn!(memberships = memberships.len(), error = %e, "could not leave groups at shutdown");
                }
            }
            self.0.removed.send_replace(batch);
            in_hand.batch = None;
        }
    }
}

/// The batch a connection's task is removing, released if the task ends before it is done.
struct InHand<'a> {
    state: &'a ShutdownState,
    batch: Option<u64>,
}

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        if let Some(batch) = self.batch {
            self.state.leaving.lock().unwrap_or_else(|p| p.into_inner()).removing = false;
            self.state.removed.send_replace(batch);
        }
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown").field("begun", &self.has_begun()).finish_non_exhaustive()
    }
}
