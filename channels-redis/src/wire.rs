//! The bytes channels_redis 4.x puts in Redis: payload framing, the routing key, shard hashing.
//!
//! A queue member is `random(12) || body`, where body is the msgpack map of the message plus
//! `"__asgi_channel__"`: the full channel name (a str) for a direct send to a process-specific
//! channel, the list of member channel names sharing one queue for a group send, and absent for
//! a direct send to a normal channel.

use std::fmt;

use channels_core::layer::{MAX_NESTING_DEPTH, Message, RESERVED_CHANNEL_KEY};
use rand::RngCore;

/// Bytes of random prefix before every payload (`random_prefix_length` in channels_redis).
pub const RANDOM_PREFIX_LENGTH: usize = 12;

/// Where a queued message goes inside the receiving process. The names borrow from the
/// payload they were read from (or are about to be written into).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing<'a> {
    /// No routing key: the message is for whoever receives on the queue (a normal channel).
    None,
    /// A direct send to one process-specific channel.
    One(&'a str),
    /// A group send to these channels, which share one queue.
    Many(Vec<&'a str>),
}

/// A payload that is not what channels_redis writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "undecodable channel layer payload: {}", self.0)
    }
}

impl std::error::Error for WireError {}

/// The shard for `value` among `ring_size` hosts, exactly as channels_redis computes it
/// (CRC-32 of the UTF-8 bytes, low 12 bits, scaled in floating point).
pub fn consistent_hash(value: &str, ring_size: usize) -> usize {
    if ring_size <= 1 {
        return 0;
    }
    let big = f64::from(crc32fast::hash(value.as_bytes()) & 0xfff);
    (big / (4096.0 / ring_size as f64)) as usize
}

fn map_header(body: &[u8]) -> Result<(usize, usize), WireError> {
    let too_short = || WireError("truncated map header".into());
    match body.first() {
        Some(&b @ 0x80..=0x8f) => Ok((usize::from(b & 0x0f), 1)),
        Some(0xde) => {
            let n = body.get(1..3).ok_or_else(too_short)?;
            Ok((usize::from(u16::from_be_bytes([n[0], n[1]])), 3))
        }
        Some(0xdf) => {
            let n = body.get(1..5).ok_or_else(too_short)?;
            Ok((u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize, 5))
        }
        _ => Err(WireError("the body is not a msgpack map".into())),
    }
}

/// The message's map with the routing key appended, as Python appends it (last).
pub fn body_with_routing(message: &Message, routing: &Routing<'_>) -> Vec<u8> {
    let bytes = message.as_bytes();
    let Ok((count, header_len)) = map_header(bytes) else {
        // Message guarantees a map; keep the bytes as they are if that ever fails.
        return bytes.to_vec();
    };
    let mut out = Vec::with_capacity(bytes.len() + 40);
    let extra = usize::from(!matches!(routing, Routing::None));
    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_map_len(&mut out, (count + extra) as u32);
    out.extend_from_slice(&bytes[header_len..]);
    match routing {
        Routing::None => {}
        Routing::One(channel) => {
            let _ = rmp::encode::write_str(&mut out, RESERVED_CHANNEL_KEY);
            let _ = rmp::encode::write_str(&mut out, channel);
        }
        Routing::Many(channels) => {
            let _ = rmp::encode::write_str(&mut out, RESERVED_CHANNEL_KEY);
            let _ = rmp::encode::write_array_len(&mut out, channels.len() as u32);
            for channel in channels {
                let _ = rmp::encode::write_str(&mut out, channel);
            }
        }
    }
    out
}

/// `random(12) || body`.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; RANDOM_PREFIX_LENGTH];
    rand::rng().fill_bytes(&mut out);
    out.extend_from_slice(body);
    out
}

/// Drops the random prefix.
pub fn unframe(member: &[u8]) -> Result<&[u8], WireError> {
    member
        .get(RANDOM_PREFIX_LENGTH..)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| WireError("shorter than its prefix".into()))
}

/// Decodes a body into the message (without the routing key) and its routing.
///
/// The other entries are copied as they are, not decoded and encoded again, and the channel
/// names are read in place: a group send names every member of the receiving process, and
/// this runs for every message that process receives.
pub fn decode_body(body: &[u8]) -> Result<(Message, Routing<'_>), WireError> {
    let (message, routing) = split_body(body)?;
    Ok((message, routing.read()?))
}

/// A routing key's value as it was written, not read yet (see [`split_body`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRouting<'a>(Option<&'a [u8]>);

impl<'a> RawRouting<'a> {
    /// The channels it names: [`Routing::None`] when the body had no routing key.
    pub fn read(&self) -> Result<Routing<'a>, WireError> {
        let Some(value) = self.0 else { return Ok(Routing::None) };
        let (routing, rest) = read_routing(value)?;
        if !rest.is_empty() {
            return Err(WireError("bytes after the routing key's value".into()));
        }
        Ok(routing)
    }
}

/// [`decode_body`], leaving the routing key's value unread: consecutive messages of one group
/// send batch carry the same bytes there (every member of the receiving process), which are
/// compared as bytes and read once for all of them.
pub fn split_body(body: &[u8]) -> Result<(Message, RawRouting<'_>), WireError> {
    let (count, header_len) = map_header(body)?;
    let mut rest = &body[header_len..];
    let mut routing = None;
    // An entry takes at least two bytes: a larger count is a lie, not a reason to allocate.
    let mut kept = Vec::with_capacity(count.min(rest.len() / 2));
    for _ in 0..count {
        let entry = rest;
        let (key, value) = rmp::decode::read_str_from_slice(rest)
            .map_err(|e| WireError(format!("a map key is not a UTF-8 string: {e}")))?;
        let after = skip_value(value, MAX_NESTING_DEPTH)?;
        if key != RESERVED_CHANNEL_KEY {
            kept.push(&entry[..entry.len() - after.len()]);
        } else if routing.replace(&value[..value.len() - after.len()]).is_some() {
            return Err(WireError("the routing key appears twice".into()));
        }
        rest = after;
    }
    if !rest.is_empty() {
        return Err(WireError(format!("{} bytes after the map", rest.len())));
    }
    let bytes = if routing.is_none() {
        body.to_vec()
    } else {
        let mut bytes = Vec::with_capacity(body.len());
        // Writing into a Vec cannot fail.
        let _ = rmp::encode::write_map_len(&mut bytes, kept.len() as u32);
        kept.iter().for_each(|entry| bytes.extend_from_slice(entry));
        bytes
    };
    let message = Message::from_msgpack(bytes).map_err(|e| WireError(e.to_string()))?;
    Ok((message, RawRouting(routing)))
}

/// The routing key's value: one channel name or a list of them.
fn read_routing(value: &[u8]) -> Result<(Routing<'_>, &[u8]), WireError> {
    let not_names = || WireError("routing key is neither a string nor a list of strings".into());
    if let Ok((channel, rest)) = rmp::decode::read_str_from_slice(value) {
        return Ok((Routing::One(channel), rest));
    }
    let mut rest = value;
    let len = rmp::decode::read_array_len(&mut rest).map_err(|_| not_names())?;
    // Each name takes at least one byte: a longer count is a lie, not a reason to allocate.
    if len as usize > rest.len() {
        return Err(not_names());
    }
    let mut channels = Vec::with_capacity(len as usize);
    for _ in 0..len {
        let (channel, after) = rmp::decode::read_str_from_slice(rest).map_err(|_| not_names())?;
        channels.push(channel);
        rest = after;
    }
    Ok((Routing::Many(channels), rest))
}

/// The bytes after the msgpack value at the start of `bytes`, which is checked to be complete
/// and no deeper than `depth` levels of arrays and maps.
fn skip_value(bytes: &[u8], depth: usize) -> Result<&[u8], WireError> {
    use rmp::Marker;
    let truncated = || WireError("a value is cut short".into());
    let mut rest = bytes;
    let marker = rmp::decode::read_marker(&mut rest).map_err(|_| truncated())?;
    let length = |rest: &mut &[u8], size: usize| -> Result<usize, WireError> {
        let (head, tail) = rest.split_at_checked(size).ok_or_else(truncated)?;
        *rest = tail;
        Ok(head.iter().fold(0usize, |n, &b| n << 8 | usize::from(b)))
    };
    let (data, items) = match marker {
        Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => (0, 0),
        Marker::U8 | Marker::I8 => (1, 0),
        Marker::U16 | Marker::I16 => (2, 0),
        Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
        Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
        Marker::FixStr(n) => (usize::from(n), 0),
        Marker::Str8 | Marker::Bin8 => (length(&mut rest, 1)?, 0),
        Marker::Str16 | Marker::Bin16 => (length(&mut rest, 2)?, 0),
        Marker::Str32 | Marker::Bin32 => (length(&mut rest, 4)?, 0),
        Marker::FixExt1 => (2, 0),
        Marker::FixExt2 => (3, 0),
        Marker::FixExt4 => (5, 0),
        Marker::FixExt8 => (9, 0),
        Marker::FixExt16 => (17, 0),
        Marker::Ext8 => (length(&mut rest, 1)? + 1, 0),
        Marker::Ext16 => (length(&mut rest, 2)? + 1, 0),
        Marker::Ext32 => (length(&mut rest, 4)? + 1, 0),
        Marker::FixArray(n) => (0, usize::from(n)),
        Marker::Array16 => (0, length(&mut rest, 2)?),
        Marker::Array32 => (0, length(&mut rest, 4)?),
        Marker::FixMap(n) => (0, 2 * usize::from(n)),
        Marker::Map16 => (0, 2 * length(&mut rest, 2)?),
        Marker::Map32 => (0, 2 * length(&mut rest, 4)?),
        Marker::Reserved => return Err(WireError("a reserved msgpack marker".into())),
    };
    rest = rest.get(data..).ok_or_else(truncated)?;
    if items > 0 {
        if depth == 0 {
            return Err(WireError(format!("nested deeper than {MAX_NESTING_DEPTH} levels")));
        }
        for _ in 0..items {
            rest = skip_value(rest, depth - 1)?;
        }
    }
    Ok(rest)
}

/// The local part of a process's `n`th channel name (after its process's `!`): `n` in base
/// 62 (letters and digits), so one or two characters for the first few thousand channels.
/// Python never parses it, and it is repeated in every group message for each member the
/// message names (channels_redis sends a process one payload listing its members), so it is
/// kept short: with `uuid4().hex`, as channels_redis mints its own, a payload for 500 members
/// is 15 KB longer. A count never names two channels of one process alike, even after one is
/// gone (a message still on its way to the old one cannot reach the new one); the process id
/// keeps processes apart.
pub fn local_id(mut n: u64) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut id = Vec::new();
    loop {
        id.push(DIGITS[(n % 62) as usize]);
        n /= 62;
        if n == 0 {
            break;
        }
    }
    id.reverse();
    String::from_utf8(id).unwrap_or_else(|_| unreachable!("base-62 digits are ASCII"))
}

/// A process's id in its channel names (`specific.<id>!<local>`): 16 random lowercase hex
/// digits (64 bits). channels_redis uses `uuid4().hex` (32); only the process that minted an
/// id parses it, and like [`local_id`] it is repeated for each member a group message names.
pub fn process_id() -> String {
    hex_of_random_bytes::<8>()
}

/// 32 random lowercase hex digits, like Python's `uuid4().hex`.
pub fn random_hex() -> String {
    hex_of_random_bytes::<16>()
}

fn hex_of_random_bytes<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Formats a Unix time in seconds the way Python's `repr(time.time())` does, near enough for
/// Redis scores (full f64 precision).
pub fn now_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[derive(serde::Serialize)]
    struct Chat {
        #[serde(rename = "type")]
        kind: &'static str,
        text: &'static str,
    }

    fn chat() -> Message {
        Message::new(&Chat { kind: "chat.message", text: "hi" }).unwrap()
    }

    #[test]
    fn shard_hash_matches_channels_redis_vectors() {
        assert_eq!(consistent_hash("key_one", 2), 1);
        assert_eq!(consistent_hash("key_two", 2), 0);
        assert_eq!(consistent_hash("key_one", 10), 6);
        assert_eq!(consistent_hash("key_two", 10), 4);
        assert_eq!(crc32fast::hash(b"room1"), 3_832_756_778);
        assert_eq!(consistent_hash("room1", 2), 1);
        assert_eq!(consistent_hash("room1", 3), 1);
        assert_eq!(consistent_hash("room1", 4), 2);
        assert_eq!(consistent_hash("anything", 1), 0);
    }

    #[test]
    fn the_float_formula_differs_from_integer_division_where_python_does() {
        // bigval 2048 with 186 hosts: 2048 / (4096 / 186) = 92.99999999999999 in f64.
        let big = 2048.0_f64;
        assert_eq!((big / (4096.0 / 186.0)) as usize, 92);
        assert_eq!(2048 * 186 / 4096, 93);
    }

    #[test]
    fn group_send_body_is_byte_exact() {
        let body = body_with_routing(&chat(), &Routing::Many(vec!["specific.abc!def"]));
        assert_eq!(
            hex(&body),
            "83a474797065ac636861742e6d657373616765a474657874a26869b05f5f617367695f6368616e6e656c5f5f91b073706563696669632e61626321646566"
        );
    }

    #[test]
    fn direct_send_body_carries_a_string() {
        let body = body_with_routing(&chat(), &Routing::One("specific.abc!def"));
        assert_eq!(
            hex(&body),
            "83a474797065ac636861742e6d657373616765a474657874a26869b05f5f617367695f6368616e6e656c5f5fb073706563696669632e61626321646566"
        );
    }

    #[test]
    fn local_ids_count_in_base_62() {
        let ids: Vec<String> = [0, 9, 10, 61, 62, 3843, 3844, u64::MAX].into_iter().map(super::local_id).collect();
        assert_eq!(ids, ["0", "9", "A", "z", "10", "zz", "100", "LygHa16AHYF"]);
        let unique: std::collections::HashSet<String> = (0..100_000).map(super::local_id).collect();
        assert_eq!(unique.len(), 100_000);
    }

    #[test]
    fn a_normal_channel_send_carries_no_routing_key() {
        let msg = Message::new(&BTreeMap::from([("type", "job")])).unwrap();
        assert_eq!(body_with_routing(&msg, &Routing::None), msg.as_bytes());
    }

    #[test]
    fn python_values_decode() {
        // {"type":"t","b":b"\x00\x01","f":1.5,"n":-1,"big":2**40,"none":None,"t2":True,"l":(1,2)}
        let body = [
            "88",
            "a474797065",
            "a174",
            "a162c4020001",
            "a166cb3ff8000000000000",
            "a16eff",
            "a3626967cf0000010000000000",
            "a46e6f6e65c0",
            "a27432c3",
            "a16c920102",
        ]
        .concat();
        let bytes: Vec<u8> =
            (0..body.len()).step_by(2).map(|i| u8::from_str_radix(&body[i..i + 2], 16).unwrap()).collect();
        let (message, routing) = decode_body(&bytes).unwrap();
        assert_eq!(routing, Routing::None);
        assert_eq!(message.message_type(), "t");
        let value = message.to_value().unwrap();
        let get = |k: &str| value.as_map().unwrap().iter().find(|(key, _)| key.as_str() == Some(k)).unwrap().1.clone();
        assert_eq!(get("b"), rmpv::Value::Binary(vec![0, 1]));
        assert_eq!(get("f").as_f64(), Some(1.5));
        assert_eq!(get("big").as_u64(), Some(1 << 40));
    }

    #[test]
    fn routing_round_trips_and_is_removed() {
        for routing in [Routing::One("a!b"), Routing::Many(vec!["a!b", "a!c"]), Routing::None] {
            let framed = frame(&body_with_routing(&chat(), &routing));
            let (message, decoded) = decode_body(unframe(&framed).unwrap()).unwrap();
            assert_eq!(decoded, routing);
            assert_eq!(message.as_bytes(), chat().as_bytes(), "the routing key is gone");
        }
    }

    #[test]
    fn split_bodies_compare_their_routing_as_bytes_and_read_it_like_decode() {
        let body = |routing: &Routing<'_>, text: &'static str| {
            body_with_routing(&Message::new(&Chat { kind: "chat.message", text }).unwrap(), routing)
        };
        let ab = Routing::Many(vec!["a!b", "a!c"]);
        let (one, two, other) = (body(&ab, "1"), body(&ab, "2"), body(&Routing::Many(vec!["a!b"]), "1"));
        let (first, second, third) =
            (split_body(&one).unwrap(), split_body(&two).unwrap(), split_body(&other).unwrap());
        assert_eq!(first.1, second.1, "same members, same bytes");
        assert_ne!(first.1, third.1);
        assert_ne!(first.0.as_bytes(), second.0.as_bytes());
        assert_eq!(first.1.read().unwrap(), ab);
        assert_eq!(split_body(&body(&Routing::None, "1")).unwrap().1.read().unwrap(), Routing::None);
        // A list that is not of names splits (it is a whole msgpack value) but does not read.
        let numbers: Vec<u8> =
            [vec![0x82, 0xa4], b"type".to_vec(), vec![0xa1, b't', 0xb0], b"__asgi_channel__".to_vec()]
                .concat()
                .into_iter()
                .chain([0x92, 0x01, 0x02])
                .collect();
        let (_, raw) = split_body(&numbers).unwrap();
        assert!(raw.read().is_err());
        assert!(decode_body(&numbers).is_err());
    }

    #[test]
    fn the_routing_key_may_sit_anywhere_and_the_rest_is_kept_byte_for_byte() {
        // {"type": "t", "__asgi_channel__": ["a!b"], "x": {"n": [1, -1, 1.5, ext8(7, "zz")]}}
        let x = [0x81, 0xa1, b'n', 0x94, 0x01, 0xff, 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0xc7, 2, 7, b'z', b'z'];
        let body: Vec<u8> = [vec![0x83, 0xa4], b"type".to_vec(), vec![0xa1, b't', 0xb0], b"__asgi_channel__".to_vec()]
            .concat()
            .into_iter()
            .chain([0x91, 0xa3, b'a', b'!', b'b', 0xa1, b'x'])
            .chain(x)
            .collect();
        let (message, routing) = decode_body(&body).unwrap();
        assert_eq!(routing, Routing::Many(vec!["a!b"]));
        let expected: Vec<u8> =
            [vec![0x82, 0xa4], b"type".to_vec(), vec![0xa1, b't', 0xa1, b'x']].concat().into_iter().chain(x).collect();
        assert_eq!(message.as_bytes(), expected);
    }

    #[test]
    fn poison_payloads_are_errors_not_panics() {
        let bad: Vec<Vec<u8>> = vec![
            vec![],
            vec![0; 12],
            [vec![0; 12], vec![0x92, 0x01, 0x02]].concat(),
            [vec![0; 12], vec![0x81, 0x01, 0xa1, b'x']].concat(),
            [vec![0; 12], vec![0x81, 0xa4, b't', b'y', b'p', b'e']].concat(),
            [vec![0; 12], vec![0xdf, 0xff, 0xff, 0xff, 0xff]].concat(),
            [vec![0; 12], vec![0x81, 0xb0], b"__asgi_channel__".to_vec(), vec![0x05]].concat(),
            [vec![0; 12], vec![0x80, 0x80]].concat(),
            // A routing list claiming 4 billion names; the routing key twice; a value cut short;
            // a key that is not UTF-8; an extension type cut short.
            [vec![0; 12], vec![0x81, 0xb0], b"__asgi_channel__".to_vec(), vec![0xdd, 0xff, 0xff, 0xff, 0xff]].concat(),
            [vec![0; 12], vec![0x83, 0xa4], b"type".to_vec(), vec![0xa1, b't', 0xb0], b"__asgi_channel__".to_vec()]
                .concat()
                .into_iter()
                .chain([0xa3, b'a', b'!', b'b', 0xb0])
                .chain(b"__asgi_channel__".iter().copied())
                .chain([0xa3, b'a', b'!', b'c'])
                .collect(),
            [vec![0; 12], vec![0x82, 0xa4], b"type".to_vec(), vec![0xa1, b't', 0xa1, b'x', 0xdb, 0, 0, 0, 9, b'y']]
                .concat(),
            [vec![0; 12], vec![0x81, 0xa2, 0xff, 0xfe, 0xc0]].concat(),
            [vec![0; 12], vec![0x82, 0xa4], b"type".to_vec(), vec![0xa1, b't', 0xa1, b'x', 0xd8, 0x01, 0x02]].concat(),
            // {"type": "deep", "x": [[[... 100,000 deep]]]}: refused, without exhausting the stack.
            [vec![0; 12], vec![0x82, 0xa4], b"type".to_vec(), vec![0xa4], b"deep".to_vec(), vec![0xa1, b'x']]
                .concat()
                .into_iter()
                .chain(std::iter::repeat_n(0x91, 100_000))
                .chain([0xc0])
                .collect(),
        ];
        for member in bad {
            let result = unframe(&member).and_then(decode_body);
            assert!(result.is_err(), "{member:?}");
        }
    }
}
