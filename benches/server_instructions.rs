//! User-space instructions per delivery of a whole server in a WebSocket fan-out, counted by
//! callgrind: the chat example and the bare baselines each run under
//! `valgrind --tool=callgrind --instr-atstart=no`; 200 clients join one room, and only the
//! send phase (one sender, 200 messages, at most 8 in flight: 40,000 deliveries) is counted,
//! by switching callgrind on before it and dumping right after the last delivery.
//!
//! Timings of the fan-out scenario swing by ±25 % on a shared machine; instruction counts do
//! not (they still vary a little with how messages happen to batch), so this tells whether a
//! change to the server's own code made a delivery cheaper. The kernel's share (socket
//! writes, about half of a delivery's CPU time) is not counted: see `fanout` for that.
//!
//! `cargo bench --bench server_instructions` (needs `valgrind`; see docs/performance.md).
//! `BENCH_RUNS=N` runs per server (default 3); `BENCH_SERVERS=chat,baseline,batched,framework`;
//! `BENCH_CALLGRIND_DIR=DIR` keeps each run's dump there (for `callgrind_annotate`);
//! `BENCH_SCENARIO=seed` counts the seed scenario's send phase instead (20 clients, each
//! sending 200 messages: 80,000 deliveries, one send per 20).

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use common::load::{self, Scenario, Targets};
use common::server::{Kind, ServerProcess};
use common::stats::median;

fn main() -> ExitCode {
    if common::baseline::run_if_requested() || !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    if Command::new("callgrind_control").arg("--version").output().is_err() {
        println!("skipped: valgrind (callgrind_control) is not installed");
        return ExitCode::SUCCESS;
    }
    let scenario = match std::env::var("BENCH_SCENARIO").as_deref() {
        Ok("seed") => Scenario { time_limit: Duration::from_secs(300), ..Scenario::seed("bench") },
        _ => Scenario {
            clients: 200,
            rooms: 1,
            senders: 1,
            messages_per_sender: 200,
            window: 8,
            room: "bench",
            time_limit: Duration::from_secs(300),
        },
    };
    let Some(chat) = common::server::prepare(scenario.clients as u64 + 200) else { return ExitCode::FAILURE };
    let kinds: Vec<Kind> = common::compare::servers(false).into_iter().filter(|k| *k != Kind::Django).collect();
    let runs = common::runs();
    println!(
        "== server instructions (callgrind, user space): 1 room x {} clients, {} senders x {} messages, window {}; {} deliveries per run, {runs} runs per server",
        scenario.clients,
        scenario.senders,
        scenario.messages_per_sender,
        scenario.window,
        scenario.expected()
    );
    println!("{:<9} {:>3} {:>16} {:>16}", "server", "run", "instructions", "instr/delivery");
    let mut results: Vec<(Kind, Vec<f64>)> = kinds.iter().map(|&k| (k, Vec::new())).collect();
    let mut failed = false;
    for run in 1..=runs {
        for (kind, per_delivery) in &mut results {
            match count(*kind, &scenario, &chat) {
                Ok(instructions) => {
                    let per = instructions as f64 / scenario.expected() as f64;
                    println!("{:<9} {run:>3} {instructions:>16} {per:>16.0}", kind.name());
                    per_delivery.push(per);
                }
                Err(e) => {
                    println!("{:<9} {run:>3} failed: {e}", kind.name());
                    failed = true;
                }
            }
        }
    }
    println!("-- medians of {runs} runs");
    for (kind, per_delivery) in &results {
        println!("{:<9} {:.0} instructions per delivery", kind.name(), median(per_delivery));
    }
    let of = |kind: Kind| results.iter().find(|(k, _)| *k == kind).map(|(_, v)| median(v));
    if let Some(chat) = of(Kind::Chat) {
        for reference in [Kind::Baseline, Kind::BaselineBatched] {
            if let Some(bare) = of(reference) {
                println!("chat/{}: {:.2} x the instructions per delivery", reference.name(), chat / bare);
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Instructions the server of `kind` ran in one send phase of `scenario`.
fn count(kind: Kind, scenario: &Scenario, chat: &Path) -> Result<u64, String> {
    let keep = std::env::var_os("BENCH_CALLGRIND_DIR").map(std::path::PathBuf::from);
    let dir = keep.clone().unwrap_or_else(std::env::temp_dir).join(format!(
        "channels-callgrind-{}-{}-{}",
        std::process::id(),
        kind.name(),
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let counted = run_counted(kind, scenario, chat, &dir);
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    counted
}

/// Numbers the dump directories of one bench run.
static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn run_counted(kind: Kind, scenario: &Scenario, chat: &Path, dir: &Path) -> Result<u64, String> {
    let out = dir.join("callgrind.out");
    let out_arg = format!("--callgrind-out-file={}", out.display());
    let wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", &out_arg];
    let server = ServerProcess::start_under(&wrapper, kind, chat, &[])?;
    let pid = server.pid().to_string();
    let control = |what: &str| {
        let status = Command::new("callgrind_control")
            .args([what, &pid])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("callgrind_control: {e}"))?;
        if status.success() { Ok(()) } else { Err(format!("callgrind_control {what} failed ({status})")) }
    };
    let targets = Targets { addrs: vec![server.addr()], pids: vec![server.pid()] };
    let outcome = load::run_on_with(scenario, &targets, &mut || control("--instr=on"), &mut || control("--dump"));
    drop(server.stop());
    let outcome = outcome?;
    if outcome.lost() > 0 {
        return Err(format!("{} of {} deliveries lost", outcome.lost(), outcome.expected));
    }
    // The dump is `callgrind.out.1`; its `totals:` line counts every thread's instructions.
    let dump = std::fs::read_to_string(dir.join("callgrind.out.1")).map_err(|e| format!("callgrind dump: {e}"))?;
    dump.lines()
        .find_map(|line| line.strip_prefix("totals:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| "no totals in the callgrind dump".into())
}
