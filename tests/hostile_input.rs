//! Hostile input over real sockets: each test sends one kind of bad input, checks the documented
//! answer (docs/reliability.md has the table), and checks that a client connected at the same
//! time is still served.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use channels::AppLimits;
use channels::http::{HttpRequest, static_files, text};
use channels::middleware::OriginValidator;
use channels::prelude::*;
use futures_util::SinkExt;
use support::{Client, close_code, connect, next_text, send_text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Echoes every text and binary frame.
struct Echo;

impl WebsocketConsumer for Echo {
    type Event = NoEvents;

    async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
        match frame {
            channels::Frame::Text(text) => ctx.send_text(text).await?,
            channels::Frame::Binary(data) => ctx.send_binary(data).await?,
        }
        Ok(())
    }
}

/// A JSON consumer with the default handling of bad input.
struct JsonEcho;

impl JsonWebsocketConsumer for JsonEcho {
    type Inbound = serde_json::Value;
    type Event = NoEvents;

    async fn receive_json(&mut self, ctx: &mut WebsocketContext, message: serde_json::Value) -> HandlerResult {
        ctx.send_json(&message).await?;
        Ok(())
    }
}

/// Joins the group `room_{room}`: a name that breaks the layer's rules denies the connection.
struct Room {
    group: String,
}

impl WebsocketConsumer for Room {
    type Event = NoEvents;

    fn groups(&self) -> Vec<String> {
        vec![self.group.clone()]
    }
}

struct Server {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    _dir: TempDir,
}

/// A folder removed when the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SECRET: &str = "the secret beside the static folder";

async fn start_with(limits: AppLimits, header_read_timeout: Duration) -> Server {
    let dir = std::env::temp_dir().join(format!("channels-hostile-{}-{}", std::process::id(), rand::random::<u64>()));
    std::fs::create_dir_all(dir.join("public")).expect("static folder");
    std::fs::write(dir.join("public").join("hello.txt"), "hello").expect("static file");
    std::fs::write(dir.join("secret.txt"), SECRET).expect("secret file");
    let router = Router::new()
        .websocket("/ws/echo/", |_: &Scope| Echo)
        .websocket("/ws/json/", |_: &Scope| JsonEcho)
        .websocket("/ws/room/{room}/", |scope: &Scope| Room {
            group: format!("room_{}", scope.param("room").unwrap_or_default()),
        })
        .http("/static/{*path}", static_files(dir.join("public")))
        .http("/post/", |request: HttpRequest| async move {
            text(http::StatusCode::OK, format!("{} bytes", request.body.len()))
        });
    let app = Application::builder(router)
        .layer(channels::layers::from_url("memory://").expect("memory layer"))
        .middleware(OriginValidator::localhost().allow_missing_origin(true))
        .limits(limits)
        .build();
    let server = channels::Server::bind("127.0.0.1:0").await.expect("bind").header_read_timeout(header_read_timeout);
    let addr = server.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve_with_shutdown(app, async move {
        let _ = stopped.await;
    }));
    Server { addr, _stop: stop, _dir: TempDir(dir) }
}

async fn start() -> Server {
    start_with(AppLimits::default().max_http_body_size(64 * 1024), Duration::from_secs(2)).await
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// A well-behaved client, connected before the hostile one arrives.
    async fn bystander(&self) -> Client {
        let mut client = connect(&self.url("/ws/echo/")).await;
        send_text(&mut client, "hello").await;
        assert_eq!(next_text(&mut client).await, "hello");
        client
    }
}

/// The bystander is still answered, promptly.
async fn still_served(bystander: &mut Client) {
    let started = Instant::now();
    send_text(bystander, "still here?").await;
    assert_eq!(next_text(bystander).await, "still here?");
    assert!(started.elapsed() < Duration::from_secs(1), "the bystander waited {:?}", started.elapsed());
}

/// The status code of a WebSocket handshake the server refused.
async fn refused_status(request: impl IntoClientRequest + Unpin) -> u16 {
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other:?}"),
        Ok(_) => panic!("expected an HTTP refusal, the handshake succeeded"),
    }
}

/// Writes `request` on a new connection and returns everything the server sends until it hangs
/// up or `wait` passes.
async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut response)).await;
    response
}

fn status_of(response: &[u8]) -> u16 {
    let head = String::from_utf8_lossy(response);
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"))
}

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{extra}Connection: close\r\n\r\n"
    )
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let server = start().await;
    let mut bystander = server.bystander().await;
    let mut client = connect(&server.url("/ws/echo/")).await;
    let frame = WsFrame::message(vec![b'o', b'k', 0xc3, 0x28], OpCode::Data(Data::Text), true);
    client.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(close_code(&mut client).await, 1007);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn invalid_utf8_split_across_fragments_closes_with_1007() {
    let server = start().await;
    let mut bystander = server.bystander().await;
    let mut client = connect(&server.url("/ws/echo/")).await;
    // "é" is c3 a9; the second fragment carries an invalid continuation byte.
    let first = WsFrame::message(vec![b'a', 0xc3], OpCode::Data(Data::Text), false);
    let second = WsFrame::message(vec![0x28], OpCode::Data(Data::Continue), true);
    client.send(Message::Frame(first)).await.expect("send");
    client.send(Message::Frame(second)).await.expect("send");
    assert_eq!(close_code(&mut client).await, 1007);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn a_message_larger_than_the_limit_closes_with_1009() {
    let server = start().await;
    let mut bystander = server.bystander().await;
    let mut client = connect(&server.url("/ws/echo/")).await;
    // 1 MiB is the default limit; this message arrives in three frames of 400 KiB.
    for (i, opcode) in
        [OpCode::Data(Data::Binary), OpCode::Data(Data::Continue), OpCode::Data(Data::Continue)].into_iter().enumerate()
    {
        let _ = client.send(Message::Frame(WsFrame::message(vec![7u8; 400 * 1024], opcode, i == 2))).await;
    }
    assert_eq!(close_code(&mut client).await, 1009);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn a_frame_larger_than_the_limit_closes_with_1009_before_its_payload_arrives() {
    let server = start().await;
    let mut bystander = server.bystander().await;
    // Only the header of a 64 MiB frame: the server must refuse it from the declared length,
    // not wait for (or buffer) the payload.
    let mut socket = RawSocket::open(server.addr, "/ws/echo/").await;
    let mut header = vec![0x82, 0xff];
    header.extend_from_slice(&(64u64 << 20).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    socket.write(&header).await;
    assert_eq!(socket.close_code().await, Some(1009));
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn a_flood_of_small_fragments_closes_with_1009_once_the_limit_is_passed() {
    let server = start().await;
    let mut bystander = server.bystander().await;
    let mut client = connect(&server.url("/ws/echo/")).await;
    let first = WsFrame::message(vec![b'a'; 1024], OpCode::Data(Data::Text), false);
    let _ = client.feed(Message::Frame(first)).await;
    // 2,000 fragments of 1 KiB never finish the message; past 1 MiB the server stops reading.
    for _ in 0..2_000 {
        let fragment = WsFrame::message(vec![b'a'; 1024], OpCode::Data(Data::Continue), false);
        if client.feed(Message::Frame(fragment)).await.is_err() {
            break;
        }
    }
    let _ = client.flush().await;
    assert_eq!(close_code(&mut client).await, 1009);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let server = start().await;
    let mut bystander = server.bystander().await;
    let mut socket = RawSocket::open(server.addr, "/ws/echo/").await;
    socket.write(&[0x81, 0x02, b'h', b'i']).await;
    assert_eq!(socket.close_code().await, Some(1002));
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn bad_handshakes_get_400_and_another_protocol_version_gets_426() {
    let server = start().await;
    let mut bystander = server.bystander().await;
    let missing_key = upgrade_request("/ws/echo/", "Sec-WebSocket-Version: 13\r\n");
    assert_eq!(status_of(&raw(server.addr, missing_key.as_bytes(), Duration::from_secs(5)).await), 400);
    let bad_key = upgrade_request("/ws/echo/", "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: not-base64\r\n");
    assert_eq!(status_of(&raw(server.addr, bad_key.as_bytes(), Duration::from_secs(5)).await), 400);
    let old_version =
        upgrade_request("/ws/echo/", "Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
    let refused = raw(server.addr, old_version.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&refused), 426, "RFC 6455 4.4: Upgrade Required, naming the version");
    assert!(String::from_utf8_lossy(&refused).to_ascii_lowercase().contains("sec-websocket-version: 13"));
    let post = "POST /ws/echo/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(status_of(&raw(server.addr, post.as_bytes(), Duration::from_secs(5)).await), 400);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn a_foreign_origin_gets_403() {
    let server = start().await;
    let mut bystander = server.bystander().await;
    let mut request = server.url("/ws/echo/").into_client_request().expect("request");
    request.headers_mut().insert("origin", "https://evil.example".parse().expect("header"));
    assert_eq!(refused_status(request).await, 403);
    let mut request = server.url("/ws/echo/").into_client_request().expect("request");
    request.headers_mut().insert("origin", "null".parse().expect("header"));
    assert_eq!(refused_status(request).await, 403);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let server = start().await;
    let mut bystander = server.bystander().await;
    let huge = format!("GET /static/hello.txt HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    let response = raw(server.addr, huge.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&response), 431);
    let mut many = String::from("GET /static/hello.txt HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(status_of(&raw(server.addr, many.as_bytes(), Duration::from_secs(5)).await), 431);
    still_served(&mut bystander).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_handshakes_are_cut_off_at_the_header_timeout() {
    let server = start_with(AppLimits::default(), Duration::from_millis(800)).await;
    let mut bystander = server.bystander().await;
    let started = Instant::now();
    let mut loris = Vec::new();
    for _ in 0..50 {
        let addr = server.addr;
        loris.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let request = upgrade_request("/ws/echo/", "Sec-WebSocket-Version: 13\r\n");
            // One byte every 100 ms: the headers would take about 10 s.
            for byte in request.bytes() {
                if stream.write_all(&[byte]).await.is_err() {
                    break;
                }
                let mut buf = [0u8; 256];
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
                {
                    return Instant::now();
                }
            }
            panic!("the server waited for a whole slowloris request");
        }));
    }
    still_served(&mut bystander).await;
    for handle in loris {
        let cut = handle.await.expect("loris task");
        let after = cut - started;
        assert!(after < Duration::from_secs(3), "a slow handshake was cut only after {after:?}");
    }
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn unknown_routes_get_404_over_http_and_403_over_websocket() {
    let server = start().await;
    let mut bystander = server.bystander().await;
    let response = raw(server.addr, b"GET /no/such/page HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(1)).await;
    assert_eq!(status_of(&response), 404);
    assert_eq!(refused_status(server.url("/ws/nowhere/")).await, 403);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn invalid_group_names_deny_the_connection_with_403() {
    let server = start().await;
    let mut bystander = server.bystander().await;
    let too_long = "r".repeat(120);
    for room in ["bad%20room", "caf%C3%A9", "a%21b", too_long.as_str()] {
        assert_eq!(refused_status(server.url(&format!("/ws/room/{room}/"))).await, 403, "{room}");
    }
    connect(&server.url("/ws/room/good-room_1.x/")).await;
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn malformed_json_to_a_json_consumer_closes_with_1007_and_binary_with_1003() {
    let server = start().await;
    let mut bystander = server.bystander().await;
    let mut client = connect(&server.url("/ws/json/")).await;
    send_text(&mut client, "{\"a\": [1, 2]}").await;
    assert_eq!(next_text(&mut client).await, "{\"a\":[1,2]}");
    send_text(&mut client, "{\"a\": ").await;
    assert_eq!(close_code(&mut client).await, 1007);
    let mut client = connect(&server.url("/ws/json/")).await;
    client.send(Message::binary(vec![1u8, 2, 3])).await.expect("send");
    assert_eq!(close_code(&mut client).await, 1003);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn an_oversized_http_body_gets_413() {
    let server = start().await;
    let mut bystander = server.bystander().await;
    let mut request = format!("POST /post/ HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", 128 * 1024).into_bytes();
    request.extend(vec![b'x'; 128 * 1024]);
    assert_eq!(status_of(&raw(server.addr, &request, Duration::from_secs(5)).await), 413);
    // The same without a declared length: chunked, past the limit.
    let mut chunked = b"POST /post/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n", 4096).as_bytes());
        chunked.extend(vec![b'y'; 4096]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(status_of(&raw(server.addr, &chunked, Duration::from_secs(5)).await), 413);
    let ok =
        raw(server.addr, b"POST /post/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", Duration::from_secs(1));
    assert_eq!(status_of(&ok.await), 200);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn path_traversal_on_static_files_gets_404() {
    let server = start().await;
    let mut bystander = server.bystander().await;
    let hello = raw(server.addr, b"GET /static/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(1)).await;
    assert_eq!(status_of(&hello), 200);
    for path in [
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/%2E%2E%2Fsecret.txt",
        "/static/..%2fsecret.txt",
        "/static/..%5csecret.txt",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/./../secret.txt",
        "/static/hello.txt%00../../secret.txt",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let response = raw(server.addr, request.as_bytes(), Duration::from_secs(1)).await;
        let text = String::from_utf8_lossy(&response);
        assert!(!text.contains(SECRET), "{path} leaked the secret");
        assert!(matches!(status_of(&response), 400 | 404), "{path}: {text}");
    }
    still_served(&mut bystander).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_past_the_limit_gets_503_and_the_connected_stay_served() {
    let server = start_with(AppLimits::default().max_connections(20), Duration::from_secs(2)).await;
    let mut bystander = server.bystander().await;
    let mut admitted = Vec::new();
    let mut refused = 0;
    let attempts: Vec<_> = (0..100)
        .map(|_| {
            let url = server.url("/ws/echo/");
            tokio::spawn(async move { tokio_tungstenite::connect_async(url).await })
        })
        .collect();
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok((client, _)) => admitted.push(client),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 503);
                refused += 1;
            }
            Err(other) => panic!("expected 101 or 503, got {other:?}"),
        }
    }
    assert_eq!(admitted.len(), 19, "the bystander holds the 20th slot");
    assert_eq!(refused, 81);
    still_served(&mut bystander).await;
    for client in &mut admitted {
        send_text(client, "admitted").await;
        assert_eq!(next_text(client).await, "admitted");
    }
}

/// A WebSocket client on a plain TCP stream, to send frames no WebSocket library would.
struct RawSocket {
    stream: TcpStream,
}

impl RawSocket {
    async fn open(addr: SocketAddr, path: &str) -> RawSocket {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("handshake");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = stream.read_u8().await.expect("handshake response");
            head.push(byte);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        RawSocket { stream }
    }

    async fn write(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The code of the server's close frame (skipping other frames), `None` if the server hung
    /// up without one.
    async fn close_code(&mut self) -> Option<u16> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let mut head = [0u8; 2];
                self.stream.read_exact(&mut head).await.ok()?;
                let len = match head[1] & 0x7f {
                    126 => u64::from(self.stream.read_u16().await.ok()?),
                    127 => self.stream.read_u64().await.ok()?,
                    n => u64::from(n),
                };
                let mut payload = vec![0u8; usize::try_from(len).ok()?];
                self.stream.read_exact(&mut payload).await.ok()?;
                if head[0] & 0x0f == 0x8 {
                    return payload.get(..2).map(|code| u16::from_be_bytes([code[0], code[1]]));
                }
            }
        })
        .await
        .expect("the server answers within 5 s")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_payloads_and_unknown_events_from_redis_are_skipped_and_the_room_keeps_talking() {
    use channels::layers::{ChannelLayer, Message as LayerMessage};
    use channels::redis::RedisChannelLayer;
    use channels::redis::testing::RedisServer;
    use support::{Example, next_of_type};

    let redis = RedisServer::start();
    let chat = Example::start("chat", &["--layer", &redis.url()]);
    let mut alice = connect(&chat.url("/ws/chat/poison/?user=alice")).await;
    next_of_type(&mut alice, "chat.presence").await;
    let mut bob = connect(&chat.url("/ws/chat/poison/?user=bob")).await;
    next_of_type(&mut bob, "chat.presence").await;

    // The chat process's queue, named after its channels (`specific.ID!` + a local part).
    let members = redis.cli(&["ZRANGE", "asgi:group:chat_poison", "0", "-1"]);
    let channel = members.lines().find(|m| !m.is_empty()).expect("a member of the room's group");
    let queue = format!("asgi{}", channels::layers::non_local_name(channel));
    let now =
        format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs());
    let mut deep = b"xxxxxxxxxxxx\x82\xa4type\xa4deep\xa1x".to_vec();
    deep.extend(std::iter::repeat_n(0x91u8, 100_000));
    deep.push(0xc0);
    let deep_file = std::env::temp_dir().join(format!("channels-deep-{}", std::process::id()));
    std::fs::write(&deep_file, &deep).expect("payload file");
    for poison in ["short", "xxxxxxxxxxxxnot msgpack at all", "xxxxxxxxxxxx\u{92}\u{1}\u{2}"] {
        redis.cli(&["ZADD", &queue, &now, poison]);
    }
    // redis-cli -x reads the last argument (the 100,000-deep payload) from stdin.
    let added = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "-x", "ZADD", &queue, &now])
        .stdin(std::fs::File::open(&deep_file).expect("payload"))
        .output()
        .expect("redis-cli");
    let _ = std::fs::remove_file(&deep_file);
    assert!(String::from_utf8_lossy(&added.stdout).trim() == "1", "{added:?}");

    // An event of a type the chat consumer does not know, sent to the room's group.
    let other = RedisChannelLayer::from_url(&redis.url()).expect("layer");
    let unknown = serde_json::json!({ "type": "chat.unknown", "x": 1 });
    other.group_send("chat_poison", LayerMessage::new(&unknown).expect("message")).await.expect("group_send");

    send_text(&mut alice, "still talking").await;
    assert_eq!(next_of_type(&mut bob, "chat.message").await["text"], "still talking");
    assert_eq!(next_of_type(&mut alice, "chat.message").await["text"], "still talking");
    assert!(redis.cli(&["ZCARD", &queue]).trim() == "0", "every poison payload was taken off the queue");
}
