//! Messages and channels the unit tests share.

use channels_core::layer::{ChannelLayer, Message};

use crate::layer::InMemoryChannelLayer;

/// A test message numbered `n`.
pub(crate) fn msg(n: u32) -> Message {
    Message::new(&std::collections::HashMap::from([("type", "t".to_string()), ("n", n.to_string())])).unwrap()
}

/// The number of a message made by [`msg`].
pub(crate) fn n_of(message: &Message) -> u32 {
    message.decode::<std::collections::HashMap<String, String>>().unwrap()["n"].parse().unwrap()
}

/// `n` channels with a message (9) waiting on each, their queues behind an idle one that a
/// sweep drops (so theirs all move up one), each in `group` if one is given.
pub(crate) async fn channels_behind_an_idle_queue(
    layer: &InMemoryChannelLayer,
    n: usize,
    group: Option<&str>,
) -> Vec<String> {
    let idle = layer.new_channel("specific").await.unwrap();
    layer.send(&idle, msg(0)).await.unwrap();
    layer.receive(&idle).await.unwrap();
    let mut channels = Vec::new();
    for _ in 0..n {
        let channel = layer.new_channel("specific").await.unwrap();
        layer.send(&channel, msg(9)).await.unwrap();
        if let Some(group) = group {
            layer.group_add(group, &channel).await.unwrap();
        }
        channels.push(channel);
    }
    channels
}

/// A log writer that keeps what is written, for tests that read the log.
#[derive(Clone)]
pub(crate) struct Captured(pub(crate) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
