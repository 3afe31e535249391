//! TLS to Redis: real `redis-server`s speaking TLS only, with certificates made by the test.
//! The layer semantics suite over TLS, mutual TLS, and the start-up errors of each way a TLS
//! connection goes wrong.

mod support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use channels_core::layer::{ChannelLayer, LayerConfig, Message};
use channels_redis::testing::{RedisServer, TestCertificates, TlsServer};
use channels_redis::{RedisChannelLayer, RedisConfig, RedisPubSubChannelLayer};

/// The certificates of this test binary.
fn certs() -> &'static TestCertificates {
    static CERTS: OnceLock<TestCertificates> = OnceLock::new();
    CERTS.get_or_init(TestCertificates::generate)
}

/// One TLS server (no client certificates required) for the whole binary.
fn tls_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start_tls(certs(), TlsServer::default()))
}

/// `server`'s URL trusting the test CA, with `more` query parameters.
fn url_with_ca(server: &RedisServer, more: &str) -> String {
    format!("{}?ssl_ca_certs={}{more}", server.url(), certs().ca.display())
}

fn fresh_prefix() -> String {
    format!("&prefix=t{:016x}", rand::random::<u64>())
}

fn tls_layer(config: LayerConfig) -> Arc<dyn ChannelLayer> {
    let mut redis = RedisConfig::from_url(&url_with_ca(tls_server(), &fresh_prefix())).expect("config");
    redis.layer = config;
    Arc::new(RedisChannelLayer::new(redis).expect("layer"))
}

channels_core::layer_conformance_tests!(|config| async move { tls_layer(config) });

/// The error `ping` gives for `url`, which must fail.
async fn ping_error(url: &str) -> String {
    let layer = RedisChannelLayer::from_url(url).expect("a valid URL");
    let result = tokio::time::timeout(Duration::from_secs(10), layer.ping()).await.expect("an answer in time");
    let err = result.expect_err(&format!("{url} must not connect")).to_string();
    println!("{err}");
    err
}

fn hello() -> Message {
    Message::new(&serde_json::json!({"type": "hello", "n": 1})).expect("a message")
}

/// A message through Redis from one layer (process) to another on `url`.
async fn crosses(url: &str) {
    let prefix = fresh_prefix();
    let sender = RedisChannelLayer::from_url(&format!("{url}{prefix}")).expect("layer");
    let receiver = RedisChannelLayer::from_url(&format!("{url}{prefix}")).expect("layer");
    let me = receiver.new_channel("specific").await.expect("channel");
    receiver.group_add("room", &me).await.expect("group_add");
    sender.group_send("room", hello()).await.expect("group_send");
    let got = tokio::time::timeout(Duration::from_secs(5), receiver.receive(&me)).await.expect("in time");
    assert_eq!(got.expect("message").message_type(), "hello");
}

#[tokio::test]
async fn a_group_message_crosses_between_processes_over_tls() {
    crosses(&url_with_ca(tls_server(), "")).await;
}

#[tokio::test]
async fn the_pubsub_layer_speaks_tls_too() {
    let url = format!("{}{}", url_with_ca(tls_server(), ""), fresh_prefix());
    let sender = RedisPubSubChannelLayer::new(RedisConfig::from_url(&url).expect("config")).expect("layer");
    let receiver = RedisPubSubChannelLayer::new(RedisConfig::from_url(&url).expect("config")).expect("layer");
    sender.ping().await.expect("ping over TLS");
    let me = receiver.new_channel("specific").await.expect("channel");
    receiver.group_add("room", &me).await.expect("group_add");
    // The subscription is made in the background: send until it is there.
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            sender.group_send("room", hello()).await.expect("group_send");
            if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(200), receiver.receive(&me)).await {
                return message;
            }
        }
    })
    .await
    .expect("a message within 5 s");
    assert_eq!(got.message_type(), "hello");
}

#[tokio::test]
async fn mutual_tls_works_with_a_client_certificate_and_fails_clearly_without() {
    let server =
        RedisServer::start_tls(certs(), TlsServer { require_client_certificates: true, ..TlsServer::default() });
    let c = certs();
    let with_cert = url_with_ca(
        &server,
        &format!("&ssl_certfile={}&ssl_keyfile={}", c.client_cert.display(), c.client_key.display()),
    );
    crosses(&with_cert).await;
    let err = ping_error(&url_with_ca(&server, "")).await;
    assert!(err.contains(&format!("127.0.0.1:{}", server.port)), "names the host: {err}");
    assert!(err.contains("client certificate"), "says a client certificate is wanted: {err}");
}

#[tokio::test]
async fn a_certificate_of_another_ca_is_a_clear_error() {
    let url = format!("{}?ssl_ca_certs={}", tls_server().url(), certs().other_ca.display());
    let err = ping_error(&url).await;
    assert!(err.contains(&format!("127.0.0.1:{}", tls_server().port)), "names the host: {err}");
    assert!(err.contains("certificate does not verify"), "says why: {err}");
}

#[tokio::test]
async fn the_system_roots_do_not_trust_a_private_ca() {
    let err = ping_error(&tls_server().url()).await;
    assert!(err.contains("certificate does not verify"), "says why: {err}");
}

#[tokio::test]
async fn an_expired_certificate_is_a_clear_error() {
    let server = RedisServer::start_tls(certs(), TlsServer { expired_certificate: true, ..TlsServer::default() });
    let err = ping_error(&url_with_ca(&server, "")).await;
    assert!(err.contains(&format!("127.0.0.1:{}", server.port)), "names the host: {err}");
    assert!(err.to_ascii_lowercase().contains("expired"), "says it expired: {err}");
}

#[tokio::test]
async fn ssl_cert_reqs_none_connects_without_verifying() {
    let server = RedisServer::start_tls(certs(), TlsServer { expired_certificate: true, ..TlsServer::default() });
    crosses(&format!("{}?ssl_cert_reqs=none", server.url())).await;
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_without_the_password() {
    let server =
        RedisServer::start_tls(certs(), TlsServer { password: Some("right-password".into()), ..TlsServer::default() });
    let right = format!("rediss://:right-password@127.0.0.1:{}?ssl_ca_certs={}", server.port, certs().ca.display());
    crosses(&right).await;
    let wrong = right.replace("right-password", "wrong-password");
    let err = ping_error(&wrong).await;
    assert!(err.contains(&format!("127.0.0.1:{}", server.port)), "names the host: {err}");
    assert!(err.contains("password"), "says the password is wrong: {err}");
    assert!(!err.contains("wrong-password"), "shows no password: {err}");
}

#[tokio::test]
async fn a_plain_url_to_a_tls_port_is_a_clear_error() {
    let err = ping_error(&format!("redis://127.0.0.1:{}", tls_server().port)).await;
    assert!(err.contains(&format!("127.0.0.1:{}", tls_server().port)), "names the host: {err}");
    assert!(err.contains("rediss://"), "points at TLS: {err}");
}

#[tokio::test]
async fn a_tls_url_to_a_plain_port_is_a_clear_error() {
    let plain = support::shared();
    let err = ping_error(&format!("rediss://127.0.0.1:{}?ssl_ca_certs={}", plain.port, certs().ca.display())).await;
    assert!(err.contains("does the server speak TLS"), "says so: {err}");
}

#[tokio::test]
async fn an_unreachable_host_is_a_clear_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let err = ping_error(&format!("rediss://127.0.0.1:{closed}?ssl_ca_certs={}", certs().ca.display())).await;
    assert!(err.contains(&format!("127.0.0.1:{closed}")), "names the host: {err}");
    assert!(err.contains("nothing listens there"), "says why: {err}");
}

/// The error a layer built from `url` gives at construction, before any connection.
fn refused(url: &str) -> String {
    let redis = RedisChannelLayer::from_url(url).expect_err(url).to_string();
    let pubsub = RedisConfig::from_url(url).and_then(RedisPubSubChannelLayer::new).expect_err(url).to_string();
    assert_eq!(redis, pubsub, "both layers refuse {url} alike");
    redis
}

#[test]
fn bad_tls_settings_are_refused_at_start_naming_the_part() {
    let ca = certs().ca.display().to_string();
    for (url, named) in [
        ("rediss://h?ssl_cert_reqs=maybe".to_owned(), "ssl_cert_reqs"),
        ("rediss://h?ssl_ca_certs=/no/such/ca.pem".to_owned(), "/no/such/ca.pem"),
        ("rediss://h?ssl_certfile=/no/such/client.pem".to_owned(), "ssl_certfile"),
        (format!("rediss://h?ssl_certfile={ca}"), "no private key"),
        (format!("rediss://h?ssl_certfile={ca}&ssl_keyfile=/no/such.key"), "/no/such.key"),
        (format!("rediss://h?ssl_ca_certs={ca}&ssl_keyfile={ca}"), "ssl_keyfile needs ssl_certfile"),
        (format!("redis://h?ssl_ca_certs={ca}"), "needs a rediss:// URL"),
        ("rediss://h?ssl_bogus=1".to_owned(), "ssl_bogus"),
        (format!("rediss://h?ssl_ca_certs={}", certs().dir().display()), "ssl_ca_certs"),
    ] {
        let err = refused(&url);
        assert!(err.contains(named), "{url}: {err}");
    }
    // A file that is not PEM is named too.
    let not_pem = certs().dir().join("not-pem.txt");
    std::fs::write(&not_pem, "hello").expect("write");
    let err = refused(&format!("rediss://h?ssl_ca_certs={}", not_pem.display()));
    assert!(err.contains("not-pem.txt") && err.contains("no PEM"), "{err}");
}
