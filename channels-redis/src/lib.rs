//! The Redis channel layer for channels-rs, byte-compatible with Python's `channels_redis` 4.x.
//!
//! [`RedisChannelLayer`] (`redis://...` URLs) keeps queues and groups in Redis exactly as
//! `channels_redis.core.RedisChannelLayer` does — key names, sorted-set queues scored by float
//! seconds, the 12-byte random member prefix, msgpack map bodies, `__asgi_channel__` routing,
//! group sorted sets and the CRC-32 shard hash — so a Django Channels process and a Rust
//! process can share one Redis and each other's groups.
//!
//! ```no_run
//! use std::sync::Arc;
//! use channels_core::layer::ChannelLayer;
//! let layer: Arc<dyn ChannelLayer> =
//!     Arc::new(channels_redis::RedisChannelLayer::from_url("redis://127.0.0.1:6379/0").unwrap());
//! ```
//!
//! The `testing` feature adds `testing::RedisServer`, a throwaway `redis-server` for
//! integration tests.

mod config;
pub mod crypto;
mod endpoint;
mod history;
mod layer;
mod mailbox;
mod presence;
mod pubsub;
mod scripts;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;
pub mod wire;

pub use config::RedisConfig;
pub use endpoint::SentinelOptions;
pub use layer::RedisChannelLayer;
pub use pubsub::RedisPubSubChannelLayer;
pub use tls::{CertReqs, TlsOptions};
