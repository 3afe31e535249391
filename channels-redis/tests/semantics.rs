//! The shared layer semantics suite, against a real redis-server: once on one layer (a process
//! talking to itself, which skips Redis for its own channels) and once across two layers on the
//! same prefix (two processes: everything sent crosses Redis).

mod support;

channels_core::layer_conformance_tests!(|config| async move { support::fresh_layer(config) });

mod across_processes {
    use std::sync::Arc;

    use async_trait::async_trait;
    use channels_core::layer::{
        ChannelLayer, FlushError, GroupError, GroupSendReport, LayerConfig, Message, NewChannelError, ReceiveError,
        SendError,
    };
    use channels_redis::RedisChannelLayer;

    use super::support;

    /// Two processes on one Redis: every send and group send goes out of `sender`; channels
    /// are made, joined to groups and read in `receiver`.
    struct Across {
        sender: RedisChannelLayer,
        receiver: RedisChannelLayer,
    }

    #[async_trait]
    impl ChannelLayer for Across {
        async fn new_channel(&self, prefix: &str) -> Result<String, NewChannelError> {
            self.receiver.new_channel(prefix).await
        }
        async fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
            self.sender.send(channel, message).await
        }
        async fn receive(&self, channel: &str) -> Result<Message, ReceiveError> {
            self.receiver.receive(channel).await
        }
        fn try_receive(&self, channel: &str) -> Option<Message> {
            self.receiver.try_receive(channel)
        }
        async fn group_add(&self, group: &str, channel: &str) -> Result<(), GroupError> {
            self.receiver.group_add(group, channel).await
        }
        async fn group_discard(&self, group: &str, channel: &str) -> Result<(), GroupError> {
            self.receiver.group_discard(group, channel).await
        }
        async fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, GroupError> {
            self.sender.group_send(group, message).await
        }
        async fn group_send_many(&self, sends: &[(String, Message)]) -> Vec<Result<GroupSendReport, GroupError>> {
            self.sender.group_send_many(sends).await
        }
        fn group_send_echo(&self, group: &str, channel: &str, message: &Message) -> bool {
            self.sender.group_send_echo(group, channel, message)
        }
        async fn group_send_many_echoed(
            &self,
            sends: &[(String, Message)],
            channel: &str,
            echoed: usize,
        ) -> Vec<Result<GroupSendReport, GroupError>> {
            self.sender.group_send_many_echoed(sends, channel, echoed).await
        }
        async fn flush(&self) -> Result<(), FlushError> {
            self.sender.flush().await?;
            self.receiver.flush().await
        }
        async fn forget_channel(&self, channel: &str) {
            self.receiver.forget_channel(channel).await;
        }
        fn config(&self) -> &LayerConfig {
            self.receiver.config()
        }
    }

    channels_core::layer_conformance_tests!(|config: LayerConfig| async move {
        let (sender, receiver) = support::layer_pair(&support::shared().url(), config);
        Arc::new(Across { sender, receiver }) as Arc<dyn ChannelLayer>
    });
}
