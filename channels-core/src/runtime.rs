//! The life of one WebSocket connection: handshake, the event loop, and the teardown.
//!
//! Handlers of one connection run one at a time, in order. Each loop turn waits on five things
//! at once: a client frame, a channel-layer message, queued group sends, the keepalive timer
//! and server shutdown. The client, the timer and shutdown are polled only when one of them
//! woke the task ([`Quiet`]): most wake-ups are layer messages.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::{Instrument, Span};

use crate::config::WebsocketLimits;
use crate::consumer::{HandlerResult, WebsocketConsumer};
use crate::context::{Acceptance, ContextError, Outbox, Sent, State, WebsocketContext};
use crate::frame::{Frame, Utf8Bytes, close_code, close_message};
use crate::gate::Gate;
use crate::guarded::{PANICKED, guarded};
use crate::io::WsStream;
use crate::layer::{ChannelLayers, ChannelReceiver, GroupError, Message, ReceiveError};
use crate::membership::Shutdown;
use crate::metrics::{Hook, Hot};
use crate::scope::Scope;
use crate::tasks::Tasks;

/// The upgrade in progress: the socket, or `None` when the upgrade failed.
pub(crate) type Upgrading = BoxFuture<'static, Option<WsStream>>;

/// Spawns the accepted connection's task, which waits for the upgrade and then runs it.
pub(crate) type Session = Box<dyn FnOnce(&Tasks, Upgrading, Finished) + Send>;

/// Dropped when a connection's task ends: frees its connection slot and tells whoever waits
/// (a test communicator).
pub(crate) struct Finished {
    #[expect(dead_code, reason = "held, not read: dropping it frees the connection slot")]
    pub(crate) permit: OwnedSemaphorePermit,
    /// Boxed: only test communicators wait, and inline it would take 16 bytes of every
    /// connection's future (8 more than the box).
    pub(crate) done: Option<Box<oneshot::Sender<()>>>,
    /// Counts the connection open until it ends, when metrics are on.
    #[expect(dead_code, reason = "held, not read: dropping it counts the connection closed")]
    pub(crate) metrics: Option<crate::metrics::OpenConnection>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

pub(crate) enum Handshake {
    Accept { acceptance: Acceptance, session: Session },
    Deny { status: StatusCode, code: u16 },
}

/// Numbers connections in the logs; unique in the process.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// The span every log line of a connection carries, from its handshake to its end, so that
/// two connections' logs can be told apart: its number, its path, the client's address and,
/// when a session says who it is, the user's id.
fn connection_span(scope: &Scope) -> Span {
    let span = tracing::info_span!(
        "websocket",
        conn = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
        path = %scope.path(),
        client = tracing::field::Empty,
        user = tracing::field::Empty,
    );
    if let Some(client) = scope.client() {
        span.record("client", tracing::field::display(client));
    }
    if let Some(user) = scope.extensions().get::<crate::sessions::Session>().and_then(|s| s.user_id()) {
        span.record("user", tracing::field::display(user));
    }
    span
}

/// [`handshake_in`] within the connection's span, which its task then runs in too.
pub(crate) fn handshake<C: WebsocketConsumer>(
    consumer: C,
    scope: Scope,
    layers: &ChannelLayers,
    limits: Arc<WebsocketLimits>,
    shutdown: Shutdown,
    metrics: Option<Arc<Hot>>,
) -> impl Future<Output = Handshake> + Send + '_ {
    let span = connection_span(&scope);
    handshake_in(span.clone(), consumer, scope, layers, limits, shutdown, metrics).instrument(span)
}

/// Builds the context, joins the consumer's groups and runs `connect`, all before the HTTP
/// response and all within `connect_timeout`: a denial is a plain 403, as the ASGI spec asks;
/// a layer that fails or is too slow is an outage, 503.
async fn handshake_in<C: WebsocketConsumer>(
    span: Span,
    mut consumer: C,
    scope: Scope,
    layers: &ChannelLayers,
    limits: Arc<WebsocketLimits>,
    shutdown: Shutdown,
    metrics: Option<Arc<Hot>>,
) -> Handshake {
    // The channel, the groups and `connect` share one limit: a slow layer is a slow handshake.
    let deadline = Instant::now() + limits.connect_timeout;
    let unavailable = Handshake::Deny { status: StatusCode::SERVICE_UNAVAILABLE, code: close_code::INTERNAL_ERROR };
    let layer = layers.get(C::LAYER_ALIAS).cloned();
    let channel_name = match &layer {
        Some(layer) => match tokio::time::timeout_at(deadline, layer.new_channel("specific")).await {
            Ok(Ok(name)) => Some(name),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not create a channel for a new connection");
                return unavailable;
            }
            Err(_) => {
                tracing::warn!("the channel layer did not create a channel within connect_timeout; refusing");
                return unavailable;
            }
        },
        None => None,
    };
    let path = scope.path().to_owned();
    let mut ctx = WebsocketContext::new(scope, layer, channel_name, limits.send_timeout);
    ctx.metrics = metrics;

    for group in consumer.groups() {
        let status = match tokio::time::timeout_at(deadline, ctx.group_add(&group)).await {
            Ok(Ok(())) => continue,
            // A name that breaks the rules, or no layer, is the application's to fix; anything
            // else is an outage.
            Ok(Err(e @ (ContextError::NoLayer | ContextError::Group(GroupError::InvalidName(_))))) => {
                tracing::warn!(%path, %group, error = %e, "could not join a consumer group; denying");
                StatusCode::FORBIDDEN
            }
            Ok(Err(e)) => {
                tracing::warn!(%path, %group, error = %e, "could not join a consumer group; refusing");
                StatusCode::SERVICE_UNAVAILABLE
            }
            Err(_) => {
                tracing::warn!(%path, %group, "joining a consumer group took longer than connect_timeout; refusing");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        // Left in the background: a layer that is slow to join is slow to leave too.
        tokio::spawn(async move { ctx.leave_groups(&[], None).await }.in_current_span());
        return Handshake::Deny { status, code: close_code::INTERNAL_ERROR };
    }

    let outcome = tokio::time::timeout_at(deadline, guarded(consumer.connect(&mut ctx))).await;
    let denial = match (&outcome, &ctx.state) {
        (Ok(Ok(())), State::Connecting(connecting)) if connecting.accepted.is_some() => {
            let acceptance = connecting.accepted.clone().unwrap_or_default();
            // The connection's future goes into its task unboxed: one allocation per connection.
            let session: Session = Box::new(move |tasks: &Tasks, socket, finished| {
                let connection = run(consumer, ctx, socket, limits, shutdown, finished);
                // The span lives as long as the connection: stored only when a subscriber
                // records it, so that at WARN an idle socket costs no more (measured: ~0.1 KiB).
                if span.is_disabled() {
                    tasks.spawn(connection);
                } else {
                    tasks.spawn(connection.instrument(span));
                }
            });
            return Handshake::Accept { acceptance, session };
        }
        (Ok(Ok(())), State::Denied { code }) => (StatusCode::FORBIDDEN, *code),
        (Ok(Ok(())), _) => (StatusCode::FORBIDDEN, close_code::NORMAL),
        (Ok(Err(e)), _) => {
            tracing::error!(%path, error = %e, "connect failed; denying");
            (StatusCode::FORBIDDEN, close_code::INTERNAL_ERROR)
        }
        (Err(_), _) => {
            tracing::warn!(%path, "connect took longer than connect_timeout; refusing");
            (StatusCode::SERVICE_UNAVAILABLE, close_code::INTERNAL_ERROR)
        }
    };
    ctx.state = State::Closed;
    teardown(&mut consumer, &mut ctx, denial.1, None).await;
    Handshake::Deny { status: denial.0, code: denial.1 }
}

/// The connection after the upgrade. A plain function around an `async` block rather than an
/// `async fn`: an `async fn` keeps its arguments twice in its future (rust-lang/rust#62958), and
/// this future lives as long as the connection.
#[expect(clippy::manual_async_fn, reason = "an `async fn` would store its arguments twice")]
fn run<C: WebsocketConsumer>(
    mut consumer: C,
    mut ctx: WebsocketContext,
    socket: Upgrading,
    limits: Arc<WebsocketLimits>,
    shutdown: Shutdown,
    finished: Finished,
) -> impl Future<Output = ()> + Send {
    async move {
        // What `open` leaves is only whether the socket's buffer holds frames not sent yet: the
        // socket it returned, and what `connect` sent, take no room while the connection runs.
        let code = match open(&mut ctx, socket).await {
            Some(unflushed) => event_loop(&mut consumer, &mut ctx, &limits, shutdown.signal(), unflushed).await,
            None => close_code::ABNORMAL,
        };
        ctx.state = State::Closed;
        // Boxed: the rarely used parts should not make every connection's future larger.
        Box::pin(teardown(&mut consumer, &mut ctx, code, Some(&shutdown))).await;
        ctx.detach();
        drop(finished);
    }
}

/// Waits for the upgrade and attaches the socket to the context; `None` when the upgrade
/// failed. What `connect` sent goes into the write buffer; the event loop sends it, with the
/// layer messages already waiting when it starts (a join announced to the connection's own
/// group, say) in the same write. Returns whether the socket's buffer holds frames not sent yet.
async fn open(ctx: &mut WebsocketContext, socket: Upgrading) -> Option<bool> {
    let socket = socket.await?;
    ctx.attach(socket);
    let (pending, closing) = match std::mem::replace(&mut ctx.state, State::Open) {
        State::Connecting(connecting) => (connecting.pending, connecting.closing),
        _ => (Vec::new(), None),
    };
    let mut unflushed = !pending.is_empty();
    ctx.batching = true;
    for frame in pending {
        if Box::pin(ctx.write(frame)).await.is_err() {
            break;
        }
    }
    ctx.batching = false;
    if let (Some(code), State::Open) = (closing, &ctx.state) {
        // `connect` closed after accepting: its close frame goes out now (a failed flush leaves
        // the context closed: no reply is waited for).
        unflushed = false;
        if Box::pin(ctx.flush()).await.is_ok() {
            ctx.state = State::Closing { code };
        }
    }
    Some(unflushed)
}

/// Sends what is still queued, then `disconnect` (and what it queued), then leave every group,
/// then let the layer drop the channel.
///
/// Once the server's shutdown has begun, the groups are left before `disconnect`, together
/// with every other connection closing then (see [`Shutdown`]): its group sends then reach
/// the members that stay (in other processes), not the thousands closing with it.
async fn teardown<C: WebsocketConsumer>(
    consumer: &mut C,
    ctx: &mut WebsocketContext,
    code: u16,
    shutdown: Option<&Shutdown>,
) {
    finish_sends(consumer, ctx).await;
    let left = match shutdown {
        Some(shutdown) => ctx.leave_groups_at_shutdown(shutdown).await,
        None => Vec::new(),
    };
    if let Err(e) = guarded(consumer.disconnect(ctx, code)).await {
        if !on_closed_connection(&*e) {
            tracing::error!(path = %ctx.scope().path(), error = %e, "disconnect handler failed");
        } else if let Some(shutdown) = shutdown.filter(|s| s.has_begun()) {
            // Summed up once when shutdown is done: thousands of lines would say nothing more.
            shutdown.count_failed_on_closed();
        } else {
            tracing::debug!(path = %ctx.scope().path(), error = %e, "disconnect handler could not reach its closed connection");
        }
    }
    finish_sends(consumer, ctx).await;
    ctx.leave_groups(&left, shutdown).await;
}

/// Whether a handler failed because its connection is closed (or its client gone): not a bug
/// in the handler.
fn on_closed_connection(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        error.downcast_ref::<ContextError>(),
        Some(ContextError::Closed | ContextError::Socket(_) | ContextError::SendTimeout)
    )
}

/// Sends every queued group send and reports the failures to the consumer.
async fn finish_sends<C: WebsocketConsumer>(consumer: &mut C, ctx: &mut WebsocketContext) {
    ctx.drain_sends().await;
    if let Err(e) = report_send_failures(consumer, ctx).await {
        tracing::error!(path = %ctx.scope().path(), error = %e, "group_send_failed handler failed");
    }
}

type LayerReceive<'a> = Pin<Box<dyn Future<Output = Result<Message, ReceiveError>> + Send + 'a>>;

fn next_message(receiver: Option<&dyn ChannelReceiver>, backoff: bool) -> LayerReceive<'_> {
    match receiver {
        // Separate futures: the one every idle connection holds should not carry a timer.
        Some(receiver) if backoff => Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            receiver.receive().await
        }),
        Some(receiver) => receiver.receive(),
        None => Box::pin(std::future::pending()),
    }
}

/// Most layer events handled before one flush.
const MAX_BATCH: usize = 64;

/// Handles a layer message and the ones already waiting behind it (at most [`MAX_BATCH`]),
/// writing their frames into the socket's buffer, then flushes once: one write for a burst
/// instead of one per frame.
async fn handle_burst<C: WebsocketConsumer>(
    consumer: &mut C,
    ctx: &mut WebsocketContext,
    first: Message,
    receiver: Option<&dyn ChannelReceiver>,
) -> HandlerResult {
    ctx.batching = true;
    // One panic guard for the burst, not one per message: each guard would move the hook's
    // future (often several hundred bytes) once more.
    let result = guarded(dispatch_burst(consumer, ctx, first, receiver)).await;
    ctx.batching = false;
    // The burst's frames are counted before they are flushed: a scrape never reads fewer than
    // a client could have received (only a burst that overflows the write buffer is seen
    // before its count).
    ctx.count_burst_sent();
    if matches!(ctx.state, State::Open) {
        let _ = ctx.flush().await;
    }
    result
}

/// Hands each message of a burst to the consumer's `message` hook until one fails or the
/// connection closes. What waits behind the first message is taken at once (one lock and one
/// look at the clock in the layer, not one per message); what a closing connection leaves of
/// it is dropped, as its channel's queue would be.
async fn dispatch_burst<C: WebsocketConsumer>(
    consumer: &mut C,
    ctx: &mut WebsocketContext,
    first: Message,
    receiver: Option<&dyn ChannelReceiver>,
) -> HandlerResult {
    consumer.message(ctx, first).await?;
    let Some(receiver) = receiver else { return Ok(()) };
    if !matches!(ctx.state, State::Open) {
        return Ok(());
    }
    let mut waiting = Vec::new();
    receiver.try_receive_many(MAX_BATCH - 1, &mut waiting);
    for message in waiting {
        consumer.message(ctx, message).await?;
        if !matches!(ctx.state, State::Open) {
            break;
        }
    }
    Ok(())
}

enum Input {
    Shutdown,
    /// Queued group sends failed; the consumer hears of it first.
    SendFailures,
    /// A batch of queued group sends is done.
    Sent(Sent),
    Frame(Option<Result<WsMessage, WsError>>),
    Layer(Result<Message, ReceiveError>),
    Tick,
}

/// What a frame read from the client asks of the event loop.
enum ClientFrame {
    /// A data frame for the consumer's `receive`.
    Data(Frame),
    /// An empty text frame: the heartbeat of clients that cannot send pings (browsers,
    /// channels.js), answered by the runtime so that every consumer supports it.
    Heartbeat,
    /// A ping, a pong or a raw frame: nothing to do (tungstenite answers pings itself).
    Ignored,
    /// The client's close frame, with the code `disconnect` gets.
    Close(u16),
    /// A read error.
    Failed(WsError),
    /// The stream ended without a close frame.
    Ended,
}

impl ClientFrame {
    fn from_read(read: Option<Result<WsMessage, WsError>>) -> Self {
        match read {
            Some(Ok(WsMessage::Text(text))) if text.is_empty() => Self::Heartbeat,
            Some(Ok(WsMessage::Text(text))) => Self::Data(Frame::Text(Utf8Bytes::from_tungstenite(text))),
            Some(Ok(WsMessage::Binary(data))) => Self::Data(Frame::Binary(data)),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => Self::Ignored,
            Some(Ok(WsMessage::Close(frame))) => Self::Close(frame.map_or(close_code::NO_STATUS, |f| f.code.into())),
            Some(Err(e)) => Self::Failed(e),
            None => Self::Ended,
        }
    }
}

/// Reports every failed queued group send to the consumer's hook.
async fn report_send_failures<C: WebsocketConsumer>(consumer: &mut C, ctx: &mut WebsocketContext) -> HandlerResult {
    for (group, error) in ctx.take_send_failures() {
        guarded(consumer.group_send_failed(ctx, &group, ContextError::Group(error))).await?;
    }
    Ok(())
}

pin_project_lite::pin_project! {
    /// What a connection waits on besides channel-layer messages and queued sends: shutdown,
    /// the client and the keepalive timer. Most wake-ups are layer messages, so these are
    /// polled only when one of them woke the task (see [`Gate`]).
    struct Quiet<'a> {
        #[pin]
        cancelled: WaitForCancellationFuture<'a>,
        #[pin]
        keepalive: tokio::time::Sleep,
        gate: Gate,
    }
}

impl<'a> Quiet<'a> {
    fn new(shutdown: &'a CancellationToken, ping_interval: Duration) -> Self {
        Self { cancelled: shutdown.cancelled(), keepalive: tokio::time::sleep(ping_interval), gate: Gate::new() }
    }

    /// Shutdown, then a client frame (unless `socket` is `None`: not reading), then a tick.
    fn poll_input(self: Pin<&mut Self>, cx: &mut Context<'_>, socket: Option<&mut WsStream>) -> Poll<Input> {
        let this = self.project();
        let (mut cancelled, mut keepalive) = (this.cancelled, this.keepalive);
        this.gate.poll(cx, |cx| {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Input::Shutdown);
            }
            if let Some(socket) = socket
                && let Poll::Ready(frame) = socket.poll_next_unpin(cx)
            {
                return Poll::Ready(Input::Frame(frame));
            }
            keepalive.as_mut().poll(cx).map(|()| Input::Tick)
        })
    }
}

/// What a connection waits for, in order: shutdown, a client frame (while `reading`), a
/// keepalive tick, a finished batch of queued group sends, a layer message. Client frames come
/// before a finished batch, so that the next batch takes every message whose frame is waiting.
fn poll_input(
    cx: &mut Context<'_>,
    ctx: &mut WebsocketContext,
    quiet: &mut Pin<Box<Quiet<'_>>>,
    layer_rx: &mut LayerReceive<'_>,
    reading: bool,
) -> Poll<Input> {
    let (socket, outbox) = ctx.socket_and_outbox();
    if let Poll::Ready(input) = quiet.as_mut().poll_input(cx, socket.filter(|_| reading)) {
        return Poll::Ready(input);
    }
    if let Poll::Ready(sent) = Outbox::poll_sent(outbox, cx) {
        return Poll::Ready(Input::Sent(sent));
    }
    layer_rx.as_mut().poll(cx).map(Input::Layer)
}

/// The first look at a connection's input while its socket's buffer holds frames not sent yet
/// (what `connect` sent): a burst of layer messages already waiting is returned before those
/// are sent, so that it goes out in the same write; otherwise they are sent first. `None` when
/// nothing is ready yet.
async fn first_input(
    ctx: &mut WebsocketContext,
    quiet: &mut Pin<Box<Quiet<'_>>>,
    layer_rx: &mut LayerReceive<'_>,
    reading: bool,
) -> Option<Input> {
    let ready = std::future::poll_fn(|cx| {
        Poll::Ready(match poll_input(cx, ctx, quiet, layer_rx, reading) {
            Poll::Ready(input) => Some(input),
            Poll::Pending => None,
        })
    })
    .await;
    if !matches!(ready, Some(Input::Layer(Ok(_)))) {
        // A failure closes the context, which the caller sees.
        let _ = ctx.flush().await;
    }
    ready
}

/// Runs until the connection ends; returns the close code `disconnect` gets. `unflushed`: the
/// socket's buffer holds frames not sent yet.
async fn event_loop<C: WebsocketConsumer>(
    consumer: &mut C,
    ctx: &mut WebsocketContext,
    limits: &WebsocketLimits,
    shutdown: &CancellationToken,
    mut unflushed: bool,
) -> u16 {
    let receiver =
        ctx.channel_layer().cloned().zip(ctx.shared_channel_name()).map(|(layer, channel)| layer.receiver(channel));
    let mut layer_rx = next_message(receiver.as_deref(), false);
    // The layer receive waits a second before it retries after an error.
    let mut layer_backoff = false;
    let mut last_seen = Instant::now();
    let mut pinged = false;
    let mut groups_joined = Instant::now();
    // Boxed: with it the connection's task measured 0.05 KiB more per idle connection.
    let mut quiet = Box::pin(Quiet::new(shutdown, limits.ping_interval));
    let mut was_reading = true;

    loop {
        match ctx.state {
            State::Open => {}
            State::Closing { code } => {
                // Queued group sends go before the wait for the client's close frame.
                Box::pin(ctx.drain_sends()).await;
                return Box::pin(finish_close(ctx, code, limits)).await;
            }
            _ => return close_code::ABNORMAL,
        }
        if ctx.start_sends() && !layer_backoff {
            // The batch is polled before the layer (an in-memory batch is done at its first
            // poll). A receive of ours still waiting from before would be woken by our own
            // messages to our groups, and a task that wakes itself goes to the back of the
            // runtime's queue, behind every member it just woke; a new receive waits only once
            // polled, and then finds those messages at once.
            layer_rx = next_message(receiver.as_deref(), false);
        }
        let reading = !ctx.outbox_full();
        if reading && !was_reading {
            // The socket was left unpolled while the outbox was full.
            quiet.gate.open();
        }
        was_reading = reading;
        let input = if ctx.has_send_failures() {
            Input::SendFailures
        } else {
            if ctx.socket_mut().is_none() {
                return close_code::ABNORMAL;
            }
            let first = if std::mem::take(&mut unflushed) {
                // Boxed: it runs once, and its state should not stay in every connection's future.
                let first = Box::pin(first_input(ctx, &mut quiet, &mut layer_rx, reading)).await;
                if !matches!(ctx.state, State::Open) {
                    continue;
                }
                first
            } else {
                None
            };
            match first {
                Some(input) => input,
                None => std::future::poll_fn(|cx| poll_input(cx, ctx, &mut quiet, &mut layer_rx, reading)).await,
            }
        };
        let result = match input {
            Input::Shutdown => {
                let _ = Box::pin(ctx.close_with_reason(close_code::GOING_AWAY, "server shutting down")).await;
                continue;
            }
            Input::SendFailures => Box::pin(report_send_failures(consumer, ctx)).await,
            Input::Sent(sent) => {
                ctx.settle_sends(sent);
                continue;
            }
            Input::Frame(frame) => {
                last_seen = Instant::now();
                if pinged {
                    // The client answered: the next check is a ping interval from now.
                    pinged = false;
                    quiet.as_mut().project().keepalive.reset(last_seen + limits.ping_interval);
                }
                // Classified by a plain function that takes the frame whole: matched here, the
                // frame's parts would stay in every connection's future across the awaits below.
                let frame = match ClientFrame::from_read(frame) {
                    ClientFrame::Data(frame) => frame,
                    ClientFrame::Heartbeat => {
                        let _ = Box::pin(ctx.write(WsMessage::Text(Default::default()))).await;
                        continue;
                    }
                    ClientFrame::Ignored => continue,
                    ClientFrame::Close(code) => {
                        // tungstenite queued the reply; send it, then we are done.
                        let _ = Box::pin(tokio::time::timeout(limits.close_timeout, socket_flush(ctx))).await;
                        return code;
                    }
                    ClientFrame::Failed(e) => return Box::pin(fail(ctx, e, limits)).await,
                    ClientFrame::Ended => return close_code::ABNORMAL,
                };
                // Borrowed, not cloned: a clone of the shared `Arc` would be two locked
                // operations on one cache line for every frame of every connection.
                if let Some(metrics) = &ctx.metrics {
                    metrics.received(match &frame {
                        Frame::Text(text) => text.len(),
                        Frame::Binary(data) => data.len(),
                    });
                }
                let result = Box::pin(guarded(consumer.receive(ctx, frame))).await;
                if let Some(metrics) = &ctx.metrics {
                    // The hook started when the frame was read: one look at the clock.
                    metrics.hook(Hook::Receive, last_seen.elapsed());
                }
                result
            }
            Input::Layer(received) => {
                layer_backoff = received.is_err();
                layer_rx = next_message(receiver.as_deref(), layer_backoff);
                let message = match received {
                    Ok(message) => message,
                    Err(e) => {
                        tracing::warn!(error = %e, "channel layer receive failed; retrying in 1 s");
                        continue;
                    }
                };
                // Boxed once per burst: its size stays out of every idle connection's future.
                let started = ctx.metrics.as_ref().is_some_and(|metrics| metrics.time_burst()).then(Instant::now);
                let result = Box::pin(handle_burst(consumer, ctx, message, receiver.as_deref())).await;
                if let (Some(started), Some(metrics)) = (started, &ctx.metrics) {
                    metrics.hook(Hook::Message, started.elapsed());
                }
                result
            }
            Input::Tick => {
                // Memberships expire `group_expiry` after the last group_add; a connection that
                // lives longer stays in its groups by joining them again.
                if let Some(group_expiry) = ctx.channel_layer().map(|layer| layer.config().group_expiry)
                    && !ctx.groups().is_empty()
                    && groups_joined.elapsed() >= group_expiry / 2
                {
                    groups_joined = Instant::now();
                    for group in ctx.groups().to_vec() {
                        if let Err(e) = Box::pin(ctx.group_add(&group)).await {
                            tracing::warn!(%group, error = %e, "could not renew a group membership");
                        }
                    }
                }
                let silent = last_seen.elapsed();
                if silent >= limits.ping_interval + limits.ping_timeout {
                    tracing::debug!(path = %ctx.scope().path(), "no answer to ping; dropping the connection");
                    return close_code::ABNORMAL;
                }
                let next = if silent >= limits.ping_interval && !pinged {
                    pinged = true;
                    let _ = Box::pin(ctx.write(WsMessage::Ping(Default::default()))).await;
                    last_seen + limits.ping_interval + limits.ping_timeout
                } else if pinged {
                    last_seen + limits.ping_interval + limits.ping_timeout
                } else {
                    last_seen + limits.ping_interval
                };
                quiet.as_mut().project().keepalive.reset(next);
                continue;
            }
        };
        if let Err(e) = result {
            if let Some(metrics) = &ctx.metrics {
                metrics.hook_failed(if e.to_string().starts_with(PANICKED) { "panic" } else { "error" });
            }
            if matches!(ctx.state, State::Closed) {
                // The write failed because the client is gone or too slow: not a handler bug.
                tracing::debug!(path = %ctx.scope().path(), error = %e, "client gone while a handler was sending");
            } else {
                tracing::error!(path = %ctx.scope().path(), error = %e, "handler failed; closing with 1011");
                let _ = Box::pin(ctx.close_with_reason(close_code::INTERNAL_ERROR, "internal error")).await;
            }
        }
    }
}

async fn socket_flush(ctx: &mut WebsocketContext) {
    if let Some(socket) = ctx.socket_mut() {
        let _ = socket.flush().await;
        // Once the closing handshake is done, tungstenite's flush reports the connection closed
        // without flushing the stream under it, where its reply to the client's close frame
        // waits in `LeanIo`: send it.
        let _ = socket.io().flush().await;
    }
}

/// The server sent a close frame: wait (bounded) for the client's reply, ignoring data frames.
async fn finish_close(ctx: &mut WebsocketContext, code: u16, limits: &WebsocketLimits) -> u16 {
    if let Some(socket) = ctx.socket_mut() {
        let _ = tokio::time::timeout(limits.close_timeout, async {
            while let Some(Ok(frame)) = socket.next().await {
                if frame.is_close() {
                    break;
                }
            }
        })
        .await;
    }
    code
}

/// A read error: send the close code the error calls for (tungstenite only reports it), then
/// linger so the client reads the close frame before the socket goes.
async fn fail(ctx: &mut WebsocketContext, error: WsError, limits: &WebsocketLimits) -> u16 {
    use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
    let (code, reason) = match &error {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => (close_code::MESSAGE_TOO_BIG, "message too big"),
        WsError::Capacity(_) => (close_code::MESSAGE_TOO_BIG, "frame too big"),
        WsError::Utf8(_) => (close_code::INVALID_PAYLOAD, "invalid UTF-8 in text frame"),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return close_code::ABNORMAL,
        WsError::Protocol(_) => (close_code::PROTOCOL_ERROR, "protocol error"),
        _ => return close_code::ABNORMAL,
    };
    tracing::debug!(path = %ctx.scope().path(), %error, code, "closing after a bad frame");
    let Some(socket) = ctx.socket_mut() else { return code };
    let sent = tokio::time::timeout(limits.close_timeout, socket.send(close_message(code, reason))).await;
    if matches!(sent, Ok(Ok(()))) {
        if let Some(metrics) = &ctx.metrics {
            metrics.close_sent(code);
        }
        let Some(socket) = ctx.socket_mut() else { return code };
        linger(socket, limits.close_timeout).await;
    }
    code
}

/// Half-closes and discards what the client still sends (the rest of an oversized message),
/// so the kernel does not answer it with a reset that could destroy our close frame.
async fn linger(socket: &mut WsStream, limit: Duration) {
    let io = socket.io();
    let _ = io.shutdown().await;
    let mut scratch = vec![0u8; 1024];
    let _ = tokio::time::timeout(limit, async {
        let mut budget: usize = 64 << 20;
        while let Ok(n @ 1..) = io.read(&mut scratch).await {
            budget = budget.saturating_sub(n);
            if budget == 0 {
                break;
            }
        }
    })
    .await;
}

/// Layouts are those of a release build, so these run only there
/// (`cargo test --release -p channels-core --lib`).
#[cfg(all(test, not(debug_assertions)))]
mod tests {
    use super::*;

    /// A consumer like most: a group name and a user name, and a `receive` and an `event` that
    /// send (the framework bench server's, which `idle_memory` measures).
    struct Room {
        group: String,
        user: String,
    }

    impl WebsocketConsumer for Room {
        type Event = serde_json::Value;

        fn groups(&self) -> Vec<String> {
            vec![self.group.clone()]
        }

        async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
            let text = frame.as_text().unwrap_or_default().to_owned();
            ctx.group_send(
                &self.group,
                &serde_json::json!({ "type": "chat.message", "user": self.user, "text": text }),
            )
            .await?;
            Ok(())
        }

        async fn event(&mut self, ctx: &mut WebsocketContext, event: serde_json::Value) -> HandlerResult {
            ctx.send_json(&event).await?;
            Ok(())
        }
    }

    /// tokio allocates a task in 128-byte steps and adds 104 bytes of its own: a connection's
    /// future of up to 920 bytes makes a 1,024-byte task, one byte more a 1,152-byte one, on
    /// every idle socket (`benches/idle_memory.rs`).
    #[test]
    fn an_idle_connection_task_leaves_room_under_tokios_1024_byte_step() {
        let ctx = WebsocketContext::new(Scope::websocket("/ws/chat/lobby/"), None, None, Duration::from_secs(1));
        let permit = Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().expect("a free permit");
        let finished = Finished { permit, done: None, metrics: None };
        let upgrading: Upgrading = Box::pin(async { None });
        let consumer = Room { group: "chat_lobby".into(), user: "ann".into() };
        let limits = Arc::new(WebsocketLimits::default());
        let connection = run(consumer, ctx, upgrading, limits, Shutdown::default(), finished);
        let task = tokio_util::task::TaskTracker::new().track_future(connection);
        let size = std::mem::size_of_val(&task);
        // The chat example's consumer is 32 bytes larger than this one.
        assert!(size + 32 <= 920, "a connection's future is {size} bytes: the chat's task no longer fits 1,024 bytes");
    }
}
