//! The backend-independent core of channels-rs.
//!
//! Most applications use the `channels` facade crate of this workspace, which
//! re-exports this one with the channel layer backends. This crate holds:
//!
//! | module | what it is |
//! |---|---|
//! | [`consumer`] | [`WebsocketConsumer`] and [`JsonWebsocketConsumer`]: per-connection hooks |
//! | [`context`] | [`WebsocketContext`]: accept, send, close, groups, from inside a hook; [`ContextError`] |
//! | [`frame`] | [`Frame`], [`Utf8Bytes`](frame::Utf8Bytes) and [`close_code`]: what travels on a WebSocket |
//! | [`http_consumer`] | [`HttpConsumer`](http_consumer::HttpConsumer): long polling, streaming (SSE) and plain answers with a channel |
//! | [`scope`] | [`Scope`]: path, query, headers, cookies, addresses, route params, extensions |
//! | [`routing`] | [`Router`]: the path table of WebSocket and HTTP endpoints, with `{name}` captures |
//! | [`layer`] | [`ChannelLayer`](layer::ChannelLayer): the backend trait, messages, names, config |
//! | [`middleware`] | [`Middleware`](middleware::Middleware) and [`OriginValidator`](middleware::OriginValidator) |
//! | [`client`] | `channels.js`, the browser client (reconnect, heartbeat, fallback, resume), to serve at a route |
//! | [`application`] | [`Application`]: routes + layers + middleware + limits; a hyper service |
//! | [`metrics`] | [`Metrics`](metrics::Metrics): Prometheus counters, gauges and histograms, opt in |
//! | [`server`] | [`Server`]: hyper + hyper-tungstenite, limits, graceful shutdown |
//! | [`sessions`] | [`SessionMiddleware`](sessions::SessionMiddleware) and [`AuthMiddlewareStack`](sessions::AuthMiddlewareStack): signed-cookie sessions, the user in the scope |
//! | [`worker`] | [`WorkerRouter`](worker::WorkerRouter): consumers of named channels (Django's `runworker`) |
//! | `testing` | `WebsocketCommunicator`, `HttpCommunicator` and the layer semantics suite, with the `testing` feature |
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `testing` | no | the `testing` module: drive an application's consumers without sockets, and check a channel layer against the shared semantics suite (`layer_conformance_tests!`) |
//!
//! Enable it for tests only: `channels-core = { version = "0.1", features = ["testing"] }` under
//! `[dev-dependencies]`.

pub mod application;
pub mod client;
pub mod config;
pub mod consumer;
pub mod context;
mod endpoint;
mod error;
pub mod frame;
mod gate;
mod guarded;
pub mod http;
pub mod http_consumer;
mod io;
pub mod layer;
mod membership;
pub mod metrics;
pub mod middleware;
pub mod presence;
pub mod routing;
mod runtime;
pub mod scope;
pub mod server;
pub mod sessions;
mod tasks;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;

pub use application::{AppLimits, AppService, Application, ApplicationBuilder};
/// The attribute for implementing [`Middleware`](middleware::Middleware) and [`ChannelLayer`](layer::ChannelLayer).
pub use async_trait::async_trait;
pub use config::WebsocketLimits;
pub use consumer::{BoxError, HandlerResult, JsonWebsocketConsumer, NoEvents, WebsocketConsumer};
pub use context::{ContextError, WebsocketContext};
pub use frame::{Frame, close_code};
pub use routing::Router;
pub use scope::Scope;
pub use server::Server;

/// Everything a consumer module usually needs.
pub mod prelude {
    pub use crate::application::{AppLimits, Application};
    pub use crate::config::WebsocketLimits;
    pub use crate::consumer::{
        BoxError, HandlerResult, JsonFrameError, JsonWebsocketConsumer, NoEvents, WebsocketConsumer,
        decode_and_dispatch,
    };
    pub use crate::context::{ContextError, WebsocketContext};
    pub use crate::frame::{Frame, close_code};
    pub use crate::http_consumer::{HttpConsumer, HttpContext};
    pub use crate::layer::Message;
    pub use crate::routing::Router;
    pub use crate::scope::Scope;
    pub use crate::server::Server;
    pub use http::StatusCode;
}
