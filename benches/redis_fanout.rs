//! Cross-process group fan-out over Redis: 1 room x 1,000 clients, one sender x 1,000
//! messages (at most 8 in flight), so 1,000,000 deliveries, in three configurations:
//!
//! - `memory`: one chat process (release, in-memory layer) with all 1,000 clients;
//! - `redis`: a redis-server started here on a free port and TWO chat processes
//!   (`--layer redis://127.0.0.1:PORT`) with 500 clients each, the sender on the first;
//! - `redis-tls`: the same over TLS: a redis-server speaking TLS only, with certificates made
//!   for the run (`--layer rediss://127.0.0.1:PORT?ssl_ca_certs=...`);
//! - `django`: the same on two daphne processes serving the minimal Django Channels chat of
//!   `benches/django/` (channels_redis, same Redis), when the test venv has daphne. Django is
//!   far slower, so it sends `DJANGO_MESSAGES` messages (default 100) within 120 s.
//!
//! Server CPU is the sum over every server-side process, redis-server included; all of them
//! are pinned to CPU 0 and the load generator to CPU 1 (when `taskset` exists). For the Redis
//! configurations each run also prints the commands redis-server ran in the send phase (pops,
//! group reads, messages added to queues, scripts, transactions), which show how the fan-out was batched.
//!
//! `cargo bench --bench redis_fanout` (see docs/performance.md). `BENCH_RUNS=N` changes the
//! number of runs per configuration (default 3); `BENCH_NO_DJANGO=1` leaves Django out;
//! `BENCH_PERF_DIR=DIR` records a `perf` profile of each configuration's send phase there
//! (`BENCH_PERF_ARGS` adds perf options, such as `-e syscalls:sys_enter_sendto`);
//! `BENCH_WINDOW=N` changes the sender's window (default 8), to see how much of the result
//! is the closed loop's pace rather than the server's cost; `BENCH_REDIS_PARAMS` is added to
//! the chat processes' Redis URL (`send_linger_ms=0` turns off the send batches' wait);
//! `BENCH_CONFIGS=redis,redis-tls` runs only the configurations named.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use channels::redis::testing::{RedisServer, TestCertificates, TlsServer};
use common::django::Daphne;
use common::load::{self, Outcome, Scenario, Targets};
use common::profile::Profiler;
use common::server::{self, Kind, Log, ServerProcess};
use common::stats::{median, si};

/// Bars: Redis at least this share of in-memory, and this multiple of Django (both in
/// deliveries per server CPU-second).
const BAR_REDIS_VS_MEMORY: f64 = 0.5;
const BAR_REDIS_VS_DJANGO: f64 = 20.0;
/// Bar: TLS at least this share of plain TCP (deliveries per second and per server CPU-second).
const BAR_TLS_VS_PLAIN: f64 = 0.8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Memory,
    Redis,
    RedisTls,
    Django,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Memory => "memory",
            Config::Redis => "redis",
            Config::RedisTls => "redis-tls",
            Config::Django => "django",
        }
    }
}

fn main() -> ExitCode {
    if common::baseline::run_if_requested() || !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    let Some(chat) = server::prepare(1200) else { return ExitCode::FAILURE };
    let daphne = common::django::daphne_path();
    let django = std::env::var_os("BENCH_NO_DJANGO").is_none() && daphne.exists();
    if !django {
        println!("note: Django left out ({} missing or BENCH_NO_DJANGO set)", daphne.display());
    }
    let runs = common::runs();
    let scenario = Scenario {
        clients: 1000,
        rooms: 1,
        senders: 1,
        messages_per_sender: 1000,
        window: common::env_number("BENCH_WINDOW", 8),
        room: "bench",
        time_limit: Duration::from_secs(60),
    };
    let django_messages = common::env_number("DJANGO_MESSAGES", 100);
    // Django needs about 55 s for 100 messages here; give it room to finish.
    let django_scenario =
        Scenario { messages_per_sender: django_messages, time_limit: Duration::from_secs(120), ..scenario.clone() };
    let only = std::env::var("BENCH_CONFIGS").ok();
    let configs: Vec<Config> = [Config::Memory, Config::Redis, Config::RedisTls, Config::Django]
        .into_iter()
        .filter(|&c| c != Config::Django || django)
        .filter(|c| only.as_deref().is_none_or(|only| only.split(',').any(|name| name.trim() == c.name())))
        .collect();
    let certs = TestCertificates::generate();

    println!("== fan-out over Redis: 1 room x 1,000 clients, 1 sender, window 8");
    println!(
        "memory: 1 chat process x 1,000 clients; redis: 2 chat processes x 500 clients + redis-server; redis-tls: the same over TLS; django: 2 daphne x 500 + redis-server ({django_messages} messages)"
    );
    println!(
        "{runs} runs per configuration, alternating; cpus: {}; pinned: {}",
        common::cpus(),
        if server::pinning() { "servers CPU 0, load generator CPU 1" } else { "no (taskset missing)" }
    );
    load::print_header("config");
    let mut results: Vec<(Config, Vec<Outcome>)> = configs.iter().map(|&c| (c, Vec::new())).collect();
    let mut incomplete = false;
    for round in 1..=runs {
        for (config, outcomes) in &mut results {
            let scenario = if *config == Config::Django { &django_scenario } else { &scenario };
            let (outcome, logs) = match run_config(*config, scenario, &chat, &daphne, &certs) {
                Ok(result) => result,
                Err(e) => {
                    println!("{:<7} {:>3} failed: {e}", config.name(), round);
                    incomplete = true;
                    continue;
                }
            };
            let warns: usize = logs.iter().map(|log| log.lines).sum();
            match outcome {
                Ok(o) => {
                    load::print_row(config.name(), round, &o, warns);
                    incomplete |= o.delivered != o.expected;
                    outcomes.push(o);
                }
                Err(e) => {
                    println!("{:<7} {:>3} failed: {e}", config.name(), round);
                    incomplete = true;
                }
            }
            for line in logs.iter().flat_map(|log| log.first.iter()).take(5) {
                println!("          server log: {line}");
            }
        }
    }

    let med = |runs: &[Outcome], f: fn(&Outcome) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    println!("-- medians of {runs} runs");
    for (config, runs) in &results {
        println!(
            "{:<7} delivered {} (min {} of {}), {} deliveries/s, p50 {:.1} ms, p99 {:.1} ms, server CPU {:.3} s ({:.0} % in the kernel), {} deliveries per server CPU-second",
            config.name(),
            med(runs, |o| o.delivered as f64),
            runs.iter().map(|o| o.delivered).min().unwrap_or(0),
            runs.first().map_or(0, |o| o.expected),
            si(med(runs, Outcome::per_second)),
            med(runs, |o| o.p50.as_secs_f64() * 1e3),
            med(runs, |o| o.p99.as_secs_f64() * 1e3),
            med(runs, |o| o.server_cpu.as_secs_f64()),
            med(runs, Outcome::kernel_percent),
            si(med(runs, Outcome::per_server_cpu_second)),
        );
    }
    let of = |config: Config| results.iter().find(|(c, _)| *c == config).map(|(_, runs)| runs.as_slice());
    let ratio = |a: Config, b: Config, f: fn(&Outcome) -> f64| match (of(a), of(b)) {
        (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => med(a, f) / med(b, f),
        _ => f64::NAN,
    };
    // The configurations run in turns, so run i of one and run i of the other shared the
    // machine's state of the moment: the median of those paired ratios is less noisy.
    let per_run = |a: Config, b: Config, f: fn(&Outcome) -> f64| match (of(a), of(b)) {
        (Some(a), Some(b)) if !a.is_empty() && a.len() == b.len() => {
            median(&a.iter().zip(b).map(|(a, b)| f(a) / f(b)).collect::<Vec<_>>())
        }
        _ => f64::NAN,
    };
    let verdict = |value: f64, bar: f64| if value >= bar { "met" } else { "MISSED" };
    let cpu = ratio(Config::Redis, Config::Memory, Outcome::per_server_cpu_second);
    if of(Config::Memory).is_some() {
        println!(
            "redis/memory: deliveries per server CPU-second {cpu:.2} (bar >= {BAR_REDIS_VS_MEMORY}: {}; median of per-run ratios {:.2}), throughput {:.2} (per-run {:.2})",
            verdict(cpu, BAR_REDIS_VS_MEMORY),
            per_run(Config::Redis, Config::Memory, Outcome::per_server_cpu_second),
            ratio(Config::Redis, Config::Memory, Outcome::per_second),
            per_run(Config::Redis, Config::Memory, Outcome::per_second),
        );
    }
    if of(Config::RedisTls).is_some() {
        let cpu = ratio(Config::RedisTls, Config::Redis, Outcome::per_server_cpu_second);
        let throughput = ratio(Config::RedisTls, Config::Redis, Outcome::per_second);
        println!(
            "redis-tls/redis: throughput {throughput:.2} (bar >= {BAR_TLS_VS_PLAIN}: {}; per-run {:.2}), deliveries per server CPU-second {cpu:.2} (bar >= {BAR_TLS_VS_PLAIN}: {}; per-run {:.2})",
            verdict(throughput, BAR_TLS_VS_PLAIN),
            per_run(Config::RedisTls, Config::Redis, Outcome::per_second),
            verdict(cpu, BAR_TLS_VS_PLAIN),
            per_run(Config::RedisTls, Config::Redis, Outcome::per_server_cpu_second),
        );
    }
    if of(Config::Django).is_some() {
        let cpu = ratio(Config::Redis, Config::Django, Outcome::per_server_cpu_second);
        println!(
            "redis/django: deliveries per server CPU-second {cpu:.1} (bar >= {BAR_REDIS_VS_DJANGO}: {}), throughput {:.1}",
            verdict(cpu, BAR_REDIS_VS_DJANGO),
            ratio(Config::Redis, Config::Django, Outcome::per_second),
        );
    }
    if incomplete {
        println!("NOTE: at least one run did not deliver everything (see above)");
    }
    ExitCode::SUCCESS
}

/// Starts the processes of one configuration, runs the scenario, stops everything and returns
/// the outcome with what the servers logged.
fn run_config(
    config: Config,
    scenario: &Scenario,
    chat: &Path,
    daphne: &Path,
    certs: &TestCertificates,
) -> Result<(Result<Outcome, String>, Vec<Log>), String> {
    match config {
        Config::Memory => {
            let server = ServerProcess::start(Kind::Chat, chat)?;
            let targets = Targets { addrs: vec![server.addr()], pids: vec![server.pid()] };
            let outcome = run_split(scenario, &targets, &["chat"], None);
            Ok((outcome, vec![server.stop()]))
        }
        Config::Redis | Config::RedisTls => {
            let (redis, mut params) = if config == Config::RedisTls {
                let redis = RedisServer::start_tls(certs, TlsServer::default());
                (redis, vec![format!("ssl_ca_certs={}", certs.ca.display())])
            } else {
                (RedisServer::start(), Vec::new())
            };
            let redis_pid = pin_redis(&redis)?;
            params.extend(std::env::var("BENCH_REDIS_PARAMS").ok());
            let query = if params.is_empty() { String::new() } else { format!("?{}", params.join("&")) };
            let layer = vec!["--layer".to_owned(), format!("{}{query}", redis.url())];
            let first = ServerProcess::start_with(Kind::Chat, chat, &layer)?;
            let second = ServerProcess::start_with(Kind::Chat, chat, &layer)?;
            let targets =
                Targets { addrs: vec![first.addr(), second.addr()], pids: vec![first.pid(), second.pid(), redis_pid] };
            let outcome = run_split(scenario, &targets, &["chat 1", "chat 2", "redis-server"], Some(&redis));
            let logs = vec![first.stop(), second.stop()];
            drop(redis);
            Ok((outcome, logs))
        }
        Config::Django => {
            let redis = RedisServer::start();
            let redis_pid = pin_redis(&redis)?;
            let first = Daphne::start(daphne, &redis.url())?;
            let second = Daphne::start(daphne, &redis.url())?;
            let targets =
                Targets { addrs: vec![first.addr, second.addr], pids: vec![first.pid(), second.pid(), redis_pid] };
            let outcome = run_split(scenario, &targets, &["daphne 1", "daphne 2", "redis-server"], Some(&redis));
            let logs = vec![first.stop(), second.stop()];
            drop(redis);
            Ok((outcome, logs))
        }
    }
}

/// [`load::run_on`], printing how the server CPU of the send phase and of the whole run
/// (connecting and warm-up included) was split between the processes, and what `redis`
/// (if any) ran in the send phase.
fn run_split(
    scenario: &Scenario,
    targets: &Targets,
    names: &[&str],
    redis: Option<&RedisServer>,
) -> Result<Outcome, String> {
    let cpu = || -> Vec<Duration> { targets.pids.iter().map(|&pid| common::cpu_time(pid)).collect() };
    let start = cpu();
    let (mut sending, mut sent) = (Vec::new(), Vec::new());
    let profiler = std::cell::RefCell::new(None);
    let outcome = load::run_on_with(
        scenario,
        targets,
        &mut || {
            if let Some(redis) = redis {
                redis.cli(&["CONFIG", "RESETSTAT"]);
            }
            sending = cpu();
            *profiler.borrow_mut() = Some(Profiler::start(&targets.pids));
            Ok(())
        },
        &mut || {
            sent = cpu();
            profiler.borrow_mut().take();
            if let Some(redis) = redis {
                print_commands(redis);
            }
            Ok(())
        },
    );
    let end = cpu();
    let split = |from: &[Duration], to: &[Duration]| -> String {
        let parts: Vec<String> = names
            .iter()
            .zip(from.iter().zip(to))
            .map(|(name, (from, to))| format!("{name} {:.2} s", to.saturating_sub(*from).as_secs_f64()))
            .collect();
        parts.join(", ")
    };
    if sent.len() == names.len() {
        println!("          CPU of the send phase: {}", split(&sending, &sent));
    }
    println!("          CPU of the whole run (setup included): {}", split(&start, &end));
    outcome
}

/// Prints how many of the commands that carry the fan-out redis-server ran since its
/// statistics were reset: pops of the process queues, reads of the group, messages added to
/// queues, scripts and transactions.
fn print_commands(redis: &RedisServer) {
    let stats = redis.cli(&["INFO", "commandstats"]);
    let calls: Vec<String> = ["bzpopmin", "zpopmin", "zrange", "zadd", "evalsha", "exec"]
        .iter()
        .filter_map(|command| {
            let line = stats.lines().find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:")))?;
            let n = line.split(',').find_map(|field| field.strip_prefix("calls="))?;
            Some(format!("{command} {n}"))
        })
        .collect();
    println!("          redis-server commands in the send phase: {}", calls.join(", "));
}

/// Finds redis-server's process ID (from `INFO server`) and pins it to the servers' CPU.
fn pin_redis(redis: &RedisServer) -> Result<u32, String> {
    let info = redis.cli(&["INFO", "server"]);
    let pid = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .ok_or_else(|| "could not read redis-server's process_id".to_owned())?;
    if server::pinning() {
        let pinned = Command::new("taskset")
            .args(["-a", "-p", "-c", "0", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !pinned.is_ok_and(|s| s.success()) {
            eprintln!("note: could not pin redis-server to CPU 0");
        }
    }
    Ok(pid)
}
