//! **Not implemented yet.** The Redis channel layer for channels-rs will live here: a
//! `RedisChannelLayer` byte-compatible with Python's `channels_redis` 4.x (so Django and Rust
//! processes can share one Redis) and a pub/sub variant.
//!
//! Until it lands, `redis://` layer URLs are refused with a clear error; use `memory://`.
