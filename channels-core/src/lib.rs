//! The backend-independent core of channels-rs.
//!
//! Most applications use the `channels` facade crate of this workspace, which
//! re-exports this one with the channel layer backends. This crate holds:
//!
//! | module | what it is |
//! |---|---|
//! | [`consumer`] | [`WebsocketConsumer`] and [`JsonWebsocketConsumer`]: per-connection hooks |
//! | [`context`] | [`WebsocketContext`]: accept, send, close, groups, from inside a hook |
//! | [`http_consumer`] | [`HttpConsumer`](http_consumer::HttpConsumer): long polling, streaming (SSE) and plain answers with a channel |
//! | [`scope`] | [`Scope`]: path, query, headers, cookies, addresses, route params, extensions |
//! | [`routing`] | [`Router`]: WebSocket and HTTP routes with `{name}` captures |
//! | [`layer`] | [`ChannelLayer`](layer::ChannelLayer): the backend trait, messages, names, config |
//! | [`middleware`] | [`Middleware`](middleware::Middleware) and [`OriginValidator`](middleware::OriginValidator) |
//! | [`application`] | [`Application`]: routes + layers + middleware + limits; a hyper service |
//! | [`server`] | [`Server`]: hyper + hyper-tungstenite, limits, graceful shutdown |
//! | [`sessions`] | [`SessionMiddleware`](sessions::SessionMiddleware) and [`AuthMiddlewareStack`](sessions::AuthMiddlewareStack): signed-cookie sessions, the user in the scope |
//! | [`worker`] | [`WorkerRouter`](worker::WorkerRouter): consumers of named channels (Django's `runworker`) |
//! | [`testing`] | [`WebsocketCommunicator`](testing::WebsocketCommunicator) and the layer semantics suite |

pub mod application;
pub mod config;
pub mod consumer;
pub mod context;
mod gate;
pub mod http;
pub mod http_consumer;
mod io;
pub mod layer;
pub mod middleware;
pub mod routing;
mod runtime;
pub mod scope;
pub mod server;
pub mod sessions;
pub mod testing;
pub mod worker;

pub use application::{AppLimits, AppService, Application, ApplicationBuilder};
/// The attribute for implementing [`Middleware`](middleware::Middleware) and [`ChannelLayer`](layer::ChannelLayer).
pub use async_trait::async_trait;
pub use config::WebsocketLimits;
pub use consumer::{BoxError, Frame, HandlerResult, JsonWebsocketConsumer, NoEvents, WebsocketConsumer, close_code};
pub use context::{ContextError, WebsocketContext};
pub use routing::Router;
pub use scope::Scope;
pub use server::Server;

/// Everything a consumer module usually needs.
pub mod prelude {
    pub use crate::application::{AppLimits, Application};
    pub use crate::config::WebsocketLimits;
    pub use crate::consumer::{
        BoxError, Frame, HandlerResult, JsonFrameError, JsonWebsocketConsumer, NoEvents, WebsocketConsumer, close_code,
        decode_and_dispatch,
    };
    pub use crate::context::{ContextError, WebsocketContext};
    pub use crate::http_consumer::{HttpConsumer, HttpContext};
    pub use crate::layer::Message;
    pub use crate::routing::Router;
    pub use crate::scope::Scope;
    pub use crate::server::Server;
    pub use http::StatusCode;
}
