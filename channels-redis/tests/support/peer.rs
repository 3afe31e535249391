//! The Python peer of the interop tests: `tests/python/channels_redis_peer.py` in the test
//! venv, with channels_redis 4.3, talking JSON lines on its stdout.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A running Python peer whose stdout lines are JSON.
pub struct Peer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    /// The peer on the `hosts` URLs (comma-separated).
    pub fn spawn(hosts: &str, prefix: &str, args: &[&str]) -> Peer {
        Self::start(&[], hosts, prefix, args)
    }

    /// The same with channels_redis's `symmetric_encryption_keys` (comma-separated).
    pub fn spawn_with_keys(hosts: &str, prefix: &str, args: &[&str], keys: &str) -> Peer {
        Self::start(&[("CHANNELS_KEYS", keys)], hosts, prefix, args)
    }

    /// The peer with `hosts` as channels_redis's JSON `hosts` list (dicts with `address`,
    /// `ssl_*`, `sentinels`, `master_name`...).
    pub fn spawn_with_hosts_json(hosts: &Value, prefix: &str, args: &[&str]) -> Peer {
        Self::start(&[("CHANNELS_HOSTS_JSON", &hosts.to_string())], "-", prefix, args)
    }

    fn start(env: &[(&str, &str)], hosts: &str, prefix: &str, args: &[&str]) -> Peer {
        let python = repo_root().join("target/test-venv/bin/python");
        assert!(python.exists(), "{} is missing: run scripts/install-test-deps first", python.display());
        let mut child = Command::new(python)
            .envs(env.iter().copied())
            .arg(repo_root().join("tests/python/channels_redis_peer.py"))
            .args([hosts, prefix])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the Python peer");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Peer { child, lines }
    }

    /// The peer's next JSON line.
    pub async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .expect("the Python peer answers within 20 s")
            .expect("read")
            .expect("the Python peer ended early (see its stderr above)");
        serde_json::from_str(&line).expect("JSON from the peer")
    }

    /// Waits for the peer's `{"done": true}` and its successful exit.
    pub async fn finish(mut self) {
        assert_eq!(self.next().await, json!({"done": true}));
        let status =
            tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.expect("exit").expect("wait");
        assert!(status.success());
    }
}
