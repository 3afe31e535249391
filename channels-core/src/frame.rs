//! What travels on a WebSocket: the client's data frames, the text they carry, and close codes.
//!
//! The types here are this crate's own, not tungstenite's: consumers match on them, and they
//! stay the same when the WebSocket implementation underneath changes version.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A data frame from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame (valid UTF-8, checked by the server).
    Text(Utf8Bytes),
    /// A binary frame.
    Binary(Bytes),
}

impl Frame {
    /// The text of a text frame.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Frame::Text(t) => Some(t.as_str()),
            Frame::Binary(_) => None,
        }
    }
}

/// Text known to be UTF-8, in a shared buffer: the payload of a text frame.
///
/// Cloning it shares the buffer instead of copying the text, so one rendering of a message can
/// go to many connections. It reads as a `str` (`Deref`, `AsRef<str>`, `Display`) and compares
/// with strings.
///
/// It wraps the WebSocket library's own type (as axum does) rather than exposing it, so that
/// this crate can move to another version of that library without changing the types consumers
/// use.
///
/// ```
/// use channels_core::frame::Utf8Bytes;
///
/// let text = Utf8Bytes::from("hello");
/// assert_eq!(text, "hello");
/// assert_eq!(text.len(), 5);
/// assert_eq!(text.clone().as_str().as_ptr(), text.as_str().as_ptr());
/// ```
#[derive(Debug, Default, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Utf8Bytes(tungstenite::Utf8Bytes);

impl Utf8Bytes {
    /// Text from a static string, without a copy.
    pub const fn from_static(text: &'static str) -> Self {
        Self(tungstenite::Utf8Bytes::from_static(text))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub(crate) fn from_tungstenite(text: tungstenite::Utf8Bytes) -> Self {
        Self(text)
    }

    pub(crate) fn into_tungstenite(self) -> tungstenite::Utf8Bytes {
        self.0
    }
}

impl Deref for Utf8Bytes {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Utf8Bytes {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Utf8Bytes {
    fn as_ref(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Utf8Bytes {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl From<String> for Utf8Bytes {
    fn from(text: String) -> Self {
        Self(text.into())
    }
}

impl From<&str> for Utf8Bytes {
    fn from(text: &str) -> Self {
        Self(text.into())
    }
}

impl From<&String> for Utf8Bytes {
    fn from(text: &String) -> Self {
        Self(text.into())
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = std::str::Utf8Error;

    /// Takes the bytes if they are UTF-8, without a copy.
    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        tungstenite::Utf8Bytes::try_from(bytes).map(Self)
    }
}

impl TryFrom<Vec<u8>> for Utf8Bytes {
    type Error = std::str::Utf8Error;

    /// Takes the bytes if they are UTF-8, without a copy.
    fn try_from(bytes: Vec<u8>) -> Result<Self, Self::Error> {
        tungstenite::Utf8Bytes::try_from(bytes).map(Self)
    }
}

impl From<Utf8Bytes> for Bytes {
    fn from(text: Utf8Bytes) -> Self {
        text.0.into()
    }
}

/// WebSocket close codes the server and consumers use.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down (or the client navigated away).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The peer sent a kind of data this endpoint does not take (binary to a JSON consumer).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// The close frame carried no code.
    pub const NO_STATUS: u16 = 1005;
    /// The connection ended without a close frame.
    pub const ABNORMAL: u16 = 1006;
    /// The data was not consistent with its type (text that is not UTF-8, JSON that is not valid).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The message was larger than the server takes.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// A handler failed on the server.
    pub const INTERNAL_ERROR: u16 = 1011;
}

fn close_code_from(code: u16) -> CloseCode {
    CloseCode::from(code)
}

/// A close frame; the reason is cut to the 123 bytes a control frame allows, on a char boundary.
pub(crate) fn close_message(code: u16, reason: &str) -> WsMessage {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    WsMessage::Close(Some(CloseFrame { code: close_code_from(code), reason: reason[..end].into() }))
}
