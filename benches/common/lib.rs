//! Pieces shared by the benchmark programs in `benches/`: starting and measuring the server
//! processes, the hand-written baseline server, the chat load generator and small statistics.
//!
//! It is the library of the unpublished `channels-benches` package, built once for all the
//! benchmark programs.

pub mod baseline;
pub mod compare;
pub mod django;
pub mod framework;
pub mod lean_ws;
pub mod load;
pub mod net;
pub mod profile;
pub mod server;
pub mod stats;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The repository's root, where `cargo build --example chat` finds the example and
/// `scripts/install-test-deps` puts `target/test-venv`.
pub fn repository_root() -> PathBuf {
    // This package is `benches/` in the repository.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// True when `cargo bench` started this program (it passes `--bench`). `cargo test
/// --all-targets` runs bench targets without it; they then skip the load test instead of
/// spending minutes on it.
pub fn started_by_cargo_bench() -> bool {
    if std::env::args().any(|arg| arg == "--bench") {
        return true;
    }
    eprintln!("skipped: this is a load benchmark; run it with `cargo bench --bench NAME` (see docs/performance.md)");
    false
}

/// For a benchmark binary re-executed as a server: exits when stdin closes (the benchmark that
/// started it is gone) or after an hour at most.
pub fn exit_with_parent() {
    std::thread::spawn(|| {
        use std::io::Read;
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(1..)) {}
        std::process::exit(0);
    });
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(3600));
        std::process::exit(0);
    });
}

/// The soft limit on open files of this process (inherited by the servers it starts), from
/// `/proc/self/limits`; `None` when unlimited or unreadable.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse::<u64>().ok()
}

/// `met` or `MISSED`.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// Runs-per-server, from `BENCH_RUNS` (default 3).
pub fn runs() -> usize {
    env_number("BENCH_RUNS", 3)
}

/// A positive whole number from environment variable `name`, or `default`.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(default)
}

/// CPU time consumed so far by every live thread of `pid` (from `/proc/PID/task/*/schedstat`,
/// nanosecond resolution), falling back to `utime + stime` from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let mut total: u64 = 0;
    let mut found = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
            if let Some(ns) = text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()) {
                total += ns;
                found = true;
            }
        }
    }
    if found {
        return Duration::from_nanos(total);
    }
    let (user, system) = user_system_time(pid);
    user + system
}

/// User and system (kernel) CPU time of `pid` so far, from `utime` and `stime` in
/// `/proc/PID/stat` (clock-tick resolution, usually 10 ms).
pub fn user_system_time(pid: u32) -> (Duration, Duration) {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| {
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = stat.rsplit_once(')')?.1.to_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `)`.
        Some((fields.get(11)?.parse::<u64>().ok()?, fields.get(12)?.parse::<u64>().ok()?))
    });
    let (user, system) = ticks.unwrap_or((0, 0));
    let hz = clock_ticks_per_second();
    (Duration::from_millis(user * 1000 / hz), Duration::from_millis(system * 1000 / hz))
}

fn clock_ticks_per_second() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(100)
    })
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Warns when the soft limit on open files is below `needed` (it cannot be raised from here
/// without `unsafe`; use `ulimit -n` in the shell).
pub fn check_open_files(needed: u64) {
    let soft = std::fs::read_to_string("/proc/self/limits").ok().and_then(|limits| {
        let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse::<u64>().ok()
    });
    match soft {
        Some(soft) if soft < needed => {
            eprintln!(
                "warning: the open-files limit is {soft}, this benchmark needs about {needed}; raise it with `ulimit -n`"
            )
        }
        Some(_) => {}
        None => eprintln!("warning: could not read the open-files limit"),
    }
}

/// Number of CPUs the machine has (`nproc --all`: plain `nproc` counts only the CPUs this
/// process may run on, which is 1 once the load generator is pinned).
pub fn cpus() -> usize {
    std::process::Command::new("nproc")
        .arg("--all")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}
