//! Many rooms: 100 rooms x 10 clients, every client sends 100 messages (at most 8 in flight),
//! so each message reaches the 10 members of its room: 1,000,000 deliveries; the chat example
//! against the hand-written baseline (plain and batched).
//!
//! Bars: chat deliveries/s at least 0.95 x each bare baseline's, nothing lost.
//!
//! `cargo bench --bench many_rooms` (see docs/performance.md). `BENCH_RUNS=N` changes the
//! number of runs per server (default 3); `BENCH_SERVERS=chat,baseline,batched,framework` the
//! servers.

use std::process::ExitCode;
use std::time::Duration;

use common::compare::Bars;
use common::load::Scenario;

fn main() -> ExitCode {
    if common::baseline::run_if_requested() || !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    let scenario = Scenario {
        clients: 1000,
        rooms: 100,
        senders: 1000,
        messages_per_sender: 100,
        window: 8,
        room: "many",
        time_limit: Duration::from_secs(60),
    };
    let bars = Bars { min_ratio: 0.95, max_p99_ms: None };
    common::compare::run("many rooms: 100 rooms x 10 clients, every client sends 100 messages", &scenario, bars, false)
}
