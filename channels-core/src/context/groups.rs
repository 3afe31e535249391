//! The connection's channel-layer operations: groups, sends to other channels, and the queue of
//! group sends that do not wait.

use serde::Serialize;

use super::outbox::{OUTBOX_LIMIT, Outbox, Sent};
use super::{WebsocketContext, unlocked};
use crate::error::ContextError;
use crate::io::WsStream;
use crate::layer::{GroupError, GroupSendReport, Message, validate_group_name};
use crate::membership::Shutdown;

impl WebsocketContext {
    fn outbox_mut(&mut self) -> Option<&mut Outbox> {
        self.outbox.as_mut().map(|m| unlocked(m))
    }

    /// The socket and the queued group sends, borrowed together for the connection's loop.
    pub(crate) fn socket_and_outbox(&mut self) -> (Option<&mut WsStream>, Option<&mut Outbox>) {
        (unlocked(&mut self.socket).as_mut(), self.outbox.as_mut().map(|m| unlocked(m)))
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
    /// layer's [`batch_linger`](crate::layer::ChannelLayer::batch_linger) (1 ms over Redis by
    /// default, none in memory), taking what is queued meanwhile. When this connection is in
    /// `group`, a layer that can tell without a round trip puts its own copy on its channel at
    /// once ([`ChannelLayer::group_send_echo`](crate::layer::ChannelLayer::group_send_echo); the
    /// Redis layer does), unless an earlier queued send could not be: its own messages come back
    /// in order. With the in-memory layer it makes little difference.
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

    /// Once shutdown has begun, leaves every group together with the other connections
    /// closing, and returns the groups left (still listed in [`Self::groups`] until
    /// [`Self::leave_groups`]).
    pub(crate) async fn leave_groups_at_shutdown(&self, shutdown: &Shutdown) -> Vec<String> {
        self.membership.leave_at_shutdown(shutdown).await
    }

    /// Leaves every group not in `left`, then lets the layer release the channel.
    pub(crate) async fn leave_groups(&mut self, left: &[String], shutdown: Option<&Shutdown>) {
        self.membership.leave_all(left, shutdown).await;
    }
}
