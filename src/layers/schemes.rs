//! The URL schemes [`from_url`](super::from_url) knows, each with the factory that builds its
//! layer: the built-in ones, and those an application registers for backends of its own.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use channels_core::layer::{ChannelLayer, ConfigError, LayerUrl};

/// Builds a layer from its parsed URL.
pub(crate) type Factory = dyn Fn(LayerUrl) -> Result<Arc<dyn ChannelLayer>, ConfigError> + Send + Sync;

type Schemes = BTreeMap<String, Arc<Factory>>;

static SCHEMES: LazyLock<RwLock<Schemes>> = LazyLock::new(|| {
    let mut schemes = Schemes::new();
    for (scheme, factory) in built_in() {
        // The built-in schemes are valid and distinct: this cannot fail.
        let _ = add(&mut schemes, scheme, factory);
    }
    RwLock::new(schemes)
});

/// The schemes of the backends enabled by features.
fn built_in() -> Vec<(&'static str, Arc<Factory>)> {
    #[allow(unused_mut)] // without the `memory` and `redis` features there are none
    let mut schemes: Vec<(&'static str, Arc<Factory>)> = Vec::new();
    #[cfg(feature = "memory")]
    schemes.push((
        "memory",
        Arc::new(|url| Ok(Arc::new(channels_memory::InMemoryChannelLayer::from_url(url)?) as Arc<dyn ChannelLayer>)),
    ));
    #[cfg(feature = "redis")]
    for scheme in ["redis", "rediss", "redis+sentinel", "rediss+sentinel"] {
        schemes.push((
            scheme,
            Arc::new(|url| {
                let config = channels_redis::RedisConfig::from_layer_url(url)?;
                Ok(Arc::new(channels_redis::RedisChannelLayer::new(config)?) as Arc<dyn ChannelLayer>)
            }),
        ));
    }
    #[cfg(feature = "redis")]
    for scheme in ["redis+pubsub", "rediss+pubsub", "redis+sentinel+pubsub", "rediss+sentinel+pubsub"] {
        schemes.push((
            scheme,
            Arc::new(|url| {
                let config = channels_redis::RedisConfig::from_layer_url(url)?;
                Ok(Arc::new(channels_redis::RedisPubSubChannelLayer::new(config)?) as Arc<dyn ChannelLayer>)
            }),
        ));
    }
    schemes
}

/// Makes [`from_url`](super::from_url), [`from_env`](super::from_env) and
/// [`configure`](super::configure) build layers of `scheme` with `factory`: how a backend
/// written outside this crate is chosen by URL, like the built-in ones.
///
/// A backend crate exports a factory, a function from the parsed [`LayerUrl`] to the layer;
/// the application registers it at start, before it reads its configuration. Schemes are
/// case-insensitive, as in URLs. A scheme is registered once: registering it again, or
/// registering a built-in one (`memory`, `redis`, `rediss`, `redis+pubsub`, `rediss+pubsub`,
/// `redis+sentinel`, `rediss+sentinel`, `redis+sentinel+pubsub`, `rediss+sentinel+pubsub`),
/// is an error, so that no dependency takes over a scheme unnoticed.
///
/// ```
/// use std::sync::Arc;
///
/// use channels::layers::{self, ChannelLayer, ConfigError, LayerConfig, LayerUrl};
/// use channels::memory::InMemoryChannelLayer;
///
/// /// `local://?capacity=N`: the in-memory layer under a name of our own.
/// fn local(mut url: LayerUrl) -> Result<Arc<dyn ChannelLayer>, ConfigError> {
///     let config = LayerConfig::take_from(&mut url)?;
///     url.reject_unknown_params()?;
///     Ok(Arc::new(InMemoryChannelLayer::new(config)))
/// }
///
/// layers::register("local", local)?;
/// let layer = layers::from_url("local://?capacity=50")?;
/// assert_eq!(layer.config().capacity, 50);
/// assert!(layers::register("local", local).is_err(), "a scheme is registered once");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn register<F>(scheme: &str, factory: F) -> Result<(), RegisterError>
where
    F: Fn(LayerUrl) -> Result<Arc<dyn ChannelLayer>, ConfigError> + Send + Sync + 'static,
{
    let mut schemes = SCHEMES.write().unwrap_or_else(PoisonError::into_inner);
    add(&mut schemes, scheme, Arc::new(factory))
}

/// The registered schemes, built-in ones included, in alphabetical order.
///
/// ```
/// assert!(channels::layers::registered_schemes().contains(&"memory".to_owned()));
/// ```
pub fn registered_schemes() -> Vec<String> {
    SCHEMES.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
}

/// The factory registered for `scheme` (lowercase, as [`LayerUrl`] has it).
pub(crate) fn factory(scheme: &str) -> Option<Arc<Factory>> {
    // Cloned out of the lock, so that a factory may itself call `from_url` for an inner layer.
    SCHEMES.read().unwrap_or_else(PoisonError::into_inner).get(scheme).cloned()
}

fn add(schemes: &mut Schemes, scheme: &str, factory: Arc<Factory>) -> Result<(), RegisterError> {
    if !is_scheme(scheme) {
        return Err(RegisterError::InvalidScheme { scheme: scheme.to_owned() });
    }
    let scheme = scheme.to_ascii_lowercase();
    if schemes.contains_key(&scheme) {
        return Err(RegisterError::Taken { scheme });
    }
    schemes.insert(scheme, factory);
    Ok(())
}

/// A URL scheme (RFC 3986): a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(scheme: &str) -> bool {
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

/// Why [`register`] refused a scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegisterError {
    /// The scheme has a factory already: a built-in one, or one registered before.
    Taken {
        /// The scheme, lowercase.
        scheme: String,
    },
    /// Not a URL scheme: a letter, then letters, digits, `+`, `-` or `.`, without `://`.
    InvalidScheme {
        /// The scheme as given.
        scheme: String,
    },
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Taken { scheme } => write!(f, "the channel layer scheme {scheme}:// is registered already"),
            Self::InvalidScheme { scheme } => write!(
                f,
                "{scheme:?} is not a URL scheme: a letter, then letters, digits, \"+\", \"-\" or \".\", without \"://\""
            ),
        }
    }
}

impl std::error::Error for RegisterError {}
