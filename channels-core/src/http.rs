//! Plain HTTP endpoints beside the WebSocket ones: pages, static files, small APIs.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use crate::layer::ChannelLayers;
use crate::metrics::{Metrics, OpenConnection, Transport};
use crate::scope::Scope;
use crate::tasks::Tasks;

/// The body type of every response the application produces.
pub type Body = BoxBody<Bytes, Infallible>;

/// An HTTP response.
pub type HttpResponse = http::Response<Body>;

/// An HTTP request as handlers see it: the scope and the whole body (collected up to the
/// application's `max_http_body_size`).
pub struct HttpRequest {
    /// Method, path, query, headers, route params, addresses and middleware extensions.
    pub scope: Scope,
    /// The request body.
    pub body: Bytes,
    /// The application's channel layers, for handlers that send.
    pub(crate) layers: Arc<ChannelLayers>,
    /// Where an HTTP consumer spawns the task that outlives its handler.
    pub(crate) tasks: Tasks,
    /// The application's metrics, if on, and the route's path, for an HTTP consumer's counts.
    pub(crate) metrics: Option<(Metrics, Arc<str>)>,
}

impl HttpRequest {
    /// The channel layers of the application serving the request, for handlers that send.
    ///
    /// ```
    /// use channels_core::http::{HttpRequest, HttpResponse, text};
    /// use http::StatusCode;
    ///
    /// async fn announce(request: HttpRequest) -> HttpResponse {
    ///     let Some(layer) = request.layers().default_layer() else {
    ///         return text(StatusCode::SERVICE_UNAVAILABLE, "no channel layer");
    ///     };
    ///     let _ = layer.config();
    ///     text(StatusCode::OK, "announced")
    /// }
    /// ```
    pub fn layers(&self) -> &ChannelLayers {
        &self.layers
    }

    /// The application's metrics, when they are on: for a handler that serves a transport of
    /// its own to count its messages ([`Metrics::count_sent`], [`Metrics::count_received`]).
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref().map(|(metrics, _)| metrics)
    }

    /// When metrics are on, counts this request as a connection of `transport` on its route,
    /// open until the returned value drops (see [`Metrics::open_connection`]): for a handler
    /// that holds the request, a long poll of its own say. `None` with metrics off.
    ///
    /// ```
    /// use channels_core::http::{HttpRequest, HttpResponse, text};
    /// use channels_core::metrics::Transport;
    /// use http::StatusCode;
    ///
    /// async fn poll(request: HttpRequest) -> HttpResponse {
    ///     let _open = request.open_connection(Transport::LongPoll);
    ///     tokio::time::sleep(std::time::Duration::from_millis(10)).await; // waiting for events
    ///     if let Some(metrics) = request.metrics() {
    ///         metrics.count_sent(Transport::LongPoll, 0, 2);
    ///     }
    ///     text(StatusCode::OK, "[]")
    /// }
    /// ```
    pub fn open_connection(&self, transport: Transport) -> Option<OpenConnection> {
        self.metrics.as_ref().map(|(metrics, route)| metrics.open_connection(transport, route))
    }
}

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest").field("scope", &self.scope).field("body", &self.body.len()).finish()
    }
}

/// Something that answers HTTP requests. Any `async fn(HttpRequest) -> HttpResponse` is one.
pub trait HttpHandler: Send + Sync + 'static {
    /// Answers one request.
    fn call(&self, request: HttpRequest) -> BoxFuture<'static, HttpResponse>;
}

impl<F, Fut> HttpHandler for F
where
    F: Fn(HttpRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HttpResponse> + Send + 'static,
{
    fn call(&self, request: HttpRequest) -> BoxFuture<'static, HttpResponse> {
        Box::pin(self(request))
    }
}

/// Wraps bytes as a response body.
pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

/// A response with a status, a content type and a body.
pub fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = http::Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    response(status, "text/plain; charset=utf-8", body)
}

/// A JSON response (500 if `value` cannot be encoded).
pub fn json<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> HttpResponse {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, "application/json", body),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("could not encode JSON: {e}")),
    }
}

/// A handler that serves one fixed page (an example's HTML, compiled in with `include_str!`).
///
/// ```
/// use channels_core::routing::Router;
/// use channels_core::http::page;
/// let router = Router::new().http("/", page("text/html; charset=utf-8", "<h1>hello</h1>"));
/// ```
pub fn page(content_type: &'static str, body: &'static str) -> impl HttpHandler {
    move |request: HttpRequest| async move {
        if request.scope.method() == http::Method::GET || request.scope.method() == http::Method::HEAD {
            response(StatusCode::OK, content_type, body)
        } else {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
    }
}

/// A handler that serves the files under `root`; mount it on a route ending in `{*path}`.
///
/// Paths that try to leave `root` (`..`, absolute paths) get 404.
pub fn static_files(root: impl Into<PathBuf>) -> impl HttpHandler {
    let root: PathBuf = root.into();
    move |request: HttpRequest| {
        let root = root.clone();
        async move {
            let Some(relative) = request.scope.param("path").and_then(safe_relative_path) else {
                return text(StatusCode::NOT_FOUND, "not found");
            };
            match tokio::fs::read(root.join(&relative)).await {
                Ok(bytes) => response(StatusCode::OK, content_type_for(&relative), bytes),
                Err(_) => text(StatusCode::NOT_FOUND, "not found"),
            }
        }
    }
}

/// A handler that serves files compiled into the program (with `include_bytes!`), by the
/// route's `{*path}` capture: a binary copied anywhere still serves them. Unknown paths get
/// 404; methods other than `GET` and `HEAD`, 405.
///
/// ```
/// use channels_core::routing::Router;
/// use channels_core::http::embedded_files;
///
/// const STATIC: &[(&str, &[u8])] = &[("app.css", b"body { margin: 0 }"), ("app.js", b"console.log(1)")];
/// let router = Router::new().http("/static/{*path}", embedded_files(STATIC));
/// ```
pub fn embedded_files(files: &'static [(&'static str, &'static [u8])]) -> impl HttpHandler {
    move |request: HttpRequest| async move {
        if !matches!(*request.scope.method(), http::Method::GET | http::Method::HEAD) {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        let wanted = request.scope.param("path").unwrap_or_default();
        match files.iter().find(|(name, _)| *name == wanted) {
            Some((name, bytes)) => {
                response(StatusCode::OK, content_type_for(Path::new(name)), Bytes::from_static(bytes))
            }
            None => text(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

/// Liveness: `200 ok` for as long as the process answers HTTP at all. Mount it where your
/// orchestrator probes (`/healthz`, say); a failing liveness probe means "restart me".
///
/// ```
/// use channels_core::routing::Router;
/// use channels_core::http::{liveness, readiness};
/// use std::time::Duration;
///
/// let router = Router::new().http("/healthz", liveness()).http("/readyz", readiness(Duration::from_secs(2)));
/// ```
pub fn liveness() -> impl HttpHandler {
    |_: HttpRequest| async { text(StatusCode::OK, "ok") }
}

/// Readiness: `200` when every channel layer of the application answers a ping
/// ([`ChannelLayer::ping`](crate::layer::ChannelLayer::ping)) within `timeout`, `503` when one
/// does not (Redis down, say) or once the application is shutting down (so a load balancer
/// stops sending it new clients while it drains). The body is JSON:
/// `{"ready": bool, "shutting_down": bool, "layers": {"default": "ok" or the error}}`.
pub fn readiness(timeout: std::time::Duration) -> impl HttpHandler {
    move |request: HttpRequest| async move {
        let pings = request.layers().iter().map(|(alias, layer)| async move {
            let answer = match tokio::time::timeout(timeout, layer.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            (alias.to_owned(), answer)
        });
        let answers = futures_util::future::join_all(pings).await;
        let shutting_down = request.tasks.is_shutting_down();
        let ready = !shutting_down && answers.iter().all(|(_, answer)| answer.is_ok());
        let layers: std::collections::BTreeMap<String, String> = answers
            .into_iter()
            .map(|(alias, answer)| (alias, answer.err().unwrap_or_else(|| "ok".to_owned())))
            .collect();
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        json(status, &serde_json::json!({ "ready": ready, "shutting_down": shutting_down, "layers": layers }))
    }
}

/// Serving the metrics: here, with the other HTTP handlers, so that [`crate::metrics`] stays
/// below the modules that count into it.
impl Metrics {
    /// [`render`](Self::render) as a 200 response with the OpenMetrics content type.
    pub fn response(&self) -> HttpResponse {
        let mut response = HttpResponse::new(full(self.render()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        response
    }

    /// An HTTP handler that serves [`response`](Self::response) to `GET` (and `HEAD`).
    pub fn handler(&self) -> impl HttpHandler {
        let metrics = self.clone();
        move |request: HttpRequest| {
            let metrics = metrics.clone();
            async move {
                if matches!(*request.scope.method(), http::Method::GET | http::Method::HEAD) {
                    metrics.response()
                } else {
                    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
                }
            }
        }
    }
}

fn safe_relative_path(path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    path.components().all(|c| matches!(c, Component::Normal(_))).then(|| path.to_path_buf())
}

fn content_type_for(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused() {
        assert!(safe_relative_path("a/b.js").is_some());
        for bad in ["../secret", "/etc/passwd", "a/../../b", "./a"] {
            assert!(safe_relative_path(bad).is_none(), "{bad}");
        }
    }
}
