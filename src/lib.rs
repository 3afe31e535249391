//! # channels
//!
//! Consumers, URL routing and channel layers for real-time Rust servers: the Django Channels
//! model in Rust.
//!
//! A **consumer** handles one WebSocket connection through its hooks (`connect`, `receive`,
//! `event`, `disconnect`). A [`Router`] maps URL patterns with `{name}` captures to consumers
//! and HTTP handlers. A **channel layer** lets connections message each other, one to one or
//! through **groups**; it is chosen by a URL, in-memory for one process or Redis for several
//! (byte-compatible with Python's `channels_redis`). An [`Application`] puts routes, layers,
//! middleware and limits together, and a [`Server`] serves it.
//!
//! ```no_run
//! use channels::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! /// What the members of a room send each other through the channel layer.
//! #[derive(Serialize, Deserialize)]
//! #[serde(tag = "type", rename = "chat.message")]
//! struct ChatMessage {
//!     text: String,
//! }
//!
//! struct Chat {
//!     group: String,
//! }
//!
//! impl WebsocketConsumer for Chat {
//!     type Event = ChatMessage;
//!
//!     fn groups(&self) -> Vec<String> {
//!         vec![self.group.clone()] // joined before `connect`, left after `disconnect`
//!     }
//!
//!     async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
//!         if let Some(text) = frame.as_text() {
//!             ctx.group_send(&self.group, &ChatMessage { text: text.to_owned() }).await?;
//!         }
//!         Ok(())
//!     }
//!
//!     async fn event(&mut self, ctx: &mut WebsocketContext, message: ChatMessage) -> HandlerResult {
//!         ctx.send_json(&message).await?; // {"type":"chat.message","text":...}
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let router = Router::new().websocket("/ws/chat/{room}/", |scope| Chat {
//!         group: format!("chat_{}", scope.param("room").unwrap_or_default()),
//!     });
//!     let layer = channels::layers::from_env("memory://")?; // or CHANNELS_LAYER=redis://...
//!     let app = Application::builder(router).layer(layer).build();
//!     Server::bind("127.0.0.1:8000").await?.serve(app).await?; // until Ctrl-C
//!     Ok(())
//! }
//! ```
//!
//! The guides live in the repository's `docs/` folder: `getting-started.md` (a tutorial),
//! `concepts.md` (every rule in detail), `coming-from-django.md`, `layers.md` (settings,
//! Redis, deployment), `workers.md`, `transports.md` and `performance.md`.
//!
//! ## Consumers
//!
//! Implement [`WebsocketConsumer`] (or [`JsonWebsocketConsumer`] for JSON frames). The server
//! builds one instance per connection and runs its hooks one at a time, in order. Every hook
//! has a default: `connect` accepts, the others do nothing. A hook that returns an error closes
//! its connection with 1011 (the error is logged); `disconnect` runs exactly once, whoever
//! closed.
//!
//! ```
//! use channels::prelude::*;
//!
//! struct Echo;
//!
//! impl WebsocketConsumer for Echo {
//!     type Event = NoEvents; // takes no channel-layer messages
//!
//!     async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
//!         match frame.as_text() {
//!             Some("bye") => ctx.close(close_code::NORMAL).await?,
//!             Some(text) => ctx.send_text(format!("echo: {text}")).await?,
//!             None => {} // a binary frame
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let router = Router::new().websocket("/ws/echo/", |_| Echo);
//! # let _ = router;
//! ```
//!
//! ## Routing
//!
//! Paths use [matchit](https://docs.rs/matchit)'s syntax: `{name}` captures a segment,
//! `{*rest}` the rest of the path. A path may carry one WebSocket and one HTTP endpoint;
//! mounting a second of the same kind panics. Per-route limits replace the application's.
//!
//! ```
//! use channels::http::{HttpRequest, json, page};
//! use channels::middleware::StatusCode;
//! use channels::prelude::*;
//! use channels::routing::websocket;
//!
//! struct Room {
//!     name: String,
//! }
//! impl WebsocketConsumer for Room {
//!     type Event = NoEvents;
//! }
//!
//! let api = Router::new().http("/rooms/{room}/", |request: HttpRequest| async move {
//!     let room = request.scope.param("room").unwrap_or_default().to_owned();
//!     json(StatusCode::OK, &serde_json::json!({ "room": room }))
//! });
//! let router = Router::new()
//!     .http("/", page("text/html; charset=utf-8", "<h1>chat</h1>"))
//!     .websocket("/ws/chat/{room}/", |scope| Room {
//!         name: scope.param("room").unwrap_or_default().to_owned(),
//!     })
//!     .route(
//!         "/ws/upload/",
//!         websocket(|_| Room { name: "upload".into() })
//!             .limits(WebsocketLimits::default().max_message_size(16 << 20)),
//!     )
//!     .nest("/api", api); // serves /api/rooms/{room}/
//! let app = Application::builder(router).build();
//! # let _ = app;
//! ```
//!
//! ## Channel layers by URL
//!
//! [`layers::from_url`] builds a layer from a URL, and [`layers::from_env`] from the
//! `CHANNELS_LAYER` environment variable with a default, so changing the backend changes no
//! code. Every scheme takes `capacity` (default 1,000), `expiry` (60 s), `group_expiry`
//! (86,400 s) and `channel_capacity=GLOB:N`; the Redis ones also take `prefix`,
//! `symmetric_encryption_key`, `send_linger_ms` and `process_ttl`. An unknown scheme or
//! parameter is an error, not ignored.
//!
//! ```
//! let layer = channels::layers::from_url("memory://?capacity=500&expiry=30")?;
//! assert_eq!(layer.config().capacity, 500);
//! assert!(channels::layers::from_url("memory://?capacity=lots").is_err());
//!
//! # #[cfg(feature = "redis")]
//! # {
//! // Connections are made on first use, so this works without a Redis running.
//! let shared = channels::layers::from_url("redis://127.0.0.1:6379/0?prefix=chat")?;
//! assert_eq!(shared.config().capacity, 1000);
//! # }
//! # Ok::<(), channels::layers::ConfigError>(())
//! ```
//!
//! ## Groups
//!
//! A group is a named set of channels, and every connection has a channel of its own. A
//! consumer joins groups by listing them in `groups()` (the server joins before `connect` and
//! leaves after `disconnect`) or with `ctx.group_add`, and sends with `ctx.group_send`, which
//! encodes the event once and queues it for every member. Outside a consumer, for example in
//! an HTTP handler or a worker, call the layer itself:
//!
//! ```
//! use channels::layers::ChannelLayer;
//! use channels::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = channels::layers::from_url("memory://")?;
//! let ann = layer.new_channel("specific").await?;
//! layer.group_add("chat_lobby", &ann).await?;
//!
//! let event = serde_json::json!({ "type": "chat.message", "text": "hello" });
//! let report = layer.group_send("chat_lobby", Message::new(&event)?).await?;
//! assert_eq!(report.queued, 1);
//!
//! let received = layer.receive(&ann).await?;
//! assert_eq!(received.message_type(), "chat.message");
//! # Ok(())
//! # }
//! ```
//!
//! ## Testing
//!
//! With the `testing` feature, `channels::testing::WebsocketCommunicator` drives a connection to an
//! application in-process, without sockets, through the real routing, groups, hooks and
//! WebSocket frames.
//!
//! ```
//! # #[cfg(feature = "testing")]
//! # mod example {
//! use channels::prelude::*;
//! use channels::testing::{Connected, WebsocketCommunicator};
//!
//! struct Echo;
//! impl WebsocketConsumer for Echo {
//!     type Event = NoEvents;
//!     async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
//!         if let Some(text) = frame.as_text() {
//!             ctx.send_text(text).await?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # pub(super) async fn run() {
//! let app = Application::builder(Router::new().websocket("/ws/echo/", |_| Echo)).build();
//! let mut client = WebsocketCommunicator::new(&app, "/ws/echo/");
//! assert_eq!(client.connect().await.unwrap(), Connected::Accepted { subprotocol: None });
//! client.send_text("hi").await.unwrap();
//! assert_eq!(client.receive_text().await.unwrap(), "hi");
//! client.disconnect().await.unwrap();
//! # }
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! #     #[cfg(feature = "testing")]
//! #     example::run().await;
//! # }
//! ```
//!
//! ## Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `memory` | yes | [`InMemoryChannelLayer`](memory::InMemoryChannelLayer) and `memory://` URLs |
//! | `redis` | yes | [`RedisChannelLayer`](redis::RedisChannelLayer), [`RedisPubSubChannelLayer`](redis::RedisPubSubChannelLayer), `redis://` and `redis+pubsub://` URLs, compatible with Python's `channels_redis` |
//! | `testing` | no | `channels::testing`: `WebsocketCommunicator`, `HttpCommunicator` and the layer semantics suite, for your tests (`[dev-dependencies]`) |
//! | `django` | no | `channels::django`: Django's signing, its `signed_cookies` and `db` sessions (SQLite, PostgreSQL) and its users, so a Rust consumer knows who logged in to Django |

pub use channels_core::{
    AppLimits, AppService, Application, ApplicationBuilder, BoxError, ContextError, Frame, HandlerResult,
    JsonWebsocketConsumer, NoEvents, Router, Scope, Server, WebsocketConsumer, WebsocketContext, WebsocketLimits,
    async_trait, close_code,
};
pub use channels_core::{
    application, client, config, consumer, context, http, http_consumer, metrics, middleware, prelude, routing, scope,
    server, sessions, worker,
};
#[cfg(feature = "testing")]
pub use channels_core::{history_conformance_tests, layer_conformance_tests, testing};

#[cfg(feature = "memory")]
pub use channels_memory as memory;

#[cfg(feature = "redis")]
pub use channels_redis as redis;

#[cfg(feature = "django")]
pub mod django;
pub mod layers;
pub mod presence;
