//! The examples' WebSocket protocol, checked by an independent client: Python's `websockets`.
//!
//! `tests/python/protocol_check.py` runs in the venv that `scripts/install-test-deps` creates
//! (`target/test-venv`). A missing venv fails the test: it is never skipped silently.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::Example;

/// The script's own bound is 30 s; this only catches a Python process that hangs anyway.
const KILL_AFTER: Duration = Duration::from_secs(60);

fn venv_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps first (it creates the Python venv with `websockets`)",
        python.display()
    );
    python
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs the protocol check for `example` against the running server; panics with its output
/// unless it exits successfully within `KILL_AFTER`.
fn protocol_check(example: &str, server: &Example) {
    let python = venv_python();
    let base = format!("ws://{}", server.addr);
    let mut child = Command::new(&python)
        .arg("tests/python/protocol_check.py")
        .args([example, base.as_str()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", python.display()));
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));

    let started = Instant::now();
    let status: Option<ExitStatus> = loop {
        if let Some(status) = child.try_wait().expect("wait for python") {
            break Some(status);
        }
        if started.elapsed() > KILL_AFTER {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let run = format!("protocol_check.py {example} {base}");
    let output = format!("--- stdout ---\n{stdout}--- stderr ---\n{stderr}");
    match status {
        Some(status) if status.success() => println!("{stdout}"),
        Some(status) => panic!("{run} failed ({status}):\n{output}"),
        None => panic!("{run} was killed after {KILL_AFTER:?}:\n{output}"),
    }
}

#[test]
fn python_websockets_client_agrees_with_the_chat_protocol() {
    let server = Example::start("chat", &[]);
    protocol_check("chat", &server);
}

#[test]
fn python_websockets_client_agrees_with_the_echo_protocol() {
    let server = Example::start("echo", &["--greeting", "hello"]);
    protocol_check("echo", &server);
}
