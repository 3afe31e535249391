//! The layer message envelope: a msgpack map with a string `"type"` key, encoded once.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::frame::Utf8Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

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
    /// Whether the map has an `"epoch"` or `"offset"` key.
    positioned: bool,
    /// The message as JSON text, rendered on first use and shared by every receiver.
    json: OnceLock<Utf8Bytes>,
    /// The message's history position (`"epoch"` and `"offset"` keys), read on first use and
    /// shared by every receiver.
    position: OnceLock<Option<super::StreamPosition>>,
}

/// What [`Message::from_msgpack`] reads of a message's top level.
struct Head<'a> {
    message_type: Option<&'a str>,
    reserved: bool,
    /// Whether a top-level key is `"epoch"` or `"offset"` (a history position's keys).
    positioned: bool,
}

/// Reads msgpack bytes value by value, checking their structure without building anything.
/// What it accepts and refuses is what decoding with `rmp_serde` does (compared in the tests).
pub(super) struct Reader<'a> {
    rest: &'a [u8],
}

fn codec(what: &str) -> MessageError {
    MessageError::Codec(what.to_owned())
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// The next byte, not taken.
    pub(super) fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        if self.rest.len() < n {
            return Err(codec("truncated msgpack"));
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    pub(super) fn byte(&mut self) -> Result<u8, MessageError> {
        Ok(self.take(1)?[0])
    }

    /// A big-endian number of `width` bytes (at most 8).
    pub(super) fn fixed(&mut self, width: usize) -> Result<u64, MessageError> {
        Ok(self.take(width)?.iter().fold(0, |n, &b| n << 8 | u64::from(b)))
    }

    /// A big-endian length of `width` bytes (1, 2 or 4).
    fn length(&mut self, width: usize) -> Result<usize, MessageError> {
        usize::try_from(self.fixed(width)?).map_err(|_| codec("msgpack length beyond memory"))
    }

    /// The length of the map that starts here.
    pub(super) fn map_len(&mut self) -> Result<usize, MessageError> {
        match self.byte().map_err(|_| MessageError::NotAMap)? {
            m @ 0x80..=0x8f => Ok(usize::from(m & 0x0f)),
            0xde => self.length(2),
            0xdf => self.length(4),
            _ => Err(MessageError::NotAMap),
        }
    }

    /// The next value, which must be a UTF-8 msgpack `str` (not `bin`: Python reads that as
    /// `bytes`).
    fn str(&mut self) -> Result<&'a str, MessageError> {
        std::str::from_utf8(self.str_bytes()?).map_err(|_| codec("a msgpack string that is not UTF-8"))
    }

    /// The bytes of the next value, which must be a msgpack `str`.
    pub(super) fn str_bytes(&mut self) -> Result<&'a [u8], MessageError> {
        let len = match self.byte()? {
            m @ 0xa0..=0xbf => usize::from(m & 0x1f),
            m @ 0xd9..=0xdb => self.length(1 << (m - 0xd9))?,
            _ => return Err(codec("expected a msgpack string")),
        };
        self.take(len)
    }

    /// Steps over the next value, which sits inside `depth` maps and arrays.
    fn skip(&mut self, depth: usize) -> Result<(), MessageError> {
        let marker = self.byte()?;
        let (items, len) = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => return Ok(()),
            0x80..=0x8f => (2 * usize::from(marker & 0x0f), 0),
            0x90..=0x9f => (usize::from(marker & 0x0f), 0),
            0xa0..=0xbf => (0, usize::from(marker & 0x1f)),
            0xc4..=0xc6 => (0, self.length(1 << (marker - 0xc4))?),
            0xc7..=0xc9 => (0, self.length(1 << (marker - 0xc7))?.saturating_add(1)),
            0xca => (0, 4),
            0xcb => (0, 8),
            0xcc..=0xcf => (0, 1 << (marker - 0xcc)),
            0xd0..=0xd3 => (0, 1 << (marker - 0xd0)),
            0xd4..=0xd8 => (0, (1 << (marker - 0xd4)) + 1),
            0xd9..=0xdb => (0, self.length(1 << (marker - 0xd9))?),
            0xdc | 0xdd => (self.length(if marker == 0xdc { 2 } else { 4 })?, 0),
            0xde | 0xdf => (self.length(if marker == 0xde { 2 } else { 4 })?.saturating_mul(2), 0),
            0xc1 => return Err(codec("reserved msgpack marker 0xc1")),
        };
        // Maps, arrays and extension values (a newtype around its bytes, for serde) nest.
        if matches!(marker, 0x80..=0x9f | 0xc7..=0xc9 | 0xd4..=0xd8 | 0xdc..=0xdf) && depth + 1 >= MAX_NESTING_DEPTH {
            return Err(codec("msgpack nested too deeply"));
        }
        self.take(len)?;
        if items > 0 {
            // Every item takes at least a byte: a count beyond what is left is a lie.
            if items > self.rest.len() {
                return Err(codec("truncated msgpack"));
            }
            for _ in 0..items {
                self.skip(depth + 1)?;
            }
        }
        Ok(())
    }

    /// The top level of a message: a map with string keys, its `"type"` a string.
    fn head(&mut self) -> Result<Head<'a>, MessageError> {
        let len = self.map_len()?;
        let mut head = Head { message_type: None, reserved: false, positioned: false };
        for _ in 0..len {
            match self.str()? {
                "type" if head.message_type.is_some() => return Err(codec("a second \"type\" key")),
                "type" => head.message_type = Some(self.str()?),
                key => {
                    head.reserved |= key == RESERVED_CHANNEL_KEY;
                    head.positioned |= key == "epoch" || key == "offset";
                    self.skip(1)?;
                }
            }
        }
        Ok(head)
    }

    /// The string value of the top-level key `key`, if the message has one.
    fn top_level_str(&mut self, key: &str) -> Option<&'a str> {
        for _ in 0..self.map_len().ok()? {
            if self.str_bytes().ok()? == key.as_bytes() {
                return self.str().ok();
            }
            self.skip(1).ok()?;
        }
        None
    }
}

impl Message {
    /// Encodes `value` (structs as maps, strings as str, byte buffers as bin) into a message.
    ///
    /// Fails if the value is not a map with a string `"type"` key, or if it sets the reserved
    /// `__asgi_channel__` key.
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Result<Self, MessageError> {
        // Most messages are small: room for them from the start, rather than growing the
        // buffer a few bytes at a time.
        let mut bytes = Vec::with_capacity(128);
        rmp_serde::encode::write_named(&mut bytes, value).map_err(|e| MessageError::Codec(e.to_string()))?;
        Self::from_msgpack(bytes)
    }

    /// Wraps bytes that already hold a msgpack map, checking the same rules as [`Message::new`].
    pub fn from_msgpack(bytes: Vec<u8>) -> Result<Self, MessageError> {
        let head = Reader::new(&bytes).head()?;
        if head.reserved {
            return Err(MessageError::ReservedKey(RESERVED_CHANNEL_KEY));
        }
        let message_type = head.message_type.ok_or(MessageError::MissingType)?.into();
        let positioned = head.positioned;
        let inner = Inner { bytes, message_type, positioned, json: OnceLock::new(), position: OnceLock::new() };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// This message with `added` key-value pairs appended to its map, encoded by `write` (in
    /// about `room` bytes): a history position's keys. The caller makes sure none of the keys
    /// is in the map already, nor reserved.
    pub(crate) fn with_entries_appended(
        &self,
        added: u32,
        room: usize,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), MessageError>,
    ) -> Result<Self, MessageError> {
        let bytes = &self.inner.bytes;
        let (count, head) = match bytes.first() {
            Some(&b @ 0x80..=0x8f) => (u32::from(b & 0x0f), 1),
            Some(0xde) if bytes.len() >= 3 => (u32::from(u16::from_be_bytes([bytes[1], bytes[2]])), 3),
            Some(0xdf) if bytes.len() >= 5 => (u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]), 5),
            _ => return Err(MessageError::NotAMap),
        };
        let count = count.checked_add(added).ok_or_else(|| MessageError::Codec("map too large".into()))?;
        let mut out = Vec::with_capacity(bytes.len() + room + 4);
        rmp::encode::write_map_len(&mut out, count).map_err(|e| MessageError::Codec(e.to_string()))?;
        out.extend_from_slice(&bytes[head..]);
        write(&mut out)?;
        let inner = Inner {
            bytes: out,
            message_type: self.inner.message_type.clone(),
            positioned: true,
            json: OnceLock::new(),
            position: OnceLock::new(),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The message's `"type"`, such as `"chat.message"`.
    pub fn message_type(&self) -> &str {
        &self.inner.message_type
    }

    /// The string value of the message's top-level key `key`, read from the encoded bytes
    /// without decoding the rest: `None` when there is no such key or its value is not a
    /// string.
    ///
    /// ```
    /// use channels_core::layer::Message;
    /// use std::collections::BTreeMap;
    ///
    /// let msg = Message::new(&BTreeMap::from([("type", "chat.message"), ("id", "m-1")])).unwrap();
    /// assert_eq!(msg.get_str("id"), Some("m-1"));
    /// assert_eq!(msg.get_str("user"), None);
    /// ```
    pub fn get_str(&self, key: &str) -> Option<&str> {
        Reader::new(&self.inner.bytes).top_level_str(key)
    }

    /// Whether the map has an `"epoch"` or `"offset"` key at its top level.
    pub(crate) fn has_position_keys(&self) -> bool {
        self.inner.positioned
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
    use serde::Deserialize;
    use std::collections::BTreeMap;

    /// The reference for [`Reader::head`]: the top level read through `rmp_serde` with a
    /// depth limit, as `Message::from_msgpack` once did. `Err` holds nothing: only whether a
    /// message is refused matters, and for which of the typed reasons.
    fn head_through_serde(bytes: &[u8]) -> Result<(String, bool, bool), Option<MessageError>> {
        struct Head(Option<String>, bool, bool);
        struct Key(String);
        impl<'de> Deserialize<'de> for Key {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Key;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a msgpack string")
                    }
                    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key, E> {
                        Ok(Key(v.to_owned()))
                    }
                }
                d.deserialize_str(V)
            }
        }
        impl<'de> Deserialize<'de> for Head {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Head;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a map")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
                        let mut head = Head(None, false, false);
                        while let Some(Key(key)) = map.next_key()? {
                            match key.as_str() {
                                "type" if head.0.is_some() => return Err(serde::de::Error::duplicate_field("type")),
                                "type" => head.0 = Some(map.next_value::<Key>()?.0),
                                k => {
                                    head.1 |= k == RESERVED_CHANNEL_KEY;
                                    head.2 |= k == "epoch" || k == "offset";
                                    map.next_value::<serde::de::IgnoredAny>()?;
                                }
                            }
                        }
                        Ok(head)
                    }
                }
                d.deserialize_map(V)
            }
        }
        if !matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)) {
            return Err(Some(MessageError::NotAMap));
        }
        let mut decoder = rmp_serde::Deserializer::from_read_ref(bytes);
        decoder.set_max_depth(MAX_NESTING_DEPTH);
        let head = Head::deserialize(&mut decoder).map_err(|_| None)?;
        if head.1 {
            return Err(Some(MessageError::ReservedKey(RESERVED_CHANNEL_KEY)));
        }
        Ok((head.0.ok_or(Some(MessageError::MissingType))?, head.1, head.2))
    }

    /// `from_msgpack` accepts and refuses exactly what the reference does.
    fn same_head_as_serde(bytes: &[u8]) {
        let ours = Message::from_msgpack(bytes.to_vec())
            .map(|m| (m.message_type().to_owned(), false, m.has_position_keys()))
            .map_err(|e| match e {
                MessageError::Codec(_) => None,
                e => Some(e),
            });
        let reference = head_through_serde(bytes);
        let kind = |r: &Result<(String, bool, bool), Option<MessageError>>| match r {
            Ok(head) => format!("{head:?}"),
            Err(e) => format!("{e:?}"),
        };
        assert_eq!(kind(&ours), kind(&reference), "input {bytes:02x?}");
    }

    #[test]
    fn the_top_level_is_read_as_rmp_serde_reads_it() {
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        let values = [
            rmpv::Value::Map(vec![("type".into(), "a".into()), ("epoch".into(), 1.into())]),
            rmpv::Value::Map(vec![("offset".into(), rmpv::Value::Nil), ("type".into(), "b".into())]),
            rmpv::Value::Map(vec![("type".into(), "a".into()), (RESERVED_CHANNEL_KEY.into(), "x".into())]),
            rmpv::Value::Map(vec![
                ("type".into(), "chat.message".into()),
                ("text".into(), "epoch and offset in a text".into()),
                ("n".into(), rmpv::Value::Array(vec![1.into(), (-1).into(), 1.5.into(), u64::MAX.into()])),
                ("m".into(), rmpv::Value::Map(vec![(1.into(), rmpv::Value::Binary(vec![0xff; 300]))])),
                ("e".into(), rmpv::Value::Ext(3, vec![1, 2, 3, 4])),
                ("s".into(), "x".repeat(70_000).into()),
            ]),
        ];
        for value in &values {
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, value).unwrap();
            inputs.push(bytes);
        }
        // Keys and types as str8/str16, a bin "type", a non-UTF-8 str value and key, nil.
        inputs.push(vec![0x81, 0xd9, 4, b't', b'y', b'p', b'e', 0xda, 0, 1, b'x']);
        inputs.push(vec![0x82, 0xa4, b't', b'y', b'p', b'e', 0xa1, b'x', 0xd9, 5, b'e', b'p', b'o', b'c', b'h', 0xc0]);
        inputs.push(vec![0x82, 0xa4, b't', b'y', b'p', b'e', 0xa1, b'x', 0xa1, b'v', 0xa2, 0xff, 0xfe]);
        inputs.push(vec![0x81, 0xa2, 0xff, 0xfe, 0xa1, b'x']);
        inputs.push(vec![0x81, 0xa4, b't', b'y', b'p', b'e', 0xc0]);
        inputs.push(vec![0x80]);
        inputs.push(vec![]);
        // Nesting around the limit, in arrays and in maps, down to a nil, an empty array or
        // an extension value (which counts as a level).
        for depth in MAX_NESTING_DEPTH - 4..MAX_NESTING_DEPTH + 4 {
            for open in [[0x91].as_slice(), &[0x81, 0xa1, b'k']] {
                for leaf in [[0xc0].as_slice(), &[0x90], &[0xd4, 0x01, 0x02]] {
                    let mut bytes = vec![0x82, 0xa4, b't', b'y', b'p', b'e', 0xa1, b'x', 0xa1, b'v'];
                    for _ in 0..depth {
                        bytes.extend_from_slice(open);
                    }
                    bytes.extend_from_slice(leaf);
                    inputs.push(bytes);
                }
            }
        }
        // Every truncation of each, and single-byte changes of the short ones.
        let whole = inputs.clone();
        for bytes in whole.iter().filter(|b| b.len() < 1_000) {
            for cut in 0..bytes.len() {
                inputs.push(bytes[..cut].to_vec());
            }
            for at in 0..bytes.len() {
                for b in [0x00, 0x7f, 0x80, 0x90, 0xa0, 0xc0, 0xc1, 0xc4, 0xc7, 0xd4, 0xd9, 0xdc, 0xde, 0xdf, 0xff] {
                    let mut changed = bytes.clone();
                    changed[at] = b;
                    inputs.push(changed);
                }
            }
        }
        for bytes in &inputs {
            same_head_as_serde(bytes);
        }
    }

    #[test]
    fn get_str_reads_top_level_strings_only() {
        let value = rmpv::Value::Map(vec![
            ("type".into(), "chat.message".into()),
            ("n".into(), 5.into()),
            ("deep".into(), rmpv::Value::Map(vec![("id".into(), "inner".into())])),
            ("user".into(), "ann".into()),
        ]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &value).unwrap();
        let message = Message::from_msgpack(bytes).unwrap();
        assert_eq!(message.get_str("user"), Some("ann"));
        assert_eq!(message.get_str("type"), Some("chat.message"));
        assert_eq!(message.get_str("n"), None);
        assert_eq!(message.get_str("id"), None);
        assert_eq!(message.get_str("deep"), None);
    }

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
