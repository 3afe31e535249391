//! URL routing: WebSocket consumers and HTTP handlers side by side, with `{name}` captures.
//!
//! Paths use [matchit](https://docs.rs/matchit) syntax: `{room}` captures one segment,
//! `{*rest}` the (non-empty) remainder; static segments win over captures. Captured values are
//! percent-decoded before consumers see them.
//!
//! **Trailing slashes.** Routes match exactly as written. A request whose path differs from a
//! route only by a trailing slash is still served: an HTTP `GET`/`HEAD` is redirected (308) to
//! the route's form, and a WebSocket (which browsers cannot redirect) is served directly. So
//! `/ws/chat/{room}/` answers `/ws/chat/lobby` too, and Django-style patterns keep working.
//! The redirect's `Location` is relative to the request (`./lobby/`, `../file`), so it keeps
//! any prefix a mounting router or a proxy removed from the path.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::consumer::WebsocketConsumer;
use crate::endpoint::WebsocketEndpoint;
pub use crate::endpoint::{Endpoint, WebsocketRoute, websocket};
use crate::http::HttpHandler;
use crate::scope::Scope;

/// The endpoints mounted on one path.
#[derive(Clone, Default)]
pub(crate) struct Endpoints {
    /// The route's path as it was mounted (`/ws/chat/{room}/`), for the metrics' labels.
    pub(crate) route: Arc<str>,
    pub(crate) websocket: Option<Arc<dyn WebsocketEndpoint>>,
    pub(crate) http: Option<Arc<dyn HttpHandler>>,
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds = [self.websocket.as_ref().map(|_| "websocket"), self.http.as_ref().map(|_| "http")];
        f.debug_list().entries(kinds.iter().flatten()).finish()
    }
}

/// Maps paths to WebSocket consumers and HTTP handlers: Django's `ProtocolTypeRouter` and
/// `URLRouter` in one.
///
/// ```
/// use channels_core::prelude::*;
/// use channels_core::http::page;
///
/// struct Chat { room: String }
/// impl WebsocketConsumer for Chat {
///     type Event = NoEvents;
/// }
///
/// let router = Router::new()
///     .websocket("/ws/chat/{room}/", |scope: &Scope| Chat {
///         room: scope.param("room").unwrap_or_default().to_owned(),
///     })
///     .http("/", page("text/html", "<p>chat</p>"));
/// ```
#[derive(Debug, Default)]
pub struct Router {
    routes: BTreeMap<String, Endpoints>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mounts a WebSocket consumer built by `factory` on `path`.
    pub fn websocket<C, F>(self, path: &str, factory: F) -> Self
    where
        C: WebsocketConsumer,
        F: Fn(&Scope) -> C + Send + Sync + 'static,
    {
        self.route(path, websocket(factory))
    }

    /// Mounts an HTTP handler on `path`.
    pub fn http(self, path: &str, handler: impl HttpHandler) -> Self {
        self.route(path, Endpoint::Http(Arc::new(handler)))
    }

    /// Mounts an endpoint on `path`. A path may have one WebSocket and one HTTP endpoint.
    ///
    /// # Panics
    /// If the path already has an endpoint of the same kind: a programming error, so `route`
    /// panics where it is called rather than when the application is built.
    pub fn route(mut self, path: &str, endpoint: impl Into<Endpoint>) -> Self {
        let slot = self.routes.entry(path.to_owned()).or_default();
        let taken = match endpoint.into() {
            Endpoint::Websocket(ws) => slot.websocket.replace(ws).is_some(),
            Endpoint::Http(h) => slot.http.replace(h).is_some(),
        };
        assert!(!taken, "route {path:?} is mounted twice for the same protocol");
        self
    }

    /// Mounts every route of `other` under `prefix` (`/api` + `/items/{id}` = `/api/items/{id}`).
    pub fn nest(mut self, prefix: &str, other: Router) -> Self {
        let prefix = prefix.trim_end_matches('/');
        for (path, endpoints) in other.routes {
            let slot = self.routes.entry(format!("{prefix}{path}")).or_default();
            assert!(
                !(slot.websocket.is_some() && endpoints.websocket.is_some()
                    || slot.http.is_some() && endpoints.http.is_some()),
                "nested route {prefix}{path:?} is mounted twice"
            );
            slot.websocket = slot.websocket.take().or(endpoints.websocket);
            slot.http = slot.http.take().or(endpoints.http);
        }
        self
    }

    /// Compiles the routes.
    ///
    /// # Panics
    /// On a path matchit rejects (two captures in one segment, conflicting captures).
    pub(crate) fn compile(self) -> CompiledRouter {
        let mut matcher = matchit::Router::new();
        let mut paths = Vec::with_capacity(self.routes.len());
        for (path, mut endpoints) in self.routes {
            endpoints.route = path.as_str().into();
            if let Err(e) = matcher.insert(path.clone(), endpoints) {
                panic!("invalid route {path:?}: {e}");
            }
            paths.push(path);
        }
        CompiledRouter { matcher, paths }
    }
}

/// How a path resolved.
pub(crate) enum Resolved<'a> {
    Found {
        endpoints: &'a Endpoints,
        params: Vec<(String, String)>,
    },
    /// The path differs from a route by a trailing slash.
    Slash {
        endpoints: &'a Endpoints,
        params: Vec<(String, String)>,
        canonical: String,
    },
    NotFound,
}

pub(crate) struct CompiledRouter {
    matcher: matchit::Router<Endpoints>,
    /// The routes' paths, for `Debug`: the matcher's tree is not something to read.
    paths: Vec<String>,
}

impl fmt::Debug for CompiledRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.paths).finish()
    }
}

impl CompiledRouter {
    pub(crate) fn resolve(&self, raw_path: &str) -> Resolved<'_> {
        let params = |m: &matchit::Match<'_, '_, &Endpoints>| {
            let mut list = Vec::with_capacity(m.params.len());
            list.extend(
                m.params.iter().map(|(k, v)| (k.to_owned(), crate::scope::percent_decode(v, false).into_owned())),
            );
            list
        };
        if let Ok(m) = self.matcher.at(raw_path) {
            return Resolved::Found { endpoints: m.value, params: params(&m) };
        }
        let canonical = match raw_path.strip_suffix('/') {
            Some(stripped) if !stripped.is_empty() => stripped.to_owned(),
            Some(_) => return Resolved::NotFound,
            None => format!("{raw_path}/"),
        };
        let found = self.matcher.at(&canonical).ok().map(|m| (m.value, params(&m)));
        match found {
            Some((endpoints, params)) => Resolved::Slash { endpoints, params, canonical },
            None => Resolved::NotFound,
        }
    }
}
