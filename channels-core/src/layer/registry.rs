//! Named channel layers: Django's `CHANNEL_LAYERS` setting with its aliases.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::ChannelLayer;

/// The alias consumers use unless they name another one.
pub const DEFAULT_ALIAS: &str = "default";

/// The configured channel layers, by alias.
///
/// ```
/// # use std::sync::Arc;
/// # use channels_core::layer::{ChannelLayers, ChannelLayer};
/// # fn demo(main: Arc<dyn ChannelLayer>, analytics: Arc<dyn ChannelLayer>) {
/// let layers = ChannelLayers::new().with_default(main).with_alias("analytics", analytics);
/// assert!(layers.get("analytics").is_some());
/// # }
/// ```
#[derive(Clone, Default)]
pub struct ChannelLayers {
    layers: HashMap<String, Arc<dyn ChannelLayer>>,
}

impl ChannelLayers {
    /// No layers: consumers get no channel name and cannot use groups.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the layer for the [`DEFAULT_ALIAS`].
    pub fn with_default(self, layer: Arc<dyn ChannelLayer>) -> Self {
        self.with_alias(DEFAULT_ALIAS, layer)
    }

    /// Sets the layer for `alias`.
    pub fn with_alias(mut self, alias: impl Into<String>, layer: Arc<dyn ChannelLayer>) -> Self {
        self.layers.insert(alias.into(), layer);
        self
    }

    /// The layer configured for `alias`.
    pub fn get(&self, alias: &str) -> Option<&Arc<dyn ChannelLayer>> {
        self.layers.get(alias)
    }

    /// The default layer.
    pub fn default_layer(&self) -> Option<&Arc<dyn ChannelLayer>> {
        self.get(DEFAULT_ALIAS)
    }

    /// Every configured layer with its alias, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn ChannelLayer>)> {
        self.layers.iter().map(|(alias, layer)| (alias.as_str(), layer))
    }
}

impl fmt::Debug for ChannelLayers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.layers.keys()).finish()
    }
}
