//! Who is connected to a group, across processes: track, untrack, list, and coalesced diffs.
//!
//! See [`Presence`]. Over the Redis layers presence is shared by every process on the same
//! Redis; in memory it serves one process. The guide is `docs/presence.md`.
//!
//! ```
//! use channels::layers::{ChannelLayer, Message};
//! use channels::presence::Presence;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = channels::layers::from_url("memory://")?;
//! let presence = Presence::new(layer.clone());
//! let alice = layer.new_channel("specific").await?;
//! let phone = layer.new_channel("specific").await?;
//! presence.track("room", &alice, "alice", serde_json::json!({"device": "laptop"}))?;
//! presence.track("room", &phone, "alice", serde_json::json!({"device": "phone"}))?;
//! presence.flush().await; // or wait for the interval
//! assert_eq!(presence.list("room").await?.get("alice").len(), 2);
//!
//! // Each watcher's first message is the state, then diffs.
//! let state: Message = layer.receive(&alice).await?;
//! assert_eq!(state.message_type(), "presence.state");
//! presence.untrack("room", &phone);
//! presence.flush().await;
//! let diff = layer.receive(&alice).await?;
//! assert_eq!(diff.message_type(), "presence.diff");
//! # Ok(())
//! # }
//! ```

pub use channels_core::presence::*;
