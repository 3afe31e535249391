//! An in-process HTTP client for an [`Application`]: Django's `HttpCommunicator`.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;

use crate::application::Application;
use crate::http::Body;
use crate::scope::{Scope, ScopeKind};
use crate::testing::TestError;

/// Sends one HTTP request to an [`Application`] in-process (middleware, routing, handlers and
/// HTTP consumers all run as on a socket).
///
/// ```
/// use channels_core::prelude::*;
/// use channels_core::http::{HttpRequest, text};
/// use channels_core::testing::HttpCommunicator;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let router = Router::new().http("/hello/", |request: HttpRequest| async move {
///     text(http::StatusCode::OK, format!("hello, {} bytes", request.body.len()))
/// });
/// let app = Application::builder(router).build();
/// let response = HttpCommunicator::new(&app, "POST", "/hello/").body("abc").get_response().await.unwrap();
/// assert_eq!(response.status, 200);
/// assert_eq!(response.body, "hello, 3 bytes");
/// # }
/// ```
pub struct HttpCommunicator {
    app: Application,
    scope: Scope,
    body: Bytes,
    timeout: Duration,
}

impl fmt::Debug for HttpCommunicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCommunicator")
            .field("method", self.scope.method())
            .field("path", &self.scope.path())
            .finish()
    }
}

/// A response, head and whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResponse {
    /// The status code.
    pub status: u16,
    /// The headers, lowercase names, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl TestResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A response whose body is still arriving (a stream, such as server-sent events).
pub struct TestStream {
    /// The status code.
    pub status: u16,
    /// The headers, lowercase names, in order.
    pub headers: Vec<(String, String)>,
    body: Body,
    timeout: Duration,
}

impl fmt::Debug for TestStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestStream").field("status", &self.status).finish()
    }
}

impl TestStream {
    /// The next piece of the body; `None` when the response is finished.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, TestError> {
        loop {
            let frame = tokio::time::timeout(self.timeout, self.body.frame()).await.map_err(|_| TestError::Timeout)?;
            match frame {
                None => return Ok(None),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
                Some(Err(never)) => match never {},
            }
        }
    }
}

impl HttpCommunicator {
    /// A request with `method` for `path_and_query` on `app`.
    pub fn new(app: &Application, method: &str, path_and_query: &str) -> Self {
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        Self {
            app: app.clone(),
            scope: Scope::http(method, path_and_query),
            body: Bytes::new(),
            timeout: Duration::from_secs(1),
        }
    }

    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.scope = self.scope.with_header(name, value);
        self
    }

    /// Sets the request body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// How long to wait for the response (and for each chunk of a stream). Default 1 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request and returns the response head with a body still to be read.
    pub async fn get_stream(self) -> Result<TestStream, TestError> {
        debug_assert_eq!(self.scope.kind(), ScopeKind::Http);
        let response = tokio::time::timeout(self.timeout, self.app.http_request(self.scope, self.body))
            .await
            .map_err(|_| TestError::Timeout)?;
        let (parts, body) = response.into_parts();
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        Ok(TestStream { status: parts.status.as_u16(), headers, body, timeout: self.timeout })
    }

    /// Sends the request and waits for the whole response.
    pub async fn get_response(self) -> Result<TestResponse, TestError> {
        let mut stream = self.get_stream().await?;
        let mut body = Vec::new();
        while let Some(chunk) = stream.next_chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok(TestResponse { status: stream.status, headers: stream.headers, body: body.into() })
    }
}
