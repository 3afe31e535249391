//! A layer URL's password never reaches an example's output: each example runs on a
//! password-protected Redis over TLS, logging at debug level, and its whole output (stdout and
//! stderr) is searched for the password, on a good run and on one with a wrong password.

mod support;

use std::time::Duration;

use channels::redis::testing::{RedisServer, TestCertificates, TlsServer};
use support::{Example, connect, next_json, next_of_type, send_text};

const PASSWORD: &str = "s3cret-Pa55word";
const WRONG: &str = "wr0ng-Pa55word";

fn secured_redis(certs: &TestCertificates) -> RedisServer {
    RedisServer::start_tls(certs, TlsServer { password: Some(PASSWORD.into()), ..TlsServer::default() })
}

fn layer_url(redis: &RedisServer, certs: &TestCertificates, password: &str) -> String {
    format!("rediss://:{password}@127.0.0.1:{}/0?prefix=cred&ssl_ca_certs={}", redis.port, certs.ca.display())
}

const DEBUG_LOGS: [(&str, &str); 1] = [("RUST_LOG", "debug")];

/// Waits until `example`'s output holds `text` (at most 10 s) and returns the output.
async fn output_once_it_shows(example: &Example, text: &str) -> String {
    let mut output = String::new();
    for _ in 0..100 {
        output = example.log.lock().expect("log").clone();
        if output.contains(text) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    output
}

fn assert_no_secret(output: &str, secret: &str) {
    assert!(!output.contains(secret), "the password is in the output:\n{output}");
    assert!(output.contains(":***@127.0.0.1"), "the URL is shown redacted:\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_shows_its_layer_url_without_the_password() {
    let certs = TestCertificates::generate();
    let redis = secured_redis(&certs);
    let mut example = Example::start_with_env("chat", &["--layer", &layer_url(&redis, &certs, PASSWORD)], &DEBUG_LOGS);
    let mut ann = connect(&example.url("/ws/chat/secret/?user=ann")).await;
    next_json(&mut ann).await;
    let mut bob = connect(&example.url("/ws/chat/secret/?user=bob")).await;
    next_json(&mut bob).await;
    send_text(&mut ann, "over TLS with a password").await;
    assert_eq!(next_of_type(&mut bob, "chat.message").await["text"], "over TLS with a password");
    assert!(example.terminate(), "the chat exits cleanly");
    let output = example.log.lock().expect("log").clone();
    assert_no_secret(&output, PASSWORD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_at_start_up_without_it() {
    let certs = TestCertificates::generate();
    let redis = secured_redis(&certs);
    let example = Example::start_with_env("chat", &["--layer", &layer_url(&redis, &certs, WRONG)], &DEBUG_LOGS);
    let output = output_once_it_shows(&example, "cannot be reached").await;
    assert!(output.contains("cannot be reached") && output.contains("password"), "the cause is named:\n{output}");
    assert!(output.contains(&format!("127.0.0.1:{}", redis.port)), "the host is named:\n{output}");
    assert_no_secret(&output, WRONG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approval_example_shows_its_layer_url_without_the_password() {
    let certs = TestCertificates::generate();
    let redis = secured_redis(&certs);
    let db = certs.dir().join("approval.sqlite3");
    let db = db.to_str().expect("a UTF-8 path");
    let mut example = Example::start_with_env(
        "approval",
        &["--layer", &layer_url(&redis, &certs, PASSWORD), "--db", db],
        &DEBUG_LOGS,
    );
    let output = output_once_it_shows(&example, "approval is running").await;
    assert!(example.terminate(), "the example exits cleanly");
    assert_no_secret(&output, PASSWORD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_example_shows_its_layer_url_without_the_password() {
    let certs = TestCertificates::generate();
    let redis = secured_redis(&certs);
    let example = Example::start_with_env(
        "worker",
        &["--role", "worker", "--layer", &layer_url(&redis, &certs, PASSWORD)],
        &DEBUG_LOGS,
    );
    let output = output_once_it_shows(&example, "handling the channel").await;
    assert_no_secret(&output, PASSWORD);
}
