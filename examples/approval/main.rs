//! Work-order (工单) approval: tickets go through a workflow of approvers, a live flowchart
//! shows where each one stands, and after the final approval a background worker deploys the
//! code while the flowchart's pipeline nodes light up step by step.
//!
//! Run it with `cargo run --example approval` and open <http://127.0.0.1:8004/>; sign in as
//! 张坤 in one browser and as 付乐乐 in another (a private window), file a ticket as 张坤 and
//! approve it as 付乐乐.
//!
//! What it shows:
//! - persisted tables (SQLite, `db.rs`): users, workflow templates with ordered steps, tickets,
//!   approval records, deployment runs and their step states; created, migrated and filled
//!   with demo data on start;
//! - sessions and authorization with the framework's `AuthMiddlewareStack` (`auth.rs`): a
//!   signed session cookie, the user in every scope, and the workflow's rules enforced on the
//!   server for HTTP and WebSocket alike (`workflow.rs`);
//! - a group per ticket and one for the list (`consumers.rs`): everyone viewing a ticket sees
//!   its flowchart and history change when anyone acts, in this process or another;
//! - a background worker on a named channel (`pipeline.rs`) that runs the deployment
//!   pipeline and streams each step's state;
//! - live bar and pie charts of tickets by status on the list page.
//!
//! Flags:
//! - `--bind ADDR` (default `127.0.0.1:8004`, env `CHANNELS_BIND`);
//! - `--db PATH` (default `approval.sqlite3` in the current directory);
//! - `--layer URL` (default `memory://`, env `CHANNELS_LAYER`); with `redis://...`, several
//!   processes on one Redis and one database file serve the same tickets live;
//! - `--secret KEY` (env `CHANNELS_SECRET_KEY`; at least 32 bytes): signs the session cookies.
//!   Without one, a random key is made at start, so sessions end when the process does and two
//!   processes do not accept each other's cookies;
//! - `--step-delay-ms MS` (default 1500) and `--failure-rate P` (default 0.1): how the simulated
//!   pipeline steps behave;
//! - `--allowed-origin HOST` (repeatable): also accept pages served from HOST;
//! - `--no-worker`: do not run the deployment worker in this process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod auth;
mod consumers;
mod db;
mod pipeline;
mod views;
mod workflow;

#[cfg(test)]
mod tests;

use channels::client::channels_js;
use channels::http::{HttpRequest, embedded_files, liveness, page, readiness};
use channels::layers::ChannelLayer;
use channels::middleware::OriginValidator;
use channels::prelude::*;
use channels::sessions::{AuthMiddlewareStack, SessionMiddleware};
use channels::worker::WorkerRouter;

use crate::auth::DbUsers;
use crate::consumers::{DEPLOY_CHANNEL, ListConsumer, TicketConsumer};
use crate::db::Db;
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::views::Api;

const HTML: &str = "text/html; charset=utf-8";

struct Options {
    bind: String,
    db: PathBuf,
    layer: String,
    secret: Option<String>,
    pipeline: PipelineSettings,
    allowed_origins: Vec<String>,
    worker: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: approval [--bind ADDR] [--db PATH] [--layer URL] [--secret KEY] [--step-delay-ms MS]\n\
         \x20               [--failure-rate P] [--allowed-origin HOST]... [--no-worker]\n\
         \n  --bind ADDR            listen address (default 127.0.0.1:8004, env CHANNELS_BIND)\
         \n  --db PATH              SQLite database file (default approval.sqlite3)\
         \n  --layer URL            channel layer (default memory://, env CHANNELS_LAYER)\
         \n  --secret KEY           session signing key, 32+ bytes (env CHANNELS_SECRET_KEY)\
         \n  --step-delay-ms MS     how long a simulated pipeline step takes (default 1500)\
         \n  --failure-rate P       probability that a pipeline step fails (default 0.1)\
         \n  --allowed-origin HOST  also accept pages from HOST (repeatable)\
         \n  --no-worker            do not run the deployment worker in this process"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut options = Options {
        bind: std::env::var("CHANNELS_BIND").unwrap_or_else(|_| "127.0.0.1:8004".into()),
        db: PathBuf::from("approval.sqlite3"),
        layer: std::env::var(channels::layers::LAYER_ENV_VAR).unwrap_or_else(|_| "memory://".into()),
        secret: std::env::var(channels::sessions::SECRET_KEY_ENV_VAR).ok(),
        pipeline: PipelineSettings { step_delay: Duration::from_millis(1500), failure_rate: 0.1 },
        allowed_origins: Vec::new(),
        worker: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        if flag == "--no-worker" {
            options.worker = false;
            continue;
        }
        let mut value = || inline.clone().or_else(|| args.next()).unwrap_or_else(|| usage());
        match flag.as_str() {
            "--bind" => options.bind = value(),
            "--db" => options.db = PathBuf::from(value()),
            "--layer" => options.layer = value(),
            "--secret" => options.secret = Some(value()),
            "--allowed-origin" => options.allowed_origins.push(value()),
            "--step-delay-ms" => match value().parse::<u64>() {
                Ok(ms) if ms <= 600_000 => options.pipeline.step_delay = Duration::from_millis(ms),
                _ => usage(),
            },
            "--failure-rate" => match value().parse::<f64>() {
                Ok(p) if (0.0..=1.0).contains(&p) => options.pipeline.failure_rate = p,
                _ => usage(),
            },
            _ => usage(),
        }
    }
    options
}

/// The origins pages may come from: this machine under any name, plus `extra`.
fn origins(extra: &[String]) -> OriginValidator {
    let mut origins: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].map(String::from).to_vec();
    origins.extend_from_slice(extra);
    OriginValidator::new(origins)
}

/// The application: routes, the session and auth middleware, and the channel layer. Shared by
/// `main` and the tests.
/// Lists files under `static/`, compiled in.
macro_rules! embedded {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!("static/", $path)) as &[u8])),*]
    };
}

/// The scripts, styles and vendored libraries (with their licences), compiled into the binary:
/// it serves them wherever it is copied.
const STATIC: &[(&str, &[u8])] = embedded![
    "app.css",
    "app.js",
    "list.js",
    "ticket.js",
    "vendor/README.md",
    "vendor/chartjs/LICENSE.md",
    "vendor/chartjs/chart.umd.min.js",
    "vendor/cytoscape/LICENSE",
    "vendor/cytoscape/cytoscape.min.js",
    "vendor/noto-sans-cjk-sc/LICENSE",
    "vendor/noto-sans-cjk-sc/subset.woff2",
];

fn app(db: Db, layer: Arc<dyn ChannelLayer>, sessions: SessionMiddleware, origins: OriginValidator) -> Application {
    let api = Api { db: db.clone(), origins: origins.clone() };
    macro_rules! api {
        ($method:ident) => {{
            let api = api.clone();
            move |request: HttpRequest| {
                let api = api.clone();
                async move { api.$method(request).await }
            }
        }};
    }
    let (login_db, login_sessions, login_origins) = (db.clone(), sessions.clone(), origins.clone());
    let (logout_sessions, logout_origins) = (sessions.clone(), origins.clone());
    let (list_db, ticket_db) = (db.clone(), db.clone());
    let router = Router::new()
        .http("/", page(HTML, include_str!("static/list.html")))
        .http("/login/", page(HTML, include_str!("static/login.html")))
        .http("/tickets/new/", page(HTML, include_str!("static/new.html")))
        .http("/tickets/{id}/", {
            let api = api.clone();
            move |request: HttpRequest| {
                let api = api.clone();
                async move { api.ticket_page(request, include_str!("static/ticket.html")).await }
            }
        })
        .http("/static/channels.js", channels_js())
        .http("/static/{*path}", embedded_files(STATIC))
        .http("/healthz", liveness())
        .http("/readyz", readiness(Duration::from_secs(2)))
        .http("/api/me", api!(me))
        .http("/api/login", move |request| {
            auth::login(request, login_db.clone(), login_sessions.clone(), login_origins.clone())
        })
        .http("/api/logout", move |request| auth::logout(request, logout_sessions.clone(), logout_origins.clone()))
        .http("/api/workflows", api!(workflows))
        .http("/api/tickets", api!(tickets))
        .http("/api/tickets/{id}", api!(ticket))
        .http("/api/tickets/{id}/actions", api!(action))
        .websocket("/ws/tickets/", move |_: &Scope| ListConsumer::new(list_db.clone()))
        .websocket("/ws/tickets/{id}/", move |scope: &Scope| TicketConsumer::new(scope, ticket_db.clone()));
    Application::builder(router)
        .layer(layer)
        .middleware(origins.allow_missing_origin(true))
        .middleware(AuthMiddlewareStack::new(sessions, DbUsers(db)))
        .build()
}

/// The workers of this example: the deployment pipeline.
fn workers(db: Db, settings: PipelineSettings) -> WorkerRouter {
    WorkerRouter::new().route(DEPLOY_CHANNEL, Pipeline { db, settings })
}

fn session_key(secret: Option<String>) -> Result<SessionMiddleware, Box<dyn std::error::Error>> {
    match secret {
        Some(secret) => Ok(SessionMiddleware::new(secret)?),
        None => {
            tracing::warn!(
                "no --secret or {}: signing sessions with a random key; they end with this process",
                channels::sessions::SECRET_KEY_ENV_VAR
            );
            let key: [u8; 32] = rand::random();
            Ok(SessionMiddleware::new(key.to_vec())?)
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let options = options();
    let sessions = session_key(options.secret.clone())?;
    let path = options.db.clone();
    let db = tokio::task::spawn_blocking(move || Db::open(&path))
        .await?
        .map_err(|e| format!("cannot open the database {}: {e}", options.db.display()))?;
    let layer = channels::layers::from_url(&options.layer)?;
    let _workers = options.worker.then(|| workers(db.clone(), options.pipeline.clone()).spawn(layer.clone()));
    // A step still running after many times its delay has lost its worker (a process that
    // stopped mid-run): fail it so that it can be retried.
    let abandoned_after = (options.pipeline.step_delay * 20).max(Duration::from_secs(60));
    tokio::spawn(pipeline::sweep_abandoned_steps(db.clone(), layer.clone(), Duration::from_secs(15), abandoned_after));
    let server = Server::bind(&options.bind).await?;
    let addr = server.local_addr()?;
    let mut extra_origins = options.allowed_origins.clone();
    extra_origins.push(addr.ip().to_string());
    let app = app(db, layer, sessions, origins(&extra_origins));
    // The URL may hold a password: it is shown redacted.
    let shown_layer = channels::layers::redact_url(&options.layer);
    tracing::info!(layer = %shown_layer, db = %options.db.display(), "approval is running on http://{addr}/");
    println!("approval: open http://{addr}/ (layer {shown_layer}, database {})", options.db.display());
    server.serve(app).await?;
    Ok(())
}
