//! What a path serves: a WebSocket consumer (its factory, limits, and the handshake that
//! starts it) or an HTTP handler. The router maps paths to these; the runtime runs them.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::config::WebsocketLimits;
use crate::consumer::WebsocketConsumer;
use crate::http::HttpHandler;
use crate::layer::ChannelLayers;
use crate::membership::Shutdown;
use crate::metrics::Hot;
use crate::runtime::{self, Handshake};
use crate::scope::Scope;

/// A WebSocket endpoint with its consumer type erased.
pub(crate) trait WebsocketEndpoint: Send + Sync + 'static {
    fn handshake<'a>(
        &'a self,
        scope: Scope,
        layers: &'a ChannelLayers,
        limits: &'a Arc<WebsocketLimits>,
        shutdown: Shutdown,
        metrics: Option<Arc<Hot>>,
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

impl<C, F> fmt::Debug for WebsocketRoute<C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebsocketRoute")
            .field("consumer", &std::any::type_name::<C>())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
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
        shutdown: Shutdown,
        metrics: Option<Arc<Hot>>,
    ) -> BoxFuture<'a, Handshake> {
        let consumer = (self.factory)(&scope);
        Box::pin(runtime::handshake(consumer, scope, layers, limits.clone(), shutdown, metrics))
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

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Websocket(_) => "Endpoint::Websocket",
            Self::Http(_) => "Endpoint::Http",
        })
    }
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
