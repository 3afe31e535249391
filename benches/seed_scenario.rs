//! The seed scenario: 1 room, 20 clients each sending 200 messages (at most 8 in flight per
//! sender), so 80,000 deliveries, every one of which must arrive; the chat example against
//! the hand-written baseline (plain and batched) and, when the test venv has daphne, Django
//! Channels (daphne, in-memory layer) running the same consumer (`benches/django/`).
//!
//! Bars: chat deliveries/s at least 0.95 x each bare baseline's, nothing lost, p99 <= 5 ms.
//!
//! `cargo bench --bench seed_scenario` (see docs/performance.md). `BENCH_RUNS=N` changes the
//! number of runs per server (default 3); `BENCH_NO_DJANGO=1` leaves Django out;
//! `BENCH_SERVERS=chat,baseline,batched,framework,django` picks the servers.

use std::process::ExitCode;

use common::compare::Bars;
use common::load::Scenario;

fn main() -> ExitCode {
    if common::baseline::run_if_requested() || !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    let scenario = Scenario::seed("seed");
    let bars = Bars { min_ratio: 0.95, max_p99_ms: Some(5.0) };
    common::compare::run("seed: 1 room, 20 clients x 200 messages each", &scenario, bars, true)
}
