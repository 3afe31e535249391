//! A message's msgpack bytes rendered as JSON in one pass, without building a value tree.
//!
//! The bytes are walked once and handed to `serde_json`'s serializer value by value, with the
//! same serializer calls `rmpv::Value`'s `Serialize` makes: so the text (escapes, floats,
//! integer map keys, binary as arrays of numbers) is what rendering through `rmpv::Value`
//! gives, without a tree of owned strings and vectors per message.

use std::cell::Cell;

use serde::Serialize;
use serde::ser::{Error as _, SerializeMap, SerializeSeq};

use super::message::{MAX_NESTING_DEPTH, Reader};

/// `msgpack` (one value) as JSON text.
pub(crate) fn to_json(msgpack: &[u8]) -> Result<String, serde_json::Error> {
    if let Some(json) = flat_map(msgpack) {
        return Ok(json);
    }
    let input = Cell::new(msgpack);
    // JSON text of a chat event is a little longer than its msgpack.
    let mut out = Vec::with_capacity(msgpack.len() + msgpack.len() / 4 + 16);
    serde_json::to_writer(&mut out, &Item { input: &input, depth: 0 })?;
    String::from_utf8(out).map_err(serde_json::Error::custom)
}

/// A map with string keys and scalar values (strings, numbers, booleans, nil), which most
/// messages are, as JSON written directly; `None` for anything else (nested values, binary,
/// keys that are not strings, strings that are not UTF-8, broken input), which takes the
/// general path. The text is the same either way (checked in the tests).
fn flat_map(msgpack: &[u8]) -> Option<String> {
    let mut input = Reader::new(msgpack);
    let len = input.map_len().ok()?;
    let mut out = Vec::with_capacity(msgpack.len() + msgpack.len() / 4 + 16);
    out.push(b'{');
    for i in 0..len {
        if i > 0 {
            out.push(b',');
        }
        push_str(&mut out, input.str_bytes().ok()?)?;
        out.push(b':');
        scalar(&mut out, &mut input)?;
    }
    out.push(b'}');
    // Every string was checked as it was copied: this cannot fail.
    String::from_utf8(out).ok()
}

/// The scalar value at the start of `input` as JSON, as `serde_json` writes it.
fn scalar(out: &mut Vec<u8>, input: &mut Reader<'_>) -> Option<()> {
    use serde_json::ser::{CompactFormatter, Formatter};
    if let Some(0xa0..=0xbf | 0xd9..=0xdb) = input.peek() {
        return push_str(out, input.str_bytes().ok()?);
    }
    let marker = input.byte().ok()?;
    let mut fixed = |width: usize| input.fixed(width).ok();
    let written = match marker {
        0xc0 => CompactFormatter.write_null(out),
        0xc2 => CompactFormatter.write_bool(out, false),
        0xc3 => CompactFormatter.write_bool(out, true),
        0x00..=0x7f => CompactFormatter.write_u64(out, u64::from(marker)),
        0xe0..=0xff => CompactFormatter.write_i64(out, i64::from(marker as i8)),
        0xcc..=0xcf => CompactFormatter.write_u64(out, fixed(1 << (marker - 0xcc))?),
        0xd0..=0xd3 => {
            let bits = 8 << (marker - 0xd0);
            // Sign-extended from its width.
            let n = (fixed(bits / 8)? << (64 - bits)) as i64 >> (64 - bits);
            CompactFormatter.write_i64(out, n)
        }
        0xca => match f32::from_bits(fixed(4)? as u32) {
            f if f.is_finite() => CompactFormatter.write_f32(out, f),
            _ => CompactFormatter.write_null(out),
        },
        0xcb => match f64::from_bits(fixed(8)?) {
            f if f.is_finite() => CompactFormatter.write_f64(out, f),
            _ => CompactFormatter.write_null(out),
        },
        _ => return None,
    };
    written.ok()
}

/// `bytes` as a JSON string, escaped as `serde_json` escapes; `None` when they are not UTF-8.
fn push_str(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    out.push(b'"');
    if bytes.iter().all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\') {
        // Printable ASCII, the common case: as it is.
        out.extend_from_slice(bytes);
    } else {
        std::str::from_utf8(bytes).ok()?;
        for &b in bytes {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                0x00..=0x1f => out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0x0f)],
                ]),
                // The rest, UTF-8 sequences included, as it is.
                _ => out.push(b),
            }
        }
    }
    out.push(b'"');
    Some(())
}

/// The next value of `input`, serialized as it is read (which advances `input` past it).
struct Item<'a, 'i> {
    input: &'i Cell<&'a [u8]>,
    depth: usize,
}

impl<'a> Item<'a, '_> {
    fn take<E: serde::ser::Error>(&self, n: usize) -> Result<&'a [u8], E> {
        let rest = self.input.get();
        if rest.len() < n {
            return Err(E::custom("truncated msgpack"));
        }
        let (taken, rest) = rest.split_at(n);
        self.input.set(rest);
        Ok(taken)
    }

    fn array<E: serde::ser::Error, const N: usize>(&self) -> Result<[u8; N], E> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn length<E: serde::ser::Error>(&self, width: usize) -> Result<usize, E> {
        Ok(match width {
            1 => usize::from(self.array::<E, 1>()?[0]),
            2 => usize::from(u16::from_be_bytes(self.array()?)),
            _ => u32::from_be_bytes(self.array()?) as usize,
        })
    }

    fn nested(&self) -> Item<'a, '_> {
        Item { input: self.input, depth: self.depth + 1 }
    }

    fn str<S: serde::Serializer>(&self, s: S, len: usize) -> Result<S::Ok, S::Error> {
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_bytes(bytes),
        }
    }

    fn seq<S: serde::Serializer>(&self, s: S, len: usize) -> Result<S::Ok, S::Error> {
        // Every element takes at least a byte: a length beyond what is left is a lie.
        if len > self.input.get().len() {
            return Err(S::Error::custom("truncated msgpack"));
        }
        let mut seq = s.serialize_seq(Some(len))?;
        for _ in 0..len {
            seq.serialize_element(&self.nested())?;
        }
        seq.end()
    }

    fn map<S: serde::Serializer>(&self, s: S, len: usize) -> Result<S::Ok, S::Error> {
        if len > self.input.get().len() / 2 {
            return Err(S::Error::custom("truncated msgpack"));
        }
        let mut map = s.serialize_map(Some(len))?;
        for _ in 0..len {
            map.serialize_entry(&self.nested(), &self.nested())?;
        }
        map.end()
    }

    /// An extension value, as rmpv writes it: a newtype struct around `(type, bytes)`.
    fn ext<S: serde::Serializer>(&self, s: S, len: usize) -> Result<S::Ok, S::Error> {
        let kind = i8::from_be_bytes(self.array()?);
        let data = self.take(len)?;
        s.serialize_newtype_struct("_ExtStruct", &(kind, Bytes(data)))
    }
}

/// rmpv serializes binary (and strings that are not UTF-8) with `serialize_bytes`.
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl Serialize for Item<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.depth > MAX_NESTING_DEPTH {
            return Err(S::Error::custom("msgpack nested too deeply"));
        }
        let marker = self.array::<S::Error, 1>()?[0];
        match marker {
            0x00..=0x7f => s.serialize_u64(u64::from(marker)),
            0xe0..=0xff => s.serialize_i64(i64::from(marker as i8)),
            0x80..=0x8f => self.map(s, usize::from(marker & 0x0f)),
            0x90..=0x9f => self.seq(s, usize::from(marker & 0x0f)),
            0xa0..=0xbf => self.str(s, usize::from(marker & 0x1f)),
            0xc0 => s.serialize_unit(),
            0xc2 => s.serialize_bool(false),
            0xc3 => s.serialize_bool(true),
            0xc4..=0xc6 => {
                let len = self.length(1 << (marker - 0xc4))?;
                s.serialize_bytes(self.take(len)?)
            }
            0xc7..=0xc9 => {
                let len = self.length(1 << (marker - 0xc7))?;
                self.ext(s, len)
            }
            0xca => s.serialize_f32(f32::from_be_bytes(self.array()?)),
            0xcb => s.serialize_f64(f64::from_be_bytes(self.array()?)),
            0xcc => s.serialize_u64(u64::from(self.array::<S::Error, 1>()?[0])),
            0xcd => s.serialize_u64(u64::from(u16::from_be_bytes(self.array()?))),
            0xce => s.serialize_u64(u64::from(u32::from_be_bytes(self.array()?))),
            0xcf => s.serialize_u64(u64::from_be_bytes(self.array()?)),
            0xd0 => signed(s, i64::from(i8::from_be_bytes(self.array()?))),
            0xd1 => signed(s, i64::from(i16::from_be_bytes(self.array()?))),
            0xd2 => signed(s, i64::from(i32::from_be_bytes(self.array()?))),
            0xd3 => signed(s, i64::from_be_bytes(self.array()?)),
            0xd4..=0xd8 => self.ext(s, 1 << (marker - 0xd4)),
            0xd9..=0xdb => {
                let len = self.length(1 << (marker - 0xd9))?;
                self.str(s, len)
            }
            0xdc | 0xdd => {
                let len = self.length(if marker == 0xdc { 2 } else { 4 })?;
                self.seq(s, len)
            }
            0xde | 0xdf => {
                let len = self.length(if marker == 0xde { 2 } else { 4 })?;
                self.map(s, len)
            }
            0xc1 => Err(S::Error::custom("reserved msgpack marker 0xc1")),
        }
    }
}

/// A signed msgpack integer: rmpv keeps the non-negative ones as unsigned.
fn signed<S: serde::Serializer>(s: S, n: i64) -> Result<S::Ok, S::Error> {
    match u64::try_from(n) {
        Ok(n) => s.serialize_u64(n),
        Err(_) => s.serialize_i64(n),
    }
}

#[cfg(test)]
mod tests {
    use rmpv::Value;

    /// What rendering through `rmpv::Value` gives (the reference), or `None` for an error.
    fn through_value(bytes: &[u8]) -> Option<String> {
        let value: Value = rmp_serde::from_slice(bytes).ok()?;
        serde_json::to_string(&value).ok()
    }

    fn encode(value: &Value) -> Vec<u8> {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, value).expect("encodes");
        bytes
    }

    /// A fixed-seed pseudo-random sequence (xorshift64): the same inputs on every run.
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    fn same_as_value(bytes: &[u8]) {
        assert_eq!(super::to_json(bytes).ok(), through_value(bytes), "input {bytes:02x?}");
    }

    #[test]
    fn every_kind_of_value_renders_as_through_rmpv() {
        let values = [
            Value::Nil,
            Value::from(true),
            Value::from(false),
            Value::from(0),
            Value::from(127),
            Value::from(128),
            Value::from(u64::MAX),
            Value::from(-1),
            Value::from(-33),
            Value::from(i64::MIN),
            Value::F32(1.1),
            Value::F32(f32::NAN),
            Value::F64(1_764_170_000.123_456),
            Value::F64(f64::INFINITY),
            Value::from("plain"),
            Value::from("quote \" backslash \\ newline \n nul \0 é 🎉 </script>"),
            Value::from("x".repeat(70_000)),
            Value::Binary(vec![0, 1, 255]),
            Value::Binary(vec![7; 300]),
            Value::Ext(5, vec![1]),
            Value::Ext(-3, vec![1, 2, 3]),
            Value::Ext(1, vec![9; 16]),
            Value::Ext(1, vec![9; 17]),
            Value::Array(vec![]),
            Value::Array((0..20).map(Value::from).collect()),
            Value::Map(vec![]),
            Value::Map(vec![(Value::from("type"), Value::from("chat.message")), (Value::from("n"), Value::Nil)]),
            Value::Map(vec![(Value::from(1), Value::from("integer key"))]),
            Value::Map(vec![(Value::from(-1), Value::from("negative key"))]),
            Value::Map(vec![(Value::from(true), Value::from("bool key"))]),
            Value::Map(vec![(Value::F64(0.5), Value::from("float key"))]),
            Value::Map(vec![(Value::Nil, Value::from("nil key"))]),
            Value::Map(vec![(Value::Binary(vec![1]), Value::from("bin key"))]),
            Value::Map(vec![(Value::Array(vec![]), Value::from("array key"))]),
            Value::Map((0..20).map(|i| (Value::from(format!("k{i}")), Value::from(i))).collect()),
        ];
        for value in &values {
            same_as_value(&encode(value));
        }
    }

    #[test]
    fn strings_that_are_not_utf8_render_as_bytes() {
        // fixstr of two bytes that are not UTF-8, inside a map.
        same_as_value(&[0x81, 0xa1, b'a', 0xa2, 0xff, 0xfe]);
        assert_eq!(super::to_json(&[0xa2, 0xff, 0xfe]).unwrap(), "[255,254]");
    }

    #[test]
    fn every_width_of_every_marker_renders_as_through_rmpv() {
        // Integers and lengths written wider than needed, as other encoders may.
        let inputs: &[&[u8]] = &[
            &[0xcc, 0x05],
            &[0xcd, 0x00, 0x05],
            &[0xce, 0, 0, 0, 5],
            &[0xcf, 0, 0, 0, 0, 0, 0, 0, 5],
            &[0xd0, 0x05],
            &[0xd0, 0xfb],
            &[0xd1, 0xff, 0xfb],
            &[0xd2, 0xff, 0xff, 0xff, 0xfb],
            &[0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb],
            &[0xd9, 0x01, b'a'],
            &[0xda, 0x00, 0x01, b'a'],
            &[0xdb, 0, 0, 0, 1, b'a'],
            &[0xc4, 0x01, 0x07],
            &[0xc5, 0x00, 0x01, 0x07],
            &[0xc6, 0, 0, 0, 1, 0x07],
            &[0xc7, 0x01, 0x02, 0x07],
            &[0xc8, 0x00, 0x01, 0x02, 0x07],
            &[0xc9, 0, 0, 0, 1, 0x02, 0x07],
            &[0xdc, 0x00, 0x01, 0xc0],
            &[0xdd, 0, 0, 0, 1, 0xc0],
            &[0xde, 0x00, 0x01, 0xa1, b'k', 0xc0],
            &[0xdf, 0, 0, 0, 1, 0xa1, b'k', 0xc0],
        ];
        for input in inputs {
            same_as_value(input);
        }
    }

    #[test]
    fn flat_maps_render_as_through_rmpv() {
        // Every character that JSON escapes, in keys and values; every scalar kind.
        let all_ascii: String = (0u8..0x80).map(char::from).collect();
        let value = Value::Map(vec![
            (Value::from("type"), Value::from("chat.message")),
            (Value::from(all_ascii.as_str()), Value::from(all_ascii.as_str())),
            (Value::from("é 🎉 \u{2028}"), Value::from("</script> \u{7f}")),
            (Value::from("n"), Value::Nil),
            (Value::from("t"), Value::from(true)),
            (Value::from("f"), Value::from(false)),
            (Value::from("u"), Value::from(u64::MAX)),
            (Value::from("i"), Value::from(i64::MIN)),
            (Value::from("x"), Value::F32(-1.5e-7)),
            (Value::from("nan"), Value::F32(f32::NAN)),
            (Value::from("y"), Value::F64(1_764_170_000.123_456)),
            (Value::from("inf"), Value::F64(f64::NEG_INFINITY)),
            (Value::from(""), Value::from("")),
        ]);
        let bytes = encode(&value);
        assert!(super::flat_map(&bytes).is_some());
        same_as_value(&bytes);
        // Integers in every width, signed ones negative and not.
        for n in [0i64, 1, 127, 128, 255, 256, 65_535, 65_536, -1, -32, -33, -128, -129, -32_768, -32_769, i64::MIN] {
            for marker in [0xd0u8, 0xd1, 0xd2, 0xd3] {
                let width = 1usize << (marker - 0xd0);
                let mut bytes = vec![0x81, 0xa1, b'k', marker];
                bytes.extend_from_slice(&n.to_be_bytes()[8 - width..]);
                same_as_value(&bytes);
            }
        }
        // Random flat maps of random text.
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2_000 {
            let text = |next: &mut dyn FnMut() -> u64| {
                (0..next() % 12).map(|_| char::from_u32((next() % 0x130) as u32).unwrap_or('?')).collect::<String>()
            };
            let entries = (0..next() % 8)
                .map(|_| {
                    let value = match next() % 6 {
                        0 => Value::from(text(&mut next)),
                        1 => Value::from(next() >> (next() % 64)),
                        2 => Value::from(-((next() >> (next() % 63 + 1)) as i64) - 1),
                        3 => Value::F64(f64::from_bits(next())),
                        4 => Value::F32(f32::from_bits(next() as u32)),
                        _ => Value::Nil,
                    };
                    (Value::from(text(&mut next)), value)
                })
                .collect();
            same_as_value(&encode(&Value::Map(entries)));
        }
        // Not flat: the general path renders these.
        for value in [
            Value::Map(vec![(Value::from("a"), Value::Array(vec![]))]),
            Value::Map(vec![(Value::from(1), Value::from("integer key"))]),
            Value::Map(vec![(Value::from("b"), Value::Binary(vec![1]))]),
        ] {
            assert!(super::flat_map(&encode(&value)).is_none());
            same_as_value(&encode(&value));
        }
        // A string that is not UTF-8, and a truncated map.
        assert!(super::flat_map(&[0x81, 0xa1, b'a', 0xa2, 0xff, 0xfe]).is_none());
        assert!(super::flat_map(&[0x82, 0xa1, b'a', 0xc0]).is_none());
    }

    #[test]
    fn broken_input_is_an_error_not_a_panic() {
        let inputs: &[&[u8]] = &[
            &[],
            &[0xc1],
            &[0xcd, 0x00],
            &[0xa5, b'a'],
            &[0x92, 0x01],
            &[0xdd, 0xff, 0xff, 0xff, 0xff],
            &[0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0],
            &[0xdb, 0xff, 0xff, 0xff, 0xff],
            &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
            &[0xd8, 0x01],
        ];
        for input in inputs {
            assert!(super::to_json(input).is_err(), "input {input:02x?}");
        }
    }

    #[test]
    fn nesting_beyond_the_limit_is_an_error() {
        let deep = |levels: usize| [vec![0x91; levels], vec![0xc0]].concat();
        assert!(super::to_json(&deep(super::MAX_NESTING_DEPTH)).is_ok());
        assert!(super::to_json(&deep(super::MAX_NESTING_DEPTH + 1)).is_err());
        assert!(super::to_json(&deep(100_000)).is_err());
    }

    #[test]
    fn random_trees_render_as_through_rmpv() {
        // A fixed-seed generator: the same few thousand trees on every run.
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        fn tree(next: &mut dyn FnMut() -> u64, depth: usize) -> Value {
            let pick = next() % if depth > 4 { 9 } else { 11 };
            match pick {
                0 => Value::Nil,
                1 => Value::from(next() & 1 == 0),
                2 => Value::from(next() >> (next() % 64)),
                3 => Value::from(-((next() >> (next() % 63 + 1)) as i64) - 1),
                4 => Value::F32(f32::from_bits(next() as u32)),
                5 => Value::F64(f64::from_bits(next())),
                6 => Value::from(
                    (0..next() % 40)
                        .map(|_| char::from_u32((next() % 0x11_0000) as u32).unwrap_or('?'))
                        .collect::<String>(),
                ),
                7 => Value::Binary((0..next() % 40).map(|_| next() as u8).collect()),
                8 => Value::Ext(next() as i8, (0..next() % 20).map(|_| next() as u8).collect()),
                9 => Value::Array((0..next() % 6).map(|_| tree(next, depth + 1)).collect()),
                _ => Value::Map((0..next() % 6).map(|_| (tree(next, depth + 1), tree(next, depth + 1))).collect()),
            }
        }
        let mut rendered = 0;
        for _ in 0..5_000 {
            let bytes = encode(&tree(&mut next, 0));
            same_as_value(&bytes);
            rendered += usize::from(super::to_json(&bytes).is_ok());
        }
        // Keys that JSON cannot take (nil, binary, arrays) fail both ways; most trees render.
        assert!(rendered > 2_500, "only {rendered} of 5,000 trees rendered");
    }
}
