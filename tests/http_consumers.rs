//! HTTP consumers over real sockets: answers, held responses, streams, timeouts, disconnects.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use channels::http_consumer::http_consumer;
use channels::layers::{ChannelLayer, Message};
use channels::memory::InMemoryChannelLayer;
use channels::prelude::*;
use serde::{Deserialize, Serialize};
use support::{EventStream, http};

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename = "news.item")]
struct News {
    text: String,
}

type Log = Arc<Mutex<Vec<String>>>;

/// `?mode=` picks the behaviour: `now` answers at once, `hold` waits for one event (long
/// poll, 204 after `?wait=` seconds), `stream` streams events, `fail` errors.
struct Newsroom {
    log: Log,
}

impl HttpConsumer for Newsroom {
    type Event = News;

    fn groups(&self) -> Vec<String> {
        vec!["news".into()]
    }

    async fn handle(&mut self, ctx: &mut HttpContext) -> HandlerResult {
        match ctx.scope().query_param("mode").as_deref() {
            Some("now") => ctx.send_response(StatusCode::OK, "text/plain", format!("{} bytes", ctx.body().len()))?,
            Some("hold") => {
                let wait: f64 = ctx.scope().query_param("wait").and_then(|w| w.parse().ok()).unwrap_or(25.0);
                ctx.set_timeout(Duration::from_secs_f64(wait));
            }
            Some("stream") => {
                ctx.send_headers(StatusCode::OK, &[("content-type", "text/event-stream")]).await?;
                ctx.send_body("data: {\"type\": \"hello\"}\n\n", true).await?;
            }
            _ => return Err("no such mode".into()),
        }
        Ok(())
    }

    async fn event(&mut self, ctx: &mut HttpContext, news: News) -> HandlerResult {
        if ctx.scope().query_param("mode").as_deref() == Some("stream") {
            ctx.send_body(format!("data: {}\n\n", serde_json::json!({"type": "news", "text": news.text})), true)
                .await?;
        } else {
            ctx.send_response(StatusCode::OK, "text/plain", news.text)?;
        }
        Ok(())
    }

    async fn disconnect(&mut self, ctx: &mut HttpContext) -> HandlerResult {
        let mode = ctx.scope().query_param("mode").unwrap_or_default();
        self.log.lock().expect("log").push(format!("disconnect {mode}"));
        Ok(())
    }
}

struct Running {
    addr: SocketAddr,
    layer: InMemoryChannelLayer,
    log: Log,
}

async fn start() -> Running {
    let layer = InMemoryChannelLayer::new(Default::default());
    let log: Log = Arc::default();
    let l = log.clone();
    let router = Router::new().http("/news/", http_consumer(move |_: &Scope| Newsroom { log: l.clone() }));
    let app = Application::builder(router).layer(Arc::new(layer.clone())).build();
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(server.serve_with_shutdown(app, std::future::pending()));
    Running { addr, layer, log }
}

fn news(text: &str) -> Message {
    Message::new(&News { text: text.into() }).expect("message")
}

impl Running {
    async fn wait_for_log(&self, line: &str) {
        for _ in 0..300 {
            if self.log.lock().expect("log").iter().any(|l| l == line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{line:?} never logged: {:?}", self.log.lock().expect("log"));
    }

    async fn members(&self) -> usize {
        self.layer.group_send("news", news("probe")).await.expect("group_send").queued
    }
}

#[tokio::test]
async fn an_immediate_answer_sees_the_body_and_disconnect_runs() {
    let running = start().await;
    assert_eq!(http(running.addr, "POST", "/news/?mode=now", "12345").await, (200, "5 bytes".into()));
    running.wait_for_log("disconnect now").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_response_completes_on_the_first_event() {
    let running = start().await;
    let addr = running.addr;
    let held = tokio::spawn(async move { http(addr, "GET", "/news/?mode=hold", "").await });
    while running.layer.stats().groups == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.layer.group_send("news", news("extra!")).await.expect("group_send");
    assert_eq!(held.await.expect("join"), (200, "extra!".into()));
    running.wait_for_log("disconnect hold").await;
    assert_eq!(running.members().await, 0, "the request's channel left its group");
}

#[tokio::test]
async fn a_held_response_times_out_with_204() {
    let running = start().await;
    assert_eq!(http(running.addr, "GET", "/news/?mode=hold&wait=0.2", "").await.0, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_carries_events_until_the_client_goes() {
    let running = start().await;
    let mut stream = EventStream::open(running.addr, "/news/?mode=stream").await;
    assert_eq!(stream.next().await["type"], "hello");
    running.layer.group_send("news", news("one")).await.expect("group_send");
    running.layer.group_send("news", news("two")).await.expect("group_send");
    assert_eq!(stream.next().await["text"], "one");
    assert_eq!(stream.next().await["text"], "two");
    drop(stream);
    running.wait_for_log("disconnect stream").await;
}

#[tokio::test]
async fn a_client_that_hangs_up_on_a_held_response_is_disconnected() {
    let running = start().await;
    let addr = running.addr;
    let held = tokio::spawn(async move { http(addr, "GET", "/news/?mode=hold", "").await });
    while running.layer.stats().groups == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    held.abort();
    running.wait_for_log("disconnect hold").await;
}

#[tokio::test]
async fn a_failing_handler_answers_500() {
    let running = start().await;
    assert_eq!(http(running.addr, "GET", "/news/?mode=unknown", "").await.0, 500);
    running.wait_for_log("disconnect unknown").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_held_requests_all_complete_when_one_message_arrives() {
    let running = start().await;
    let addr = running.addr;
    let held: Vec<_> =
        (0..1000).map(|_| tokio::spawn(async move { http(addr, "GET", "/news/?mode=hold", "").await })).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // Every request is held, each with its own channel in the group.
        let report =
            running.layer.group_send("news", Message::new(&serde_json::json!({"type": "ignored"})).expect("m"));
        if report.await.expect("group_send").queued == 1000 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not all 1,000 requests were held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(held.iter().all(|h| !h.is_finished()));
    let started = tokio::time::Instant::now();
    running.layer.group_send("news", news("for everyone")).await.expect("group_send");
    for request in held {
        assert_eq!(request.await.expect("join"), (200, "for everyone".into()));
    }
    assert!(started.elapsed() < Duration::from_secs(10), "answered in {:?}", started.elapsed());
}

mod in_process {
    use super::*;
    use channels::testing::HttpCommunicator;

    fn app() -> (Application, InMemoryChannelLayer) {
        let layer = InMemoryChannelLayer::new(Default::default());
        let log: Log = Arc::default();
        let router = Router::new().http("/news/", http_consumer(move |_: &Scope| Newsroom { log: log.clone() }));
        (Application::builder(router).layer(Arc::new(layer.clone())).build(), layer)
    }

    #[tokio::test]
    async fn an_answer_without_sockets() {
        let (app, _) = app();
        let response =
            HttpCommunicator::new(&app, "POST", "/news/?mode=now").body("1234").get_response().await.expect("response");
        assert_eq!((response.status, &response.body[..]), (200, &b"4 bytes"[..]));
        assert_eq!(response.header("cache-control"), Some("no-store"));
    }

    #[tokio::test]
    async fn a_held_response_and_a_stream_without_sockets() {
        let (app, layer) = app();
        let held = tokio::spawn({
            let app = app.clone();
            async move { HttpCommunicator::new(&app, "GET", "/news/?mode=hold").get_response().await }
        });
        while layer.stats().groups == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        layer.group_send("news", news("held")).await.expect("group_send");
        assert_eq!(held.await.expect("join").expect("response").body, "held");

        let mut stream = HttpCommunicator::new(&app, "GET", "/news/?mode=stream").get_stream().await.expect("stream");
        assert_eq!(stream.status, 200);
        assert!(stream.next_chunk().await.expect("chunk").expect("open").starts_with(b"data: "));
        layer.group_send("news", news("streamed")).await.expect("group_send");
        let chunk = stream.next_chunk().await.expect("chunk").expect("open");
        assert!(String::from_utf8_lossy(&chunk).contains("streamed"));
    }

    #[tokio::test]
    async fn unknown_paths_and_timeouts() {
        let (app, _) = app();
        assert_eq!(HttpCommunicator::new(&app, "GET", "/nope/").get_response().await.expect("response").status, 404);
        let response = HttpCommunicator::new(&app, "GET", "/news/?mode=hold&wait=0.1").get_response().await.expect("r");
        assert_eq!(response.status, 204);
    }
}

/// `GET /metrics` of a server whose application counts metrics, as `name{labels} value` lines.
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (status, text) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_response_counts_as_a_long_poll_while_it_is_held() {
    let layer = InMemoryChannelLayer::new(Default::default());
    let log: Log = Arc::default();
    let metrics = channels::metrics::Metrics::new();
    let router = Router::new()
        .http("/news/", http_consumer(move |_: &Scope| Newsroom { log: log.clone() }))
        .http("/metrics", metrics.handler());
    let app = Application::builder(router).layer(Arc::new(layer.clone())).metrics(metrics).build();
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(server.serve_with_shutdown(app, std::future::pending()));

    let open = r#"channels_connections_open{transport="long-poll",route="/news/"}"#;
    let held = tokio::spawn(async move { http(addr, "GET", "/news/?mode=hold", "").await });
    while layer.stats().groups == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(metric(addr, open).await, 1.0, "held");
    // A plain answer is not a long poll.
    assert_eq!(http(addr, "POST", "/news/?mode=now", "abc").await.0, 200);
    assert_eq!(metric(addr, r#"channels_connections_accepted_total{transport="long-poll",route="/news/"}"#).await, 1.0);

    layer.group_send("news", news("extra!")).await.expect("group_send");
    assert_eq!(held.await.expect("join"), (200, "extra!".into()));
    assert_eq!(metric(addr, open).await, 0.0, "answered");
    assert_eq!(metric(addr, r#"channels_messages_sent_total{transport="long-poll"}"#).await, 1.0);
    assert_eq!(metric(addr, r#"channels_sent_bytes_total{transport="long-poll"}"#).await, 6.0);
}
