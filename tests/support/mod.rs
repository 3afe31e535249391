//! Helpers shared by the end-to-end tests: run an example binary, connect real clients.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The path of an example binary that `cargo test` built next to this test.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let target_dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    let path = target_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with ./scripts/test, which builds the examples first",
        path.display()
    );
    path
}

/// A running example process, killed when dropped.
pub struct Example {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything the process printed so far, stdout and stderr (drained by threads so the
    /// pipes never fill).
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Example {
    /// Starts `name` on a free port and waits for it to print its address.
    pub fn start(name: &str, args: &[&str]) -> Example {
        Self::start_with_env(name, args, &[])
    }

    /// [`Example::start`] with these environment variables set.
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Example {
        let role_worker = args.windows(2).any(|w| w == ["--role", "worker"]);
        let bind: &[&str] = if role_worker { &[] } else { &["--bind", "127.0.0.1:0"] };
        let mut child = Command::new(example_binary(name))
            .args(bind)
            .args(args)
            .env("RUST_LOG", std::env::var("EXAMPLE_LOG").unwrap_or_else(|_| "warn".into()))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start example");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the example's first line");
        let addr = if role_worker {
            SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            line.split("http://")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("the example printed no address: {line:?}"))
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(line.clone()));
        let drain = |reader: Box<dyn BufRead + Send>| {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in reader.lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        };
        drain(Box::new(stdout));
        if let Some(stderr) = child.stderr.take() {
            drain(Box::new(BufReader::new(stderr)));
        }
        Example { child, addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        self.terminate_within(Duration::from_secs(10))
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; returns whether it
    /// exited successfully within it.
    pub fn terminate_within(&mut self, limit: Duration) -> bool {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- example log ---\n{}", self.log.lock().unwrap_or_else(|p| p.into_inner()));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connect");
    client
}

/// The next text frame, skipping pings; panics after 5 s.
pub async fn next_text(client: &mut Client) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), client.next()).await.expect("a frame within 5 s") {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The next JSON event, as a `serde_json::Value`.
pub async fn next_json(client: &mut Client) -> serde_json::Value {
    serde_json::from_str(&next_text(client).await).expect("JSON event")
}

/// The next event of type `kind`, skipping others.
pub async fn next_of_type(client: &mut Client, kind: &str) -> serde_json::Value {
    loop {
        let event = next_json(client).await;
        if event["type"] == kind {
            return event;
        }
    }
}

/// Who is online in a chat room as one client sees it: connections by user, from its last
/// `chat.presence` and every `chat.presence_diff` since (a user at zero is gone).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Online(pub std::collections::BTreeMap<String, u64>);

impl Online {
    /// Applies `event` if it is a `chat.presence` or a `chat.presence_diff`; panics on one that
    /// is not consistent with the view (a user listed without a count, more leaves than joins).
    pub fn apply(&mut self, event: &serde_json::Value) {
        let counts = |v: &serde_json::Value| -> Vec<(String, u64)> {
            let map = v.as_object().unwrap_or_else(|| panic!("connection counts by user: {event}"));
            map.iter().map(|(user, n)| (user.clone(), n.as_u64().filter(|n| *n > 0).expect("a count"))).collect()
        };
        match event["type"].as_str() {
            Some("chat.presence") => {
                self.0 = counts(&event["connections"]).into_iter().collect();
                let users: Vec<&str> =
                    event["users"].as_array().expect("users").iter().flat_map(|u| u.as_str()).collect();
                assert_eq!(users, self.users(), "users and connections name the same people: {event}");
            }
            Some("chat.presence_diff") => {
                for (user, n) in counts(&event["joins"]) {
                    *self.0.entry(user).or_default() += n;
                }
                for (user, n) in counts(&event["leaves"]) {
                    let had = self.0.get(&user).copied().unwrap_or_default();
                    assert!(had >= n, "{user} leaves with {n} connections but had {had}: {event}");
                    if had == n {
                        self.0.remove(&user);
                    } else {
                        self.0.insert(user, had - n);
                    }
                }
            }
            _ => {}
        }
    }

    /// The users online, sorted.
    pub fn users(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Reads `client`'s events into `online` until `done` holds; panics after 10 s.
pub async fn online_until(client: &mut Client, online: &mut Online, done: impl Fn(&Online) -> bool) {
    let reached = tokio::time::timeout(Duration::from_secs(10), async {
        while !done(online) {
            online.apply(&next_json(client).await);
        }
    })
    .await;
    assert!(reached.is_ok(), "the presence view never got there; it is {online:?}");
}

/// Waits for the server's close frame and returns its code. Like a browser, it then answers
/// the close (tungstenite sends the reply on the next read) and waits for the server to hang up.
pub async fn close_code(client: &mut Client) -> u16 {
    loop {
        let code = match tokio::time::timeout(Duration::from_secs(5), client.next()).await.expect("a frame within 5 s")
        {
            Some(Ok(Message::Close(Some(frame)))) => frame.code.into(),
            Some(Ok(Message::Close(None))) => 1005,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), client.next()).await;
        return code;
    }
}

pub async fn send_text(client: &mut Client, text: &str) {
    client.send(Message::text(text)).await.expect("send");
}

/// One HTTP/1.1 request on its own connection; returns the status and the whole body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_with(addr, method, path, &[], body).await;
    (status, body)
}

/// [`http`] with extra request headers, returning the response headers too.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap, String) {
    use http_body_util::BodyExt;
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);
    let mut request = hyper::Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("an answer within 10 s")
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status.as_u16(), parts.headers, String::from_utf8_lossy(&body).into_owned())
}

/// A server-sent event stream: yields each event's `data:` as JSON.
pub struct EventStream {
    body: hyper::body::Incoming,
    buffer: String,
}

impl EventStream {
    pub async fn open(addr: SocketAddr, path: &str) -> EventStream {
        Self::open_with(addr, path, &[]).await
    }

    /// [`open`](Self::open) with extra request headers (`Last-Event-ID`, say).
    pub async fn open_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> EventStream {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(connection);
        let mut request = hyper::Request::builder().uri(path).header("host", addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(http_body_util::Empty::<bytes::Bytes>::new()).expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        EventStream { body: response.into_body(), buffer: String::new() }
    }

    /// The next `data:` event, skipping comments; panics after 5 s.
    pub async fn next(&mut self) -> serde_json::Value {
        self.next_with_id().await.1
    }

    /// The next `data:` event with its `id:` line, if it has one.
    pub async fn next_with_id(&mut self) -> (Option<String>, serde_json::Value) {
        use http_body_util::BodyExt;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                    let id = event.lines().find_map(|l| l.strip_prefix("id: ")).map(str::to_owned);
                    return (id, serde_json::from_str(data).expect("JSON data"));
                }
                continue;
            }
            let frame = tokio::time::timeout(Duration::from_secs(5), self.body.frame())
                .await
                .expect("an event within 5 s")
                .expect("stream open")
                .expect("frame");
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }

    pub async fn next_of_type(&mut self, kind: &str) -> serde_json::Value {
        loop {
            let event = self.next().await;
            if event["type"] == kind {
                return event;
            }
        }
    }
}

/// Runs `node tests/browser/SCRIPT URL` (a Playwright script driving Debian's Chromium) against
/// a running example and fails the test, with the script's output and the server's log, unless
/// the script succeeds within `timeout`. Returns the script's standard output.
///
/// Needs `scripts/install-test-deps` (Chromium and the npm packages) and fails rather than
/// skips when they are missing.
pub fn run_browser_script(script: &str, example: &Example, timeout: Duration) -> String {
    use std::io::Read;
    use std::path::Path;
    use std::time::Instant;

    // The repository's root, also from a package in a subfolder (examples/approval).
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.ancestors().find(|dir| dir.join("tests/browser").is_dir()).unwrap_or(manifest_dir);
    for needed in [Path::new("/usr/bin/chromium"), &root.join("tests/browser/node_modules/playwright-core")] {
        assert!(needed.exists(), "{} is missing: run scripts/install-test-deps first", needed.display());
    }
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let mut child = Command::new("node")
        .arg(Path::new("tests/browser").join(script))
        .arg(format!("http://{}/", example.addr))
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): run scripts/install-test-deps first"));
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let server_log = example.log.lock().map(|log| log.clone()).unwrap_or_default();
    let output = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- server log ---\n{server_log}");
    match status {
        None => panic!("{script} did not finish within {timeout:?} and was killed\n{output}"),
        Some(status) => assert!(status.success(), "{script} failed ({status})\n{output}"),
    }
    stdout
}

/// `GET path` from the local address `from`, with extra headers: status and body.
pub async fn get_from(from: &str, to: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{from}:0").parse().expect("from")).expect("bind the client's address");
    let stream: tokio::net::TcpStream = socket.connect(to).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);
    let mut request = hyper::Request::get(path).header("host", "chat.example.com");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(http_body_util::Empty::<bytes::Bytes>::new()).expect("request");
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("an answer within 10 s")
        .expect("response");
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body()).await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The first fenced block of docs/deployment.md whose fence names `lang` (```` ```lang ````).
pub fn deployment_block(lang: &str) -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deployment.md")).expect("doc");
    let fence = format!("```{lang}\n");
    let start = doc.find(&fence).unwrap_or_else(|| panic!("a {lang} block in docs/deployment.md")) + fence.len();
    doc[start..][..doc[start..].find("```").expect("the block's end")].to_owned()
}

/// The first of `paths` that exists: a program the tests need, which
/// scripts/install-test-deps installs.
pub fn installed_program(paths: &[&str]) -> PathBuf {
    paths
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{} is missing: run scripts/install-test-deps (it installs it)", paths[0]))
}

/// A new directory for `name`'s files (configuration, logs) in this test process.
pub fn scratch_dir(name: &str, port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("channels-{name}-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// A free TCP port on 127.0.0.1 (free when asked; a server started right after takes it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A reverse proxy (nginx, Caddy) a test started with its files in `dir`: killed, and `dir`
/// removed, when dropped.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Proxy {
    /// Waits up to 10 s for `child` to listen on 127.0.0.1:`port`; otherwise kills it and
    /// panics with its log (`log`, a file in `dir`).
    pub fn listening(name: &str, mut child: Child, port: u16, dir: PathBuf, log: &str) -> Proxy {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        for _ in 0..400 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Proxy { child, addr, dir };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{name} did not listen on {addr}: {}", std::fs::read_to_string(dir.join(log)).unwrap_or_default());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
