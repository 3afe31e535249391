//! Debian's nginx in front of the application, started on free ports with the configuration of
//! docs/deployment.md: the chat works through it (page and WebSocket), and the client address
//! comes from `X-Forwarded-For` only where the proxy is trusted.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use channels::http::{HttpRequest, text};
use channels::middleware::TrustedProxies;
use channels::prelude::*;
use support::{Example, Proxy, free_port, get_from, next_json, next_of_type, send_text};

/// The `nginx` block of docs/deployment.md.
fn documented_config() -> String {
    support::deployment_block("nginx")
}

/// nginx running the documented block, listening on a free port and proxying to `upstream`.
fn start(upstream: SocketAddr) -> Proxy {
    let nginx = support::installed_program(&["/usr/sbin/nginx", "/usr/bin/nginx"]);
    let dir = support::scratch_dir("nginx", upstream.port());
    let port = free_port();
    let block = documented_config();
    assert!(block.contains("listen 80;") && block.contains("server 127.0.0.1:8000;"), "{block}");
    let block = block
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("server 127.0.0.1:8000;", &format!("server {upstream};"));
    let d = dir.display();
    let config = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{block}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), config).expect("write config");
    let child = Command::new(nginx)
        .args(["-e", &format!("{d}/error.log"), "-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    Proxy::listening("nginx", child, port, dir, "error.log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_works_through_nginx() {
    let chat = Example::start("chat", &["--trusted-proxy", "127.0.0.1"]);
    let nginx = start(chat.addr);
    let (status, page) = get_from("127.0.0.1", nginx.addr, "/", &[]).await;
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "the chat page through nginx");

    let url = |user: &str| format!("ws://{}/ws/chat/proxied/?user={user}", nginx.addr);
    let mut ann = support::connect(&url("ann")).await;
    assert_eq!(next_json(&mut ann).await["type"], "chat.presence");
    let mut bob = support::connect(&url("bob")).await;
    next_json(&mut bob).await;
    send_text(&mut ann, "through the proxy").await;
    let event = next_of_type(&mut bob, "chat.message").await;
    assert_eq!((event["user"].as_str(), event["text"].as_str()), (Some("ann"), Some("through the proxy")));
    // A WebSocket quiet for longer than nginx would allow without the server's pings is not
    // tested here (it takes a minute); the documented timeouts exceed the ping interval.
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
async fn client_addresses_come_from_x_forwarded_for_only_behind_a_trusted_proxy() {
    let (trusting, distrusting) = (serve(true).await, serve(false).await);
    let (to_trusting, to_distrusting) = (start(trusting), start(distrusting));
    // The client is 127.0.0.2 and lies about where it comes from.
    let forged = [("x-forwarded-for", "203.0.113.9")];

    let (status, client) = get_from("127.0.0.2", to_trusting.addr, "/whoami", &forged).await;
    assert_eq!((status, client.as_str()), (200, "127.0.0.2:0"), "nginx's word, not the client's");

    let (_, client) = get_from("127.0.0.2", to_distrusting.addr, "/whoami", &forged).await;
    let client: SocketAddr = client.parse().expect("an address");
    assert_eq!(client.ip().to_string(), "127.0.0.1", "untrusted: the proxy is the client");

    let (_, client) = get_from("127.0.0.2", trusting, "/whoami", &forged).await;
    let client: SocketAddr = client.parse().expect("an address");
    assert_eq!(client.ip().to_string(), "127.0.0.2", "straight from a client: its header is ignored");
    assert_ne!(client.port(), 0);
}
