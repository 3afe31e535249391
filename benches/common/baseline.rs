//! The baseline: the group chat someone would write by hand with tokio and tokio-tungstenite.
//!
//! One `tokio::sync::broadcast` channel per room, a 4 KiB read buffer, and one task per socket
//! that forwards what the client sends (as the chat protocol's `chat.message` JSON) to the room
//! and what the room says to the client. No presence, no join/leave events, no limits.
//!
//! The benchmark binaries run it in a child process (`BENCH_BINARY --baseline-server`), so it
//! is measured exactly like the chat example. It prints `baseline: open http://ADDR/` first and
//! exits when its stdin closes (the benchmark is gone) or after an hour at most.
//!
//! With [`FLAG_BATCHED`] instead, each socket task writes every room message already waiting
//! (up to [`BATCH`]) with `feed` and flushes once, so a burst costs one `sendto` instead of one
//! per message: what a hand-written server with write batching does, and the practical limit.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The argument that makes a benchmark binary run the baseline server instead.
pub const FLAG: &str = "--baseline-server";

/// The argument that makes a benchmark binary run the batched baseline server instead.
pub const FLAG_BATCHED: &str = "--baseline-server-batched";

/// Most room messages the batched baseline writes before one flush (as many as the chat
/// server's burst).
pub const BATCH: usize = 64;

/// Messages a room buffers for its slowest member before that member starts losing them.
const ROOM_CAPACITY: usize = 1024;

type Rooms = Arc<Mutex<HashMap<String, broadcast::Sender<String>>>>;

/// If this process was started with [`FLAG`] or [`FLAG_BATCHED`], serves until stdin closes
/// and returns true. Otherwise, if it was started with the framework bench server's flag, runs
/// that one (see [`super::framework`]).
pub fn run_if_requested() -> bool {
    if super::framework::run_if_requested() {
        return true;
    }
    let batched = std::env::args().any(|arg| arg == FLAG_BATCHED);
    if !batched && !std::env::args().any(|arg| arg == FLAG) {
        return false;
    }
    super::exit_with_parent();
    // What `#[tokio::main]` does: the multi-threaded runtime, one worker per available CPU.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = runtime.block_on(serve(batched)) {
        eprintln!("baseline: {e}");
        std::process::exit(1);
    }
    true
}

async fn serve(batched: bool) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let name = if batched { "baseline-batched" } else { "baseline" };
    println!("{name}: open http://{}/", listener.local_addr()?);
    std::io::stdout().flush()?;
    let rooms = Rooms::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, rooms.clone(), batched));
    }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, rooms: Rooms, batched: bool) {
    let mut target = String::new();
    let remember_path = |request: &Request, response: Response| {
        target = request.uri().to_string();
        Ok(response)
    };
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, remember_path, Some(config)).await else {
        return;
    };
    // `/ws/chat/{room}/?user=NAME`
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let room = path.trim_start_matches("/ws/chat/").trim_end_matches('/').to_owned();
    let user = query.split('&').find_map(|pair| pair.strip_prefix("user=")).unwrap_or("guest").to_owned();

    let (room_tx, mut room_rx) = {
        let mut rooms = rooms.lock().unwrap_or_else(|p| p.into_inner());
        let tx = rooms.entry(room.clone()).or_insert_with(|| broadcast::channel(ROOM_CAPACITY).0);
        (tx.clone(), tx.subscribe())
    };
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let event = serde_json::json!({
                        "type": "chat.message", "user": user, "text": text.as_str(), "ts": now()
                    });
                    let _ = room_tx.send(event.to_string());
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            event = room_rx.recv() => match event {
                Ok(text) if batched => {
                    if write_batch(&mut ws, &mut room_rx, text, &room).await.is_err() {
                        break;
                    }
                }
                Ok(text) => {
                    if ws.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(lost)) => {
                    eprintln!("baseline: a client of room {room} lagged and lost {lost} messages");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    drop(room_rx);
    let mut rooms = rooms.lock().unwrap_or_else(|p| p.into_inner());
    if room_tx.receiver_count() == 0 {
        rooms.remove(&room);
    }
}

/// Writes `first` and every room message already waiting (up to [`BATCH`]) into the socket's
/// buffer, then flushes once.
async fn write_batch(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    room_rx: &mut broadcast::Receiver<String>,
    first: String,
    room: &str,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.feed(Message::text(first)).await?;
    for _ in 1..BATCH {
        match room_rx.try_recv() {
            Ok(text) => ws.feed(Message::text(text)).await?,
            Err(broadcast::error::TryRecvError::Lagged(lost)) => {
                eprintln!("baseline: a client of room {room} lagged and lost {lost} messages");
            }
            Err(_) => break,
        }
    }
    ws.flush().await
}
