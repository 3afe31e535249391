//! An in-process WebSocket client for an [`Application`].

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::DuplexStream;
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::application::{Application, Upgrade};
use crate::error::SocketError;
use crate::io::{LeanIo, WsStream};
use crate::runtime::{Finished, Upgrading};
use crate::scope::Scope;

/// How a test connection attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connected {
    /// The consumer accepted, selecting this subprotocol.
    Accepted {
        /// The selected subprotocol.
        subprotocol: Option<String>,
    },
    /// The connection was refused before the upgrade.
    Denied {
        /// The HTTP status a real client would get (403 for a denial or a missing route).
        status: u16,
        /// The close code given to `close` inside `connect` (1000 for a plain `deny`).
        code: u16,
    },
}

/// One thing the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
    /// A close frame with its code and reason.
    Close(u16, String),
}

/// A failed expectation in a communicator test.
#[derive(Debug)]
#[non_exhaustive]
pub enum TestError {
    /// Nothing arrived within the timeout.
    Timeout,
    /// `connect` was not called, or was denied.
    NotConnected,
    /// The connection is closed.
    Closed,
    /// Something other than what was asked for arrived.
    Unexpected(Received),
    /// A JSON frame did not decode.
    Json(serde_json::Error),
    /// The WebSocket failed.
    Socket(SocketError),
}

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out waiting for the server"),
            Self::NotConnected => f.write_str("not connected"),
            Self::Closed => f.write_str("the connection is closed"),
            Self::Unexpected(r) => write!(f, "unexpected frame: {r:?}"),
            Self::Json(e) => write!(f, "invalid JSON from the server: {e}"),
            Self::Socket(e) => write!(f, "websocket error: {e}"),
        }
    }
}

impl std::error::Error for TestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Json(e) => Some(e),
            Self::Socket(e) => Some(e),
            Self::Timeout | Self::NotConnected | Self::Closed | Self::Unexpected(_) => None,
        }
    }
}

/// Drives one WebSocket connection to an [`Application`] in-process.
///
/// ```
/// use channels_core::prelude::*;
/// use channels_core::testing::{Connected, WebsocketCommunicator};
///
/// struct Upper;
/// impl WebsocketConsumer for Upper {
///     type Event = NoEvents;
///     async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
///         let text = frame.as_text().unwrap_or_default().to_uppercase();
///         ctx.send_text(text).await?;
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let app = Application::builder(Router::new().websocket("/ws/", |_: &Scope| Upper)).build();
/// let mut client = WebsocketCommunicator::new(&app, "/ws/");
/// assert_eq!(client.connect().await.unwrap(), Connected::Accepted { subprotocol: None });
/// client.send_text("hi").await.unwrap();
/// assert_eq!(client.receive_text().await.unwrap(), "HI");
/// client.disconnect().await.unwrap();
/// # }
/// ```
pub struct WebsocketCommunicator {
    app: Application,
    scope: Option<Scope>,
    socket: Option<WebSocketStream<DuplexStream>>,
    done: Option<oneshot::Receiver<()>>,
    response_headers: Vec<(String, String)>,
    timeout: Duration,
}

impl fmt::Debug for WebsocketCommunicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebsocketCommunicator").field("connected", &self.socket.is_some()).finish()
    }
}

impl WebsocketCommunicator {
    /// A client for `path_and_query` (`"/ws/chat/lobby/?user=ann"`) on `app`.
    pub fn new(app: &Application, path_and_query: &str) -> Self {
        Self {
            app: app.clone(),
            scope: Some(Scope::websocket(path_and_query)),
            socket: None,
            done: None,
            response_headers: Vec::new(),
            timeout: Duration::from_secs(1),
        }
    }

    /// Adds a request header (an `Origin`, a `Cookie`...).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.scope = self.scope.take().map(|s| s.with_header(name, value));
        self
    }

    /// Offers subprotocols, in order.
    pub fn subprotocols(self, protocols: &[&str]) -> Self {
        let value = protocols.join(", ");
        self.header("sec-websocket-protocol", &value)
    }

    /// How long each `receive_*` and `connect` waits (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The extra headers the consumer accepted with.
    pub fn response_headers(&self) -> &[(String, String)] {
        &self.response_headers
    }

    /// Runs the handshake: middleware, routing, groups and `connect`.
    pub async fn connect(&mut self) -> Result<Connected, TestError> {
        let scope = self.scope.take().ok_or(TestError::NotConnected)?;
        let upgrade = tokio::time::timeout(self.timeout, self.app.websocket_handshake(scope))
            .await
            .map_err(|_| TestError::Timeout)?;
        let (acceptance, session, limits, permit) = match upgrade {
            Upgrade::Accept { acceptance, session, limits, permit, guard } => {
                (acceptance, session, limits, (permit, guard))
            }
            Upgrade::Refuse { status, code, .. } => return Ok(Connected::Denied { status: status.as_u16(), code }),
        };
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server_config = limits.tungstenite_config();
        let upgrading: Upgrading = Box::pin(async move {
            let server =
                WebSocketStream::from_raw_socket(LeanIo::new(server_io), Role::Server, Some(server_config)).await;
            Some(Box::new(server) as WsStream)
        });
        let client_config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        self.socket = Some(WebSocketStream::from_raw_socket(client_io, Role::Client, Some(client_config)).await);
        let (done_tx, done_rx) = oneshot::channel();
        self.done = Some(done_rx);
        let (permit, metrics) = permit;
        session(self.app.tasks(), upgrading, Finished { permit, done: Some(Box::new(done_tx)), metrics });
        self.response_headers = acceptance
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        Ok(Connected::Accepted { subprotocol: acceptance.subprotocol })
    }

    fn socket(&mut self) -> Result<&mut WebSocketStream<DuplexStream>, TestError> {
        self.socket.as_mut().ok_or(TestError::NotConnected)
    }

    async fn send(&mut self, message: WsMessage) -> Result<(), TestError> {
        self.socket()?.send(message).await.map_err(|e| TestError::Socket(SocketError::new(e)))
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), TestError> {
        self.send(WsMessage::text(text.into())).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: impl Into<Bytes>) -> Result<(), TestError> {
        self.send(WsMessage::Binary(data.into())).await
    }

    /// Sends `value` as a JSON text frame.
    pub async fn send_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TestError> {
        let text = serde_json::to_string(value).map_err(TestError::Json)?;
        self.send_text(text).await
    }

    /// Sends raw bytes as a text frame, valid UTF-8 or not (to test the server's checks).
    pub async fn send_raw_text_frame(&mut self, payload: Vec<u8>) -> Result<(), TestError> {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        let frame = Frame::message(payload, OpCode::Data(Data::Text), true);
        self.send(WsMessage::Frame(frame)).await
    }

    /// Waits for the next frame from the server (pings and pongs are skipped).
    pub async fn receive(&mut self) -> Result<Received, TestError> {
        let timeout = self.timeout;
        let socket = self.socket()?;
        loop {
            let next = tokio::time::timeout(timeout, socket.next()).await.map_err(|_| TestError::Timeout)?;
            return match next {
                Some(Ok(WsMessage::Text(t))) => Ok(Received::Text(t.to_string())),
                Some(Ok(WsMessage::Binary(b))) => Ok(Received::Binary(b)),
                Some(Ok(WsMessage::Close(frame))) => {
                    // Answer the close and hang up, as a real client does.
                    let _ = tokio::time::timeout(timeout, socket.flush()).await;
                    self.socket = None;
                    Ok(match frame {
                        Some(f) => Received::Close(f.code.into(), f.reason.to_string()),
                        None => Received::Close(1005, String::new()),
                    })
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => Err(TestError::Socket(SocketError::new(e))),
                None => Err(TestError::Closed),
            };
        }
    }

    /// Waits for a text frame.
    pub async fn receive_text(&mut self) -> Result<String, TestError> {
        match self.receive().await? {
            Received::Text(t) => Ok(t),
            other => Err(TestError::Unexpected(other)),
        }
    }

    /// Waits for a binary frame.
    pub async fn receive_binary(&mut self) -> Result<Bytes, TestError> {
        match self.receive().await? {
            Received::Binary(b) => Ok(b),
            other => Err(TestError::Unexpected(other)),
        }
    }

    /// Waits for a JSON text frame and decodes it.
    pub async fn receive_json<T: DeserializeOwned>(&mut self) -> Result<T, TestError> {
        let text = self.receive_text().await?;
        serde_json::from_str(&text).map_err(TestError::Json)
    }

    /// Waits for the server's close frame; returns its code and reason.
    pub async fn receive_close(&mut self) -> Result<(u16, String), TestError> {
        match self.receive().await? {
            Received::Close(code, reason) => Ok((code, reason)),
            other => Err(TestError::Unexpected(other)),
        }
    }

    /// True if nothing arrives within `wait` (Django's `receive_nothing`).
    pub async fn receive_nothing_within(&mut self, wait: Duration) -> bool {
        let Ok(socket) = self.socket() else { return true };
        loop {
            match tokio::time::timeout(wait, socket.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
                Ok(_) => return false,
            }
        }
    }

    /// True if nothing arrives within 100 ms.
    pub async fn receive_nothing(&mut self) -> bool {
        self.receive_nothing_within(Duration::from_millis(100)).await
    }

    /// Closes with 1000 and waits until the consumer's `disconnect` hook has run.
    pub async fn disconnect(&mut self) -> Result<(), TestError> {
        self.disconnect_with(1000).await
    }

    /// Closes with `code` and waits until the consumer's `disconnect` hook has run.
    pub async fn disconnect_with(&mut self, code: u16) -> Result<(), TestError> {
        if let Some(mut socket) = self.socket.take() {
            let frame = CloseFrame { code: CloseCode::from(code), reason: "".into() };
            let _ = socket.close(Some(frame)).await;
            // Read until the server answers and the stream ends.
            let _ = tokio::time::timeout(self.timeout, async { while let Some(Ok(_)) = socket.next().await {} }).await;
        }
        self.wait_closed().await
    }

    /// Waits until the server side of the connection is finished (its `disconnect` has run).
    pub async fn wait_closed(&mut self) -> Result<(), TestError> {
        match self.done.take() {
            Some(done) => tokio::time::timeout(self.timeout, done).await.map(|_| ()).map_err(|_| TestError::Timeout),
            None => Ok(()),
        }
    }

    /// Drops the pipe without a close frame, as a vanished client would.
    pub fn drop_connection(&mut self) {
        self.socket = None;
    }
}
