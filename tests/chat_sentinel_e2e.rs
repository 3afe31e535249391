//! The chat example on Redis Sentinel: two chat processes, a client on each in one room, and
//! the master taken away mid-chat (killed, or demoted with `SENTINEL FAILOVER`). Neither
//! process restarts, the sender is told while its messages cannot go out, messages flow again
//! soon after the sentinels elect the new master, and no client gets a message twice. A
//! replica promoted without the room's key heals the same way.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use channels::redis::testing::SentinelDeployment;
use futures_util::{SinkExt, StreamExt};
use support::{Client, Example, connect, next_json};
use tokio_tungstenite::tungstenite::Message;

/// The chat events waiting on `client` now (at most `wait` for the first).
async fn drain(client: &mut Client, wait: Duration) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    let mut wait = wait;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(wait, client.next()).await {
        if let Message::Text(text) = frame {
            events.push(serde_json::from_str(&text).expect("JSON event"));
        }
        wait = Duration::from_millis(1);
    }
    events
}

/// What a chat through a failover showed.
struct Measured {
    flowing_after_election: Duration,
    errors_told: usize,
    received: usize,
}

async fn chat_through_a_failover(disrupt: impl FnOnce(&mut SentinelDeployment)) -> Measured {
    chat_through_a_failover_with("", disrupt).await
}

/// [`chat_through_a_failover`] with `options` appended to the layer URL.
async fn chat_through_a_failover_with(options: &str, disrupt: impl FnOnce(&mut SentinelDeployment)) -> Measured {
    let mut deployment = SentinelDeployment::start("chat");
    let layer = format!("{}&prefix=ha{options}", deployment.url());
    let mut east = Example::start("chat", &["--layer", &layer]);
    let mut west = Example::start("chat", &["--layer", &layer]);
    let mut ann = connect(&east.url("/ws/chat/ha/?user=ann")).await;
    next_json(&mut ann).await;
    let mut bob = connect(&west.url("/ws/chat/ha/?user=bob")).await;
    next_json(&mut bob).await;

    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let mut bob_got: HashMap<String, Instant> = HashMap::new();
    let mut ann_got: HashMap<String, Instant> = HashMap::new();
    let mut errors_told = 0;
    let mut elected = None;
    let mut old_master = None;
    let mut disrupt = Some(disrupt);
    let started = Instant::now();
    for i in 0..600 {
        let text = format!("m{i}");
        ann.send(Message::text(serde_json::json!({ "message": text }).to_string())).await.expect("send");
        sent_at.insert(text, Instant::now());
        for (client, got) in [(&mut ann, &mut ann_got), (&mut bob, &mut bob_got)] {
            for event in drain(client, Duration::from_millis(25)).await {
                match event["type"].as_str() {
                    Some("chat.message") => {
                        let text = event["text"].as_str().unwrap_or_default().to_owned();
                        assert!(got.insert(text.clone(), Instant::now()).is_none(), "{text} arrived twice");
                    }
                    Some("chat.error") => errors_told += 1,
                    _ => {}
                }
            }
        }
        if i == 40 {
            old_master = deployment.master_port();
            if let Some(disrupt) = disrupt.take() {
                disrupt(&mut deployment);
            }
        }
        if let Some(old) = old_master
            && elected.is_none()
            && deployment.master_port().is_some_and(|port| port != old)
        {
            elected = Some(Instant::now());
        }
        if let Some(at) = elected
            && at.elapsed() > Duration::from_secs(12)
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the chat took too long");
    }
    for (client, got) in [(&mut ann, &mut ann_got), (&mut bob, &mut bob_got)] {
        for event in drain(client, Duration::from_millis(500)).await {
            if event["type"] == "chat.message" {
                let text = event["text"].as_str().unwrap_or_default().to_owned();
                assert!(got.insert(text.clone(), Instant::now()).is_none(), "{text} arrived twice");
            }
        }
    }
    assert!(east.child.try_wait().expect("status").is_none(), "the east chat process is still running");
    assert!(west.child.try_wait().expect("status").is_none(), "the west chat process is still running");
    let elected = elected.expect("the sentinels elected a new master");
    // Flowing again: both clients have received a message sent after the election.
    let first_after = |got: &HashMap<String, Instant>, who: &str| {
        sent_at
            .iter()
            .filter(|(_, at)| **at >= elected)
            .filter_map(|(text, _)| got.get(text))
            .min()
            .copied()
            .unwrap_or_else(|| panic!("{who} receives a message sent after the election"))
    };
    let flowing = first_after(&bob_got, "bob").max(first_after(&ann_got, "ann"));
    assert!(east.terminate() && west.terminate(), "both processes exit cleanly");
    Measured {
        flowing_after_election: flowing.saturating_duration_since(elected),
        errors_told,
        received: bob_got.len(),
    }
}

impl Measured {
    fn report(&self, what: &str) {
        let line = format!(
            "chat, {what}: messages flow again {:?} after the sentinels named the new master; the sender was told of {} undelivered messages; the other client received {}",
            self.flowing_after_election, self.errors_told, self.received
        );
        println!("{line}");
        assert!(self.flowing_after_election <= Duration::from_secs(10), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_carries_on_when_the_master_is_killed() {
    chat_through_a_failover(|d| d.master().stop()).await.report("master killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_carries_on_through_sentinel_failover() {
    chat_through_a_failover(|d| {
        let name = d.master_name.clone();
        assert_eq!(d.sentinels[0].cli(&["SENTINEL", "FAILOVER", &name]).trim(), "OK");
    })
    .await
    .report("SENTINEL FAILOVER");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_heals_when_a_replica_without_its_keys_is_promoted() {
    // The replica loses the room's group key (as one that missed the last writes would), then
    // becomes the master. A heartbeat a day away (process_ttl) leaves the healing to what each
    // process does when it sees the new master: it adds its memberships there again.
    chat_through_a_failover_with("&process_ttl=86400", |d| {
        let master = d.master_port().expect("a master");
        let replica = d.servers.iter().find(|s| s.port != master).expect("the replica");
        assert_eq!(replica.cli(&["CONFIG", "SET", "replica-read-only", "no"]).trim(), "OK");
        assert_eq!(replica.cli(&["DEL", "ha:group:chat_ha"]).trim(), "1", "the replica had the room");
        let name = d.master_name.clone();
        assert_eq!(d.sentinels[0].cli(&["SENTINEL", "FAILOVER", &name]).trim(), "OK");
    })
    .await
    .report("replica promoted without the room's key");
}
