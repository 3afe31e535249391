//! Interop with real Python over TLS: channels_redis 4.3 configured the way its users write
//! it (a `rediss://` URL with `ssl_*` options, or a dict with `address` and `ssl_*` keys) and
//! our layer on the same TLS-only redis-server share groups both ways, mutual TLS included.

use std::time::Duration;

mod support;

use channels_core::layer::{ChannelLayer, Message};
use channels_redis::RedisChannelLayer;
use channels_redis::testing::{RedisServer, TestCertificates, TlsServer};
use serde_json::{Value, json};
use support::peer::Peer;

fn chat(text: &str) -> Message {
    Message::new(&json!({"type": "chat.message", "user": "rust", "text": text, "ts": 1.25})).expect("message")
}

/// Python sends to a group a Rust channel joined, then Rust sends to a group a Python channel
/// joined: `python_hosts` for Python, `rust_url` (without `prefix`) for us.
async fn both_ways(python_hosts: Value, rust_url: &str, prefix: &str) {
    let separator = if rust_url.contains('?') { '&' } else { '?' };
    let rust = RedisChannelLayer::from_url(&format!("{rust_url}{separator}prefix={prefix}")).expect("layer");
    let me = rust.new_channel("specific").await.expect("new_channel");
    rust.group_add("chat_tls", &me).await.expect("group_add");
    let event = r#"{"type": "chat.message", "user": "django", "text": "from python over TLS", "ts": 2.5}"#;
    Peer::spawn_with_hosts_json(&python_hosts, prefix, &["group_send", "chat_tls", event]).finish().await;
    let got = tokio::time::timeout(Duration::from_secs(10), rust.receive(&me)).await.expect("arrives").expect("ok");
    assert_eq!(got.decode::<Value>().expect("decodes")["text"], "from python over TLS");

    let mut python = Peer::spawn_with_hosts_json(&python_hosts, prefix, &["listen", "chat_tls_py", "1"]);
    python.next().await; // {"channel": ...}: Python has joined
    rust.group_send("chat_tls_py", chat("from rust over TLS")).await.expect("group_send");
    assert_eq!(python.next().await["text"], "from rust over TLS");
    python.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_share_groups_over_tls_with_the_same_url() {
    let certs = TestCertificates::generate();
    let redis = RedisServer::start_tls(&certs, TlsServer::default());
    // redis-py reads ssl_* options from the URL's query too: the same host URL serves both.
    let url = format!("{}/0?ssl_ca_certs={}&ssl_cert_reqs=required", redis.url(), certs.ca.display());
    both_ways(json!([url]), &url, "tls1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_share_groups_over_mutual_tls() {
    let certs = TestCertificates::generate();
    let redis = RedisServer::start_tls(
        &certs,
        TlsServer { require_client_certificates: true, password: Some("pw".into()), ..TlsServer::default() },
    );
    // Python's dict form: channels_redis passes the keys to redis-py's connection.
    let python = json!([{
        "address": format!("rediss://:pw@127.0.0.1:{}/0", redis.port),
        "ssl_ca_certs": certs.ca,
        "ssl_certfile": certs.client_cert,
        "ssl_keyfile": certs.client_key,
        "ssl_cert_reqs": "required",
    }]);
    let rust = format!(
        "rediss://:pw@127.0.0.1:{}/0?ssl_ca_certs={}&ssl_certfile={}&ssl_keyfile={}",
        redis.port,
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    both_ways(python, &rust, "tls2").await;
}
