//! The application inside axum, over real sockets: the axum example as a process (its JSON
//! API and the chat on one port), and an axum server in this test (route captures, client
//! addresses, `nest_service`, tower-http layers, graceful shutdown that runs every
//! `disconnect`).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::routing::get;
use channels::application::ClientAddr;
use channels::prelude::*;
use serde_json::json;
use support::{Example, close_code, connect, next_json, next_of_type, send_text};

/// One HTTP/1.1 request with a JSON body on its own connection: status, headers and body.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, http::HeaderMap, String) {
    support::http_with(addr, method, path, &[("content-type", "application/json")], body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_the_chat_share_one_port_and_an_announcement_reaches_the_room() {
    let example = Example::start("axum", &[]);
    let addr = example.addr;

    // The chat's page and its WebSocket protocol, unchanged, on the axum port.
    let (status, headers, page) = request(addr, "GET", "/", "").await;
    assert_eq!(status, 200);
    assert!(page.contains("<html") || page.contains("<!doctype") || page.contains("<!DOCTYPE"), "{page}");
    // The tower-http request-id layer sees the chat's HTTP routes as well as the API's.
    let first_id: u64 = headers["x-request-id"].to_str().unwrap().parse().expect("a numeric request id");

    let (status, _, rooms) = request(addr, "GET", "/api/rooms", "").await;
    assert_eq!((status, rooms.as_str()), (200, "[]"));

    let mut ann = connect(&example.url("/ws/chat/lobby/?user=ann")).await;
    assert_eq!(next_json(&mut ann).await["type"], "chat.presence");
    let mut bob = connect(&example.url("/ws/chat/lobby/?user=bob")).await;
    assert_eq!(next_json(&mut bob).await["users"], json!(["ann", "bob"]));
    let mut bob2 = connect(&example.url("/ws/chat/lobby/?user=bob")).await;
    next_json(&mut bob2).await;
    let mut carol = connect(&example.url("/ws/chat/kitchen/?user=carol")).await;
    next_json(&mut carol).await;

    send_text(&mut ann, "hello from the socket").await;
    for client in [&mut ann, &mut bob, &mut bob2] {
        let event = next_of_type(client, "chat.message").await;
        assert_eq!((event["user"].as_str(), event["text"].as_str()), (Some("ann"), Some("hello from the socket")));
    }

    // Rooms with their member counts, from the chat's presence.
    let (status, headers, rooms) = request(addr, "GET", "/api/rooms", "").await;
    assert_eq!(status, 200);
    let rooms: serde_json::Value = serde_json::from_str(&rooms).expect("JSON");
    assert_eq!(
        rooms,
        json!([{"room": "kitchen", "members": 1, "users": 1}, {"room": "lobby", "members": 3, "users": 2}])
    );
    let id: u64 = headers["x-request-id"].to_str().unwrap().parse().expect("a numeric request id");
    assert!(id > first_id, "every request gets the next id: {first_id} then {id}");

    // An announcement from the API reaches every WebSocket in the room, and only that room.
    let (status, _, answer) =
        request(addr, "POST", "/api/rooms/lobby/announce", r#"{"text": "maintenance at noon"}"#).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&answer).unwrap(), json!({"queued": 3, "dropped": 0}));
    for client in [&mut ann, &mut bob, &mut bob2] {
        let event = next_of_type(client, "chat.message").await;
        assert_eq!(event["user"], "announcer");
        assert_eq!(event["text"], "maintenance at noon");
    }
    let heard = tokio::time::timeout(Duration::from_millis(300), next_of_type(&mut carol, "chat.message")).await;
    assert!(heard.is_err(), "another room must hear nothing, got {heard:?}");

    // The metrics, mounted in the axum router, agree: four sockets open, two group sends (ann's
    // message and the announcement) reaching three members each.
    let (status, headers, metrics) = request(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|line| line.starts_with(prefix))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().expect("a number"))
            .sum()
    };
    assert_eq!(value("channels_connections_open{"), 4.0, "{metrics}");
    assert_eq!(value("channels_group_sends_total{"), 2.0, "{metrics}");
    assert_eq!(value("channels_group_deliveries_total{"), 6.0, "{metrics}");

    // Bad input gets a clear error.
    let (status, _, answer) = request(addr, "POST", "/api/rooms/no%20spaces/announce", r#"{"text": "x"}"#).await;
    assert_eq!(status, 400, "{answer}");
    let (status, _, answer) = request(addr, "POST", "/api/rooms/lobby/announce", r#"{"text": "  "}"#).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains("text must be"), "{answer}");
    let (status, _, _) = request(addr, "POST", "/api/rooms/lobby/announce", "not json").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_socket_with_1001_through_axums_graceful_shutdown() {
    let mut example = Example::start("axum", &[]);
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut client = connect(&example.url(&format!("/ws/chat/room{}/?user=u{i}", i % 2))).await;
        next_json(&mut client).await;
        clients.push(client);
    }
    let exited = tokio::task::spawn_blocking(move || {
        let ok = example.terminate();
        (ok, example)
    });
    for client in &mut clients {
        assert_eq!(close_code(client).await, 1001);
    }
    let (ok, _example) = exited.await.expect("join");
    assert!(ok, "the server exits with success after a graceful shutdown");
}

/// Echoes its route capture and client address, and counts its `disconnect`s.
struct Probe {
    disconnects: Arc<AtomicUsize>,
}

impl WebsocketConsumer for Probe {
    type Event = NoEvents;

    async fn connect(&mut self, ctx: &mut WebsocketContext) -> HandlerResult {
        ctx.accept();
        let room = ctx.scope().param("room").unwrap_or("(none)").to_owned();
        let client = ctx.scope().client().map(|c| c.to_string()).unwrap_or_default();
        let path = ctx.scope().path().to_owned();
        ctx.send_json(&json!({"room": room, "client": client, "path": path})).await?;
        Ok(())
    }

    async fn disconnect(&mut self, _ctx: &mut WebsocketContext, _code: u16) -> HandlerResult {
        // Slow, as a hook that talks to a database is: shutdown waits for it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.disconnects.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_in_axum_captures_addresses_layers_and_shutdown_work() {
    let disconnects = Arc::new(AtomicUsize::new(0));
    let counted = disconnects.clone();
    let app = Application::builder(
        Router::new().websocket("/ws/{room}/", move |_: &Scope| Probe { disconnects: counted.clone() }).http(
            "/hello",
            |request: channels::http::HttpRequest| async move {
                let client = request.scope.client().map(|c| c.ip().to_string()).unwrap_or_default();
                channels::http::text(StatusCode::OK, format!("hello {client}"))
            },
        ),
    )
    .layer(Arc::new(channels::memory::InMemoryChannelLayer::new(Default::default())))
    .build();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let router = axum::Router::new()
        .route("/api/ping", get(|| async { "pong" }))
        .route_service("/ws/{room}/", app.clone())
        .nest_service("/realtime", app.clone())
        .fallback_service(app.clone())
        .layer(axum::middleware::map_request(
            |ConnectInfo(client): ConnectInfo<SocketAddr>, mut request: Request| async move {
                request.extensions_mut().insert(ClientAddr(client));
                request
            },
        ))
        // A tower-http layer over everything: it counts what it sees.
        .layer(tower_http::trace::TraceLayer::new_for_http().on_request(
            move |_: &http::Request<axum::body::Body>, _: &tracing::Span| {
                counter.fetch_add(1, Ordering::SeqCst);
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopping = app.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
                stopping.shutdown().await;
            })
            .await
    });

    let (status, _, body) = request(addr, "GET", "/api/ping", "").await;
    assert_eq!((status, body.as_str()), (200, "pong"));
    // Through `fallback_service`, with the client address from `ConnectInfo`.
    let (status, _, body) = request(addr, "GET", "/hello", "").await;
    assert_eq!((status, body.as_str()), (200, "hello 127.0.0.1"));
    // Through `nest_service`: the prefix is axum's, the rest is the application's route.
    let (status, _, body) = request(addr, "GET", "/realtime/hello", "").await;
    assert_eq!((status, body.as_str()), (200, "hello 127.0.0.1"));
    let (status, _, _) = request(addr, "GET", "/nowhere", "").await;
    assert_eq!(status, 404);

    let mut clients = Vec::new();
    for (i, path) in ["/ws/alpha/", "/realtime/ws/beta/", "/ws/gamma/"].iter().enumerate() {
        let mut client = connect(&format!("ws://{addr}{path}")).await;
        let hello = next_json(&mut client).await;
        let room = ["alpha", "beta", "gamma"][i];
        assert_eq!(hello["room"], room, "{hello}");
        assert_eq!(hello["path"], format!("/ws/{room}/"), "{hello}");
        let client_addr: SocketAddr = hello["client"].as_str().unwrap().parse().expect("the client's address");
        assert!(client_addr.ip().is_loopback() && client_addr.port() != 0, "{hello}");
        clients.push(client);
    }
    assert!(seen.load(Ordering::SeqCst) >= 7, "the trace layer saw every request");

    let _ = stop.send(());
    for client in &mut clients {
        assert_eq!(close_code(client).await, 1001);
    }
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("axum stops within 10 s")
        .expect("join")
        .expect("serve");
    assert_eq!(disconnects.load(Ordering::SeqCst), 3, "every disconnect ran before axum returned");
}

/// Follows a redirect's `Location` from `path` as a browser would (resolved against the
/// request's URL), returning the path it leads to.
fn resolve_location(addr: SocketAddr, path: &str, headers: &http::HeaderMap) -> String {
    let location = headers.get("location").expect("a Location header").to_str().expect("ASCII");
    let base = url::Url::parse(&format!("http://{addr}{path}")).expect("base URL");
    let target = base.join(location).expect("a Location the URL parser resolves");
    assert_eq!(target.host_str(), base.host_str(), "the redirect stays on this server");
    match target.query() {
        Some(query) => format!("{}?{query}", target.path()),
        None => target.path().to_owned(),
    }
}

#[tokio::test]
async fn a_trailing_slash_redirect_keeps_the_prefix_of_nest_service() {
    let page = |request: channels::http::HttpRequest| async move {
        channels::http::text(StatusCode::OK, format!("served {}", request.scope.path()))
    };
    let app = Application::builder(Router::new().http("/rooms/{room}/", page).http("/file", page)).build();
    let router = axum::Router::new().nest_service("/realtime", app.clone()).fallback_service(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });

    for (path, expected, served) in [
        ("/realtime/rooms/lobby?x=1", "/realtime/rooms/lobby/?x=1", "served /rooms/lobby/"),
        ("/realtime/file/", "/realtime/file", "served /file"),
        // Not nested: the same relative redirect leads to the route itself.
        ("/rooms/lobby", "/rooms/lobby/", "served /rooms/lobby/"),
        ("/file/", "/file", "served /file"),
    ] {
        let (status, headers, _) = request(addr, "GET", path, "").await;
        assert_eq!(status, 308, "{path}");
        let target = resolve_location(addr, path, &headers);
        assert_eq!(target, expected, "{path} redirects to {target}");
        let (status, _, body) = request(addr, "GET", &target, "").await;
        assert_eq!((status, body.as_str()), (200, served), "{target}");
    }
}
