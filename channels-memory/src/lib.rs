//! The in-memory channel layer: every channel and group lives in this process.
//!
//! Use it for one-process deployments, development and tests. It implements the full
//! [`ChannelLayer`](channels_core::layer::ChannelLayer) semantics (capacity, `ChannelFull`,
//! counted drops on `group_send`, message and group expiry), passes the shared semantics suite,
//! and never holds a lock across an await. For several processes, use the Redis layer.
//!
//! ```
//! use channels_core::layer::{ChannelLayer, LayerConfig, Message};
//! use channels_memory::InMemoryChannelLayer;
//! use std::collections::HashMap;
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = InMemoryChannelLayer::new(LayerConfig::default());
//! let me = layer.new_channel("specific").await.unwrap();
//! layer.group_add("lobby", &me).await.unwrap();
//! let event = HashMap::from([("type", "chat.message"), ("text", "hi")]);
//! layer.group_send("lobby", Message::new(&event).unwrap()).await.unwrap();
//! assert_eq!(layer.receive(&me).await.unwrap().message_type(), "chat.message");
//!
//! // Receiving on one channel again and again, as a connection does on its own: a receiver
//! // remembers where the channel's queue is instead of looking its name up each time.
//! let receiver = Arc::new(layer.clone()).receiver(me.as_str().into());
//! layer.group_send("lobby", Message::new(&event).unwrap()).await.unwrap();
//! assert_eq!(receiver.try_receive().unwrap().message_type(), "chat.message");
//! assert!(receiver.try_receive().is_none());
//!
//! // A burst that waits is taken at once: up to `max` messages, in order.
//! for _ in 0..3 {
//!     layer.group_send("lobby", Message::new(&event).unwrap()).await.unwrap();
//! }
//! let mut burst = Vec::new();
//! receiver.try_receive_many(64, &mut burst);
//! assert_eq!(burst.len(), 3);
//! # }
//! ```

mod groups;
mod layer;
mod queue;
mod receiver;
mod state;
mod sweeper;
#[cfg(test)]
mod test_support;

pub use layer::{InMemoryChannelLayer, LayerStats};
