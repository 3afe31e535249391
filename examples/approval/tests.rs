//! The workflow's rules, the pipeline and the consumers, against an in-memory database and an
//! in-memory channel layer (`cargo test --example approval`).

use std::sync::Arc;
use std::time::Duration;

use channels::layers::ChannelLayer;
use channels::sessions::{Session, SessionMiddleware};
use channels::testing::{Connected, HttpCommunicator, WebsocketCommunicator};
use rusqlite::Connection;
use serde_json::{Value, json};

use crate::db::{self, Db, User, status, step_state};
use crate::pipeline::{self, PipelineSettings};
use crate::workflow::{self, Action, ActionError, Asked, DeployJob, NewTicket};

const RELEASE: i64 = 1; // lead (付乐乐) → ops (role), then a deployment to 3 servers
const ACCESS: i64 = 2; // manager (role), no deployment
const SECRET: &[u8] = b"a test secret key, thirty-two bytes or more";

fn db() -> Db {
    Db::open_in_memory().expect("in-memory database")
}

async fn user(db: &Db, username: &'static str) -> User {
    db.call(move |c| db::user_by_username(c, username)).await.expect("query").expect("demo user")
}

async fn file(db: &Db, requester: &User, workflow_id: i64, title: &str) -> i64 {
    let (requester, new) = (requester.clone(), NewTicket { title: title.into(), body: "body".into(), workflow_id });
    db.call(move |c| workflow::create_ticket(c, &requester, &new)).await.expect("ticket filed")
}

async fn act(db: &Db, who: &User, ticket: i64, action: Action) -> Result<workflow::Outcome, ActionError> {
    let who = who.clone();
    db.call(move |c| workflow::act(c, &who, ticket, &action, &Asked::default())).await
}

fn approve(comment: &str) -> Action {
    Action::Approve { comment: comment.into() }
}

fn reject(comment: &str) -> Action {
    Action::Reject { comment: comment.into() }
}

fn retry() -> Action {
    Action::Retry { comment: String::new() }
}

async fn row(db: &Db, ticket: i64) -> db::TicketRow {
    db.call(move |c| db::ticket_row(c, ticket)).await.expect("query").expect("ticket")
}

async fn view(db: &Db, ticket: i64) -> db::TicketView {
    db.call(move |c| db::ticket_view(c, ticket)).await.expect("query").expect("ticket")
}

/// Every row of every table, to show that a refused action changed nothing.
fn dump(conn: &Connection) -> Vec<String> {
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
                let values: Vec<String> =
                    (0..columns).map(|i| format!("{:?}", r.get_ref(i).map(|v| format!("{v:?}")))).collect();
                Ok(format!("{table}: {}", values.join(", ")))
            })
            .expect("query");
        out.extend(rows.map(|r| r.expect("row")));
    }
    out
}

async fn snapshot(db: &Db) -> Vec<String> {
    db.call(|c| dump(c)).await
}

/// Asserts that `action` by `who` is refused with `expected` and leaves every table as it was.
async fn assert_refused(db: &Db, who: &User, ticket: i64, action: Action, expected: fn(&ActionError) -> bool) {
    let before = snapshot(db).await;
    let result = act(db, who, ticket, action.clone()).await;
    match &result {
        Err(e) if expected(e) => {}
        other => panic!("{} doing {action:?}: expected a refusal, got {other:?}", who.username),
    }
    assert_eq!(snapshot(db).await, before, "a refused {action:?} changed the database");
}

fn forbidden(e: &ActionError) -> bool {
    matches!(e, ActionError::Forbidden(_))
}

fn conflict(e: &ActionError) -> bool {
    matches!(e, ActionError::Conflict(_))
}

fn invalid(e: &ActionError) -> bool {
    matches!(e, ActionError::Invalid(_))
}

#[tokio::test]
async fn a_new_ticket_waits_for_its_first_step() {
    let db = db();
    let zhang = user(&db, "zhangkun").await;
    let id = file(&db, &zhang, RELEASE, "上线 v2.3").await;
    let ticket = view(&db, id).await;
    assert_eq!((ticket.status.as_str(), ticket.current_step), (status::PENDING, Some(0)));
    let states: Vec<&str> = ticket.workflow.steps.iter().map(|s| s.state.as_str()).collect();
    assert_eq!(states, ["current", "pending"]);
    assert_eq!(ticket.history.len(), 1);
    assert_eq!(ticket.history[0].decision, "submit");
}

#[tokio::test]
async fn tickets_need_a_title_and_an_existing_workflow() {
    let db = db();
    let zhang = user(&db, "zhangkun").await;
    for (title, workflow_id) in [("   ", RELEASE), (&*"x".repeat(201), RELEASE), ("ok", 99)] {
        let new = NewTicket { title: title.into(), body: String::new(), workflow_id };
        let z = zhang.clone();
        let result = db.call(move |c| workflow::create_ticket(c, &z, &new)).await;
        assert!(matches!(result, Err(ActionError::Invalid(_) | ActionError::NotFound(_))), "{title:?}: {result:?}");
    }
    assert_eq!(db.call(|c| db::list_view(c)).await.expect("list").tickets.len(), 0);
}

#[tokio::test]
async fn approving_moves_to_the_next_step_and_records_who_and_why() {
    let db = db();
    let (zhang, fu) = (user(&db, "zhangkun").await, user(&db, "fulele").await);
    let id = file(&db, &zhang, RELEASE, "t").await;
    let outcome = act(&db, &fu, id, approve("LGTM")).await.expect("the lead approves");
    assert_eq!(outcome.deploy, None);
    let ticket = view(&db, id).await;
    assert_eq!((ticket.status.as_str(), ticket.current_step), (status::PENDING, Some(1)));
    let last = ticket.history.last().expect("history");
    assert_eq!((last.actor.as_str(), last.decision.as_str(), last.comment.as_str()), ("付乐乐", "approve", "LGTM"));
    assert_eq!(last.step.as_deref(), Some("组长审批 Lead review"));
}

#[tokio::test]
async fn the_last_approval_of_a_deploying_workflow_starts_a_run() {
    let db = db();
    let (zhang, fu, jia) = (user(&db, "zhangkun").await, user(&db, "fulele").await, user(&db, "jiawenlong").await);
    let id = file(&db, &zhang, RELEASE, "t").await;
    act(&db, &fu, id, approve("")).await.expect("lead");
    let outcome = act(&db, &jia, id, approve("ship it")).await.expect("ops");
    let ticket = view(&db, id).await;
    let run = ticket.deploy.expect("a deployment run");
    assert_eq!(outcome.deploy, Some(DeployJob { ticket_id: id, run_id: run.run_id }));
    assert_eq!((ticket.status.as_str(), ticket.current_step), (status::DEPLOYING, None));
    let keys: Vec<&str> = run.steps.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["download", "compile", "package", "server-1", "server-2", "server-3", "restart"]);
    assert!(run.steps.iter().all(|s| s.status == step_state::PENDING));
}

#[tokio::test]
async fn the_last_approval_of_a_plain_workflow_approves_the_ticket() {
    let db = db();
    let (zhang, boss) = (user(&db, "zhangkun").await, user(&db, "manager").await);
    let id = file(&db, &zhang, ACCESS, "VPN access").await;
    let outcome = act(&db, &boss, id, approve("")).await.expect("the manager approves");
    assert_eq!(outcome.deploy, None);
    let ticket = view(&db, id).await;
    assert_eq!((ticket.status.as_str(), ticket.deploy.is_none()), (status::APPROVED, true));
    assert_eq!(ticket.graph.nodes.last().map(|n| n.state), Some("done"));
}

#[tokio::test]
async fn a_rejection_ends_the_ticket_and_must_say_why() {
    let db = db();
    let (zhang, fu) = (user(&db, "zhangkun").await, user(&db, "fulele").await);
    let id = file(&db, &zhang, RELEASE, "t").await;
    assert_refused(&db, &fu, id, reject("  "), invalid).await;
    act(&db, &fu, id, reject("no tests")).await.expect("the lead rejects");
    let ticket = view(&db, id).await;
    assert_eq!((ticket.status.as_str(), ticket.current_step), (status::REJECTED, Some(0)));
    assert_eq!(ticket.workflow.steps[0].state, "rejected");
    assert_refused(&db, &fu, id, approve(""), conflict).await;
    let jia = user(&db, "jiawenlong").await;
    assert_refused(&db, &jia, id, approve(""), conflict).await;
}

#[tokio::test]
async fn the_requester_edits_and_resubmits_a_rejected_ticket() {
    let db = db();
    let (zhang, fu) = (user(&db, "zhangkun").await, user(&db, "fulele").await);
    let id = file(&db, &zhang, RELEASE, "first try").await;
    act(&db, &fu, id, approve("")).await.expect("lead");
    act(&db, &user(&db, "jiawenlong").await, id, reject("wrong branch")).await.expect("ops rejects");
    let edit =
        Action::Resubmit { title: Some("second try".into()), body: Some("fixed".into()), comment: "rebased".into() };
    assert_refused(&db, &fu, id, edit.clone(), forbidden).await;
    act(&db, &zhang, id, edit).await.expect("the requester resubmits");
    let ticket = row(&db, id).await;
    assert_eq!((ticket.title.as_str(), ticket.body.as_str()), ("second try", "fixed"));
    assert_eq!((ticket.status.as_str(), ticket.current_step), (status::PENDING, Some(0)));
    act(&db, &fu, id, approve("")).await.expect("the lead approves the new version");
}

#[tokio::test]
async fn every_forbidden_action_is_refused_and_changes_nothing() {
    let db = db();
    let zhang = user(&db, "zhangkun").await;
    let fu = user(&db, "fulele").await;
    let jia = user(&db, "jiawenlong").await;
    let boss = user(&db, "manager").await;
    let id = file(&db, &zhang, RELEASE, "t").await;
    // The lead step belongs to 付乐乐 alone: not the requester, not ops, not a manager.
    for who in [&zhang, &jia, &boss] {
        assert_refused(&db, who, id, approve(""), forbidden).await;
        assert_refused(&db, who, id, reject("no"), forbidden).await;
    }
    assert_refused(&db, &zhang, id, retry(), conflict).await;
    assert_refused(&db, &zhang, id, Action::Resubmit { title: None, body: None, comment: String::new() }, conflict)
        .await;
    assert_refused(&db, &fu, 999, approve(""), |e| matches!(e, ActionError::NotFound(_))).await;
    assert_refused(&db, &fu, id, approve(&"x".repeat(1001)), invalid).await;
    // An approval for a step the approver no longer sees is refused.
    let before = snapshot(&db).await;
    let f = fu.clone();
    let stale =
        db.call(move |c| workflow::act(c, &f, id, &approve(""), &Asked { step: Some(1), request_id: None })).await;
    assert!(matches!(stale, Err(ActionError::Conflict(_))), "{stale:?}");
    assert_eq!(snapshot(&db).await, before);
    act(&db, &fu, id, approve("")).await.expect("lead");
    // The ops step belongs to the ops role: the lead may not decide it too.
    assert_refused(&db, &fu, id, approve(""), forbidden).await;
    assert_refused(&db, &zhang, id, approve(""), forbidden).await;
    act(&db, &jia, id, approve("")).await.expect("ops");
    // Deploying: nobody approves again, nobody retries a run that has not failed.
    assert_refused(&db, &jia, id, approve(""), conflict).await;
    assert_refused(&db, &boss, id, retry(), conflict).await;
}

fn settings(failure_rate: f64) -> PipelineSettings {
    PipelineSettings { step_delay: Duration::from_millis(1), failure_rate }
}

fn memory_layer() -> Arc<dyn ChannelLayer> {
    channels::layers::from_url("memory://").expect("memory layer")
}

/// Files a Release ticket titled `title` and approves it to the deployment; returns the job.
async fn approved_release(db: &Db, title: &str) -> (i64, DeployJob) {
    let id = file(db, &user(db, "zhangkun").await, RELEASE, title).await;
    act(db, &user(db, "fulele").await, id, approve("")).await.expect("lead");
    let outcome = act(db, &user(db, "jiawenlong").await, id, approve("")).await.expect("ops");
    (id, outcome.deploy.expect("a deployment"))
}

fn step_states(ticket: &db::TicketView) -> Vec<(String, String)> {
    let run = ticket.deploy.as_ref().expect("a run");
    run.steps.iter().map(|s| (s.key.clone(), s.status.clone())).collect()
}

#[tokio::test]
async fn a_successful_deployment_runs_every_step_and_deploys_the_ticket() {
    let db = db();
    let (id, job) = approved_release(&db, "t").await;
    pipeline::run(&db, &settings(0.0), &memory_layer(), &job).await.expect("run");
    let ticket = view(&db, id).await;
    assert_eq!(ticket.status, status::DEPLOYED);
    assert!(step_states(&ticket).iter().all(|(_, s)| s == step_state::SUCCEEDED), "{:?}", step_states(&ticket));
    assert!(ticket.graph.nodes.iter().all(|n| n.state == "done"));
}

#[tokio::test]
async fn a_failed_step_stops_the_run_and_an_authorized_retry_finishes_it() {
    let db = db();
    let (id, job) = approved_release(&db, "hotfix [fail:compile]").await;
    pipeline::run(&db, &settings(0.0), &memory_layer(), &job).await.expect("run");
    let ticket = view(&db, id).await;
    assert_eq!(ticket.status, status::DEPLOY_FAILED);
    let states = step_states(&ticket);
    assert_eq!(states[0], ("download".into(), step_state::SUCCEEDED.into()));
    assert_eq!(states[1], ("compile".into(), step_state::FAILED.into()));
    assert!(states[2..].iter().all(|(_, s)| s == step_state::PENDING), "{states:?}");
    let failed = ticket.graph.nodes.iter().find(|n| n.id == "deploy-compile").expect("node");
    assert_eq!(failed.state, "failed");

    // The requester and the first approver may not retry; the last approver may.
    for who in ["zhangkun", "fulele"] {
        assert_refused(&db, &user(&db, who).await, id, retry(), forbidden).await;
    }
    let outcome = act(&db, &user(&db, "jiawenlong").await, id, retry()).await.expect("ops retries");
    assert_eq!(outcome.deploy, Some(job.clone()));
    assert_eq!(row(&db, id).await.status, status::DEPLOYING);
    pipeline::run(&db, &settings(0.0), &memory_layer(), &job).await.expect("run again");
    let ticket = view(&db, id).await;
    assert_eq!(ticket.status, status::DEPLOYED);
    let run = ticket.deploy.expect("run");
    let attempts: Vec<i64> = run.steps.iter().map(|s| s.attempts).collect();
    assert_eq!(attempts, [1, 2, 1, 1, 1, 1, 1], "the retry ran only what had not succeeded");
}

#[tokio::test]
async fn the_end_of_each_deployment_run_is_in_the_history() {
    let db = db();
    let (id, job) = approved_release(&db, "hotfix [fail:compile]").await;
    pipeline::run(&db, &settings(0.0), &memory_layer(), &job).await.expect("run");
    let failed = view(&db, id).await.history.last().cloned().expect("an entry");
    assert_eq!((failed.actor.as_str(), failed.decision.as_str()), (db::PIPELINE_ACTOR, "deploy_failed"));
    assert!(failed.comment.contains("Compile"), "the failed step is named: {failed:?}");
    act(&db, &user(&db, "jiawenlong").await, id, retry()).await.expect("ops retries");
    pipeline::run(&db, &settings(0.0), &memory_layer(), &job).await.expect("run again");
    let decisions: Vec<String> = view(&db, id).await.history.into_iter().map(|h| h.decision).collect();
    assert_eq!(decisions, ["submit", "approve", "approve", "deploy_failed", "retry", "deployed"]);
}

#[tokio::test]
async fn an_action_sent_twice_under_one_request_id_is_applied_once() {
    let db = db();
    let id = file(&db, &user(&db, "zhangkun").await, RELEASE, "t").await;
    let lead = user(&db, "fulele").await;
    let asked = Asked { step: Some(0), request_id: Some("req-1".into()) };
    let send = |action: Action, asked: Asked| {
        let (db, lead) = (db.clone(), lead.clone());
        async move { db.call(move |c| workflow::act(c, &lead, id, &action, &asked)).await }
    };
    let first = send(approve("once"), asked.clone()).await.expect("applied");
    assert!(!first.repeated);
    // Sent again (a resend after a reconnect, a double click): done, and nothing changes.
    let before = snapshot(&db).await;
    let again = send(approve("once"), asked.clone()).await.expect("acknowledged");
    assert!(again.repeated);
    assert_eq!(snapshot(&db).await, before);
    assert_eq!(row(&db, id).await.current_step, Some(1));
    // The same id for another action, or an id that is not one: refused.
    assert!(matches!(send(reject("no"), asked.clone()).await, Err(ActionError::Invalid(_))));
    for bad in ["", "has space", &"x".repeat(65)] {
        let asked = Asked { step: Some(1), request_id: Some(bad.to_owned()) };
        assert!(matches!(send(approve(""), asked).await, Err(ActionError::Invalid(_))), "{bad:?}");
    }
    assert_eq!(snapshot(&db).await, before);
}

#[tokio::test]
async fn a_manager_may_retry_any_failed_deployment() {
    let db = db();
    let (id, job) = approved_release(&db, "[fail:server-2]").await;
    pipeline::run(&db, &settings(0.0), &memory_layer(), &job).await.expect("run");
    let ticket = view(&db, id).await;
    let states = step_states(&ticket);
    assert_eq!(states[4], ("server-2".into(), step_state::FAILED.into()));
    assert_eq!(states[6], ("restart".into(), step_state::PENDING.into()));
    act(&db, &user(&db, "manager").await, id, retry()).await.expect("a manager retries");
}

#[tokio::test]
async fn a_job_delivered_twice_runs_each_step_once() {
    let db = db();
    let (id, job) = approved_release(&db, "t").await;
    let (layer, settings) = (memory_layer(), settings(0.0));
    let (a, b) = tokio::join!(pipeline::run(&db, &settings, &layer, &job), pipeline::run(&db, &settings, &layer, &job));
    a.expect("first");
    b.expect("second");
    let ticket = view(&db, id).await;
    assert_eq!(ticket.status, status::DEPLOYED);
    assert!(ticket.deploy.expect("run").steps.iter().all(|s| s.attempts == 1));
}

#[test]
fn the_failure_marker_fails_its_step_on_the_first_attempt_only() {
    assert!(pipeline::should_fail("x [fail:compile]", "compile", 1, 0.0));
    assert!(!pipeline::should_fail("x [fail:compile]", "compile", 2, 0.0));
    assert!(!pipeline::should_fail("x [fail:compile]", "package", 1, 0.0));
    assert!(pipeline::should_fail("x", "package", 1, 1.0));
}

#[tokio::test]
async fn a_running_step_lights_its_node_and_labels_its_link() {
    let db = db();
    let (id, job) = approved_release(&db, "t").await;
    let claimed = db.call(move |c| workflow::start_step(c, job.run_id, 0)).await.expect("claim");
    assert!(claimed);
    let again = db.call(move |c| workflow::start_step(c, job.run_id, 0)).await.expect("claim");
    assert!(!again, "a running step was claimed twice");
    let graph = view(&db, id).await.graph;
    let node = graph.nodes.iter().find(|n| n.id == "deploy-download").expect("node");
    assert_eq!(node.state, "running");
    let link = graph.edges.iter().find(|e| e.target == "deploy-download").expect("link");
    assert_eq!((link.source.as_str(), link.label.as_str(), link.state), ("step-1", "执行中...", "running"));
    let servers: Vec<_> = graph.nodes.iter().filter(|n| n.id.starts_with("deploy-server-")).collect();
    assert_eq!(servers.len(), 3);
    assert!(servers.iter().all(|n| n.rank == servers[0].rank && n.lanes == 3));
}

#[test]
fn the_schema_is_migrated_once_and_demo_data_added_once() {
    let dir = std::env::temp_dir().join(format!("approval-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("db.sqlite3");
    let _ = std::fs::remove_file(&path);
    drop(Db::open(&path).expect("first open"));
    drop(Db::open(&path).expect("second open"));
    let conn = Connection::open(&path).expect("open");
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
    let users: i64 = conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0)).expect("count");
    let workflows: i64 = conn.query_row("SELECT COUNT(*) FROM workflows", [], |r| r.get(0)).expect("count");
    assert_eq!((version, users, workflows), (2, 4, 2));
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_database_of_the_first_schema_gets_its_finished_deployments_into_the_history() {
    let dir = std::env::temp_dir().join(format!("approval-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("db.sqlite3");
    let _ = std::fs::remove_file(&path);
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch(db::MIGRATIONS[0]).expect("schema 1");
    conn.execute_batch(
        "PRAGMA user_version = 1;
         INSERT INTO users VALUES (1, 'zhangkun', '张坤', 'developer');
         INSERT INTO workflows VALUES (1, 'Release', 'd', 1, 1);
         INSERT INTO workflow_steps VALUES (1, 1, 0, 'Lead', 1, NULL);
         INSERT INTO tickets VALUES (1, 't', '', 1, 1, NULL, 'deployed', 1000, 3000, 5);
         INSERT INTO approvals VALUES (1, 1, NULL, 1, 'submit', '', 1000);
         INSERT INTO deploy_runs VALUES (1, 1, 'succeeded', 2000, 3000);",
    )
    .expect("rows of schema 1");
    drop(conn);
    let db = Db::open(&path).expect("migrated");
    let ticket = db.call(|c| db::ticket_view(c, 1)).await.expect("query").expect("ticket");
    let decisions: Vec<String> = ticket.history.into_iter().map(|h| h.decision).collect();
    assert_eq!(decisions, ["submit", "deployed"]);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

// --- consumers and HTTP, in-process ---

struct TestApp {
    app: channels::Application,
    db: Db,
    sessions: SessionMiddleware,
}

fn test_app() -> TestApp {
    let db = db();
    let sessions = SessionMiddleware::new(SECRET.to_vec()).expect("key");
    let app = crate::app(db.clone(), memory_layer(), sessions.clone(), crate::origins(&[]));
    TestApp { app, db, sessions }
}

impl TestApp {
    async fn cookie(&self, username: &'static str) -> String {
        let user = user(&self.db, username).await;
        let mut session = Session::new();
        session.login(user.id.to_string());
        format!("sessionid={}", self.sessions.encode(&session))
    }

    async fn socket(&self, path: &str, username: &'static str) -> WebsocketCommunicator {
        let mut ws = WebsocketCommunicator::new(&self.app, path).header("cookie", &self.cookie(username).await);
        assert_eq!(ws.connect().await.expect("handshake"), Connected::Accepted { subprotocol: None });
        ws
    }
}

async fn next_state(ws: &mut WebsocketCommunicator) -> Value {
    let event: Value = ws.receive_json().await.expect("an event");
    assert_eq!(event["type"], "ticket.state", "{event}");
    event["ticket"].clone()
}

fn node_state(ticket: &Value, node: &str) -> String {
    let nodes = ticket["graph"]["nodes"].as_array().expect("nodes");
    nodes.iter().find(|n| n["id"] == node).map(|n| n["state"].as_str().unwrap_or_default().to_owned()).expect("node")
}

#[tokio::test]
async fn anonymous_websockets_are_refused() {
    let t = test_app();
    let id = file(&t.db, &user(&t.db, "zhangkun").await, RELEASE, "t").await;
    for path in [format!("/ws/tickets/{id}/"), "/ws/tickets/".to_owned()] {
        let mut ws = WebsocketCommunicator::new(&t.app, &path);
        let connected = ws.connect().await.expect("handshake");
        assert!(matches!(connected, Connected::Denied { status: 403, code: 4001 }), "{path}: {connected:?}");
    }
    let mut ws = WebsocketCommunicator::new(&t.app, "/ws/tickets/999/").header("cookie", &t.cookie("zhangkun").await);
    assert!(matches!(ws.connect().await.expect("handshake"), Connected::Denied { code: 4004, .. }));
}

#[tokio::test]
async fn viewers_of_a_ticket_join_its_group_and_see_every_decision() {
    let t = test_app();
    let id = file(&t.db, &user(&t.db, "zhangkun").await, RELEASE, "t").await;
    let path = format!("/ws/tickets/{id}/");
    let mut requester = t.socket(&path, "zhangkun").await;
    let mut approver = t.socket(&path, "fulele").await;
    assert_eq!(node_state(&next_state(&mut requester).await, "step-0"), "current");
    next_state(&mut approver).await;

    approver.send_json(&json!({"action": "approve", "comment": "LGTM", "step": 0})).await.expect("send");
    for ws in [&mut requester, &mut approver] {
        let ticket = next_state(ws).await;
        assert_eq!((node_state(&ticket, "step-0"), node_state(&ticket, "step-1")), ("done".into(), "current".into()));
        assert_eq!(ticket["history"][1]["comment"], "LGTM");
    }
    // A viewer of another ticket hears nothing of this one.
    let other = file(&t.db, &user(&t.db, "zhangkun").await, RELEASE, "other").await;
    let mut elsewhere = t.socket(&format!("/ws/tickets/{other}/"), "fulele").await;
    next_state(&mut elsewhere).await;
    approver.send_json(&json!({"action": "reject", "comment": "wait"})).await.expect("send");
    let error: Value = approver.receive_json().await.expect("error");
    assert_eq!(error["code"], "forbidden", "付乐乐 may not decide the ops step: {error}");
    assert!(elsewhere.receive_nothing().await);
    assert!(requester.receive_nothing().await);
}

#[tokio::test]
async fn the_sender_of_an_action_with_a_request_id_hears_how_it_ended() {
    let t = test_app();
    let id = file(&t.db, &user(&t.db, "zhangkun").await, RELEASE, "t").await;
    let mut lead = t.socket(&format!("/ws/tickets/{id}/"), "fulele").await;
    next_state(&mut lead).await;
    let approval = json!({"action": "approve", "comment": "ok", "step": 0, "request_id": "a1"});
    lead.send_json(&approval).await.expect("send");
    let done: Value = lead.receive_json().await.expect("an answer");
    assert_eq!(done, json!({"type": "action.done", "request_id": "a1"}));
    assert_eq!(node_state(&next_state(&mut lead).await, "step-1"), "current");
    // The same request again: done again, and no new state (nothing changed).
    lead.send_json(&approval).await.expect("send");
    assert_eq!(lead.receive_json::<Value>().await.expect("an answer"), done);
    assert!(lead.receive_nothing().await);
    // A refused one: the error names the request.
    lead.send_json(&json!({"action": "reject", "comment": "no", "step": 0, "request_id": "b2"})).await.expect("send");
    let error: Value = lead.receive_json().await.expect("an error");
    assert_eq!((error["type"].as_str(), error["request_id"].as_str()), (Some("error"), Some("b2")), "{error}");
}

#[tokio::test]
async fn the_page_of_a_ticket_that_does_not_exist_is_a_404() {
    let t = test_app();
    let id = file(&t.db, &user(&t.db, "zhangkun").await, RELEASE, "t").await;
    let cookie = t.cookie("zhangkun").await;
    for (path, status) in
        [(format!("/tickets/{id}/"), 200), ("/tickets/999/".into(), 404), ("/tickets/abc/".into(), 404)]
    {
        let response = HttpCommunicator::new(&t.app, "GET", &path).header("cookie", &cookie).get_response().await;
        let response = response.expect("response");
        assert_eq!(response.status, status, "{path}");
        assert!(String::from_utf8_lossy(&response.body).contains("<!doctype html>"), "{path} is the page");
    }
}

#[tokio::test]
async fn a_forged_websocket_approval_is_refused_to_its_sender_and_changes_nothing() {
    let t = test_app();
    let id = file(&t.db, &user(&t.db, "zhangkun").await, RELEASE, "t").await;
    let path = format!("/ws/tickets/{id}/");
    let mut forger = t.socket(&path, "zhangkun").await;
    let mut watcher = t.socket(&path, "fulele").await;
    next_state(&mut forger).await;
    next_state(&mut watcher).await;
    let before = snapshot(&t.db).await;
    for forged in [json!({"action": "approve", "comment": "self-approved"}), json!({"action": "retry"}), json!("junk")]
    {
        forger.send_json(&forged).await.expect("send");
        let error: Value = forger.receive_json().await.expect("an error");
        assert_eq!(error["type"], "error", "{forged}: {error}");
        assert!(["forbidden", "conflict", "invalid"].contains(&error["code"].as_str().unwrap_or_default()), "{error}");
    }
    assert!(watcher.receive_nothing().await, "a refused action was announced");
    assert_eq!(snapshot(&t.db).await, before);
}

#[tokio::test]
async fn the_list_group_hears_of_new_tickets_and_decisions() {
    let t = test_app();
    let mut list = t.socket("/ws/tickets/", "manager").await;
    let first: Value = list.receive_json().await.expect("the list on connect");
    assert_eq!(first["type"], "tickets.list");
    let response = HttpCommunicator::new(&t.app, "POST", "/api/tickets")
        .header("cookie", &t.cookie("zhangkun").await)
        .header("content-type", "application/json")
        .body(r#"{"title": "VPN", "workflow_id": 2}"#)
        .get_response()
        .await
        .expect("response");
    assert_eq!(response.status, 201, "{:?}", response.body);
    let update: Value = list.receive_json().await.expect("an update");
    assert_eq!(update["list"]["tickets"][0]["title"], "VPN");
    let counts: Vec<(String, i64)> = serde_json::from_value(update["list"]["counts"].clone()).expect("counts");
    assert!(counts.contains(&("pending".into(), 1)), "{counts:?}");
    assert_eq!(update["list"]["tickets"][0]["approver_ids"], json!([user(&t.db, "manager").await.id]));
}

async fn post_action(t: &TestApp, cookie: Option<&str>, ticket: i64, body: &str) -> (u16, Value) {
    let mut request = HttpCommunicator::new(&t.app, "POST", &format!("/api/tickets/{ticket}/actions"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.get_response().await.expect("response");
    (response.status, serde_json::from_slice(&response.body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn forged_http_approvals_are_refused_and_change_nothing() {
    let t = test_app();
    let id = file(&t.db, &user(&t.db, "zhangkun").await, RELEASE, "t").await;
    let before = snapshot(&t.db).await;
    let approve = r#"{"action": "approve"}"#;
    let (status, body) = post_action(&t, Some(&t.cookie("zhangkun").await), id, approve).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, _) = post_action(&t, None, id, approve).await;
    assert_eq!(status, 401);
    // The approver's cookie with one character of its signature changed: anonymous.
    let mut tampered = t.cookie("fulele").await;
    let last = tampered.pop().expect("a character");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let (status, body) = post_action(&t, Some(&tampered), id, approve).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("not_signed_in")), "{body}");
    // The approver's own cookie, from another site's page: refused before anything happens.
    let response = HttpCommunicator::new(&t.app, "POST", &format!("/api/tickets/{id}/actions"))
        .header("cookie", &t.cookie("fulele").await)
        .header("origin", "https://evil.example")
        .header("content-type", "application/json")
        .body(approve)
        .get_response()
        .await
        .expect("response");
    assert_eq!(response.status, 403);
    // The same, as a form post (no JSON): refused too.
    let (status, _) = {
        let response = HttpCommunicator::new(&t.app, "POST", &format!("/api/tickets/{id}/actions"))
            .header("cookie", &t.cookie("fulele").await)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("action=approve")
            .get_response()
            .await
            .expect("response");
        (response.status, ())
    };
    assert_eq!(status, 400);
    assert_eq!(snapshot(&t.db).await, before);
    let (status, body) = post_action(&t, Some(&t.cookie("fulele").await), id, approve).await;
    assert_eq!(status, 200, "the real approver is let through: {body}");
}

#[tokio::test]
async fn a_state_older_than_the_one_shown_is_not_sent() {
    let t = test_app();
    let id = file(&t.db, &user(&t.db, "zhangkun").await, RELEASE, "t").await;
    let path = format!("/ws/tickets/{id}/");
    let mut viewer = t.socket(&path, "zhangkun").await;
    let old = next_state(&mut viewer).await;
    act(&t.db, &user(&t.db, "fulele").await, id, approve("")).await.expect("lead");
    let layer = t.app.layers().default_layer().expect("layer").clone();
    crate::consumers::broadcast(&t.db, &layer, id).await.expect("broadcast");
    let new = next_state(&mut viewer).await;
    assert!(new["revision"].as_i64() > old["revision"].as_i64(), "{} then {}", old["revision"], new["revision"]);
    // The older state arrives late, as it may from another process: the viewer keeps the newer.
    let late = crate::consumers::ApprovalEvent::TicketState { ticket: old };
    let message = channels::layers::Message::new(&late).expect("message");
    layer.group_send(&crate::consumers::ticket_group(id), message).await.expect("group_send");
    assert!(viewer.receive_nothing().await, "an older state was sent after a newer one");
}

#[tokio::test]
async fn a_step_abandoned_by_its_worker_fails_its_run_so_it_can_be_retried() {
    let db = db();
    let (id, job) = approved_release(&db, "t").await;
    let claimed = db.call(move |c| workflow::start_step(c, job.run_id, 0)).await.expect("claim");
    assert!(claimed);
    // Not yet abandoned: it started after the cut-off.
    let cutoff = db::now_ms() - 60_000;
    assert_eq!(db.call(move |c| workflow::fail_abandoned_steps(c, cutoff)).await.expect("sweep"), []);
    assert_eq!(row(&db, id).await.status, status::DEPLOYING);
    let cutoff = db::now_ms() + 1;
    let abandoned = db.call(move |c| workflow::fail_abandoned_steps(c, cutoff)).await.expect("sweep");
    assert_eq!(abandoned, [(id, job.run_id)]);
    let ticket = view(&db, id).await;
    assert_eq!(ticket.status, status::DEPLOY_FAILED);
    assert_eq!(step_states(&ticket)[0], ("download".into(), step_state::FAILED.into()));
    act(&db, &user(&db, "jiawenlong").await, id, retry()).await.expect("retried");
    pipeline::run(&db, &settings(0.0), &memory_layer(), &job).await.expect("run");
    assert_eq!(row(&db, id).await.status, status::DEPLOYED);
}
