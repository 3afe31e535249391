//! Runs a node script against a chat process and restarts that process when the script asks:
//! the script prints `RESTART` on a line of its own; the process is stopped with SIGTERM (it
//! closes every socket with 1001) and a new one started by `restart`, on the same address;
//! the script then reads `RESTARTED` on its standard input.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::Example;

/// Runs `node NODE_ARGS... SCRIPT ARGS...` from the repository root; fails the test unless the
/// script succeeds within `timeout` after exactly one restart. Returns its standard output.
pub(crate) fn run_with_restart(
    node_args: &[&str],
    script: &str,
    args: &[String],
    example: &mut Example,
    restart: impl Fn(&str) -> Example,
    timeout: Duration,
) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let addr = example.addr.to_string();
    let mut node = Command::new("node")
        .args(node_args)
        .arg(script)
        .args(args)
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
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let started = Instant::now();
    let mut output = String::new();
    let mut first_log = String::new();
    let mut restarts = 0;
    let status = loop {
        while let Ok(line) = lines.try_recv() {
            output.push_str(&line);
            output.push('\n');
            if line == "RESTART" {
                restarts += 1;
                assert!(example.terminate(), "the chat process did not stop within 10 s");
                first_log = example.log.lock().map(|log| log.clone()).unwrap_or_default();
                *example = restart(&addr);
                assert_eq!(example.addr.to_string(), addr, "the new chat process is on another address");
                writeln!(to_script, "RESTARTED").expect("tell the script");
                to_script.flush().expect("flush");
            }
        }
        if let Some(status) = node.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > timeout {
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
    let report = format!(
        "--- stdout ---\n{output}\n--- stderr ---\n{stderr}\n--- first chat process log ---\n{first_log}\n\
         --- chat process log ---\n{log}"
    );
    match status {
        None => panic!("{script} did not finish within {timeout:?}\n{report}"),
        Some(status) => assert!(status.success(), "{script} failed ({status})\n{report}"),
    }
    assert_eq!(restarts, 1, "the script asked for {restarts} restarts, expected one\n{report}");
    output
}
