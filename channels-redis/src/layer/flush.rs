//! `flush`: every key under the layer's prefix, on every shard, and what this process keeps.

use channels_core::layer::FlushError;

use super::{Inner, backend};

impl Inner {
    /// [`ChannelLayer::flush`](channels_core::layer::ChannelLayer::flush).
    pub(super) async fn flush(&self) -> Result<(), FlushError> {
        let pattern = escape_glob(&self.config.prefix) + "*";
        for shard in 0..self.shards.len() {
            let mut conn = self.conn(shard).await.map_err(|e| FlushError::Backend(backend(e)))?;
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| FlushError::Backend(backend(e)))?;
                if !keys.is_empty() {
                    redis::cmd("UNLINK")
                        .arg(keys)
                        .query_async::<()>(&mut conn)
                        .await
                        .map_err(|e| FlushError::Backend(backend(e)))?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let mut local = self.lock();
        local.memberships.clear();
        for mailbox in local.channels.values_mut() {
            mailbox.clear();
        }
        Ok(())
    }
}

fn escape_glob(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
