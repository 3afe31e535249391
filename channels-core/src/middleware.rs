//! Middleware: code that sees every connection's scope before its consumer or handler does.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

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

/// Takes the client's address from `X-Forwarded-For`, but only on connections from the
/// proxies you name: without it (the default) the scope's [`client`](Scope::client) is the
/// connection's peer, and a header anyone can send is ignored.
///
/// On a connection from a trusted proxy the client is the right-most address of
/// `X-Forwarded-For` that is not itself a trusted proxy (each proxy appends the address it
/// got the request from, so the addresses to its left are the client's word). Its port is 0:
/// the header carries none. The proxy's own address is kept in the scope's extensions as a
/// [`ForwardedBy`]. A header that does not parse leaves the peer's address in place.
///
/// Add it before any middleware that reads the client's address.
///
/// ```
/// use channels_core::middleware::{Middleware, TrustedProxies};
/// use channels_core::scope::Scope;
///
/// let proxies = TrustedProxies::new(["127.0.0.1", "10.0.0.0/8"]).unwrap();
/// assert!(proxies.is_trusted("10.1.2.3".parse().unwrap()));
/// assert!(!proxies.is_trusted("192.0.2.1".parse().unwrap()));
/// assert!(TrustedProxies::new(["10.0.0.0/33"]).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    networks: Vec<(IpAddr, u8)>,
}

/// The address of the trusted proxy a connection came through; see [`TrustedProxies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedBy(pub SocketAddr);

impl TrustedProxies {
    /// Trusts the given addresses (`"127.0.0.1"`, `"::1"`) and networks (`"10.0.0.0/8"`).
    ///
    /// # Errors
    /// The first entry that is neither, named.
    pub fn new<I, S>(proxies: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let networks = proxies
            .into_iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                let bad = || format!("not an IP address or network: {entry:?}");
                let (addr, prefix) = match entry.split_once('/') {
                    Some((addr, prefix)) => (addr, Some(prefix.parse::<u8>().map_err(|_| bad())?)),
                    None => (entry, None),
                };
                let addr: IpAddr = addr.parse().map_err(|_| bad())?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                match prefix.unwrap_or(max) {
                    prefix if prefix <= max => Ok((addr, prefix)),
                    _ => Err(bad()),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { networks })
    }

    /// Whether `addr` is one of the trusted proxies.
    pub fn is_trusted(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.networks.iter().any(|&(network, prefix)| match (network, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }

    /// The client `X-Forwarded-For` names, for a request that came from a trusted proxy.
    fn forwarded_client(&self, header: &str) -> Option<IpAddr> {
        let mut last = None;
        for hop in header.rsplit(',') {
            let addr: IpAddr = hop.trim().parse().ok()?;
            last = Some(addr);
            if !self.is_trusted(addr) {
                break;
            }
        }
        last
    }
}

#[async_trait]
impl Middleware for TrustedProxies {
    async fn process(&self, scope: &mut Scope) -> Result<(), Rejection> {
        let Some(peer) = scope.client() else { return Ok(()) };
        if !self.is_trusted(peer.ip()) {
            return Ok(());
        }
        // Several headers count as one list, in order.
        let header = scope
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().ok())
            .collect::<Option<Vec<_>>>()
            .map(|values| values.join(","));
        let Some(client) = header.filter(|h| !h.trim().is_empty()).and_then(|h| self.forwarded_client(&h)) else {
            return Ok(());
        };
        scope.extensions_mut().insert(ForwardedBy(peer));
        scope.set_client(Some(SocketAddr::new(client, 0)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(peer: &str, forwarded: Option<&str>) -> Scope {
        let uri = http::Uri::from_static("/");
        let mut headers = http::HeaderMap::new();
        if let Some(value) = forwarded {
            headers.insert("x-forwarded-for", http::HeaderValue::from_str(value).unwrap());
        }
        Scope::from_request(ScopeKind::Http, http::Method::GET, &uri, headers, peer.parse().ok(), None)
    }

    #[tokio::test]
    async fn forwarded_for_counts_only_from_trusted_proxies() {
        let proxies = TrustedProxies::new(["127.0.0.1", "10.0.0.0/8"]).unwrap();
        let cases = [
            // (peer, X-Forwarded-For, the client the scope ends with)
            ("127.0.0.1:5000", Some("203.0.113.7"), "203.0.113.7:0"),
            ("127.0.0.1:5000", Some("6.6.6.6, 203.0.113.7, 10.1.1.1"), "203.0.113.7:0"),
            ("192.0.2.9:5000", Some("203.0.113.7"), "192.0.2.9:5000"),
            ("127.0.0.1:5000", None, "127.0.0.1:5000"),
            ("127.0.0.1:5000", Some("not-an-address"), "127.0.0.1:5000"),
            ("[::ffff:10.0.0.1]:5000", Some("2001:db8::1"), "[2001:db8::1]:0"),
        ];
        for (peer, forwarded, expected) in cases {
            let mut scope = from(peer, forwarded);
            proxies.process(&mut scope).await.unwrap();
            assert_eq!(scope.client(), expected.parse().ok(), "{peer} {forwarded:?}");
        }
        assert!(TrustedProxies::new(["300.1.1.1"]).is_err());
        assert!(TrustedProxies::new(["::1/129"]).is_err());
    }

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
