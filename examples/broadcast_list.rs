//! Group chat, take one (seed 1.3.4): a hand-kept list of connections instead of a group.
//!
//! Run it with `cargo run --example broadcast_list` and connect several clients to
//! `ws://127.0.0.1:8002/ws/list/` (the chat example's page can't be reused: this protocol is
//! plain text in both directions).
//!
//! Every consumer puts its channel name in a shared list on connect and removes it on
//! disconnect; a received message is sent to each name in the list, one `send` per member.
//! This works only inside one process and copies the loop that `group_send` does for you:
//! compare it with `examples/chat`, where the same thing is three lines and works across
//! processes once the layer is Redis.

use std::sync::{Arc, Mutex};

use channels::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename = "broadcast.text")]
struct Broadcast {
    text: String,
}

type Members = Arc<Mutex<Vec<String>>>;

struct ListConsumer {
    members: Members,
}

impl ListConsumer {
    fn members(&self) -> Vec<String> {
        self.members.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl WebsocketConsumer for ListConsumer {
    type Event = Broadcast;

    async fn connect(&mut self, ctx: &mut WebsocketContext) -> HandlerResult {
        ctx.accept();
        if let Some(me) = ctx.channel_name() {
            self.members.lock().unwrap_or_else(|p| p.into_inner()).push(me.to_owned());
        }
        Ok(())
    }

    async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
        let Some(text) = frame.as_text() else { return Ok(()) };
        let event = Broadcast { text: text.to_owned() };
        for member in self.members() {
            // A member that is gone or full does not stop the others from getting it.
            if let Err(e) = ctx.send_to(&member, &event).await {
                tracing::info!(%member, error = %e, "could not deliver to a member");
            }
        }
        Ok(())
    }

    async fn event(&mut self, ctx: &mut WebsocketContext, event: Broadcast) -> HandlerResult {
        ctx.send_text(event.text).await?;
        Ok(())
    }

    async fn disconnect(&mut self, ctx: &mut WebsocketContext, _code: u16) -> HandlerResult {
        if let Some(me) = ctx.channel_name() {
            self.members.lock().unwrap_or_else(|p| p.into_inner()).retain(|m| m != me);
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let bind = std::env::args().nth(2).filter(|_| std::env::args().nth(1).as_deref() == Some("--bind"));
    let bind = bind.unwrap_or_else(|| "127.0.0.1:8002".into());
    let members = Members::default();
    let router = Router::new().websocket("/ws/list/", move |_: &Scope| ListConsumer { members: members.clone() });
    let app = Application::builder(router).layer(channels::layers::from_url("memory://")?).build();
    let server = Server::bind(&bind).await?;
    println!("broadcast_list: listening on http://{}/ (websocket at /ws/list/)", server.local_addr()?);
    server.serve(app).await?;
    Ok(())
}
