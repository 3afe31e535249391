//! # channels
//!
//! Consumers, URL routing and channel layers for real-time Rust servers: the Django Channels
//! model in Rust.
//!
//! See the crate README and `docs/` for a tutorial. This facade re-exports
//! [`channels_core`] and the layer backends enabled by features:
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `memory` | yes | [`InMemoryChannelLayer`](memory::InMemoryChannelLayer), `memory://` URLs |
//! | `redis` | yes | [`RedisChannelLayer`](redis::RedisChannelLayer), `redis://` URLs, compatible with Python's `channels_redis` |

pub use channels_core::*;

#[cfg(feature = "memory")]
pub use channels_memory as memory;

#[cfg(feature = "redis")]
pub use channels_redis as redis;

pub mod layers;
