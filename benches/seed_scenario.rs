//! The seed scenario: 1 room, 20 clients each sending 200 messages (at most 8 in flight per
//! sender), so 80,000 deliveries, every one of which must arrive; the chat example against
//! the hand-written baseline.
//!
//! `cargo bench --bench seed_scenario` (see docs/performance.md). `BENCH_RUNS=N` changes the
//! number of runs per server (default 3).

mod common;

use std::process::ExitCode;
use std::time::Duration;

use common::load::Scenario;

fn main() -> ExitCode {
    if common::baseline::run_if_requested() || !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    let scenario = Scenario {
        clients: 20,
        senders: 20,
        messages_per_sender: 200,
        window: 8,
        room: "seed",
        time_limit: Duration::from_secs(60),
    };
    common::compare::run("seed: 1 room, 20 clients x 200 messages each", &scenario)
}
