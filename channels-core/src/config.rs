//! Limits and timeouts, with defaults that protect a server from slow and hostile clients.

use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Per-connection WebSocket limits. Set them for the whole application
/// ([`crate::ApplicationBuilder::websocket_limits`]) or for one route
/// ([`crate::routing::WebsocketRoute::limits`]).
///
/// ```
/// use channels_core::WebsocketLimits;
/// let limits = WebsocketLimits::default().max_message_size(16 << 20);
/// assert_eq!(limits.read_buffer_size, 64);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebsocketLimits {
    /// Largest message (and frame) a client may send; larger ones close the socket with 1009.
    /// Default 1 MiB.
    pub max_message_size: usize,
    /// The frame parser's buffer, which every connection holds for its whole life. Default
    /// 64 bytes (at least 64). It does not limit the size of a system call: the socket is
    /// read 8 KiB at a time through a buffer on the stack, and bytes the parser has not taken
    /// yet wait in an allocation that is freed when drained. A message larger than this
    /// buffer grows it to the message's size, and the parser may keep that allocation for the
    /// rest of the connection, so keep
    /// `max_message_size` tight. (tungstenite's own default, 128 KiB, makes an idle socket
    /// cost ~133 KiB.)
    pub read_buffer_size: usize,
    /// How long one outgoing frame may wait for a client that does not read before the server
    /// gives up on that client (it is dropped, and `disconnect` gets 1006). Default 10 s.
    pub send_timeout: Duration,
    /// The server pings a connection that has been silent this long. Default 20 s.
    pub ping_interval: Duration,
    /// A connection silent for `ping_interval + ping_timeout` is dropped. Default 20 s.
    pub ping_timeout: Duration,
    /// How long the server waits for the client's reply to its close frame. Default 5 s.
    pub close_timeout: Duration,
    /// How long the handshake may take (the connection's channel, its consumer's groups, and
    /// `connect`) before it is refused with 503. Default 10 s.
    pub connect_timeout: Duration,
}

impl Default for WebsocketLimits {
    fn default() -> Self {
        Self {
            max_message_size: 1 << 20,
            read_buffer_size: 64,
            send_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {$(
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = value;
            self
        }
    )*};
}

impl WebsocketLimits {
    setters! {
        /// Sets [`max_message_size`](Self::max_message_size).
        max_message_size: usize,
        /// Sets [`read_buffer_size`](Self::read_buffer_size).
        read_buffer_size: usize,
        /// Sets [`send_timeout`](Self::send_timeout).
        send_timeout: Duration,
        /// Sets [`ping_interval`](Self::ping_interval).
        ping_interval: Duration,
        /// Sets [`ping_timeout`](Self::ping_timeout).
        ping_timeout: Duration,
        /// Sets [`close_timeout`](Self::close_timeout).
        close_timeout: Duration,
        /// Sets [`connect_timeout`](Self::connect_timeout).
        connect_timeout: Duration,
    }

    pub(crate) fn tungstenite_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size.max(64))
            // Every frame goes straight to `LeanIo`, which gathers a burst and frees its buffer
            // after the flush; tungstenite's own buffer then only ever holds one frame.
            // `LeanIo` also writes frames of its own after tungstenite's, which keeps their order
            // only because of this (pinned by a test in `io`).
            .write_buffer_size(0)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }
}

pub(crate) use setters;
