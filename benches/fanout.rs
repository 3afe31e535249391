//! Group fan-out: 1 room x 1,000 clients, one of them sends 1,000 messages (at most 8 in
//! flight), so 1,000,000 deliveries; the chat example against the hand-written baseline.
//!
//! `cargo bench --bench fanout` (see docs/performance.md). `BENCH_RUNS=N` changes the number
//! of runs per server (default 3).

mod common;

use std::process::ExitCode;
use std::time::Duration;

use common::load::Scenario;

fn main() -> ExitCode {
    if common::baseline::run_if_requested() || !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    let scenario = Scenario {
        clients: 1000,
        senders: 1,
        messages_per_sender: 1000,
        window: 8,
        room: "bench",
        time_limit: Duration::from_secs(60),
    };
    common::compare::run("fan-out: 1 room x 1,000 clients, 1 sender x 1,000 messages", &scenario)
}
