//! Why an operation of a context failed: one error type for every kind of context.

use std::fmt;

use tokio_tungstenite::tungstenite;

use crate::layer::{GroupError, MessageError, SendError};

/// Why an operation of a context failed: a
/// [`WebsocketContext`](crate::context::WebsocketContext),
/// [`HttpContext`](crate::http_consumer::HttpContext) or
/// [`WorkerContext`](crate::worker::WorkerContext).
#[derive(Debug)]
#[non_exhaustive]
pub enum ContextError {
    /// No channel layer is configured for this consumer's alias.
    NoLayer,
    /// Frames can be sent only after
    /// [`WebsocketContext::accept`](crate::context::WebsocketContext::accept).
    NotAccepted,
    /// The connection is closed or closing.
    Closed,
    /// The client did not take the frame within the send timeout (a slow or dead client).
    SendTimeout,
    /// A subprotocol the client did not offer, or a bad header, was given to `accept`, or it was
    /// called outside `connect`.
    InvalidAccept(String),
    /// The value is not a valid layer message.
    Message(MessageError),
    /// `send` to a channel failed.
    Send(SendError),
    /// A group operation failed.
    Group(GroupError),
    /// The value could not be encoded as JSON.
    Json(serde_json::Error),
    /// The socket failed.
    Socket(SocketError),
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoLayer => f.write_str("no channel layer is configured for this consumer"),
            Self::NotAccepted => f.write_str("the connection has not been accepted"),
            Self::Closed => f.write_str("the connection is closed"),
            Self::SendTimeout => f.write_str("the client did not read in time"),
            Self::InvalidAccept(e) => write!(f, "invalid accept: {e}"),
            Self::Message(e) => e.fmt(f),
            Self::Send(e) => e.fmt(f),
            Self::Group(e) => e.fmt(f),
            Self::Json(e) => write!(f, "JSON encoding failed: {e}"),
            Self::Socket(e) => write!(f, "socket error: {e}"),
        }
    }
}

impl std::error::Error for ContextError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Shown as they are: their message is this error's, so the chain goes on below them.
            Self::Message(e) => e.source(),
            Self::Send(e) => e.source(),
            Self::Group(e) => e.source(),
            Self::Json(e) => Some(e),
            Self::Socket(e) => Some(e),
            Self::NoLayer | Self::NotAccepted | Self::Closed | Self::SendTimeout | Self::InvalidAccept(_) => None,
        }
    }
}

impl ContextError {
    pub(crate) fn socket(error: tungstenite::Error) -> Self {
        Self::Socket(SocketError::new(error))
    }
}

/// The WebSocket under a connection failed: the client reset the connection, broke the
/// protocol, or the network failed.
///
/// Opaque on purpose: it wraps the WebSocket library's error, whose type is not part of this
/// crate's API (so that the library can change version without breaking consumers). Its message
/// says what happened, and [`source`](std::error::Error::source) leads to the I/O error when
/// there is one.
#[derive(Debug)]
pub struct SocketError(tungstenite::Error);

impl SocketError {
    pub(crate) fn new(error: tungstenite::Error) -> Self {
        Self(error)
    }
}

impl fmt::Display for SocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SocketError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The message is the library's; the chain goes on below it.
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn a_socket_failure_leads_to_the_io_error_underneath() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let error = ContextError::socket(tungstenite::Error::Io(reset));
        let socket = error.source().expect("the socket error");
        assert!(socket.is::<SocketError>());
        let io = socket.source().and_then(|e| e.downcast_ref::<std::io::Error>()).expect("the I/O error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
    }
}
