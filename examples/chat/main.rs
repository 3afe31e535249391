//! Group chat: twenty browser tabs, one live conversation.
//!
//! Run it with `cargo run --example chat` and open <http://127.0.0.1:8000/>.
//!
//! What it shows:
//! - a [`WebsocketConsumer`] with typed channel-layer events (`chat.message`, `chat.join`,
//!   `chat.leave`), joined to the group `chat_<room>` taken from the URL capture `{room}`;
//! - the layer chosen by configuration: `--layer memory://` (default) or the `CHANNELS_LAYER`
//!   environment variable; no code changes between backends;
//! - the close word (`关闭` or `/close`) that makes the server close the connection cleanly;
//! - origin checking, limits and graceful shutdown (Ctrl-C closes every socket with 1001).
//!
//! Protocol (stable; other clients rely on it):
//! - `GET /` and `GET /home/`: the chat page. WebSocket: `/ws/chat/{room}/?user=NAME`.
//! - Client → server: a text frame, plain text or `{"message": "..."}`.
//! - Server → client: JSON text frames `{"type": "chat.message", "user", "text", "ts"}`,
//!   `{"type": "chat.join", "user", "ts"}`, `{"type": "chat.leave", "user", "ts"}`, and, to a
//!   newcomer only, `{"type": "chat.presence", "users": [...], "connections": {"user": n}}`
//!   (who is online in this process, and with how many connections).
//! - The same rooms over plain HTTP (see `transports.rs`): `POST /chat/{room}/messages`,
//!   `GET /chat/{room}/events?client=ID&wait=25` (long polling; `wait=0` polls) and
//!   `GET /chat/{room}/stream` (server-sent events), all carrying the same JSON events.
//! - On the channel layer, room `R` is group `chat_R` and a message is the event
//!   `{"type": "chat.message", "user": str, "text": str, "ts": float}`, as in the Django
//!   Channels tutorial, so a Django consumer on the same layer can join the conversation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod transports;

use channels::http::page;
use channels::http_consumer::http_consumer;
use channels::middleware::OriginValidator;
use channels::prelude::*;
use serde::{Deserialize, Serialize};

/// Longest chat message, in characters.
pub(crate) const MAX_TEXT_CHARS: usize = 4000;
/// Longest user name, in characters.
const MAX_USER_CHARS: usize = 32;

/// The events a room's members exchange on the channel layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub(crate) enum ChatEvent {
    #[serde(rename = "chat.message")]
    Message {
        user: String,
        text: String,
        #[serde(default)]
        ts: f64,
    },
    #[serde(rename = "chat.join")]
    Join {
        user: String,
        #[serde(default)]
        ts: f64,
    },
    #[serde(rename = "chat.leave")]
    Leave {
        user: String,
        #[serde(default)]
        ts: f64,
    },
}

/// What a client may send: `{"message": "..."}` (anything else is taken as plain text).
#[derive(Deserialize)]
pub(crate) struct Inbound {
    pub(crate) message: String,
}

/// Who is in each room of this process, with a connection count per user, keyed by the room's
/// group name. A room's users are a short list rather than a map: most rooms hold few users,
/// and the snapshot a newcomer gets walks them all anyway. Names are shared with the consumers
/// that hold them, so an idle connection costs one list entry here.
#[derive(Clone, Default)]
pub(crate) struct Presence(Arc<Mutex<HashMap<Arc<str>, RoomUsers>>>);

/// A room's users with their connection counts.
type RoomUsers = Vec<(Arc<str>, usize)>;

impl Presence {
    /// Counts one more connection of `user` in `group`; returns the `chat.presence` event the
    /// newcomer gets: everyone in the room, by name, with their connection counts.
    pub(crate) fn join(&self, group: &Arc<str>, user: &Arc<str>) -> serde_json::Value {
        let connections: std::collections::BTreeMap<String, usize> = {
            let mut rooms = self.0.lock().unwrap_or_else(|p| p.into_inner());
            // Room for one: `push` on an empty Vec would make room for four.
            let users = rooms.entry(group.clone()).or_insert_with(|| Vec::with_capacity(1));
            match users.iter_mut().find(|(name, _)| name == user) {
                Some((_, count)) => *count += 1,
                None => users.push((user.clone(), 1)),
            }
            users.iter().map(|(name, count)| (name.to_string(), *count)).collect()
        };
        let users: Vec<&String> = connections.keys().collect();
        serde_json::json!({ "type": "chat.presence", "users": users, "connections": connections })
    }

    pub(crate) fn leave(&self, group: &str, user: &str) {
        let mut rooms = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(users) = rooms.get_mut(group) {
            if let Some(i) = users.iter().position(|(name, _)| &**name == user) {
                users[i].1 -= 1;
                if users[i].1 == 0 {
                    users.swap_remove(i);
                }
            }
            if users.is_empty() {
                rooms.remove(group);
            }
        }
    }
}

struct ChatConsumer {
    /// `chat_<room>`.
    group: Arc<str>,
    user: Arc<str>,
    presence: Presence,
    joined: bool,
}

pub(crate) fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

pub(crate) fn valid_room(room: &str) -> bool {
    (1..=50).contains(&room.len()) && room.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl ChatConsumer {
    fn new(scope: &Scope, presence: Presence) -> Self {
        let group = format!("chat_{}", scope.param("room").unwrap_or_default());
        Self { group: group.into(), user: user_name(scope).into(), presence, joined: false }
    }

    fn room(&self) -> &str {
        &self.group["chat_".len()..]
    }
}

/// The `?user=` name: trimmed, control characters dropped, at most 32 characters; a random
/// guest name when missing.
pub(crate) fn user_name(scope: &Scope) -> String {
    scope
        .query_param("user")
        .map(|u| u.trim().chars().filter(|c| !c.is_control()).take(MAX_USER_CHARS).collect::<String>())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("guest-{}", rand_suffix()))
}

fn rand_suffix() -> u32 {
    rand::random_range(1000..10_000)
}

impl WebsocketConsumer for ChatConsumer {
    type Event = ChatEvent;

    fn groups(&self) -> Vec<String> {
        // An invalid room yields no group; `connect` then denies the connection.
        if valid_room(self.room()) { vec![self.group.to_string()] } else { Vec::new() }
    }

    async fn connect(&mut self, ctx: &mut WebsocketContext) -> HandlerResult {
        if !valid_room(self.room()) {
            ctx.deny();
            return Ok(());
        }
        ctx.accept();
        let presence = self.presence.join(&self.group, &self.user);
        self.joined = true;
        ctx.send_json(&presence).await?;
        ctx.group_send(&self.group, &ChatEvent::Join { user: self.user.to_string(), ts: now() }).await?;
        Ok(())
    }

    async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
        let Some(raw) = frame.as_text() else {
            return Ok(()); // binary frames mean nothing in this protocol
        };
        let text = match serde_json::from_str::<Inbound>(raw) {
            Ok(inbound) => inbound.message,
            Err(_) => raw.to_owned(),
        };
        let text = text.trim();
        if text == "关闭" || text == "/close" {
            ctx.close(close_code::NORMAL).await?;
            return Ok(());
        }
        if text.is_empty() {
            return Ok(());
        }
        if text.chars().count() > MAX_TEXT_CHARS {
            let error = format!("messages are limited to {MAX_TEXT_CHARS} characters");
            ctx.send_json(&serde_json::json!({ "type": "chat.error", "error": error })).await?;
            return Ok(());
        }
        let event = ChatEvent::Message { user: self.user.to_string(), text: text.to_owned(), ts: now() };
        // Queued, not awaited: messages the client sends meanwhile go to the layer together
        // (one exchange with Redis for the lot) and reach the room together.
        ctx.group_send_nowait(&self.group, &event)?;
        Ok(())
    }

    /// The layer is unreachable (Redis down, say): tell the sender instead of dropping the
    /// message silently or the connection.
    async fn group_send_failed(&mut self, ctx: &mut WebsocketContext, _group: &str, e: ContextError) -> HandlerResult {
        tracing::warn!(error = %e, "could not send a chat message");
        let error = "message not delivered: the server cannot reach its channel layer";
        ctx.send_json(&serde_json::json!({ "type": "chat.error", "error": error })).await?;
        Ok(())
    }

    async fn event(&mut self, ctx: &mut WebsocketContext, event: ChatEvent) -> HandlerResult {
        ctx.send_json(&event).await?;
        Ok(())
    }

    /// Room events go to the browser as they are, so each is rendered to JSON once for the
    /// whole room instead of being decoded and encoded again for every member. Other types
    /// take the default path (decoded into `ChatEvent`, unknown ones dropped).
    async fn message(&mut self, ctx: &mut WebsocketContext, message: Message) -> HandlerResult {
        match message.message_type() {
            "chat.message" | "chat.join" | "chat.leave" => ctx.send_message_json(&message).await?,
            _ => decode_and_dispatch(self, ctx, message).await?,
        }
        Ok(())
    }

    async fn disconnect(&mut self, ctx: &mut WebsocketContext, _code: u16) -> HandlerResult {
        if self.joined {
            self.presence.leave(&self.group, &self.user);
            ctx.group_send(&self.group, &ChatEvent::Leave { user: self.user.to_string(), ts: now() }).await?;
        }
        Ok(())
    }
}

struct Options {
    bind: String,
    layer: String,
    allowed_origins: Vec<String>,
    poll_timeout: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: chat [--bind ADDR] [--layer URL] [--allowed-origin HOST]... [--poll-timeout SECS]\n\
         \n  --bind ADDR            listen address (default 127.0.0.1:8000, env CHANNELS_BIND)\
         \n  --layer URL            channel layer (default memory://, env CHANNELS_LAYER)\
         \n  --allowed-origin HOST  also accept browser pages from HOST (repeatable)\
         \n  --poll-timeout SECS    drop polling clients silent this long (default 60)"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut options = Options {
        bind: std::env::var("CHANNELS_BIND").unwrap_or_else(|_| "127.0.0.1:8000".into()),
        layer: channels::layers::url_from_env("memory://"),
        allowed_origins: Vec::new(),
        poll_timeout: Duration::from_secs(60),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let mut value = || inline.clone().or_else(|| args.next()).unwrap_or_else(|| usage());
        match flag.as_str() {
            "--bind" => options.bind = value(),
            "--layer" => options.layer = value(),
            "--allowed-origin" => options.allowed_origins.push(value()),
            "--poll-timeout" => match value().parse::<f64>() {
                Ok(secs) if secs > 0.0 && secs.is_finite() => options.poll_timeout = Duration::from_secs_f64(secs),
                _ => usage(),
            },
            _ => usage(),
        }
    }
    options
}

/// The chat application, on any layer.
fn app(layer: Arc<dyn channels::layers::ChannelLayer>, bind: Option<SocketAddr>, options: &Options) -> Application {
    let extra_origins = &options.allowed_origins;
    let presence = Presence::default();
    let polls = transports::PollClients::new(presence.clone(), options.poll_timeout);
    tokio::spawn(polls.clone().sweep_forever(layer.clone()));
    let html = include_str!("index.html");
    let (ws_presence, sse_presence) = (presence.clone(), presence);
    let router = Router::new()
        .http("/", page("text/html; charset=utf-8", html))
        .http("/home/", page("text/html; charset=utf-8", html))
        .websocket("/ws/chat/{room}/", move |scope: &Scope| ChatConsumer::new(scope, ws_presence.clone()))
        .http("/chat/{room}/messages", transports::post_message)
        .http("/chat/{room}/events", move |request| polls.clone().poll(request))
        .http(
            "/chat/{room}/stream",
            http_consumer(move |scope: &Scope| transports::ChatStream::new(scope, sse_presence.clone())),
        );
    let mut origins: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].map(String::from).to_vec();
    if let Some(bind) = bind {
        origins.push(bind.ip().to_string());
    }
    origins.extend_from_slice(extra_origins);
    Application::builder(router)
        .layer(layer)
        .middleware(OriginValidator::new(origins).allow_missing_origin(true))
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let options = options();
    let layer = channels::layers::from_url(&options.layer)?;
    let server = Server::bind(&options.bind).await?;
    let addr = server.local_addr()?;
    let app = app(layer, Some(addr), &options);
    tracing::info!(layer = %options.layer, "chat is running: open http://{addr}/ in a few browser tabs");
    println!("chat: open http://{addr}/ (layer {})", options.layer);
    server.serve(app).await?;
    Ok(())
}
