//! Graceful shutdown at scale: a chat process on Redis with thousands of connections in one
//! room exits within its grace period on SIGTERM and leaves no membership behind.
//!
//! To measure other sizes: `SHUTDOWN_CLIENTS=5000 SHUTDOWN_JOIN_BATCH=10 cargo test --test
//! shutdown_redis_e2e -- --nocapture` (the join and shutdown times are printed). Filling the
//! room is most of the test's time (about 2 s for 2,000 on 2 cores, debug build; the chat's
//! presence tells the room who joined in one diff per interval, not one message per join).

mod support;

use std::time::{Duration, Instant};

use channels::redis::testing::RedisServer;
use support::Example;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections in the room: enough for the shutdown to be a bulk operation, few enough for CI.
const CLIENTS: usize = 2_000;
/// The chat example's shutdown grace period is 10 s; shutting down this many connections
/// should take half of it at most.
const GRACE: Duration = Duration::from_secs(5);
/// Clients connecting at once while the room fills.
const JOIN_BATCH: usize = 100;

/// A WebSocket client that costs next to nothing: it discards every frame the server sends
/// without decoding it, and answers the server's close frame, as a browser does.
struct LeanClient {
    stream: TcpStream,
}

impl LeanClient {
    /// Opens `path` on `addr` and waits for the 101 answer.
    async fn connect(addr: std::net::SocketAddr, path: String) -> std::io::Result<LeanClient> {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        // The answer's head, byte by byte: the frames behind it are the reader's.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = stream.read_u8().await?;
            head.push(byte);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err(std::io::Error::other(String::from_utf8_lossy(&head).into_owned()));
        }
        Ok(LeanClient { stream })
    }

    /// Reads until the server closes: skips data frames, answers the close frame, then waits
    /// for the server to hang up. Returns whether a close frame came.
    async fn read_until_closed(mut self) -> bool {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        let mut skip: usize = 0;
        loop {
            let n = match self.stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            let mut bytes = &buffer[..n];
            let consumed = skip.min(bytes.len());
            skip -= consumed;
            bytes = &bytes[consumed..];
            pending.extend_from_slice(bytes);
            while skip == 0 {
                let Some((opcode, header, payload)) = frame_header(&pending) else { break };
                if opcode == 0x8 {
                    // A masked, empty close frame: the reply RFC 6455 asks for.
                    let _ = self.stream.write_all(&[0x88, 0x80, 0, 0, 0, 0]).await;
                    let _ = self.stream.read_to_end(&mut Vec::new()).await;
                    return true;
                }
                let available = pending.len() - header;
                if available >= payload {
                    pending.drain(..header + payload);
                } else {
                    skip = payload - available;
                    pending.clear();
                }
            }
        }
    }
}

/// A server frame's opcode, header length and payload length, once its header is complete.
fn frame_header(bytes: &[u8]) -> Option<(u8, usize, usize)> {
    let (&first, &second) = (bytes.first()?, bytes.get(1)?);
    let opcode = first & 0x0f;
    match second & 0x7f {
        126 => Some((opcode, 4, u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize)),
        127 => {
            let length: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
            Some((opcode, 10, u64::from_be_bytes(length) as usize))
        }
        short => Some((opcode, 2, short as usize)),
    }
}

fn members(redis: &RedisServer, group_key: &str) -> usize {
    redis.cli(&["ZCARD", group_key]).trim().parse().unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_thousands_in_one_room_exits_within_the_grace_period_and_leaves_no_membership() {
    let clients: usize = std::env::var("SHUTDOWN_CLIENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(CLIENTS);
    let redis = RedisServer::start();
    let mut chat = Example::start("chat", &["--layer", &redis.url()]);
    let group_key = "asgi:group:chat_room0";

    let started = Instant::now();
    let mut readers = Vec::with_capacity(clients);
    let join_batch: usize =
        std::env::var("SHUTDOWN_JOIN_BATCH").ok().and_then(|n| n.parse().ok()).unwrap_or(JOIN_BATCH);
    for batch in (0..clients).collect::<Vec<_>>().chunks(join_batch) {
        let connecting = batch.iter().map(|i| LeanClient::connect(chat.addr, format!("/ws/chat/room0/?user=u{i}")));
        for client in futures_util::future::join_all(connecting).await {
            readers.push(tokio::spawn(client.expect("connect").read_until_closed()));
        }
    }
    let joined = Instant::now();
    while members(&redis, group_key) < clients {
        assert!(joined.elapsed() < Duration::from_secs(30), "only {} members", members(&redis, group_key));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{clients} clients joined in {:?}", started.elapsed());

    let signalled = Instant::now();
    let exited = tokio::task::spawn_blocking(move || {
        let exited = chat.terminate_within(Duration::from_secs(30));
        (exited, chat)
    });
    let (exited, chat) = exited.await.expect("wait for the chat process");
    let took = signalled.elapsed();
    let log = chat.log.lock().map(|log| log.clone()).unwrap_or_default();
    eprintln!("shutdown took {took:?}; {} members left", members(&redis, group_key));
    assert!(exited, "the chat process exited cleanly within 30 s\n{log}");
    assert!(took <= GRACE, "shutdown took {took:?}\n{log}");
    assert_eq!(members(&redis, group_key), 0, "memberships left in Redis\n{log}");
    for failure in ["disconnect handler failed", "could not leave", "connections still open"] {
        assert!(!log.contains(failure), "{failure:?} in the log\n{log}");
    }
    let closed = futures_util::future::join_all(readers).await.into_iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(closed, clients, "every client got a close frame");
}
