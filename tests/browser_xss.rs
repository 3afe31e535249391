//! Hostile names and messages in the chat page: runs `tests/browser/xss.test.mjs` (Playwright
//! driving Debian's `/usr/bin/chromium`) against the real chat example process. Markup in user
//! names and messages, sent over WebSocket and HTTP POST, must show as text on the WebSocket and
//! long-polling pages, without creating elements or running script.
//!
//! Needs `scripts/install-test-deps` (Chromium and the npm packages); fails rather than skips
//! when they are missing.

mod support;

use std::time::Duration;

use support::{Example, run_browser_script};

/// The script gives up by itself after 60 s.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(75);

#[test]
fn markup_in_names_and_messages_renders_as_text_in_headless_chromium() {
    let example = Example::start("chat", &[]);
    print!("{}", run_browser_script("xss.test.mjs", &example, SCRIPT_TIMEOUT));
}
