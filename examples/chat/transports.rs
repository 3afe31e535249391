//! The chat over plain HTTP: posting, polling, long polling (seed 1.1 and 1.2) and server-sent
//! events, in the same rooms as the WebSocket users.
//!
//! - `POST /chat/{room}/messages?user=NAME`: a text body or `{"message": "..."}` → 202.
//! - `GET /chat/{room}/events?client=ID&user=NAME&wait=25`: a JSON array of the events the
//!   WebSocket sends. `wait=0` answers at once (polling); otherwise the request is held until an
//!   event arrives or `wait` seconds pass (long polling). Each client ID has its own layer
//!   channel in the room's group: the seed's "one queue per user". Its first answer holds the
//!   `chat.presence` snapshot. A client that stops polling is dropped after the poll timeout
//!   and leaves the room's presence; `DELETE` on the same URL leaves at once.
//! - With metrics on, a held poll counts as an open `long-poll` connection on its route, each
//!   event it answers with as a message sent, and each post as a message received on
//!   `long-poll` (the HTTP clients post whichever way they read).
//! - `GET /chat/{room}/stream?user=NAME`: server-sent events, one `data:` line per event, with
//!   an `id: EPOCH:OFFSET` line on each positioned `chat.message`.
//! - `?since=EPOCH:OFFSET` on the events and stream URLs (and SSE's `Last-Event-ID`, which wins
//!   over it): the missed messages, or `chat.unrecovered`, before the live ones. On the events
//!   URL it counts for a client ID new to this server only (a known one has its queue).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use channels::http::{HttpRequest, HttpResponse, json, response};
use channels::http_consumer::{HttpConsumer, HttpContext};
use channels::layers::{Admit, ChannelLayer, Message, StreamCursor};
use channels::metrics::Transport;
use channels::middleware::StatusCode;
use channels::prelude::*;
use tokio::time::Instant;

use channels::presence::Presence;

use super::recovery::{self, ChatHistory};
use super::{ChatEvent, Inbound, MAX_TEXT_CHARS, message_id, now, user_name, valid_room};

/// Longest wait a long poll may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Most events one poll answer carries.
const MAX_BATCH: usize = 200;
/// How long a new client's first poll waits for its presence snapshot, whatever its `wait`.
const FIRST_WAIT: Duration = Duration::from_secs(2);

fn error(status: StatusCode, message: &str) -> HttpResponse {
    json(status, &serde_json::json!({ "error": message }))
}

fn layer_of(request: &HttpRequest) -> Option<Arc<dyn ChannelLayer>> {
    request.layers().default_layer().cloned()
}

/// `POST /chat/{room}/messages`.
pub(crate) async fn post_message(request: HttpRequest) -> HttpResponse {
    if request.scope.method() != http::Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    // Every post is a message from a client, as every WebSocket data frame is, valid or not.
    if let Some(metrics) = request.metrics() {
        metrics.count_received(Transport::LongPoll, 1, request.body.len() as u64);
    }
    let room = request.scope.param("room").unwrap_or_default().to_owned();
    if !valid_room(&room) {
        return error(StatusCode::BAD_REQUEST, "room names are 1-50 letters, digits, '-', '_' or '.'");
    }
    let Ok(body) = std::str::from_utf8(&request.body) else {
        return error(StatusCode::BAD_REQUEST, "the body must be UTF-8 text");
    };
    let (text, id) = if body.trim_start().starts_with('{') {
        match serde_json::from_str::<Inbound>(body) {
            Ok(inbound) => (inbound.message, inbound.id),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("malformed JSON: {e}")),
        }
    } else {
        (body.to_owned(), None)
    };
    let id = match message_id(id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let text = text.trim();
    if text.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the message is empty");
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return error(StatusCode::PAYLOAD_TOO_LARGE, &format!("messages are limited to {MAX_TEXT_CHARS} characters"));
    }
    let Some(layer) = layer_of(&request) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no channel layer");
    };
    let event = ChatEvent::Message {
        user: user_name(&request.scope),
        text: text.to_owned(),
        ts: now(),
        epoch: None,
        offset: None,
        id,
    };
    // With history on, the layer stores the message and gives it its position.
    let sent = match Message::new(&event) {
        Ok(message) => layer.group_send(&format!("chat_{room}"), message).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match sent {
        Ok(_) => json(StatusCode::ACCEPTED, &serde_json::json!({ "ok": true })),
        Err(e) => {
            tracing::warn!(error = %e, "could not send a posted message");
            error(StatusCode::SERVICE_UNAVAILABLE, "message not delivered: the server cannot reach its channel layer")
        }
    }
}

/// A polling client: its queue (a layer channel in the room's group) outlives its requests.
struct PollClient {
    channel: String,
    room: String,
    last_seen: Instant,
    polling: usize,
    /// Delivers the room's messages once and in order (with history on).
    cursor: Option<StreamCursor>,
    /// Replayed events not answered yet.
    replayed: Vec<serde_json::Value>,
}

/// The polling clients of this process, by (room, client ID).
#[derive(Clone)]
pub(crate) struct PollClients {
    clients: Arc<Mutex<HashMap<(String, String), PollClient>>>,
    presence: Presence,
    timeout: Duration,
    history: ChatHistory,
}

fn valid_client_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

impl PollClients {
    pub(crate) fn new(presence: Presence, timeout: Duration, history: ChatHistory) -> Self {
        Self { clients: Arc::default(), presence, timeout, history }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), PollClient>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET /chat/{room}/events` polls; `DELETE` leaves the room at once.
    pub(crate) async fn poll(self, request: HttpRequest) -> HttpResponse {
        let method = request.scope.method().clone();
        if method != http::Method::GET && method != http::Method::DELETE {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use GET to poll or DELETE to leave");
        }
        let room = request.scope.param("room").unwrap_or_default().to_owned();
        if !valid_room(&room) {
            return error(StatusCode::BAD_REQUEST, "room names are 1-50 letters, digits, '-', '_' or '.'");
        }
        let Some(client) = request.scope.query_param("client").filter(|c| valid_client_id(c)) else {
            return error(StatusCode::BAD_REQUEST, "?client=ID is required: 1-64 letters, digits, '-' or '_'");
        };
        let wait = match request.scope.query_param("wait").map(|w| w.parse::<f64>()) {
            None => Duration::from_secs(25),
            Some(Ok(w)) if w.is_finite() && w >= 0.0 => Duration::from_secs_f64(w).min(MAX_WAIT),
            Some(_) => return error(StatusCode::BAD_REQUEST, "?wait= must be a number of seconds"),
        };
        let Some(layer) = layer_of(&request) else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "no channel layer");
        };
        let since = match recovery::since_of(&request.scope, false) {
            Ok(since) => since,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        let key = (room.clone(), client);
        if method == http::Method::DELETE {
            let removed = self.lock().remove(&key);
            return match removed {
                Some(client) => {
                    Box::pin(self.drop_client(&*layer, client)).await;
                    json(StatusCode::OK, &serde_json::json!({ "ok": true }))
                }
                None => error(StatusCode::NOT_FOUND, "no such client in this room"),
            };
        }
        let existing = {
            let mut clients = self.lock();
            clients.get_mut(&key).map(|c| {
                c.polling += 1;
                c.channel.clone()
            })
        };
        let (channel, wait, new_client) = match existing {
            Some(channel) => (channel, wait, false),
            // Boxed, as is `drop_client` above: both are rare, and a held poll's future would
            // otherwise keep room for them while it waits.
            None => match Box::pin(self.register(&layer, &key, user_name(&request.scope), since)).await {
                Ok(channel) => {
                    if let Some(c) = self.lock().get_mut(&key) {
                        c.polling += 1;
                    }
                    (channel, wait.max(FIRST_WAIT), true)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not register a polling client");
                    return error(StatusCode::SERVICE_UNAVAILABLE, "the server cannot reach its channel layer");
                }
            },
        };
        // Counts the poll as finished even when the client hangs up mid-wait and this future
        // is dropped, so the sweep can still time the client out.
        let _polling = PollGuard { clients: &self, key: &key };
        // A held poll is an open long-poll connection in the metrics, until it answers.
        let _open = request.open_connection(Transport::LongPoll);
        let (mut events, mut cursor) = {
            let mut clients = self.lock();
            match clients.get_mut(&key) {
                Some(c) => (std::mem::take(&mut c.replayed), c.cursor.take()),
                None => (Vec::new(), None),
            }
        };
        // Replayed events answer at once (a new client's still waits for its presence snapshot).
        let wait = if events.is_empty() || new_client { wait } else { Duration::ZERO };
        let mut live = Live { history: &self.history, group: &format!("chat_{}", key.0), cursor: &mut cursor };
        collect(&*layer, &channel, wait, new_client, &mut events, &mut live).await;
        if let Some(c) = self.lock().get_mut(&key) {
            c.cursor = cursor;
        }
        let body = match serde_json::to_vec(&events) {
            Ok(body) => body,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("could not encode the events: {e}")),
        };
        // Each event is a message to the client, as each is a frame on a WebSocket.
        if let Some(metrics) = request.metrics() {
            metrics.count_sent(Transport::LongPoll, events.len() as u64, body.len() as u64);
        }
        response(StatusCode::OK, "application/json", body)
    }

    /// A new client: its channel joins the room and tracks the user in the room's presence,
    /// which sends the channel the presence snapshot first.
    async fn register(
        &self,
        layer: &Arc<dyn ChannelLayer>,
        key: &(String, String),
        user: String,
        since: Option<channels::layers::StreamPosition>,
    ) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let (room, _) = key;
        let group = format!("chat_{room}");
        let channel = layer.new_channel("specific").await?;
        layer.group_add(&group, &channel).await?;
        let (cursor, mut replayed) = match since {
            Some(since) => {
                let replay = recovery::replay(&self.history, &group, &since).await;
                (replay.cursor, replay.messages)
            }
            None => (recovery::start(&self.history, &group).await, Vec::new()),
        };
        let replayed = replayed.drain(..).filter_map(|m| m.decode::<serde_json::Value>().ok()).collect();
        self.presence.track(&group, &channel, user, serde_json::Value::Null)?;
        let client = PollClient {
            channel: channel.clone(),
            room: room.clone(),
            last_seen: Instant::now(),
            polling: 0,
            cursor,
            replayed,
        };
        self.lock().insert(key.clone(), client);
        Ok(channel)
    }

    /// Drops clients that stopped polling, taking each out of its room's presence. Runs until
    /// the process ends.
    pub(crate) async fn sweep_forever(self, layer: Arc<dyn ChannelLayer>) {
        let mut tick = tokio::time::interval((self.timeout / 4).max(Duration::from_millis(100)));
        loop {
            tick.tick().await;
            let gone: Vec<PollClient> = {
                let mut clients = self.lock();
                let expired: Vec<(String, String)> = clients
                    .iter()
                    .filter(|(_, c)| c.polling == 0 && c.last_seen.elapsed() > self.timeout)
                    .map(|(k, _)| k.clone())
                    .collect();
                expired.iter().filter_map(|k| clients.remove(k)).collect()
            };
            for client in gone {
                self.drop_client(&*layer, client).await;
            }
        }
    }

    /// Takes a client's channel out of its room and its presence.
    async fn drop_client(&self, layer: &dyn ChannelLayer, client: PollClient) {
        let group = format!("chat_{}", client.room);
        self.presence.untrack(&group, &client.channel);
        let _ = layer.group_discard(&group, &client.channel).await;
        layer.forget_channel(&client.channel).await;
    }
}

/// Marks the end of one poll when dropped.
struct PollGuard<'a> {
    clients: &'a PollClients,
    key: &'a (String, String),
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.clients.lock().get_mut(self.key) {
            c.polling = c.polling.saturating_sub(1);
            c.last_seen = Instant::now();
        }
    }
}

/// A polling client's room and cursor, for one poll.
struct Live<'a> {
    history: &'a ChatHistory,
    group: &'a str,
    cursor: &'a mut Option<StreamCursor>,
}

/// The first event (waiting up to `wait`), then whatever else is already there. For a new
/// client (`snapshot`), every event up to its presence snapshot: room messages may reach its
/// channel before the snapshot does, and its first answer must hold the snapshot.
async fn collect(
    layer: &dyn ChannelLayer,
    channel: &str,
    wait: Duration,
    snapshot: bool,
    events: &mut Vec<serde_json::Value>,
    live: &mut Live<'_>,
) {
    let deadline = Instant::now() + wait;
    let mut awaiting_snapshot = snapshot;
    while events.len() < MAX_BATCH {
        // Receives are cancel-safe: a timeout here loses nothing.
        let until = if events.is_empty() || awaiting_snapshot { deadline } else { Instant::now() };
        match tokio::time::timeout_at(until, layer.receive(channel)).await {
            Ok(Ok(message)) => {
                awaiting_snapshot &= message.message_type() != "chat.presence";
                let messages = match recovery::admit(live.cursor, &message) {
                    Admit::Deliver => vec![message],
                    Admit::Duplicate => Vec::new(),
                    Admit::Gap => recovery::fill(live.history, live.cursor, live.group, &message).await,
                };
                for message in messages {
                    if let Ok(event) = message.decode::<ChatEvent>() {
                        events.push(serde_json::to_value(event).unwrap_or_default());
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "poll receive failed");
                break;
            }
            Err(_) => break,
        }
    }
}

/// `GET /chat/{room}/stream`: server-sent events.
pub(crate) struct ChatStream {
    room: String,
    user: String,
    presence: Presence,
    history: ChatHistory,
    cursor: Option<StreamCursor>,
}

impl ChatStream {
    pub(crate) fn new(scope: &Scope, presence: Presence, history: ChatHistory) -> Self {
        let room = scope.param("room").unwrap_or_default().to_owned();
        Self { room, user: user_name(scope), presence, history, cursor: None }
    }
}

/// One server-sent event: `id: EPOCH:OFFSET` for a positioned chat message, then its data.
fn sse_event(event: &serde_json::Value) -> String {
    let mut out = String::new();
    if let (Some(epoch), Some(offset)) = (event["epoch"].as_str(), event["offset"].as_u64()) {
        out.push_str(&format!("id: {epoch}:{offset}\n"));
    }
    out.push_str(&format!("data: {event}\n\n"));
    out
}

const KEEPALIVE: Duration = Duration::from_secs(20);

impl HttpConsumer for ChatStream {
    type Event = ChatEvent;

    fn groups(&self) -> Vec<String> {
        if valid_room(&self.room) { vec![format!("chat_{}", self.room)] } else { Vec::new() }
    }

    async fn handle(&mut self, ctx: &mut HttpContext) -> HandlerResult {
        if !valid_room(&self.room) {
            ctx.send_json(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": "invalid room name" }))?;
            return Ok(());
        }
        let since = match recovery::since_of(ctx.scope(), true) {
            Ok(since) => since,
            Err(e) => {
                ctx.send_json(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": e }))?;
                return Ok(());
            }
        };
        ctx.send_headers(StatusCode::OK, &[("content-type", "text/event-stream"), ("x-accel-buffering", "no")]).await?;
        let group = format!("chat_{}", self.room);
        if let Some(since) = since {
            // The stream joined the room before `handle`: what it missed, then the live events.
            let replay = recovery::replay(&self.history, &group, &since).await;
            self.cursor = replay.cursor;
            let mut body = String::new();
            for message in &replay.messages {
                body.push_str(&sse_event(&message.decode::<serde_json::Value>()?));
            }
            if !body.is_empty() {
                ctx.send_body(body, true).await?;
            }
        } else {
            self.cursor = recovery::start(&self.history, &group).await;
        }
        // The presence snapshot, then diffs, arrive as events on this stream's channel.
        let channel = ctx.channel_name().ok_or("the chat needs a channel layer")?;
        self.presence.track(format!("chat_{}", self.room), channel, self.user.as_str(), serde_json::Value::Null)?;
        ctx.set_timeout(KEEPALIVE);
        Ok(())
    }

    async fn event(&mut self, ctx: &mut HttpContext, event: ChatEvent) -> HandlerResult {
        match recovery::admit_event(&mut self.cursor, &event) {
            Admit::Deliver => ctx.send_body(sse_event(&serde_json::to_value(&event)?), true).await?,
            Admit::Duplicate => {}
            Admit::Gap => {
                let group = format!("chat_{}", self.room);
                let mut body = String::new();
                for m in recovery::fill(&self.history, &mut self.cursor, &group, &Message::new(&event)?).await {
                    body.push_str(&sse_event(&m.decode::<serde_json::Value>()?));
                }
                ctx.send_body(body, true).await?;
            }
        }
        Ok(())
    }

    async fn timeout(&mut self, ctx: &mut HttpContext) -> HandlerResult {
        // A comment line keeps proxies from closing an idle stream.
        ctx.send_body(": keepalive\n\n", true).await?;
        ctx.set_timeout(KEEPALIVE);
        Ok(())
    }

    async fn disconnect(&mut self, ctx: &mut HttpContext) -> HandlerResult {
        if let Some(channel) = ctx.channel_name() {
            self.presence.untrack(&format!("chat_{}", self.room), channel);
        }
        Ok(())
    }
}
