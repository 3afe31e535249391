//! Instructions per delivery in the in-memory layer, counted by callgrind: 1,000 consumer tasks
//! wait in `receive` and drain with `try_receive` on their channel's receiver (as the runtime
//! does), while one task sends bursts of group messages to all of them and waits until every
//! copy is taken.
//!
//! Counted instructions do not depend on what else the machine is doing, so two commits can be
//! compared on a shared machine where timings swing by ±25 %. Each burst size is run twice
//! under callgrind, with and without the sends, and the difference is divided by the
//! deliveries: setup is not counted.
//!
//! `cargo bench --bench layer_instructions` (needs `valgrind`; see docs/performance.md).

use std::collections::HashMap;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use channels::layers::{ChannelLayer, LayerConfig, Message};
use channels::memory::InMemoryChannelLayer;

const MEMBERS: usize = 1000;
const DELIVERIES_PER_BURST_SIZE: usize = 200_000;
const WORKLOAD: &str = "--layer-workload";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == WORKLOAD) {
        let number = |i: usize| args.get(at + i).and_then(|s| s.parse().ok()).unwrap_or(0);
        workload(number(1), number(2));
        return ExitCode::SUCCESS;
    }
    if !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("skipped: valgrind is not installed");
        return ExitCode::SUCCESS;
    }
    println!("== in-memory layer: {MEMBERS} waiting consumers, group sends in bursts (callgrind)");
    println!("{:>6} {:>12} {:>16}", "burst", "deliveries", "instr/delivery");
    for burst in [1, 4, 16] {
        let rounds = DELIVERIES_PER_BURST_SIZE / (MEMBERS * burst);
        let (Some(with), Some(without)) = (instructions(rounds, burst), instructions(0, burst)) else {
            println!("callgrind failed");
            return ExitCode::FAILURE;
        };
        let deliveries = rounds * burst * MEMBERS;
        println!("{burst:>6} {deliveries:>12} {:>16.0}", (with - without) as f64 / deliveries as f64);
    }
    ExitCode::SUCCESS
}

/// Instructions callgrind counts for this program running the workload.
fn instructions(rounds: usize, burst: usize) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let output = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(exe)
        .args([WORKLOAD, &rounds.to_string(), &burst.to_string()])
        .output()
        .ok()?;
    let log = String::from_utf8_lossy(&output.stderr);
    let line = log.lines().find(|l| l.contains("Collected :"))?;
    line.rsplit(':').next()?.trim().replace(',', "").parse().ok()
}

fn workload(rounds: usize, burst: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    runtime.block_on(async {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let taken = Arc::new(AtomicUsize::new(0));
        for _ in 0..MEMBERS {
            let channel = layer.new_channel("specific").await.expect("new_channel");
            layer.group_add("room", &channel).await.expect("group_add");
            let receiver = Arc::new(layer.clone()).receiver(channel.into());
            let taken = taken.clone();
            tokio::spawn(async move {
                while receiver.receive().await.is_ok() {
                    let mut n = 1;
                    while receiver.try_receive().is_some() {
                        n += 1;
                    }
                    taken.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
        tokio::task::yield_now().await;
        let message = Message::new(&HashMap::from([("type", "chat.message"), ("text", "hello")])).expect("message");
        for round in 1..=rounds {
            for _ in 0..burst {
                layer.group_send("room", message.clone()).await.expect("group_send");
            }
            while taken.load(Ordering::Relaxed) < round * burst * MEMBERS {
                tokio::task::yield_now().await;
            }
        }
    });
}
