//! Workers: background jobs on a named channel (Django's `runworker` + `ChannelNameRouter`).
//!
//! Run everything in one process with `cargo run --example worker`, or split it over Redis:
//!
//! ```sh
//! cargo run --example worker -- --role web --layer redis://127.0.0.1:6379
//! cargo run --example worker -- --role worker --layer redis://127.0.0.1:6379
//! ```
//!
//! - `POST /jobs/?text=hello` (web) sends `{"type": "job.shout", "id", "text"}` to the channel
//!   `shouting` and answers 202 with the job id.
//! - The worker on `shouting` upper-cases the text and announces
//!   `{"type": "job.done", "id", "result", "worker"}` to the group `job-results`.
//! - `GET /jobs/results` (web) holds the request until the next result and returns it as JSON
//!   (or 204 after 10 s): an HTTP consumer in the group `job-results`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use channels::http::{HttpRequest, json};
use channels::http_consumer::http_consumer;
use channels::layers::Message;
use channels::middleware::StatusCode;
use channels::prelude::*;
use channels::worker::{WorkerConsumer, WorkerContext, WorkerRouter};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename = "job.shout")]
struct ShoutJob {
    id: u64,
    text: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename = "job.done")]
struct JobDone {
    id: u64,
    result: String,
    worker: u32,
}

/// The worker: one job at a time, from any process on the layer.
struct Shouter;

impl WorkerConsumer for Shouter {
    type Event = ShoutJob;

    async fn handle(&mut self, ctx: &WorkerContext, job: ShoutJob) -> HandlerResult {
        let done = JobDone { id: job.id, result: job.text.to_uppercase(), worker: std::process::id() };
        ctx.group_send("job-results", &done).await?;
        Ok(())
    }
}

/// `GET /jobs/results`: waits for the next finished job.
struct NextResult;

impl HttpConsumer for NextResult {
    type Event = JobDone;

    fn groups(&self) -> Vec<String> {
        vec!["job-results".into()]
    }

    async fn handle(&mut self, ctx: &mut HttpContext) -> HandlerResult {
        ctx.set_timeout(Duration::from_secs(10));
        Ok(())
    }

    async fn event(&mut self, ctx: &mut HttpContext, done: JobDone) -> HandlerResult {
        ctx.send_json(StatusCode::OK, &done)?;
        Ok(())
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// `POST /jobs/?text=...`: queues a job for whichever worker takes it.
async fn submit(request: HttpRequest) -> channels::http::HttpResponse {
    let Some(text) = request.scope.query_param("text").filter(|t| !t.is_empty() && t.len() <= 1000) else {
        return json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": "?text= (1-1000 bytes) is required"}));
    };
    let Some(layer) = request.layers().default_layer() else {
        return json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"error": "no channel layer"}));
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let sent = match Message::new(&ShoutJob { id, text }) {
        Ok(message) => layer.send("shouting", message).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match sent {
        Ok(()) => json(StatusCode::ACCEPTED, &serde_json::json!({"id": id})),
        Err(e) => json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"error": e})),
    }
}

fn usage() -> ! {
    eprintln!("usage: worker [--role all|web|worker] [--layer URL] [--bind ADDR]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let (mut role, mut layer_url, mut bind) = ("all".to_owned(), "memory://".to_owned(), "127.0.0.1:8003".to_owned());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--role" => role = value,
            "--layer" => layer_url = value,
            "--bind" => bind = value,
            _ => usage(),
        }
    }
    let layer = channels::layers::from_url(&layer_url)?;
    let workers = WorkerRouter::new().route("shouting", Shouter);
    match role.as_str() {
        "worker" => {
            // The URL may hold a password: it is shown redacted.
            println!("worker: handling the channel \"shouting\" on {}", channels::layers::redact_url(&layer_url));
            workers.run(layer, channels::server::shutdown_signal()).await;
        }
        "web" | "all" => {
            let _workers = (role == "all").then(|| workers.spawn(layer.clone()));
            let router =
                Router::new().http("/jobs/", submit).http("/jobs/results", http_consumer(|_: &Scope| NextResult));
            let app = Application::builder(router).layer(layer).build();
            let server = Server::bind(&bind).await?;
            println!("worker: web on http://{}/jobs/ (role {role})", server.local_addr()?);
            server.serve(app).await?;
        }
        _ => usage(),
    }
    Ok(())
}
