//! Client connections from several loopback source addresses.
//!
//! One source address can open about 28,000 connections to one server address (Linux's
//! ephemeral port range, 32768–60999), and closed connections hold their port in TIME_WAIT
//! for a minute. Connections made here bind to `127.0.0.2`, `127.0.0.3`, … in turn (all of
//! 127.0.0.0/8 is the loopback interface on Linux) before they connect, so tens of thousands
//! of sockets, and many runs in a row, never run out of ports.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A benchmark client's WebSocket.
pub type Client = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Source addresses used in turn: 127.0.0.2 to 127.0.0.(1 + SOURCES).
const SOURCES: usize = 200;

static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

/// The next source address of the rotation.
pub fn next_source() -> Ipv4Addr {
    let index = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % SOURCES;
    Ipv4Addr::new(127, 0, 0, 2 + index as u8)
}

/// Opens a benchmark client (4 KiB read buffer, `TCP_NODELAY`) to `url` on `addr`, bound to
/// the next source address, waiting at most 30 s.
pub async fn connect(addr: SocketAddr, url: &str) -> Result<Client, String> {
    within_connect_limit(async {
        let stream = tcp(addr).await?;
        let config = WebSocketConfig::default().read_buffer_size(4096);
        tokio_tungstenite::client_async_with_config(url, MaybeTlsStream::Plain(stream), Some(config))
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| format!("handshake: {e}"))
    })
    .await
}

/// A TCP connection to `addr` from the next source address, with `TCP_NODELAY`.
pub async fn tcp(addr: SocketAddr) -> Result<tokio::net::TcpStream, String> {
    let source = next_source();
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket.bind(SocketAddr::from((source, 0))).map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket.connect(addr).await.map_err(|e| format!("connect from {source}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `connecting`, given at most 30 s.
pub async fn within_connect_limit<T>(connecting: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(30), connecting).await {
        Ok(result) => result,
        Err(_) => Err("connect timed out after 30 s".into()),
    }
}
