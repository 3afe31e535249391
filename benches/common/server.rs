//! Server processes under test: the real chat example and the baseline, each a child process
//! pinned to CPU 0 (when `taskset` exists), with their output drained so pipes never fill.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::baseline;

/// Which server a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `examples/chat`, release build, in-memory layer.
    Chat,
    /// The same with its metrics off (`--metrics off`): what the metrics cost.
    ChatNoMetrics,
    /// The same with its message history turned off (`--history 0`).
    ChatNoHistory,
    /// The hand-written tokio-tungstenite + `broadcast` server of [`baseline`].
    Baseline,
    /// The same, writing every waiting message before one flush ([`baseline::FLAG_BATCHED`]).
    BaselineBatched,
    /// The framework bench server of [`super::framework`]: the chat protocol's messages
    /// without presence or join/leave events, and no 10,000-connection cap.
    Framework,
    /// Django Channels (daphne, in-memory layer) serving `benches/django/`; started by
    /// [`super::django::Daphne`], not by [`ServerProcess`].
    Django,
}

impl Kind {
    /// The short name the benchmarks print and `BENCH_SERVERS` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::ChatNoMetrics => "nometrics",
            Kind::ChatNoHistory => "chat-nohistory",
            Kind::Baseline => "baseline",
            Kind::BaselineBatched => "batched",
            Kind::Framework => "framework",
            Kind::Django => "django",
        }
    }

    /// What the name stands for, for the legend under a results table.
    pub fn legend(self) -> &'static str {
        match self {
            Kind::Chat => "chat = examples/chat (release, in-memory layer, history on: the default)",
            Kind::ChatNoMetrics => "nometrics = the chat with --metrics off",
            Kind::ChatNoHistory => "chat-nohistory = the same with --history 0",
            Kind::Baseline => {
                "baseline = bare tokio + tokio-tungstenite + broadcast server, one send (one sendto) per message"
            }
            Kind::BaselineBatched => {
                "batched = the same bare server writing all waiting messages, then one flush (the practical limit)"
            }
            Kind::Framework => {
                "framework = bench server built from the framework, joins silently (no presence/join/leave events)"
            }
            Kind::Django => "django = Django Channels (daphne, InMemoryChannelLayer) serving benches/django",
        }
    }

    /// Parses a name of [`Kind::name`].
    pub fn from_name(name: &str) -> Option<Kind> {
        [
            Kind::Chat,
            Kind::ChatNoMetrics,
            Kind::ChatNoHistory,
            Kind::Baseline,
            Kind::BaselineBatched,
            Kind::Framework,
            Kind::Django,
        ]
        .into_iter()
        .find(|kind| kind.name() == name.trim())
    }

    /// True for the two hand-written baselines.
    pub fn is_bare(self) -> bool {
        matches!(self, Kind::Baseline | Kind::BaselineBatched)
    }
}

/// True when `taskset` can pin processes (checked once).
pub fn pinning() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Pins this process (the load generator) to CPU 1. Call it before starting any runtime, so
/// that every thread created later inherits the mask.
pub fn pin_load_generator() {
    if !pinning() {
        eprintln!("note: taskset not found; server and load generator are not pinned");
        return;
    }
    let pid = std::process::id().to_string();
    let pinned = Command::new("taskset").args(["-a", "-p", "-c", "1", &pid]).stdout(Stdio::null()).status();
    if !pinned.is_ok_and(|s| s.success()) {
        eprintln!("note: could not pin the load generator to CPU 1");
    }
}

/// What every benchmark does first: check the open-file limit, build the chat example and pin
/// the load generator. `None` (after printing why) when the build fails.
pub fn prepare(open_files: u64) -> Option<PathBuf> {
    super::check_open_files(open_files);
    match build_chat_example() {
        Ok(path) => {
            pin_load_generator();
            Some(path)
        }
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}

/// Builds `examples/chat` in release mode and returns the path of the executable.
pub fn build_chat_example() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building the chat example (cargo build --release --example chat) ...");
    let mut command = Command::new(cargo);
    // What cargo set for this benchmark's own crate: build scripts (ring's) watch some of them,
    // so leaving them would rebuild those crates here and again in the user's next build.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_MANIFEST_LINKS", "CARGO_CRATE_NAME"]
                .contains(&name.as_ref())
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&name.as_ref())
        {
            command.env_remove(name.as_ref());
        }
    }
    let output = command
        .current_dir(super::repository_root())
        .args(["build", "--release", "--example", "chat", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo build --release --example chat failed ({})", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == "chat"
            && let Some(path) = message["executable"].as_str()
        {
            return Ok(PathBuf::from(path));
        }
    }
    Err("cargo did not report the chat executable".into())
}

/// What a server wrote on stderr (with `RUST_LOG=warn`: warnings and errors only).
#[derive(Debug, Default)]
pub struct Log {
    /// Lines seen.
    pub lines: usize,
    /// The first few lines.
    pub first: Vec<String>,
}

/// A running server process; killed when dropped.
/// A child process whose stderr is drained into a [`Log`] (so the pipe never fills); killed
/// when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    log: Arc<Mutex<Log>>,
}

impl Process {
    /// A command for `program`, pinned to CPU 0 when `taskset` exists.
    pub fn command(program: &Path) -> Command {
        if pinning() {
            let mut command = Command::new("taskset");
            command.args(["-c", "0"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// Starts `command` with its stderr captured.
    pub fn spawn(mut command: Command, what: &str) -> Result<Self, String> {
        command.stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| format!("could not start {what}: {e}"))?;
        let log = Arc::new(Mutex::new(Log::default()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    log.lines += 1;
                    if log.first.len() < 5 {
                        log.first.push(line);
                    }
                }
            });
        }
        Ok(Self { child, log })
    }

    /// The child process.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process and returns what it logged.
    pub fn stop(mut self) -> Log {
        self.kill();
        std::thread::sleep(Duration::from_millis(50));
        self.take_log()
    }

    /// What it logged so far, taken: the next call returns only what came after.
    pub fn take_log(&mut self) -> Log {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server under test, of one [`Kind`], started on a free port; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    kind: Kind,
    process: Process,
    /// Kept open: the baseline server exits when its stdin closes.
    _stdin: Option<ChildStdin>,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Starts a server on `127.0.0.1:0` and waits for the address it prints first.
    pub fn start(kind: Kind, chat: &Path) -> Result<Self, String> {
        Self::start_with(kind, chat, &[])
    }

    /// [`start`](Self::start) with extra command-line arguments (for the chat example, e.g.
    /// `--layer redis://127.0.0.1:PORT` or `--poll-timeout SECS`).
    pub fn start_with(kind: Kind, chat: &Path, extra_args: &[String]) -> Result<Self, String> {
        Self::start_under(&[], kind, chat, extra_args)
    }

    /// [`start_with`](Self::start_with) run by another program: `wrapper` (e.g. `valgrind
    /// --tool=callgrind`) followed by the server's command line. The wrapper must keep the
    /// process id (exec the server, as valgrind does).
    pub fn start_under(wrapper: &[&str], kind: Kind, chat: &Path, extra_args: &[String]) -> Result<Self, String> {
        let exe = || std::env::current_exe().map_err(|e| format!("current_exe: {e}"));
        let (program, args): (PathBuf, &[&str]) = match kind {
            Kind::Chat => (chat.to_path_buf(), &["--bind", "127.0.0.1:0"]),
            Kind::ChatNoMetrics => (chat.to_path_buf(), &["--bind", "127.0.0.1:0", "--metrics", "off"]),
            Kind::ChatNoHistory => (chat.to_path_buf(), &["--bind", "127.0.0.1:0", "--history", "0"]),
            Kind::Baseline => (exe()?, &[baseline::FLAG]),
            Kind::BaselineBatched => (exe()?, &[baseline::FLAG_BATCHED]),
            Kind::Framework => (exe()?, &[super::framework::FLAG]),
            Kind::Django => return Err("Django runs under daphne; start it with common::django::Daphne".into()),
        };
        let mut command = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut command = Process::command(Path::new(first));
                command.args(rest).arg(&program);
                command
            }
            None => Process::command(&program),
        };
        command.args(args);
        command.args(extra_args);
        command.env("RUST_LOG", "warn").stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut process = Process::spawn(command, &program.display().to_string())?;
        let stdin = process.child_mut().stdin.take();
        let (first_line, address_line) = mpsc::channel();
        if let Some(stdout) = process.child_mut().stdout.take() {
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
                let _ = first_line.send(lines.next());
                lines.for_each(drop);
            });
        }
        let mut server = Self { kind, process, _stdin: stdin, addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
        let line = address_line.recv_timeout(Duration::from_secs(30)).ok().flatten();
        let addr = line.as_deref().and_then(parse_address);
        match addr {
            Some(addr) => server.addr = addr,
            None => {
                std::thread::sleep(Duration::from_millis(200));
                let log = server.process.take_log();
                return Err(format!(
                    "{} did not print its address (first stdout line {line:?}; stderr {:?})",
                    kind.name(),
                    log.first
                ));
            }
        }
        Ok(server)
    }

    /// Which server it is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// CPU time the server has used so far.
    pub fn cpu(&self) -> Duration {
        super::cpu_time(self.pid())
    }

    /// The server's resident set size in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        super::rss_kib(self.pid())
    }

    /// Kills the server and returns what it logged.
    pub fn stop(self) -> Log {
        self.process.stop()
    }
}

/// `chat: open http://127.0.0.1:PORT/ (layer memory://)` → `127.0.0.1:PORT`.
fn parse_address(line: &str) -> Option<SocketAddr> {
    let rest = line.split_once("http://")?.1;
    rest.split('/').next()?.parse().ok()
}
