//! Testing utilities: drive an application's consumers without sockets, and check a channel
//! layer against the shared semantics suite.
//!
//! [`HttpCommunicator`] sends one HTTP request in-process, as Django's does.
//! [`WebsocketCommunicator`] is Django's `WebsocketCommunicator`: it runs the real handshake,
//! routing, middleware and consumer loop over an in-memory pipe speaking real WebSocket frames,
//! so what passes here behaves the same on a socket.
//!
//! This module needs the `testing` feature, which tests alone need: through the facade,
//!
//! ```toml
//! [dev-dependencies]
//! channels = { path = "../channels-rs", features = ["testing"] }
//! ```
//!
//! or `channels-core = { ..., features = ["testing"] }` for a layer backend that depends on
//! this crate alone.

pub mod history_suite;
mod http;
pub mod layer_suite;
pub mod presence_suite;
mod websocket;

pub use http::{HttpCommunicator, TestResponse, TestStream};
pub use websocket::{Connected, Received, TestError, WebsocketCommunicator};
