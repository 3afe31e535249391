//! Signed-cookie sessions and authentication: Django's `SessionMiddleware`,
//! `AuthMiddleware` and `AuthMiddlewareStack`.
//!
//! - [`SessionMiddleware`] reads the session cookie of every request and WebSocket handshake,
//!   checks its signature (HMAC-SHA256 with the application's secret key, compared in constant
//!   time) and its expiry, and puts the [`Session`] in [`Scope::extensions`]. A missing,
//!   tampered, expired or malformed cookie gives an empty session: the client is anonymous,
//!   it is not refused.
//! - [`AuthMiddleware`] reads the user id that [`Session::login`] stored and loads the user
//!   through your [`UserLoader`]; a found user is put in the scope's extensions, where
//!   consumers and handlers take it with `scope.extensions().get::<User>()`.
//! - [`AuthMiddlewareStack`] is both, in order, as one middleware.
//!
//! The session lives entirely in the cookie (nothing is stored on the server), so it suits
//! small values such as a user id. Signing prevents forgery, not reading: do not put secrets in
//! a session. A handler that changes the session sends it back with
//! [`SessionMiddleware::set_cookie`]; signing out is [`SessionMiddleware::clear_cookie`].
//!
//! ```
//! use channels_core::prelude::*;
//! use channels_core::sessions::{AuthMiddlewareStack, Session, SessionMiddleware, UserLoader};
//!
//! #[derive(Clone)]
//! struct User { name: String }
//!
//! struct Users;
//!
//! #[channels_core::async_trait]
//! impl UserLoader for Users {
//!     type User = User;
//!     async fn load_user(&self, id: &str) -> Option<User> {
//!         (id == "1").then(|| User { name: "ann".into() })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use channels_core::middleware::Middleware;
//!
//! let sessions = SessionMiddleware::new(b"a secret key of at least thirty-two bytes".to_vec()).unwrap();
//! let mut session = Session::new();
//! session.login("1");
//! let cookie = sessions.encode(&session); // what `set_cookie` puts in the Set-Cookie header
//!
//! let stack = AuthMiddlewareStack::new(sessions, Users);
//! let mut scope = Scope::websocket("/ws/").with_header("cookie", &format!("sessionid={cookie}"));
//! stack.process(&mut scope).await.unwrap();
//! assert_eq!(scope.extensions().get::<User>().map(|u| u.name.as_str()), Some("ann"));
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::{HeaderValue, header};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::http::HttpResponse;
use crate::middleware::{Middleware, Rejection};
use crate::scope::Scope;

/// The environment variable [`SessionMiddleware::from_env`] reads the secret key from.
pub const SECRET_KEY_ENV_VAR: &str = "CHANNELS_SECRET_KEY";

/// The session key [`Session::login`] stores the user id under (Django's `_auth_user_id`).
pub const USER_ID_KEY: &str = "_auth_user_id";

/// Shortest secret key accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// Separates this use of the key from any other HMAC the application makes with it.
const SIGNING_SALT: &[u8] = b"channels.sessions.SessionMiddleware";

/// Longest cookie value decoded, in bytes (browsers keep at most about 4 KiB per cookie).
const MAX_COOKIE_LEN: usize = 4096;

/// A session: string keys and values, signed into a cookie.
///
/// Middleware puts one in every scope (empty for a client without a valid cookie).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    values: BTreeMap<String, String>,
}

impl Session {
    /// An empty session.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Stores `value` under `key`, replacing any previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.values.insert(key.into(), value.into());
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Records `user_id` as the signed-in user (Django's `login`), clearing everything else, so
    /// nothing from an earlier visitor carries over.
    pub fn login(&mut self, user_id: impl Into<String>) {
        self.values.clear();
        self.values.insert(USER_ID_KEY.to_owned(), user_id.into());
    }

    /// Forgets everything (Django's `logout`).
    pub fn logout(&mut self) {
        self.values.clear();
    }

    /// The signed-in user's id, if any.
    pub fn user_id(&self) -> Option<&str> {
        self.get(USER_ID_KEY)
    }
}

/// Why a secret key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretKeyError {
    /// The key is shorter than [`MIN_SECRET_LEN`] bytes.
    TooShort(usize),
    /// The environment variable is not set (or not valid Unicode).
    Missing(&'static str),
}

impl fmt::Display for SecretKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort(len) => {
                write!(f, "the session secret key has {len} bytes; at least {MIN_SECRET_LEN} are needed")
            }
            Self::Missing(var) => write!(f, "the environment variable {var} holds no session secret key"),
        }
    }
}

impl std::error::Error for SecretKeyError {}

/// What the cookie carries: the values and when they stop being valid.
#[derive(Serialize, Deserialize)]
struct Payload {
    #[serde(rename = "v")]
    values: BTreeMap<String, String>,
    /// Expiry, in seconds since the Unix epoch.
    #[serde(rename = "e")]
    expires: u64,
}

/// Signed-cookie sessions: Django's `SessionMiddleware` with its `signed_cookies` backend.
///
/// The cookie value is `base64url(payload) "." base64url(HMAC-SHA256(key, salt + payload))`;
/// the payload is JSON holding the values and an expiry time. Cookies are `HttpOnly`,
/// `SameSite=Lax` and `Path=/`.
#[derive(Clone)]
pub struct SessionMiddleware {
    inner: Arc<SessionConfig>,
}

#[derive(Clone)]
struct SessionConfig {
    secret: Vec<u8>,
    cookie_name: String,
    max_age: Duration,
    secure: bool,
}

impl fmt::Debug for SessionMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionMiddleware")
            .field("cookie_name", &self.inner.cookie_name)
            .field("max_age", &self.inner.max_age)
            .field("secure", &self.inner.secure)
            .finish_non_exhaustive()
    }
}

impl SessionMiddleware {
    /// Sessions signed with `secret` (at least [`MIN_SECRET_LEN`] bytes), in the cookie
    /// `sessionid`, valid for two weeks (Django's defaults).
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self, SecretKeyError> {
        let secret = secret.into();
        if secret.len() < MIN_SECRET_LEN {
            return Err(SecretKeyError::TooShort(secret.len()));
        }
        Ok(Self {
            inner: Arc::new(SessionConfig {
                secret,
                cookie_name: "sessionid".to_owned(),
                max_age: Duration::from_secs(14 * 24 * 3600),
                secure: false,
            }),
        })
    }

    /// Sessions signed with the key in the environment variable [`SECRET_KEY_ENV_VAR`].
    pub fn from_env() -> Result<Self, SecretKeyError> {
        let secret = std::env::var(SECRET_KEY_ENV_VAR).map_err(|_| SecretKeyError::Missing(SECRET_KEY_ENV_VAR))?;
        Self::new(secret)
    }

    fn config_mut(&mut self) -> &mut SessionConfig {
        Arc::make_mut(&mut self.inner)
    }

    /// Uses the cookie `name` instead of `sessionid`.
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.config_mut().cookie_name = name.into();
        self
    }

    /// How long a session stays valid after [`set_cookie`](Self::set_cookie) signs it.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.config_mut().max_age = max_age;
        self
    }

    /// Marks the cookie `Secure` (sent over HTTPS only); off by default for local development.
    pub fn secure(mut self, secure: bool) -> Self {
        self.config_mut().secure = secure;
        self
    }

    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.inner.cookie_name
    }

    fn mac(&self) -> Hmac<Sha256> {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.inner.secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(SIGNING_SALT);
        mac
    }

    /// Signs `session` into a cookie value, valid for `max_age` from now.
    pub fn encode(&self, session: &Session) -> String {
        let expires = unix_now().saturating_add(self.inner.max_age.as_secs());
        self.encode_until(session, expires)
    }

    fn encode_until(&self, session: &Session, expires: u64) -> String {
        let payload = Payload { values: session.values.clone(), expires };
        let json = match serde_json::to_vec(&payload) {
            Ok(json) => json,
            Err(_) => unreachable!("a map of strings always encodes"),
        };
        let body = URL_SAFE_NO_PAD.encode(json);
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{body}.{tag}")
    }

    /// Checks a cookie value: the session it carries, or `None` if the value is malformed, its
    /// signature does not match (compared in constant time) or it has expired.
    pub fn decode(&self, value: &str) -> Option<Session> {
        if value.len() > MAX_COOKIE_LEN {
            return None;
        }
        let (body, tag) = value.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&tag).ok()?;
        let payload: Payload = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        (payload.expires > unix_now()).then_some(Session { values: payload.values })
    }

    /// The session a scope's cookie carries (empty when there is none or it is not valid).
    pub fn session_of(&self, scope: &Scope) -> Session {
        scope.cookie(&self.inner.cookie_name).and_then(|value| self.decode(&value)).unwrap_or_default()
    }

    fn cookie_attributes(&self, max_age: u64) -> String {
        let secure = if self.inner.secure { "; Secure" } else { "" };
        format!("Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
    }

    /// Adds a `Set-Cookie` header carrying `session`, signed now, to `response`.
    pub fn set_cookie(&self, response: &mut HttpResponse, session: &Session) {
        let value = format!(
            "{}={}; {}",
            self.inner.cookie_name,
            self.encode(session),
            self.cookie_attributes(self.inner.max_age.as_secs())
        );
        self.append(response, value);
    }

    /// Adds a `Set-Cookie` header that deletes the session cookie (signing out).
    pub fn clear_cookie(&self, response: &mut HttpResponse) {
        let value = format!("{}=; {}", self.inner.cookie_name, self.cookie_attributes(0));
        self.append(response, value);
    }

    fn append(&self, response: &mut HttpResponse, value: String) {
        match HeaderValue::try_from(value) {
            Ok(value) => {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            Err(e) => tracing::error!(error = %e, cookie = %self.inner.cookie_name, "invalid session cookie name"),
        }
    }
}

#[async_trait]
impl Middleware for SessionMiddleware {
    async fn process(&self, scope: &mut Scope) -> Result<(), Rejection> {
        let session = self.session_of(scope);
        scope.extensions_mut().insert(session);
        Ok(())
    }
}

/// Loads the signed-in user from the id stored in the session.
///
/// Return `None` for an id that no longer names a user (deleted, disabled): the client is then
/// anonymous.
#[async_trait]
pub trait UserLoader: Send + Sync + 'static {
    /// Your user type; it is cloned into each scope.
    type User: Clone + Send + Sync + 'static;

    /// The user whose id is `user_id`.
    async fn load_user(&self, user_id: &str) -> Option<Self::User>;
}

/// Puts the session's user in the scope: Django's `AuthMiddleware`.
///
/// Runs after [`SessionMiddleware`] (it reads the [`Session`] that one stored). An anonymous
/// client gets no `L::User` in its extensions; refuse it in the consumer or handler, where the
/// reason can be explained.
#[derive(Debug, Clone)]
pub struct AuthMiddleware<L> {
    loader: Arc<L>,
}

impl<L: UserLoader> AuthMiddleware<L> {
    /// Loads users with `loader`.
    pub fn new(loader: L) -> Self {
        Self { loader: Arc::new(loader) }
    }
}

#[async_trait]
impl<L: UserLoader> Middleware for AuthMiddleware<L> {
    async fn process(&self, scope: &mut Scope) -> Result<(), Rejection> {
        let user_id = scope.extensions().get::<Session>().and_then(|s| s.user_id()).map(str::to_owned);
        if let Some(user_id) = user_id
            && let Some(user) = self.loader.load_user(&user_id).await
        {
            scope.extensions_mut().insert(user);
        }
        Ok(())
    }
}

/// Sessions then authentication, as one middleware: Django's `AuthMiddlewareStack`.
#[derive(Debug, Clone)]
pub struct AuthMiddlewareStack<L> {
    sessions: SessionMiddleware,
    auth: AuthMiddleware<L>,
}

impl<L: UserLoader> AuthMiddlewareStack<L> {
    /// Reads sessions with `sessions` and loads their users with `loader`.
    pub fn new(sessions: SessionMiddleware, loader: L) -> Self {
        Self { sessions, auth: AuthMiddleware::new(loader) }
    }

    /// The session half, for handlers that set or clear the cookie.
    pub fn sessions(&self) -> &SessionMiddleware {
        &self.sessions
    }
}

#[async_trait]
impl<L: UserLoader> Middleware for AuthMiddlewareStack<L> {
    async fn process(&self, scope: &mut Scope) -> Result<(), Rejection> {
        self.sessions.process(scope).await?;
        self.auth.process(scope).await
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn sessions() -> SessionMiddleware {
        SessionMiddleware::new(KEY.to_vec()).expect("long enough")
    }

    fn signed_in(id: &str) -> Session {
        let mut session = Session::new();
        session.login(id);
        session
    }

    #[test]
    fn a_signed_session_round_trips() {
        let cookie = sessions().encode(&signed_in("7"));
        assert_eq!(sessions().decode(&cookie).as_ref().and_then(Session::user_id), Some("7"));
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(SessionMiddleware::new(b"short".to_vec()).unwrap_err(), SecretKeyError::TooShort(5));
    }

    #[test]
    fn a_tampered_payload_is_refused() {
        let s = sessions();
        let cookie = s.encode(&signed_in("7"));
        let (_, tag) = cookie.split_once('.').expect("two parts");
        let forged_payload = Payload { values: signed_in("1").values, expires: u64::MAX };
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_payload).expect("json"));
        assert_eq!(s.decode(&format!("{forged_body}.{tag}")), None);
    }

    #[test]
    fn a_tampered_signature_is_refused() {
        let s = sessions();
        let cookie = s.encode(&signed_in("7"));
        let mut bytes = cookie.into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        assert_eq!(s.decode(&tampered), None);
        for junk in ["", ".", "abc", "abc.", ".abc", "a.b.c", "%%%.%%%"] {
            assert_eq!(s.decode(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn another_key_does_not_verify() {
        let cookie = sessions().encode(&signed_in("7"));
        let other = SessionMiddleware::new(b"another key, also thirty-two bytes!".to_vec()).expect("long enough");
        assert_eq!(other.decode(&cookie), None);
    }

    #[test]
    fn an_expired_session_is_refused() {
        let s = sessions();
        let expired = s.encode_until(&signed_in("7"), unix_now() - 1);
        assert_eq!(s.decode(&expired), None);
        let zero_age = s.clone().max_age(Duration::ZERO);
        assert_eq!(zero_age.decode(&zero_age.encode(&signed_in("7"))), None);
    }

    #[test]
    fn cookies_are_http_only_lax_and_site_wide() {
        let s = sessions().cookie_name("sid");
        let mut response = crate::http::text(http::StatusCode::OK, "");
        s.set_cookie(&mut response, &signed_in("7"));
        s.clear_cookie(&mut response);
        let cookies: Vec<&str> =
            response.headers().get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).collect();
        assert_eq!(cookies.len(), 2);
        assert!(cookies[0].starts_with("sid=") && cookies[0].contains("HttpOnly; SameSite=Lax"), "{}", cookies[0]);
        assert!(cookies[0].contains("Path=/") && cookies[0].contains("Max-Age=1209600"), "{}", cookies[0]);
        let value = cookies[0].trim_start_matches("sid=").split(';').next().expect("value");
        assert_eq!(s.decode(value).as_ref().and_then(Session::user_id), Some("7"));
        assert!(cookies[1].starts_with("sid=;") && cookies[1].contains("Max-Age=0"), "{}", cookies[1]);
    }

    #[derive(Clone, Debug, PartialEq)]
    struct User(String);

    struct Users;

    #[async_trait]
    impl UserLoader for Users {
        type User = User;
        async fn load_user(&self, id: &str) -> Option<User> {
            (id == "7").then(|| User("ann".into()))
        }
    }

    async fn user_for(cookie: Option<&str>) -> (Option<User>, Session) {
        let stack = AuthMiddlewareStack::new(sessions(), Users);
        let mut scope = Scope::http(http::Method::GET, "/");
        if let Some(cookie) = cookie {
            scope = scope.with_header("cookie", &format!("theme=dark; sessionid={cookie}"));
        }
        stack.process(&mut scope).await.expect("never refuses");
        let session = scope.extensions().get::<Session>().cloned().expect("always a session");
        (scope.extensions().get::<User>().cloned(), session)
    }

    #[tokio::test]
    async fn the_stack_puts_the_user_in_the_scope() {
        let cookie = sessions().encode(&signed_in("7"));
        assert_eq!(user_for(Some(&cookie)).await.0, Some(User("ann".into())));
    }

    #[tokio::test]
    async fn tampered_expired_or_unknown_sessions_are_anonymous() {
        let s = sessions();
        let mut tampered = s.encode(&signed_in("7"));
        tampered.insert(0, 'x');
        let expired = s.encode_until(&signed_in("7"), unix_now() - 1);
        let unknown_user = s.encode(&signed_in("8"));
        for cookie in [None, Some(tampered.as_str()), Some(expired.as_str())] {
            let (user, session) = user_for(cookie).await;
            assert_eq!(user, None, "{cookie:?}");
            assert!(session.is_empty(), "{cookie:?}");
        }
        let (user, session) = user_for(Some(&unknown_user)).await;
        assert_eq!((user, session.user_id()), (None, Some("8")));
    }
}
