//! Hostile names and messages in the chat page: runs `tests/browser/xss.test.mjs` (Playwright
//! driving Debian's `/usr/bin/chromium`) against the real chat example process. Markup in user
//! names and messages, sent over WebSocket and HTTP POST, must show as text on the WebSocket and
//! long-polling pages, without creating elements or running script.
//!
//! Needs `scripts/install-test-deps` (Chromium and the npm packages); fails rather than skips
//! when they are missing.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Example;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The script gives up by itself after 60 s.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(75);

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
fn markup_in_names_and_messages_renders_as_text_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for needed in [Path::new(CHROMIUM), &root.join("tests/browser/node_modules/playwright-core")] {
        assert!(needed.exists(), "{} is missing: run scripts/install-test-deps first", needed.display());
    }
    let example = Example::start("chat", &[]);
    let mut child = Command::new("node")
        .arg("tests/browser/xss.test.mjs")
        .arg(format!("http://{}/", example.addr))
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
    let output = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- chat server log ---\n{server_log}");
    match status {
        None => panic!("the XSS browser test did not finish within {SCRIPT_TIMEOUT:?}\n{output}"),
        Some(status) => assert!(status.success(), "the XSS browser test failed ({status})\n{output}"),
    }
    print!("{stdout}");
}
