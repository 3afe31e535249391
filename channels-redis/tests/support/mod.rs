//! Real `redis-server` processes for the Redis layer's tests.

#![allow(dead_code, unreachable_pub, unused_imports)]

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
    let prefix = format!("t{:016x}:", rand::random::<u64>());
    let mut redis = RedisConfig::from_url(&format!("{url}?prefix={prefix}")).expect("config");
    redis.layer = config;
    RedisChannelLayer::new(redis).expect("layer")
}

pub fn fresh_layer(config: LayerConfig) -> Arc<dyn ChannelLayer> {
    Arc::new(layer_on(&shared().url(), config))
}
