//! Interop with real Python over TLS: channels_redis 4.3 configured the way its users write
//! it (a `rediss://` URL with `ssl_*` options, or a dict with `address` and `ssl_*` keys) and
//! our layer on the same TLS-only redis-server share groups both ways, mutual TLS included.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use channels_core::layer::{ChannelLayer, Message};
use channels_redis::RedisChannelLayer;
use channels_redis::testing::{RedisServer, TestCertificates, TlsServer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python peer (`tests/python/channels_redis_peer.py`) with `hosts` as its JSON `hosts`
/// list.
struct Peer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    fn spawn(hosts: &Value, prefix: &str, args: &[&str]) -> Peer {
        let python = repo_root().join("target/test-venv/bin/python");
        assert!(python.exists(), "{} is missing: run scripts/install-test-deps first", python.display());
        let mut child = Command::new(python)
            .env("CHANNELS_HOSTS_JSON", hosts.to_string())
            .arg(repo_root().join("tests/python/channels_redis_peer.py"))
            .args(["-", prefix])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the Python peer");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Peer { child, lines }
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .expect("the Python peer answers within 20 s")
            .expect("read")
            .expect("the Python peer ended early (see its stderr above)");
        serde_json::from_str(&line).expect("JSON from the peer")
    }

    async fn finish(mut self) {
        assert_eq!(self.next().await, json!({"done": true}));
        let status =
            tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.expect("exit").expect("wait");
        assert!(status.success());
    }
}

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
    Peer::spawn(&python_hosts, prefix, &["group_send", "chat_tls", event]).finish().await;
    let got = tokio::time::timeout(Duration::from_secs(10), rust.receive(&me)).await.expect("arrives").expect("ok");
    assert_eq!(got.decode::<Value>().expect("decodes")["text"], "from python over TLS");

    let mut python = Peer::spawn(&python_hosts, prefix, &["listen", "chat_tls_py", "1"]);
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
