//! Real `redis-server` processes for the Redis layer's tests.

#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod peer;

use std::sync::{Arc, OnceLock};

use channels_core::layer::{ChannelLayer, LayerConfig};
pub use channels_redis::testing::{RedisServer, redis_cli};
use channels_redis::{RedisChannelLayer, RedisConfig};

/// One server for a whole test binary.
pub fn shared() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// A fresh layer on the shared server, isolated by its own key prefix.
pub fn layer_on(url: &str, config: LayerConfig) -> RedisChannelLayer {
    layer_with_prefix(url, &fresh_prefix(), config)
}

/// Two fresh layers on one key prefix, as two processes of one deployment.
pub fn layer_pair(url: &str, config: LayerConfig) -> (RedisChannelLayer, RedisChannelLayer) {
    let prefix = fresh_prefix();
    (layer_with_prefix(url, &prefix, config.clone()), layer_with_prefix(url, &prefix, config))
}

fn fresh_prefix() -> String {
    format!("t{:016x}:", rand::random::<u64>())
}

fn layer_with_prefix(url: &str, prefix: &str, config: LayerConfig) -> RedisChannelLayer {
    let mut redis = RedisConfig::from_url(&format!("{url}?prefix={prefix}")).expect("config");
    redis.layer = config;
    RedisChannelLayer::new(redis).expect("layer")
}

pub fn fresh_layer(config: LayerConfig) -> Arc<dyn ChannelLayer> {
    Arc::new(layer_on(&shared().url(), config))
}
