//! Consumers: one instance per connection, with hooks the server calls in order.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::context::{ContextError, WebsocketContext};
use crate::layer::{DEFAULT_ALIAS, Message};

#[doc(no_inline)]
pub use crate::frame::{Frame, Utf8Bytes, close_code};

/// Any error a handler returns; the server logs it and closes the socket with 1011.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What every consumer hook returns.
pub type HandlerResult = Result<(), BoxError>;

/// The `Event` type of a consumer that receives no channel-layer events: every event is
/// logged and dropped.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum NoEvents {}

/// What [`WebsocketConsumer::message`] does by default: decodes `message` into the consumer's
/// `Event` and runs its `event` hook; a message of a type the consumer does not handle is
/// logged and dropped.
pub async fn decode_and_dispatch<C: WebsocketConsumer + ?Sized>(
    consumer: &mut C,
    ctx: &mut WebsocketContext,
    message: Message,
) -> HandlerResult {
    match message.decode::<C::Event>() {
        Ok(event) => consumer.event(ctx, event).await,
        Err(e) => {
            tracing::warn!(
                r#type = message.message_type(),
                path = %ctx.scope().path(),
                error = %e,
                "dropping a channel-layer event this consumer does not handle"
            );
            Ok(())
        }
    }
}

/// A WebSocket consumer: Django's `AsyncWebsocketConsumer`.
///
/// The server builds one instance per connection (see [`crate::routing::Router::websocket`]),
/// joins [`groups`](Self::groups), calls [`connect`](Self::connect), then calls
/// [`receive`](Self::receive) for each client frame and [`event`](Self::event) for each
/// channel-layer message, **one at a time, in order**, and finally
/// [`disconnect`](Self::disconnect) exactly once, whoever closed the connection, before it
/// leaves the groups.
///
/// Layer events are typed: `Event` is usually an enum tagged by `"type"`, so
/// `{"type": "chat.message", ...}` sent by any process (Django included) arrives as
/// `ChatEvent::Message { .. }`. An event whose type does not fit is logged and dropped; the
/// connection stays up.
///
/// ```
/// use channels_core::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// #[serde(tag = "type")]
/// enum RoomEvent {
///     #[serde(rename = "chat.message")]
///     Message { text: String },
/// }
///
/// struct Room { group: String }
///
/// impl WebsocketConsumer for Room {
///     type Event = RoomEvent;
///
///     fn groups(&self) -> Vec<String> {
///         vec![self.group.clone()]
///     }
///
///     async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
///         if let Some(text) = frame.as_text() {
///             ctx.group_send(&self.group, &RoomEvent::Message { text: text.into() }).await?;
///         }
///         Ok(())
///     }
///
///     async fn event(&mut self, ctx: &mut WebsocketContext, event: RoomEvent) -> HandlerResult {
///         let RoomEvent::Message { text } = event;
///         ctx.send_text(text).await?;
///         Ok(())
///     }
/// }
/// ```
pub trait WebsocketConsumer: Send + 'static {
    /// The channel-layer events this consumer handles; [`NoEvents`] for none.
    type Event: DeserializeOwned + Send + 'static;

    /// Which configured channel layer this consumer uses.
    const LAYER_ALIAS: &'static str = DEFAULT_ALIAS;

    /// Groups joined before [`connect`](Self::connect) and left after
    /// [`disconnect`](Self::disconnect).
    fn groups(&self) -> Vec<String> {
        Vec::new()
    }

    /// The client asks to connect. Call [`WebsocketContext::accept`] (the default does) or
    /// [`WebsocketContext::deny`]; returning without accepting denies with HTTP 403.
    fn connect(&mut self, ctx: &mut WebsocketContext) -> impl Future<Output = HandlerResult> + Send {
        ctx.accept();
        async { Ok(()) }
    }

    /// The client sent a frame. An empty text frame never arrives here: it is a client's
    /// heartbeat (`channels.js` sends one when the connection has been quiet), and the server
    /// answers it with an empty text frame itself.
    fn receive(&mut self, _ctx: &mut WebsocketContext, _frame: Frame) -> impl Future<Output = HandlerResult> + Send {
        async { Ok(()) }
    }

    /// A channel-layer message arrived for this connection.
    fn event(
        &mut self,
        _ctx: &mut WebsocketContext,
        _event: Self::Event,
    ) -> impl Future<Output = HandlerResult> + Send {
        async { Ok(()) }
    }

    /// A channel-layer message arrived, not yet decoded. The default is [`decode_and_dispatch`]:
    /// decode it into [`Event`](Self::Event) and run [`event`](Self::event); a message of a type
    /// this consumer does not handle is logged and dropped.
    ///
    /// Override it to pass messages on without decoding them: with
    /// [`WebsocketContext::send_message_json`], a group event forwarded as it is costs one JSON
    /// rendering for the whole group instead of a decode and an encode per member.
    ///
    /// ```
    /// use channels_core::consumer::decode_and_dispatch;
    /// use channels_core::layer::Message;
    /// use channels_core::prelude::*;
    ///
    /// struct Relay;
    ///
    /// impl WebsocketConsumer for Relay {
    ///     type Event = NoEvents;
    ///
    ///     async fn message(&mut self, ctx: &mut WebsocketContext, message: Message) -> HandlerResult {
    ///         if message.message_type().starts_with("chat.") {
    ///             ctx.send_message_json(&message).await?;
    ///             Ok(())
    ///         } else {
    ///             decode_and_dispatch(self, ctx, message).await
    ///         }
    ///     }
    /// }
    /// ```
    fn message(&mut self, ctx: &mut WebsocketContext, message: Message) -> impl Future<Output = HandlerResult> + Send {
        decode_and_dispatch(self, ctx, message)
    }

    /// The connection is over: `code` is the client's close code, the server's own (1001 on
    /// shutdown, 1009, 1007, 1011...), or 1006 when the client vanished.
    fn disconnect(&mut self, _ctx: &mut WebsocketContext, _code: u16) -> impl Future<Output = HandlerResult> + Send {
        async { Ok(()) }
    }

    /// A message queued with [`WebsocketContext::group_send_nowait`] could not be sent (the
    /// channel layer failed). The default logs a warning; override it to tell the client.
    fn group_send_failed(
        &mut self,
        ctx: &mut WebsocketContext,
        group: &str,
        error: ContextError,
    ) -> impl Future<Output = HandlerResult> + Send {
        log_failed_send(ctx, group, &error);
        async { Ok(()) }
    }
}

/// What the default `group_send_failed` hooks do.
fn log_failed_send(ctx: &WebsocketContext, group: &str, error: &ContextError) {
    tracing::warn!(path = %ctx.scope().path(), %group, %error, "a queued group_send failed");
}

/// Why a [`JsonWebsocketConsumer`] could not take a client frame.
#[derive(Debug)]
#[non_exhaustive]
pub enum JsonFrameError {
    /// A binary frame arrived.
    Binary,
    /// The text is empty or not JSON of the expected shape.
    Invalid(serde_json::Error),
}

impl std::fmt::Display for JsonFrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Binary => f.write_str("expected a JSON text frame, got a binary frame"),
            Self::Invalid(e) => write!(f, "invalid JSON message: {e}"),
        }
    }
}

impl std::error::Error for JsonFrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Binary => None,
            Self::Invalid(e) => Some(e),
        }
    }
}

/// A consumer that speaks JSON text frames: Django's `AsyncJsonWebsocketConsumer`.
///
/// Every type that implements it is a [`WebsocketConsumer`]. Client frames are decoded into
/// `Inbound`; a binary frame closes with 1003 and a frame that does not decode closes with 1007,
/// unless [`receive_invalid`](Self::receive_invalid) is overridden.
pub trait JsonWebsocketConsumer: Send + 'static {
    /// The client messages, decoded from JSON.
    type Inbound: DeserializeOwned + Send;
    /// The channel-layer events; see [`WebsocketConsumer::Event`].
    type Event: DeserializeOwned + Send + 'static;
    /// Which configured channel layer this consumer uses.
    const LAYER_ALIAS: &'static str = DEFAULT_ALIAS;

    /// See [`WebsocketConsumer::groups`].
    fn groups(&self) -> Vec<String> {
        Vec::new()
    }

    /// See [`WebsocketConsumer::connect`].
    fn connect(&mut self, ctx: &mut WebsocketContext) -> impl Future<Output = HandlerResult> + Send {
        ctx.accept();
        async { Ok(()) }
    }

    /// The client sent a JSON message.
    fn receive_json(
        &mut self,
        ctx: &mut WebsocketContext,
        message: Self::Inbound,
    ) -> impl Future<Output = HandlerResult> + Send;

    /// The client sent a frame that is not a JSON `Inbound`. The default closes the connection
    /// (1003 for binary, 1007 for bad JSON).
    fn receive_invalid(
        &mut self,
        ctx: &mut WebsocketContext,
        error: JsonFrameError,
    ) -> impl Future<Output = HandlerResult> + Send {
        async move {
            let code = match error {
                JsonFrameError::Binary => close_code::UNSUPPORTED_DATA,
                JsonFrameError::Invalid(_) => close_code::INVALID_PAYLOAD,
            };
            let reason = error.to_string();
            ctx.close_with_reason(code, &reason).await?;
            Ok(())
        }
    }

    /// See [`WebsocketConsumer::event`].
    fn event(
        &mut self,
        _ctx: &mut WebsocketContext,
        _event: Self::Event,
    ) -> impl Future<Output = HandlerResult> + Send {
        async { Ok(()) }
    }

    /// See [`WebsocketConsumer::disconnect`].
    fn disconnect(&mut self, _ctx: &mut WebsocketContext, _code: u16) -> impl Future<Output = HandlerResult> + Send {
        async { Ok(()) }
    }

    /// See [`WebsocketConsumer::group_send_failed`].
    fn group_send_failed(
        &mut self,
        ctx: &mut WebsocketContext,
        group: &str,
        error: ContextError,
    ) -> impl Future<Output = HandlerResult> + Send {
        log_failed_send(ctx, group, &error);
        async { Ok(()) }
    }
}

impl<T: JsonWebsocketConsumer> WebsocketConsumer for T {
    type Event = T::Event;
    const LAYER_ALIAS: &'static str = T::LAYER_ALIAS;

    fn groups(&self) -> Vec<String> {
        JsonWebsocketConsumer::groups(self)
    }

    fn connect(&mut self, ctx: &mut WebsocketContext) -> impl Future<Output = HandlerResult> + Send {
        JsonWebsocketConsumer::connect(self, ctx)
    }

    async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
        let parsed = match &frame {
            Frame::Binary(_) => Err(JsonFrameError::Binary),
            Frame::Text(text) => serde_json::from_str(text).map_err(JsonFrameError::Invalid),
        };
        match parsed {
            Ok(message) => self.receive_json(ctx, message).await,
            Err(error) => self.receive_invalid(ctx, error).await,
        }
    }

    fn event(&mut self, ctx: &mut WebsocketContext, event: Self::Event) -> impl Future<Output = HandlerResult> + Send {
        JsonWebsocketConsumer::event(self, ctx, event)
    }

    fn disconnect(&mut self, ctx: &mut WebsocketContext, code: u16) -> impl Future<Output = HandlerResult> + Send {
        JsonWebsocketConsumer::disconnect(self, ctx, code)
    }

    fn group_send_failed(
        &mut self,
        ctx: &mut WebsocketContext,
        group: &str,
        error: ContextError,
    ) -> impl Future<Output = HandlerResult> + Send {
        JsonWebsocketConsumer::group_send_failed(self, ctx, group, error)
    }
}
