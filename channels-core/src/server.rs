//! The server: accepts TCP connections and serves an [`Application`] over HTTP/1.1 and WebSocket.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, ToSocketAddrs};

use crate::application::Application;

/// Serves an [`Application`] on a TCP listener until a shutdown signal.
///
/// On SIGINT/SIGTERM (or the future given to [`serve_with_shutdown`](Self::serve_with_shutdown))
/// it stops accepting, closes every WebSocket with 1001 ("going away"), runs every
/// `disconnect` hook and waits for them up to [`AppLimits::shutdown_timeout`](crate::AppLimits).
///
/// A channel layer that cannot be reached does not stop the server from starting: Redis may
/// be restarting, and connections work again once it answers. Instead each such layer gets one
/// warning at start-up (from [`Application::unreachable_layers`]), and meanwhile the WebSocket
/// handshakes that need it are refused with 503.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    header_read_timeout: Duration,
}

impl Server {
    /// Binds a listener.
    ///
    /// # Errors
    /// The bind's error (the address is taken, say), with its kind, naming the address.
    pub async fn bind(addr: impl ToSocketAddrs + fmt::Debug) -> io::Result<Self> {
        let named = format!("{addr:?}");
        match TcpListener::bind(addr).await {
            Ok(listener) => Ok(Self::from_listener(listener)),
            Err(e) => Err(io::Error::new(e.kind(), format!("could not bind {named}: {e}"))),
        }
    }

    /// Serves on a listener you bound yourself.
    pub fn from_listener(listener: TcpListener) -> Self {
        Self { listener, header_read_timeout: Duration::from_secs(10) }
    }

    /// How long a client may take to send its request headers (the handshake timeout).
    /// Default 10 s.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn serve(self, app: Application) -> io::Result<()> {
        self.serve_with_shutdown(app, shutdown_signal()).await
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn serve_with_shutdown(
        self,
        app: Application,
        signal: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        tokio::pin!(signal);
        let checked = app.clone();
        tokio::spawn(async move {
            for (alias, error) in checked.unreachable_layers().await {
                tracing::warn!(
                    %error,
                    "channel layer {alias:?} cannot be reached; WebSocket handshakes that need it are refused with 503 until it answers"
                );
            }
        });
        loop {
            let (stream, client) = tokio::select! {
                () = &mut signal => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning or dying.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let server = stream.local_addr().ok();
            let service = app.service(Some(client), server);
            let shutdown = app.shutdown_token().clone();
            let header_read_timeout = self.header_read_timeout;
            tokio::spawn(async move {
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                tokio::pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    () = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%client, error = %e, "http connection ended with an error");
                }
            });
        }
        drop(self.listener);
        tracing::info!(open = app.open_connections(), "shutting down: closing websockets with 1001");
        let left = app.shutdown().await;
        if left > 0 {
            tracing::warn!(left, "shutdown timeout reached with connections still open");
        }
        Ok(())
    }
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
