//! The approval pages in a real headless Chromium (Playwright driving Debian's
//! `/usr/bin/chromium`) against the real approval example:
//! - `tests/browser/approval.test.mjs`: two users in two browser contexts, a ticket filed and
//!   approved, the requester's flowchart moving on and the pipeline lighting up without a
//!   reload, and the pages loading nothing from other servers;
//! - `tests/browser/approval_work.test.mjs`: nothing a user does is lost or unreadable — an
//!   approval pressed while reconnecting, a refused reject, a double-click, a ticket that does
//!   not exist, the deployment in the history, label sizes, the Chinese font.
//!
//! Needs `scripts/install-test-deps` (Chromium and the npm packages); fails rather than skips
//! when they are missing, so a green run always means the browser test really ran.

mod support;

use std::time::Duration;

use support::{Example, run_browser_script};

/// The script gives up by itself after 100 s; this leaves it time to start and to report why.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(115);

#[test]
fn requester_sees_the_approval_and_the_pipeline_live_in_headless_chromium() {
    let dir = std::env::temp_dir().join(format!("approval-browser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join("approval.sqlite3");
    let db = db.to_str().expect("UTF-8 temp path");
    // Steps long enough for a person to see them light up in the screenshots, short enough
    // for a quick test; no random failures.
    let example = Example::start("approval", &["--db", db, "--step-delay-ms", "300", "--failure-rate", "0"]);
    let stdout = run_browser_script("approval.test.mjs", &example, SCRIPT_TIMEOUT);
    drop(example);
    let _ = std::fs::remove_dir_all(&dir);
    print!("{stdout}");
}

/// Starts the example on a fresh database (short pipeline steps, no random failures), runs
/// `script` against it and prints what it printed.
fn run_against_fresh_example(script: &str, name: &str) {
    let dir = std::env::temp_dir().join(format!("approval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join("approval.sqlite3");
    let db = db.to_str().expect("UTF-8 temp path");
    let example = Example::start("approval", &["--db", db, "--step-delay-ms", "100", "--failure-rate", "0"]);
    let stdout = run_browser_script(script, &example, Duration::from_secs(165));
    drop(example);
    let _ = std::fs::remove_dir_all(&dir);
    print!("{stdout}");
}

#[test]
fn nothing_a_new_user_does_on_the_approval_pages_is_lost_or_unreadable() {
    run_against_fresh_example("approval_work.test.mjs", "work");
}
