//! # channels
//!
//! Consumers, URL routing and channel layers for real-time Rust servers: the Django Channels
//! model in Rust.
//!
//! See the crate README and `docs/` for a tutorial. This facade re-exports [`channels_core`]
//! (its `layer` module as [`layers`], together with the functions that choose a layer by URL)
//! and the layer backends enabled by features:
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `memory` | yes | [`InMemoryChannelLayer`](memory::InMemoryChannelLayer), `memory://` URLs |
//! | `redis` | yes | [`RedisChannelLayer`](redis::RedisChannelLayer), `redis://` URLs, compatible with Python's `channels_redis` |
//! | `testing` | no | `channels::testing` (communicators, the layer semantics suite, `layer_conformance_tests!`) and, with `redis`, `channels::redis::testing` |
//!
//! `testing` is for tests; enable it in `[dev-dependencies]`:
//! `channels = { path = "../channels-rs", features = ["testing"] }`.

pub use channels_core::{
    AppLimits, AppService, Application, ApplicationBuilder, BoxError, ContextError, Frame, HandlerResult,
    JsonWebsocketConsumer, NoEvents, Router, Scope, Server, WebsocketConsumer, WebsocketContext, WebsocketLimits,
    async_trait, close_code,
};
pub use channels_core::{
    application, config, consumer, context, http, http_consumer, middleware, prelude, routing, scope, server, sessions,
    worker,
};
#[cfg(feature = "testing")]
pub use channels_core::{layer_conformance_tests, testing};

#[cfg(feature = "memory")]
pub use channels_memory as memory;

#[cfg(feature = "redis")]
pub use channels_redis as redis;

pub mod layers;
