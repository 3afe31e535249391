//! Workers: consumers bound to named channels instead of connections — Django's `runworker`
//! with a `ChannelNameRouter`.
//!
//! Any process sends work with `layer.send("thumbnails", message)`; a [`WorkerRouter`] running
//! in this binary, or in another process on the same (Redis) layer, receives it and calls the
//! consumer routed to that channel name, one message at a time.
//!
//! **Delivery** is the layer's: at most once. A message waits up to `expiry` for a worker; if no
//! worker runs, it is lost then. With several workers on one channel (over Redis), each message
//! goes to one of them. Handlers that must not lose work should record it in a database and
//! use the message only as a wake-up.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::consumer::HandlerResult;
use crate::error::ContextError;
use crate::guarded::guarded;
use crate::layer::{ChannelLayer, GroupSendReport};
use crate::membership::Membership;

/// A consumer of one named channel.
///
/// ```
/// use channels_core::prelude::*;
/// use channels_core::worker::{WorkerConsumer, WorkerContext};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// #[serde(tag = "type", rename = "thumbnail.make")]
/// struct MakeThumbnail { path: String }
///
/// struct Thumbnailer;
///
/// impl WorkerConsumer for Thumbnailer {
///     type Event = MakeThumbnail;
///     async fn handle(&mut self, ctx: &WorkerContext, job: MakeThumbnail) -> HandlerResult {
///         println!("resizing {} (from channel {})", job.path, ctx.channel());
///         Ok(())
///     }
/// }
/// ```
pub trait WorkerConsumer: Send + 'static {
    /// The messages this worker handles.
    type Event: DeserializeOwned + Send + 'static;

    /// Handles one message. An error is logged; the worker goes on with the next message.
    fn handle(&mut self, ctx: &WorkerContext, event: Self::Event) -> impl Future<Output = HandlerResult> + Send;
}

/// What a worker's handler can do besides its own work: send on the layer.
pub struct WorkerContext {
    membership: Membership,
}

impl std::fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerContext").field("channel", &self.channel()).finish()
    }
}

impl WorkerContext {
    /// The channel this worker receives on.
    pub fn channel(&self) -> &str {
        self.membership.channel_name.as_deref().unwrap_or_default()
    }

    /// The layer.
    pub fn channel_layer(&self) -> &Arc<dyn ChannelLayer> {
        match &self.membership.layer {
            Some(layer) => layer,
            None => unreachable!("a worker context is always built with its layer"),
        }
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
}

type WorkerLoop =
    Box<dyn FnOnce(Arc<dyn ChannelLayer>, tokio_util::sync::CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// Routes named channels to worker consumers: Django's `ChannelNameRouter`.
///
/// ```no_run
/// # use channels_core::prelude::*;
/// # use channels_core::worker::{WorkerConsumer, WorkerContext, WorkerRouter};
/// # struct Thumbnailer;
/// # impl WorkerConsumer for Thumbnailer {
/// #     type Event = NoEvents;
/// #     async fn handle(&mut self, _: &WorkerContext, _: NoEvents) -> HandlerResult { Ok(()) }
/// # }
/// # async fn demo(layer: std::sync::Arc<dyn channels_core::layer::ChannelLayer>) {
/// WorkerRouter::new()
///     .route("thumbnails", Thumbnailer)
///     .run(layer, channels_core::server::shutdown_signal())
///     .await;
/// # }
/// ```
#[derive(Default)]
pub struct WorkerRouter {
    routes: Vec<(String, WorkerLoop)>,
}

impl std::fmt::Debug for WorkerRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.routes.iter().map(|(name, _)| name)).finish()
    }
}

impl WorkerRouter {
    /// No routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds messages on `channel` (a name without `!`) to `consumer`.
    ///
    /// # Panics
    /// If `channel` is not a valid channel name or is process-specific (contains `!`).
    pub fn route<C: WorkerConsumer>(mut self, channel: &str, consumer: C) -> Self {
        assert!(
            crate::layer::validate_channel_name(channel).is_ok() && !channel.contains('!'),
            "worker channel {channel:?} must be a valid name without '!'"
        );
        let name = channel.to_owned();
        let run: WorkerLoop = Box::new(move |layer, stop| Box::pin(work(consumer, layer, name, stop)));
        self.routes.push((channel.to_owned(), run));
        self
    }

    /// Runs every route until `shutdown` completes; a message being handled then is finished first.
    pub async fn run(self, layer: Arc<dyn ChannelLayer>, shutdown: impl Future<Output = ()> + Send) {
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks: Vec<_> =
            self.routes.into_iter().map(|(_, run)| tokio::spawn(run(layer.clone(), stop.clone()))).collect();
        shutdown.await;
        stop.cancel();
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Runs every route in the background of this process until the returned guard is dropped
    /// (or the runtime ends).
    pub fn spawn(self, layer: Arc<dyn ChannelLayer>) -> WorkerGuard {
        let stop = tokio_util::sync::CancellationToken::new();
        for (_, run) in self.routes {
            tokio::spawn(run(layer.clone(), stop.clone()));
        }
        WorkerGuard { stop: stop.drop_guard() }
    }
}

/// Stops the workers started by [`WorkerRouter::spawn`] when dropped.
#[derive(Debug)]
pub struct WorkerGuard {
    #[allow(dead_code)]
    stop: tokio_util::sync::DropGuard,
}

async fn work<C: WorkerConsumer>(
    mut consumer: C,
    layer: Arc<dyn ChannelLayer>,
    channel: String,
    stop: tokio_util::sync::CancellationToken,
) {
    let ctx = WorkerContext { membership: Membership::new(Some(layer.clone()), Some(channel.clone())) };
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            received = layer.receive(&channel) => received,
        };
        let message = match received {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(%channel, error = %e, "worker receive failed; retrying in 1 s");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        match message.decode::<C::Event>() {
            Ok(event) => {
                if let Err(e) = guarded(consumer.handle(&ctx, event)).await {
                    tracing::error!(%channel, error = %e, "worker handler failed");
                }
            }
            Err(e) => {
                tracing::warn!(%channel, r#type = message.message_type(), error = %e, "dropping a message this worker does not handle")
            }
        }
    }
}
