//! Debian's Caddy in front of the application, started on free ports with the Caddyfile of
//! docs/deployment.md: the chat works through it (page, WebSocket, server-sent events as they
//! are written), and the client address comes from `X-Forwarded-For` only where the proxy is
//! trusted.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use channels::http::{HttpRequest, text};
use channels::middleware::TrustedProxies;
use channels::prelude::*;
use support::{EventStream, Example, Proxy, free_port, get_from, http, next_json, next_of_type, send_text};

/// The `caddyfile` block of docs/deployment.md.
fn documented_config() -> String {
    support::deployment_block("caddyfile")
}

/// Caddy running the documented block, listening on a free port and proxying to `upstream`.
fn start(upstream: SocketAddr) -> Proxy {
    let caddy = support::installed_program(&["/usr/bin/caddy", "/usr/local/bin/caddy"]);
    let dir = support::scratch_dir("caddy", upstream.port());
    let port = free_port();
    let block = documented_config();
    assert!(block.contains("chat.example.com {") && block.contains("reverse_proxy 127.0.0.1:8000"), "{block}");
    // Plain HTTP on a loopback port for any host name, instead of the site's certificate.
    let block = block
        .replace("chat.example.com {", &format!("http://:{port} {{\n    bind 127.0.0.1"))
        .replace("reverse_proxy 127.0.0.1:8000", &format!("reverse_proxy {upstream}"));
    // No admin endpoint (its fixed port would clash between tests), nothing in $HOME.
    let config = format!("{{\n    admin off\n    storage file_system {}/data\n}}\n\n{block}", dir.display());
    std::fs::write(dir.join("Caddyfile"), config).expect("write config");
    let log = std::fs::File::create(dir.join("caddy.log")).expect("log");
    let child = Command::new(caddy)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(dir.join("Caddyfile"))
        .env("HOME", &dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start caddy");
    Proxy::listening("caddy", child, port, dir, "caddy.log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_works_through_caddy() {
    let chat = Example::start("chat", &["--trusted-proxy", "127.0.0.1"]);
    let caddy = start(chat.addr);
    let (status, page) = get_from("127.0.0.1", caddy.addr, "/", &[]).await;
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "the chat page through caddy");

    let url = |user: &str| format!("ws://{}/ws/chat/proxied/?user={user}", caddy.addr);
    let mut ann = support::connect(&url("ann")).await;
    assert_eq!(next_json(&mut ann).await["type"], "chat.presence");
    let mut bob = support::connect(&url("bob")).await;
    next_json(&mut bob).await;
    // Server-sent events arrive as they are written (`flush_interval -1`), not when a buffer
    // fills: each `next` waits at most 5 s.
    let mut stream = EventStream::open(caddy.addr, "/chat/proxied/stream?user=carol").await;
    assert_eq!(stream.next().await["type"], "chat.presence");

    send_text(&mut ann, "through the proxy").await;
    let event = next_of_type(&mut bob, "chat.message").await;
    assert_eq!((event["user"].as_str(), event["text"].as_str()), (Some("ann"), Some("through the proxy")));
    assert_eq!(stream.next_of_type("chat.message").await["text"], "through the proxy");
    let (status, _) = http(caddy.addr, "POST", "/chat/proxied/messages?user=dan", r#"{"message": "posted"}"#).await;
    assert_eq!(status, 202);
    assert_eq!(next_of_type(&mut bob, "chat.message").await["text"], "posted");
    assert_eq!(stream.next_of_type("chat.message").await["text"], "posted");
}

async fn whoami(request: HttpRequest) -> channels::http::HttpResponse {
    text(StatusCode::OK, request.scope.client().map(|c| c.to_string()).unwrap_or_default())
}

/// Serves `/whoami` in this process, with or without `TrustedProxies` for 127.0.0.1.
async fn serve(trusted: bool) -> SocketAddr {
    let mut builder = Application::builder(Router::new().http("/whoami", whoami));
    if trusted {
        builder = builder.middleware(TrustedProxies::new(["127.0.0.1"]).expect("proxies"));
    }
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let app = builder.build();
    tokio::spawn(server.serve_with_shutdown(app, std::future::pending()));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_addresses_come_from_caddys_x_forwarded_for_only_when_trusted() {
    let (trusting, distrusting) = (serve(true).await, serve(false).await);
    let (to_trusting, to_distrusting) = (start(trusting), start(distrusting));
    // The client is 127.0.0.2 and lies about where it comes from: Caddy replaces the header.
    let forged = [("x-forwarded-for", "203.0.113.9")];

    let (status, client) = get_from("127.0.0.2", to_trusting.addr, "/whoami", &forged).await;
    assert_eq!((status, client.as_str()), (200, "127.0.0.2:0"), "caddy's word, not the client's");

    let (_, client) = get_from("127.0.0.2", to_distrusting.addr, "/whoami", &forged).await;
    let client: SocketAddr = client.parse().expect("an address");
    assert_eq!(client.ip().to_string(), "127.0.0.1", "untrusted: the proxy is the client");
}
