//! The unit tests of `channels.js` (the browser client, `channels-core/src/client/channels.js`)
//! under Node's own test runner: `node --test tests/js/`. No npm package is needed; the
//! WebSocket, fetch and event stream are fakes in the test file, the timers Node's mocked ones.
//!
//! Also here: the server's side of the client's WebSocket heartbeat, and the handler that
//! serves the module.
//!
//! Needs `node` (as the browser tests do: `scripts/install-test-deps`), and fails rather than
//! skips when it is missing, so a green run always means the tests really ran.

mod support;

use std::path::Path;
use std::process::Command;

#[test]
fn channels_js_unit_tests_pass_under_node() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("node")
        .args(["--test", "--test-reporter=spec", "tests/js/"])
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): run scripts/install-test-deps first"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node --test tests/js/ failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    // The runner passes vacuously when it finds no test file: make sure it ran ours.
    assert!(stdout.contains("backoff doubles"), "the channels.js tests did not run\n{stdout}");
    print!("{stdout}");
}

/// `channels::client::channels_js()` serves the module as JavaScript, revalidated by ETag.
#[tokio::test]
async fn the_handler_serves_the_module_with_an_etag() {
    use channels::client::{CHANNELS_JS, channels_js};
    use channels::testing::HttpCommunicator;
    use channels::{Application, Router};

    let app = Application::builder(Router::new().http("/static/channels.js", channels_js())).build();
    let first = HttpCommunicator::new(&app, "GET", "/static/channels.js").get_response().await.expect("response");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert_eq!(first.header("cache-control"), Some("no-cache"));
    assert_eq!(first.body, CHANNELS_JS.as_bytes());
    let etag = first.header("etag").expect("an ETag").to_owned();
    let again = HttpCommunicator::new(&app, "GET", "/static/channels.js")
        .header("if-none-match", &etag)
        .get_response()
        .await
        .expect("response");
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    let stale = HttpCommunicator::new(&app, "GET", "/static/channels.js")
        .header("if-none-match", "\"0000000000000000\"")
        .get_response()
        .await
        .expect("response");
    assert_eq!(stale.status, 200);
    let post = HttpCommunicator::new(&app, "POST", "/static/channels.js").get_response().await.expect("response");
    assert_eq!(post.status, 405);
}

/// The WebSocket heartbeat channels.js relies on: the server answers an empty text frame with
/// an empty text frame, whatever the consumer (the chat's would ignore it), and the consumer
/// never sees it.
#[tokio::test]
async fn the_server_answers_an_empty_text_frame_with_one() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let example = support::Example::start("chat", &[]);
    let mut client = support::connect(&example.url("/ws/chat/heartbeat/?user=hb")).await;
    assert_eq!(support::next_json(&mut client).await["type"], "chat.presence");
    for _ in 0..3 {
        client.send(Message::text("")).await.expect("send the heartbeat");
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                match client.next().await {
                    Some(Ok(Message::Text(text))) if text.is_empty() => return Ok(()),
                    Some(Ok(Message::Text(text))) => {
                        let event: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                        // Presence diffs may arrive meanwhile; a chat message would mean the
                        // consumer saw the empty frame.
                        assert_ne!(event["type"], "chat.message", "the consumer saw the heartbeat: {event}");
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => return Err(format!("{other:?}")),
                }
            }
        })
        .await;
        assert!(matches!(answer, Ok(Ok(()))), "no empty text frame back within 5 s: {answer:?}");
    }
    support::send_text(&mut client, "after the heartbeats").await;
    let event = support::next_of_type(&mut client, "chat.message").await;
    assert_eq!(event["text"], "after the heartbeats");
}
