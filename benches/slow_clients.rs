//! Slow clients: 1,000 readers in one room, one of which stops reading right after it joins;
//! the others' throughput against the same room without the stalled reader, in one process.
//!
//! The scenario is `tests/slow_reader` (also run, smaller, by `tests/slow_clients.rs`): an
//! application with an in-memory layer on a real socket, real WebSocket clients, one sender
//! with 16 messages in flight, 16 KiB messages (so that the stalled reader's socket buffers
//! fill and the server's writes to it block), `send_timeout` 2 s. Runs alternate between the
//! two rooms; the table shows every run and the medians.
//!
//! `cargo bench --bench slow_clients` (numbers in docs/reliability.md); `BENCH_RUNS=N` changes
//! the number of runs of each kind (default 3).

#[path = "../tests/slow_reader/mod.rs"]
mod slow_reader;

use std::process::ExitCode;
use std::time::Duration;

use slow_reader::Scenario;

fn main() -> ExitCode {
    if !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    common::check_open_files(4200);
    let scenario = Scenario {
        clients: 1000,
        messages: 600,
        message_size: 16 * 1024,
        window: 16,
        stalled_reader: false,
        send_timeout: Duration::from_secs(2),
        time_limit: Duration::from_secs(120),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (mut without, mut with) = (Vec::new(), Vec::new());
    println!("slow clients: 1,000 readers, 600 messages of 16 KiB, send_timeout 2 s");
    println!(
        "  {:<10} {:>3} {:>14} {:>10} {:>14} {:>16} {:>10}",
        "room", "run", "deliveries/s", "wall s", "delivered", "stalled dropped", "RSS +MiB"
    );
    for run in 1..=common::runs() {
        for stalled in [false, true] {
            let outcome = runtime.block_on(slow_reader::run(&Scenario { stalled_reader: stalled, ..scenario.clone() }));
            println!(
                "  {:<10} {:>3} {:>14.0} {:>10.2} {:>14} {:>16} {:>10.1}",
                if stalled { "stalled" } else { "all read" },
                run,
                outcome.throughput,
                outcome.wall.as_secs_f64(),
                format!("{}/{}", outcome.delivered, outcome.expected),
                outcome.stalled_closed.map_or("-".into(), |(at, code)| format!("{code} at {:.1} s", at.as_secs_f64())),
                outcome.peak_rss_kib.saturating_sub(outcome.rss_before_kib) as f64 / 1024.0,
            );
            if stalled { with.push(outcome) } else { without.push(outcome) }
        }
    }
    let median = |outcomes: &[slow_reader::Outcome]| {
        common::stats::median(&outcomes.iter().map(|o| o.throughput).collect::<Vec<_>>())
    };
    let (a, b) = (median(&without), median(&with));
    println!("  median deliveries/s: {a:.0} without the stalled reader, {b:.0} with it: {:.1} %", b / a * 100.0);
    let complete = with.iter().chain(&without).all(|o| o.delivered == o.expected);
    let dropped = with.iter().all(|o| matches!(o.stalled_closed, Some((_, 1006))));
    if complete && dropped { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
