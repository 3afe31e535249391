//! A room after a process with members in it was SIGKILLed: the seed scenario (1 room, 20
//! clients x 200 messages, window 8) on a new chat process on that Redis, against the same on
//! a clean Redis. The killed process had `BENCH_DEAD_MEMBERS` clients (default 5,000) in the
//! room, and left them there as a SIGKILLed process does.
//!
//! Bar: at least 0.9 x the clean run's deliveries/s, nothing lost.
//!
//! `cargo bench --bench dead_process`. `BENCH_RUNS=N` changes the number of runs (default 3);
//! `BENCH_REDIS_PARAMS` is added to the chat processes' Redis URL (e.g. `process_ttl=5`);
//! `BENCH_SETTLE_SECS` waits that long between the kill and the scenario (default 0).

use std::process::ExitCode;
use std::time::Duration;

use channels::redis::testing::RedisServer;
use common::load::{self, Outcome, Scenario};
use common::server::{self, Kind, ServerProcess};
use common::stats::median;

const BAR: f64 = 0.9;

fn main() -> ExitCode {
    if common::baseline::run_if_requested() || !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    let dead_members = common::env_number("BENCH_DEAD_MEMBERS", 5_000);
    let Some(chat) = server::prepare(dead_members as u64 + 1_000) else { return ExitCode::FAILURE };
    let scenario = Scenario::seed("room0");
    let settle = Duration::from_secs(common::env_number("BENCH_SETTLE_SECS", 0) as u64);
    println!("== seed scenario after a SIGKILLed process with {dead_members} members in the room");
    load::print_header("redis");
    let (mut clean, mut after_kill) = (Vec::new(), Vec::new());
    let mut lost = false;
    for round in 1..=common::runs() {
        for (name, dead, outcomes) in [("clean", 0, &mut clean), ("killed", dead_members, &mut after_kill)] {
            match run(&chat, &scenario, dead, settle) {
                Ok(outcome) => {
                    load::print_row(name, round, &outcome, 0);
                    lost |= outcome.lost() > 0;
                    outcomes.push(outcome);
                }
                Err(e) => {
                    println!("{name:<7} {round:>3} failed: {e}");
                    lost = true;
                }
            }
        }
    }
    let per_second = |runs: &[Outcome]| median(&runs.iter().map(Outcome::per_second).collect::<Vec<_>>());
    let ratio = per_second(&after_kill) / per_second(&clean);
    println!(
        "bar: killed/clean deliveries/s {ratio:.2} (>= {BAR}: {}); lost: {}",
        common::verdict(ratio >= BAR),
        if lost { "SOME (MISSED)" } else { "none" }
    );
    ExitCode::SUCCESS
}

/// One run on a fresh Redis: a chat process with `dead_members` clients in the room is
/// SIGKILLed first (when there are any), then a new one runs the scenario.
fn run(chat: &std::path::Path, scenario: &Scenario, dead_members: usize, settle: Duration) -> Result<Outcome, String> {
    let redis = RedisServer::start();
    let params = std::env::var("BENCH_REDIS_PARAMS").map(|p| format!("?{p}")).unwrap_or_default();
    let layer = vec!["--layer".to_owned(), format!("{}{params}", redis.url())];
    if dead_members > 0 {
        let doomed = ServerProcess::start_with(Kind::Chat, chat, &layer)?;
        join_and_kill(doomed, &redis, scenario.room, dead_members)?;
        println!(
            "        the room holds {} members; processes listed: {}",
            redis.cli(&["ZCARD", &format!("asgi:group:chat_{}", scenario.room)]).trim(),
            redis.cli(&["ZCARD", "asgi:processes"]).trim()
        );
        std::thread::sleep(settle);
    }
    let server = ServerProcess::start_with(Kind::Chat, chat, &layer)?;
    let outcome = load::run(scenario, &server);
    server.stop();
    outcome
}

/// Connects `members` clients to `room` on `doomed`, waits until all of them are in the group
/// in Redis, and SIGKILLs the process.
fn join_and_kill(doomed: ServerProcess, redis: &RedisServer, room: &str, members: usize) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let addr = doomed.addr();
    let clients = runtime.block_on(async {
        // Each client reads what it is sent (the joins of the others), as a browser would: the
        // chat example closes connections that stop reading.
        let mut clients = Vec::with_capacity(members);
        for i in 0..members {
            let mut client = load::connect_client(&format!("ws://{addr}/ws/chat/{room}/?user=dead{i}")).await?;
            clients.push(tokio::spawn(async move {
                use futures_util::StreamExt;
                while let Some(Ok(_)) = client.next().await {}
            }));
        }
        let group = format!("asgi:group:chat_{room}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while redis.cli(&["ZCARD", &group]).trim() != members.to_string() {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("{room} holds {} of {members} members after 60 s", redis.cli(&["ZCARD", &group])));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<_, String>(clients)
    })?;
    // What `stop` sends is a SIGKILL.
    doomed.stop();
    for client in clients {
        client.abort();
    }
    Ok(())
}
