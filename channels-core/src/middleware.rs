//! Middleware: code that sees every connection's scope before its consumer or handler does.

use std::fmt;

use async_trait::async_trait;
pub use http::StatusCode;

use crate::scope::{Scope, ScopeKind};

/// A refusal from middleware: the connection gets this HTTP status (before any upgrade).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status sent to the client.
    pub status: StatusCode,
    /// Why, for the log and the response body.
    pub reason: String,
}

impl Rejection {
    /// A rejection with `status` and `reason`.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self { status, reason: reason.into() }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.reason)
    }
}

impl std::error::Error for Rejection {}

/// Sees (and may change or refuse) every scope, in the order middleware was added.
///
/// Typical uses: check the `Origin`, read a session cookie and put the user in
/// [`Scope::extensions_mut`], refuse unauthenticated clients.
///
/// ```
/// use channels_core::middleware::{Middleware, Rejection};
/// use channels_core::scope::Scope;
///
/// #[derive(Clone)]
/// struct User(String);
///
/// struct TokenAuth;
///
/// #[channels_core::async_trait]
/// impl Middleware for TokenAuth {
///     async fn process(&self, scope: &mut Scope) -> Result<(), Rejection> {
///         match scope.query_param("token").as_deref() {
///             Some("s3cret") => {
///                 scope.extensions_mut().insert(User("ann".into()));
///                 Ok(())
///             }
///             _ => Err(Rejection::new(channels_core::middleware::StatusCode::FORBIDDEN, "bad token")),
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait Middleware: Send + Sync + 'static {
    /// Processes one scope.
    async fn process(&self, scope: &mut Scope) -> Result<(), Rejection>;
}

/// Refuses WebSocket connections whose `Origin` is not allowed, as Django's
/// `OriginValidator` / `AllowedHostsOriginValidator` do; HTTP requests pass untouched.
///
/// Patterns: `"*"` allows any origin; `"example.com"` allows that host on any scheme and
/// port; `".example.com"` allows it and its subdomains; `"https://example.com:8443"` allows
/// exactly that scheme, host and port (default ports filled in).
///
/// A connection without an `Origin` header is refused unless `"*"` is allowed or
/// [`allow_missing_origin`](Self::allow_missing_origin) is set. Browsers always send `Origin`,
/// so allowing its absence lets non-browser clients in without opening a cross-site hole.
///
/// ```
/// use channels_core::middleware::OriginValidator;
/// let v = OriginValidator::new(["localhost", ".example.com"]);
/// assert!(v.is_allowed("http://localhost:8000"));
/// assert!(v.is_allowed("https://chat.example.com"));
/// assert!(!v.is_allowed("https://evil.com"));
/// ```
#[derive(Debug, Clone)]
pub struct OriginValidator {
    allowed: Vec<String>,
    allow_missing: bool,
}

impl OriginValidator {
    /// Allows the given patterns.
    pub fn new<I, S>(allowed: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self { allowed: allowed.into_iter().map(|s| s.into().to_ascii_lowercase()).collect(), allow_missing: false }
    }

    /// Django's debug default: `localhost`, `127.0.0.1` and `[::1]`.
    pub fn localhost() -> Self {
        Self::new(["localhost", "127.0.0.1", "[::1]"])
    }

    /// Also lets in clients that send no `Origin` (non-browser clients).
    pub fn allow_missing_origin(mut self, allow: bool) -> Self {
        self.allow_missing = allow;
        self
    }

    /// Whether an `Origin` header value is allowed.
    pub fn is_allowed(&self, origin: &str) -> bool {
        let Some(origin) = ParsedOrigin::parse(origin) else { return false };
        self.allowed.iter().any(|pattern| {
            if pattern == "*" {
                return true;
            }
            match ParsedOrigin::parse(pattern) {
                Some(p) if pattern.contains("://") => p == origin,
                _ => host_matches(pattern, &origin.host),
            }
        })
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('.') {
        Some(domain) => host == domain || host.strip_suffix(pattern).is_some_and(|sub| !sub.is_empty()),
        None => host == pattern,
    }
}

#[derive(Debug, PartialEq, Eq)]
struct ParsedOrigin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl ParsedOrigin {
    fn parse(origin: &str) -> Option<Self> {
        let origin = origin.trim().to_ascii_lowercase();
        let (scheme, rest) = origin.split_once("://").unwrap_or(("", origin.as_str()));
        let authority = rest.split(['/', '?', '#']).next()?;
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(authority[i + 1..].parse().ok()?)),
            _ => (authority, None),
        };
        let default_port = match scheme {
            "http" | "ws" => Some(80),
            "https" | "wss" => Some(443),
            _ => None,
        };
        Some(Self { scheme: scheme.to_owned(), host: host.to_owned(), port: port.or(default_port) })
    }
}

#[async_trait]
impl Middleware for OriginValidator {
    async fn process(&self, scope: &mut Scope) -> Result<(), Rejection> {
        if scope.kind() != ScopeKind::Websocket {
            return Ok(());
        }
        let allowed = match scope.header("origin") {
            Some(origin) => self.is_allowed(origin),
            None => self.allow_missing || self.allowed.iter().any(|p| p == "*"),
        };
        if allowed {
            Ok(())
        } else {
            let origin: String = scope.header("origin").unwrap_or("(none)").chars().take(200).collect();
            Err(Rejection::new(StatusCode::FORBIDDEN, format!("origin {origin} is not allowed")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_django() {
        let v = OriginValidator::new(["example.com", ".sub.org", "https://exact.net:8443"]);
        assert!(v.is_allowed("http://example.com"));
        assert!(v.is_allowed("https://example.com:444"));
        assert!(!v.is_allowed("http://www.example.com"));
        assert!(v.is_allowed("http://a.sub.org"));
        assert!(v.is_allowed("http://sub.org"));
        assert!(!v.is_allowed("http://evilsub.org"));
        assert!(v.is_allowed("https://exact.net:8443"));
        assert!(!v.is_allowed("http://exact.net:8443"));
        assert!(!v.is_allowed("https://exact.net"));
    }

    #[test]
    fn hostile_origins_are_refused() {
        let v = OriginValidator::localhost();
        for bad in
            ["", "null", "http://", "http://localhost@evil.com", "http://localhost.evil.com", "http://127.0.0.1:99999"]
        {
            assert!(!v.is_allowed(bad), "{bad:?}");
        }
        assert!(v.is_allowed("http://[::1]:8000"));
    }

    #[tokio::test]
    async fn missing_origin_is_refused_unless_allowed() {
        let mut scope = Scope::websocket("/ws/");
        assert!(OriginValidator::localhost().process(&mut scope).await.is_err());
        assert!(OriginValidator::localhost().allow_missing_origin(true).process(&mut scope).await.is_ok());
        assert!(OriginValidator::new(["*"]).process(&mut scope).await.is_ok());
    }
}
