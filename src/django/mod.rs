//! Django's logins, recognised on the Rust side: the user a Django site logged in is the user
//! of the WebSocket connection that carries its `sessionid` cookie.
//!
//! [`DjangoAuth`] is middleware that decides exactly as Django's `SessionMiddleware` and
//! `AuthenticationMiddleware` (Django Channels' `AuthMiddlewareStack`) would:
//! 1. the session named by the cookie (`SESSION_COOKIE_NAME`, default `sessionid`), read by the
//!    configured backend (`SESSION_ENGINE`):
//!    - `signed_cookies`: the cookie is the session, signed by [`signing`] with salt
//!      `django.contrib.sessions.backends.signed_cookies` and at most `SESSION_COOKIE_AGE` old;
//!    - `db`: the unexpired row of `django_session`, its `session_data` signed with salt
//!      `django.contrib.sessions.SessionStore`, on SQLite or PostgreSQL;
//!    - `cache` and `cached_db`: the pickled dict Django's `RedisCache` keeps (read by
//!      [`pickle`], which refuses anything but plain data), `cached_db` falling back to `db`;
//! 2. its `_auth_user_id`, provided `_auth_user_backend` is one of `AUTHENTICATION_BACKENDS`,
//!    looked up in the user table (`auth_user` by default); an inactive user is anonymous;
//! 3. its `_auth_user_hash`, which must be the HMAC of the user's password hash under
//!    `SECRET_KEY` or one of `SECRET_KEY_FALLBACKS`: a logout or a password change in Django
//!    ends the session here too.
//!
//! A signed-in client gets a [`DjangoUser`] in its scope's extensions; any other client is
//! anonymous (no `DjangoUser`), or refused with 403 under [`DjangoAuth::login_required`]. A
//! database that does not answer within [`DjangoAuth::timeout`] refuses the connection with 503.
//!
//! Configuration is a URL, `DJANGO_*` environment variables standing for Django's settings:
//!
//! | URL ([`DjangoAuth::from_url`]) | Django's `SESSION_ENGINE` |
//! |---|---|
//! | `sqlite:///ABSOLUTE/PATH/db.sqlite3` | `django.contrib.sessions.backends.db` on SQLite |
//! | `postgresql://USER[:PW]@HOST:PORT/DB` | `django.contrib.sessions.backends.db` on PostgreSQL |
//! | `signed-cookies:DATABASE_URL` | `django.contrib.sessions.backends.signed_cookies`, users in that database |
//! | `redis://HOST:PORT/DB?key_prefix=P&version=N` | `django.contrib.sessions.backends.cache` on `RedisCache` |
//! | `cached-db:REDIS_URL,DATABASE_URL` | `django.contrib.sessions.backends.cached_db` |
//!
//! URLs that name no database for the user table (`signed-cookies:` alone, `redis://...`) take
//! it from [`DjangoSettings::database_url`] (`DJANGO_DATABASE_URL`).
//!
//! `?user_table=NAME` on the database URL names the table of a custom user model (with the
//! columns of `AbstractUser` and an integer primary key `id`).
//!
//! ```no_run
//! use channels::django::{DjangoAuth, DjangoSettings, DjangoUser};
//! use channels::prelude::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // DJANGO_SECRET_KEY, DJANGO_SECRET_KEY_FALLBACKS, DJANGO_SESSION_COOKIE_NAME, DJANGO_SESSION_COOKIE_AGE
//! let settings = DjangoSettings::from_env()?;
//! let auth = DjangoAuth::from_url("postgresql://django@127.0.0.1:5432/shop", settings)?;
//! let router = Router::new().websocket("/ws/", |scope: &Scope| {
//!     let name = scope.extensions().get::<DjangoUser>().map(|user| user.username.clone());
//!     # struct Consumer; impl WebsocketConsumer for Consumer { type Event = NoEvents; }
//!     # let _ = name; Consumer
//! });
//! let app = Application::builder(router).middleware(auth).build();
//! # let _ = app; Ok(()) }
//! ```

pub mod pickle;
pub mod signing;

mod cache;
mod db;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cache::Cache;
use channels_core::middleware::{Middleware, Rejection, StatusCode};
use channels_core::scope::Scope;
use db::Database;
pub use db::DatabaseError;
use serde_json::{Map, Value};

use self::signing::{TimestampSigner, constant_time_eq, salted_hmac};

/// Salt of the `signed_cookies` session backend.
pub const SIGNED_COOKIES_SALT: &str = "django.contrib.sessions.backends.signed_cookies";
/// Salt of `session_data` in `django_session` (the `db` backend's `SessionStore`).
pub const DB_SESSION_SALT: &str = "django.contrib.sessions.SessionStore";
/// Salt of `_auth_user_hash` (`AbstractBaseUser.get_session_auth_hash`).
pub const SESSION_AUTH_HASH_SALT: &str = "django.contrib.auth.models.AbstractBaseUser.get_session_auth_hash";
/// Django's default `AUTHENTICATION_BACKENDS`.
pub const MODEL_BACKEND: &str = "django.contrib.auth.backends.ModelBackend";
/// Longest cookie value looked at, in bytes (a browser keeps at most about 4 KiB per cookie).
pub const MAX_COOKIE_LEN: usize = 4096;
/// Default of [`DjangoAuth::timeout`]: the server's default handshake timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a Django configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// An environment variable is missing or not valid Unicode.
    MissingEnv(&'static str),
    /// An environment variable or URL holds a value that means nothing here.
    Invalid(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingEnv(var) => write!(f, "the environment variable {var} is not set"),
            Self::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The Django settings the Rust side must share with the Django site.
#[derive(Clone)]
pub struct DjangoSettings {
    secret_key: Vec<u8>,
    secret_key_fallbacks: Vec<Vec<u8>>,
    session_cookie_name: String,
    session_cookie_age: Duration,
    authentication_backends: Vec<String>,
    database_url: Option<String>,
}

impl fmt::Debug for DjangoSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DjangoSettings")
            .field("secret_key_fallbacks", &self.secret_key_fallbacks.len())
            .field("session_cookie_name", &self.session_cookie_name)
            .field("session_cookie_age", &self.session_cookie_age)
            .field("authentication_backends", &self.authentication_backends)
            .finish_non_exhaustive()
    }
}

impl DjangoSettings {
    /// Django's defaults with this `SECRET_KEY`: no fallbacks, cookie `sessionid`, two weeks,
    /// the `ModelBackend`.
    pub fn new(secret_key: impl Into<Vec<u8>>) -> Self {
        Self {
            secret_key: secret_key.into(),
            secret_key_fallbacks: Vec::new(),
            session_cookie_name: "sessionid".to_owned(),
            session_cookie_age: Duration::from_secs(14 * 24 * 3600),
            authentication_backends: vec![MODEL_BACKEND.to_owned()],
            database_url: None,
        }
    }

    /// From the environment: `DJANGO_SECRET_KEY` (required), `DJANGO_SECRET_KEY_FALLBACKS`
    /// (comma-separated), `DJANGO_SESSION_COOKIE_NAME`, `DJANGO_SESSION_COOKIE_AGE` (seconds),
    /// `DJANGO_DATABASE_URL` (see [`database_url`](Self::database_url)).
    pub fn from_env() -> Result<Self, ConfigError> {
        let key = std::env::var("DJANGO_SECRET_KEY").map_err(|_| ConfigError::MissingEnv("DJANGO_SECRET_KEY"))?;
        if key.is_empty() {
            return Err(ConfigError::MissingEnv("DJANGO_SECRET_KEY"));
        }
        let mut settings = Self::new(key);
        if let Ok(fallbacks) = std::env::var("DJANGO_SECRET_KEY_FALLBACKS") {
            settings = settings.secret_key_fallbacks(fallbacks.split(',').filter(|k| !k.is_empty()));
        }
        if let Ok(url) = std::env::var("DJANGO_DATABASE_URL")
            && !url.is_empty()
        {
            settings = settings.database_url(url);
        }
        if let Ok(name) = std::env::var("DJANGO_SESSION_COOKIE_NAME") {
            settings = settings.session_cookie_name(name);
        }
        if let Ok(age) = std::env::var("DJANGO_SESSION_COOKIE_AGE") {
            let secs = age.trim().parse::<u64>().map_err(|_| {
                ConfigError::Invalid(format!("DJANGO_SESSION_COOKIE_AGE={age:?} is not a number of seconds"))
            })?;
            settings = settings.session_cookie_age(Duration::from_secs(secs));
        }
        Ok(settings)
    }

    /// `SECRET_KEY_FALLBACKS`: old keys still accepted, newest first.
    pub fn secret_key_fallbacks<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<Vec<u8>>,
    {
        self.secret_key_fallbacks = keys.into_iter().map(Into::into).collect();
        self
    }

    /// `SESSION_COOKIE_NAME` (default `sessionid`).
    pub fn session_cookie_name(mut self, name: impl Into<String>) -> Self {
        self.session_cookie_name = name.into();
        self
    }

    /// `SESSION_COOKIE_AGE` (default two weeks): the oldest a `signed_cookies` session may be.
    pub fn session_cookie_age(mut self, age: Duration) -> Self {
        self.session_cookie_age = age;
        self
    }

    /// The database of the user table (`sqlite:///PATH` or `postgresql://...`), for session
    /// URLs that name none: `signed-cookies:` and `redis://...`.
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// `AUTHENTICATION_BACKENDS`: a session logged in through another backend is anonymous.
    pub fn authentication_backends<I, S>(mut self, backends: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.authentication_backends = backends.into_iter().map(Into::into).collect();
        self
    }

    fn signer(&self, salt: &str) -> TimestampSigner {
        TimestampSigner::new(self.secret_key.clone(), salt).fallback_keys(self.secret_key_fallbacks.clone())
    }

    /// Whether `hash` is the user's `_auth_user_hash` under the key or a fallback key.
    fn session_hash_matches(&self, hash: &str, password: &str) -> bool {
        std::iter::once(&self.secret_key).chain(&self.secret_key_fallbacks).any(|key| {
            let expected = hex(&salted_hmac(SESSION_AUTH_HASH_SALT, password.as_bytes(), key));
            constant_time_eq(hash.as_bytes(), expected.as_bytes())
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A user logged in by Django, as its `request.user` would be.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DjangoUser {
    /// The primary key.
    pub id: i64,
    /// `username`.
    pub username: String,
    /// `is_staff`.
    pub is_staff: bool,
    /// `is_superuser`.
    pub is_superuser: bool,
    /// The whole session dict, for anything else the site keeps there.
    pub session: Map<String, Value>,
}

/// Why a lookup could not decide (as opposed to deciding "anonymous").
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LookupError {
    /// The database failed.
    Database(DatabaseError),
    /// The database did not answer within the timeout.
    Timeout(Duration),
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Database(e) => e.fmt(f),
            Self::Timeout(t) => write!(f, "the Django session lookup took longer than {t:?}"),
        }
    }
}

impl std::error::Error for LookupError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    SignedCookies,
    Db,
    Cache,
    CachedDb,
}

/// Django's sessions and users as middleware: see the [module documentation](self).
#[derive(Clone)]
pub struct DjangoAuth {
    settings: Arc<DjangoSettings>,
    engine: Engine,
    database: Database,
    cache: Option<Arc<Cache>>,
    timeout: Duration,
    login_required: bool,
}

impl fmt::Debug for DjangoAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DjangoAuth")
            .field("engine", &self.engine)
            .field("database", &self.database)
            .field("cache", &self.cache)
            .field("timeout", &self.timeout)
            .field("login_required", &self.login_required)
            .finish_non_exhaustive()
    }
}

impl DjangoAuth {
    /// Sessions and users as the URL says (see the [module documentation](self)).
    ///
    /// ```
    /// use channels::django::{DjangoAuth, DjangoSettings};
    /// let settings = DjangoSettings::new("django-insecure-key");
    /// assert!(DjangoAuth::from_url("sqlite:///srv/site/db.sqlite3", settings.clone()).is_ok());
    /// assert!(DjangoAuth::from_url("signed-cookies:sqlite:///srv/site/db.sqlite3", settings.clone()).is_ok());
    /// assert!(DjangoAuth::from_url("sqlite://relative/db.sqlite3", settings).is_err());
    /// ```
    pub fn from_url(url: &str, settings: DjangoSettings) -> Result<Self, ConfigError> {
        let url = url.trim();
        let from_settings = || settings.database_url.clone().unwrap_or_default();
        let (engine, cache, database_url) = if let Some(rest) = url.strip_prefix("signed-cookies:") {
            let database = if rest.is_empty() { from_settings() } else { rest.to_owned() };
            (Engine::SignedCookies, None, database)
        } else if let Some(rest) = url.strip_prefix("cached-db:") {
            let (cache, database) = rest.split_once(',').ok_or_else(|| {
                ConfigError::Invalid(format!("{url:?}: write cached-db:redis://HOST:PORT/DB,DATABASE_URL"))
            })?;
            (Engine::CachedDb, Some(Arc::new(Cache::from_url(cache)?)), database.to_owned())
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            (Engine::Cache, Some(Arc::new(Cache::from_url(url)?)), from_settings())
        } else {
            (Engine::Db, None, url.to_owned())
        };
        if database_url.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{url:?} names no database for the user table: set DJANGO_DATABASE_URL (DjangoSettings::database_url) \
                 or write signed-cookies:DATABASE_URL"
            )));
        }
        let database = parse_database(&database_url)?;
        Ok(Self {
            settings: Arc::new(settings),
            engine,
            database,
            cache,
            timeout: DEFAULT_TIMEOUT,
            login_required: false,
        })
    }

    /// The longest a lookup may take before the connection is refused with 503 (default
    /// [`DEFAULT_TIMEOUT`]; keep it within the server's handshake timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Refuses anonymous clients with 403 (default: they pass, without a [`DjangoUser`]).
    pub fn login_required(mut self, required: bool) -> Self {
        self.login_required = required;
        self
    }

    /// The cookie the session key is read from.
    pub fn cookie_name(&self) -> &str {
        &self.settings.session_cookie_name
    }

    /// The user a scope's session cookie belongs to, `Ok(None)` for an anonymous client.
    pub async fn user_of(&self, scope: &Scope) -> Result<Option<DjangoUser>, LookupError> {
        let cookie = django_cookie(scope, &self.settings.session_cookie_name);
        self.user_for_cookie(cookie.as_deref()).await
    }

    /// The user whose session cookie value is `cookie`, `Ok(None)` for none or an anonymous one.
    pub async fn user_for_cookie(&self, cookie: Option<&str>) -> Result<Option<DjangoUser>, LookupError> {
        let Some(cookie) = cookie.filter(|c| !c.is_empty() && c.len() <= MAX_COOKIE_LEN) else { return Ok(None) };
        match tokio::time::timeout(self.timeout, self.lookup(cookie)).await {
            Ok(result) => result.map_err(LookupError::Database),
            Err(_) => Err(LookupError::Timeout(self.timeout)),
        }
    }

    async fn lookup(&self, cookie: &str) -> Result<Option<DjangoUser>, DatabaseError> {
        let Some(session) = self.session(cookie).await? else { return Ok(None) };
        self.user(session).await
    }

    /// The session dict, `None` when there is no valid session.
    async fn session(&self, cookie: &str) -> Result<Option<Map<String, Value>>, DatabaseError> {
        let value = match self.engine {
            Engine::SignedCookies => {
                let signer = self.settings.signer(SIGNED_COOKIES_SALT);
                signer.unsign_object(cookie, Some(self.settings.session_cookie_age)).ok()
            }
            Engine::Db | Engine::Cache | Engine::CachedDb => {
                if !valid_session_key(cookie) {
                    return Ok(None);
                }
                if let Some(cache) = &self.cache {
                    let prefix =
                        if self.engine == Engine::Cache { cache::SESSION_PREFIX } else { cache::CACHED_DB_PREFIX };
                    match cache.session(prefix, cookie).await? {
                        Some(session) => return Ok(Some(session)),
                        None if self.engine == Engine::Cache => return Ok(None),
                        None => {}
                    }
                }
                let Some(data) = self.database.session_data(cookie).await? else { return Ok(None) };
                self.settings.signer(DB_SESSION_SALT).unsign_object(&data, None).ok()
            }
        };
        Ok(match value {
            Some(Value::Object(map)) => Some(map),
            _ => None,
        })
    }

    /// Django's `get_user`: the session's user, if its backend, activity and hash agree.
    async fn user(&self, session: Map<String, Value>) -> Result<Option<DjangoUser>, DatabaseError> {
        let backend = session.get("_auth_user_backend").and_then(Value::as_str);
        if !backend.is_some_and(|b| self.settings.authentication_backends.iter().any(|known| known == b)) {
            return Ok(None);
        }
        let id = match session.get("_auth_user_id") {
            Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
            Some(Value::Number(n)) => n.as_i64(),
            _ => None,
        };
        let Some(id) = id else { return Ok(None) };
        let Some(row) = self.database.user(id).await? else { return Ok(None) };
        if !row.is_active {
            return Ok(None);
        }
        let hash = session.get("_auth_user_hash").and_then(Value::as_str).unwrap_or_default();
        if hash.is_empty() || !self.settings.session_hash_matches(hash, &row.password) {
            return Ok(None);
        }
        Ok(Some(DjangoUser {
            id,
            username: row.username,
            is_staff: row.is_staff,
            is_superuser: row.is_superuser,
            session,
        }))
    }
}

/// The cookie `name` as Django's `parse_cookie` reads it: every `Cookie` header, split on `;`,
/// names and values trimmed, the last occurrence winning, quoted values unquoted, and nothing
/// percent-decoded.
fn django_cookie(scope: &Scope, name: &str) -> Option<String> {
    let mut found = None;
    for header in scope.headers().get_all("cookie") {
        let Ok(header) = header.to_str() else { continue };
        for chunk in header.split(';') {
            let (key, value) = chunk.split_once('=').unwrap_or(("", chunk));
            if key.trim() == name {
                found = Some(unquote(value.trim()));
            }
        }
    }
    found
}

/// Python's `http.cookies._unquote`: a value in double quotes loses them, and its `\ooo`
/// (octal) and `\c` escapes are decoded.
fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).filter(|_| value.len() >= 2) else {
        return value.to_owned();
    };
    let bytes = inner.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            let octal = bytes
                .get(i + 1..i + 4)
                .filter(|d| d.iter().all(|b| (b'0'..=b'3').contains(&d[0]) && (b'0'..=b'7').contains(b)));
            match octal {
                Some(d) => {
                    out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                    i += 4;
                }
                None => {
                    out.push(bytes[i + 1]);
                    i += 2;
                }
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Django makes session keys of 32 characters from `[a-z0-9]`; its table holds at most 40.
/// Anything else cannot name a session, so it never reaches the database.
fn valid_session_key(key: &str) -> bool {
    (8..=40).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn parse_database(url: &str) -> Result<Database, ConfigError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut user_table = "auth_user".to_owned();
    let mut passed_on = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("user_table", table)) => user_table = table.to_owned(),
            _ => passed_on.push(pair),
        }
    }
    let table = db::quoted_table(&user_table)
        .ok_or_else(|| ConfigError::Invalid(format!("user_table={user_table:?} is not a table name")))?;
    if let Some(path) = base.strip_prefix("sqlite://") {
        if !path.starts_with('/') || !passed_on.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{url:?}: write sqlite:///ABSOLUTE/PATH/db.sqlite3 (three slashes, an absolute path)"
            )));
        }
        return Ok(Database::sqlite(PathBuf::from(path), &table));
    }
    if base.starts_with("postgresql://") || base.starts_with("postgres://") {
        let url = if passed_on.is_empty() { base.to_owned() } else { format!("{base}?{}", passed_on.join("&")) };
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| ConfigError::Invalid(format!("{base:?} is not a PostgreSQL URL: {e}")))?;
        return Ok(Database::postgres(config, &table));
    }
    Err(ConfigError::Invalid(format!(
        "{url:?} is not a Django session store: use sqlite:///PATH, postgresql://USER@HOST:PORT/DB or signed-cookies:DATABASE_URL"
    )))
}

#[async_trait]
impl Middleware for DjangoAuth {
    async fn process(&self, scope: &mut Scope) -> Result<(), Rejection> {
        match self.user_of(scope).await {
            Ok(Some(user)) => {
                scope.extensions_mut().insert(user);
                Ok(())
            }
            Ok(None) if self.login_required => Err(Rejection::new(StatusCode::FORBIDDEN, "log in first")),
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "refusing a connection: no answer from the Django session store");
                Err(Rejection::new(StatusCode::SERVICE_UNAVAILABLE, "the session store is unavailable"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_as_django_reads_them() {
        let scope = Scope::websocket("/")
            .with_header("cookie", "sessionid=first; a=1")
            .with_header("cookie", " sessionid = %61bc ; b");
        assert_eq!(django_cookie(&scope, "sessionid").as_deref(), Some("%61bc"), "last wins, no percent-decoding");
        assert_eq!(django_cookie(&scope, "missing"), None);
        assert_eq!(unquote(r#""a\"b\073c""#), "a\"b;c");
        assert_eq!(unquote("\""), "\"");
    }

    #[test]
    fn session_keys_that_django_cannot_make_are_refused() {
        assert!(valid_session_key("abcdefgh0123456789abcdefgh012345"));
        for bad in ["short", "ABCDEFGHIJKL", "abc' OR '1'='1", "a".repeat(41).as_str(), "abcdefgh;--"] {
            assert!(!valid_session_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn urls_name_a_backend_and_a_database() {
        let s = DjangoSettings::new("k");
        assert_eq!(DjangoAuth::from_url("sqlite:///a/db.sqlite3", s.clone()).map(|a| a.engine), Ok(Engine::Db));
        let signed = DjangoAuth::from_url("signed-cookies:postgresql://u@127.0.0.1:5432/d", s.clone());
        assert_eq!(signed.map(|a| a.engine), Ok(Engine::SignedCookies));
        for bad in [
            "signed-cookies:",
            "sqlite://db.sqlite3",
            "mysql://x",
            "sqlite:///a?user_table=x;drop",
            "postgresql://u@h/d?user_table=a.b.c",
        ] {
            assert!(DjangoAuth::from_url(bad, s.clone()).is_err(), "{bad:?}");
        }
    }
}
