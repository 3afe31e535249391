//! The server over real sockets, in-process: limits, hostile input, slow clients, shutdown.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use channels::AppLimits;
use channels::http::{HttpRequest, text};
use channels::prelude::*;
use futures_util::{SinkExt, StreamExt};
use support::{close_code, connect, next_text, send_text};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

/// Echoes text; "flood" makes it send 64 KiB frames until the client stops reading; "log"
/// makes it log a line.
struct Probe {
    disconnects: Arc<Mutex<Vec<u16>>>,
}

impl WebsocketConsumer for Probe {
    type Event = NoEvents;

    async fn connect(&mut self, ctx: &mut WebsocketContext) -> HandlerResult {
        match ctx.scope().subprotocols().first() {
            Some(p) => {
                let p = p.clone();
                ctx.accept_subprotocol(&p)?;
            }
            None => ctx.accept(),
        }
        Ok(())
    }

    async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
        if frame.as_text() == Some("log") {
            tracing::info!("the probe logs a line");
            ctx.send_text("logged").await?;
        } else if frame.as_text() == Some("flood") {
            let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
            for _ in 0..10_000 {
                ctx.send_binary(chunk.clone()).await?;
            }
        } else if let Some(text) = frame.as_text() {
            ctx.send_text(text.to_owned()).await?;
        }
        Ok(())
    }

    async fn disconnect(&mut self, _ctx: &mut WebsocketContext, code: u16) -> HandlerResult {
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.disconnects.lock().expect("lock").push(code);
        Ok(())
    }
}

struct Running {
    addr: SocketAddr,
    disconnects: Arc<Mutex<Vec<u16>>>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    fn disconnects(&self) -> Vec<u16> {
        self.disconnects.lock().expect("lock").clone()
    }

    async fn wait_for_disconnects(&self, n: usize) -> Vec<u16> {
        for _ in 0..300 {
            if self.disconnects().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.disconnects()
    }
}

async fn start(limits: WebsocketLimits, app_limits: AppLimits) -> Running {
    let disconnects: Arc<Mutex<Vec<u16>>> = Arc::default();
    let d = disconnects.clone();
    let router = Router::new()
        .websocket("/ws/", move |_: &Scope| Probe { disconnects: d.clone() })
        .http("/hello/", |request: HttpRequest| async move {
            text(http::StatusCode::OK, format!("hello, {} bytes", request.body.len()))
        })
        .http("/panic/", |_: HttpRequest| async move {
            if true {
                panic!("handler bug");
            }
            text(http::StatusCode::OK, "unreachable")
        });
    let app = Application::builder(router).websocket_limits(limits).limits(app_limits).build();
    let server = Server::bind("127.0.0.1:0").await.expect("bind").header_read_timeout(Duration::from_millis(500));
    let addr = server.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server.serve_with_shutdown(app, async move {
        let _ = stopped.await;
    }));
    Running { addr, disconnects, stop: Some(stop), done }
}

async fn start_default() -> Running {
    start(WebsocketLimits::default(), AppLimits::default()).await
}

async fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the server closes or one whole response (head + Content-Length body) is in.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n @ 1..) = stream.read(&mut chunk).await {
            response.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length = text[..head_end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if length.is_some_and(|len| response.len() >= head_end + 4 + len) {
                    break;
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&response).into_owned()
}

async fn still_serves(running: &Running) {
    let mut client = connect(&running.url("/ws/")).await;
    send_text(&mut client, "still up").await;
    assert_eq!(next_text(&mut client).await, "still up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_socket_with_1001_and_runs_every_disconnect() {
    let mut running = start_default().await;
    let mut clients = Vec::new();
    for _ in 0..25 {
        clients.push(connect(&running.url("/ws/")).await);
    }
    // Make sure every consumer is running before shutdown.
    for client in &mut clients {
        send_text(client, "ready?").await;
        assert_eq!(next_text(client).await, "ready?");
    }
    running.stop.take().expect("stop").send(()).expect("signal");
    for client in &mut clients {
        assert_eq!(close_code(client).await, 1001);
    }
    let disconnects = running.disconnects.clone();
    running.done.await.expect("join").expect("serve");
    let disconnects = disconnects.lock().expect("lock").clone();
    assert_eq!(disconnects.len(), 25, "every disconnect hook ran before serve returned");
    assert!(disconnects.iter().all(|&c| c == 1001), "{disconnects:?}");
    assert!(std::net::TcpStream::connect(running.addr).is_err(), "the listener is closed");
}

#[tokio::test]
async fn the_connection_limit_refuses_with_503_and_frees_slots() {
    let running = start(WebsocketLimits::default(), AppLimits::default().max_connections(2)).await;
    let mut a = connect(&running.url("/ws/")).await;
    let _b = connect(&running.url("/ws/")).await;
    match tokio_tungstenite::connect_async(running.url("/ws/")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    a.close(None).await.expect("close");
    running.wait_for_disconnects(1).await;
    connect(&running.url("/ws/")).await;
}

#[tokio::test]
async fn the_selected_subprotocol_is_in_the_handshake_response() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let running = start_default().await;
    let mut request = running.url("/ws/").into_client_request().expect("request");
    request.headers_mut().insert("sec-websocket-protocol", "chat.v1, chat.v2".parse().expect("header"));
    let (_client, response) = tokio_tungstenite::connect_async(request).await.expect("connect");
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_others_are_unaffected() {
    let running =
        start(WebsocketLimits::default().send_timeout(Duration::from_millis(300)), AppLimits::default()).await;
    let mut slow = connect(&running.url("/ws/")).await;
    send_text(&mut slow, "flood").await;
    // Never read `slow` again: the server must give up on it within the send timeout.
    let started = Instant::now();
    let disconnects = running.wait_for_disconnects(1).await;
    assert_eq!(disconnects, [1006], "a stalled client is dropped, disconnect gets 1006");
    assert!(started.elapsed() < Duration::from_secs(3), "dropped promptly: {:?}", started.elapsed());
    still_serves(&running).await;
}

#[tokio::test]
async fn a_silent_client_is_pinged_then_dropped() {
    let limits =
        WebsocketLimits::default().ping_interval(Duration::from_millis(150)).ping_timeout(Duration::from_millis(150));
    let running = start(limits, AppLimits::default()).await;
    // A client that never polls its socket never answers pings.
    let _mute = connect(&running.url("/ws/")).await;
    assert_eq!(running.wait_for_disconnects(1).await, [1006]);
    // A client that reads (and so answers pings) stays connected.
    let mut alive = connect(&running.url("/ws/")).await;
    let deadline = Instant::now() + Duration::from_millis(800);
    while Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(50), alive.next()).await;
    }
    send_text(&mut alive, "still here").await;
    assert_eq!(next_text(&mut alive).await, "still here");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let running = start_default().await;
    let started = Instant::now();
    let buf = raw_http(running.addr, b"GET /ws/ HTTP/1.1\r\nHost: x\r\n").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the handshake timeout closed it: {:?} {:?}",
        started.elapsed(),
        buf
    );
    still_serves(&running).await;
}

#[tokio::test]
async fn hostile_http_gets_clear_errors_and_the_server_stays_up() {
    let running = start_default().await;
    assert!(raw_http(running.addr, b"\x00\x01garbage\r\n\r\n").await.starts_with("HTTP/1.1 400"));
    let huge_header = format!("GET /hello/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(512 * 1024));
    let response = raw_http(running.addr, huge_header.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431") || response.is_empty(), "{}", &response[..response.len().min(80)]);
    let big_body =
        format!("POST /hello/ HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", 2 << 20);
    let mut request = big_body.into_bytes();
    request.extend(vec![b'x'; 2 << 20]);
    assert!(raw_http(running.addr, &request).await.starts_with("HTTP/1.1 413"));
    let ok = raw_http(
        running.addr,
        b"POST /hello/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("hello, 3 bytes"), "{ok}");
    let bad_key = b"GET /ws/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n";
    assert!(raw_http(running.addr, bad_key).await.starts_with("HTTP/1.1 400"));
    let bad_version = b"GET /ws/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let refused = raw_http(running.addr, bad_version).await;
    assert!(refused.starts_with("HTTP/1.1 426"), "{refused}");
    assert!(refused.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{refused}");
    assert!(
        raw_http(running.addr, b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404")
    );
    still_serves(&running).await;
}

#[tokio::test]
async fn hostile_frames_close_only_the_offender() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let running = start_default().await;
    let mut bystander = connect(&running.url("/ws/")).await;
    // A fragmented message that never ends and grows past the limit.
    let mut fragmenter = connect(&running.url("/ws/")).await;
    let first = Frame::message(vec![b'a'; 600 * 1024], OpCode::Data(Data::Text), false);
    let next = Frame::message(vec![b'a'; 600 * 1024], OpCode::Data(Data::Continue), false);
    let _ = fragmenter.send(Message::Frame(first)).await;
    let _ = fragmenter.send(Message::Frame(next)).await;
    assert_eq!(close_code(&mut fragmenter).await, 1009);
    // A continuation frame with no message to continue.
    let mut confused = connect(&running.url("/ws/")).await;
    let stray = Frame::message(b"?".to_vec(), OpCode::Data(Data::Continue), true);
    let _ = confused.send(Message::Frame(stray)).await;
    assert_eq!(close_code(&mut confused).await, 1002);
    send_text(&mut bystander, "unbothered").await;
    assert_eq!(next_text(&mut bystander).await, "unbothered");
}

#[tokio::test]
async fn the_application_mounts_in_a_plain_hyper_server() {
    use hyper_util::rt::TokioIo;
    let disconnects: Arc<Mutex<Vec<u16>>> = Arc::default();
    let d = disconnects.clone();
    let app = Application::builder(Router::new().websocket("/ws/", move |_: &Scope| Probe { disconnects: d.clone() }))
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.expect("accept");
            let service = app.service(Some(peer), Some(addr));
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });
    let mut client = connect(&format!("ws://{addr}/ws/")).await;
    send_text(&mut client, "embedded").await;
    assert_eq!(next_text(&mut client).await, "embedded");
    assert_eq!(served.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_client_close_gets_the_servers_close_frame_before_the_connection_ends() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let running = start_default().await;
    let mut client = connect(&running.url("/ws/")).await;
    let frame = CloseFrame { code: 4000.into(), reason: "bye".into() };
    client.close(Some(frame)).await.expect("close");
    let mut reply = None;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(5), client.next()).await {
        if let Message::Close(frame) = message {
            reply = frame;
        }
    }
    let reply = reply.expect("the server answered the close frame");
    assert_eq!(u16::from(reply.code), 4000, "RFC 6455 5.5.1: the reply echoes the code");
}

#[tokio::test]
async fn a_bind_error_names_the_address() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let error = Server::bind(addr.as_str()).await.expect_err("the address is taken");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    assert!(error.to_string().contains(&addr), "{error}");
}

/// Collects what a tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("captured").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_connection_logs_in_a_span_of_its_own() {
    use channels::sessions::{Session, SessionMiddleware};
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // This runtime runs the server's tasks on this thread, where the subscriber is set.
    let _subscriber = tracing::subscriber::set_default(subscriber);

    let sessions = SessionMiddleware::new(b"0123456789abcdef0123456789abcdef".to_vec()).expect("a long key");
    let mut ann = Session::new();
    ann.login("ann-42");
    let cookie = format!("{}={}", sessions.name(), sessions.encode(&ann));
    let disconnects: Arc<Mutex<Vec<u16>>> = Arc::default();
    let router = Router::new().websocket("/ws/", move |_: &Scope| Probe { disconnects: disconnects.clone() });
    let app = Application::builder(router).middleware(sessions).build();
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws/", server.local_addr().expect("addr"));
    tokio::spawn(server.serve_with_shutdown(app, std::future::pending()));

    let mut clients = Vec::new();
    for signed_in in [true, false] {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.as_str().into_client_request().expect("request");
        if signed_in {
            request.headers_mut().insert("cookie", cookie.parse().expect("header"));
        }
        let (mut client, _) = tokio_tungstenite::connect_async(request).await.expect("connect");
        let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = client.get_ref() else { unreachable!("plain TCP") };
        let address = tcp.local_addr().expect("client address").to_string();
        send_text(&mut client, "log").await;
        assert_eq!(next_text(&mut client).await, "logged");
        clients.push((client, address));
    }

    let output = String::from_utf8(captured.0.lock().expect("captured").clone()).expect("UTF-8");
    let lines: Vec<&str> = output.lines().filter(|line| line.contains("the probe logs a line")).collect();
    assert_eq!(lines.len(), 2, "{output}");
    let connection_id =
        |line: &str| line.split("conn=").nth(1).and_then(|rest| rest.split([' ', '}']).next()).map(str::to_owned);
    assert!(connection_id(lines[0]).is_some(), "{}", lines[0]);
    assert_ne!(connection_id(lines[0]), connection_id(lines[1]), "{output}");
    for (line, (_, address)) in lines.iter().zip(&clients) {
        assert!(line.contains("path=/ws/"), "{line}");
        assert!(line.contains(&format!("client={address}")), "{line}");
    }
    assert!(lines[0].contains("user=ann-42"), "{}", lines[0]);
    assert!(!lines[1].contains("user="), "{}", lines[1]);
}
