//! Runs a load scenario against the chat example and the baselines, alternating, and prints
//! each run, the medians, the ratios against each baseline and the bars.
//!
//! Servers, in this order in every round: the chat example, the bare baseline (one `sendto`
//! per message), the batched bare baseline (one flush per burst), and, when asked for and
//! installed, Django Channels. `BENCH_SERVERS=chat,baseline,batched,framework,django` picks
//! others (`framework` is the silent-join bench server of [`super::framework`]).

use std::process::ExitCode;

use super::django::{self, Daphne};
use super::load::{self, Outcome, Scenario, Targets};
use super::server::{self, Kind, Log, ServerProcess};
use super::stats::{median, si};

/// What a scenario is judged against. Every bar is printed with `met` or `MISSED`.
#[derive(Debug, Clone, Copy)]
pub struct Bars {
    /// Chat deliveries/s at least this share of each bare baseline's (medians of the runs).
    pub min_ratio: f64,
    /// Chat p99 latency at most this many milliseconds (median of the runs), if set.
    pub max_p99_ms: Option<f64>,
}

/// The servers a comparison runs: `BENCH_SERVERS`, or chat, baseline, batched (and django
/// when `with_django` and daphne is installed, unless `BENCH_NO_DJANGO` is set).
pub fn servers(with_django: bool) -> Vec<Kind> {
    let mut kinds: Vec<Kind> = match std::env::var("BENCH_SERVERS") {
        Ok(list) => list.split(',').filter_map(Kind::from_name).collect(),
        Err(_) => {
            let mut kinds = vec![Kind::Chat, Kind::Baseline, Kind::BaselineBatched];
            if with_django {
                kinds.push(Kind::Django);
            }
            kinds
        }
    };
    if kinds.contains(&Kind::Django) {
        let daphne = django::daphne_path();
        if std::env::var_os("BENCH_NO_DJANGO").is_some() || !daphne.exists() {
            println!(
                "note: Django left out ({} missing or BENCH_NO_DJANGO set; scripts/install-test-deps installs it)",
                daphne.display()
            );
            kinds.retain(|&kind| kind != Kind::Django);
        }
    }
    kinds
}

/// Starts a server of `kind`, runs `scenario` on it and stops it.
pub fn run_once(kind: Kind, scenario: &Scenario, chat: &std::path::Path) -> (Result<Outcome, String>, Log) {
    if kind == Kind::Django {
        return match Daphne::start_in_memory(&django::daphne_path()) {
            Ok(daphne) => {
                let targets = Targets { addrs: vec![daphne.addr], pids: vec![daphne.pid()] };
                let outcome = load::run_on(scenario, &targets);
                (outcome, daphne.stop())
            }
            Err(e) => (Err(e), Log::default()),
        };
    }
    match ServerProcess::start(kind, chat) {
        Ok(server) => {
            let outcome = load::run(scenario, &server);
            (outcome, server.stop())
        }
        Err(e) => (Err(e), Log::default()),
    }
}

/// Builds the chat example, then runs `scenario` `runs()` times against each server of
/// [`servers`] and judges the chat by `bars`.
pub fn run(title: &str, scenario: &Scenario, bars: Bars, with_django: bool) -> ExitCode {
    run_servers(title, scenario, bars, servers(with_django))
}

/// [`run`] on the servers `kinds`.
pub fn run_servers(title: &str, scenario: &Scenario, bars: Bars, kinds: Vec<Kind>) -> ExitCode {
    let Some(chat) = server::prepare(scenario.clients as u64 + 200) else { return ExitCode::FAILURE };
    let runs = super::runs();
    println!("== {title}");
    println!(
        "{} clients in {} room(s), {} sender(s) x {} messages, window {}: {} deliveries expected; {} runs per server, alternating; cpus: {}; pinned: {}",
        scenario.clients,
        scenario.rooms.max(1),
        scenario.senders,
        scenario.messages_per_sender,
        scenario.window,
        scenario.expected(),
        runs,
        super::cpus(),
        if server::pinning() { "server CPU 0, load generator CPU 1" } else { "no (taskset missing)" },
    );
    for kind in &kinds {
        println!("  {}", kind.legend());
    }
    load::print_header("server");
    let mut results: Vec<(Kind, Vec<Outcome>)> = kinds.iter().map(|&kind| (kind, Vec::new())).collect();
    let mut failed = false;
    for round in 1..=runs {
        for (kind, outcomes) in &mut results {
            let (outcome, log) = run_once(*kind, scenario, &chat);
            match outcome {
                Ok(outcome) => {
                    load::print_row(kind.name(), round, &outcome, log.lines);
                    failed |= outcome.delivered != outcome.expected;
                    outcomes.push(outcome);
                }
                Err(e) => {
                    println!("{:<9} {:>3} failed: {e}", kind.name(), round);
                    failed = true;
                }
            }
            for line in log.first.iter().take(3) {
                println!("          server log: {line}");
            }
        }
    }
    report(scenario, &results, bars);
    if failed {
        println!("NOTE: at least one run did not deliver everything (see above)");
    }
    ExitCode::SUCCESS
}

fn med(runs: &[Outcome], f: fn(&Outcome) -> f64) -> f64 {
    median(&runs.iter().map(f).collect::<Vec<_>>())
}

/// Prints the medians, the ratios against the baselines and the bars.
pub fn report(scenario: &Scenario, results: &[(Kind, Vec<Outcome>)], bars: Bars) {
    let runs = results.iter().map(|(_, r)| r.len()).max().unwrap_or(0);
    println!("-- medians of {runs} runs");
    for (kind, runs) in results {
        println!(
            "{:<9} delivered {} (min {} of {}; lost max {}), {} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, server CPU {:.3} s ({:.0} % in the kernel), {} deliveries per server CPU-second, server RSS {:.1} MiB ({:.1} KiB per client)",
            kind.name(),
            med(runs, |o| o.delivered as f64),
            runs.iter().map(|o| o.delivered).min().unwrap_or(0),
            scenario.expected(),
            runs.iter().map(Outcome::lost).max().unwrap_or(0),
            si(med(runs, Outcome::per_second)),
            med(runs, |o| o.p50.as_secs_f64() * 1e3),
            med(runs, |o| o.p99.as_secs_f64() * 1e3),
            med(runs, |o| o.max.as_secs_f64() * 1e3),
            med(runs, |o| o.server_cpu.as_secs_f64()),
            med(runs, Outcome::kernel_percent),
            si(med(runs, Outcome::per_server_cpu_second)),
            med(runs, |o| o.server_rss_kib as f64) / 1024.0,
            med(runs, |o| o.server_rss_kib as f64) / scenario.clients as f64,
        );
    }
    let of = |kind: Kind| results.iter().find(|(k, _)| *k == kind).map(|(_, r)| r.as_slice()).filter(|r| !r.is_empty());
    let contenders = [Kind::Chat, Kind::ChatNoHistory, Kind::Framework];
    let references = [Kind::Baseline, Kind::BaselineBatched, Kind::Django, Kind::ChatNoMetrics];
    for contender in contenders {
        let Some(ours) = of(contender) else { continue };
        for reference in references {
            let Some(theirs) = of(reference) else { continue };
            let ratio = |f: fn(&Outcome) -> f64| med(ours, f) / med(theirs, f);
            let paired =
                |f: fn(&Outcome) -> f64| median(&ours.iter().zip(theirs).map(|(a, b)| f(a) / f(b)).collect::<Vec<_>>());
            println!(
                "{}/{}: deliveries/s {:.2} (median of per-run ratios {:.2}); deliveries per server CPU-second {:.2} (per-run {:.2})",
                contender.name(),
                reference.name(),
                ratio(Outcome::per_second),
                paired(Outcome::per_second),
                ratio(Outcome::per_server_cpu_second),
                paired(Outcome::per_server_cpu_second),
            );
        }
    }
    let Some(chat) = of(Kind::Chat) else { return };
    for reference in [Kind::Baseline, Kind::BaselineBatched] {
        let Some(bare) = of(reference) else { continue };
        let ratio = med(chat, Outcome::per_second) / med(bare, Outcome::per_second);
        println!(
            "bar: chat deliveries/s >= {:.2} x {} ({}): {:.2} -> {}",
            bars.min_ratio,
            reference.name(),
            if reference == Kind::Baseline { "bare, unbatched" } else { "bare, batched" },
            ratio,
            super::verdict(ratio >= bars.min_ratio)
        );
    }
    if let Some(off) = of(Kind::ChatNoMetrics) {
        let ratio = med(chat, Outcome::per_second) / med(off, Outcome::per_second);
        println!(
            "bar: chat with metrics >= 0.97 x without (same run): {ratio:.2} -> {}",
            super::verdict(ratio >= 0.97)
        );
    }
    if let Some(off) = of(Kind::ChatNoHistory) {
        let ratio = med(chat, Outcome::per_second) / med(off, Outcome::per_second);
        let paired = median(&chat.iter().zip(off).map(|(a, b)| a.per_second() / b.per_second()).collect::<Vec<_>>());
        println!(
            "bar: chat deliveries/s with history >= 0.90 x without (chat-nohistory): {ratio:.2} (median of per-run ratios {paired:.2}) -> {}",
            super::verdict(ratio >= 0.90)
        );
    }
    let lost: u64 = chat.iter().map(Outcome::lost).sum();
    println!("bar: chat loses nothing (all runs): {lost} lost -> {}", super::verdict(lost == 0));
    if let Some(max_p99) = bars.max_p99_ms {
        let p99 = med(chat, |o| o.p99.as_secs_f64() * 1e3);
        println!("bar: chat p99 <= {max_p99} ms: {p99:.2} ms -> {}", super::verdict(p99 <= max_p99));
    }
}
