//! Optional payload encryption, compatible with channels_redis's `symmetric_encryption_keys`:
//! each key string becomes a Fernet key `base64url(sha256(key))`; the first key encrypts, every
//! key is tried to decrypt (key rotation).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use channels_core::layer::ConfigError;
use fernet::Fernet;
use sha2::{Digest, Sha256};

use crate::wire::WireError;

/// Symmetric encryption of layer payloads.
pub struct Encryption {
    /// The first key encrypts; all are tried to decrypt.
    keys: Vec<Fernet>,
}

/// The Fernet key channels_redis derives from a configured key string.
pub fn fernet_key(secret: &str) -> String {
    URL_SAFE.encode(Sha256::digest(secret.as_bytes()))
}

impl Encryption {
    /// Encryption with `secrets` (the first one encrypts).
    pub fn new(secrets: &[String]) -> Result<Self, ConfigError> {
        if secrets.is_empty() {
            return Err(ConfigError("symmetric encryption needs at least one key".into()));
        }
        let keys = secrets
            .iter()
            .map(|secret| Fernet::new(&fernet_key(secret)).ok_or_else(|| ConfigError("invalid encryption key".into())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    /// A Fernet token (ASCII) for `body`.
    pub fn encrypt(&self, body: &[u8]) -> Vec<u8> {
        self.keys[0].encrypt(body).into_bytes()
    }

    /// The body inside a token, if it is authentic and younger than `ttl_secs`.
    pub fn decrypt(&self, token: &[u8], ttl_secs: Option<u64>) -> Result<Vec<u8>, WireError> {
        let token = std::str::from_utf8(token).map_err(|_| WireError("the encrypted payload is not a token".into()))?;
        self.keys
            .iter()
            .find_map(|key| match ttl_secs {
                Some(ttl) => key.decrypt_with_ttl(token, ttl).ok(),
                None => key.decrypt(token).ok(),
            })
            .ok_or_else(|| WireError("the payload does not decrypt with any configured key (or expired)".into()))
    }
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encryption(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_derivation_matches_channels_redis() {
        assert_eq!(fernet_key("secret-key-1"), "psHq751fI_ThPZtXTLvgeuh3In2SvofQdwBdxndrzcw=");
    }

    #[test]
    fn round_trip_and_rotation() {
        let old = Encryption::new(&["old".into()]).unwrap();
        let rotated = Encryption::new(&["new".into(), "old".into()]).unwrap();
        let token = old.encrypt(b"body");
        assert_eq!(token[0], b'g', "a Fernet token starts with version 0x80, 'g' in base64");
        assert_eq!(rotated.decrypt(&token, Some(70)).unwrap(), b"body");
        assert!(Encryption::new(&["other".into()]).unwrap().decrypt(&token, Some(70)).is_err());
        assert!(old.decrypt(b"\xffnot a token", None).is_err());
    }
}
