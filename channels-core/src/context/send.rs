//! Frames to the client: text, binary and JSON, through the socket's write buffer.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{Connecting, State, WebsocketContext};
use crate::error::ContextError;
use crate::frame::Utf8Bytes;
use crate::layer::Message;

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

impl WebsocketContext {
    /// Sends a text frame.
    pub async fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), ContextError> {
        let text = text.into();
        let len = text.len();
        if self.buffered(true, text.as_bytes()) || self.buffered_shared(true, || Bytes::from(text.clone())) {
            self.count_sent(len);
            return Ok(());
        }
        let sent = self.send_frame(WsMessage::Text(text.into_tungstenite())).await;
        self.count_sent_if(&sent, len);
        sent
    }

    /// Counts a data frame handed to the socket (or held for it until the upgrade), when
    /// metrics are on: during a burst in the connection's own tally, which the runtime adds
    /// to the metrics when the burst ends (one add per burst, not per frame).
    #[inline]
    fn count_sent(&mut self, bytes: usize) {
        if self.metrics.is_none() || (self.batching && self.tally_burst_frame(bytes)) {
            return;
        }
        if let Some(metrics) = &self.metrics {
            metrics.sent(1, bytes as u64);
        }
    }

    /// Adds a frame of `bytes` to the burst's tally; `false` (nothing added) when the tally
    /// would overflow.
    #[inline]
    fn tally_burst_frame(&mut self, bytes: usize) -> bool {
        match (self.burst_frames.checked_add(1), self.burst_bytes.checked_add(bytes as u64)) {
            (Some(frames), Some(bytes)) => {
                (self.burst_frames, self.burst_bytes) = (frames, bytes);
                true
            }
            _ => false,
        }
    }

    /// Adds the burst's tally to the metrics and clears it.
    #[inline]
    pub(crate) fn count_burst_sent(&mut self) {
        if self.burst_frames > 0
            && let Some(metrics) = &self.metrics
        {
            metrics.sent(u64::from(self.burst_frames), self.burst_bytes);
            (self.burst_frames, self.burst_bytes) = (0, 0);
        }
    }

    #[inline]
    fn count_sent_if(&mut self, sent: &Result<(), ContextError>, bytes: usize) {
        if sent.is_ok() {
            self.count_sent(bytes);
        }
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: impl Into<Bytes>) -> Result<(), ContextError> {
        let data = data.into();
        let len = data.len();
        if self.buffered(false, &data) || self.buffered_shared(false, || data.clone()) {
            self.count_sent(len);
            return Ok(());
        }
        let sent = self.send_frame(WsMessage::Binary(data)).await;
        self.count_sent_if(&sent, len);
        sent
    }

    /// During a burst of layer messages, puts a data frame straight into the socket's write
    /// buffer when it has room, without the futures of the general path: most frames a
    /// server sends go this way.
    fn buffered(&mut self, text: bool, payload: &[u8]) -> bool {
        self.batching
            && matches!(self.state, State::Open)
            && self.socket_mut().is_some_and(|socket| socket.buffer_data_frame(text, payload))
    }

    /// [`buffered`](Self::buffered) for a frame that did not fit: its payload is kept as a
    /// share of its buffer (from `share`), not copied, so a large frame sent to thousands of
    /// connections costs each a header rather than a copy.
    #[cold]
    fn buffered_shared(&mut self, text: bool, share: impl FnOnce() -> Bytes) -> bool {
        self.batching
            && matches!(self.state, State::Open)
            && self.socket_mut().is_some_and(|socket| socket.buffer_shared_frame(text, share()))
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
        let len = text.len();
        if self.buffered(true, text.as_bytes()) || self.buffered_shared(true, || Bytes::from(text.clone())) {
            self.count_sent(len);
            return Ok(());
        }
        let sent = self.send_frame(WsMessage::Text(text.clone().into_tungstenite())).await;
        self.count_sent_if(&sent, len);
        sent
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
            Ok(Err(e)) => ContextError::socket(e),
            Err(_) => ContextError::SendTimeout,
        };
        self.state = State::Closed;
        Err(error)
    }
}
