//! The approval pages in a real headless Chromium: runs `tests/browser/approval.test.mjs`
//! (Playwright driving Debian's `/usr/bin/chromium`) against the real approval example: two
//! users in two browser contexts, a ticket filed and approved, the requester's flowchart
//! moving on and the pipeline lighting up without a reload, and the pages loading nothing
//! from other servers.
//!
//! Needs `scripts/install-test-deps` (Chromium and the npm packages); fails rather than skips
//! when they are missing, so a green run always means the browser test really ran.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Example;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The script gives up by itself after 100 s; this leaves it time to start and to report why.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(115);

/// Reads a child's pipe to the end on a thread, so a chatty script never blocks on a full pipe.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

#[test]
fn requester_sees_the_approval_and_the_pipeline_live_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for needed in [Path::new(CHROMIUM), &root.join("tests/browser/node_modules/playwright-core")] {
        assert!(needed.exists(), "{} is missing: run scripts/install-test-deps first", needed.display());
    }
    let dir = std::env::temp_dir().join(format!("approval-browser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join("approval.sqlite3");
    let db = db.to_str().expect("UTF-8 temp path");
    // Steps long enough for a person to see them light up in the screenshots, short enough
    // for a quick test; no random failures.
    let example = Example::start("approval", &["--db", db, "--step-delay-ms", "300", "--failure-rate", "0"]);
    let base = format!("http://{}/", example.addr);
    let mut child = Command::new("node")
        .arg("tests/browser/approval.test.mjs")
        .arg(&base)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): run scripts/install-test-deps first"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let server_log = example.log.lock().map(|log| log.clone()).unwrap_or_default();
    drop(example);
    let _ = std::fs::remove_dir_all(&dir);
    let output =
        format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- approval server log ---\n{server_log}");
    match status {
        None => panic!("the browser test did not finish within {SCRIPT_TIMEOUT:?} and was killed\n{output}"),
        Some(status) => assert!(status.success(), "the browser test failed ({status})\n{output}"),
    }
    print!("{stdout}");
}
