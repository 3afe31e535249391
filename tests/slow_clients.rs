//! Slow clients: one reader in a room stops reading. The others keep their pace, the stalled
//! one is dropped once the server has waited `send_timeout` on it (its `disconnect` gets 1006,
//! as docs/concepts.md says), and memory stays bounded.
//!
//! The room and the bounds here are sized for a shared CI machine and a debug build (200
//! readers, the others' throughput above half); `cargo bench --bench slow_clients` measures
//! the same scenario with 1,000 readers in release mode (numbers in docs/reliability.md).

mod slow_reader;

use std::time::Duration;

use slow_reader::Scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_in_a_room_is_dropped_with_1006_and_the_others_keep_their_pace() {
    let scenario = Scenario {
        clients: 200,
        // 6.25 MiB for each reader: more than the kernel buffers for a stalled reader's socket
        // (up to 4 MiB of send buffer on Linux), so the server's writes to it block.
        messages: 400,
        message_size: 16 * 1024,
        window: 16,
        stalled_reader: false,
        send_timeout: Duration::from_secs(1),
        time_limit: Duration::from_secs(90),
    };
    let baseline = slow_reader::run(&scenario).await;
    let stalled = slow_reader::run(&Scenario { stalled_reader: true, ..scenario.clone() }).await;
    eprintln!("without a stalled reader: {baseline:?}\nwith one: {stalled:?}");

    assert_eq!(baseline.delivered, baseline.expected, "every reader got every message");
    assert_eq!(stalled.delivered, stalled.expected, "every reader but the stalled one got every message");
    let (after, code) = stalled.stalled_closed.expect("the stalled reader was dropped");
    assert_eq!(code, 1006, "a client that does not read is dropped; disconnect gets 1006");
    assert!(after < Duration::from_secs(15), "dropped {after:?} into the run");
    let ratio = stalled.throughput / baseline.throughput;
    assert!(ratio > 0.5, "the others' throughput fell to {:.0} % of the run without a stalled reader", ratio * 100.0);
    let grew = |o: &slow_reader::Outcome| o.peak_rss_kib.saturating_sub(o.rss_before_kib);
    assert!(
        grew(&stalled) < grew(&baseline) + 32 * 1024,
        "memory grew by {} KiB with the stalled reader, {} KiB without",
        grew(&stalled),
        grew(&baseline)
    );
    assert_eq!((baseline.open_after, stalled.open_after), (0, 0), "every connection ended");
}
