//! Runs a load scenario against the chat example and the baseline, alternating, and prints
//! each run and the medians with the chat/baseline ratios.

use std::process::ExitCode;

use super::load::{self, Outcome, Scenario};
use super::server::{self, Kind, ServerProcess};
use super::stats::{median, si};

/// Builds the chat example, then runs `scenario` `runs()` times against each server.
pub(crate) fn run(title: &str, scenario: &Scenario) -> ExitCode {
    let Some(chat) = server::prepare(scenario.clients as u64 + 200) else { return ExitCode::FAILURE };
    let runs = super::runs();
    println!("== {title}");
    println!(
        "{} clients in one room, {} sender(s) x {} messages, window {}: {} deliveries expected; {} runs per server, alternating; cpus: {}; pinned: {}",
        scenario.clients,
        scenario.senders,
        scenario.messages_per_sender,
        scenario.window,
        scenario.expected(),
        runs,
        super::cpus(),
        if server::pinning() { "server CPU 0, load generator CPU 1" } else { "no (taskset missing)" },
    );
    load::print_header("server");
    let mut chat_runs: Vec<Outcome> = Vec::new();
    let mut baseline_runs: Vec<Outcome> = Vec::new();
    let mut failed = false;
    for round in 1..=runs {
        for kind in [Kind::Chat, Kind::Baseline] {
            let server = match ServerProcess::start(kind, &chat) {
                Ok(server) => server,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let outcome = load::run(scenario, &server);
            let log = server.stop();
            match outcome {
                Ok(outcome) => {
                    load::print_row(kind.name(), round, &outcome, log.lines);
                    for line in &log.first {
                        println!("          server log: {line}");
                    }
                    if outcome.delivered != outcome.expected {
                        failed = true;
                    }
                    match kind {
                        Kind::Chat => chat_runs.push(outcome),
                        Kind::Baseline => baseline_runs.push(outcome),
                    }
                }
                Err(e) => {
                    println!("{:<9} {:>3} failed: {e}", kind.name(), round);
                    for line in &log.first {
                        println!("          server log: {line}");
                    }
                    failed = true;
                }
            }
        }
    }

    let med = |runs: &[Outcome], f: fn(&Outcome) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    println!("-- medians of {runs} runs");
    for (name, runs) in [("chat", &chat_runs), ("baseline", &baseline_runs)] {
        println!(
            "{:<9} delivered {} (min {} of {}), {} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, server CPU {:.3} s ({:.0} % in the kernel), {} deliveries per server CPU-second",
            name,
            med(runs, |o| o.delivered as f64),
            runs.iter().map(|o| o.delivered).min().unwrap_or(0),
            scenario.expected(),
            si(med(runs, Outcome::per_second)),
            med(runs, |o| o.p50.as_secs_f64() * 1e3),
            med(runs, |o| o.p99.as_secs_f64() * 1e3),
            med(runs, |o| o.server_cpu.as_secs_f64()),
            med(runs, Outcome::kernel_percent),
            si(med(runs, Outcome::per_server_cpu_second)),
        );
    }
    let ratio = |f: fn(&Outcome) -> f64| med(&chat_runs, f) / med(&baseline_runs, f);
    let paired = |f: fn(&Outcome) -> f64| {
        let ratios: Vec<f64> = chat_runs.iter().zip(&baseline_runs).map(|(c, b)| f(c) / f(b)).collect();
        median(&ratios)
    };
    println!(
        "chat/baseline: throughput {:.2} (median of per-run ratios {:.2}); deliveries per server CPU-second {:.2} (median of per-run ratios {:.2})",
        ratio(Outcome::per_second),
        paired(Outcome::per_second),
        ratio(Outcome::per_server_cpu_second),
        paired(Outcome::per_server_cpu_second),
    );
    if failed {
        println!("NOTE: at least one run did not deliver everything (see above)");
    }
    ExitCode::SUCCESS
}
