//! Messages dropped for full channels are counted, and logged as one summary line per interval.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use channels_core::layer::{ChannelLayer, Message};
use channels_redis::RedisChannelLayer;

/// A log writer that keeps what is written.
#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_drops_into_a_full_local_buffer_is_one_log_line_with_the_count() {
    let lines = Captured(Arc::default());
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = support::shared();
    let layer = RedisChannelLayer::from_url(&format!("{}?prefix=drops&capacity=1", server.url())).expect("layer");
    let full = layer.new_channel("specific").await.expect("channel");
    layer.group_add("room", &full).await.expect("group_add");
    let said = Message::new(&BTreeMap::from([("type", "chat.message")])).expect("message");
    layer.group_send("room", said.clone()).await.expect("fills the buffer");
    for _ in 0..500 {
        let report = layer.group_send("room", said.clone()).await.expect("group_send");
        assert_eq!(report.dropped_full, 1);
    }
    // The interval's line is due 10 s after the first drop.
    tokio::time::pause();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let logged = String::from_utf8_lossy(&lines.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert_eq!(logged.lines().count(), 1, "{logged}");
    assert!(logged.contains("dropped=500"), "{logged}");
    assert!(logged.contains(&format!("sample_channel={full}")), "{logged}");
    assert_eq!(layer.dropped_full(), 500);
}
