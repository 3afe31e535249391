//! `perf record` of the server processes during a measured send phase, on request: with
//! `BENCH_PERF_DIR=DIR` each run writes a profile into a new file there (a flat profile, or
//! what `BENCH_PERF_ARGS` adds, such as `-e syscalls:sys_enter_sendto` to count write calls).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `perf record`, if one was asked for; dropping it stops the recording.
#[derive(Debug)]
pub struct Profiler(Option<Child>);

impl Profiler {
    /// Starts recording `pids` when `BENCH_PERF_DIR` is set; otherwise does nothing.
    pub fn start(pids: &[u32]) -> Self {
        let Some(dir) = std::env::var_os("BENCH_PERF_DIR") else { return Self(None) };
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let stamp = std::time::UNIX_EPOCH.elapsed().map(|d| d.as_millis()).unwrap_or_default();
        let file = Path::new(&dir).join(format!("send-phase-{stamp}.data"));
        let extra = std::env::var("BENCH_PERF_ARGS").unwrap_or_default();
        let perf = Command::new("perf")
            .args(["record", "-q", "-p", &pids.join(","), "-o"])
            .arg(&file)
            .args(extra.split_whitespace())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match perf {
            Ok(perf) => {
                // Let perf attach before the first message goes out.
                std::thread::sleep(Duration::from_millis(300));
                println!("          perf profile of the send phase: {}", file.display());
                Self(Some(perf))
            }
            Err(e) => {
                eprintln!("note: BENCH_PERF_DIR set but perf did not start: {e}");
                Self(None)
            }
        }
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        // perf writes its file on SIGINT.
        if let Some(mut perf) = self.0.take() {
            let _ = Command::new("kill").args(["-INT", &perf.id().to_string()]).status();
            let _ = perf.wait();
        }
    }
}
