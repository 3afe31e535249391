//! Group fan-out: 1 room x 1,000 clients, one of them sends 1,000 messages (at most 8 in
//! flight), so 1,000,000 deliveries; the chat example against the hand-written baseline, in
//! its plain (one `sendto` per message) and batched (one flush per burst) forms.
//!
//! Bars: chat deliveries/s at least 0.95 x each bare baseline's, nothing lost; with its
//! message history on (the default) at least 0.90 x the chat with `--history 0`.
//!
//! `cargo bench --bench fanout` (see docs/performance.md). `BENCH_RUNS=N` changes the number
//! of runs per server (default 3); `BENCH_SERVERS=chat,chat-nohistory,baseline,batched,framework`
//! the servers (default: the first four).

use std::process::ExitCode;
use std::time::Duration;

use common::compare::Bars;
use common::load::Scenario;
use common::server::Kind;

fn main() -> ExitCode {
    if common::baseline::run_if_requested() || !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    let scenario = Scenario {
        clients: 1000,
        rooms: 1,
        senders: 1,
        messages_per_sender: 1000,
        window: 8,
        room: "bench",
        time_limit: Duration::from_secs(60),
    };
    let bars = Bars { min_ratio: 0.95, max_p99_ms: None };
    let kinds = match std::env::var("BENCH_SERVERS") {
        Ok(_) => common::compare::servers(false),
        Err(_) => vec![Kind::Chat, Kind::ChatNoHistory, Kind::Baseline, Kind::BaselineBatched],
    };
    common::compare::run_servers("fan-out: 1 room x 1,000 clients, 1 sender x 1,000 messages", &scenario, bars, kinds)
}
