//! Channel layers, and choosing one by configuration: a URL, an environment variable, or code.
//!
//! This is the one home of the layer API in this crate: the [`ChannelLayer`] trait that
//! backends implement, [`Message`], the errors and [`LayerConfig`] (all from
//! `channels_core::layer`), and the functions that build a layer from a URL. Each URL scheme
//! has a factory: the built-in backends' are there from the start, and [`register`] adds one
//! for a backend of your own.

mod schemes;

use std::sync::Arc;

pub use channels_core::layer::*;
pub use schemes::{RegisterError, register, registered_schemes};

/// The environment variable [`from_env`] reads.
pub const LAYER_ENV_VAR: &str = "CHANNELS_LAYER";

/// Builds a layer from a URL: `memory://?capacity=100&expiry=60&group_expiry=86400`, or
/// `redis://host:6379/0?prefix=asgi&capacity=100` (several hosts, comma-separated, for sharding),
/// `rediss://` for TLS, `redis+sentinel://s1:26379,s2:26379/0?master_name=NAME` for Redis
/// Sentinel (`+pubsub` for the pub/sub layer), or a URL of a scheme added with [`register`].
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
    match schemes::factory(&parsed.scheme) {
        Some(factory) => factory(parsed),
        None => Err(unknown_scheme(&parsed.scheme)),
    }
}

fn unknown_scheme(scheme: &str) -> ConfigError {
    let known: Vec<String> = registered_schemes().iter().map(|s| format!("{s}://")).collect();
    let known = if known.is_empty() {
        "none (enable the `memory` or `redis` feature, or call channels::layers::register)".to_owned()
    } else {
        known.join(", ")
    };
    ConfigError(format!("unknown channel layer scheme {scheme:?}; registered schemes: {known}"))
}

/// Builds the layer named by the `CHANNELS_LAYER` environment variable, or `default_url`.
pub fn from_env(default_url: &str) -> Result<Arc<dyn ChannelLayer>, ConfigError> {
    from_url(&url_from_env(default_url))
}

/// The URL [`from_env`] builds its layer from: `CHANNELS_LAYER` (trimmed), or `default_url`
/// when it is unset or blank. For a program that also shows which layer it runs on.
pub fn url_from_env(default_url: &str) -> String {
    match std::env::var(LAYER_ENV_VAR) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => default_url.to_owned(),
    }
}

/// Prefix of the environment variables that configure named layers: `CHANNELS_LAYER_ANALYTICS`
/// sets the alias `analytics`.
pub const ALIAS_ENV_PREFIX: &str = "CHANNELS_LAYER_";

/// Every layer the environment configures: the default from `CHANNELS_LAYER` (or
/// `default_url`), and one alias per `CHANNELS_LAYER_<NAME>` variable — Django's
/// `CHANNEL_LAYERS` setting, from the environment.
pub fn configure(default_url: &str) -> Result<ChannelLayers, ConfigError> {
    configure_from(std::env::vars(), default_url)
}

/// [`configure`] from the given variables instead of the process environment.
///
/// ```
/// let vars = [
///     ("CHANNELS_LAYER".to_string(), "memory://?capacity=10".to_string()),
///     ("CHANNELS_LAYER_ANALYTICS".to_string(), "memory://?capacity=20".to_string()),
/// ];
/// let layers = channels::layers::configure_from(vars, "memory://").unwrap();
/// assert_eq!(layers.default_layer().unwrap().config().capacity, 10);
/// assert_eq!(layers.get("analytics").unwrap().config().capacity, 20);
/// ```
pub fn configure_from(
    vars: impl IntoIterator<Item = (String, String)>,
    default_url: &str,
) -> Result<ChannelLayers, ConfigError> {
    let mut default = None;
    let mut layers = ChannelLayers::new();
    for (key, value) in vars {
        let value = value.trim();
        if value.is_empty() {
            continue; // an empty variable counts as unset, as in from_env
        }
        if key == LAYER_ENV_VAR {
            default = Some(from_url(value).map_err(|e| ConfigError(format!("{key}: {}", e.0)))?);
        } else if let Some(alias) = key.strip_prefix(ALIAS_ENV_PREFIX).filter(|a| !a.is_empty()) {
            let layer = from_url(value).map_err(|e| ConfigError(format!("{key}: {}", e.0)))?;
            layers = layers.with_alias(alias.to_ascii_lowercase(), layer);
        }
    }
    let default = match default {
        Some(layer) => layer,
        None => from_url(default_url)?,
    };
    Ok(layers.with_default(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_schemes_and_parameters_are_clear_errors() {
        let err = from_url("kafka://x").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("unknown channel layer scheme \"kafka\""), "{err}");
        assert!(from_url("redis://127.0.0.1:6379/0?prefix=x").is_ok(), "connections are made on first use");
        assert!(from_url("redis+pubsub://127.0.0.1:6379").is_ok());
        assert!(from_url("rediss://127.0.0.1:6379").is_ok(), "TLS connects on first use");
        assert!(from_url("rediss://127.0.0.1:6379?ssl_cert_reqs=maybe").is_err());
        assert!(from_url("memory://?capacity=many").is_err());
        assert!(from_url("not a url").is_err());
    }

    #[test]
    fn a_bad_alias_names_its_variable() {
        let vars = [("CHANNELS_LAYER_X".to_string(), "memory://?bogus=1".to_string())];
        let err = configure_from(vars, "memory://").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("CHANNELS_LAYER_X"), "{err}");
    }

    #[test]
    fn the_default_url_applies_without_variables() {
        let layers = configure_from(Vec::new(), "memory://?capacity=3").expect("configure");
        assert_eq!(layers.default_layer().map(|l| l.config().capacity), Some(3));
    }

    #[test]
    fn an_unknown_scheme_lists_the_registered_ones() {
        register("listed-in-errors", |_| Err(ConfigError("unused".into()))).expect("register");
        let err = from_url("kafka://x").err().map(|e| e.to_string()).unwrap_or_default();
        for scheme in
            ["memory://", "redis://", "rediss://", "redis+pubsub://", "rediss+pubsub://", "listed-in-errors://"]
        {
            assert!(err.contains(scheme), "{scheme} missing from: {err}");
        }
    }

    #[test]
    fn from_url_builds_a_registered_scheme_with_its_factory() {
        register("refusing", |url| Err(ConfigError(format!("refusing factory saw {:?}", url.params))))
            .expect("register");
        let err = from_url("Refusing://?knob=1").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.ends_with(r#"refusing factory saw [("knob", "1")]"#), "{err}");
    }

    #[test]
    fn a_scheme_is_registered_once() {
        let refuse = |_| Err(ConfigError("unused".into()));
        assert_eq!(register("once", refuse), Ok(()));
        assert_eq!(register("ONCE", refuse), Err(RegisterError::Taken { scheme: "once".into() }));
    }

    #[test]
    fn built_in_schemes_cannot_be_taken_over() {
        for scheme in
            ["memory", "redis", "rediss", "redis+pubsub", "rediss+pubsub", "redis+sentinel", "rediss+sentinel+pubsub"]
        {
            let taken = register(scheme, |_| Err(ConfigError("unused".into())));
            assert_eq!(taken, Err(RegisterError::Taken { scheme: scheme.into() }));
        }
    }

    #[test]
    fn only_url_schemes_can_be_registered() {
        for scheme in ["", "nats://", "1nats", "na ts", "nats_x"] {
            let refused = register(scheme, |_| Err(ConfigError("unused".into())));
            assert_eq!(refused, Err(RegisterError::InvalidScheme { scheme: scheme.into() }), "{scheme:?}");
        }
    }
}
