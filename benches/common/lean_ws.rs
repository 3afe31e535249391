//! The load generator's WebSocket client: just what the chat scenarios need, so that the
//! generator costs less CPU per delivery than the servers it measures.
//!
//! With tokio-tungstenite and serde_json the generator spent more CPU per delivery than the
//! servers (it ran at 93–98 % of its CPU in the fan-out while the servers did not): the
//! scenarios then measured the generator as much as the server. This client reads frames
//! straight out of one buffer per connection, hands out text payloads as borrowed `&str`,
//! and finds the two fields the generator needs (`type`, `text`) with a scan of the
//! top-level JSON object, falling back to serde_json for anything the scan does not take
//! (escapes).
//!
//! It speaks RFC 6455 as a client: an HTTP/1.1 upgrade whose `Sec-WebSocket-Accept` is
//! checked, masked frames out, unmasked frames in (text, binary, fragments, ping answered
//! with pong, close ends the stream). Every delivery is still counted and checked by the
//! scenario, so a frame this client misread would show as loss.

use std::net::SocketAddr;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The client's fixed handshake key and the accept value RFC 6455 derives from it (its own
/// example, section 1.3).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Initial read buffer per connection; it grows for a frame that does not fit.
const READ_BUFFER: usize = 4096;

/// One WebSocket connection.
#[derive(Debug)]
pub struct LeanWs {
    stream: TcpStream,
    /// Bytes read: `buf[start..end]` is not parsed yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// A fragmented message being put together, and the last one completed.
    fragments: Option<Vec<u8>>,
    assembled: Vec<u8>,
    /// Whether the message `parse` completed last is text (its first frame's opcode).
    text: bool,
    /// Control frames to send (pongs), written before the next message or when the socket
    /// takes them at once.
    pending: Vec<u8>,
    /// Masks differ from frame to frame, as a client's should.
    mask_seed: u32,
}

/// A frame's payload handed to the caller.
#[derive(Debug)]
pub enum Received<'a> {
    /// A text payload.
    Text(&'a str),
    /// Binary, or a text payload that was not UTF-8.
    Other,
}

impl LeanWs {
    /// Connects from the next loopback source address (see [`super::net`]) and upgrades
    /// `path` (with its query) on `addr`, waiting at most 30 s.
    pub async fn connect(addr: SocketAddr, path: &str) -> Result<Self, String> {
        super::net::within_connect_limit(async { Self::handshake(super::net::tcp(addr).await?, addr, path).await })
            .await
    }

    async fn handshake(mut stream: TcpStream, addr: SocketAddr, path: &str) -> Result<Self, String> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("handshake: {e}"))?;
        let mut buf = vec![0; READ_BUFFER];
        let mut end = 0;
        let head_end = loop {
            if let Some(at) = buf[..end].windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if end == buf.len() {
                return Err("handshake: response headers over 4 KiB".into());
            }
            match stream.read(&mut buf[end..]).await {
                Ok(0) => return Err("handshake: connection closed".into()),
                Ok(n) => end += n,
                Err(e) => return Err(format!("handshake: {e}")),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]);
        let status = head.lines().next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            return Err(format!("handshake: {status}"));
        }
        let accepted = head.lines().any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == ACCEPT
            })
        });
        if !accepted {
            return Err("handshake: wrong or missing Sec-WebSocket-Accept".into());
        }
        Ok(Self {
            stream,
            buf,
            start: head_end,
            end,
            fragments: None,
            assembled: Vec::new(),
            text: false,
            pending: Vec::new(),
            mask_seed: 0x9e37_79b9 ^ (addr.port() as u32),
        })
    }

    /// Sends `text` as one masked text frame.
    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        let mut frame = std::mem::take(&mut self.pending);
        self.mask_seed = self.mask_seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        encode_masked(&mut frame, 0x1, text.as_bytes(), self.mask_seed.to_be_bytes());
        let result = self.stream.write_all(&frame).await;
        frame.clear();
        self.pending = frame;
        result
    }

    /// The next text or binary message; `None` once the server closed (a close frame, end of
    /// stream or an error). Cancel-safe: bytes are only taken off the socket into the buffer.
    pub async fn next(&mut self) -> Option<Received<'_>> {
        loop {
            match self.parse() {
                Ok(Some((start, end, complete))) => {
                    let payload = match complete {
                        Complete::InBuffer => &self.buf[start..end],
                        Complete::Assembled => &self.assembled,
                    };
                    return Some(match std::str::from_utf8(payload) {
                        Ok(text) if self.text => Received::Text(text),
                        _ => Received::Other,
                    });
                }
                Ok(None) => {}
                Err(()) => return None,
            }
            if self.end == self.buf.len() {
                self.make_room(0);
            }
            match self.stream.read(&mut self.buf[self.end..]).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.end += n,
            }
        }
    }

    /// Moves the unparsed bytes to the front, and grows the buffer to hold `needed` bytes from
    /// there (at least twice its size when they already fill it).
    fn make_room(&mut self, needed: usize) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        let needed = if self.end == self.buf.len() { needed.max(self.buf.len() * 2) } else { needed };
        if needed > self.buf.len() {
            self.buf.resize(needed.next_power_of_two(), 0);
        }
    }

    /// Takes the next complete data message out of the buffer, answering pings on the way:
    /// `Ok(None)` when more bytes are needed, `Err` on a close frame or a protocol error.
    fn parse(&mut self) -> Result<Option<(usize, usize, Complete)>, ()> {
        loop {
            let available = &self.buf[self.start..self.end];
            let Some((header, fin, opcode, len)) = frame_header(available)? else { return Ok(None) };
            if available.len() < header + len {
                // Make sure the frame fits once read.
                if header + len > self.buf.len() - self.start {
                    self.make_room(header + len);
                }
                return Ok(None);
            }
            let (from, to) = (self.start + header, self.start + header + len);
            self.start = to;
            match opcode {
                0x8 => return Err(()),
                0x9 => {
                    let payload = self.buf[from..to].to_vec();
                    self.mask_seed = self.mask_seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    encode_masked(&mut self.pending, 0xA, &payload, self.mask_seed.to_be_bytes());
                    if let Ok(n) = self.stream.try_write(&self.pending) {
                        self.pending.drain(..n);
                    }
                }
                0xA => {}
                0x1 | 0x2 if self.fragments.is_some() => return Err(()),
                0x1 | 0x2 => {
                    self.text = opcode == 0x1;
                    if fin {
                        return Ok(Some((from, to, Complete::InBuffer)));
                    }
                    self.fragments = Some(self.buf[from..to].to_vec());
                }
                0x0 => {
                    let Some(fragments) = self.fragments.as_mut() else { return Err(()) };
                    fragments.extend_from_slice(&self.buf[from..to]);
                    if fin {
                        self.assembled = self.fragments.take().unwrap_or_default();
                        return Ok(Some((0, 0, Complete::Assembled)));
                    }
                }
                _ => return Err(()),
            }
        }
    }
}

enum Complete {
    InBuffer,
    Assembled,
}

/// `(header length, FIN, opcode, payload length)` of the frame at the start of `bytes`, `None`
/// if its header is not all there; `Err` for a masked frame (a server must not mask).
fn frame_header(bytes: &[u8]) -> Result<Option<(usize, bool, u8, usize)>, ()> {
    let [first, second, ..] = *bytes else { return Ok(None) };
    if second & 0x80 != 0 {
        return Err(());
    }
    let (header, len) = match second & 0x7f {
        126 => match bytes.get(2..4) {
            Some(len) => (4, u16::from_be_bytes([len[0], len[1]]) as usize),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(len) => (10, u64::from_be_bytes(len.try_into().map_err(|_| ())?) as usize),
            None => return Ok(None),
        },
        len => (2, len as usize),
    };
    Ok(Some((header, first & 0x80 != 0, first & 0x0f, len)))
}

/// Appends one final, masked frame.
fn encode_masked(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(byte, key)| byte ^ key));
}

/// The fields of a chat event the generator reads.
#[derive(Debug, Deserialize)]
pub struct Event<'a> {
    /// `type`: `chat.message`, or a presence, join or leave notice.
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    /// The message's text, which carries the generator's sequence numbers.
    #[serde(borrow, default)]
    pub text: Option<&'a str>,
}

impl<'a> Event<'a> {
    /// Reads `json`: a scan of its top-level object when it holds no escapes, serde_json
    /// otherwise. `None` when it is not such an object with a string `type`.
    pub fn parse(json: &'a str) -> Option<Self> {
        match scan(json.as_bytes()) {
            Some((Some(kind), text)) => Some(Self { kind: as_str(json, kind), text: text.map(|t| as_str(json, t)) }),
            Some((None, _)) => None,
            None => serde_json::from_str(json).ok(),
        }
    }
}

/// The `&str` of `json` that `part` (a sub-slice of its bytes between two ASCII quotes) is.
fn as_str<'a>(json: &'a str, part: &[u8]) -> &'a str {
    let offset = part.as_ptr() as usize - json.as_ptr() as usize;
    &json[offset..offset + part.len()]
}

/// The values of an event's `"type"` and `"text"` keys, where it has them.
type Fields<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// The top-level `"type"` and `"text"` string values of a JSON object holding no backslash;
/// `None` when `json` is not that (the caller falls back to a JSON parser).
fn scan(json: &[u8]) -> Option<Fields<'_>> {
    if json.contains(&b'\\') {
        return None;
    }
    let mut at = skip_space(json, 0);
    if json.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    let (mut kind, mut text) = (None, None);
    loop {
        at = skip_space(json, at);
        match json.get(at)? {
            b'}' => return Some((kind, text)),
            b'"' => {}
            _ => return None,
        }
        let (key, after) = string(json, at)?;
        at = skip_space(json, after);
        if json.get(at) != Some(&b':') {
            return None;
        }
        at = skip_space(json, at + 1);
        if json.get(at) == Some(&b'"') {
            let (value, after) = string(json, at)?;
            match key {
                b"type" => kind = Some(value),
                b"text" => text = Some(value),
                _ => {}
            }
            at = after;
        } else {
            at = skip_value(json, at)?;
        }
        at = skip_space(json, at);
        match json.get(at)? {
            b',' => at += 1,
            b'}' => return Some((kind, text)),
            _ => return None,
        }
    }
}

fn skip_space(json: &[u8], mut at: usize) -> usize {
    while json.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// The contents of the string starting at `json[at]` (a quote) and the index after it.
fn string(json: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = json.get(at + 1..)?.iter().position(|&b| b == b'"')?;
    Some((&json[at + 1..at + 1 + len], at + 2 + len))
}

/// The index after the non-string value at `json[at]` (a number, literal, object or array).
fn skip_value(json: &[u8], mut at: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match *json.get(at)? {
            b'"' => at = string(json, at)?.1,
            b'{' | b'[' => {
                depth += 1;
                at += 1;
            }
            b'}' | b']' if depth > 0 => {
                depth -= 1;
                at += 1;
            }
            b',' | b'}' | b']' if depth == 0 => return Some(at),
            _ => at += 1,
        }
    }
}
