//! The layer message envelope: a msgpack map with a string `"type"` key, encoded once.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::frame::Utf8Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a value could not become a [`Message`], or a [`Message`] could not be decoded.
#[derive(Debug)]
#[non_exhaustive]
pub enum MessageError {
    /// The value did not serialize, or the bytes did not deserialize, with msgpack.
    Codec(String),
    /// The encoded value is not a map (Django messages are dicts).
    NotAMap,
    /// The map has no string `"type"` key.
    MissingType,
    /// The map uses a key reserved by the layer (`__asgi_channel__`).
    ReservedKey(&'static str),
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Codec(e) => write!(f, "message codec error: {e}"),
            Self::NotAMap => f.write_str("a layer message must encode as a map"),
            Self::MissingType => f.write_str("a layer message needs a string \"type\" key"),
            Self::ReservedKey(k) => write!(f, "the key {k:?} is reserved for the channel layer"),
        }
    }
}

impl std::error::Error for MessageError {}

/// The key the Redis layer uses to route a message to process-local channels; senders must not set it.
pub const RESERVED_CHANNEL_KEY: &str = "__asgi_channel__";

/// How deeply maps and arrays may nest inside a message. Decoding is recursive, so a payload
/// nested thousands deep (from a hostile peer on a shared Redis, say) could exhaust a thread's
/// stack; such a message is refused instead. Real messages nest a few levels.
pub const MAX_NESTING_DEPTH: usize = 128;

/// A channel-layer message.
///
/// A message is a msgpack map with a string `"type"` key, like the dicts Django Channels sends
/// (`{"type": "chat.message", ...}`). It is encoded **once**, when it is built, and then shared
/// by reference: cloning a `Message` copies a pointer, so a `group_send` to a thousand members
/// neither re-encodes nor copies the payload.
///
/// ```
/// use channels_core::layer::Message;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// #[serde(tag = "type", rename = "chat.message")]
/// struct ChatMessage { text: String }
///
/// let msg = Message::new(&ChatMessage { text: "hi".into() }).unwrap();
/// assert_eq!(msg.message_type(), "chat.message");
/// let back: ChatMessage = msg.decode().unwrap();
/// assert_eq!(back.text, "hi");
/// ```
#[derive(Clone)]
pub struct Message {
    inner: Arc<Inner>,
}

struct Inner {
    bytes: Vec<u8>,
    message_type: Arc<str>,
    /// The message as JSON text, rendered on first use and shared by every receiver.
    json: OnceLock<Utf8Bytes>,
    /// The message's history position (`"epoch"` and `"offset"` keys), read on first use and
    /// shared by every receiver.
    position: OnceLock<Option<super::StreamPosition>>,
}

/// The top level of a message: its `"type"`, and whether it sets the reserved key. Read by hand
/// rather than derived, because a derived struct also matches integer keys by field position
/// (msgpack `{0: "x"}` would pass for `{"type": "x"}`), and Django's messages have string keys.
struct Head<'a> {
    message_type: Option<&'a str>,
    reserved: bool,
}

impl<'de> Deserialize<'de> for Head<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Head<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map with string keys")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Head<'de>, A::Error> {
                let mut head = Head { message_type: None, reserved: false };
                while let Some(MsgpackStr(key)) = map.next_key()? {
                    match key {
                        "type" if head.message_type.is_some() => {
                            return Err(serde::de::Error::duplicate_field("type"));
                        }
                        "type" => head.message_type = Some(map.next_value::<MsgpackStr<'de>>()?.0),
                        RESERVED_CHANNEL_KEY => {
                            head.reserved = true;
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(head)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// A msgpack `str`, borrowed. serde's own `&str` also takes a `bin` that happens to be UTF-8;
/// Python decodes that as `bytes`, which is neither a key Django looks up nor a `"type"`.
struct MsgpackStr<'a>(&'a str);

impl<'de> Deserialize<'de> for MsgpackStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = MsgpackStr<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a msgpack string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, value: &'de str) -> Result<MsgpackStr<'de>, E> {
                Ok(MsgpackStr(value))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl Message {
    /// Encodes `value` (structs as maps, strings as str, byte buffers as bin) into a message.
    ///
    /// Fails if the value is not a map with a string `"type"` key, or if it sets the reserved
    /// `__asgi_channel__` key.
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Result<Self, MessageError> {
        let bytes = rmp_serde::to_vec_named(value).map_err(|e| MessageError::Codec(e.to_string()))?;
        Self::from_msgpack(bytes)
    }

    /// Wraps bytes that already hold a msgpack map, checking the same rules as [`Message::new`].
    pub fn from_msgpack(bytes: Vec<u8>) -> Result<Self, MessageError> {
        match bytes.first() {
            Some(0x80..=0x8f | 0xde | 0xdf) => {}
            _ => return Err(MessageError::NotAMap),
        }
        let mut decoder = rmp_serde::Deserializer::from_read_ref(&bytes);
        decoder.set_max_depth(MAX_NESTING_DEPTH);
        let head = Head::deserialize(&mut decoder).map_err(|e| MessageError::Codec(e.to_string()))?;
        if head.reserved {
            return Err(MessageError::ReservedKey(RESERVED_CHANNEL_KEY));
        }
        let message_type = head.message_type.ok_or(MessageError::MissingType)?.into();
        Ok(Self { inner: Arc::new(Inner { bytes, message_type, json: OnceLock::new(), position: OnceLock::new() }) })
    }

    /// This message with `added` key-value pairs (msgpack-encoded, in `entries`) appended to
    /// its map. The caller makes sure none of the keys is in the map already, nor reserved.
    pub(crate) fn with_entries_appended(&self, added: u32, entries: &[u8]) -> Result<Self, MessageError> {
        let bytes = &self.inner.bytes;
        let (count, head) = match bytes.first() {
            Some(&b @ 0x80..=0x8f) => (u32::from(b & 0x0f), 1),
            Some(0xde) if bytes.len() >= 3 => (u32::from(u16::from_be_bytes([bytes[1], bytes[2]])), 3),
            Some(0xdf) if bytes.len() >= 5 => (u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]), 5),
            _ => return Err(MessageError::NotAMap),
        };
        let count = count.checked_add(added).ok_or_else(|| MessageError::Codec("map too large".into()))?;
        let mut out = Vec::with_capacity(bytes.len() + entries.len() + 4);
        rmp::encode::write_map_len(&mut out, count).map_err(|e| MessageError::Codec(e.to_string()))?;
        out.extend_from_slice(&bytes[head..]);
        out.extend_from_slice(entries);
        let inner = Inner {
            bytes: out,
            message_type: self.inner.message_type.clone(),
            json: OnceLock::new(),
            position: OnceLock::new(),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The message's `"type"`, such as `"chat.message"`.
    pub fn message_type(&self) -> &str {
        &self.inner.message_type
    }

    /// The cell holding the message's history position, read once (see `history::position_of`).
    pub(crate) fn position_cell(&self) -> &OnceLock<Option<super::StreamPosition>> {
        &self.inner.position
    }

    /// The encoded msgpack map.
    pub fn as_bytes(&self) -> &[u8] {
        &self.inner.bytes
    }

    /// The message as a JSON object, `"type"` included, keys in their msgpack order (binary
    /// values become arrays of numbers). It is rendered once and shared: every clone of this
    /// message, such as each member's copy of a `group_send`, gets the same bytes.
    ///
    /// ```
    /// use channels_core::layer::Message;
    /// use std::collections::BTreeMap;
    ///
    /// let msg = Message::new(&BTreeMap::from([("type", "chat.message"), ("text", "hi")])).unwrap();
    /// assert_eq!(msg.to_json().unwrap().as_str(), r#"{"text":"hi","type":"chat.message"}"#);
    /// assert_eq!(msg.clone().to_json().unwrap().as_str().as_ptr(), msg.to_json().unwrap().as_str().as_ptr());
    /// ```
    pub fn to_json(&self) -> Result<Utf8Bytes, MessageError> {
        self.json().cloned()
    }

    /// [`to_json`](Self::to_json) borrowed: no reference count touched when the caller only
    /// reads the bytes.
    pub(crate) fn json(&self) -> Result<&Utf8Bytes, MessageError> {
        if let Some(json) = self.inner.json.get() {
            return Ok(json);
        }
        let json =
            Utf8Bytes::from(super::json::to_json(&self.inner.bytes).map_err(|e| MessageError::Codec(e.to_string()))?);
        Ok(self.inner.json.get_or_init(|| json))
    }

    /// Decodes the message into a typed value, typically a consumer's `Event` enum.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, MessageError> {
        rmp_serde::from_slice(&self.inner.bytes).map_err(|e| MessageError::Codec(e.to_string()))
    }

    /// Decodes the message into an untyped msgpack value, for bridges and tools.
    pub fn to_value(&self) -> Result<rmpv::Value, MessageError> {
        self.decode()
    }

    /// True when both handles share one encoded buffer (no copy was made between them).
    pub fn shares_buffer_with(&self, other: &Message) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message").field("type", &self.message_type()).field("len", &self.inner.bytes.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Serialize)]
    struct Job {
        #[serde(rename = "type")]
        kind: &'static str,
        x: u8,
    }

    #[test]
    fn struct_encodes_as_the_same_bytes_as_python_msgpack() {
        let msg = Message::new(&Job { kind: "job", x: 2 }).unwrap();
        // msgpack.packb({"type": "job", "x": 2})
        assert_eq!(msg.as_bytes(), [0x82, 0xa4, b't', b'y', b'p', b'e', 0xa3, b'j', b'o', b'b', 0xa1, b'x', 0x02]);
    }

    #[test]
    fn non_map_values_are_rejected() {
        assert!(matches!(Message::new(&[1, 2]), Err(MessageError::NotAMap)));
        assert!(matches!(Message::new("text"), Err(MessageError::NotAMap)));
    }

    #[test]
    fn a_map_without_type_is_rejected() {
        let mut m = BTreeMap::new();
        m.insert("text", "hi");
        assert!(matches!(Message::new(&m), Err(MessageError::MissingType)));
    }

    #[test]
    fn a_non_string_type_is_rejected() {
        let mut m = BTreeMap::new();
        m.insert("type", 5);
        assert!(matches!(Message::new(&m), Err(MessageError::Codec(_))));
    }

    #[test]
    fn the_reserved_routing_key_is_rejected() {
        let mut m = BTreeMap::new();
        m.insert("type", "x");
        m.insert("__asgi_channel__", "y");
        assert!(matches!(Message::new(&m), Err(MessageError::ReservedKey(_))));
    }

    #[test]
    fn garbage_bytes_are_an_error_not_a_panic() {
        for bytes in [vec![], vec![0x81], vec![0x81, 0xa4, b't'], vec![0xde, 0xff, 0xff], vec![0xc1; 10]] {
            assert!(Message::from_msgpack(bytes).is_err());
        }
    }

    #[test]
    fn integer_keys_do_not_pass_for_type() {
        // {0: "none"}: a derived struct would read key 0 as its first field, "type".
        let bytes = vec![0x81, 0x00, 0xa4, b'n', b'o', b'n', b'e'];
        assert!(matches!(Message::from_msgpack(bytes), Err(MessageError::Codec(_))));
        // {"type": "a", "type": "b"}
        let twice = vec![0x82, 0xa4, b't', b'y', b'p', b'e', 0xa1, b'a', 0xa4, b't', b'y', b'p', b'e', 0xa1, b'b'];
        assert!(matches!(Message::from_msgpack(twice), Err(MessageError::Codec(_))));
    }

    #[test]
    fn bin_keys_and_bin_types_are_not_strings() {
        // {"type": b"x"}: Python sees bytes, not a str type.
        let bin_type = vec![0x81, 0xa4, b't', b'y', b'p', b'e', 0xc4, 0x01, b'x'];
        assert!(matches!(Message::from_msgpack(bin_type), Err(MessageError::Codec(_))));
        // {b"type": "x"}
        let bin_key = vec![0x81, 0xc4, 0x04, b't', b'y', b'p', b'e', 0xa1, b'x'];
        assert!(matches!(Message::from_msgpack(bin_key), Err(MessageError::Codec(_))));
    }

    #[test]
    fn deeply_nested_messages_are_refused() {
        let nested = |depth: usize| {
            // {"type": "deep", "x": [[[...]]]}
            let mut bytes = vec![0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'd', b'e', b'e', b'p', 0xa1, b'x'];
            bytes.extend(std::iter::repeat_n(0x91, depth));
            bytes.push(0xc0);
            bytes
        };
        assert!(Message::from_msgpack(nested(MAX_NESTING_DEPTH - 2)).is_ok());
        assert!(matches!(Message::from_msgpack(nested(100_000)), Err(MessageError::Codec(_))));
        // Whatever nesting is accepted also renders as JSON.
        for depth in MAX_NESTING_DEPTH - 4..MAX_NESTING_DEPTH + 4 {
            if let Ok(message) = Message::from_msgpack(nested(depth)) {
                assert!(message.to_json().is_ok(), "depth {depth}");
            }
        }
    }

    #[test]
    fn clones_share_one_buffer() {
        let a = Message::new(&Job { kind: "job", x: 1 }).unwrap();
        let b = a.clone();
        assert!(a.shares_buffer_with(&b));
    }
}
