//! What each fuzz target does with its input, shared by the `cargo fuzz` targets in
//! `fuzz_targets/` and by `tests/fuzz_corpora.rs`, which replays the committed corpora on the
//! stable toolchain.
//!
//! Every function takes arbitrary bytes, runs them through code that reads untrusted input, and
//! panics only when that code panics or breaks one of the properties asserted here.
#![allow(unreachable_pub)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use channels::http::{HttpRequest, json, static_files};
use channels::layers::{LayerUrl, Message};
use channels::memory::InMemoryChannelLayer;
use channels::prelude::*;
use channels::redis::RedisConfig;
use channels::redis::crypto::Encryption;
use channels::redis::wire;
use channels::testing::HttpCommunicator;

/// A channel-layer message (a msgpack map with a string `"type"`), as a layer hands it to a
/// consumer: [`Message::from_msgpack`], then the untyped and typed decodes a consumer does.
pub fn envelope(data: &[u8]) {
    let Ok(message) = Message::from_msgpack(data.to_vec()) else { return };
    let value = message.to_value().expect("an accepted message decodes as a msgpack value");
    let entries = value.as_map().expect("an accepted message is a map");
    let declared = entries.iter().find(|(k, _)| k.as_str() == Some("type")).and_then(|(_, v)| v.as_str());
    assert_eq!(declared, Some(message.message_type()), "the type read up front is the map's \"type\"");
    // The JSON rendered straight from the bytes is the one rendered through the value tree.
    let json = message.to_json().ok();
    assert_eq!(json.as_ref().map(|j| j.as_str()), serde_json::to_string(&value).ok().as_deref());
    let _ = message.decode::<KnownEvent>();
    let _ = message.decode::<serde_json::Value>();
}

/// A typical consumer event enum, so that typed decoding meets fuzzed maps.
#[derive(serde::Deserialize)]
#[serde(tag = "type")]
#[allow(dead_code)]
enum KnownEvent {
    #[serde(rename = "chat.message")]
    Chat { user: String, text: String, ts: f64 },
    #[serde(rename = "chat.join")]
    Join { user: String, members: Vec<String> },
}

/// A member of a Redis queue as channels_redis writes it: 12 random bytes, then a msgpack map
/// that may carry `__asgi_channel__` routing; or the same inside a Fernet token.
///
/// A body that decodes must survive re-encoding unchanged (what the layer does when it
/// forwards a message).
pub fn redis_payload(data: &[u8]) {
    if let Ok(body) = wire::unframe(data) {
        check_body(body);
    }
    check_body(data);
    static KEYS: OnceLock<Encryption> = OnceLock::new();
    let keys = KEYS.get_or_init(|| Encryption::new(&["fuzz-secret".to_owned()]).expect("a valid key"));
    if let Ok(body) = keys.decrypt(data, Some(60)) {
        check_body(&body);
    }
}

fn check_body(body: &[u8]) {
    let Ok((message, routing)) = wire::decode_body(body) else { return };
    let again = wire::body_with_routing(&message, &routing);
    let (message2, routing2) = wire::decode_body(&again).expect("a body we wrote decodes");
    assert_eq!(routing, routing2, "routing survives re-encoding");
    assert_eq!(message.as_bytes(), message2.as_bytes(), "the message survives re-encoding");
}

/// A layer URL, as `channels::layers::from_url` and the environment variables take it:
/// parsed into a [`LayerUrl`], then into the Redis and in-memory settings. Parsing only: no
/// connection is ever opened.
pub fn config_url(data: &[u8]) {
    let Ok(url) = std::str::from_utf8(data) else { return };
    let Ok(parsed) = LayerUrl::parse(url) else { return };
    if let Ok(config) = RedisConfig::from_layer_url(parsed.clone()) {
        assert!(!config.hosts.is_empty(), "a Redis config always names a host");
        let schemes = ["redis://", "rediss://", "redis+sentinel://", "rediss+sentinel://"];
        assert!(config.hosts.iter().all(|h| schemes.iter().any(|s| h.starts_with(s))), "{:?}", config.hosts);
    }
    let _ = InMemoryChannelLayer::from_url(parsed);
    let _ = RedisConfig::from_url(url);
}

/// A request path (and query) through the router, the scope and the handlers behind it,
/// in-process. The first byte picks the method. Whatever the path, the static-file handler
/// never serves a file outside its folder.
pub fn router(data: &[u8]) {
    let Some((&method, path)) = data.split_first() else { return };
    let Ok(path) = std::str::from_utf8(path) else { return };
    let method = ["GET", "POST", "HEAD", "DELETE"][usize::from(method % 4)];
    let fixture = fixture();
    let response = runtime()
        .block_on(HttpCommunicator::new(&fixture.app, method, path).timeout(Duration::from_secs(5)).get_response());
    let response = response.expect("the application answers every path");
    assert_ne!(response.status, 500, "no handler failed on {path:?}");
    assert!(
        contains(data, SECRET) || !contains(&response.body, SECRET),
        "{path:?} reached a file outside the static folder"
    );
}

/// Raw bytes as an HTTP/1.1 connection's input, served by hyper and the application exactly as
/// the server does (request line, headers, chunked or sized bodies, WebSocket handshake checks,
/// routing, body collection under the size limit, JSON request bodies).
pub fn http_request(data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fixture = fixture();
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let service = fixture.app.service(None, None);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(1))
            .serve_connection(hyper_util::rt::TokioIo::new(server), service)
            .with_upgrades();
        let serve = tokio::spawn(connection);
        let talk = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut response = Vec::new();
            let _ = client.read_to_end(&mut response).await;
            response
        };
        let response =
            tokio::time::timeout(Duration::from_secs(5), talk).await.expect("the server answers or hangs up");
        serve.abort();
        if !response.is_empty() {
            assert!(
                response.starts_with(b"HTTP/1.1 ") || response.starts_with(b"HTTP/1.0 "),
                "not an HTTP response: {:?}",
                String::from_utf8_lossy(&response)
            );
        }
        // (Unless the request carries the text itself: some handlers echo headers and queries.)
        assert!(
            contains(data, SECRET) || !contains(&response, SECRET),
            "a request reached a file outside the static folder"
        );
    });
}

const SECRET: &[u8] = b"outside the static folder: must never be served";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime"))
}

struct Fixture {
    app: Application,
}

/// One application for every input: routes with captures, a nested router, static files
/// beside a secret, a JSON HTTP consumer and a WebSocket route whose `connect` validates a
/// group name built from the path.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("channels-fuzz-{}", std::process::id()));
        let public: PathBuf = dir.join("public");
        std::fs::create_dir_all(public.join("sub")).expect("fixture folder");
        std::fs::write(public.join("inside.txt"), "inside").expect("fixture file");
        std::fs::write(public.join("sub").join("a.json"), "{}").expect("fixture file");
        std::fs::write(dir.join("secret.txt"), SECRET).expect("fixture file");
        let api = Router::new().http("/items/{id}/", |request: HttpRequest| async move {
            let body: Result<serde_json::Value, _> = serde_json::from_slice(&request.body);
            json(
                http::StatusCode::OK,
                &serde_json::json!({
                    "id": request.scope.param("id"),
                    "query": request.scope.query(),
                    "cookies": request.scope.cookies(),
                    "agent": request.scope.header("user-agent"),
                    "body_ok": body.is_ok(),
                }),
            )
        });
        let router = Router::new()
            .websocket("/ws/chat/{room}/", |scope: &Scope| RoomGate { room: scope.param("room").map(str::to_owned) })
            .http("/echo/{room}/", channels::http_consumer::http_consumer(|_: &Scope| JsonEcho))
            .http("/static/{*path}", static_files(public))
            .nest("/api", api);
        let app = Application::builder(router).limits(AppLimits::default().max_http_body_size(16 * 1024)).build();
        Fixture { app }
    })
}

/// Accepts a WebSocket only when `chat_{room}` is a valid group name; never upgrades in the
/// fuzzer, since its input ends before any frame.
struct RoomGate {
    room: Option<String>,
}

impl WebsocketConsumer for RoomGate {
    type Event = NoEvents;

    async fn connect(&mut self, ctx: &mut WebsocketContext) -> HandlerResult {
        let room = self.room.as_deref().unwrap_or_default();
        if channels::layers::validate_group_name(&format!("chat_{room}")).is_ok() && room.len() < 3 {
            ctx.accept();
        } else {
            ctx.deny();
        }
        Ok(())
    }
}

/// An HTTP consumer that parses its body as JSON and answers with it, or with 400.
struct JsonEcho;

impl HttpConsumer for JsonEcho {
    type Event = NoEvents;

    async fn handle(&mut self, ctx: &mut HttpContext) -> HandlerResult {
        match serde_json::from_slice::<serde_json::Value>(ctx.body()) {
            Ok(value) => ctx.send_json(StatusCode::OK, &value)?,
            Err(e) => ctx.send_json(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": e.to_string() }))?,
        }
        Ok(())
    }
}
