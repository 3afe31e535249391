//! The queue behind `group_send_nowait`: group sends that go in batches while the connection
//! goes on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::layer::{ChannelLayer, GroupError, GroupSendReport, Message};

/// The outcome of one batch of queued group sends: the sends, then a report for each.
pub(crate) type Sent = (Vec<(String, Message)>, Vec<Result<GroupSendReport, GroupError>>);

/// Group sends queued by
/// [`WebsocketContext::group_send_nowait`](super::WebsocketContext::group_send_nowait): sent in
/// order, one batch at a time, while the connection goes on.
#[derive(Default)]
pub(crate) struct Outbox {
    pub(super) queued: Vec<(String, Message)>,
    /// How many of the queued sends, from the first, had their copy for this connection put on
    /// its channel at once ([`ChannelLayer::group_send_echo`]; see [`Outbox::may_echo`]).
    pub(super) echoed: usize,
    /// The batch being sent, or the wait before it (which ends with an empty [`Sent`]).
    pub(super) in_flight: Option<Pin<Box<dyn Future<Output = Sent> + Send>>>,
    /// The batch in flight holds a send that was not echoed.
    in_flight_unechoed: bool,
    pub(super) failed: Vec<(String, GroupError)>,
    /// When the last batch was done, for the layer's [`ChannelLayer::batch_linger`] (only
    /// when it has one: the clock is not read for nothing).
    last_done: Option<tokio::time::Instant>,
    /// The next batch has waited its linger already.
    pub(super) lingered: bool,
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
    pub(super) fn start(&mut self, layer: &Arc<dyn ChannelLayer>, channel: Option<&Arc<str>>, linger: bool) -> bool {
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
    pub(super) fn may_echo(&self) -> bool {
        !self.in_flight_unechoed && self.echoed == self.queued.len()
    }

    /// Keeps the failures of a finished batch, and its buffer for the next one; `timed`: the
    /// layer lingers, so the time the batch was done is kept too.
    pub(super) fn settle(&mut self, (mut sends, reports): Sent, timed: bool) {
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
