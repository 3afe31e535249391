//! The per-connection handle a consumer's hooks get: accept, send, close, and layer operations.

// This file holds the handle and its life (accept, deny, close); `send.rs` the frames to the
// client, `groups.rs` the channel-layer operations, `outbox.rs` the queue of group sends that
// do not wait.

mod groups;
mod outbox;
mod send;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub use crate::error::{ContextError, SocketError};
use crate::frame::{close_code, close_message};
use crate::io::WsStream;
use crate::layer::ChannelLayer;
use crate::membership::Membership;
use crate::scope::Scope;
pub(crate) use outbox::{Outbox, Sent};

/// How the connection was accepted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Acceptance {
    pub(crate) subprotocol: Option<String>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Default)]
pub(crate) struct Connecting {
    pub(crate) accepted: Option<Acceptance>,
    pub(crate) pending: Vec<WsMessage>,
    pub(crate) closing: Option<u16>,
}

#[derive(Debug)]
pub(crate) enum State {
    /// `connect` is running; frames sent after `accept` wait here for the upgrade. Boxed: it
    /// lasts only until the upgrade, and every connection's context has room for its state.
    Connecting(Box<Connecting>),
    /// `connect` denied; the code is reported to test communicators.
    Denied {
        code: u16,
    },
    Open,
    /// The server sent a close frame with this code.
    Closing {
        code: u16,
    },
    /// The socket is gone (or unusable).
    Closed,
}

/// A connection's handle, passed to every [`WebsocketConsumer`](crate::consumer::WebsocketConsumer) hook.
///
/// Sends go straight to the socket (after `connect` they are held until the upgrade completes).
/// Layer operations use this connection's [`channel_name`](Self::channel_name).
pub struct WebsocketContext {
    scope: Scope,
    membership: Membership,
    pub(crate) state: State,
    /// In a mutex only so that the context is `Sync`; it is reached through `get_mut`, never locked.
    /// The option inside the mutex: around it, it would take a tag of its own (8 bytes in every
    /// connection's future).
    socket: std::sync::Mutex<Option<WsStream>>,
    pub(crate) send_timeout: Duration,
    /// While set, frames are buffered without a flush; the runtime flushes after a batch.
    pub(crate) batching: bool,
    /// Made by the first `group_send_nowait`. In a mutex only for `Sync`, like the socket.
    outbox: Option<Box<std::sync::Mutex<Outbox>>>,
    /// The application's per-message metrics, when they are on.
    pub(crate) metrics: Option<Arc<crate::metrics::Hot>>,
    /// With metrics on, the data frames sent during the current burst (`batching`) and their
    /// payload bytes: added to the metrics once, when the burst ends, rather than once per
    /// frame.
    burst_frames: u32,
    burst_bytes: u64,
}

/// What a mutex holds, reached through `&mut` (never locked: the mutexes are there for `Sync`).
fn unlocked<T>(mutex: &mut std::sync::Mutex<T>) -> &mut T {
    mutex.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl fmt::Debug for WebsocketContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebsocketContext")
            .field("path", &self.scope.path())
            .field("channel_name", &self.membership.channel_name)
            .field("state", &self.state)
            .finish()
    }
}

impl WebsocketContext {
    pub(crate) fn new(
        scope: Scope,
        layer: Option<Arc<dyn ChannelLayer>>,
        channel_name: Option<String>,
        send_timeout: Duration,
    ) -> Self {
        Self {
            scope,
            membership: Membership::new(layer, channel_name),
            state: State::Connecting(Box::default()),
            socket: std::sync::Mutex::new(None),
            send_timeout,
            batching: false,
            outbox: None,
            metrics: None,
            burst_frames: 0,
            burst_bytes: 0,
        }
    }

    pub(crate) fn attach(&mut self, socket: WsStream) {
        *unlocked(&mut self.socket) = Some(socket);
    }

    pub(crate) fn detach(&mut self) {
        *unlocked(&mut self.socket) = None;
    }

    pub(crate) fn socket_mut(&mut self) -> Option<&mut WsStream> {
        unlocked(&mut self.socket).as_mut()
    }

    /// The connection's scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// This connection's channel name, when a channel layer is configured.
    pub fn channel_name(&self) -> Option<&str> {
        self.membership.channel_name.as_deref()
    }

    /// [`channel_name`](Self::channel_name) as the shared string the connection keeps, for
    /// whatever keeps the name as long as the connection lives (such as
    /// `Presence::track`): a clone of it costs no copy.
    pub fn shared_channel_name(&self) -> Option<Arc<str>> {
        self.membership.channel_name.clone()
    }

    /// The channel layer, when one is configured.
    pub fn channel_layer(&self) -> Option<&Arc<dyn ChannelLayer>> {
        self.membership.layer.as_ref()
    }

    /// Accepts the connection (inside `connect`). The 101 response goes out when `connect` returns.
    ///
    /// Anywhere else (another hook, or after [`deny`](Self::deny)) it does nothing and logs an
    /// error; [`accept_with`](Self::accept_with) reports that misuse as an error instead.
    pub fn accept(&mut self) {
        if let Err(e) = self.accept_with(None, Vec::new()) {
            tracing::error!(path = %self.scope.path(), error = %e, "accept ignored");
        }
    }

    /// Accepts, selecting `subprotocol`, which must be one the client offered.
    pub fn accept_subprotocol(&mut self, subprotocol: &str) -> Result<(), ContextError> {
        self.accept_with(Some(subprotocol), Vec::new())
    }

    /// Accepts with an optional subprotocol and extra response headers.
    ///
    /// # Errors
    /// [`ContextError::InvalidAccept`] for a subprotocol the client did not offer, a bad header,
    /// or a call outside `connect` (or after a denial there), where there is no handshake left
    /// to answer.
    pub fn accept_with(
        &mut self,
        subprotocol: Option<&str>,
        headers: Vec<(String, String)>,
    ) -> Result<(), ContextError> {
        if let Some(p) = subprotocol
            && !self.scope.subprotocols().iter().any(|offered| offered == p)
        {
            return Err(ContextError::InvalidAccept(format!("the client did not offer subprotocol {p:?}")));
        }
        let headers = headers
            .into_iter()
            .map(|(k, v)| match (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
                (Ok(k), Ok(v)) => Ok((k, v)),
                _ => Err(ContextError::InvalidAccept(format!("invalid header {k:?}: {v:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        match &mut self.state {
            State::Connecting(connecting) => {
                connecting.accepted = Some(Acceptance { subprotocol: subprotocol.map(str::to_owned), headers });
                Ok(())
            }
            // The handshake's answer is decided when `connect` returns: too late, or denied.
            _ => Err(ContextError::InvalidAccept("accept is possible only inside connect, before a denial".into())),
        }
    }

    /// Denies the connection (inside `connect`): the client gets HTTP 403.
    pub fn deny(&mut self) {
        self.deny_with_code(close_code::NORMAL);
    }

    fn deny_with_code(&mut self, code: u16) {
        if matches!(self.state, State::Connecting(_)) {
            self.state = State::Denied { code };
        }
    }

    /// True once `accept` was called (and the connection is not closed).
    pub fn is_accepted(&self) -> bool {
        match &self.state {
            State::Connecting(connecting) => connecting.accepted.is_some(),
            State::Open => true,
            _ => false,
        }
    }

    /// Closes the connection with `code` (1000 is normal; 4000-4999 are yours). Inside `connect`,
    /// before `accept`, this denies with HTTP 403 and reports `code` to test communicators.
    pub async fn close(&mut self, code: u16) -> Result<(), ContextError> {
        self.close_with_reason(code, "").await
    }

    /// Closes the connection with a code and a reason (at most 123 bytes; longer is cut).
    pub async fn close_with_reason(&mut self, code: u16, reason: &str) -> Result<(), ContextError> {
        match &mut self.state {
            State::Connecting(connecting) if connecting.accepted.is_none() => {
                self.deny_with_code(code);
                Ok(())
            }
            State::Connecting(connecting) => {
                if connecting.closing.is_none() {
                    connecting.pending.push(close_message(code, reason));
                    connecting.closing = Some(code);
                }
                Ok(())
            }
            State::Open => {
                self.state = State::Closing { code };
                let send_timeout = self.send_timeout;
                let Some(socket) = self.socket_mut() else {
                    return Err(ContextError::Closed);
                };
                let failure = match tokio::time::timeout(send_timeout, socket.send(close_message(code, reason))).await {
                    Ok(Ok(())) => {
                        if let Some(metrics) = &self.metrics {
                            metrics.close_sent(code);
                        }
                        return Ok(());
                    }
                    Ok(Err(e)) => ContextError::socket(e),
                    Err(_) => ContextError::SendTimeout,
                };
                // No close frame went out, so no reply will come: the connection ends now
                // instead of waiting `close_timeout` for one.
                self.state = State::Closed;
                Err(failure)
            }
            State::Denied { .. } | State::Closing { .. } | State::Closed => Ok(()),
        }
    }
}
