//! The application: routes, channel layers, middleware and limits, served by [`crate::server`],
//! by any hyper server you already run, or in-process by the test communicators.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as HttpBody, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::config::{WebsocketLimits, setters};
use crate::context::Acceptance;
use crate::frame::close_code;
use crate::http::{HttpRequest, HttpResponse, full, text};
use crate::io::{LeanIo, WsStream};
use crate::layer::{BackendError, ChannelLayer, ChannelLayers};
use crate::membership::Shutdown;
use crate::metrics::{Metrics, OpenConnection};
use crate::middleware::{Middleware, Rejection};
use crate::routing::{CompiledRouter, Endpoints, Resolved, Router};
use crate::runtime::{Finished, Handshake, Session, Upgrading};
use crate::scope::{Scope, ScopeKind};
use crate::tasks::Tasks;

/// Application-wide limits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppLimits {
    /// Open WebSocket connections at most; further upgrades get 503. Default 10,000.
    pub max_connections: usize,
    /// Largest HTTP request body; larger ones get 413. Default 1 MiB.
    pub max_http_body_size: usize,
    /// How long shutdown waits for connections to close and run `disconnect`. Default 10 s.
    pub shutdown_timeout: Duration,
}

impl Default for AppLimits {
    fn default() -> Self {
        Self { max_connections: 10_000, max_http_body_size: 1 << 20, shutdown_timeout: Duration::from_secs(10) }
    }
}

impl AppLimits {
    setters! {
        /// Sets [`max_connections`](Self::max_connections).
        max_connections: usize,
        /// Sets [`max_http_body_size`](Self::max_http_body_size).
        max_http_body_size: usize,
        /// Sets [`shutdown_timeout`](Self::shutdown_timeout).
        shutdown_timeout: Duration,
    }
}

struct Inner {
    router: CompiledRouter,
    /// Shared with every HTTP request, for the handlers that send.
    layers: Arc<ChannelLayers>,
    middleware: Vec<Arc<dyn Middleware>>,
    websocket_limits: Arc<WebsocketLimits>,
    limits: AppLimits,
    connections: Arc<Semaphore>,
    tasks: Tasks,
    /// The shutdown as connections see it (over `tasks`' signal).
    shutdown: Shutdown,
    metrics: Option<Metrics>,
}

/// A routed application with its channel layers: what Django's `asgi.py` `application` is.
///
/// Cheap to clone (a reference count); every clone is the same application.
///
/// ```no_run
/// use channels_core::prelude::*;
/// # struct Echo;
/// # impl WebsocketConsumer for Echo { type Event = NoEvents; }
/// # async fn demo(layer: std::sync::Arc<dyn channels_core::layer::ChannelLayer>) -> std::io::Result<()> {
/// let app = Application::builder(Router::new().websocket("/ws/echo/", |_: &Scope| Echo))
///     .layer(layer)
///     .build();
/// Server::bind("127.0.0.1:8000").await?.serve(app).await
/// # }
/// ```
#[derive(Clone)]
pub struct Application {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Application")
            .field("routes", &inner.router)
            .field("layers", &inner.layers)
            .field("middleware", &inner.middleware.len())
            .field("websocket_limits", &inner.websocket_limits)
            .field("limits", &inner.limits)
            .field("open_connections", &self.open_connections())
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}

/// Builds an [`Application`].
pub struct ApplicationBuilder {
    router: Router,
    layers: ChannelLayers,
    middleware: Vec<Arc<dyn Middleware>>,
    websocket_limits: WebsocketLimits,
    limits: AppLimits,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for ApplicationBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplicationBuilder")
            .field("router", &self.router)
            .field("layers", &self.layers)
            .field("middleware", &self.middleware.len())
            .field("websocket_limits", &self.websocket_limits)
            .field("limits", &self.limits)
            .finish()
    }
}

impl ApplicationBuilder {
    /// Sets the default channel layer.
    pub fn layer(mut self, layer: Arc<dyn ChannelLayer>) -> Self {
        self.layers = self.layers.with_default(layer);
        self
    }

    /// Sets every channel layer at once (aliases included).
    pub fn layers(mut self, layers: ChannelLayers) -> Self {
        self.layers = layers;
        self
    }

    /// Adds middleware; it runs after the middleware added before it.
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// Sets the WebSocket limits for routes that do not set their own.
    pub fn websocket_limits(mut self, limits: WebsocketLimits) -> Self {
        self.websocket_limits = limits;
        self
    }

    /// Sets the application-wide limits.
    pub fn limits(mut self, limits: AppLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Counts what the application does into `metrics` (off by default); serve them with
    /// [`Metrics::handler`]. See [`crate::metrics`] for what is counted.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Builds the application.
    ///
    /// # Panics
    /// On a route matchit rejects (see [`Router::route`]).
    pub fn build(self) -> Application {
        let tasks = Tasks::new();
        let layers = match &self.metrics {
            Some(metrics) => self.layers.iter().fold(ChannelLayers::new(), |layers, (alias, layer)| {
                layers.with_alias(alias, metrics.metered_layer(alias, layer.clone()))
            }),
            None => self.layers,
        };
        Application {
            inner: Arc::new(Inner {
                router: self.router.compile(),
                layers: Arc::new(layers),
                middleware: self.middleware,
                websocket_limits: Arc::new(self.websocket_limits),
                connections: Arc::new(Semaphore::new(self.limits.max_connections)),
                limits: self.limits,
                shutdown: Shutdown::new(tasks.shutdown_token().clone()),
                tasks,
                metrics: self.metrics,
            }),
        }
    }
}

/// The outcome of a WebSocket handshake, before any socket exists.
pub(crate) enum Upgrade {
    Accept {
        acceptance: Acceptance,
        session: Session,
        limits: Arc<WebsocketLimits>,
        permit: tokio::sync::OwnedSemaphorePermit,
        /// Counts the connection open, when metrics are on.
        guard: Option<OpenConnection>,
    },
    Refuse {
        status: StatusCode,
        // Read by the testing module only.
        #[cfg_attr(not(feature = "testing"), allow(dead_code))]
        code: u16,
        reason: String,
    },
}

impl Application {
    /// Starts building an application around `router`.
    pub fn builder(router: Router) -> ApplicationBuilder {
        ApplicationBuilder {
            router,
            layers: ChannelLayers::new(),
            middleware: Vec::new(),
            websocket_limits: WebsocketLimits::default(),
            limits: AppLimits::default(),
            metrics: None,
        }
    }

    /// The metrics the application counts into, if they are on.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.inner.metrics.as_ref()
    }

    fn denied(&self, reason: &'static str) {
        if let Some(metrics) = &self.inner.metrics {
            metrics.denied(reason);
        }
    }

    /// The configured channel layers.
    pub fn layers(&self) -> &ChannelLayers {
        &self.inner.layers
    }

    /// The application-wide limits.
    pub fn limits(&self) -> &AppLimits {
        &self.inner.limits
    }

    /// Asks every channel layer whether its backend answers ([`ChannelLayer::ping`], at most
    /// 5 s each) and returns, by alias, those that do not, with why. [`Server`](crate::Server)
    /// does this at start-up and warns about each; call it yourself when you serve the
    /// application from a hyper server of your own.
    pub async fn unreachable_layers(&self) -> Vec<(String, BackendError)> {
        const LIMIT: Duration = Duration::from_secs(5);
        let mut unreachable = Vec::new();
        for (alias, layer) in self.inner.layers.iter() {
            let error = match tokio::time::timeout(LIMIT, layer.ping()).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(_) => format!("no answer within {LIMIT:?}").into(),
            };
            unreachable.push((alias.to_owned(), error));
        }
        unreachable
    }

    /// Open WebSocket connections right now.
    pub fn open_connections(&self) -> usize {
        self.inner.limits.max_connections - self.inner.connections.available_permits()
    }

    /// True once [`shutdown`](Self::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.tasks.is_shutting_down()
    }

    /// Closes every WebSocket with 1001 and waits, up to the shutdown timeout, for their
    /// `disconnect` hooks. Returns how many connections were still open when it gave up.
    ///
    /// The connections closing leave their groups together, in bulk
    /// ([`ChannelLayer::group_discard_many`]), before their `disconnect` hooks run, and the
    /// layers stay in use until the last of them is done. `disconnect` hooks that fail only
    /// because their connection is closed are summed up in one warning.
    pub async fn shutdown(&self) -> usize {
        let left = self.inner.tasks.shut_down(self.inner.limits.shutdown_timeout).await;
        let failed = self.inner.shutdown.take_failed_on_closed();
        if failed > 0 {
            tracing::warn!(failed, "disconnect handlers failed at shutdown because their connections were closed");
        }
        left
    }

    /// Where connections' tasks run, and the shutdown signal they watch (the test communicator
    /// runs its sessions there).
    #[cfg(feature = "testing")]
    pub(crate) fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    pub(crate) fn shutdown_token(&self) -> &tokio_util::sync::CancellationToken {
        self.inner.tasks.shutdown_token()
    }

    async fn scope_through_middleware(&self, mut scope: Scope) -> Result<Scope, Rejection> {
        for middleware in &self.inner.middleware {
            middleware.process(&mut scope).await?;
        }
        Ok(scope)
    }

    fn resolve(&self, scope: &mut Scope) -> Option<(Endpoints, Option<String>)> {
        match self.inner.router.resolve(scope.raw_path()) {
            Resolved::Found { endpoints, params } => {
                scope.set_params(params);
                Some((endpoints.clone(), None))
            }
            Resolved::Slash { endpoints, params, canonical } => {
                scope.set_params(params);
                Some((endpoints.clone(), Some(canonical)))
            }
            Resolved::NotFound => None,
        }
    }

    /// Routes a WebSocket scope and runs the consumer's handshake (groups and `connect`).
    pub(crate) async fn websocket_handshake(&self, scope: Scope) -> Upgrade {
        let refuse = |status: StatusCode, reason: String| Upgrade::Refuse { status, code: close_code::NORMAL, reason };
        if self.is_shutting_down() {
            self.denied("shutting_down");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down".into());
        }
        let mut scope = match self.scope_through_middleware(scope).await {
            Ok(scope) => scope,
            Err(rejection) => {
                tracing::info!(status = %rejection.status, reason = %rejection.reason, "websocket refused by middleware");
                self.denied("middleware");
                return refuse(rejection.status, rejection.reason);
            }
        };
        let Some((route, endpoint)) = self.resolve(&mut scope).and_then(|(e, _)| Some((e.route.clone(), e.websocket?)))
        else {
            self.denied("no_route");
            return refuse(StatusCode::FORBIDDEN, format!("no websocket route for {}", scope.path()));
        };
        let Ok(permit) = self.inner.connections.clone().try_acquire_owned() else {
            tracing::warn!(max = self.inner.limits.max_connections, "connection limit reached; refusing a websocket");
            self.denied("connection_limit");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many connections".into());
        };
        let limits = endpoint.limits().unwrap_or(&self.inner.websocket_limits).clone();
        let metrics = self.inner.metrics.as_ref().map(|m| m.hot().clone());
        match endpoint.handshake(scope, &self.inner.layers, &limits, self.inner.shutdown.clone(), metrics).await {
            Handshake::Accept { acceptance, session } => {
                let guard = self.inner.metrics.as_ref().map(|m| m.websocket_opened(&route));
                Upgrade::Accept { acceptance, session, limits, permit, guard }
            }
            Handshake::Deny { status, code } => {
                self.denied(if status == StatusCode::SERVICE_UNAVAILABLE { "unavailable" } else { "denied" });
                Upgrade::Refuse { status, code, reason: "websocket connection denied".into() }
            }
        }
    }

    /// Routes and answers an HTTP request whose body has been collected.
    #[cfg(feature = "testing")]
    pub(crate) async fn http_request(&self, scope: Scope, body: Bytes) -> HttpResponse {
        Box::pin(self.clone().route_http(scope, body)).await.await
    }

    /// Everything before an HTTP handler runs: middleware, routing, redirects.
    async fn route_http(self, scope: Scope, body: Bytes) -> Routed {
        let mut scope = match self.scope_through_middleware(scope).await {
            Ok(scope) => scope,
            Err(rejection) => return answered(text(rejection.status, rejection.reason)),
        };
        let Some((endpoints, canonical)) = self.resolve(&mut scope) else {
            return answered(text(StatusCode::NOT_FOUND, "not found"));
        };
        let Some(handler) = endpoints.http else {
            return answered(text(StatusCode::UPGRADE_REQUIRED, "this path takes WebSocket connections only"));
        };
        if let Some(canonical) = canonical
            && matches!(*scope.method(), Method::GET | Method::HEAD)
        {
            let query = scope.query_string();
            let location = slash_redirect(&canonical);
            let location = if query.is_empty() { location } else { format!("{location}?{query}") };
            let mut response = text(StatusCode::PERMANENT_REDIRECT, "");
            if let Ok(value) = HeaderValue::try_from(location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            return answered(response);
        }
        let path = scope.path().to_owned();
        let metrics = self.inner.metrics.clone().map(|metrics| (metrics, endpoints.route.clone()));
        let request =
            HttpRequest { scope, body, layers: self.inner.layers.clone(), tasks: self.inner.tasks.clone(), metrics };
        let call = AssertUnwindSafe(handler.call(request));
        let metrics = self.inner.metrics.clone();
        Box::pin(async move {
            match call.catch_unwind().await {
                Ok(response) => response,
                Err(_) => {
                    if let Some(metrics) = &metrics {
                        metrics.http_panic();
                    }
                    tracing::error!(%path, "HTTP handler panicked; answering 500");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
                }
            }
        })
    }

    /// Answers one hyper request: an HTTP request, or a WebSocket upgrade.
    ///
    /// `client` and `server` are the connection's addresses, for the scope.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: Option<SocketAddr>,
        server: Option<SocketAddr>,
    ) -> HttpResponse {
        Box::pin(self.clone().route(request, client, server)).await.await
    }

    /// [`Self::handle`] up to the handler: a WebSocket upgrade, or an HTTP request's body
    /// read and the request routed.
    async fn route<B>(self, mut request: Request<B>, client: Option<SocketAddr>, server: Option<SocketAddr>) -> Routed
    where
        B: HttpBody + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        if hyper_tungstenite::is_upgrade_request(&request) {
            return answered(self.upgrade(&mut request, client, server).await);
        }
        let (parts, body) = request.into_parts();
        let scope = Scope::from_request(ScopeKind::Http, parts.method, &parts.uri, parts.headers, client, server);
        let body = match Limited::new(body, self.inner.limits.max_http_body_size).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return answered(text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"));
            }
            Err(_) => return answered(text(StatusCode::BAD_REQUEST, "could not read the request body")),
        };
        self.route_http(scope, body).await
    }

    async fn upgrade<B>(
        &self,
        request: &mut Request<B>,
        client: Option<SocketAddr>,
        server: Option<SocketAddr>,
    ) -> HttpResponse {
        let accept = match check_handshake(request) {
            Ok(key) => derive_accept_key(key),
            Err((status, problem)) => {
                self.denied("bad_request");
                let mut response = text(status, format!("bad websocket handshake: {problem}"));
                if status == StatusCode::UPGRADE_REQUIRED {
                    // RFC 6455 4.4: name the versions the server speaks.
                    response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
                }
                return response;
            }
        };
        let headers = std::mem::take(request.headers_mut());
        let scope =
            Scope::from_request(ScopeKind::Websocket, request.method().clone(), request.uri(), headers, client, server);
        let (acceptance, session, limits, permit) = match self.websocket_handshake(scope).await {
            Upgrade::Accept { acceptance, session, limits, permit, guard } => {
                (acceptance, session, limits, (permit, guard))
            }
            Upgrade::Refuse { status, reason, .. } => return text(status, reason),
        };
        let on_upgrade = hyper::upgrade::on(&mut *request);
        let config = limits.tungstenite_config();
        let upgrading: Upgrading = Box::pin(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = LeanIo::new(TokioIo::new(upgraded));
                    let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    Some(Box::new(socket) as WsStream)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    None
                }
            }
        });
        let (permit, metrics) = permit;
        session(&self.inner.tasks, upgrading, Finished { permit, done: None, metrics });
        let mut response = HttpResponse::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::try_from(accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = acceptance.subprotocol.as_deref().and_then(|p| HeaderValue::try_from(p).ok()) {
            response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        for (name, value) in acceptance.headers {
            response.headers_mut().append(name, value);
        }
        response
    }

    /// This application as a hyper service for one connection, to mount it in a hyper server
    /// you already run. Serve the connection `with_upgrades()` so WebSockets work.
    pub fn service(&self, client: Option<SocketAddr>, server: Option<SocketAddr>) -> AppService {
        AppService { app: self.clone(), client, server }
    }
}

/// Checks what RFC 6455 asks of an upgrade request before any consumer code runs, and returns
/// the client's key: 400 for a malformed request, 426 for a protocol version other than 13.
fn check_handshake<B>(request: &Request<B>) -> Result<&[u8], (StatusCode, &'static str)> {
    let bad = |problem| Err((StatusCode::BAD_REQUEST, problem));
    if request.method() != Method::GET {
        return bad("the method must be GET");
    }
    let header = |name| request.headers().get(name).map(HeaderValue::as_bytes);
    match header(header::SEC_WEBSOCKET_VERSION) {
        Some(b"13") => {}
        Some(_) => return Err((StatusCode::UPGRADE_REQUIRED, "Sec-WebSocket-Version must be 13")),
        None => return bad("Sec-WebSocket-Version is missing"),
    }
    // A key is 16 random bytes in base64: 22 characters and "==".
    match header(header::SEC_WEBSOCKET_KEY) {
        Some(key)
            if key.len() == 24
                && key.ends_with(b"==")
                && key[..22].iter().all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/') =>
        {
            Ok(key)
        }
        _ => bad("Sec-WebSocket-Key must be 16 bytes in base64"),
    }
}

/// An [`Application`] as a `hyper::service::Service` for one connection.
#[derive(Clone, Debug)]
pub struct AppService {
    app: Application,
    client: Option<SocketAddr>,
    server: Option<SocketAddr>,
}

impl hyper::service::Service<Request<Incoming>> for AppService {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        // Not `handle`: an `async fn` keeps room for its arguments, the request here, for as
        // long as it runs.
        let routing = Box::pin(self.app.clone().route(request, self.client, self.server));
        Box::pin(async move { Ok(routing.await.await) })
    }
}

/// The client's address of a request, for an [`Application`] served as a tower service.
///
/// [`Server`](crate::Server) and [`AppService`] know their connection's addresses; a
/// request reaching the application through another server (axum, say) carries them, if at
/// all, in its extensions: put a `ClientAddr` (and a [`ServerAddr`]) there and the scope's
/// [`client`](Scope::client) (and [`server`](Scope::server)) is set from it. Without one it is
/// `None`. With axum, serve the router `into_make_service_with_connect_info::<SocketAddr>()`
/// and copy axum's `ConnectInfo` into the request:
///
/// ```ignore
/// use axum::extract::{ConnectInfo, Request};
/// use channels_core::application::ClientAddr;
///
/// let router = router.layer(axum::middleware::map_request(
///     |ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>, mut request: Request| async move {
///         request.extensions_mut().insert(ClientAddr(addr));
///         request
///     },
/// ));
/// axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await?;
/// ```
///
/// A proxy's `X-Forwarded-For` is a different matter: see
/// [`TrustedProxies`](crate::middleware::TrustedProxies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// The server's address of a request (the local end of its connection), like [`ClientAddr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerAddr(pub SocketAddr);

/// The error a request body may fail with.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The application as a [tower](https://docs.rs/tower) service, for any request body: mount it
/// in an axum `Router` (`route_service`, `nest_service`, `fallback_service`) or wrap it in
/// tower layers. It routes the request with its own [`Router`] (the path axum passes on: with
/// `nest_service` the prefix is stripped), upgrades WebSockets (the server must serve its
/// connections with upgrades, as `axum::serve` does) and takes the scope's addresses from
/// [`ClientAddr`] and [`ServerAddr`] in the request's extensions.
///
/// Shut the application down yourself when your server stops:
/// [`shutdown`](Application::shutdown) closes the WebSockets with 1001 and runs their
/// `disconnect` hooks, which no HTTP server does for upgraded connections.
///
/// ```
/// use std::convert::Infallible;
/// use channels_core::prelude::*;
/// use tower_service::Service;
///
/// # async fn demo() -> Result<(), Infallible> {
/// use channels_core::application::ClientAddr;
/// use channels_core::http::{HttpRequest, text};
/// use http_body_util::BodyExt;
///
/// let mut app = Application::builder(Router::new().http("/hello", |request: HttpRequest| async move {
///     text(StatusCode::OK, format!("hello {:?}", request.scope.client()))
/// }))
/// .build();
/// let mut request = http::Request::get("/hello").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
/// request.extensions_mut().insert(ClientAddr("192.0.2.1:4000".parse().unwrap()));
/// let response = app.call(request).await?;
/// assert_eq!(response.status(), StatusCode::OK);
/// let body = response.into_body().collect().await?.to_bytes();
/// assert_eq!(body, "hello Some(192.0.2.1:4000)");
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
impl<B> tower_service::Service<Request<B>> for Application
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let client = request.extensions().get::<ClientAddr>().map(|a| a.0);
        let server = request.extensions().get::<ServerAddr>().map(|a| a.0);
        let routing = Box::pin(self.clone().route(request, client, server));
        Box::pin(async move { Ok(routing.await.await) })
    }
}

/// What is left of a request once it is routed: its answer, or its handler's run (panics
/// caught).
///
/// Routing runs in a future of its own, freed before the handler starts. A future is as big
/// as its biggest state, so otherwise every request would keep the upgrade's, the body's and
/// the middleware's state for as long as its handler waits: a held long poll, for minutes.
type Routed = futures_util::future::BoxFuture<'static, HttpResponse>;

/// The `Location` of the redirect to `canonical`, a path that differs from the request's by a
/// trailing slash: a reference relative to the request's own URL (`./room/`, `../file`), so it
/// stays right under whatever prefix a router mounting the application (axum's
/// `nest_service`) or a proxy took off the path before the application saw it.
fn slash_redirect(canonical: &str) -> String {
    fn last_segment(path: &str) -> &str {
        path.rsplit('/').next().unwrap_or_default()
    }
    match canonical.strip_suffix('/').map(last_segment) {
        // `/a/room` → `/a/room/`: the last segment again, with its slash.
        Some(segment) if !segment.is_empty() => format!("./{segment}/"),
        // `/a/file/` → `/a/file`: up out of the "directory" `file/`, then the segment.
        None if !last_segment(canonical).is_empty() => format!("../{}", last_segment(canonical)),
        // An empty segment (`//` → `/`) has no relative form.
        _ => canonical.to_owned(),
    }
}

/// A request answered without a handler (refused, redirected, upgraded).
fn answered(response: HttpResponse) -> Routed {
    Box::pin(std::future::ready(response))
}
