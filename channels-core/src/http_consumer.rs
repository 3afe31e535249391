//! HTTP consumers: Django's `AsyncHttpConsumer`. A request gets its own channel, can join groups,
//! and can answer at once, hold its response until a layer event arrives (long polling), or
//! stream it (server-sent events).

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame as BodyFrame;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::consumer::HandlerResult;
use crate::error::ContextError;
use crate::guarded::guarded;
use crate::http::{HttpHandler, HttpRequest, HttpResponse, response, text};
use crate::layer::{ChannelLayer, DEFAULT_ALIAS, GroupSendReport};
use crate::membership::Membership;
use crate::metrics::{Metrics, OpenConnection, Transport};
use crate::scope::Scope;

/// An HTTP consumer: one instance per request.
///
/// The server gives the request a channel (when a layer is configured), joins
/// [`groups`](Self::groups), calls [`handle`](Self::handle), then — until the response is
/// finished or the client goes away — calls [`event`](Self::event) for each layer message, and
/// finally [`disconnect`](Self::disconnect), after which the groups are left.
///
/// ```
/// use channels_core::http_consumer::{HttpConsumer, HttpContext};
/// use channels_core::prelude::*;
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// #[serde(tag = "type", rename = "news.item")]
/// struct News { text: String }
///
/// /// Server-sent events: one `data:` line per news item.
/// struct NewsStream;
///
/// impl HttpConsumer for NewsStream {
///     type Event = News;
///     fn groups(&self) -> Vec<String> { vec!["news".into()] }
///     async fn handle(&mut self, ctx: &mut HttpContext) -> HandlerResult {
///         ctx.send_headers(StatusCode::OK, &[("content-type", "text/event-stream")]).await?;
///         Ok(())
///     }
///     async fn event(&mut self, ctx: &mut HttpContext, news: News) -> HandlerResult {
///         ctx.send_body(format!("data: {}\n\n", news.text), true).await?;
///         Ok(())
///     }
/// }
/// ```
pub trait HttpConsumer: Send + 'static {
    /// The channel-layer events this consumer handles.
    type Event: DeserializeOwned + Send + 'static;
    /// Which configured channel layer this consumer uses.
    const LAYER_ALIAS: &'static str = DEFAULT_ALIAS;

    /// Groups the request's channel is in while the request lasts.
    fn groups(&self) -> Vec<String> {
        Vec::new()
    }

    /// Answers the request ([`HttpContext::send_response`]), starts a stream
    /// ([`HttpContext::send_headers`]), or returns without answering to wait for events.
    fn handle(&mut self, ctx: &mut HttpContext) -> impl Future<Output = HandlerResult> + Send;

    /// A layer message arrived while the response is still open.
    fn event(&mut self, _ctx: &mut HttpContext, _event: Self::Event) -> impl Future<Output = HandlerResult> + Send {
        async { Ok(()) }
    }

    /// The deadline set with [`HttpContext::set_timeout`] passed with the response still open.
    /// The default answers `204 No Content` (an empty long poll).
    fn timeout(&mut self, ctx: &mut HttpContext) -> impl Future<Output = HandlerResult> + Send {
        let result = match ctx.reply {
            Reply::Pending(_) => {
                ctx.send_response(StatusCode::NO_CONTENT, "text/plain; charset=utf-8", Bytes::new()).map_err(Into::into)
            }
            _ => Ok(()),
        };
        async move { result }
    }

    /// The request is over: answered in full, or the client went away.
    fn disconnect(&mut self, _ctx: &mut HttpContext) -> impl Future<Output = HandlerResult> + Send {
        async { Ok(()) }
    }
}

enum Reply {
    /// Nothing sent yet.
    Pending(oneshot::Sender<HttpResponse>),
    /// Headers sent; the body streams through this sender.
    Streaming(mpsc::Sender<Bytes>),
    Done,
}

/// The request's handle in [`HttpConsumer`] hooks.
pub struct HttpContext {
    scope: Scope,
    body: Bytes,
    membership: Membership,
    reply: Reply,
    send_timeout: Duration,
    deadline: Option<tokio::time::Instant>,
    /// The application's metrics, if on, and the route's path.
    metrics: Option<(Metrics, Arc<str>)>,
    /// How the request is counted while it is a long poll or a stream.
    open: Option<(Transport, OpenConnection)>,
}

impl std::fmt::Debug for HttpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpContext")
            .field("path", &self.scope.path())
            .field("channel_name", &self.channel_name())
            .finish()
    }
}

fn headers_of(pairs: &[(&str, &str)]) -> Result<Vec<(HeaderName, HeaderValue)>, ContextError> {
    pairs
        .iter()
        .map(|(k, v)| match (HeaderName::try_from(*k), HeaderValue::try_from(*v)) {
            (Ok(k), Ok(v)) => Ok((k, v)),
            _ => Err(ContextError::InvalidAccept(format!("invalid header {k:?}: {v:?}"))),
        })
        .collect()
}

impl HttpContext {
    /// The request's scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The request body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// This request's channel name, when a channel layer is configured.
    pub fn channel_name(&self) -> Option<&str> {
        self.membership.channel_name.as_deref()
    }

    /// The channel layer, when one is configured.
    pub fn channel_layer(&self) -> Option<&Arc<dyn ChannelLayer>> {
        self.membership.layer.as_ref()
    }

    /// True once the response is complete (or the client is gone).
    pub fn is_finished(&self) -> bool {
        matches!(self.reply, Reply::Done)
    }

    /// Sends a whole response.
    ///
    /// The status is an [`http::StatusCode`], as everywhere in this crate: a number that is no
    /// status code is refused where it is written, not sent as something else.
    ///
    /// ```compile_fail
    /// # fn demo(ctx: &mut channels_core::http_consumer::HttpContext) {
    /// let _ = ctx.send_response(1000, "text/plain", "no such status");
    /// # }
    /// ```
    pub fn send_response(
        &mut self,
        status: StatusCode,
        content_type: &'static str,
        body: impl Into<Bytes>,
    ) -> Result<(), ContextError> {
        match std::mem::replace(&mut self.reply, Reply::Done) {
            Reply::Pending(tx) => {
                let body: Bytes = body.into();
                if let (Some((Transport::LongPoll, _)), Some((metrics, _))) = (&self.open, &self.metrics) {
                    metrics.hot().sent_on(Transport::LongPoll, 1, body.len() as u64);
                }
                // A held request answered: no longer open.
                self.open = None;
                let mut reply = response(status, content_type, body);
                reply.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                tx.send(reply).map_err(|_| ContextError::Closed)
            }
            Reply::Streaming(_) | Reply::Done => Err(ContextError::Closed),
        }
    }

    /// Sends `value` as a whole JSON response.
    pub fn send_json<T: Serialize + ?Sized>(&mut self, status: StatusCode, value: &T) -> Result<(), ContextError> {
        let body = serde_json::to_vec(value).map_err(ContextError::Json)?;
        self.send_response(status, "application/json", body)
    }

    /// Starts a streamed response: the status and headers now, the body in
    /// [`send_body`](Self::send_body) calls.
    pub async fn send_headers(&mut self, status: StatusCode, headers: &[(&str, &str)]) -> Result<(), ContextError> {
        let headers = headers_of(headers)?;
        let Reply::Pending(tx) = std::mem::replace(&mut self.reply, Reply::Done) else {
            return Err(ContextError::Closed);
        };
        let (body_tx, mut body_rx) = mpsc::channel::<Bytes>(16);
        let stream = futures_util::stream::poll_fn(move |cx| {
            body_rx.poll_recv(cx).map(|chunk| chunk.map(|c| Ok::<_, Infallible>(BodyFrame::data(c))))
        });
        let mut reply = http::Response::new(StreamBody::new(stream).boxed());
        *reply.status_mut() = status;
        reply.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in headers {
            reply.headers_mut().insert(name, value);
        }
        tx.send(reply).map_err(|_| ContextError::Closed)?;
        self.reply = Reply::Streaming(body_tx);
        if let Some((metrics, route)) = &self.metrics {
            self.open = Some((Transport::Sse, metrics.open_connection(Transport::Sse, route)));
        }
        Ok(())
    }

    /// Sends a piece of a streamed body; `more = false` finishes the response.
    pub async fn send_body(&mut self, chunk: impl Into<Bytes>, more: bool) -> Result<(), ContextError> {
        let Reply::Streaming(tx) = &self.reply else {
            return Err(ContextError::NotAccepted);
        };
        let chunk: Bytes = chunk.into();
        let len = chunk.len();
        let sent = if chunk.is_empty() {
            Ok(())
        } else {
            match tokio::time::timeout(self.send_timeout, tx.send(chunk)).await {
                Ok(Ok(())) => {
                    if let Some((metrics, _)) = &self.metrics {
                        metrics.hot().sent_on(Transport::Sse, 1, len as u64);
                    }
                    Ok(())
                }
                Ok(Err(_)) => Err(ContextError::Closed),
                Err(_) => Err(ContextError::SendTimeout),
            }
        };
        if !more || sent.is_err() {
            self.reply = Reply::Done;
        }
        sent
    }

    /// Adds this request's channel to `group` until the request ends.
    pub async fn group_add(&mut self, group: &str) -> Result<(), ContextError> {
        self.membership.group_add(group).await
    }

    /// Encodes `event` once and sends it to every member of `group`.
    pub async fn group_send<T: Serialize + ?Sized>(
        &self,
        group: &str,
        event: &T,
    ) -> Result<GroupSendReport, ContextError> {
        self.membership.group_send(group, event).await
    }

    /// Sends `event` to one channel.
    pub async fn send_to<T: Serialize + ?Sized>(&self, channel: &str, event: &T) -> Result<(), ContextError> {
        self.membership.send_to(channel, event).await
    }

    /// Resolves when the client is gone (it closed the connection or dropped the stream).
    async fn client_gone(&mut self) {
        match &mut self.reply {
            Reply::Pending(tx) => tx.closed().await,
            Reply::Streaming(tx) => tx.closed().await,
            Reply::Done => {}
        }
    }

    /// Calls the consumer's [`timeout`](HttpConsumer::timeout) hook if the response is still
    /// open after `after` (a long poll that found nothing to say).
    pub fn set_timeout(&mut self, after: Duration) {
        self.deadline = Some(tokio::time::Instant::now() + after);
    }
}

/// A route that runs an [`HttpConsumer`] built by `factory` for each request.
pub struct HttpConsumerRoute<C, F> {
    factory: F,
    consumer: PhantomData<fn() -> C>,
}

/// An HTTP route served by consumers that `factory` builds from the request's scope.
pub fn http_consumer<C, F>(factory: F) -> HttpConsumerRoute<C, F>
where
    C: HttpConsumer,
    F: Fn(&Scope) -> C + Send + Sync + 'static,
{
    HttpConsumerRoute { factory, consumer: PhantomData }
}

impl<C, F> std::fmt::Debug for HttpConsumerRoute<C, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConsumerRoute").field("consumer", &std::any::type_name::<C>()).finish_non_exhaustive()
    }
}

impl<C, F> HttpHandler for HttpConsumerRoute<C, F>
where
    C: HttpConsumer,
    F: Fn(&Scope) -> C + Send + Sync + 'static,
{
    fn call(&self, request: HttpRequest) -> BoxFuture<'static, HttpResponse> {
        let consumer = (self.factory)(&request.scope);
        Box::pin(serve(consumer, request))
    }
}

async fn serve<C: HttpConsumer>(consumer: C, request: HttpRequest) -> HttpResponse {
    let HttpRequest { scope, body, layers, tasks, metrics } = request;
    let layer = layers.get(C::LAYER_ALIAS).cloned();
    let channel_name = match &layer {
        Some(layer) => match layer.new_channel("specific").await {
            Ok(name) => Some(name),
            Err(e) => {
                tracing::error!(error = %e, "could not create a channel for an HTTP consumer");
                return text(StatusCode::SERVICE_UNAVAILABLE, "channel layer unavailable");
            }
        },
        None => None,
    };
    let (head_tx, head_rx) = oneshot::channel();
    let ctx = HttpContext {
        scope,
        body,
        membership: Membership::new(layer, channel_name),
        reply: Reply::Pending(head_tx),
        send_timeout: Duration::from_secs(10),
        deadline: None,
        metrics,
        open: None,
    };
    let shutdown = tasks.shutdown_token().clone();
    tasks.spawn(session(consumer, ctx, shutdown));
    head_rx.await.unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "the consumer ended without a response"))
}

async fn session<C: HttpConsumer>(
    mut consumer: C,
    mut ctx: HttpContext,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let path = ctx.scope.path().to_owned();
    let mut failed = false;
    for group in consumer.groups() {
        if let Err(e) = ctx.group_add(&group).await {
            tracing::warn!(%path, %group, error = %e, "could not join a consumer group");
            failed = true;
            break;
        }
    }
    if !failed && let Err(e) = guarded(consumer.handle(&mut ctx)).await {
        tracing::error!(%path, error = %e, "HTTP consumer failed");
        failed = true;
    }
    if !failed && let (Reply::Pending(_), Some((metrics, route))) = (&ctx.reply, &ctx.metrics) {
        // `handle` returned without an answer: a long poll, held until an event answers it.
        ctx.open = Some((Transport::LongPoll, metrics.open_connection(Transport::LongPoll, route)));
    }
    if !failed {
        let layer = ctx.membership.layer.clone();
        let channel = ctx.membership.channel_name.clone();
        while !ctx.is_finished() {
            let deadline = ctx.deadline;
            let timer = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let receive = async {
                match (&layer, &channel) {
                    (Some(layer), Some(channel)) => layer.receive(channel).await,
                    _ => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                () = ctx.client_gone() => break,
                () = timer => {
                    ctx.deadline = None;
                    if let Err(e) = guarded(consumer.timeout(&mut ctx)).await {
                        tracing::error!(%path, error = %e, "HTTP consumer timeout handler failed");
                        failed = true;
                        break;
                    }
                    continue;
                }
                message = receive => message,
            };
            let result = match message {
                Ok(message) => match message.decode::<C::Event>() {
                    Ok(event) => guarded(consumer.event(&mut ctx, event)).await,
                    Err(e) => {
                        tracing::warn!(r#type = message.message_type(), error = %e, "dropping an event this consumer does not handle");
                        Ok(())
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "channel layer receive failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::error!(%path, error = %e, "HTTP consumer event handler failed");
                failed = true;
                break;
            }
        }
    }
    if failed && let Reply::Pending(_) = ctx.reply {
        let _ =
            ctx.send_response(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", "internal server error");
    }
    ctx.reply = Reply::Done;
    if let Err(e) = guarded(consumer.disconnect(&mut ctx)).await {
        tracing::error!(%path, error = %e, "HTTP consumer disconnect failed");
    }
    ctx.membership.leave_all(&[], None).await;
}
