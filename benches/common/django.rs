//! Django Channels as a baseline: `daphne` serving the minimal chat of `benches/django/`
//! (`benchchat`), pinned like the other servers. It needs the test venv
//! (`target/test-venv/bin/daphne`, made by `scripts/install-test-deps`).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::server::{Log, Process};

/// Where `scripts/install-test-deps` puts daphne.
pub fn daphne_path() -> PathBuf {
    super::repository_root().join("target/test-venv/bin/daphne")
}

/// A daphne process serving `benches/django/`, pinned to CPU 0; killed when dropped.
#[derive(Debug)]
pub struct Daphne {
    process: Process,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Daphne {
    /// Starts daphne on a free port with the channel layer on Redis at `redis_url`.
    pub fn start(daphne: &Path, redis_url: &str) -> Result<Self, String> {
        Self::start_with(daphne, &[("BENCH_REDIS_URL", redis_url)])
    }

    /// Starts daphne with Django's in-memory channel layer (`channels.layers.InMemoryChannelLayer`,
    /// default capacity 100), as in the Django Channels tutorial.
    pub fn start_in_memory(daphne: &Path) -> Result<Self, String> {
        Self::start_with(daphne, &[("BENCH_LAYER", "memory")])
    }

    fn start_with(daphne: &Path, env: &[(&str, &str)]) -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = Process::command(daphne);
        command
            .args(["-v", "0", "-b", "127.0.0.1", "-p", &port.to_string(), "benchchat.asgi:application"])
            .current_dir(super::repository_root().join("benches/django"))
            .env("DJANGO_SETTINGS_MODULE", "benchchat.settings")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut daphne = Self { process: Process::spawn(command, &daphne.display().to_string())?, addr };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(daphne);
            }
            if let Ok(Some(status)) = daphne.process.child_mut().try_wait() {
                let log = daphne.process.take_log();
                return Err(format!("daphne exited ({status}): {:?}", log.first));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = daphne.process.take_log();
        Err(format!("daphne did not listen on {addr} within 30 s: {:?}", log.first))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Kills it and returns what it logged.
    pub fn stop(self) -> Log {
        self.process.stop()
    }
}
