//! The presence semantics suite on real Redis, for both layers: two layers on one key prefix
//! are two processes of one deployment.

mod support;

use std::sync::Arc;

use channels_core::layer::{ChannelLayer, LayerConfig};
use channels_redis::{RedisConfig, RedisPubSubChannelLayer};

mod sorted_sets {
    use super::*;

    channels_core::presence_conformance_tests!(|| async {
        let (one, two) = support::layer_pair(&support::shared().url(), LayerConfig::default());
        (Arc::new(one) as Arc<dyn ChannelLayer>, Arc::new(two) as Arc<dyn ChannelLayer>)
    });
}

mod pubsub {
    use super::*;

    fn layer(prefix: &str) -> Arc<dyn ChannelLayer> {
        let url = format!("{}?prefix={prefix}", support::shared().url());
        Arc::new(RedisPubSubChannelLayer::new(RedisConfig::from_url(&url).expect("config")).expect("layer"))
    }

    channels_core::presence_conformance_tests!(|| async {
        let prefix = format!("p{:016x}.", rand::random::<u64>());
        (layer(&prefix), layer(&prefix))
    });
}
