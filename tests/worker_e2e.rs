//! Workers fed from an HTTP handler: in one process, and in another process over Redis.

mod support;

use std::time::Duration;

use channels::redis::testing::RedisServer;
use support::{Example, http};

/// Submits a job while a results request is held; returns the result JSON.
async fn run_job(web: &Example, text: &str) -> serde_json::Value {
    let addr = web.addr;
    let waiting = tokio::spawn(async move { http(addr, "GET", "/jobs/results", "").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = http(addr, "POST", &format!("/jobs/?text={text}"), "").await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = waiting.await.expect("join");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_the_same_process_handles_jobs_sent_from_http() {
    let web = Example::start("worker", &[]);
    let done = run_job(&web, "hello").await;
    assert_eq!(done["result"], "HELLO");
    assert_eq!(done["worker"], web.child.id(), "handled in the web process itself");
    let (status, body) = http(web.addr, "POST", "/jobs/", "").await;
    assert_eq!((status, body.contains("text")), (400, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_another_process_handles_jobs_over_redis() {
    let redis = RedisServer::start();
    let layer = redis.url();
    let web = Example::start("worker", &["--role", "web", "--layer", &layer]);
    let worker = Example::start("worker", &["--role", "worker", "--layer", &layer]);
    let done = run_job(&web, "from-afar").await;
    assert_eq!(done["result"], "FROM-AFAR");
    assert_eq!(done["worker"], worker.child.id(), "handled by the worker process");
}
