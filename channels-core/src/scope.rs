//! The scope: everything known about a connection when it arrives.

use std::borrow::Cow;
use std::net::SocketAddr;

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// Which protocol a scope belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    /// A WebSocket connection.
    Websocket,
    /// A plain HTTP request.
    Http,
}

/// What is known about a connection: Django's `scope` dict, typed.
///
/// Middleware may add typed values with [`Scope::extensions_mut`] (an authenticated user, a
/// session); consumers read them with [`Scope::extensions`].
///
/// ```
/// use channels_core::scope::Scope;
/// let scope = Scope::websocket("/ws/chat/lobby/?user=ann%20b")
///     .with_header("cookie", "theme=dark; sid=42")
///     .with_param("room", "lobby");
/// assert_eq!(scope.param("room"), Some("lobby"));
/// assert_eq!(scope.query_param("user").as_deref(), Some("ann b"));
/// assert_eq!(scope.cookie("sid").as_deref(), Some("42"));
/// ```
pub struct Scope {
    kind: ScopeKind,
    /// Where the query string starts in `raw_path_and_query`.
    query_start: usize,
    method: Method,
    /// The decoded path, kept only when decoding changed it.
    path: Option<Box<str>>,
    /// The raw path followed by the raw query string (without `?`): one allocation for both,
    /// kept by every connection for its life.
    raw_path_and_query: Box<str>,
    /// The headers, packed: a `HeaderMap` costs about 1 KiB even for a handful of headers,
    /// and most connections never need one.
    header_block: HeaderBlock,
    /// Built from `header_block` the first time [`Scope::headers`] is called.
    header_map: OnceLock<Box<HeaderMap>>,
    client: Option<SocketAddr>,
    server: Option<SocketAddr>,
    subprotocols: Box<[String]>,
    params: Box<[(String, String)]>,
    extensions: http::Extensions,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("kind", &self.kind)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("raw_path", &self.raw_path())
            .field("query_string", &self.query_string())
            .field("header_block", &self.header_block)
            .field("header_map", &self.header_map)
            .field("client", &self.client)
            .field("server", &self.server)
            .field("subprotocols", &self.subprotocols)
            .field("params", &self.params)
            .field("extensions", &self.extensions)
            .finish()
    }
}

impl Scope {
    /// Builds a scope from a request's parts, as the server does.
    pub fn from_request(
        kind: ScopeKind,
        method: Method,
        uri: &http::Uri,
        headers: HeaderMap,
        client: Option<SocketAddr>,
        server: Option<SocketAddr>,
    ) -> Self {
        let raw_path = uri.path();
        let query = uri.query().unwrap_or("");
        let query_start = raw_path.len();
        let subprotocols = if kind == ScopeKind::Websocket {
            headers
                .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        } else {
            Box::default()
        };
        Self {
            kind,
            query_start,
            method,
            path: match percent_decode(raw_path, false) {
                Cow::Owned(decoded) => Some(decoded.into()),
                Cow::Borrowed(_) => None,
            },
            raw_path_and_query: [raw_path, query].concat().into(),
            header_block: HeaderBlock::new(&headers),
            header_map: OnceLock::new(),
            client,
            server,
            subprotocols,
            params: Box::default(),
            extensions: http::Extensions::new(),
        }
    }

    /// A WebSocket scope for `path_and_query`, for tests and tools.
    pub fn websocket(path_and_query: &str) -> Self {
        Self::synthetic(ScopeKind::Websocket, Method::GET, path_and_query)
    }

    /// An HTTP scope for `method` and `path_and_query`, for tests and tools.
    pub fn http(method: Method, path_and_query: &str) -> Self {
        Self::synthetic(ScopeKind::Http, method, path_and_query)
    }

    fn synthetic(kind: ScopeKind, method: Method, path_and_query: &str) -> Self {
        let uri: http::Uri = path_and_query.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        Self::from_request(kind, method, &uri, HeaderMap::new(), None, None)
    }

    /// Adds a header (ignored if the name or value is not valid HTTP).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let (Ok(n), Ok(v)) = (http::HeaderName::try_from(name), http::HeaderValue::try_from(value)) {
            if n == http::header::SEC_WEBSOCKET_PROTOCOL {
                let offered = value.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned);
                self.subprotocols = self.subprotocols.iter().cloned().chain(offered).collect();
            }
            self.header_block.push(n.as_str(), v.as_bytes());
            self.header_map = OnceLock::new();
        }
        self
    }

    /// Adds a route parameter.
    pub fn with_param(mut self, name: &str, value: &str) -> Self {
        let param = (name.to_owned(), value.to_owned());
        self.params = self.params.iter().cloned().chain([param]).collect();
        self
    }

    /// The address of the client as a trusted proxy reported it
    /// ([`TrustedProxies`](crate::middleware::TrustedProxies)).
    pub(crate) fn set_client(&mut self, client: Option<SocketAddr>) {
        self.client = client;
    }

    pub(crate) fn set_params(&mut self, params: Vec<(String, String)>) {
        self.params = params.into_boxed_slice();
    }

    /// WebSocket or HTTP.
    pub fn kind(&self) -> ScopeKind {
        self.kind
    }

    /// The request method (`GET` for WebSockets).
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The percent-decoded path.
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or(self.raw_path())
    }

    /// The path as it arrived, still percent-encoded.
    pub fn raw_path(&self) -> &str {
        &self.raw_path_and_query[..self.query_start]
    }

    /// The raw query string, without `?`, still percent-encoded.
    pub fn query_string(&self) -> &str {
        &self.raw_path_and_query[self.query_start..]
    }

    /// The query parameters, decoded, in order.
    pub fn query(&self) -> Vec<(String, String)> {
        parse_query(self.query_string())
    }

    /// The first value of query parameter `name`, decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        self.header_map.get_or_init(|| {
            let mut map = HeaderMap::with_capacity(self.header_block.len());
            for (name, value) in self.header_block.iter() {
                if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                    map.append(name, value);
                }
            }
            Box::new(map)
        })
    }

    /// The values of header `name` that are visible ASCII (as [`HeaderValue::to_str`] asks).
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + use<'a> {
        let name = name.to_ascii_lowercase();
        self.header_block
            .iter()
            .filter(move |(n, _)| *n == name.as_bytes())
            .filter(|(_, v)| v.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The first value of header `name`, if it is visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).next()
    }

    /// The cookies of the `Cookie` header(s), in order.
    pub fn cookies(&self) -> Vec<(String, String)> {
        self.header_values("cookie")
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                let v = v.trim().trim_matches('"');
                Some((k.trim().to_owned(), percent_decode(v, false).into_owned()))
            })
            .collect()
    }

    /// The value of cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The peer's address, when known.
    pub fn client(&self) -> Option<SocketAddr> {
        self.client
    }

    /// The local address the connection arrived on, when known.
    pub fn server(&self) -> Option<SocketAddr> {
        self.server
    }

    /// The subprotocols the client offered, in its order.
    pub fn subprotocols(&self) -> &[String] {
        &self.subprotocols
    }

    /// The route capture `name` (`{room}` in `/ws/chat/{room}/`), percent-decoded.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every route capture, in order.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// Typed values set by middleware.
    pub fn extensions(&self) -> &http::Extensions {
        &self.extensions
    }

    /// Typed values set by middleware, mutably.
    pub fn extensions_mut(&mut self) -> &mut http::Extensions {
        &mut self.extensions
    }
}

/// Request headers in two allocations: their names and values back to back, and where each
/// ends. Names are lowercase (as `HeaderName` keeps them); order and repeats are kept.
#[derive(Debug, Default)]
struct HeaderBlock {
    bytes: Box<[u8]>,
    /// For each header, the end of its name and the end of its value in `bytes`.
    ends: Box<[(u32, u32)]>,
}

impl HeaderBlock {
    fn new(headers: &HeaderMap) -> Self {
        let size = headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
        let mut bytes = Vec::with_capacity(size);
        let mut ends = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            bytes.extend_from_slice(name.as_str().as_bytes());
            let name_end = bytes.len() as u32;
            bytes.extend_from_slice(value.as_bytes());
            ends.push((name_end, bytes.len() as u32));
        }
        Self { bytes: bytes.into(), ends: ends.into() }
    }

    fn push(&mut self, name: &str, value: &[u8]) {
        let mut bytes = std::mem::take(&mut self.bytes).into_vec();
        bytes.extend_from_slice(name.as_bytes());
        let name_end = bytes.len() as u32;
        bytes.extend_from_slice(value);
        let mut ends = std::mem::take(&mut self.ends).into_vec();
        ends.push((name_end, bytes.len() as u32));
        *self = Self { bytes: bytes.into(), ends: ends.into() };
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            let pair = (&self.bytes[start..name_end], &self.bytes[name_end..value_end]);
            start = value_end;
            pair
        })
    }
}

/// Splits an `application/x-www-form-urlencoded` string into decoded pairs.
pub(crate) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true).into_owned(), percent_decode(v, true).into_owned())
        })
        .collect()
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`); invalid UTF-8 is replaced.
pub(crate) fn percent_decode(input: &str, plus_is_space: bool) -> Cow<'_, str> {
    if !input.bytes().any(|b| b == b'%' || (plus_is_space && b == b'+')) {
        return Cow::Borrowed(input);
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b", false), "a b");
        assert_eq!(percent_decode("a+b", true), "a b");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("%E4%B8%AD", false), "中");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
        assert_eq!(percent_decode("%ff", false), "\u{fffd}");
    }

    #[test]
    fn query_pairs() {
        assert_eq!(
            parse_query("a=1&b=x%26y&&c"),
            vec![("a".into(), "1".into()), ("b".into(), "x&y".into()), ("c".into(), "".into())]
        );
    }

    #[test]
    fn subprotocols_come_from_the_header() {
        let uri: http::Uri = "/ws/".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("sec-websocket-protocol", "v1, v2".parse().unwrap());
        let scope = Scope::from_request(ScopeKind::Websocket, Method::GET, &uri, headers, None, None);
        assert_eq!(scope.subprotocols(), ["v1", "v2"]);
    }
}
