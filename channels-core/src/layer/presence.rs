//! What a layer backend shared by several processes provides so that presence is shared too:
//! a store of entries that expire unless written again.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use super::BackendError;

/// A store of presence entries shared by every process on one backend (see
/// [`crate::presence`]). Entries are opaque to the store: a reference unique across processes
/// (the writing process's id, a dot, a number) and a value. A process writes its own entries
/// and reads everyone's.
///
/// A backend for one process has no store; its layer's
/// [`presence_store`](super::ChannelLayer::presence_store) returns `None` and presence stays in
/// that process.
#[async_trait]
pub trait PresenceStore: Send + Sync + fmt::Debug + 'static {
    /// Adds (or replaces) the `tracked` entries of `group` and removes the `untracked` ones.
    /// Every entry written expires `ttl` after this write unless written again: a process
    /// writes all its entries again within each `ttl`, and the entries of one that died
    /// without removing them disappear.
    async fn write(
        &self,
        group: &str,
        tracked: &[(&str, &str)],
        untracked: &[&str],
        ttl: Duration,
    ) -> Result<(), BackendError>;

    /// The entries of `group` that have not expired, as `(reference, value)` pairs in no
    /// particular order. A store may remove the expired ones as it reads.
    async fn read(&self, group: &str) -> Result<Vec<(String, String)>, BackendError>;
}
