//! The per-connection handle a consumer's hooks get: accept, send, close, and layer operations.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use http::{HeaderName, HeaderValue};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::consumer::{Utf8Bytes, close_code_from};
use crate::io::WsStream;
use crate::layer::{ChannelLayer, GroupError, GroupSendReport, Message, MessageError, SendError, validate_group_name};

use crate::scope::Scope;

/// Why a [`WebsocketContext`] operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ContextError {
    /// No channel layer is configured for this consumer's alias.
    NoLayer,
    /// Frames can be sent only after [`WebsocketContext::accept`].
    NotAccepted,
    /// The connection is closed or closing.
    Closed,
    /// The client did not take the frame within the send timeout (a slow or dead client).
    SendTimeout,
    /// A subprotocol the client did not offer, or a bad header, was given to `accept`, or it was
    /// called outside `connect`.
    InvalidAccept(String),
    /// The value is not a valid layer message.
    Message(MessageError),
    /// `send` to a channel failed.
    Send(SendError),
    /// A group operation failed.
    Group(GroupError),
    /// The value could not be encoded as JSON.
    Json(serde_json::Error),
    /// The socket failed.
    Socket(tokio_tungstenite::tungstenite::Error),
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoLayer => f.write_str("no channel layer is configured for this consumer"),
            Self::NotAccepted => f.write_str("the connection has not been accepted"),
            Self::Closed => f.write_str("the connection is closed"),
            Self::SendTimeout => f.write_str("the client did not read in time"),
            Self::InvalidAccept(e) => write!(f, "invalid accept: {e}"),
            Self::Message(e) => e.fmt(f),
            Self::Send(e) => e.fmt(f),
            Self::Group(e) => e.fmt(f),
            Self::Json(e) => write!(f, "JSON encoding failed: {e}"),
            Self::Socket(e) => write!(f, "socket error: {e}"),
        }
    }
}

impl std::error::Error for ContextError {}

/// How the connection was accepted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Acceptance {
    pub(crate) subprotocol: Option<String>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Default)]
pub(crate) struct Connecting {
    pub(crate) accepted: Option<Acceptance>,
    pub(crate) pending: Vec<WsMessage>,
    pub(crate) closing: Option<u16>,
}

#[derive(Debug)]
pub(crate) enum State {
    /// `connect` is running; frames sent after `accept` wait here for the upgrade. Boxed: it
    /// lasts only until the upgrade, and every connection's context has room for its state.
    Connecting(Box<Connecting>),
    /// `connect` denied; the code is reported to test communicators.
    Denied {
        code: u16,
    },
    Open,
    /// The server sent a close frame with this code.
    Closing {
        code: u16,
    },
    /// The socket is gone (or unusable).
    Closed,
}

/// A connection's handle, passed to every [`WebsocketConsumer`](crate::consumer::WebsocketConsumer) hook.
///
/// Sends go straight to the socket (after `connect` they are held until the upgrade completes).
/// Layer operations use this connection's [`channel_name`](Self::channel_name).
pub struct WebsocketContext {
    scope: Scope,
    membership: Membership,
    pub(crate) state: State,
    /// In a mutex only so that the context is `Sync`; it is reached through `get_mut`, never locked.
    socket: Option<std::sync::Mutex<WsStream>>,
    pub(crate) send_timeout: Duration,
    /// While set, frames are buffered without a flush; the runtime flushes after a batch.
    pub(crate) batching: bool,
    /// Made by the first `group_send_nowait`. In a mutex only for `Sync`, like the socket.
    outbox: Option<Box<std::sync::Mutex<Outbox>>>,
}

/// Runs a socket operation within `limit`. The timer starts only if the operation cannot finish
/// at once: most writes go to a buffer, and a timer per frame costs a clock read and a timer
/// entry for nothing.
async fn within<F: Future>(limit: Duration, operation: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut operation = std::pin::pin!(operation);
    if let Poll::Ready(done) = std::future::poll_fn(|cx| Poll::Ready(operation.as_mut().poll(cx))).await {
        return Ok(done);
    }
    // Boxed: a timer is a few hundred bytes, which every future that sends (each handler's
    // included) would carry and move around, although a send rarely has to wait.
    Box::pin(tokio::time::timeout(limit, operation)).await
}

/// What a mutex holds, reached through `&mut` (never locked: the mutexes are there for `Sync`).
fn unlocked<T>(mutex: &mut std::sync::Mutex<T>) -> &mut T {
    mutex.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The outcome of one batch of queued group sends: the sends, then a report for each.
pub(crate) type Sent = (Vec<(String, Message)>, Vec<Result<GroupSendReport, GroupError>>);

/// Group sends queued by [`WebsocketContext::group_send_nowait`]: sent in order, one batch at
/// a time, while the connection goes on.
#[derive(Default)]
pub(crate) struct Outbox {
    queued: Vec<(String, Message)>,
    /// How many of the queued sends, from the first, had their copy for this connection put on
    /// its channel at once ([`ChannelLayer::group_send_echo`]; see [`Outbox::may_echo`]).
    echoed: usize,
    /// The batch being sent, or the wait before it (which ends with an empty [`Sent`]).
    in_flight: Option<Pin<Box<dyn Future<Output = Sent> + Send>>>,
    /// The batch in flight holds a send that was not echoed.
    in_flight_unechoed: bool,
    failed: Vec<(String, GroupError)>,
    /// When the last batch was done, for the layer's [`ChannelLayer::batch_linger`] (only
    /// when it has one: the clock is not read for nothing).
    last_done: Option<tokio::time::Instant>,
    /// The next batch has waited its linger already.
    lingered: bool,
}

/// Queued group sends beyond which the connection stops reading the client until a batch is
/// sent: the client is slowed down instead of the queue growing without bound.
pub(crate) const OUTBOX_LIMIT: usize = 256;

impl Outbox {
    /// Starts sending the queued messages unless a batch (or the wait before one) is in
    /// flight; true if it started a batch. `channel` is the connection's own, which the echoed
    /// sends skip. With `linger`, a batch that would follow the previous one closer than the
    /// layer's [`batch_linger`](ChannelLayer::batch_linger) waits for the rest of it first,
    /// and takes what was queued meanwhile.
    fn start(&mut self, layer: &Arc<dyn ChannelLayer>, channel: Option<&Arc<str>>, linger: bool) -> bool {
        if self.in_flight.is_some() || self.queued.is_empty() {
            return false;
        }
        if linger && !std::mem::take(&mut self.lingered) {
            let until = self.last_done.map(|done| done + layer.batch_linger());
            if let Some(until) = until.filter(|&until| until > tokio::time::Instant::now()) {
                self.lingered = true;
                self.in_flight = Some(Box::pin(async move {
                    tokio::time::sleep_until(until).await;
                    (Vec::new(), Vec::new())
                }));
                return false;
            }
        }
        self.lingered = false;
        let sends = std::mem::take(&mut self.queued);
        let echoed = std::mem::take(&mut self.echoed);
        self.in_flight_unechoed = echoed < sends.len();
        let layer = layer.clone();
        let channel = channel.filter(|_| echoed > 0).cloned();
        self.in_flight = Some(Box::pin(async move {
            let reports = match &channel {
                Some(channel) => layer.group_send_many_echoed(&sends, channel, echoed).await,
                None => layer.group_send_many(&sends).await,
            };
            (sends, reports)
        }));
        true
    }

    /// Whether the next send may be echoed: only if every send before it, queued or in
    /// flight, was, so that the connection gets its own messages in the order it sent them.
    fn may_echo(&self) -> bool {
        !self.in_flight_unechoed && self.echoed == self.queued.len()
    }

    /// Keeps the failures of a finished batch, and its buffer for the next one; `timed`: the
    /// layer lingers, so the time the batch was done is kept too.
    fn settle(&mut self, (mut sends, reports): Sent, timed: bool) {
        if sends.is_empty() {
            // The end of a wait, not of a batch.
            return;
        }
        if timed {
            self.last_done = Some(tokio::time::Instant::now());
        }
        self.in_flight_unechoed = false;
        for ((group, _), report) in sends.drain(..).zip(reports) {
            if let Err(e) = report {
                self.failed.push((group, e));
            }
        }
        if self.queued.is_empty() {
            self.queued = sends;
        }
    }

    /// Ready when the batch in flight is sent; pending while none is.
    pub(crate) fn poll_sent(outbox: Option<&mut Outbox>, cx: &mut Context<'_>) -> Poll<Sent> {
        let Some(outbox) = outbox else { return Poll::Pending };
        let Some(in_flight) = outbox.in_flight.as_mut() else { return Poll::Pending };
        let sent = std::task::ready!(in_flight.as_mut().poll(cx));
        outbox.in_flight = None;
        Poll::Ready(sent)
    }
}

impl fmt::Debug for WebsocketContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebsocketContext")
            .field("path", &self.scope.path())
            .field("channel_name", &self.membership.channel_name)
            .field("state", &self.state)
            .finish()
    }
}

impl WebsocketContext {
    pub(crate) fn new(
        scope: Scope,
        layer: Option<Arc<dyn ChannelLayer>>,
        channel_name: Option<String>,
        send_timeout: Duration,
    ) -> Self {
        Self {
            scope,
            membership: Membership::new(layer, channel_name),
            state: State::Connecting(Box::default()),
            socket: None,
            send_timeout,
            batching: false,
            outbox: None,
        }
    }

    pub(crate) fn attach(&mut self, socket: WsStream) {
        self.socket = Some(std::sync::Mutex::new(socket));
    }

    pub(crate) fn detach(&mut self) {
        self.socket = None;
    }

    pub(crate) fn socket_mut(&mut self) -> Option<&mut WsStream> {
        self.socket.as_mut().map(unlocked)
    }

    fn outbox_mut(&mut self) -> Option<&mut Outbox> {
        self.outbox.as_mut().map(|m| unlocked(m))
    }

    /// The socket and the queued group sends, borrowed together for the connection's loop.
    pub(crate) fn socket_and_outbox(&mut self) -> (Option<&mut WsStream>, Option<&mut Outbox>) {
        (self.socket.as_mut().map(unlocked), self.outbox.as_mut().map(|m| unlocked(m)))
    }

    /// True when so many group sends wait that the client should not be read for now.
    pub(crate) fn outbox_full(&mut self) -> bool {
        self.outbox_mut().is_some_and(|o| o.queued.len() >= OUTBOX_LIMIT)
    }

    /// Starts sending queued group sends when no batch is in flight; true if a batch started.
    pub(crate) fn start_sends(&mut self) -> bool {
        match (&self.membership.layer, self.outbox.as_mut()) {
            (Some(layer), Some(outbox)) => unlocked(outbox).start(layer, self.membership.channel_name.as_ref(), true),
            _ => false,
        }
    }

    /// Records a finished batch.
    pub(crate) fn settle_sends(&mut self, sent: Sent) {
        let timed = self.membership.layer.as_ref().is_some_and(|layer| !layer.batch_linger().is_zero());
        if let Some(outbox) = self.outbox_mut() {
            outbox.settle(sent, timed);
        }
    }

    /// Queued group sends that failed, for the consumer's
    /// [`group_send_failed`](crate::consumer::WebsocketConsumer::group_send_failed) hook.
    pub(crate) fn take_send_failures(&mut self) -> Vec<(String, GroupError)> {
        self.outbox_mut().map(|o| std::mem::take(&mut o.failed)).unwrap_or_default()
    }

    pub(crate) fn has_send_failures(&mut self) -> bool {
        self.outbox_mut().is_some_and(|o| !o.failed.is_empty())
    }

    /// Waits until every queued group send is done (failures are kept for the hook).
    pub(crate) async fn drain_sends(&mut self) {
        loop {
            // Only the batch is held across the wait: this future is inside every hook future
            // that sends, and inside every connection's task (its teardown).
            let in_flight = {
                let (Some(layer), Some(outbox)) = (&self.membership.layer, self.outbox.as_mut()) else { return };
                let outbox = unlocked(outbox);
                if outbox.lingered {
                    // A wait for the next batch, not a batch: what is queued goes now.
                    outbox.in_flight = None;
                }
                outbox.start(layer, self.membership.channel_name.as_ref(), false);
                let Some(in_flight) = outbox.in_flight.take() else { return };
                in_flight
            };
            let sent = in_flight.await;
            self.settle_sends(sent);
        }
    }

    /// The connection's scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// This connection's channel name, when a channel layer is configured.
    pub fn channel_name(&self) -> Option<&str> {
        self.membership.channel_name.as_deref()
    }

    pub(crate) fn shared_channel_name(&self) -> Option<Arc<str>> {
        self.membership.channel_name.clone()
    }

    /// The channel layer, when one is configured.
    pub fn channel_layer(&self) -> Option<&Arc<dyn ChannelLayer>> {
        self.membership.layer.as_ref()
    }

    /// Accepts the connection (inside `connect`). The 101 response goes out when `connect` returns.
    ///
    /// Anywhere else (another hook, or after [`deny`](Self::deny)) it does nothing and logs an
    /// error; [`accept_with`](Self::accept_with) reports that misuse as an error instead.
    pub fn accept(&mut self) {
        if let Err(e) = self.accept_with(None, Vec::new()) {
            tracing::error!(path = %self.scope.path(), error = %e, "accept ignored");
        }
    }

    /// Accepts, selecting `subprotocol`, which must be one the client offered.
    pub fn accept_subprotocol(&mut self, subprotocol: &str) -> Result<(), ContextError> {
        self.accept_with(Some(subprotocol), Vec::new())
    }

    /// Accepts with an optional subprotocol and extra response headers.
    ///
    /// # Errors
    /// [`ContextError::InvalidAccept`] for a subprotocol the client did not offer, a bad header,
    /// or a call outside `connect` (or after a denial there), where there is no handshake left
    /// to answer.
    pub fn accept_with(
        &mut self,
        subprotocol: Option<&str>,
        headers: Vec<(String, String)>,
    ) -> Result<(), ContextError> {
        if let Some(p) = subprotocol
            && !self.scope.subprotocols().iter().any(|offered| offered == p)
        {
            return Err(ContextError::InvalidAccept(format!("the client did not offer subprotocol {p:?}")));
        }
        let headers = headers
            .into_iter()
            .map(|(k, v)| match (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
                (Ok(k), Ok(v)) => Ok((k, v)),
                _ => Err(ContextError::InvalidAccept(format!("invalid header {k:?}: {v:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        match &mut self.state {
            State::Connecting(connecting) => {
                connecting.accepted = Some(Acceptance { subprotocol: subprotocol.map(str::to_owned), headers });
                Ok(())
            }
            // The handshake's answer is decided when `connect` returns: too late, or denied.
            _ => Err(ContextError::InvalidAccept("accept is possible only inside connect, before a denial".into())),
        }
    }

    /// Denies the connection (inside `connect`): the client gets HTTP 403.
    pub fn deny(&mut self) {
        self.deny_with_code(crate::consumer::close_code::NORMAL);
    }

    fn deny_with_code(&mut self, code: u16) {
        if matches!(self.state, State::Connecting(_)) {
            self.state = State::Denied { code };
        }
    }

    /// True once `accept` was called (and the connection is not closed).
    pub fn is_accepted(&self) -> bool {
        match &self.state {
            State::Connecting(connecting) => connecting.accepted.is_some(),
            State::Open => true,
            _ => false,
        }
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), ContextError> {
        let text = text.into();
        if self.buffered(true, text.as_bytes()) {
            return Ok(());
        }
        self.send_frame(WsMessage::Text(text)).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: impl Into<Bytes>) -> Result<(), ContextError> {
        let data = data.into();
        if self.buffered(false, &data) {
            return Ok(());
        }
        self.send_frame(WsMessage::Binary(data)).await
    }

    /// During a burst of layer messages, puts a data frame straight into the socket's write
    /// buffer when it has room, without the futures of the general path: most frames a
    /// server sends go this way.
    fn buffered(&mut self, text: bool, payload: &[u8]) -> bool {
        self.batching
            && matches!(self.state, State::Open)
            && self.socket_mut().is_some_and(|socket| socket.buffer_data_frame(text, payload))
    }

    /// Sends `value` as a JSON text frame.
    pub async fn send_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ContextError> {
        let text = serde_json::to_string(value).map_err(ContextError::Json)?;
        self.send_text(text).await
    }

    /// Sends a channel-layer message as a JSON text frame, as it is (`"type"` included). The
    /// JSON is rendered once per message and shared by every connection the message reached
    /// (see [`Message::to_json`]), so forwarding a group event to N members renders it once,
    /// not N times. Use it from [`WebsocketConsumer::message`](crate::consumer::WebsocketConsumer::message).
    pub async fn send_message_json(&mut self, message: &Message) -> Result<(), ContextError> {
        let text = message.json().map_err(ContextError::Message)?;
        if self.buffered(true, text.as_bytes()) {
            return Ok(());
        }
        self.send_frame(WsMessage::Text(text.clone())).await
    }

    async fn send_frame(&mut self, frame: WsMessage) -> Result<(), ContextError> {
        match &mut self.state {
            State::Connecting(connecting) => match connecting.as_mut() {
                Connecting { closing: Some(_), .. } => Err(ContextError::Closed),
                Connecting { accepted: None, .. } => Err(ContextError::NotAccepted),
                Connecting { pending, .. } => {
                    pending.push(frame);
                    Ok(())
                }
            },
            State::Denied { .. } | State::Closing { .. } | State::Closed => Err(ContextError::Closed),
            State::Open => self.write(frame).await,
        }
    }

    /// Writes one frame through tungstenite within the send timeout (not flushed, while
    /// batching); a failure marks the socket closed. Data frames sent during a burst usually
    /// take the shorter way of [`buffered`](Self::buffered) first.
    pub(crate) async fn write(&mut self, frame: WsMessage) -> Result<(), ContextError> {
        let (send_timeout, batching) = (self.send_timeout, self.batching);
        let Some(socket) = self.socket_mut() else {
            return Err(ContextError::Closed);
        };
        let written = if batching {
            within(send_timeout, socket.feed(frame)).await
        } else {
            within(send_timeout, socket.send(frame)).await
        };
        self.check(written)
    }

    /// Sends what is buffered, within the send timeout.
    pub(crate) async fn flush(&mut self) -> Result<(), ContextError> {
        let send_timeout = self.send_timeout;
        let Some(socket) = self.socket_mut() else {
            return Err(ContextError::Closed);
        };
        let flushed = within(send_timeout, socket.flush()).await;
        self.check(flushed)
    }

    fn check(
        &mut self,
        outcome: Result<Result<(), tokio_tungstenite::tungstenite::Error>, tokio::time::error::Elapsed>,
    ) -> Result<(), ContextError> {
        let error = match outcome {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => ContextError::Socket(e),
            Err(_) => ContextError::SendTimeout,
        };
        self.state = State::Closed;
        Err(error)
    }

    /// Closes the connection with `code` (1000 is normal; 4000-4999 are yours). Inside `connect`,
    /// before `accept`, this denies with HTTP 403 and reports `code` to test communicators.
    pub async fn close(&mut self, code: u16) -> Result<(), ContextError> {
        self.close_with_reason(code, "").await
    }

    /// Closes the connection with a code and a reason (at most 123 bytes; longer is cut).
    pub async fn close_with_reason(&mut self, code: u16, reason: &str) -> Result<(), ContextError> {
        match &mut self.state {
            State::Connecting(connecting) if connecting.accepted.is_none() => {
                self.deny_with_code(code);
                Ok(())
            }
            State::Connecting(connecting) => {
                if connecting.closing.is_none() {
                    connecting.pending.push(close_message(code, reason));
                    connecting.closing = Some(code);
                }
                Ok(())
            }
            State::Open => {
                self.state = State::Closing { code };
                let send_timeout = self.send_timeout;
                let Some(socket) = self.socket_mut() else {
                    return Err(ContextError::Closed);
                };
                let failure = match tokio::time::timeout(send_timeout, socket.send(close_message(code, reason))).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(e)) => ContextError::Socket(e),
                    Err(_) => ContextError::SendTimeout,
                };
                // No close frame went out, so no reply will come: the connection ends now
                // instead of waiting `close_timeout` for one.
                self.state = State::Closed;
                Err(failure)
            }
            State::Denied { .. } | State::Closing { .. } | State::Closed => Ok(()),
        }
    }

    // ---- channel layer operations ----

    /// Adds this connection to `group`. The membership is renewed before `group_expiry` for as
    /// long as the connection lives, and dropped when it ends.
    pub async fn group_add(&mut self, group: &str) -> Result<(), ContextError> {
        self.drain_sends().await;
        self.membership.group_add(group).await
    }

    /// Removes this connection from `group` (after any queued group sends).
    pub async fn group_discard(&mut self, group: &str) -> Result<(), ContextError> {
        self.drain_sends().await;
        self.membership.group_discard(group).await
    }

    /// The groups this connection is in (joined through [`groups`](crate::WebsocketConsumer::groups)
    /// or [`group_add`](Self::group_add)).
    pub fn groups(&self) -> &[String] {
        &self.membership.groups
    }

    /// Encodes `event` once and sends it to every member of `group` (this connection included,
    /// if it is a member). Messages queued with [`group_send_nowait`](Self::group_send_nowait)
    /// go first, so the order of this connection's messages is kept.
    pub async fn group_send<T: Serialize + ?Sized>(
        &mut self,
        group: &str,
        event: &T,
    ) -> Result<GroupSendReport, ContextError> {
        self.drain_sends().await;
        self.membership.group_send(group, event).await
    }

    /// Encodes `event` once and queues it for every member of `group`, returning at once; the
    /// connection sends its queued messages in order, in batches, while the consumer goes on
    /// with the next frame.
    ///
    /// Over Redis an awaited [`group_send`](Self::group_send) waits two round trips, and a
    /// consumer that awaits one per client message handles one message per two round trips.
    /// Queued, the messages that arrive meanwhile go together in the next batch (two round
    /// trips for the batch), and receivers get them together: fewer system calls per delivery.
    /// A batch that would start right after this connection's previous one first waits the
    /// layer's [`batch_linger`](ChannelLayer::batch_linger) (1 ms over Redis by default, none
    /// in memory), taking what is queued meanwhile. When this connection is in `group`, a
    /// layer that can tell without a round trip puts its own copy on its channel at once
    /// ([`ChannelLayer::group_send_echo`]; the Redis layer does), unless an earlier queued send
    /// could not be: its own messages come back in order. With the in-memory layer it makes
    /// little difference.
    ///
    /// A send that fails is reported to
    /// [`WebsocketConsumer::group_send_failed`](crate::consumer::WebsocketConsumer::group_send_failed)
    /// (the default logs it). Every other layer operation of this context waits for the queue
    /// first, and so does `disconnect`: queued messages are not lost when the client leaves.
    /// While 256 messages wait, the client's next frames are not read.
    ///
    /// ```
    /// use channels_core::prelude::*;
    /// use serde::Serialize;
    ///
    /// #[derive(Serialize)]
    /// #[serde(tag = "type", rename = "chat.message")]
    /// struct Said<'a> {
    ///     text: &'a str,
    /// }
    ///
    /// struct Room;
    ///
    /// impl WebsocketConsumer for Room {
    ///     type Event = NoEvents;
    ///
    ///     fn groups(&self) -> Vec<String> {
    ///         vec!["lobby".into()]
    ///     }
    ///
    ///     async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
    ///         if let Some(text) = frame.as_text() {
    ///             ctx.group_send_nowait("lobby", &Said { text })?;
    ///         }
    ///         Ok(())
    ///     }
    ///
    ///     async fn group_send_failed(
    ///         &mut self,
    ///         ctx: &mut WebsocketContext,
    ///         _group: &str,
    ///         _error: ContextError,
    ///     ) -> HandlerResult {
    ///         ctx.send_text("not delivered").await?;
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn group_send_nowait<T: Serialize + ?Sized>(&mut self, group: &str, event: &T) -> Result<(), ContextError> {
        if self.membership.layer.is_none() {
            return Err(ContextError::NoLayer);
        }
        validate_group_name(group).map_err(|e| ContextError::Group(e.into()))?;
        let message = Message::new(event).map_err(ContextError::Message)?;
        let outbox = unlocked(self.outbox.get_or_insert_with(Box::default));
        let echoed = outbox.may_echo()
            && match (&self.membership.layer, &self.membership.channel_name) {
                (Some(layer), Some(channel)) => layer.group_send_echo(group, channel, &message),
                _ => false,
            };
        outbox.queued.push((group.to_owned(), message));
        outbox.echoed += usize::from(echoed);
        Ok(())
    }

    /// Sends `event` to one channel (another connection's [`channel_name`](Self::channel_name),
    /// or a worker channel), after any queued group sends.
    pub async fn send_to<T: Serialize + ?Sized>(&mut self, channel: &str, event: &T) -> Result<(), ContextError> {
        self.drain_sends().await;
        self.membership.send_to(channel, event).await
    }

    pub(crate) async fn leave_groups(&mut self) {
        self.membership.leave_all().await;
    }
}

/// A connection's (or request's, or worker's) place on the channel layer: its channel and the
/// groups it joined. Shared by every kind of context.
#[derive(Default)]
pub(crate) struct Membership {
    pub(crate) layer: Option<Arc<dyn ChannelLayer>>,
    /// Shared, so that the connection's receive loop can hold it without a copy.
    pub(crate) channel_name: Option<Arc<str>>,
    pub(crate) groups: Vec<String>,
}

impl Membership {
    pub(crate) fn new(layer: Option<Arc<dyn ChannelLayer>>, channel_name: Option<String>) -> Self {
        Self { layer, channel_name: channel_name.map(Arc::from), groups: Vec::new() }
    }

    fn layer(&self) -> Result<&Arc<dyn ChannelLayer>, ContextError> {
        self.layer.as_ref().ok_or(ContextError::NoLayer)
    }

    fn layer_and_channel(&self) -> Result<(&Arc<dyn ChannelLayer>, &str), ContextError> {
        match (&self.layer, &self.channel_name) {
            (Some(layer), Some(name)) => Ok((layer, name)),
            _ => Err(ContextError::NoLayer),
        }
    }

    pub(crate) async fn group_add(&mut self, group: &str) -> Result<(), ContextError> {
        let (layer, channel) = self.layer_and_channel()?;
        layer.group_add(group, channel).await.map_err(ContextError::Group)?;
        if !self.groups.iter().any(|g| g == group) {
            self.groups.push(group.to_owned());
        }
        Ok(())
    }

    pub(crate) async fn group_discard(&mut self, group: &str) -> Result<(), ContextError> {
        let (layer, channel) = self.layer_and_channel()?;
        layer.group_discard(group, channel).await.map_err(ContextError::Group)?;
        self.groups.retain(|g| g != group);
        Ok(())
    }

    pub(crate) async fn group_send<T: Serialize + ?Sized>(
        &self,
        group: &str,
        event: &T,
    ) -> Result<GroupSendReport, ContextError> {
        let layer = self.layer()?;
        let message = Message::new(event).map_err(ContextError::Message)?;
        layer.group_send(group, message).await.map_err(ContextError::Group)
    }

    pub(crate) async fn send_to<T: Serialize + ?Sized>(&self, channel: &str, event: &T) -> Result<(), ContextError> {
        let layer = self.layer()?;
        let message = Message::new(event).map_err(ContextError::Message)?;
        layer.send(channel, message).await.map_err(ContextError::Send)
    }

    /// Leaves every group (errors are logged), then lets the layer release the channel.
    pub(crate) async fn leave_all(&mut self) {
        for group in std::mem::take(&mut self.groups) {
            if let (Some(layer), Some(channel)) = (&self.layer, &self.channel_name)
                && let Err(e) = layer.group_discard(&group, channel).await
            {
                tracing::warn!(%group, error = %e, "could not leave a group");
            }
        }
        if let (Some(layer), Some(channel)) = (&self.layer, &self.channel_name) {
            layer.forget_channel(channel).await;
        }
    }
}

/// A close frame; the reason is cut to the 123 bytes a control frame allows, on a char boundary.
pub(crate) fn close_message(code: u16, reason: &str) -> WsMessage {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    WsMessage::Close(Some(CloseFrame { code: close_code_from(code), reason: reason[..end].into() }))
}
