//! Group chat: twenty browser tabs, one live conversation.
//!
//! Run it with `cargo run --example chat` and open <http://127.0.0.1:8000/>.
//!
//! What it shows:
//! - a [`WebsocketConsumer`] with typed channel-layer events (`chat.message`), joined to the
//!   group `chat_<room>` taken from the URL capture `{room}`;
//! - who is online through `channels::presence`: across every process on the same Redis, with
//!   joins and leaves coalesced into one diff per room and interval, so a room of thousands
//!   filling up costs each member a message per interval rather than one per join;
//! - the layer chosen by configuration: `--layer memory://` (default) or the `CHANNELS_LAYER`
//!   environment variable; no code changes between backends;
//! - the close word (`关闭` or `/close`) that makes the server close the connection cleanly;
//! - origin checking, limits and graceful shutdown (Ctrl-C closes every socket with 1001);
//! - a Django site's logins (`--django-sessions URL`, see `django.rs`): a client logged in to
//!   Django chats under its Django username.
//!
//! Protocol (stable; other clients rely on it):
//! - `GET /` and `GET /home/`: the chat page; `GET /static/channels.js`: the browser client it
//!   uses (`channels::client`: reconnect, heartbeat, fallback to SSE and long polling, resume);
//!   `GET /metrics`: Prometheus metrics
//!   (`channels::metrics`); `GET /healthz` and `GET /readyz`: liveness and readiness (503
//!   while the channel layer cannot be reached or the server drains). WebSocket: `/ws/chat/{room}/?user=NAME`.
//! - Client → server: a text frame, plain text or `{"message": "...", "id": "..."}`. The
//!   optional `"id"` (1-64 letters, digits, `-`, `_`, `.` or `:`, chosen by the client) comes
//!   back on the message's `chat.message`; with history on, a message sent again with the same
//!   ID by the same user while the first is in the history is neither stored nor delivered
//!   again, so a client may resend whatever it did not see come back before a reconnect. The
//!   page does: it gives each message a random ID and, after a reconnect, sends again, in
//!   order, those whose `chat.message` it has not seen (channels.js's `idKey`).
//! - Server → client: JSON text frames
//!   - `{"type": "chat.message", "user", "text", "ts", "epoch", "offset", "id"}`: `"epoch"` (a
//!     string) and `"offset"` (an integer, one more than the room's previous message) are the
//!     message's position in the room's history (`--history 100` messages kept for
//!     `--history-window 300` seconds by default; either at `0` turns history off, and then
//!     messages carry neither key, nor do messages sent by a process without history); `"id"`
//!     only when the sender gave one. With history on, each client gets the room's messages
//!     in offset order, each once, whichever process sent them (a gap is filled from the
//!     history, after a `chat.unrecovered` if it cannot be);
//!   - to a client that connects with `?since=EPOCH:OFFSET` (the last position it saw), before
//!     anything else: the room's messages after that position, in order, then the live
//!     stream, with none missing or repeated in between; when that position is gone (older
//!     than the history, another epoch after the history was lost, history off), first
//!     `{"type": "chat.unrecovered", "epoch", "offset"}` (the room's current position, when
//!     known) and the client reloads what it shows; a malformed `?since=` gets a `chat.error`;
//!   - to a newcomer, once, `{"type": "chat.presence", "users": [...], "connections": {"user": n}}`:
//!     who is online in the room (in every process on the layer), with how many connections
//!     each, the newcomer included; it replaces whatever view the client had (a client that
//!     missed a diff gets a new one);
//!   - then `{"type": "chat.presence_diff", "joins": {"user": n}, "leaves": {"user": n}}`: the
//!     connections that joined and left since the previous diff, at most one per room every
//!     `--presence-interval` milliseconds (default 100). A client keeps `connections[user] +=
//!     joins[user] - leaves[user]` and shows the users above zero; a user in `joins` that was
//!     not online has joined, one in `leaves` that drops to zero has left.
//!   - `{"type": "chat.error", "error"}` for a message that was refused.
//! - The same rooms over plain HTTP (see `transports.rs`): `POST /chat/{room}/messages`,
//!   `GET /chat/{room}/events?client=ID&wait=25` (long polling; `wait=0` polls) and
//!   `GET /chat/{room}/stream` (server-sent events), all carrying the same JSON events;
//!   `?since=EPOCH:OFFSET` works the same on the events and stream URLs (400 when malformed),
//!   each positioned SSE event has `id: EPOCH:OFFSET`, and SSE's `Last-Event-ID` request header
//!   (sent by a reconnecting `EventSource`) counts as `?since=` and wins over it.
//! - History on Redis is kept by the layer under its prefix (`<prefix>:history:<group>`), so a
//!   client recovers through any process of the deployment. A Django process's `group_send`
//!   reaches the room but gets no position and is not kept: clients recover only what the
//!   Rust processes sent.
//! - On the channel layer, room `R` is group `chat_R` and a message is the event
//!   `{"type": "chat.message", "user": str, "text": str, "ts": float}`, as in the Django
//!   Channels tutorial, so a Django consumer on the same layer can join the conversation
//!   (its `chat.join` and `chat.leave` notices, if it sends any, are passed on as they are).
//!   Presence lives in keys of its own under the layer's prefix (see `docs/presence.md`); the
//!   entries of a process that died without cleaning up leave the views within
//!   `--presence-ttl` seconds (default 30).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod django;
mod recovery;
mod transports;

use channels::client::channels_js;
use channels::http::{liveness, page, readiness};
use channels::http_consumer::http_consumer;
use channels::layers::{Admit, HistoryLayer, HistoryOptions, StreamCursor};
use channels::metrics::Metrics;
use channels::middleware::{OriginValidator, TrustedProxies};
use channels::prelude::*;
use channels::presence::{Presence, PresenceConfig, PresenceDiff, PresenceEvents, Presences};
use recovery::ChatHistory;
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
        /// The message's position in the room's history (absent with history off, and on
        /// messages sent by a process without it, such as a Django consumer).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// The sender's ID for the message, when it gave one: a resend with the same ID (and
        /// user) is stored and delivered once while the first is in the history.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
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
    /// Who is online, for a newcomer.
    #[serde(rename = "chat.presence")]
    Presence { users: Vec<String>, connections: BTreeMap<String, usize> },
    /// Connections that joined and left since the previous diff, by user.
    #[serde(rename = "chat.presence_diff")]
    PresenceDiff { joins: BTreeMap<String, usize>, leaves: BTreeMap<String, usize> },
}

/// What a client may send: `{"message": "...", "id": "..."}` (`id` optional; anything else is
/// taken as plain text).
#[derive(Deserialize)]
pub(crate) struct Inbound {
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) id: Option<String>,
}

/// Longest message ID, in characters.
const MAX_ID_CHARS: usize = 64;

/// A client's message ID, checked: 1-64 letters, digits, `-`, `_`, `.` or `:`.
pub(crate) fn message_id(id: Option<String>) -> Result<Option<String>, String> {
    match id {
        None => Ok(None),
        Some(id)
            if (1..=MAX_ID_CHARS).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
        {
            Ok(Some(id))
        }
        Some(_) => Err(format!("message IDs are 1-{MAX_ID_CHARS} letters, digits, '-', '_', '.' or ':'")),
    }
}

/// The chat's presence messages: users with their connection counts, in the shapes the page
/// reads. Each is made once per room and interval and shared by every member.
struct ChatPresenceEvents;

/// Each key's number of metas: a user's connections.
fn connection_counts(presences: &Presences) -> BTreeMap<String, usize> {
    presences.iter().map(|(user, metas)| (user.to_owned(), metas.len())).collect()
}

impl PresenceEvents for ChatPresenceEvents {
    fn state(&self, _group: &str, state: &Presences) -> Option<Message> {
        let users = state.keys().map(str::to_owned).collect();
        Message::new(&ChatEvent::Presence { users, connections: connection_counts(state) }).ok()
    }

    fn diff(&self, _group: &str, diff: &PresenceDiff) -> Option<Message> {
        let (joins, leaves) = (connection_counts(&diff.joins), connection_counts(&diff.leaves));
        Message::new(&ChatEvent::PresenceDiff { joins, leaves }).ok()
    }
}

struct ChatConsumer {
    /// `chat_<room>`.
    group: Arc<str>,
    user: Arc<str>,
    presence: Presence,
    history: ChatHistory,
    /// Delivers the room's messages once and in order (with history on).
    cursor: Option<StreamCursor>,
}

pub(crate) fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

pub(crate) fn valid_room(room: &str) -> bool {
    (1..=50).contains(&room.len()) && room.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl ChatConsumer {
    fn new(scope: &Scope, presence: Presence, history: ChatHistory) -> Self {
        let group = format!("chat_{}", scope.param("room").unwrap_or_default());
        Self { group: group.into(), user: user_name(scope).into(), presence, history, cursor: None }
    }

    fn room(&self) -> &str {
        &self.group["chat_".len()..]
    }
}

/// The `?user=` name: trimmed, control characters dropped, at most 32 characters; a random
/// guest name when missing. With `--django-sessions`, the Django username or a guest name.
pub(crate) fn user_name(scope: &Scope) -> String {
    if let Some(identity) = scope.extensions().get::<django::ChatIdentity>() {
        return identity.name();
    }
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
        // `?since=`: what the client missed, after joining the room (done before `connect`)
        // and before the live stream.
        match recovery::since_of(ctx.scope(), false) {
            Ok(Some(since)) => {
                let replay = recovery::replay(&self.history, &self.group, &since).await;
                self.cursor = replay.cursor;
                for message in &replay.messages {
                    ctx.send_message_json(message).await?;
                }
            }
            Ok(None) => self.cursor = recovery::start(&self.history, &self.group).await,
            Err(e) => ctx.send_json(&serde_json::json!({ "type": "chat.error", "error": e })).await?,
        }
        // The room's presence arrives on this connection's channel: who is online, then diffs.
        let channel = ctx.shared_channel_name().ok_or("the chat needs a channel layer")?;
        self.presence.track(&self.group, channel, &self.user, serde_json::Value::Null)?;
        Ok(())
    }

    async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
        let Some(raw) = frame.as_text() else {
            return Ok(()); // binary frames mean nothing in this protocol
        };
        // Only what looks like a JSON object is parsed as one: plain text costs no failed parse.
        let parsed = raw.trim_start().starts_with('{').then(|| serde_json::from_str::<Inbound>(raw).ok()).flatten();
        let (text, id) = match parsed {
            Some(inbound) => (std::borrow::Cow::Owned(inbound.message), inbound.id),
            None => (std::borrow::Cow::Borrowed(raw), None),
        };
        let id = match message_id(id) {
            Ok(id) => id,
            Err(error) => {
                ctx.send_json(&serde_json::json!({ "type": "chat.error", "error": error })).await?;
                return Ok(());
            }
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
        let event = ChatEvent::Message {
            user: self.user.to_string(),
            text: text.to_owned(),
            ts: now(),
            epoch: None,
            offset: None,
            id,
        };
        // Queued, not awaited: messages the client sends meanwhile go to the layer together
        // (one exchange with Redis for the lot) and reach the room together. With history on,
        // the layer (a `HistoryLayer`) stores each with its position as it sends the batch.
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
            "chat.message" | "chat.presence" | "chat.presence_diff" | "chat.join" | "chat.leave" => {
                match recovery::admit(&mut self.cursor, &message) {
                    Admit::Deliver => ctx.send_message_json(&message).await?,
                    Admit::Duplicate => {}
                    Admit::Gap => {
                        for m in recovery::fill(&self.history, &mut self.cursor, &self.group, &message).await {
                            ctx.send_message_json(&m).await?;
                        }
                    }
                }
            }
            _ => decode_and_dispatch(self, ctx, message).await?,
        }
        Ok(())
    }

    async fn disconnect(&mut self, ctx: &mut WebsocketContext, _code: u16) -> HandlerResult {
        if let Some(channel) = ctx.channel_name() {
            self.presence.untrack(&self.group, channel);
        }
        Ok(())
    }
}

/// The chat's settings (the axum example sets them itself).
pub(crate) struct Options {
    pub(crate) bind: String,
    pub(crate) layer: String,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) poll_timeout: Duration,
    pub(crate) presence_interval: Duration,
    pub(crate) presence_ttl: Duration,
    pub(crate) metrics: bool,
    pub(crate) trusted_proxies: Vec<String>,
    /// `--history N`: messages kept per room for recovery (0: no history).
    pub(crate) history: usize,
    /// `--history-window SECS`: how long they are kept (0: no history).
    pub(crate) history_window: Duration,
    /// `--django-sessions`: who a client is comes from a Django site's session.
    pub(crate) django_logins: Option<django::DjangoLogins>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bind: std::env::var("CHANNELS_BIND").unwrap_or_else(|_| "127.0.0.1:8000".into()),
            layer: channels::layers::url_from_env("memory://"),
            allowed_origins: Vec::new(),
            poll_timeout: Duration::from_secs(60),
            presence_interval: PresenceConfig::default().get_interval(),
            presence_ttl: PresenceConfig::default().get_ttl(),
            metrics: true,
            trusted_proxies: Vec::new(),
            django_logins: None,
            history: 100,
            history_window: Duration::from_secs(300),
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: chat [--bind ADDR] [--layer URL] [--allowed-origin HOST]... [--poll-timeout SECS]\n\
         \x20           [--presence-interval MS] [--presence-ttl SECS] [--metrics on|off]\n\
         \x20           [--history N] [--history-window SECS] [--trusted-proxy ADDR]...\n\
         \x20           [--django-sessions URL [--django-login-required]]\n\
         \n  --bind ADDR              listen address (default 127.0.0.1:8000, env CHANNELS_BIND)\
         \n  --layer URL              channel layer (default memory://, env CHANNELS_LAYER)\
         \n  --allowed-origin HOST    also accept browser pages from HOST (repeatable)\
         \n  --poll-timeout SECS      drop polling clients silent this long (default 60)\
         \n  --presence-interval MS   collect presence changes this long per diff (default 100)\
         \n  --presence-ttl SECS      a dead process leaves the views within this (default 30)\
         \n  --metrics on|off         count metrics and serve them at GET /metrics (default on)\
         \n  --trusted-proxy ADDR     take client addresses from X-Forwarded-For on connections\
         \n                           from ADDR (an address or a network; repeatable; none by default)\
         \n  --history N              messages kept per room for ?since= recovery (default 100; 0: off)\
         \n  --history-window SECS    how long they are kept (default 300; 0: off)\
         \n  --django-sessions URL    share a Django site's logins (env CHANNELS_DJANGO_SESSIONS; needs\
         \n                           DJANGO_SECRET_KEY): sqlite:///ABSOLUTE/PATH/db.sqlite3,\
         \n                           postgresql://USER[:PW]@HOST:PORT/DB, signed-cookies:DATABASE_URL,\
         \n                           redis://HOST:PORT/DB?key_prefix=&version=1 (users from\
         \n                           DJANGO_DATABASE_URL) or cached-db:REDIS_URL,DATABASE_URL\
         \n  --django-login-required  refuse clients not logged in to Django with 403"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut options = Options::default();
    let mut django_sessions = std::env::var("CHANNELS_DJANGO_SESSIONS").ok().filter(|url| !url.is_empty());
    let mut django_login_required = false;
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
            "--presence-interval" => match value().parse::<u64>() {
                Ok(ms) if ms <= 60_000 => options.presence_interval = Duration::from_millis(ms),
                _ => usage(),
            },
            "--history" => match value().parse::<usize>() {
                Ok(n) if n <= 1_000_000 => options.history = n,
                _ => usage(),
            },
            "--history-window" => match value().parse::<u64>() {
                Ok(secs) if secs <= 30 * 24 * 3600 => options.history_window = Duration::from_secs(secs),
                _ => usage(),
            },
            "--django-sessions" => django_sessions = Some(value()),
            "--django-login-required" if inline.is_none() => django_login_required = true,
            "--trusted-proxy" => options.trusted_proxies.push(value()),
            "--metrics" => match value().as_str() {
                "on" => options.metrics = true,
                "off" => options.metrics = false,
                _ => usage(),
            },
            "--presence-ttl" => match value().parse::<u64>() {
                Ok(secs) if (1..=3600).contains(&secs) => options.presence_ttl = Duration::from_secs(secs),
                _ => usage(),
            },
            _ => usage(),
        }
    }
    options.django_logins = django::from_options(django_sessions.as_deref(), django_login_required);
    if let Err(e) = TrustedProxies::new(&options.trusted_proxies) {
        eprintln!("chat: --trusted-proxy: {e}");
        std::process::exit(2);
    }
    options
}

/// The chat's presence service on `layer`.
pub(crate) fn presence(layer: Arc<dyn channels::layers::ChannelLayer>, options: &Options) -> Presence {
    let config = PresenceConfig::default()
        .interval(options.presence_interval)
        .ttl(options.presence_ttl)
        .events(ChatPresenceEvents);
    Presence::with_config(layer, config)
}

/// `layer` with the rooms' history, unless turned off or the layer keeps none: every send to
/// a `chat_` group then gets its position.
fn with_history(
    layer: Arc<dyn channels::layers::ChannelLayer>,
    options: &Options,
) -> (Arc<dyn channels::layers::ChannelLayer>, ChatHistory) {
    if options.history == 0 || options.history_window.is_zero() {
        return (layer, None);
    }
    let history_options = HistoryOptions::new(options.history, options.history_window);
    match HistoryLayer::wrap(layer.clone(), history_options, |group| group.starts_with("chat_")) {
        Some(wrapped) => {
            // A message sent again with its ID (by a client that could not tell whether the
            // first went through) is stored and delivered once.
            let wrapped = wrapped.dedupe_by(|_group, message| {
                if message.message_type() != "chat.message" {
                    return None;
                }
                let id = message.get_str("id")?;
                Some(format!("{id}:{}", message.get_str("user")?))
            });
            let history = wrapped.history();
            (Arc::new(wrapped), Some(history))
        }
        None => {
            tracing::warn!("this channel layer keeps no history: ?since= recovery is off");
            (layer, None)
        }
    }
}

/// The chat application, on any layer.
pub(crate) fn app(
    layer: Arc<dyn channels::layers::ChannelLayer>,
    presence: Presence,
    bind: Option<SocketAddr>,
    options: &Options,
) -> Application {
    let extra_origins = &options.allowed_origins;
    let (layer, history) = with_history(layer, options);
    let polls = transports::PollClients::new(presence.clone(), options.poll_timeout, history.clone());
    tokio::spawn(polls.clone().sweep_forever(layer.clone()));
    let html = include_str!("index.html");
    let (ws_presence, sse_presence) = (presence.clone(), presence);
    let metrics = options.metrics.then(Metrics::new);
    let (ws_history, sse_history) = (history.clone(), history);
    let mut router = Router::new()
        .http("/", page("text/html; charset=utf-8", html))
        .http("/home/", page("text/html; charset=utf-8", html))
        .http("/static/channels.js", channels_js())
        .http("/healthz", liveness())
        .http("/readyz", readiness(Duration::from_secs(2)))
        .websocket("/ws/chat/{room}/", move |scope: &Scope| {
            ChatConsumer::new(scope, ws_presence.clone(), ws_history.clone())
        })
        .http("/chat/{room}/messages", transports::post_message)
        .http("/chat/{room}/events", move |request| polls.clone().poll(request))
        .http(
            "/chat/{room}/stream",
            http_consumer(move |scope: &Scope| {
                transports::ChatStream::new(scope, sse_presence.clone(), sse_history.clone())
            }),
        );
    if let Some(metrics) = &metrics {
        router = router.http("/metrics", metrics.handler());
    }
    let mut origins: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].map(String::from).to_vec();
    if let Some(bind) = bind {
        origins.push(bind.ip().to_string());
    }
    origins.extend_from_slice(extra_origins);
    let mut builder = Application::builder(router);
    if let Some(metrics) = metrics {
        builder = builder.metrics(metrics);
    }
    if !options.trusted_proxies.is_empty() {
        // Checked in `options`: every entry parses.
        if let Ok(proxies) = TrustedProxies::new(&options.trusted_proxies) {
            builder = builder.middleware(proxies);
        }
    }
    builder = builder.layer(layer).middleware(OriginValidator::new(origins).allow_missing_origin(true));
    if let Some(logins) = options.django_logins.clone() {
        builder = builder.middleware(logins);
    }
    builder.build()
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
    let presence = presence(layer.clone(), &options);
    let app = app(layer, presence.clone(), Some(addr), &options);
    // The URL may hold a password: it is shown redacted.
    let shown_layer = channels::layers::redact_url(&options.layer);
    tracing::info!(layer = %shown_layer, "chat is running: open http://{addr}/ in a few browser tabs");
    println!("chat: open http://{addr}/ (layer {shown_layer})");
    server.serve(app).await?;
    // The connections' entries leave the shared store now rather than by expiring.
    presence.flush().await;
    Ok(())
}
