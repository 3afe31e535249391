//! Test helpers: a throwaway `redis-server` for integration tests, yours and ours.
//!
//! This module needs the `testing` feature: `channels = { ..., features = ["testing"] }` (or
//! `channels-redis = { ..., features = ["testing"] }`) under `[dev-dependencies]`.
//!
//! ```no_run
//! let server = channels_redis::testing::RedisServer::start();
//! let layer = channels_redis::RedisChannelLayer::from_url(&server.url()).unwrap();
//! ```

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` on a free port, stopped when dropped (or, for a static one, by a watchdog
/// when the test process exits).
#[derive(Debug)]
pub struct RedisServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` (which must be on the PATH) on a free port, without persistence.
    ///
    /// # Panics
    /// If `redis-server` cannot be started.
    pub fn start() -> RedisServer {
        let mut server = RedisServer { port: free_port(), child: None };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port.
    ///
    /// # Panics
    /// If `redis-server` cannot be started.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/install-test-deps installs it)");
        // Stop the server if this test process dies without dropping us.
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "while kill -0 {} 2>/dev/null && kill -0 {} 2>/dev/null; do sleep 1; done; kill {} 2>/dev/null",
                    std::process::id(),
                    child.id(),
                    child.id()
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.child = Some(child);
        for _ in 0..200 {
            if redis_cli(self.port, &["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Kills the server (its data is gone; the port is kept for [`restart`](Self::restart)).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a command with redis-cli and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `redis-cli -p <port> <args>` and returns what it printed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(6390)
}
