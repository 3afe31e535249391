//! The part of Python's pickle format a session dict uses, and nothing else.
//!
//! Django's `RedisCache` stores a session as `pickle.dumps(dict)`. This reads the opcodes that
//! such a dict of strings, numbers, booleans, `None`, lists and tuples needs (protocols 2 to 5)
//! into JSON values. Every other opcode — `GLOBAL`, `STACK_GLOBAL`, `REDUCE`, `BUILD`, `INST`,
//! `OBJ`, `NEWOBJ`, `PERSID`, sets, bytes... — refuses the whole value: nothing is imported,
//! called or trusted.
//!
//! ```
//! use channels::django::pickle::{loads, PickleError};
//! // pickle.dumps({"a": 1}, protocol=5)
//! let dict = b"\x80\x05\x95\n\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.";
//! assert_eq!(loads(dict).unwrap(), serde_json::json!({"a": 1}));
//! // pickle.dumps(os.system) starts with a STACK_GLOBAL: refused, never run.
//! assert!(matches!(loads(b"\x80\x04\x8c\x02os\x8c\x06system\x93."), Err(PickleError::Refused(0x93))));
//! ```

use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Number, Value};

/// Largest pickle read, in bytes.
pub const MAX_PICKLE_LEN: usize = 256 * 1024;
/// Deepest nesting of lists and dicts accepted.
pub const MAX_DEPTH: usize = 32;

/// Why a pickle was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PickleError {
    /// An opcode outside the session-dict subset (its byte).
    Refused(u8),
    /// Truncated, unbalanced, too large, too deep, or a value JSON cannot hold.
    Malformed(&'static str),
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(op) => write!(f, "pickle opcode 0x{op:02x} is not allowed in a session"),
            Self::Malformed(why) => write!(f, "malformed pickle: {why}"),
        }
    }
}

impl std::error::Error for PickleError {}

enum Item {
    Mark,
    Value(Value, usize),
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end =
            self.pos.checked_add(n).filter(|&end| end <= self.data.len()).ok_or(PickleError::Malformed("truncated"))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<usize, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn u64(&mut self) -> Result<usize, PickleError> {
        let b = self.take(8)?;
        let n = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        usize::try_from(n).map_err(|_| PickleError::Malformed("length out of range"))
    }

    fn text(&mut self, n: usize) -> Result<Value, PickleError> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| PickleError::Malformed("string not UTF-8"))?;
        Ok(Value::String(s.to_owned()))
    }
}

/// Decodes a pickled session value (see the [module documentation](self)).
pub fn loads(data: &[u8]) -> Result<Value, PickleError> {
    if data.len() > MAX_PICKLE_LEN {
        return Err(PickleError::Malformed("too large"));
    }
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: HashMap<usize, Value> = HashMap::new();
    loop {
        let op = r.byte()?;
        match op {
            0x80 => {
                let protocol = r.byte()?;
                if !(2..=5).contains(&protocol) {
                    return Err(PickleError::Malformed("unsupported protocol"));
                }
            }
            0x95 => {
                r.u64()?; // FRAME: a length hint
            }
            b'.' => {
                return match (stack.pop(), stack.is_empty()) {
                    (Some(Item::Value(value, _)), true) => Ok(value),
                    _ => Err(PickleError::Malformed("the stack does not hold exactly one value at STOP")),
                };
            }
            b'(' => stack.push(Item::Mark),
            b'}' => stack.push(Item::Value(Value::Object(Map::new()), 1)),
            b']' | b')' => stack.push(Item::Value(Value::Array(Vec::new()), 1)),
            b'N' => stack.push(Item::Value(Value::Null, 0)),
            0x88 => stack.push(Item::Value(Value::Bool(true), 0)),
            0x89 => stack.push(Item::Value(Value::Bool(false), 0)),
            b'K' => stack.push(Item::Value(Value::from(r.byte()?), 0)),
            b'M' => {
                let b = r.take(2)?;
                stack.push(Item::Value(Value::from(u16::from_le_bytes([b[0], b[1]])), 0));
            }
            b'J' => {
                let b = r.take(4)?;
                stack.push(Item::Value(Value::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])), 0));
            }
            0x8a => {
                let n = r.byte()? as usize;
                if n > 8 {
                    return Err(PickleError::Malformed("integer beyond 64 bits"));
                }
                let bytes = r.take(n)?;
                let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
                buf[..n].copy_from_slice(bytes);
                stack.push(Item::Value(Value::from(i64::from_le_bytes(buf)), 0));
            }
            b'G' => {
                let b = r.take(8)?;
                let f = f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                let n = Number::from_f64(f).ok_or(PickleError::Malformed("a float JSON cannot hold"))?;
                stack.push(Item::Value(Value::Number(n), 0));
            }
            0x8c => {
                let n = r.byte()? as usize;
                stack.push(Item::Value(r.text(n)?, 0));
            }
            b'X' => {
                let n = r.u32()?;
                stack.push(Item::Value(r.text(n)?, 0));
            }
            0x8d => {
                let n = r.u64()?;
                stack.push(Item::Value(r.text(n)?, 0));
            }
            0x94 | b'q' | b'r' => {
                let index = match op {
                    0x94 => memo.len(),
                    b'q' => r.byte()? as usize,
                    _ => r.u32()?,
                };
                match stack.last() {
                    Some(Item::Value(value, _)) => {
                        // A container is remembered before it is filled; fetching it back would
                        // see it empty, so only scalars are kept (a session never shares a list).
                        if !value.is_array() && !value.is_object() {
                            memo.insert(index, value.clone());
                        }
                    }
                    _ => return Err(PickleError::Malformed("MEMOIZE without a value")),
                }
            }
            b'h' | b'j' => {
                let index = if op == b'h' { r.byte()? as usize } else { r.u32()? };
                let value =
                    memo.get(&index).cloned().ok_or(PickleError::Malformed("a memo entry that is not a scalar"))?;
                stack.push(Item::Value(value, 0));
            }
            b's' => {
                let (value, depth) = pop_value(&mut stack)?;
                let key = pop_value(&mut stack)?;
                insert(&mut stack, vec![key, (value, depth)])?;
            }
            b'u' => {
                let items = pop_to_mark(&mut stack)?;
                insert(&mut stack, items)?;
            }
            b'a' => {
                let item = pop_value(&mut stack)?;
                append(&mut stack, vec![item])?;
            }
            b'e' => {
                let items = pop_to_mark(&mut stack)?;
                append(&mut stack, items)?;
            }
            b't' | 0x85..=0x87 => {
                let items = if op == b't' {
                    pop_to_mark(&mut stack)?
                } else {
                    let n = (op - 0x84) as usize;
                    let mut items = (0..n).map(|_| pop_value(&mut stack)).collect::<Result<Vec<_>, _>>()?;
                    items.reverse();
                    items
                };
                let depth = 1 + items.iter().map(|(_, d)| *d).max().unwrap_or(0);
                if depth > MAX_DEPTH {
                    return Err(PickleError::Malformed("nested too deeply"));
                }
                stack.push(Item::Value(Value::Array(items.into_iter().map(|(v, _)| v).collect()), depth));
            }
            other => return Err(PickleError::Refused(other)),
        }
    }
}

fn pop_value(stack: &mut Vec<Item>) -> Result<(Value, usize), PickleError> {
    match stack.pop() {
        Some(Item::Value(value, depth)) => Ok((value, depth)),
        _ => Err(PickleError::Malformed("a value was expected")),
    }
}

fn pop_to_mark(stack: &mut Vec<Item>) -> Result<Vec<(Value, usize)>, PickleError> {
    let mark = stack.iter().rposition(|item| matches!(item, Item::Mark)).ok_or(PickleError::Malformed("no MARK"))?;
    let items = stack.split_off(mark + 1);
    stack.pop();
    items
        .into_iter()
        .map(|item| match item {
            Item::Value(value, depth) => Ok((value, depth)),
            Item::Mark => Err(PickleError::Malformed("a MARK among values")),
        })
        .collect()
}

fn container(stack: &mut [Item]) -> Result<(&mut Value, &mut usize), PickleError> {
    match stack.last_mut() {
        Some(Item::Value(value, depth)) => Ok((value, depth)),
        _ => Err(PickleError::Malformed("no container")),
    }
}

fn insert(stack: &mut [Item], items: Vec<(Value, usize)>) -> Result<(), PickleError> {
    if !items.len().is_multiple_of(2) {
        return Err(PickleError::Malformed("a key without a value"));
    }
    let (target, depth) = container(stack)?;
    let Value::Object(map) = target else { return Err(PickleError::Malformed("SETITEM on something not a dict")) };
    let mut items = items.into_iter();
    while let (Some((key, _)), Some((value, value_depth))) = (items.next(), items.next()) {
        let Value::String(key) = key else { return Err(PickleError::Malformed("a dict key that is not a string")) };
        *depth = (*depth).max(value_depth + 1);
        map.insert(key, value);
    }
    if *depth > MAX_DEPTH { Err(PickleError::Malformed("nested too deeply")) } else { Ok(()) }
}

fn append(stack: &mut [Item], items: Vec<(Value, usize)>) -> Result<(), PickleError> {
    let (target, depth) = container(stack)?;
    let Value::Array(list) = target else { return Err(PickleError::Malformed("APPEND on something not a list")) };
    for (value, value_depth) in items {
        *depth = (*depth).max(value_depth + 1);
        list.push(value);
    }
    if *depth > MAX_DEPTH { Err(PickleError::Malformed("nested too deeply")) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_opcodes_and_broken_input() {
        for (bytes, expected) in [
            (&b"\x80\x02c__builtin__\neval\n."[..], PickleError::Refused(b'c')),
            (&b"\x80\x05}\x94R."[..], PickleError::Refused(b'R')),
            (&b"\x80\x05}\x94b."[..], PickleError::Refused(b'b')),
        ] {
            assert_eq!(loads(bytes), Err(expected));
        }
        for bad in [
            &b""[..],
            b"\x80\x05",
            b"\x80\x05}",
            b"\x80\x05K\x01K\x02.",
            b"\x80\x05\x8c\x05ab.",
            b"\x80\x05s.",
            b"\x80\x09}.",
        ] {
            assert!(matches!(loads(bad), Err(PickleError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut deep = b"\x80\x05".to_vec();
        deep.extend(std::iter::repeat_n(b']', 100));
        deep.extend(std::iter::repeat_n(b'a', 99));
        deep.push(b'.');
        assert_eq!(loads(&deep), Err(PickleError::Malformed("nested too deeply")));
    }
}
