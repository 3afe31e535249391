//! The chat page in a real headless Chromium: runs `tests/browser/chat.test.mjs` (Playwright
//! driving Debian's `/usr/bin/chromium`) against the real chat example process, over every
//! transport the page offers (WebSocket, long polling, polling, server-sent events).
//!
//! Needs `scripts/install-test-deps` (Chromium and the npm packages); fails rather than skips
//! when they are missing, so a green run always means the browser test really ran.

mod support;

use std::time::Duration;

use support::{Example, run_browser_script};

/// The script gives up by itself after 90 s; this leaves it time to start and to report why.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(105);
/// Polling clients that stop polling are dropped this soon, so the script can see it happen;
/// still long enough for a poller's brief network outage (which the script causes) to be resumed.
const POLL_TIMEOUT_SECS: &str = "5";

#[test]
fn chat_page_over_every_transport_in_headless_chromium() {
    let example = Example::start("chat", &["--poll-timeout", POLL_TIMEOUT_SECS]);
    print!("{}", run_browser_script("chat.test.mjs", &example, SCRIPT_TIMEOUT));
}

/// `tests/browser/recovery.test.mjs`: the page's WebSocket is cut for 5 s (a Playwright route
/// closes it and refuses new ones) while the other user talks; once back, the page has every
/// message, in order, once.
#[test]
fn chat_page_recovers_what_was_said_during_a_network_cut() {
    let example = Example::start("chat", &[]);
    print!("{}", run_browser_script("recovery.test.mjs", &example, SCRIPT_TIMEOUT));
}

/// `tests/browser/resend.test.mjs`: the page's WebSocket dies as a message is sent, once before
/// the frame reaches the server and once after it did but before its echo came back; after the
/// reconnect each message is in both pages' transcripts once (the page sends again, with the
/// same ID, what it did not see come back, and the server keeps it once).
#[test]
fn chat_page_sends_again_what_a_dying_socket_swallowed_and_doubles_nothing() {
    let example = Example::start("chat", &[]);
    print!("{}", run_browser_script("resend.test.mjs", &example, SCRIPT_TIMEOUT));
}

/// `tests/browser/reload.test.mjs`: the page is reloaded while cut off with a message waiting;
/// the reloaded page sends it again (same ID) and resumes from the last message it had seen,
/// so both pages' transcripts hold every message once.
#[test]
fn chat_page_reloaded_while_offline_sends_what_waited_and_misses_nothing() {
    let example = Example::start("chat", &[]);
    print!("{}", run_browser_script("reload.test.mjs", &example, SCRIPT_TIMEOUT));
}
