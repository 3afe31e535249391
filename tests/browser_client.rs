//! The chat page's client (`channels.js`) in a real headless Chromium, against the real chat
//! example process: it falls back by itself when the page's network blocks WebSockets
//! (`tests/browser/fallback.test.mjs`), and loses and doubles nothing when the server restarts
//! on Redis mid-conversation (`tests/browser/restart.test.mjs`).
//!
//! Needs `scripts/install-test-deps` (Chromium, the npm packages, redis-server) and fails
//! rather than skips when they are missing, so a green run always means the test really ran.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use channels::redis::testing::RedisServer;
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
    let addr = example.addr.to_string();

    let mut node = Command::new("node")
        .arg("tests/browser/restart.test.mjs")
        .arg(format!("http://{addr}/"))
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): run scripts/install-test-deps first"));
    let mut to_script = node.stdin.take().expect("stdin");
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = BufReader::new(node.stdout.take().expect("stdout"));
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = node.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });

    let started = Instant::now();
    let mut output = String::new();
    let mut restarted = false;
    let status = loop {
        while let Ok(line) = lines.try_recv() {
            output.push_str(&line);
            output.push('\n');
            if line == "RESTART" && !restarted {
                assert!(example.terminate(), "the chat process did not stop within 10 s");
                let old_log = example.log.lock().map(|log| log.clone()).unwrap_or_default();
                output.push_str(&format!("--- first chat process log ---\n{old_log}\n"));
                example = Example::start("chat", &["--layer", &layer, "--bind", &addr]);
                assert_eq!(example.addr.to_string(), addr, "the new chat process is on another address");
                writeln!(to_script, "RESTARTED").expect("tell the script");
                to_script.flush().expect("flush");
                restarted = true;
            }
        }
        if let Some(status) = node.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = node.kill();
            let _ = node.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
        output.push_str(&line);
        output.push('\n');
    }
    let stderr = stderr.join().unwrap_or_default();
    let log = example.log.lock().map(|log| log.clone()).unwrap_or_default();
    let report = format!("--- stdout ---\n{output}\n--- stderr ---\n{stderr}\n--- chat process log ---\n{log}");
    match status {
        None => panic!("restart.test.mjs did not finish within {SCRIPT_TIMEOUT:?}\n{report}"),
        Some(status) => assert!(status.success(), "restart.test.mjs failed ({status})\n{report}"),
    }
    assert!(restarted, "the script never asked for the restart\n{report}");
    print!("{output}");
}
