//! Django's `django.core.signing`, byte for byte: values Django signs verify here, and values
//! signed here verify in Django.
//!
//! A signed object is `BODY:TIMESTAMP:SIGNATURE` where
//! - `BODY` is the JSON (compact, ASCII-only, as Django's `JSONSerializer` writes it) in URL-safe
//!   base64 without padding, prefixed with `.` when it was zlib-compressed;
//! - `TIMESTAMP` is the signing time in whole seconds since the Unix epoch, in base 62;
//! - `SIGNATURE` is the URL-safe base64 (no padding) of
//!   `HMAC-SHA256(SHA256(salt + "signer" + key), "BODY:TIMESTAMP")` (Django's `salted_hmac`).
//!
//! Verification tries the current key, then each fallback key (Django's `SECRET_KEY` and
//! `SECRET_KEY_FALLBACKS`), comparing in constant time.
//!
//! ```
//! use channels::django::signing::TimestampSigner;
//! use std::time::Duration;
//!
//! let old = TimestampSigner::new("the old secret key", "my.salt");
//! let token = old.sign_object(&serde_json::json!({"user": 7}), true);
//!
//! // After rotation: the new key signs, the old one still verifies.
//! let rotated = TimestampSigner::new("the new secret key", "my.salt").fallback_keys(["the old secret key"]);
//! let value = rotated.unsign_object(&token, Some(Duration::from_secs(60))).unwrap();
//! assert_eq!(value["user"], 7);
//! assert!(TimestampSigner::new("the new secret key", "another.salt").unsign_object(&token, None).is_err());
//! ```

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Largest decompressed payload accepted, in bytes: a signed value cannot be a zip bomb.
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a signed value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureError {
    /// Not of the form `BODY:TIMESTAMP:SIGNATURE`, or a part does not decode.
    Malformed,
    /// No key (current or fallback) gives this signature: tampered, another key or another salt.
    BadSignature,
    /// Signed longer ago than the allowed age.
    Expired {
        /// Seconds since signing.
        age: u64,
        /// The allowed age, in seconds.
        max_age: u64,
    },
    /// The signature is good but the payload does not decompress or is not JSON.
    BadPayload,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => f.write_str("the signed value is malformed"),
            Self::BadSignature => f.write_str("the signature does not match"),
            Self::Expired { age, max_age } => write!(f, "the signature is {age} s old; at most {max_age} s is allowed"),
            Self::BadPayload => f.write_str("the signed payload is not valid (compressed) JSON"),
        }
    }
}

impl std::error::Error for SignatureError {}

/// Django's `salted_hmac(key_salt, value, secret, algorithm="sha256")`: HMAC-SHA256 keyed with
/// `SHA256(key_salt + secret)`.
///
/// ```
/// let tag = channels::django::signing::salted_hmac("salt", b"value", b"secret");
/// assert_eq!(tag.len(), 32);
/// ```
pub fn salted_hmac(key_salt: &str, value: &[u8], secret: &[u8]) -> [u8; 32] {
    let key = Sha256::new().chain_update(key_salt.as_bytes()).chain_update(secret).finalize();
    let mut mac = match Hmac::<Sha256>::new_from_slice(&key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(value);
    mac.finalize().into_bytes().into()
}

/// Constant-time equality of two byte strings (Django's `constant_time_compare`).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An integer in Django's base 62 (`0-9A-Za-z`, a leading `-` for negatives).
///
/// ```
/// use channels::django::signing::{b62_decode, b62_encode};
/// assert_eq!(b62_encode(1_700_000_000), "1r31eq");
/// assert_eq!(b62_decode("1r31eq"), Some(1_700_000_000));
/// ```
pub fn b62_encode(n: i64) -> String {
    if n == 0 {
        return "0".to_owned();
    }
    let mut digits = Vec::new();
    let mut rest = n.unsigned_abs();
    while rest > 0 {
        digits.push(BASE62[(rest % 62) as usize]);
        rest /= 62;
    }
    if n < 0 {
        digits.push(b'-');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// Reads Django's base 62; `None` for an empty string, a foreign character or an overflow.
pub fn b62_decode(s: &str) -> Option<i64> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: i64 = 0;
    for b in digits.bytes() {
        let digit = BASE62.iter().position(|&d| d == b)? as i64;
        n = n.checked_mul(62)?.checked_add(digit)?;
    }
    Some(if negative { -n } else { n })
}

/// Django's JSON as `JSONSerializer` writes it: compact separators, non-ASCII escaped.
pub fn to_django_json(value: &serde_json::Value) -> String {
    let compact = value.to_string();
    let mut out = String::with_capacity(compact.len());
    for c in compact.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Django's `TimestampSigner` with its `sign_object`/`unsign_object` (JSON payloads).
#[derive(Clone)]
pub struct TimestampSigner {
    key: Vec<u8>,
    fallback_keys: Vec<Vec<u8>>,
    salt: String,
}

impl fmt::Debug for TimestampSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimestampSigner")
            .field("salt", &self.salt)
            .field("fallback_keys", &self.fallback_keys.len())
            .finish_non_exhaustive()
    }
}

impl TimestampSigner {
    /// Signs with `key` (Django's `SECRET_KEY`) under `salt`.
    pub fn new(key: impl Into<Vec<u8>>, salt: impl Into<String>) -> Self {
        Self { key: key.into(), fallback_keys: Vec::new(), salt: salt.into() }
    }

    /// Also verifies values signed with these keys (Django's `SECRET_KEY_FALLBACKS`).
    pub fn fallback_keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<Vec<u8>>,
    {
        self.fallback_keys = keys.into_iter().map(Into::into).collect();
        self
    }

    fn signature(&self, value: &str, key: &[u8]) -> String {
        let salt = format!("{}signer", self.salt);
        URL_SAFE_NO_PAD.encode(salted_hmac(&salt, value.as_bytes(), key))
    }

    /// Signs `value` now: `value:TIMESTAMP:SIGNATURE`.
    pub fn sign(&self, value: &str) -> String {
        self.sign_at(value, unix_now())
    }

    fn sign_at(&self, value: &str, timestamp: i64) -> String {
        let value = format!("{value}:{}", b62_encode(timestamp));
        let signature = self.signature(&value, &self.key);
        format!("{value}:{signature}")
    }

    /// Checks `signed` with the key and then each fallback key, and, with `max_age`, its age;
    /// returns the value that was signed.
    pub fn unsign(&self, signed: &str, max_age: Option<Duration>) -> Result<String, SignatureError> {
        let (value, signature) = signed.rsplit_once(':').ok_or(SignatureError::Malformed)?;
        let good = std::iter::once(&self.key)
            .chain(&self.fallback_keys)
            .any(|key| constant_time_eq(signature.as_bytes(), self.signature(value, key).as_bytes()));
        if !good {
            return Err(SignatureError::BadSignature);
        }
        let (value, timestamp) = value.rsplit_once(':').ok_or(SignatureError::Malformed)?;
        let timestamp = b62_decode(timestamp).ok_or(SignatureError::Malformed)?;
        if let Some(max_age) = max_age {
            let age = unix_now().saturating_sub(timestamp);
            // Django compares the fractional age: a value exactly `max_age` old is still good.
            if age > 0 && age.unsigned_abs() > max_age.as_secs() {
                return Err(SignatureError::Expired { age: age.unsigned_abs(), max_age: max_age.as_secs() });
            }
        }
        Ok(value.to_owned())
    }

    /// Django's `sign_object`: `value` as JSON, zlib-compressed (and marked with `.`) when
    /// `compress` is set and that makes it shorter, signed now.
    pub fn sign_object(&self, value: &serde_json::Value, compress: bool) -> String {
        self.sign_object_at(value, compress, unix_now())
    }

    fn sign_object_at(&self, value: &serde_json::Value, compress: bool, timestamp: i64) -> String {
        let data = to_django_json(value).into_bytes();
        let mut body = String::new();
        let compressed = compress.then(|| miniz_oxide::deflate::compress_to_vec_zlib(&data, 6));
        match compressed {
            Some(compressed) if compressed.len() < data.len().saturating_sub(1) => {
                body.push('.');
                body.push_str(&URL_SAFE_NO_PAD.encode(compressed));
            }
            _ => body.push_str(&URL_SAFE_NO_PAD.encode(&data)),
        }
        self.sign_at(&body, timestamp)
    }

    /// Django's `unsign_object`: checks `signed` (see [`unsign`](Self::unsign)) and decodes its
    /// JSON payload, decompressing it when it starts with `.` (at most [`MAX_PAYLOAD_LEN`]).
    pub fn unsign_object(&self, signed: &str, max_age: Option<Duration>) -> Result<serde_json::Value, SignatureError> {
        let body = self.unsign(signed, max_age)?;
        let (compressed, body) = match body.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, body.as_str()),
        };
        // Django pads and decodes leniently; padding characters never appear in what it signs.
        let data = URL_SAFE_NO_PAD.decode(body.trim_end_matches('=')).map_err(|_| SignatureError::BadPayload)?;
        let data = if compressed {
            miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&data, MAX_PAYLOAD_LEN)
                .map_err(|_| SignatureError::BadPayload)?
        } else {
            data
        };
        // Django decodes the bytes as Latin-1 before parsing the JSON.
        let text: String = data.iter().map(|&b| char::from(b)).collect();
        serde_json::from_str(&text).map_err(|_| SignatureError::BadPayload)
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base62_round_trips() {
        for n in [0, 1, 61, 62, -1, -62, 1_700_000_000, i64::MAX, -i64::MAX] {
            assert_eq!(b62_decode(&b62_encode(n)), Some(n), "{n}");
        }
        assert_eq!(b62_encode(61), "z");
        assert_eq!(b62_encode(62), "10");
        for bad in ["", "-", "+1", "a b", "zzzzzzzzzzzzzzzzzzzzzz"] {
            assert_eq!(b62_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn json_is_compact_and_ascii() {
        assert_eq!(to_django_json(&json!({"a": [1, "é😀"]})), r#"{"a":[1,"\u00e9\ud83d\ude00"]}"#);
    }

    #[test]
    fn objects_round_trip_compressed_or_not() {
        let signer = TimestampSigner::new("k", "s");
        let big = json!({"list": (0..100).collect::<Vec<_>>(), "text": "é"});
        for (value, compress) in [(json!("hello"), false), (big.clone(), true), (json!({"a": 1}), true)] {
            let signed = signer.sign_object(&value, compress);
            assert_eq!(signer.unsign_object(&signed, Some(Duration::from_secs(5))), Ok(value));
        }
        assert!(signer.sign_object(&big, true).starts_with('.'));
        assert!(!signer.sign_object(&json!({"a": 1}), true).starts_with('.'));
    }

    #[test]
    fn tampered_other_key_other_salt_and_expired_values_are_refused() {
        let signer = TimestampSigner::new("k", "s");
        let signed = signer.sign_object(&json!({"a": 1}), false);
        let mut tampered = signed.clone().into_bytes();
        tampered[2] ^= 1;
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert_eq!(signer.unsign_object(&tampered, None), Err(SignatureError::BadSignature));
        assert_eq!(TimestampSigner::new("k2", "s").unsign_object(&signed, None), Err(SignatureError::BadSignature));
        assert_eq!(TimestampSigner::new("k", "s2").unsign_object(&signed, None), Err(SignatureError::BadSignature));
        let old = signer.sign_object_at(&json!(1), false, unix_now() - 100);
        assert!(matches!(
            signer.unsign_object(&old, Some(Duration::from_secs(50))),
            Err(SignatureError::Expired { max_age: 50, .. })
        ));
        assert_eq!(signer.unsign_object(&old, None), Ok(json!(1)));
        for junk in ["", ":", "a:b", "a:b:c", "::", "%%:%%:%%"] {
            assert!(signer.unsign_object(junk, None).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn fallback_keys_verify_and_the_current_key_signs() {
        let old = TimestampSigner::new("old", "s");
        let rotated = TimestampSigner::new("new", "s").fallback_keys(["older", "old"]);
        let signed = old.sign_object(&json!(7), false);
        assert_eq!(rotated.unsign_object(&signed, None), Ok(json!(7)));
        assert!(old.unsign_object(&rotated.sign_object(&json!(7), false), None).is_err());
    }
}
