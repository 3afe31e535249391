//! The hand-kept connection list example (seed 1.3.4) over real sockets.

mod support;

use support::{Example, connect, next_text, send_text};

#[tokio::test]
async fn every_listed_connection_gets_each_message_and_leavers_are_removed() {
    let example = Example::start("broadcast_list", &[]);
    let mut a = connect(&example.url("/ws/list/")).await;
    let mut b = connect(&example.url("/ws/list/")).await;
    let c = connect(&example.url("/ws/list/")).await;
    drop(c);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    send_text(&mut a, "hello list").await;
    assert_eq!(next_text(&mut a).await, "hello list");
    assert_eq!(next_text(&mut b).await, "hello list");
}
