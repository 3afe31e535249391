//! Choosing a channel layer by configuration: a URL, an environment variable, or code.

use std::sync::Arc;

pub use channels_core::layer::*;

/// The environment variable [`from_env`] reads.
pub const LAYER_ENV_VAR: &str = "CHANNELS_LAYER";

/// Builds a layer from a URL: `memory://?capacity=100&expiry=60&group_expiry=86400`.
///
/// Swapping backends is a change of this string, not of code.
///
/// ```
/// let layer = channels::layers::from_url("memory://?capacity=500").unwrap();
/// assert_eq!(layer.config().capacity, 500);
/// assert!(channels::layers::from_url("nope://").is_err());
/// ```
pub fn from_url(url: &str) -> Result<Arc<dyn ChannelLayer>, ConfigError> {
    let parsed = LayerUrl::parse(url)?;
    match parsed.scheme.as_str() {
        #[cfg(feature = "memory")]
        "memory" => Ok(Arc::new(channels_memory::InMemoryChannelLayer::from_url(parsed)?)),
        "redis" | "rediss" | "redis+pubsub" => Err(ConfigError(format!(
            "{}:// layers are not available yet in this version of channels-rs; use memory://",
            parsed.scheme
        ))),
        other => Err(ConfigError(format!("unknown channel layer scheme {other:?}; expected memory://"))),
    }
}

/// Builds the layer named by the `CHANNELS_LAYER` environment variable, or `default_url`.
pub fn from_env(default_url: &str) -> Result<Arc<dyn ChannelLayer>, ConfigError> {
    match std::env::var(LAYER_ENV_VAR) {
        Ok(url) if !url.trim().is_empty() => from_url(url.trim()),
        _ => from_url(default_url),
    }
}
