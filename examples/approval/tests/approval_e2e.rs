//! The approval example as a real process: sign-in over HTTP, the ticket's group over real
//! WebSockets, the deployment pipeline streaming to the flowchart, hand-crafted forgeries over
//! both protocols, and two processes sharing one Redis and one database file.

// The end-to-end helpers the workspace's other example tests use.
#[path = "../../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use channels::redis::testing::RedisServer;
use channels::sessions::{Session, SessionMiddleware};
use futures_util::SinkExt;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::{Client, Example, next_json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "end-to-end secret key, at least thirty-two bytes";
const RELEASE: i64 = 1;
const PIPELINE: [&str; 7] = [
    "deploy-download",
    "deploy-compile",
    "deploy-package",
    "deploy-server-1",
    "deploy-server-2",
    "deploy-server-3",
    "deploy-restart",
];

/// A database file of its own in the temp dir, removed when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> TempDb {
        let dir = std::env::temp_dir().join(format!("approval-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDb(dir.join("approval.sqlite3"))
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }

    /// Every row of every table, read straight from the file.
    fn dump(&self) -> Vec<String> {
        let conn = rusqlite::Connection::open(&self.0).expect("open the database");
        let mut out = Vec::new();
        for table in [
            "users",
            "workflows",
            "workflow_steps",
            "tickets",
            "approvals",
            "deploy_runs",
            "deploy_steps",
            "deploy_results",
        ] {
            let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY id")).expect("prepare");
            let columns = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    let values: Vec<String> = (0..columns).map(|i| format!("{:?}", r.get_ref(i).ok())).collect();
                    Ok(format!("{table}: {}", values.join(", ")))
                })
                .expect("query");
            out.extend(rows.map(|r| r.expect("row")));
        }
        out
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn start(db: &TempDb, extra: &[&str]) -> Example {
    let mut args = vec!["--db", db.path(), "--secret", SECRET, "--step-delay-ms", "60", "--failure-rate", "0"];
    args.extend_from_slice(extra);
    Example::start("approval", &args)
}

struct Reply {
    status: u16,
    set_cookie: Vec<String>,
    body: Value,
}

/// One HTTP request with the given headers; JSON bodies are sent as `application/json`.
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);
    let mut builder = hyper::Request::builder().method(method).uri(path).header("host", addr.to_string());
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let request = builder.body(http_body_util::Full::new(bytes::Bytes::from(bytes))).expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let set_cookie =
        response.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok().map(str::to_owned)).collect();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    Reply { status, set_cookie, body: serde_json::from_slice(&body).unwrap_or(Value::Null) }
}

/// Signs in through `POST /api/login` and returns the `Cookie` header to send from then on.
async fn sign_in(example: &Example, username: &str) -> String {
    let reply = request(example.addr, "POST", "/api/login", &[], Some(json!({"username": username}))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let set_cookie = reply.set_cookie.first().expect("a session cookie");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"), "{set_cookie}");
    set_cookie.split(';').next().expect("name=value").to_owned()
}

async fn ws(example: &Example, path: &str, cookie: Option<&str>) -> Result<Client, u16> {
    let mut request = example.url(path).into_client_request().expect("request");
    if let Some(cookie) = cookie {
        request.headers_mut().insert("cookie", cookie.parse().expect("cookie header"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((client, _)) => Ok(client),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("websocket connect: {e}"),
    }
}

async fn send_json(client: &mut Client, value: Value) {
    client.send(Message::text(value.to_string())).await.expect("send");
}

async fn next_state(client: &mut Client) -> Value {
    loop {
        let event = next_json(client).await;
        if event["type"] == "ticket.state" {
            return event["ticket"].clone();
        }
        assert_ne!(event["type"], "error", "unexpected error: {event}");
    }
}

fn node_state(ticket: &Value, node: &str) -> String {
    let nodes = ticket["graph"]["nodes"].as_array().expect("nodes");
    let node = nodes.iter().find(|n| n["id"] == node).unwrap_or_else(|| panic!("no node {node}"));
    node["state"].as_str().unwrap_or_default().to_owned()
}

async fn file_ticket(example: &Example, cookie: &str, title: &str) -> i64 {
    let ticket = json!({"title": title, "body": "by the end-to-end test", "workflow_id": RELEASE});
    let reply = request(example.addr, "POST", "/api/tickets", &[("cookie", cookie)], Some(ticket)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_i64().expect("id")
}

/// Reads ticket states until `done` says stop; returns every state each node passed through.
async fn watch_until(
    client: &mut Client,
    mut done: impl FnMut(&Value) -> bool,
) -> std::collections::HashMap<String, Vec<String>> {
    let mut seen: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for _ in 0..500 {
        let ticket = next_state(client).await;
        for node in ticket["graph"]["nodes"].as_array().expect("nodes") {
            let states = seen.entry(node["id"].as_str().unwrap_or_default().to_owned()).or_default();
            let state = node["state"].as_str().unwrap_or_default().to_owned();
            if states.last() != Some(&state) {
                states.push(state);
            }
        }
        if done(&ticket) {
            return seen;
        }
    }
    panic!("the ticket never reached the expected state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_is_approved_over_websockets_and_its_pipeline_streams_to_every_viewer() {
    let db = TempDb::new("flow");
    let example = start(&db, &[]);
    let zhang = sign_in(&example, "zhangkun").await;
    let id = file_ticket(&example, &zhang, "上线 v2.3").await;
    let path = format!("/ws/tickets/{id}/");
    let mut requester = ws(&example, &path, Some(&zhang)).await.expect("requester joins");
    assert_eq!(node_state(&next_state(&mut requester).await, "step-0"), "current");

    let fu = sign_in(&example, "fulele").await;
    let mut lead = ws(&example, &path, Some(&fu)).await.expect("lead joins");
    next_state(&mut lead).await;
    send_json(&mut lead, json!({"action": "approve", "comment": "LGTM", "step": 0})).await;
    let ticket = next_state(&mut requester).await;
    assert_eq!((node_state(&ticket, "step-0"), node_state(&ticket, "step-1")), ("done".into(), "current".into()));

    let jia = sign_in(&example, "jiawenlong").await;
    let mut ops = ws(&example, &path, Some(&jia)).await.expect("ops joins");
    next_state(&mut ops).await;
    send_json(&mut ops, json!({"action": "approve", "comment": "ship it"})).await;
    let seen = watch_until(&mut requester, |t| t["status"] == "deployed").await;
    for node in PIPELINE {
        assert_eq!(seen[node], ["pending", "running", "done"], "{node}");
    }
    assert_eq!(seen["end"].last().map(String::as_str), Some("done"));
    // A viewer of the list page saw the deployed ticket too.
    let mut list = ws(&example, "/ws/tickets/", Some(&fu)).await.expect("list");
    let event = next_json(&mut list).await;
    assert_eq!(event["list"]["tickets"][0]["status"], "deployed", "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_crafted_forgeries_are_refused_and_change_nothing() {
    let db = TempDb::new("forgery");
    let example = start(&db, &[]);
    let zhang = sign_in(&example, "zhangkun").await;
    let id = file_ticket(&example, &zhang, "forgery target").await;
    let path = format!("/ws/tickets/{id}/");
    let before = db.dump();

    // Over the WebSocket: the requester sends the approver's message.
    let mut forger = ws(&example, &path, Some(&zhang)).await.expect("requester joins");
    next_state(&mut forger).await;
    send_json(&mut forger, json!({"action": "approve", "comment": "self-approved", "step": 0})).await;
    let error = next_json(&mut forger).await;
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("forbidden")), "{error}");
    assert!(error["error"].as_str().unwrap_or_default().contains("not the approver"), "{error}");

    // Over HTTP: the same approval, hand-crafted.
    let actions = format!("/api/tickets/{id}/actions");
    let approve = json!({"action": "approve", "comment": "self-approved"});
    let reply = request(example.addr, "POST", &actions, &[("cookie", &zhang)], Some(approve.clone())).await;
    assert_eq!((reply.status, reply.body["code"].as_str()), (403, Some("forbidden")), "{}", reply.body);

    // A session cookie forged without the key, and the approver's real one with a byte changed.
    let forged_key = SessionMiddleware::new(b"not the server's key, but long enough".to_vec()).expect("key");
    let mut session = Session::new();
    session.login("2"); // 付乐乐's id
    let forged = format!("sessionid={}", forged_key.encode(&session));
    let mut tampered = sign_in(&example, "fulele").await;
    let last = tampered.pop().expect("a character");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for cookie in [&forged, &tampered] {
        let reply = request(example.addr, "POST", &actions, &[("cookie", cookie)], Some(approve.clone())).await;
        assert_eq!((reply.status, reply.body["code"].as_str()), (401, Some("not_signed_in")), "{}", reply.body);
        assert_eq!(ws(&example, &path, Some(cookie)).await.err(), Some(403), "a bad cookie opened a socket");
    }
    assert_eq!(ws(&example, &path, None).await.err(), Some(403), "an anonymous socket was opened");

    // The approver's real cookie from another site: refused, over HTTP and WebSocket.
    let fu = sign_in(&example, "fulele").await;
    let evil = [("cookie", fu.as_str()), ("origin", "https://evil.example")];
    let reply = request(example.addr, "POST", &actions, &evil, Some(approve.clone())).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    let mut cross_site = example.url(&path).into_client_request().expect("request");
    cross_site.headers_mut().insert("cookie", fu.parse().expect("cookie"));
    cross_site.headers_mut().insert("origin", "https://evil.example".parse().expect("origin"));
    assert!(tokio_tungstenite::connect_async(cross_site).await.is_err(), "a cross-site socket was opened");

    assert_eq!(db.dump(), before, "a refused action changed the database");

    // The real approver, properly: accepted, and the requester's page hears of it.
    let reply = request(example.addr, "POST", &actions, &[("cookie", &fu)], Some(approve)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(node_state(&next_state(&mut forger).await, "step-1"), "current");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deployment_step_is_retried_by_the_last_approver() {
    let db = TempDb::new("retry");
    let example = start(&db, &[]);
    let zhang = sign_in(&example, "zhangkun").await;
    let id = file_ticket(&example, &zhang, "hotfix [fail:package]").await;
    let actions = format!("/api/tickets/{id}/actions");
    let mut requester = ws(&example, &format!("/ws/tickets/{id}/"), Some(&zhang)).await.expect("joins");
    next_state(&mut requester).await;
    let jia = sign_in(&example, "jiawenlong").await;
    for cookie in [sign_in(&example, "fulele").await, jia.clone()] {
        let reply =
            request(example.addr, "POST", &actions, &[("cookie", &cookie)], Some(json!({"action": "approve"}))).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let seen = watch_until(&mut requester, |t| t["status"] == "deploy_failed").await;
    assert_eq!(seen["deploy-package"], ["pending", "running", "failed"]);
    assert_eq!(seen["deploy-restart"], ["pending"]);
    let retry = json!({"action": "retry"});
    let reply = request(example.addr, "POST", &actions, &[("cookie", &zhang)], Some(retry.clone())).await;
    assert_eq!(reply.status, 403, "the requester retried: {}", reply.body);
    let reply = request(example.addr, "POST", &actions, &[("cookie", &jia)], Some(retry)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = watch_until(&mut requester, |t| t["status"] == "deployed").await;
    let package = &seen["deploy-package"];
    assert!(
        package.ends_with(&["running".into(), "done".into()]) && !package.contains(&"failed".into()),
        "{package:?}"
    );
    assert_eq!(seen["deploy-download"], ["done"], "a step that had succeeded ran again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_redis_and_one_database_show_each_others_approvals() {
    let redis = RedisServer::start();
    let layer = format!("{}/0?prefix=approval", redis.url());
    let db = TempDb::new("redis");
    let east = start(&db, &["--layer", &layer]);
    let west = start(&db, &["--layer", &layer]);
    let zhang = sign_in(&east, "zhangkun").await;
    let id = file_ticket(&east, &zhang, "across processes").await;
    let path = format!("/ws/tickets/{id}/");
    // The cookie signed by east is good on west: both use the same secret key.
    let mut on_west = ws(&west, &path, Some(&zhang)).await.expect("joins on west");
    assert_eq!(node_state(&next_state(&mut on_west).await, "step-0"), "current");
    let mut list_on_west = ws(&west, "/ws/tickets/", Some(&zhang)).await.expect("list on west");
    next_json(&mut list_on_west).await;

    let fu = sign_in(&east, "fulele").await;
    let mut on_east = ws(&east, &path, Some(&fu)).await.expect("joins on east");
    next_state(&mut on_east).await;
    send_json(&mut on_east, json!({"action": "approve", "comment": "from east"})).await;
    let ticket = next_state(&mut on_west).await;
    assert_eq!(node_state(&ticket, "step-1"), "current", "west did not see east's approval");
    assert_eq!(ticket["history"][1]["comment"], "from east");
    let list = next_json(&mut list_on_west).await;
    assert_eq!(list["list"]["tickets"][0]["step"], "运维审批 Ops review", "{list}");

    // The last approval on west; the deployment (run by a worker in either process) reaches
    // the viewer on east.
    let jia = sign_in(&west, "jiawenlong").await;
    let reply = request(
        west.addr,
        "POST",
        &format!("/api/tickets/{id}/actions"),
        &[("cookie", &jia)],
        Some(json!({"action": "approve"})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = tokio::time::timeout(Duration::from_secs(30), watch_until(&mut on_east, |t| t["status"] == "deployed"))
        .await
        .expect("deployed within 30 s");
    // Each node only moves forward, even with states sent by two processes.
    let order = ["pending", "running", "done"];
    for node in PIPELINE {
        let ranks: Vec<usize> = seen[node].iter().filter_map(|s| order.iter().position(|o| o == s)).collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]) && ranks.last() == Some(&2), "{node}: {:?}", seen[node]);
    }
    assert!(Path::new(db.path()).exists());
}
