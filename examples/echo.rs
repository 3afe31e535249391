//! Echo: the seed's single-connection consumer.
//!
//! Run it with `cargo run --example echo` and open <http://127.0.0.1:8001/>, or point any
//! WebSocket client (a protocol conformance suite, say) at `ws://127.0.0.1:8001/ws/echo/`.
//!
//! What it shows:
//! - a consumer that talks only to its own client (no channel layer needed);
//! - exact echo of text and binary frames, up to 16 MiB on this route (per-route limits);
//! - an optional greeting pushed on connect (`--greeting TEXT`);
//! - the close word: sending `关闭` (or `/close`) makes the server close the connection cleanly.

use channels::http::page;
use channels::prelude::*;
use channels::routing::websocket;

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>echo</title>
<style>body{font:15px system-ui,sans-serif;max-width:40rem;margin:2rem auto}#log{border:1px solid #ccc;height:20rem;overflow:auto;padding:.5rem;white-space:pre-wrap}</style>
</head><body>
<h1>Echo</h1>
<div id="log"></div>
<form id="form"><input id="text" autocomplete="off" placeholder="say something (关闭 closes)" autofocus> <button>send</button></form>
<script>
const log = document.getElementById("log");
function show(line) { const div = document.createElement("div"); div.textContent = line; log.appendChild(div); log.scrollTop = log.scrollHeight; }
const socket = new WebSocket(`ws://${location.host}/ws/echo/`);
socket.onopen = () => show("[connected]");
socket.onmessage = (event) => show(event.data);
socket.onclose = (event) => show(`[disconnected ${event.code}]`);
document.getElementById("form").onsubmit = (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  if (input.value) socket.send(input.value);
  input.value = "";
};
</script></body></html>"#;

struct Echo {
    greeting: Option<String>,
}

impl WebsocketConsumer for Echo {
    type Event = NoEvents;

    async fn connect(&mut self, ctx: &mut WebsocketContext) -> HandlerResult {
        ctx.accept();
        if let Some(greeting) = &self.greeting {
            ctx.send_text(greeting.clone()).await?;
        }
        Ok(())
    }

    async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
        match frame {
            Frame::Text(text) if matches!(text.as_str(), "关闭" | "/close") => ctx.close(close_code::NORMAL).await?,
            Frame::Text(text) => ctx.send_text(text).await?,
            Frame::Binary(data) => ctx.send_binary(data).await?,
        }
        Ok(())
    }
}

fn usage() -> ! {
    eprintln!("usage: echo [--bind ADDR] [--greeting TEXT]\n  --bind ADDR  default 127.0.0.1:8001 (env CHANNELS_BIND)");
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let mut bind = std::env::var("CHANNELS_BIND").unwrap_or_else(|_| "127.0.0.1:8001".into());
    let mut greeting = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bind" => bind = args.next().unwrap_or_else(|| usage()),
            "--greeting" => greeting = Some(args.next().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    let route = websocket(move |_: &Scope| Echo { greeting: greeting.clone() })
        .limits(WebsocketLimits::default().max_message_size(16 << 20));
    let router = Router::new().http("/", page("text/html; charset=utf-8", PAGE)).route("/ws/echo/", route);
    let app = Application::builder(router).build();
    let server = Server::bind(&bind).await?;
    println!("echo: open http://{}/ (websocket at /ws/echo/)", server.local_addr()?);
    server.serve(app).await?;
    Ok(())
}
