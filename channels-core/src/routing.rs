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

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::config::WebsocketLimits;
use crate::consumer::WebsocketConsumer;
use crate::http::HttpHandler;
use crate::layer::ChannelLayers;
use crate::runtime::{self, Handshake};
use crate::scope::Scope;

/// A WebSocket endpoint with its consumer type erased.
pub(crate) trait WebsocketEndpoint: Send + Sync + 'static {
    fn handshake<'a>(
        &'a self,
        scope: Scope,
        layers: &'a ChannelLayers,
        limits: &'a Arc<WebsocketLimits>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'a, Handshake>;

    fn limits(&self) -> Option<&Arc<WebsocketLimits>>;
}

/// A WebSocket route: how to build a consumer for a connection, and optional limits of its own.
pub struct WebsocketRoute<C, F> {
    factory: F,
    limits: Option<Arc<WebsocketLimits>>,
    consumer: PhantomData<fn() -> C>,
}

/// A WebSocket route whose consumers `factory` builds from the connection's scope (Django's
/// `Consumer.as_asgi()`).
///
/// ```
/// use channels_core::prelude::*;
/// use channels_core::routing::websocket;
///
/// struct Echo;
/// impl WebsocketConsumer for Echo {
///     type Event = NoEvents;
/// }
///
/// let router = Router::new().route("/ws/echo/", websocket(|_: &Scope| Echo).limits(
///     WebsocketLimits::default().max_message_size(16 << 20),
/// ));
/// ```
pub fn websocket<C, F>(factory: F) -> WebsocketRoute<C, F>
where
    C: WebsocketConsumer,
    F: Fn(&Scope) -> C + Send + Sync + 'static,
{
    WebsocketRoute { factory, limits: None, consumer: PhantomData }
}

impl<C, F> WebsocketRoute<C, F> {
    /// Limits for this route instead of the application's.
    pub fn limits(mut self, limits: WebsocketLimits) -> Self {
        self.limits = Some(Arc::new(limits));
        self
    }
}

impl<C, F> WebsocketEndpoint for WebsocketRoute<C, F>
where
    C: WebsocketConsumer,
    F: Fn(&Scope) -> C + Send + Sync + 'static,
{
    fn handshake<'a>(
        &'a self,
        scope: Scope,
        layers: &'a ChannelLayers,
        limits: &'a Arc<WebsocketLimits>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'a, Handshake> {
        let consumer = (self.factory)(&scope);
        Box::pin(runtime::handshake(consumer, scope, layers, limits.clone(), shutdown))
    }

    fn limits(&self) -> Option<&Arc<WebsocketLimits>> {
        self.limits.as_ref()
    }
}

/// What can be mounted on a path.
pub enum Endpoint {
    /// A WebSocket consumer.
    #[allow(private_interfaces)]
    Websocket(Arc<dyn WebsocketEndpoint>),
    /// An HTTP handler.
    Http(Arc<dyn HttpHandler>),
}

impl<C, F> From<WebsocketRoute<C, F>> for Endpoint
where
    C: WebsocketConsumer,
    F: Fn(&Scope) -> C + Send + Sync + 'static,
{
    fn from(route: WebsocketRoute<C, F>) -> Self {
        Endpoint::Websocket(Arc::new(route))
    }
}

/// The endpoints mounted on one path.
#[derive(Clone, Default)]
pub(crate) struct Endpoints {
    pub(crate) websocket: Option<Arc<dyn WebsocketEndpoint>>,
    pub(crate) http: Option<Arc<dyn HttpHandler>>,
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
#[derive(Default)]
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
    /// If the path already has an endpoint of the same kind (a programming error, reported
    /// when the router is built, as axum does).
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
        for (path, endpoints) in self.routes {
            if let Err(e) = matcher.insert(path.clone(), endpoints) {
                panic!("invalid route {path:?}: {e}");
            }
        }
        CompiledRouter { matcher }
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
