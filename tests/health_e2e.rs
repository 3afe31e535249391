//! Liveness and readiness over real sockets: the chat on a real redis-server, which stops and
//! comes back.

mod support;

use std::time::Duration;

use channels::redis::testing::RedisServer;
use support::{Example, http};

/// Asks `/readyz` until it answers `status` (at most 10 s) and returns its JSON.
async fn readiness_becomes(example: &Example, status: u16) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (got, body) = http(example.addr, "GET", "/readyz", "").await;
        if got == status {
            return serde_json::from_str(&body).expect("JSON");
        }
        assert!(tokio::time::Instant::now() < deadline, "/readyz still answers {got}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_redis_is_down_and_liveness_does_not() {
    let mut redis = RedisServer::start();
    let layer = format!("{}/0?prefix=health", redis.url());
    let example = Example::start("chat", &["--layer", &layer]);

    assert_eq!(http(example.addr, "GET", "/healthz", "").await, (200, "ok".to_owned()));
    let ready = readiness_becomes(&example, 200).await;
    assert_eq!(ready, serde_json::json!({"ready": true, "shutting_down": false, "layers": {"default": "ok"}}));

    redis.stop();
    let unready = readiness_becomes(&example, 503).await;
    assert_eq!(unready["ready"], false);
    assert_ne!(unready["layers"]["default"], "ok", "the layer's error is named: {unready}");
    assert_eq!(http(example.addr, "GET", "/healthz", "").await.0, 200, "alive all the same");

    redis.restart();
    readiness_becomes(&example, 200).await;
}
