//! The unit tests of `channels.js` (the browser client, `channels-core/src/client/channels.js`)
//! under Node's own test runner: `node --test tests/js/`. No npm package is needed; the
//! WebSocket, fetch and event stream are fakes in the test file, the timers Node's mocked ones.
//!
//! Needs `node` (as the browser tests do: `scripts/install-test-deps`), and fails rather than
//! skips when it is missing, so a green run always means the tests really ran.

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
    assert!(output.status.success(), "node --test tests/js/ failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
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
