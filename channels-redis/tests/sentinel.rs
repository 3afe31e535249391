//! Redis Sentinel: one master, one replica and three sentinels, started by the tests. The layer
//! semantics suite through Sentinel, and failovers (the master killed, or demoted with
//! `SENTINEL FAILOVER`) while two processes exchange group messages: errors meanwhile,
//! messages flowing again soon after the sentinels elect the new master, none twice.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use channels_core::layer::{ChannelLayer, LayerConfig, Message};
use channels_redis::testing::{SentinelDeployment, TestCertificates};
use channels_redis::{RedisChannelLayer, RedisConfig, RedisPubSubChannelLayer};

/// The deployment the semantics suite runs on (the failover tests make their own).
fn shared() -> &'static SentinelDeployment {
    static DEPLOYMENT: OnceLock<SentinelDeployment> = OnceLock::new();
    DEPLOYMENT.get_or_init(|| SentinelDeployment::start("suite"))
}

fn with_prefix(url: &str) -> String {
    format!("{url}&prefix=t{:016x}", rand::random::<u64>())
}

fn sentinel_layer(config: LayerConfig) -> Arc<dyn ChannelLayer> {
    let mut redis = RedisConfig::from_url(&with_prefix(&shared().url())).expect("config");
    redis.layer = config;
    Arc::new(RedisChannelLayer::new(redis).expect("layer"))
}

channels_core::layer_conformance_tests!(|config| async move { sentinel_layer(config) });

impl Failover {
    /// Prints the measurements and checks them against the bar: flowing again within 10 s
    /// of the election.
    fn report(&self, what: &str) {
        let line = format!(
            "{what}: messages flow again {:?} after the sentinels named the new master; {} sends failed meanwhile, {} acknowledged sends never arrived, {} messages received",
            self.flowing_after_election, self.send_errors, self.lost_after_success, self.received
        );
        println!("{line}");
        assert!(self.flowing_after_election <= Duration::from_secs(10), "{line}");
        assert!(self.received > 100, "{line}");
        // Replication is asynchronous: the last sends the old master acknowledged may be gone.
        // More than that means a live member was left out of the group.
        assert!(self.lost_after_success <= 5, "{line}");
    }
}

fn numbered(n: u64) -> Message {
    Message::new(&serde_json::json!({"type": "chat.message", "n": n})).expect("message")
}

/// What one failover test measured.
struct Failover {
    /// From the sentinels naming the new master to the first message sent after that arriving.
    flowing_after_election: Duration,
    /// Sends that failed during the switch (the sender was told).
    send_errors: usize,
    /// Sends that succeeded but whose message never arrived (acknowledged by the old master
    /// and not replicated before it went away: Redis replication is asynchronous).
    lost_after_success: usize,
    /// Messages received.
    received: usize,
}

/// Two processes (layers) on the deployment, a member in each, one sending numbered group
/// messages every 20 ms; `disrupt` takes the master away; returns what was measured once
/// messages flow again, and checks that none arrived twice.
async fn chat_through_a_failover(
    deployment: &mut SentinelDeployment,
    disrupt: impl FnOnce(&mut SentinelDeployment),
) -> Failover {
    let url = with_prefix(&deployment.url());
    let east = RedisChannelLayer::from_url(&url).expect("layer");
    let west = RedisChannelLayer::from_url(&url).expect("layer");
    let east_member = east.new_channel("specific").await.expect("channel");
    let west_member = west.new_channel("specific").await.expect("channel");
    east.group_add("room", &east_member).await.expect("group_add");
    west.group_add("room", &west_member).await.expect("group_add");
    east.group_send("room", numbered(0)).await.expect("a send before the failover");
    for (layer, member) in [(&east, &east_member), (&west, &west_member)] {
        let got = tokio::time::timeout(Duration::from_secs(5), layer.receive(member)).await.expect("in time");
        assert_eq!(got.expect("message").decode::<serde_json::Value>().expect("decodes")["n"], 0);
    }

    let old_master = deployment.master_port().expect("a master");
    disrupt(deployment);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let east = east.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut errors = 0;
            // (number, when its send began, whether it succeeded)
            let mut sends = Vec::new();
            for n in 1..=1500u64 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let began = Instant::now();
                let ok = east.group_send("room", numbered(n)).await.is_ok();
                errors += usize::from(!ok);
                sends.push((n, began, ok));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (errors, sends)
        })
    };
    let deployment_ref = &*deployment;
    let elected =
        tokio::task::block_in_place(|| deployment_ref.wait_for_new_master(old_master, Duration::from_secs(30)))
            .expect("the sentinels elect a new master within 30 s");
    // Receive for 15 s after the election (each message once), noting when each arrived.
    let mut arrived: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    let receive_until = elected + Duration::from_secs(15);
    let receive = |arrived: &mut std::collections::HashMap<u64, Instant>, message: Message| {
        let n = message.decode::<serde_json::Value>().expect("decodes")["n"].as_u64().expect("numbered");
        assert!(arrived.insert(n, Instant::now()).is_none(), "message {n} arrived twice");
    };
    while Instant::now() < receive_until {
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(200), west.receive(&west_member)).await {
            receive(&mut arrived, message);
        }
    }
    // Stop the sender, then collect what is still on its way.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (send_errors, sends) = sender.await.expect("the sender ends");
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(500), west.receive(&west_member)).await {
        receive(&mut arrived, message);
    }
    // Flowing again: the first message whose send began after the election has arrived.
    let flowing_at = sends
        .iter()
        .filter(|(_, began, _)| *began >= elected)
        .find_map(|(n, _, _)| arrived.get(n))
        .copied()
        .expect("a message sent after the election arrives");
    let last_arrived = arrived.keys().max().copied().unwrap_or(0);
    let lost_after_success =
        sends.iter().filter(|(n, _, ok)| *ok && *n <= last_arrived && !arrived.contains_key(n)).count();
    Failover {
        flowing_after_election: flowing_at.saturating_duration_since(elected),
        send_errors,
        lost_after_success,
        received: arrived.len(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_again_soon_after_the_master_is_killed() {
    let mut deployment = SentinelDeployment::start("killed");
    let measured = chat_through_a_failover(&mut deployment, |d| d.master().stop()).await;
    measured.report("master killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_again_soon_after_sentinel_failover() {
    let mut deployment = SentinelDeployment::start("demoted");
    let measured = chat_through_a_failover(&mut deployment, |d| {
        let name = d.master_name.clone();
        let answer = d.sentinels[0].cli(&["SENTINEL", "FAILOVER", &name]);
        assert_eq!(answer.trim(), "OK", "SENTINEL FAILOVER: {answer}");
    })
    .await;
    measured.report("SENTINEL FAILOVER");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_again_after_a_failover_with_tls_everywhere() {
    // Masters, replicas and sentinels speak TLS only; the URL is
    // rediss+sentinel://...&sentinel_ssl=true&ssl_ca_certs=CA.
    let certs = TestCertificates::generate();
    let mut deployment = SentinelDeployment::start_tls(&["secure"], &certs);
    let url = deployment.url();
    assert!(url.starts_with("rediss+sentinel://") && url.contains("sentinel_ssl=true"), "{url}");
    let plain_sentinels = url.replace("sentinel_ssl=true", "sentinel_ssl=false");
    let layer = RedisChannelLayer::from_url(&plain_sentinels).expect("URL");
    let err = tokio::time::timeout(Duration::from_secs(10), layer.ping()).await.expect("in time");
    assert!(err.expect_err("sentinels that speak TLS only").to_string().contains("no sentinel names master"));
    let measured = chat_through_a_failover(&mut deployment, |d| d.master().stop()).await;
    measured.report("TLS, master killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pubsub_layer_works_through_sentinel() {
    let url = shared().url().replacen("redis+sentinel://", "redis+sentinel+pubsub://", 1);
    let url = format!("{url}&prefix=p{:016x}", rand::random::<u64>());
    let sender = RedisPubSubChannelLayer::new(RedisConfig::from_url(&url).expect("config")).expect("layer");
    let receiver = RedisPubSubChannelLayer::new(RedisConfig::from_url(&url).expect("config")).expect("layer");
    sender.ping().await.expect("ping through sentinel");
    let me = receiver.new_channel("specific").await.expect("channel");
    receiver.group_add("room", &me).await.expect("group_add");
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            sender.group_send("room", numbered(7)).await.expect("group_send");
            if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(200), receiver.receive(&me)).await {
                return message;
            }
        }
    })
    .await
    .expect("a message within 5 s");
    assert_eq!(got.decode::<serde_json::Value>().expect("decodes")["n"], 7);
}

#[tokio::test]
async fn an_unknown_master_name_is_a_clear_error() {
    let url = shared().url().replace("master_name=suite", "master_name=nosuch");
    let layer = RedisChannelLayer::from_url(&url).expect("a valid URL");
    let err =
        tokio::time::timeout(Duration::from_secs(10), layer.ping()).await.expect("in time").expect_err("no master");
    let err = err.to_string();
    assert!(err.contains("nosuch") && err.contains("does not know master"), "{err}");
}

#[tokio::test]
async fn unreachable_sentinels_are_a_clear_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let layer =
        RedisChannelLayer::from_url(&format!("redis+sentinel://127.0.0.1:{closed}?master_name=m")).expect("URL");
    let err =
        tokio::time::timeout(Duration::from_secs(10), layer.ping()).await.expect("in time").expect_err("no sentinel");
    let err = err.to_string();
    assert!(err.contains(&format!("127.0.0.1:{closed}")) && err.contains("no sentinel names master"), "{err}");
}

#[test]
fn bad_sentinel_urls_are_refused_at_start_naming_the_part() {
    for (url, named) in [
        ("redis+sentinel://s1:26379/0", "master_name"),
        ("redis+sentinel://s1:26379/0?master_name=", "master_name"),
        ("redis+sentinel:///0?master_name=m", "sentinels' hosts"),
        ("redis+sentinel://s1?master_name=m&sentinel_ssl=maybe", "sentinel_ssl"),
        ("redis+sentinel://s1?master_name=m&bogus=1", "bogus"),
        ("redis+sentinel://s1?master_name=m&ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis+sentinel://s1?master_name=m&ssl_ca_certs=/no/such/ca.pem", "/no/such/ca.pem"),
    ] {
        let err = RedisChannelLayer::from_url(url).expect_err(url).to_string();
        assert!(err.contains(named), "{url}: {err}");
        let pubsub = url.replacen("redis+sentinel://", "redis+sentinel+pubsub://", 1);
        let err = RedisConfig::from_url(&pubsub).and_then(RedisPubSubChannelLayer::new).expect_err(url).to_string();
        assert!(err.contains(named), "{pubsub}: {err}");
    }
}

#[test]
fn master_names_are_shards_in_order_and_secrets_stay_hidden() {
    let config = RedisConfig::from_url(
        "redis+sentinel://:pw@s1:26379,s2:26379/2?master_name=a&master_name=b&sentinel_password=spw&prefix=x",
    )
    .expect("config");
    assert_eq!(
        config.hosts,
        [
            "redis+sentinel://:pw@s1:26379,s2:26379/2?master_name=a",
            "redis+sentinel://:pw@s1:26379,s2:26379/2?master_name=b"
        ]
    );
    let shown = format!("{config:?}");
    assert!(!shown.contains("pw@") && !shown.contains("spw"), "{shown}");
    let layer = RedisChannelLayer::new(config).expect("layer");
    assert!(!format!("{layer:?}").contains("pw@"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pubsub_layer_subscribes_again_on_the_new_master() {
    let mut deployment = SentinelDeployment::start("pubsub");
    let url = deployment.url().replacen("redis+sentinel://", "redis+sentinel+pubsub://", 1);
    let sender = RedisPubSubChannelLayer::new(RedisConfig::from_url(&url).expect("config")).expect("layer");
    let receiver = RedisPubSubChannelLayer::new(RedisConfig::from_url(&url).expect("config")).expect("layer");
    let me = receiver.new_channel("specific").await.expect("channel");
    receiver.group_add("room", &me).await.expect("group_add");
    // Until `n` arrives, within `limit`, sending numbered messages every 50 ms.
    let reaches = |from: u64, limit: Duration| {
        let (sender, receiver, me) = (sender.clone(), receiver.clone(), me.clone());
        async move {
            let deadline = Instant::now() + limit;
            let mut n = from;
            while Instant::now() < deadline {
                n += 1;
                let _ = sender.group_send("room", numbered(n)).await;
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(50), receiver.receive(&me)).await {
                    return Some(Instant::now());
                }
            }
            None
        }
    };
    reaches(0, Duration::from_secs(5)).await.expect("messages flow before the failover");
    let old_master = deployment.master_port().expect("a master");
    deployment.master().stop();
    let elected = tokio::task::block_in_place(|| deployment.wait_for_new_master(old_master, Duration::from_secs(30)))
        .expect("a new master within 30 s");
    // Drain what arrived before the election, then measure from it.
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(10), receiver.receive(&me)).await {}
    let flowing = reaches(10_000, Duration::from_secs(15)).await.expect("messages flow again on the new master");
    let after = flowing.saturating_duration_since(elected);
    println!("pub/sub, master killed: messages flow again {after:?} after the sentinels named the new master");
    assert!(after <= Duration::from_secs(10), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_with_a_password_want_sentinel_password() {
    let deployment = SentinelDeployment::start_secured(&["guarded"], Some("sentinel-secret"));
    let url = deployment.url();
    let right = RedisChannelLayer::from_url(&format!("{url}&sentinel_password=sentinel-secret")).expect("URL");
    right.ping().await.expect("the right sentinel_password reaches the master");
    for wrong in [url.clone(), format!("{url}&sentinel_password=wrong-secret")] {
        let layer = RedisChannelLayer::from_url(&wrong).expect("URL");
        let err =
            tokio::time::timeout(Duration::from_secs(10), layer.ping()).await.expect("in time").expect_err(&wrong);
        let err = err.to_string();
        assert!(err.contains("no sentinel names master"), "{err}");
        assert!(!err.contains("wrong-secret"), "shows no password: {err}");
    }
}
