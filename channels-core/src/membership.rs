//! A connection's, request's or worker's place on the channel layer.

use std::sync::Arc;

use serde::Serialize;

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

    /// Leaves every group (errors are logged), then lets the layer release the channel.
    pub(crate) async fn leave_all(&mut self) {
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
