//! A Rust consumer knows the user who logged in to Django: a real Django site (Django from the
//! test venv, tests/python/django_site) logs users in through its own LoginView over HTTP, and
//! the `sessionid` cookie it sets is carried to a Rust WebSocket server whose consumer reports
//! who it sees. Each session backend is exercised: `signed_cookies`, `db` on SQLite and `db` on
//! PostgreSQL (a fresh database per run).
//!
//! Also: values signed by Django verify here (and refuse when tampered, expired, of another salt
//! or key), key rotation with `SECRET_KEY_FALLBACKS`, hostile cookies, and a database outage
//! (503, not 403).

#[path = "support/django.rs"]
mod site;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use channels::django::signing::{SignatureError, TimestampSigner};
use channels::django::{DjangoAuth, DjangoSettings, DjangoUser};
use channels::prelude::*;
use futures_util::StreamExt;
use serde_json::json;
use site::{Cookies, PgDatabase, SECRET_KEY, Site};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Tells the client who it is: `{"user": username|null, "staff": bool}`.
struct WhoAmI(Option<DjangoUser>);

impl WebsocketConsumer for WhoAmI {
    type Event = NoEvents;

    async fn connect(&mut self, ctx: &mut WebsocketContext) -> HandlerResult {
        ctx.accept();
        let user = self.0.as_ref();
        let who = json!({
            "user": user.map(|u| u.username.clone()),
            "staff": user.is_some_and(|u| u.is_staff),
            "id": user.map(|u| u.id),
        });
        ctx.send_json(&who).await?;
        Ok(())
    }
}

/// A Rust server whose consumer reports the Django user; returns its address.
async fn rust_server(auth: DjangoAuth) -> SocketAddr {
    let router =
        Router::new().websocket("/ws/whoami/", |scope: &Scope| WhoAmI(scope.extensions().get::<DjangoUser>().cloned()));
    let app = Application::builder(router).middleware(auth).build();
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(async move { server.serve(app).await });
    addr
}

/// Connects with `cookie` as the session cookie: `Ok(username or None)`, or `Err(HTTP status)`
/// when the handshake is refused.
async fn who(addr: SocketAddr, cookie: Option<&str>) -> Result<Option<String>, u16> {
    let mut request = format!("ws://{addr}/ws/whoami/").into_client_request().expect("request");
    if let Some(cookie) = cookie {
        let value = HeaderValue::from_str(&format!("csrftoken=x; sessionid={cookie}")).expect("header");
        request.headers_mut().insert("cookie", value);
    }
    let connected = tokio::time::timeout(Duration::from_secs(20), tokio_tungstenite::connect_async(request)).await;
    let (mut client, _) = match connected.expect("the handshake finishes") {
        Ok(pair) => pair,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => return Err(response.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    };
    let frame = tokio::time::timeout(Duration::from_secs(20), client.next()).await.expect("a frame");
    let text = frame.expect("open").expect("frame").into_text().expect("text");
    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    Ok(value["user"].as_str().map(str::to_owned))
}

fn settings() -> DjangoSettings {
    DjangoSettings::new(SECRET_KEY)
}

/// `settings()` with the site's database for the user table (the `cache` engine names none).
fn site_settings(site: &Site, key: &str) -> DjangoSettings {
    DjangoSettings::new(key).database_url(&site.rust_database)
}

fn tampered(cookie: &str) -> String {
    let mut bytes = cookie.as_bytes().to_vec();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
    String::from_utf8(bytes).expect("ascii")
}

/// Everything Django decides about a session, decided the same way by the Rust side.
async fn django_logins_are_recognised(engine: &str, database: Option<&str>) {
    django_logins_are_recognised_with_cache(engine, database, None).await;
}

async fn django_logins_are_recognised_with_cache(engine: &str, database: Option<&str>, cache: Option<&str>) {
    let (site, url) = Site::start_with_cache(engine, database, cache);
    let addr = rust_server(DjangoAuth::from_url(&url, site_settings(&site, SECRET_KEY)).expect("config")).await;

    assert_eq!(who(addr, None).await, Ok(None), "no cookie: anonymous");

    // Logged in through Django's LoginView: the consumer sees ann.
    let mut ann = site.login("ann", "ann-password").await;
    let ann_cookie = ann.session().expect("a session cookie").to_owned();
    assert_eq!(who(addr, Some(&ann_cookie)).await, Ok(Some("ann".into())));
    assert_eq!(who(addr, Some(&tampered(&ann_cookie))).await, Ok(None), "tampered cookie");

    // Key rotation: a server whose key is new and whose fallback is the old key still knows
    // ann; a server with only another key does not.
    let rotated =
        DjangoAuth::from_url(&url, site_settings(&site, "a-brand-new-key").secret_key_fallbacks([SECRET_KEY]));
    let rotated_addr = rust_server(rotated.expect("config")).await;
    assert_eq!(who(rotated_addr, Some(&ann_cookie)).await, Ok(Some("ann".into())), "fallback key");
    let other = rust_server(DjangoAuth::from_url(&url, site_settings(&site, "another-key")).expect("config")).await;
    assert_eq!(who(other, Some(&ann_cookie)).await, Ok(None), "another key");

    // Django's logout: the cookie the browser keeps is anonymous; with the db backend even the
    // old cookie is (its row is gone), as in Django.
    site.logout(&mut ann).await;
    assert_eq!(site.whoami(&mut ann).await, "anonymous");
    assert_eq!(who(addr, ann.session()).await, Ok(None), "after logout");
    if engine != "signed_cookies" {
        assert_eq!(who(addr, Some(&ann_cookie)).await, Ok(None), "the logged-out session");
    }

    // A password change in Django ends bob's session here too.
    let bob = site.login("bob", "bob-password").await;
    assert_eq!(who(addr, bob.session()).await, Ok(Some("bob".into())));
    site.tool(&["set-password", "bob", "a-new-password"]);
    // Asked first: Django, finding the hash stale, would delete the session row.
    assert_eq!(who(addr, bob.session()).await, Ok(None), "after a password change");
    assert_eq!(site.whoami(&mut bob.clone()).await, "anonymous", "Django agrees");

    // An inactive user is anonymous.
    let carol = site.login("carol", "carol-password").await;
    assert_eq!(who(addr, carol.session()).await, Ok(Some("carol".into())));
    site.tool(&["set-active", "carol", "0"]);
    assert_eq!(who(addr, carol.session()).await, Ok(None), "inactive user");
    assert_eq!(site.whoami(&mut carol.clone()).await, "anonymous", "Django agrees");

    // Hostile cookies are anonymous and the server keeps serving.
    let oversized = "a".repeat(10_000);
    let hostile = [
        oversized.as_str(),
        "x' OR '1'='1",
        "abcdefgh'; DROP TABLE django_session; --",
        "%00%ff",
        ":::",
        ".",
        "eyJ4IjoxfQ:1xaaeg:not-a-signature",
    ];
    for cookie in hostile {
        assert_eq!(who(addr, Some(cookie)).await, Ok(None), "{cookie:?}");
    }
    let again = site.login("ann", "ann-password").await;
    assert_eq!(who(addr, again.session()).await, Ok(Some("ann".into())), "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_cookie_sessions() {
    django_logins_are_recognised("signed_cookies", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_sessions_on_sqlite() {
    django_logins_are_recognised("db", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_sessions_on_postgresql() {
    let db = PgDatabase::create();
    django_logins_are_recognised("db", Some(&db.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_cookies_with_users_on_postgresql() {
    let db = PgDatabase::create();
    django_logins_are_recognised("signed_cookies", Some(&db.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_sessions_on_redis() {
    let redis = channels::redis::testing::RedisServer::start();
    django_logins_are_recognised_with_cache("cache", None, Some(&redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_db_sessions_on_redis_and_postgresql() {
    let redis = channels::redis::testing::RedisServer::start();
    let db = PgDatabase::create();
    django_logins_are_recognised_with_cache("cached_db", Some(&db.url()), Some(&redis.url())).await;
}

/// A cached session whose pickle holds opcodes outside a session dict's subset is refused,
/// nothing it names is run, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pickles_are_refused_and_never_run() {
    let redis = channels::redis::testing::RedisServer::start();
    let (site, url) = Site::start_with_cache("cache", None, Some(&redis.url()));
    let addr = rust_server(DjangoAuth::from_url(&url, site_settings(&site, SECRET_KEY)).expect("config")).await;
    let ann = site.login("ann", "ann-password").await;
    let key = ann.session().expect("cookie").to_owned();
    assert_eq!(who(addr, Some(&key)).await, Ok(Some("ann".into())));
    let witness = site::TempDir::new("pickle");
    let marker = witness.0.join("ran");
    let command = format!("touch {}", marker.display());
    // GLOBAL posix.system + REDUCE, protocol 0 and 4 (STACK_GLOBAL), and a dict holding one.
    let mut protocol0 = b"cposix\nsystem\n(V".to_vec();
    protocol0.extend_from_slice(command.as_bytes());
    protocol0.extend_from_slice(b"\ntR.");
    let mut protocol4 = b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c".to_vec();
    protocol4.push(command.len() as u8);
    protocol4.extend_from_slice(command.as_bytes());
    protocol4.extend_from_slice(b"\x85R.");
    let mut in_a_dict = b"\x80\x05}(\x8c\r_auth_user_id\x8c\x011\x8c\x01x".to_vec();
    in_a_dict.extend_from_slice(&protocol4[2..protocol4.len() - 1]);
    in_a_dict.extend_from_slice(b"u.");
    let cache_key = format!("site:3:django.contrib.sessions.cache{key}");
    for pickle in [protocol0, protocol4, in_a_dict, b"\x80\x05}\x94(".to_vec()] {
        let hex: String = pickle.iter().map(|b| format!("{b:02x}")).collect();
        site.tool(&["cache-set", &cache_key, &hex]);
        assert_eq!(who(addr, Some(&key)).await, Ok(None), "{pickle:?}");
    }
    assert!(!marker.exists(), "a pickled call was run");
    let again = site.login("ann", "ann-password").await;
    assert_eq!(who(addr, again.session()).await, Ok(Some("ann".into())), "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_signed_by_django_verify_and_forgeries_do_not() {
    let (site, _) = Site::start("db", None);
    let cases = json!([
        {"salt": "a.salt", "value": {"list": (0..50).collect::<Vec<_>>(), "text": "é😀"}, "compress": true},
        {"salt": "a.salt", "value": {"a": 1}, "compress": false},
        {"salt": "a.salt", "value": "plain é", "compress": false, "age": 100},
    ]);
    let signed = site.sign(&cases);
    assert!(signed[0].starts_with('.'), "Django compressed the first value: {}", signed[0]);
    let signer = TimestampSigner::new(SECRET_KEY, "a.salt");
    for (value, case) in signed.iter().zip(cases.as_array().expect("cases")) {
        assert_eq!(signer.unsign_object(value, Some(Duration::from_secs(3600))).as_ref(), Ok(&case["value"]));
    }
    // What Rust signs now is byte for byte what Django signs now (same second, uncompressed).
    let rust = signer.sign_object(&cases[1]["value"], false);
    let django = site.sign(&json!([{"salt": "a.salt", "value": {"a": 1}}])).remove(0);
    let same_second = |a: &str, b: &str| a == b || a.split(':').nth(1) != b.split(':').nth(1);
    assert!(same_second(&rust, &django), "{rust} vs {django}");

    assert!(matches!(
        signer.unsign_object(&signed[2], Some(Duration::from_secs(50))),
        Err(SignatureError::Expired { .. })
    ));
    assert_eq!(
        TimestampSigner::new(SECRET_KEY, "other.salt").unsign_object(&signed[1], None),
        Err(SignatureError::BadSignature)
    );
    assert_eq!(
        TimestampSigner::new("another key", "a.salt").unsign_object(&signed[1], None),
        Err(SignatureError::BadSignature)
    );
    let rotated = TimestampSigner::new("the new key", "a.salt").fallback_keys(["older", SECRET_KEY]);
    assert_eq!(rotated.unsign_object(&signed[1], None), Ok(json!({"a": 1})));
    let mut forged = signed[1].clone();
    forged.replace_range(0..2, "ey");
    forged.insert(3, 'A');
    assert_eq!(signer.unsign_object(&forged, None), Err(SignatureError::BadSignature));
}

/// A database that fails refuses with 503 (not 403, which means "not allowed"), within the
/// timeout, and a server whose database comes back serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_refuses_with_503() {
    let key = "abcdefgh0123456789abcdefgh012345";
    // No SQLite file.
    let missing = DjangoAuth::from_url("sqlite:///nonexistent/dir/db.sqlite3", settings()).expect("config");
    assert_eq!(who(rust_server(missing).await, Some(key)).await, Err(503));
    // Nothing listens on the PostgreSQL port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let refused = DjangoAuth::from_url(&format!("postgresql://root@127.0.0.1:{port}/x"), settings()).expect("config");
    assert_eq!(who(rust_server(refused).await, Some(key)).await, Err(503));
    // A server that accepts and never answers: refused when the timeout runs out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("postgresql://root@{}/x", silent.local_addr().expect("addr"));
    let hung = DjangoAuth::from_url(&url, settings()).expect("config").timeout(Duration::from_millis(500));
    let addr = rust_server(hung).await;
    let started = Instant::now();
    assert_eq!(who(addr, Some(key)).await, Err(503));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // Without a cookie there is nothing to look up: anonymous, not refused.
    assert_eq!(who(addr, None).await, Ok(None));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_required_refuses_anonymous_clients_with_403() {
    let (site, url) = Site::start("db", None);
    let auth = DjangoAuth::from_url(&url, settings()).expect("config").login_required(true);
    let addr = rust_server(auth).await;
    assert_eq!(who(addr, None).await, Err(403));
    assert_eq!(who(addr, Some("abcdefgh0123456789abcdefgh012345")).await, Err(403));
    let ann: Cookies = site.login("ann", "ann-password").await;
    assert_eq!(who(addr, ann.session()).await, Ok(Some("ann".into())));
}
