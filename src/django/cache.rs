//! Sessions in Django's `RedisCache`: the `cache` and `cached_db` session engines.

use std::fmt;

use serde_json::{Map, Value};

use super::ConfigError;
use super::db::DatabaseError;
use super::pickle;

/// The `cache` engine's key prefix (`django.contrib.sessions.backends.cache.KEY_PREFIX`).
pub(crate) const SESSION_PREFIX: &str = "django.contrib.sessions.cache";
/// The `cached_db` engine's key prefix.
pub(crate) const CACHED_DB_PREFIX: &str = "django.contrib.sessions.cached_db";

/// A Redis server as Django's `CACHES["default"]` names it: `LOCATION`, `KEY_PREFIX`, `VERSION`.
pub(crate) struct Cache {
    client: redis::Client,
    key_prefix: String,
    version: i64,
    connection: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("location", &self.client.get_connection_info().addr().to_string())
            .field("key_prefix", &self.key_prefix)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// `redis://HOST:PORT/DB?key_prefix=P&version=N` (Django's defaults: empty prefix, version 1).
    pub(crate) fn from_url(url: &str) -> Result<Cache, ConfigError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let (mut key_prefix, mut version) = (String::new(), 1i64);
        let mut passed_on = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("key_prefix", prefix)) => key_prefix = prefix.to_owned(),
                Some(("version", v)) => {
                    version = v.parse().map_err(|_| ConfigError::Invalid(format!("version={v:?} is not an integer")))?
                }
                _ => passed_on.push(pair),
            }
        }
        let location = if passed_on.is_empty() { base.to_owned() } else { format!("{base}?{}", passed_on.join("&")) };
        let client = redis::Client::open(location.as_str())
            .map_err(|e| ConfigError::Invalid(format!("{base:?} is not a Redis URL: {e}")))?;
        Ok(Cache { client, key_prefix, version, connection: tokio::sync::Mutex::new(None) })
    }

    /// The session dict stored under `prefix` + `session_key`, `None` when there is none or it
    /// is not a pickled dict of the allowed subset.
    pub(crate) async fn session(
        &self,
        prefix: &str,
        session_key: &str,
    ) -> Result<Option<Map<String, Value>>, DatabaseError> {
        let key = format!("{}:{}:{prefix}{session_key}", self.key_prefix, self.version);
        let mut connection = self.connection().await?;
        let value: Option<Vec<u8>> = match redis::cmd("GET").arg(&key).query_async(&mut connection).await {
            Ok(value) => value,
            Err(e) => {
                *self.connection.lock().await = None;
                return Err(DatabaseError(format!("Redis: {e}")));
            }
        };
        let Some(bytes) = value else { return Ok(None) };
        match pickle::loads(&bytes) {
            Ok(Value::Object(session)) => Ok(Some(session)),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "a cached Django session was refused");
                Ok(None)
            }
        }
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, DatabaseError> {
        let mut current = self.connection.lock().await;
        if let Some(connection) = current.as_ref() {
            return Ok(connection.clone());
        }
        let connection =
            self.client.get_multiplexed_async_connection().await.map_err(|e| DatabaseError(format!("Redis: {e}")))?;
        *current = Some(connection.clone());
        Ok(connection)
    }
}
