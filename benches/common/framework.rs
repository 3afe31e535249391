//! The framework bench server: the chat example's WebSocket protocol reduced to what the
//! load generator uses, built from the same framework pieces (`Router`, `Application`,
//! `Server`, the in-memory layer from `memory://`, default `WebsocketLimits`), but
//!
//! - joining its room **silently**: no `chat.presence` to the newcomer and no `chat.join` /
//!   `chat.leave` to the room, so a room of 10,000 costs 10,000 joins, not the chat
//!   protocol's 50 million join deliveries;
//! - allowing [`MAX_CONNECTIONS`] sockets instead of the default 10,000.
//!
//! A client connects to `/ws/chat/{room}/?user=NAME`; each text frame it sends goes with
//! `group_send` to group `chat_{room}` as `{"type": "chat.message", "user", "text", "ts"}`,
//! and every member gets that event as a JSON text frame, exactly as from the chat example.
//!
//! The benchmark binaries run it in a child process (`BENCH_BINARY --framework-server`),
//! like the baseline. It prints `framework: open http://ADDR/` first and exits when its stdin
//! closes or after an hour at most.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use channels::prelude::*;
use serde::{Deserialize, Serialize};

/// The argument that makes a benchmark binary run this server instead.
pub const FLAG: &str = "--framework-server";

/// Open WebSockets the server accepts (the framework's default is 10,000).
pub const MAX_CONNECTIONS: usize = 200_000;

/// The chat example's `chat.message` event.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
enum RoomEvent {
    #[serde(rename = "chat.message")]
    Message { user: String, text: String, ts: f64 },
}

struct SilentRoom {
    group: String,
    user: String,
}

impl WebsocketConsumer for SilentRoom {
    type Event = RoomEvent;

    fn groups(&self) -> Vec<String> {
        vec![self.group.clone()]
    }

    async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
        let Some(text) = frame.as_text() else { return Ok(()) };
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
        let event = RoomEvent::Message { user: self.user.clone(), text: text.to_owned(), ts };
        ctx.group_send(&self.group, &event).await?;
        Ok(())
    }

    async fn event(&mut self, ctx: &mut WebsocketContext, event: RoomEvent) -> HandlerResult {
        ctx.send_json(&event).await?;
        Ok(())
    }
}

/// If this process was started with [`FLAG`], serves until stdin closes and returns true.
pub fn run_if_requested() -> bool {
    if !std::env::args().any(|arg| arg == FLAG) {
        return false;
    }
    super::exit_with_parent();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = runtime.block_on(serve()) {
        eprintln!("framework: {e}");
        std::process::exit(1);
    }
    true
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let layer = channels::layers::from_url("memory://")?;
    let router = Router::new().websocket("/ws/chat/{room}/", |scope: &Scope| {
        let room = scope.param("room").unwrap_or("none");
        SilentRoom {
            group: format!("chat_{room}"),
            user: scope.query_param("user").unwrap_or_else(|| "guest".to_owned()),
        }
    });
    let app =
        Application::builder(router).layer(layer).limits(AppLimits::default().max_connections(MAX_CONNECTIONS)).build();
    let server = Server::bind("127.0.0.1:0").await?;
    println!("framework: open http://{}/", server.local_addr()?);
    std::io::stdout().flush()?;
    server.serve(app).await?;
    Ok(())
}
