//! The WebSocket under a connection: an upgraded TCP connection, or an in-memory pipe in tests.

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A WebSocket over any byte stream, with access to the bytes underneath for lingering closes.
pub(crate) trait Transport:
    Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Send + Unpin
{
    fn io(&mut self) -> &mut dyn Io;
}

impl<S: Io> Transport for WebSocketStream<S> {
    fn io(&mut self) -> &mut dyn Io {
        self.get_mut()
    }
}

pub(crate) type WsStream = Box<dyn Transport>;
