//! The chat inside an axum application: one port, one process.
//!
//! Run it with `cargo run --example axum` and open <http://127.0.0.1:8000/>.
//!
//! An axum application as a team already runs it (its own JSON API and state, tower-http
//! layers) with the chat example's consumers, page and transports mounted in its router: the
//! [`Application`] is a tower service. The chat's protocol is unchanged (see
//! `examples/chat/main.rs`).
//!
//! | route | what |
//! |---|---|
//! | `GET /api/rooms` | `[{"room", "members", "users"}]`: rooms with someone in them, their connections and users (from the chat's presence) |
//! | `POST /api/rooms/{room}/announce` | `{"text": "..."}`: a `chat.message` from user `announcer` to the room's group; 202 `{"queued", "dropped"}` |
//! | `GET /ws/chat/{room}/?user=NAME` | the chat's WebSocket (`route_service`) |
//! | `GET /metrics` | Prometheus text |
//! | everything else | the chat application (`fallback_service`): the page at `/`, the HTTP transports |
//!
//! Every request passes a tower-http trace layer and gets an `x-request-id` (a counter);
//! WebSocket handshakes take their client address from axum's `ConnectInfo`. Ctrl-C (or
//! SIGTERM) stops accepting, closes every WebSocket with 1001 and runs every `disconnect`.
//!
//! Options: `--bind ADDR` (default 127.0.0.1:8000, env `CHANNELS_BIND`), `--layer URL`
//! (default `memory://`, env `CHANNELS_LAYER`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{Next, map_request};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use channels::application::ClientAddr;
use channels::layers::{ChannelLayer, Message};
use channels::presence::Presence;
use serde::{Deserialize, Serialize};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

// The chat example's consumers, page and transports, as they are.
#[allow(dead_code)]
#[path = "chat/main.rs"]
mod chat;

/// The API's own state.
#[derive(Clone)]
struct Api {
    layer: Arc<dyn ChannelLayer>,
    presence: Presence,
    /// The rooms WebSocket clients asked for, in this process.
    rooms: Arc<Mutex<BTreeSet<String>>>,
}

#[derive(Serialize)]
struct RoomInfo {
    room: String,
    /// Connections in the room, in every process on the layer.
    members: usize,
    /// Distinct users among them.
    users: usize,
}

async fn list_rooms(State(api): State<Api>) -> Result<Json<Vec<RoomInfo>>, Response> {
    let rooms: Vec<String> = api.rooms.lock().map(|rooms| rooms.iter().cloned().collect()).unwrap_or_default();
    let mut out = Vec::new();
    for room in rooms {
        let presences = api.presence.list(&format!("chat_{room}")).await.map_err(|e| {
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"error": e.to_string()}))).into_response()
        })?;
        let members = presences.iter().map(|(_, metas)| metas.len()).sum();
        if members > 0 {
            out.push(RoomInfo { room, members, users: presences.len() });
        }
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct Announcement {
    text: String,
}

fn api_error(status: StatusCode, error: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": error.into() }))).into_response()
}

async fn announce(State(api): State<Api>, Path(room): Path<String>, Json(body): Json<Announcement>) -> Response {
    if !chat::valid_room(&room) {
        return api_error(StatusCode::BAD_REQUEST, "a room is 1 to 50 letters, digits, '-', '_' or '.'");
    }
    let text = body.text.trim();
    if text.is_empty() || text.chars().count() > chat::MAX_TEXT_CHARS {
        let error = format!("text must be 1 to {} characters", chat::MAX_TEXT_CHARS);
        return api_error(StatusCode::UNPROCESSABLE_ENTITY, error);
    }
    // Its position in the room's history is stamped by the application's layer as it sends.
    let event = chat::ChatEvent::Message {
        user: "announcer".into(),
        text: text.to_owned(),
        ts: chat::now(),
        epoch: None,
        offset: None,
        id: None,
    };
    let message = match Message::new(&event) {
        Ok(message) => message,
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match api.layer.group_send(&format!("chat_{room}"), message).await {
        Ok(report) => {
            let body = serde_json::json!({ "queued": report.queued, "dropped": report.dropped_full });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Notes the room of every chat WebSocket asked for, for `GET /api/rooms`.
async fn record_room(State(api): State<Api>, Path(room): Path<String>, request: Request, next: Next) -> Response {
    if chat::valid_room(&room)
        && let Ok(mut rooms) = api.rooms.lock()
    {
        rooms.insert(room);
    }
    next.run(request).await
}

/// Request ids from a counter.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

impl MakeRequestId for Counter {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        HeaderValue::from_str(&id.to_string()).ok().map(RequestId::new)
    }
}

fn options() -> chat::Options {
    let mut options = chat::Options::default();
    let mut args = std::env::args().skip(1);
    let usage = || -> ! {
        eprintln!("usage: axum [--bind ADDR] [--layer URL]");
        std::process::exit(2)
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let value = inline.or_else(|| args.next()).unwrap_or_else(|| usage());
        match flag.as_str() {
            "--bind" => options.bind = value,
            "--layer" => options.layer = value,
            _ => usage(),
        }
    }
    options
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let options = options();
    let layer = channels::layers::from_url(&options.layer)?;
    let listener = tokio::net::TcpListener::bind(&options.bind).await?;
    let addr = listener.local_addr()?;
    let presence = chat::presence(layer.clone(), &options);
    let realtime = chat::app(layer.clone(), presence.clone(), Some(addr), &options);
    let metrics = realtime.metrics().cloned();
    // The application's own layer: what the API sends is counted with the rest.
    let layer = realtime.layers().default_layer().cloned().unwrap_or(layer);
    let api = Api { layer, presence: presence.clone(), rooms: Arc::default() };

    let chat_socket = Router::new()
        .route_service("/ws/chat/{room}/", realtime.clone())
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), record_room));
    let router = Router::new()
        .route("/api/rooms", get(list_rooms))
        .route("/api/rooms/{room}/announce", post(announce))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    match metrics {
                        Some(metrics) => metrics.response(),
                        None => channels::http::text(StatusCode::NOT_FOUND, "metrics are off"),
                    }
                }
            }),
        )
        .with_state(api)
        .merge(chat_socket)
        .fallback_service(realtime.clone())
        // The scope's client address: axum's `ConnectInfo`, handed on as a `ClientAddr`.
        .layer(map_request(|ConnectInfo(client): ConnectInfo<SocketAddr>, mut request: Request| async move {
            request.extensions_mut().insert(ClientAddr(client));
            request
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::x_request_id(Counter::default()));

    tracing::info!(layer = %options.layer, "axum app with the chat: open http://{addr}/");
    println!("axum: open http://{addr}/ (layer {})", options.layer);
    let stopping = realtime.clone();
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            channels::server::shutdown_signal().await;
            // Upgraded connections are no longer axum's: the application closes them (1001)
            // and runs their `disconnect` hooks.
            tracing::info!(open = stopping.open_connections(), "shutting down: closing websockets with 1001");
            stopping.shutdown().await;
        })
        .await?;
    presence.flush().await;
    Ok(())
}
