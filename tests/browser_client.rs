//! The chat page's client (`channels.js`) in a real headless Chromium, against the real chat
//! example process: it falls back by itself when the page's network blocks WebSockets
//! (`tests/browser/fallback.test.mjs`), and loses and doubles nothing when the server restarts
//! on Redis mid-conversation (`tests/browser/restart.test.mjs`).
//!
//! Needs `scripts/install-test-deps` (Chromium, the npm packages, redis-server) and fails
//! rather than skips when they are missing, so a green run always means the test really ran.

mod restart_driver;
mod support;

use std::path::Path;
use std::time::Duration;

use channels::redis::testing::RedisServer;
use restart_driver::run_with_restart;
use support::{Example, run_browser_script};

/// The scripts give up by themselves after 80-100 s; this leaves them time to report why.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn a_page_whose_network_blocks_websockets_falls_back_and_still_chats() {
    let example = Example::start("chat", &[]);
    print!("{}", run_browser_script("fallback.test.mjs", &example, SCRIPT_TIMEOUT));
}

/// Two pages talk on a chat process backed by Redis; when the script says `RESTART`, the chat
/// process is stopped (SIGTERM: it closes every socket with 1001) and a new one starts on the
/// same address and Redis; the script is told `RESTARTED` and checks both transcripts.
#[test]
fn two_pages_lose_and_double_nothing_across_a_server_restart_on_redis() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for needed in [Path::new("/usr/bin/chromium"), &root.join("tests/browser/node_modules/playwright-core")] {
        assert!(needed.exists(), "{} is missing: run scripts/install-test-deps first", needed.display());
    }
    let redis = RedisServer::start();
    let layer = format!("{}/0?prefix=restart", redis.url());
    let mut example = Example::start("chat", &["--layer", &layer]);
    let url = format!("http://{}/", example.addr);
    let output = run_with_restart(
        &[],
        "tests/browser/restart.test.mjs",
        &[url],
        &mut example,
        |addr| Example::start("chat", &["--layer", &layer, "--bind", addr]),
        SCRIPT_TIMEOUT,
    );
    print!("{output}");
}
