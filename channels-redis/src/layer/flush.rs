//! `flush`: every key under the layer's prefix, on every shard, and what this process keeps.

use channels_core::layer::FlushError;
use redis::aio::ConnectionManager;

use super::{Inner, backend};

impl Inner {
    /// [`ChannelLayer::flush`](channels_core::layer::ChannelLayer::flush).
    pub(super) async fn flush(&self) -> Result<(), FlushError> {
        let pattern = escape_glob(&self.config.prefix) + "*";
        for shard in 0..self.shards.len() {
            let mut conn = self.conn(shard).await.map_err(|e| FlushError::Backend(backend(e)))?;
            unlink_matching(&mut conn, &pattern).await.map_err(|e| FlushError::Backend(backend(e)))?;
        }
        let mut local = self.lock();
        local.memberships.clear();
        for mailbox in local.channels.values_mut() {
            mailbox.clear();
        }
        Ok(())
    }
}

/// Unlinks every key matching `pattern`, a `SCAN` page at a time.
pub(crate) async fn unlink_matching(conn: &mut ConnectionManager, pattern: &str) -> Result<(), redis::RedisError> {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query_async(conn).await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK").arg(keys).query_async::<()>(conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// `prefix` with the glob characters escaped, for `SCAN MATCH`.
pub(crate) fn escape_glob(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
