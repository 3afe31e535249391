//! What a Django session costs a WebSocket handshake: connect latency with and without the
//! `channels::django` lookup (the `db` session backend: the `django_session` row, then the
//! `auth_user` row and the session hash), on SQLite and on PostgreSQL, in the same run.
//!
//! A real Django site (tests/python/django_site, from the test venv) creates the tables and
//! logs `ann` in through its LoginView; its `sessionid` cookie is sent with every handshake.
//! Three servers run in this process: no middleware (the baseline), `DjangoAuth` on the site's
//! SQLite file, `DjangoAuth` on a PostgreSQL database (the server at 127.0.0.1:5432 when it
//! answers, else one started here). Handshakes are sequential (one in flight), in rounds that
//! alternate the servers so that noise falls on all three alike; each handshake is timed from
//! the TCP connect to the first frame (the consumer sends the username it was given).
//!
//! Bar (issue 25): the lookup adds at most 2 ms to the median handshake.
//!
//! `cargo bench --bench django_session_lookup`. `BENCH_RUNS=N` (default 3) runs,
//! `LOOKUP_HANDSHAKES=N` (default 300) handshakes per server and run.

#[path = "../tests/support/django.rs"]
#[allow(missing_docs)]
mod site;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use channels::django::{DjangoAuth, DjangoSettings, DjangoUser};
use channels::prelude::*;
use common::stats::median;
use futures_util::StreamExt;
use site::{PgDatabase, SECRET_KEY, Site};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const BAR_MS: f64 = 2.0;
/// Handshakes per server in one round of the alternation.
const ROUND: usize = 25;

struct WhoAmI(Option<String>);

impl WebsocketConsumer for WhoAmI {
    type Event = NoEvents;

    async fn connect(&mut self, ctx: &mut WebsocketContext) -> HandlerResult {
        ctx.accept();
        ctx.send_text(self.0.as_deref().unwrap_or("anonymous")).await?;
        Ok(())
    }
}

async fn server(auth: Option<DjangoAuth>) -> SocketAddr {
    let router = Router::new().websocket("/ws/", |scope: &Scope| {
        WhoAmI(scope.extensions().get::<DjangoUser>().map(|user| user.username.clone()))
    });
    let builder = Application::builder(router);
    let app = match auth {
        Some(auth) => builder.middleware(auth).build(),
        None => builder.build(),
    };
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(async move { server.serve(app).await });
    addr
}

/// One handshake with `cookie`, timed to the first frame; checks who the server saw.
async fn handshake(addr: SocketAddr, cookie: &str, expected: &str) -> Duration {
    let mut request = format!("ws://{addr}/ws/").into_client_request().expect("request");
    request.headers_mut().insert("cookie", HeaderValue::from_str(&format!("sessionid={cookie}")).expect("cookie"));
    let started = Instant::now();
    let connect = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(request));
    let (mut client, _) = connect.await.expect("handshake in time").expect("handshake");
    let frame = tokio::time::timeout(Duration::from_secs(10), client.next()).await.expect("a frame in time");
    let elapsed = started.elapsed();
    let text = frame.expect("open").expect("frame").into_text().expect("text");
    assert_eq!(text.as_str(), expected);
    drop(client);
    elapsed
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn p50(samples: &mut [Duration]) -> f64 {
    samples.sort();
    ms(samples[samples.len() / 2])
}

fn main() -> ExitCode {
    if !common::started_by_cargo_bench() {
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(run())
}

async fn run() -> ExitCode {
    let handshakes = common::env_number("LOOKUP_HANDSHAKES", 300);
    let runs = common::runs();
    let (sqlite_site, sqlite_url) = Site::start("db", None);
    let pg = PgDatabase::create();
    let (pg_site, pg_url) = Site::start("db", Some(&pg.url()));
    let sqlite_cookie = sqlite_site.login("ann", "ann-password").await.session().expect("cookie").to_owned();
    let pg_cookie = pg_site.login("ann", "ann-password").await.session().expect("cookie").to_owned();
    let settings = DjangoSettings::new(SECRET_KEY);
    let servers = [
        ("no lookup", server(None).await, sqlite_cookie.clone(), "anonymous"),
        (
            "SQLite",
            server(Some(DjangoAuth::from_url(&sqlite_url, settings.clone()).expect("url"))).await,
            sqlite_cookie,
            "ann",
        ),
        ("PostgreSQL", server(Some(DjangoAuth::from_url(&pg_url, settings).expect("url"))).await, pg_cookie, "ann"),
    ];
    println!("== django session lookup: {handshakes} sequential handshakes per server and run, {runs} runs");
    // Warm-up: connections opened, statements prepared, caches filled.
    for (_, addr, cookie, expected) in &servers {
        for _ in 0..20 {
            handshake(*addr, cookie, expected).await;
        }
    }
    let mut added = [Vec::new(), Vec::new()];
    let mut medians = [Vec::new(), Vec::new(), Vec::new()];
    for run in 1..=runs {
        let mut samples: [Vec<Duration>; 3] = Default::default();
        while samples[0].len() < handshakes {
            for (i, (_, addr, cookie, expected)) in servers.iter().enumerate() {
                for _ in 0..ROUND.min(handshakes - samples[i].len()) {
                    samples[i].push(handshake(*addr, cookie, expected).await);
                }
            }
        }
        let p: Vec<f64> = samples.iter_mut().map(|s| p50(s)).collect();
        println!(
            "run {run}: p50 no lookup {:.3} ms, SQLite {:.3} ms (+{:.3}), PostgreSQL {:.3} ms (+{:.3})",
            p[0],
            p[1],
            p[1] - p[0],
            p[2],
            p[2] - p[0]
        );
        for i in 0..3 {
            medians[i].push(p[i]);
        }
        added[0].push(p[1] - p[0]);
        added[1].push(p[2] - p[0]);
    }
    let mut met = true;
    println!("\n| server | p50 handshake (median of {runs} runs) | added by the lookup | bar ≤ {BAR_MS} ms |");
    println!("|---|---|---|---|");
    println!("| {} | {:.3} ms | — | — |", servers[0].0, median(&medians[0]));
    for i in 0..2 {
        let add = median(&added[i]);
        let ok = add <= BAR_MS;
        met &= ok;
        println!(
            "| {} | {:.3} ms | {add:.3} ms | {} |",
            servers[i + 1].0,
            median(&medians[i + 1]),
            if ok { "met" } else { "MISSED" }
        );
    }
    if met { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
