//! The tables, in SQLite: schema and migrations, demo data, and the read side (what pages and
//! consumers show). The write side — the workflow's rules — is in `workflow.rs`.
//!
//! SQLite calls block, so every call goes through [`Db::call`], which runs it on tokio's
//! blocking pool. Several processes may share one database file: it is opened in WAL mode with
//! a busy timeout, and every write is one `BEGIN IMMEDIATE` transaction.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// Each entry upgrades the schema by one version (`PRAGMA user_version`); never edit one that
/// has shipped, append a new one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the workflow tables.
    "CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        role TEXT NOT NULL
    );
    CREATE TABLE workflows (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL,
        deploys INTEGER NOT NULL DEFAULT 0,
        servers INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE workflow_steps (
        id INTEGER PRIMARY KEY,
        workflow_id INTEGER NOT NULL REFERENCES workflows(id),
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        approver_user_id INTEGER REFERENCES users(id),
        approver_role TEXT,
        CHECK ((approver_user_id IS NULL) <> (approver_role IS NULL)),
        UNIQUE (workflow_id, position)
    );
    CREATE TABLE tickets (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        body TEXT NOT NULL,
        requester_id INTEGER NOT NULL REFERENCES users(id),
        workflow_id INTEGER NOT NULL REFERENCES workflows(id),
        current_step INTEGER,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        revision INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX tickets_by_status ON tickets(status);
    CREATE TABLE approvals (
        id INTEGER PRIMARY KEY,
        ticket_id INTEGER NOT NULL REFERENCES tickets(id),
        step_position INTEGER,
        actor_id INTEGER NOT NULL REFERENCES users(id),
        decision TEXT NOT NULL,
        comment TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX approvals_by_ticket ON approvals(ticket_id, id);
    CREATE TABLE deploy_runs (
        id INTEGER PRIMARY KEY,
        ticket_id INTEGER NOT NULL REFERENCES tickets(id),
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        finished_at INTEGER
    );
    CREATE INDEX deploy_runs_by_ticket ON deploy_runs(ticket_id, id);
    CREATE TABLE deploy_steps (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES deploy_runs(id),
        position INTEGER NOT NULL,
        stage INTEGER NOT NULL,
        key TEXT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        started_at INTEGER,
        finished_at INTEGER,
        UNIQUE (run_id, position)
    );",
    // 2: a finished deployment is part of the ticket's history; an action carries the id the
    // page gave it, so that the same action sent twice (a resend after a reconnect) applies once.
    "CREATE TABLE deploy_results (
        id INTEGER PRIMARY KEY,
        ticket_id INTEGER NOT NULL REFERENCES tickets(id),
        run_id INTEGER NOT NULL REFERENCES deploy_runs(id),
        status TEXT NOT NULL,
        message TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX deploy_results_by_ticket ON deploy_results(ticket_id, id);
    INSERT INTO deploy_results (ticket_id, run_id, status, message, created_at)
        SELECT ticket_id, id, status, '', finished_at FROM deploy_runs
        WHERE finished_at IS NOT NULL AND status IN ('succeeded', 'failed') ORDER BY finished_at;
    ALTER TABLE approvals ADD COLUMN request_id TEXT;
    CREATE UNIQUE INDEX approvals_by_request ON approvals(ticket_id, actor_id, request_id)
        WHERE request_id IS NOT NULL;",
];

/// Ticket statuses.
pub(crate) mod status {
    /// Waiting for the current step's approver.
    pub(crate) const PENDING: &str = "pending";
    /// Rejected at some step; the requester may edit and resubmit.
    pub(crate) const REJECTED: &str = "rejected";
    /// Every step approved; the workflow deploys nothing.
    pub(crate) const APPROVED: &str = "approved";
    /// Every step approved; the deployment pipeline is running.
    pub(crate) const DEPLOYING: &str = "deploying";
    /// The pipeline finished.
    pub(crate) const DEPLOYED: &str = "deployed";
    /// A pipeline step failed; an authorized user may retry it.
    pub(crate) const DEPLOY_FAILED: &str = "deploy_failed";
    /// Every status, in the order the charts show them.
    pub(crate) const ALL: [&str; 6] = [PENDING, REJECTED, APPROVED, DEPLOYING, DEPLOYED, DEPLOY_FAILED];
}

/// Pipeline step (and run) states.
pub(crate) mod step_state {
    pub(crate) const PENDING: &str = "pending";
    pub(crate) const RUNNING: &str = "running";
    pub(crate) const SUCCEEDED: &str = "succeeded";
    pub(crate) const FAILED: &str = "failed";
}

/// A database error, or a refusal of the workflow's rules (see `workflow::ActionError`).
pub(crate) type DbResult<T> = Result<T, rusqlite::Error>;

/// A shared connection to the database file; cheap to clone.
#[derive(Clone)]
pub(crate) struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating if needed) the database at `path`, migrates it and adds the demo data to
    /// an empty one.
    pub(crate) fn open(path: &Path) -> DbResult<Db> {
        Self::prepare(Connection::open(path)?)
    }

    /// A private database in memory, for tests.
    #[cfg(test)]
    pub(crate) fn open_in_memory() -> DbResult<Db> {
        Self::prepare(Connection::open_in_memory()?)
    }

    fn prepare(mut conn: Connection) -> DbResult<Db> {
        conn.busy_timeout(Duration::from_secs(10))?;
        // WAL lets readers in one process go on while another process writes.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
        migrate(&mut conn)?;
        seed_demo_data(&mut conn)?;
        Ok(Db { conn: Arc::new(Mutex::new(conn)) })
    }

    /// Runs `f` with the connection on the blocking pool, so the async runtime never waits on
    /// SQLite.
    pub(crate) async fn call<T, F>(&self, f: F) -> T
    where
        F: FnOnce(&mut Connection) -> T + Send + 'static,
        T: Send + 'static,
    {
        let conn = self.conn.clone();
        let run = move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        };
        match tokio::task::spawn_blocking(run).await {
            Ok(value) => value,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

fn migrate(conn: &mut Connection) -> DbResult<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(0);
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", index + 1))?;
        tracing::info!(version = index + 1, "database migrated");
    }
    tx.commit()
}

/// Demo users and two workflow templates, so a fresh database is usable at once.
fn seed_demo_data(conn: &mut Connection) -> DbResult<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let users: i64 = tx.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
    if users > 0 {
        return tx.commit();
    }
    for (username, name, role) in [
        ("zhangkun", "张坤", "developer"),
        ("fulele", "付乐乐", "lead"),
        ("jiawenlong", "贾文龙", "ops"),
        ("manager", "王经理", "manager"),
    ] {
        tx.execute(
            "INSERT INTO users (username, display_name, role) VALUES (?1, ?2, ?3)",
            params![username, name, role],
        )?;
    }
    let fulele: i64 = tx.query_row("SELECT id FROM users WHERE username = 'fulele'", [], |r| r.get(0))?;
    tx.execute(
        "INSERT INTO workflows (name, description, deploys, servers) VALUES (?1, ?2, 1, 3)",
        params!["上线发布 Release", "Team lead and ops approve, then the code is deployed to three servers."],
    )?;
    let release = tx.last_insert_rowid();
    tx.execute(
        "INSERT INTO workflow_steps (workflow_id, position, name, approver_user_id) VALUES (?1, 0, ?2, ?3)",
        params![release, "组长审批 Lead review", fulele],
    )?;
    tx.execute(
        "INSERT INTO workflow_steps (workflow_id, position, name, approver_role) VALUES (?1, 1, ?2, 'ops')",
        params![release, "运维审批 Ops review"],
    )?;
    tx.execute(
        "INSERT INTO workflows (name, description, deploys, servers) VALUES (?1, ?2, 0, 0)",
        params!["权限申请 Access request", "A manager grants access; nothing is deployed."],
    )?;
    let access = tx.last_insert_rowid();
    tx.execute(
        "INSERT INTO workflow_steps (workflow_id, position, name, approver_role) VALUES (?1, 0, ?2, 'manager')",
        params![access, "经理审批 Manager approval"],
    )?;
    tx.commit()
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// A user, as the session middleware puts it in the scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct User {
    pub(crate) id: i64,
    pub(crate) username: String,
    pub(crate) display_name: String,
    pub(crate) role: String,
}

impl User {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
        Ok(User { id: row.get(0)?, username: row.get(1)?, display_name: row.get(2)?, role: row.get(3)? })
    }
}

pub(crate) fn user_by_id(conn: &Connection, id: i64) -> DbResult<Option<User>> {
    conn.query_row("SELECT id, username, display_name, role FROM users WHERE id = ?1", [id], User::from_row).optional()
}

pub(crate) fn user_by_username(conn: &Connection, username: &str) -> DbResult<Option<User>> {
    conn.query_row("SELECT id, username, display_name, role FROM users WHERE username = ?1", [username], User::from_row)
        .optional()
}

pub(crate) fn users(conn: &Connection) -> DbResult<Vec<User>> {
    let mut stmt = conn.prepare("SELECT id, username, display_name, role FROM users ORDER BY id")?;
    let rows = stmt.query_map([], User::from_row)?;
    rows.collect()
}

/// One step of a workflow template: who approves it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StepView {
    pub(crate) position: i64,
    pub(crate) name: String,
    /// "付乐乐" or "role: ops".
    pub(crate) approver: String,
    /// Everyone who may decide this step now.
    pub(crate) approver_ids: Vec<i64>,
    /// `done`, `current`, `pending` or `rejected` (empty in a template).
    pub(crate) state: String,
}

/// A workflow template and its ordered steps.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WorkflowView {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) deploys: bool,
    pub(crate) servers: i64,
    pub(crate) steps: Vec<StepView>,
}

pub(crate) fn workflow(conn: &Connection, id: i64) -> DbResult<Option<WorkflowView>> {
    let Some(mut view) = conn
        .query_row("SELECT id, name, description, deploys, servers FROM workflows WHERE id = ?1", [id], |r| {
            Ok(WorkflowView {
                id: r.get(0)?,
                name: r.get(1)?,
                description: r.get(2)?,
                deploys: r.get(3)?,
                servers: r.get(4)?,
                steps: Vec::new(),
            })
        })
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt = conn.prepare(
        "SELECT s.position, s.name, s.approver_user_id, s.approver_role, u.display_name
         FROM workflow_steps s LEFT JOIN users u ON u.id = s.approver_user_id
         WHERE s.workflow_id = ?1 ORDER BY s.position",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    for row in rows {
        let (position, name, user_id, role, user_name) = row?;
        let (approver, approver_ids) = match (user_id, role) {
            (Some(user_id), _) => (user_name.unwrap_or_default(), vec![user_id]),
            (None, Some(role)) => {
                let mut ids = conn.prepare_cached("SELECT id FROM users WHERE role = ?1 ORDER BY id")?;
                let ids = ids.query_map([&role], |r| r.get(0))?.collect::<DbResult<Vec<i64>>>()?;
                (format!("role: {role}"), ids)
            }
            (None, None) => (String::new(), Vec::new()),
        };
        view.steps.push(StepView { position, name, approver, approver_ids, state: String::new() });
    }
    Ok(Some(view))
}

pub(crate) fn workflows(conn: &Connection) -> DbResult<Vec<WorkflowView>> {
    let ids = conn
        .prepare("SELECT id FROM workflows ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<DbResult<Vec<i64>>>()?;
    let mut views = Vec::with_capacity(ids.len());
    for id in ids {
        views.extend(workflow(conn, id)?);
    }
    Ok(views)
}

/// A ticket row, without its related rows.
#[derive(Debug, Clone)]
pub(crate) struct TicketRow {
    pub(crate) id: i64,
    pub(crate) title: String,
    pub(crate) body: String,
    pub(crate) requester_id: i64,
    pub(crate) workflow_id: i64,
    pub(crate) current_step: Option<i64>,
    pub(crate) status: String,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    /// Counts the ticket's changes (its pipeline's included): a state with a lower revision
    /// is older.
    pub(crate) revision: i64,
}

pub(crate) fn ticket_row(conn: &Connection, id: i64) -> DbResult<Option<TicketRow>> {
    conn.query_row(
        "SELECT id, title, body, requester_id, workflow_id, current_step, status, created_at, updated_at,
                revision
         FROM tickets WHERE id = ?1",
        [id],
        |r| {
            Ok(TicketRow {
                id: r.get(0)?,
                title: r.get(1)?,
                body: r.get(2)?,
                requester_id: r.get(3)?,
                workflow_id: r.get(4)?,
                current_step: r.get(5)?,
                status: r.get(6)?,
                created_at: r.get(7)?,
                updated_at: r.get(8)?,
                revision: r.get(9)?,
            })
        },
    )
    .optional()
}

/// Who the history names for a finished deployment.
pub(crate) const PIPELINE_ACTOR: &str = "部署流水线 Pipeline";

/// One line of a ticket's history.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HistoryEntry {
    pub(crate) actor: String,
    /// `submit`, `approve`, `reject`, `resubmit` or `retry` (a person's decision), or `deployed`
    /// or `deploy_failed` (a deployment run that ended; the actor is [`PIPELINE_ACTOR`]).
    pub(crate) decision: String,
    pub(crate) step: Option<String>,
    pub(crate) comment: String,
    pub(crate) at: i64,
}

/// One step of a deployment run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeployStepView {
    pub(crate) position: i64,
    /// Steps of one stage run at the same time (the servers).
    pub(crate) stage: i64,
    pub(crate) key: String,
    pub(crate) name: String,
    /// `pending`, `running`, `succeeded` or `failed`.
    pub(crate) status: String,
    pub(crate) attempts: i64,
    pub(crate) message: String,
}

/// The latest deployment run of a ticket.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeployView {
    pub(crate) run_id: i64,
    pub(crate) status: String,
    pub(crate) steps: Vec<DeployStepView>,
}

pub(crate) fn latest_run(conn: &Connection, ticket_id: i64) -> DbResult<Option<DeployView>> {
    let Some((run_id, status)) = conn
        .query_row(
            "SELECT id, status FROM deploy_runs WHERE ticket_id = ?1 ORDER BY id DESC LIMIT 1",
            [ticket_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
    else {
        return Ok(None);
    };
    Ok(Some(DeployView { run_id, status, steps: run_steps(conn, run_id)? }))
}

pub(crate) fn run_steps(conn: &Connection, run_id: i64) -> DbResult<Vec<DeployStepView>> {
    let mut stmt = conn.prepare_cached(
        "SELECT position, stage, key, name, status, attempts, message FROM deploy_steps
         WHERE run_id = ?1 ORDER BY position",
    )?;
    let rows = stmt.query_map([run_id], |r| {
        Ok(DeployStepView {
            position: r.get(0)?,
            stage: r.get(1)?,
            key: r.get(2)?,
            name: r.get(3)?,
            status: r.get(4)?,
            attempts: r.get(5)?,
            message: r.get(6)?,
        })
    })?;
    rows.collect()
}

/// A node of the flowchart.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GraphNode {
    pub(crate) id: String,
    pub(crate) label: String,
    /// `start`, `approval`, `deploy` or `end`: the node's shape.
    pub(crate) kind: &'static str,
    /// `done`, `current`, `pending`, `rejected`, `running` or `failed`: the node's color.
    pub(crate) state: &'static str,
    /// Column, left to right.
    pub(crate) rank: usize,
    /// Row within the column, and how many rows the column has.
    pub(crate) lane: usize,
    pub(crate) lanes: usize,
}

/// A link of the flowchart; `label` is what the link shows ("执行中..." on a running step).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GraphEdge {
    pub(crate) source: String,
    pub(crate) target: String,
    pub(crate) label: String,
    /// The target's state: links into a running or current node are highlighted.
    pub(crate) state: &'static str,
}

/// The flowchart of a ticket: its approval steps, then (for deploying workflows) the pipeline.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Graph {
    pub(crate) nodes: Vec<GraphNode>,
    pub(crate) edges: Vec<GraphEdge>,
}

/// Everything a ticket page shows; sent whole to every viewer whenever anything changes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TicketView {
    pub(crate) id: i64,
    pub(crate) title: String,
    pub(crate) body: String,
    pub(crate) status: String,
    pub(crate) requester: User,
    pub(crate) workflow: WorkflowView,
    pub(crate) current_step: Option<i64>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) revision: i64,
    pub(crate) history: Vec<HistoryEntry>,
    pub(crate) deploy: Option<DeployView>,
    /// Who may retry a failed deployment.
    pub(crate) retry_ids: Vec<i64>,
    pub(crate) graph: Graph,
}

pub(crate) fn ticket_view(conn: &Connection, id: i64) -> DbResult<Option<TicketView>> {
    let Some(row) = ticket_row(conn, id)? else { return Ok(None) };
    let Some(mut workflow) = workflow(conn, row.workflow_id)? else { return Ok(None) };
    let Some(requester) = user_by_id(conn, row.requester_id)? else { return Ok(None) };
    let rejected = row.status == status::REJECTED;
    for step in &mut workflow.steps {
        step.state = match row.current_step {
            Some(current) if step.position < current => "done",
            Some(current) if step.position == current && rejected => "rejected",
            Some(current) if step.position == current => "current",
            Some(_) => "pending",
            None => "done",
        }
        .to_owned();
    }
    // People's decisions and the ends of deployment runs, in the order they happened (a
    // decision first when both fall in the same millisecond: a run ends after what started it).
    let mut stmt = conn.prepare_cached(
        "SELECT u.display_name, a.decision, s.name, a.comment, a.created_at, 0 AS source, a.id
         FROM approvals a JOIN users u ON u.id = a.actor_id
         JOIN tickets t ON t.id = a.ticket_id
         LEFT JOIN workflow_steps s ON s.workflow_id = t.workflow_id AND s.position = a.step_position
         WHERE a.ticket_id = ?1
         UNION ALL
         SELECT ?2, CASE d.status WHEN 'succeeded' THEN 'deployed' ELSE 'deploy_failed' END, NULL, d.message,
                d.created_at, 1 AS source, d.id
         FROM deploy_results d WHERE d.ticket_id = ?1
         ORDER BY 5, 6, 7",
    )?;
    let history = stmt
        .query_map(params![id, PIPELINE_ACTOR], |r| {
            Ok(HistoryEntry {
                actor: r.get(0)?,
                decision: r.get(1)?,
                step: r.get(2)?,
                comment: r.get(3)?,
                at: r.get(4)?,
            })
        })?
        .collect::<DbResult<Vec<_>>>()?;
    let deploy = latest_run(conn, id)?;
    let retry_ids = retry_user_ids(conn, &workflow)?;
    let graph = graph(&row, &workflow, deploy.as_ref());
    Ok(Some(TicketView {
        id: row.id,
        title: row.title,
        body: row.body,
        status: row.status,
        requester,
        workflow,
        current_step: row.current_step,
        created_at: row.created_at,
        updated_at: row.updated_at,
        revision: row.revision,
        history,
        deploy,
        retry_ids,
        graph,
    }))
}

/// Who may retry a failed deployment: the last step's approvers and every manager.
pub(crate) fn retry_user_ids(conn: &Connection, workflow: &WorkflowView) -> DbResult<Vec<i64>> {
    let mut ids: Vec<i64> = workflow.steps.last().map(|s| s.approver_ids.clone()).unwrap_or_default();
    let managers = conn
        .prepare_cached("SELECT id FROM users WHERE role = 'manager'")?
        .query_map([], |r| r.get(0))?
        .collect::<DbResult<Vec<i64>>>()?;
    ids.extend(managers);
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Lays out the flowchart: start → approval steps → (download → compile → package → servers →
/// restart) → end, with each node's state and each link's label.
pub(crate) fn graph(ticket: &TicketRow, workflow: &WorkflowView, deploy: Option<&DeployView>) -> Graph {
    let mut g = Graph::default();
    let add_node = |g: &mut Graph, id: String, label: String, kind, state, rank, lane, lanes| {
        g.nodes.push(GraphNode { id, label, kind, state, rank, lane, lanes });
    };
    add_node(&mut g, "start".into(), "提交 Submitted".into(), "start", "done", 0, 0, 1);
    let mut previous = vec!["start".to_owned()];
    let mut rank = 1;
    for step in &workflow.steps {
        let state = match step.state.as_str() {
            "done" => "done",
            "current" => "current",
            "rejected" => "rejected",
            _ => "pending",
        };
        let id = format!("step-{}", step.position);
        add_node(&mut g, id.clone(), format!("{}\n{}", step.name, step.approver), "approval", state, rank, 0, 1);
        let label = match state {
            "done" => "通过",
            "current" => "待审批",
            "rejected" => "驳回",
            _ => "",
        };
        for source in &previous {
            g.edges.push(GraphEdge { source: source.clone(), target: id.clone(), label: label.into(), state });
        }
        previous = vec![id];
        rank += 1;
    }
    if workflow.deploys {
        let steps: Vec<DeployStepView> = match deploy {
            Some(run) => run.steps.clone(),
            None => pipeline_plan(workflow.servers)
                .into_iter()
                .enumerate()
                .map(|(position, (stage, key, name))| DeployStepView {
                    position: position as i64,
                    stage,
                    key,
                    name,
                    status: step_state::PENDING.into(),
                    attempts: 0,
                    message: String::new(),
                })
                .collect(),
        };
        let mut stages: Vec<Vec<&DeployStepView>> = Vec::new();
        for step in &steps {
            match stages.last_mut() {
                Some(stage) if stage[0].stage == step.stage => stage.push(step),
                _ => stages.push(vec![step]),
            }
        }
        for stage in stages {
            let lanes = stage.len();
            let mut ids = Vec::with_capacity(lanes);
            for (lane, step) in stage.into_iter().enumerate() {
                let state = match step.status.as_str() {
                    step_state::SUCCEEDED => "done",
                    step_state::RUNNING => "running",
                    step_state::FAILED => "failed",
                    _ => "pending",
                };
                let id = format!("deploy-{}", step.key);
                add_node(&mut g, id.clone(), step.name.clone(), "deploy", state, rank, lane, lanes);
                let label = match state {
                    "running" => "执行中...",
                    "failed" => "失败",
                    _ => "",
                };
                for source in &previous {
                    g.edges.push(GraphEdge { source: source.clone(), target: id.clone(), label: label.into(), state });
                }
                ids.push(id);
            }
            previous = ids;
            rank += 1;
        }
    }
    let end_state = match ticket.status.as_str() {
        status::APPROVED | status::DEPLOYED => "done",
        status::REJECTED => "rejected",
        _ => "pending",
    };
    add_node(&mut g, "end".into(), "完成 Done".into(), "end", end_state, rank, 0, 1);
    for source in &previous {
        g.edges.push(GraphEdge {
            source: source.clone(),
            target: "end".into(),
            label: String::new(),
            state: end_state,
        });
    }
    g
}

/// The pipeline's steps for `servers` servers: `(stage, key, name)`. The servers share a stage
/// and run at the same time.
pub(crate) fn pipeline_plan(servers: i64) -> Vec<(i64, String, String)> {
    let mut plan = vec![
        (0, "download".to_owned(), "下载代码 Download".to_owned()),
        (1, "compile".to_owned(), "编译 Compile".to_owned()),
        (2, "package".to_owned(), "打包 Package".to_owned()),
    ];
    for n in 1..=servers.max(1) {
        plan.push((3, format!("server-{n}"), format!("服务器{n} Server {n}")));
    }
    plan.push((4, "restart".to_owned(), "重启服务 Restart".to_owned()));
    plan
}

/// A line of the ticket list.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TicketSummary {
    pub(crate) id: i64,
    pub(crate) title: String,
    pub(crate) status: String,
    pub(crate) requester: String,
    pub(crate) workflow: String,
    pub(crate) step: Option<String>,
    /// Who may decide the current step.
    pub(crate) approver_ids: Vec<i64>,
    pub(crate) updated_at: i64,
}

/// The list page's data: the latest tickets and the count of tickets in each status.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ListView {
    pub(crate) tickets: Vec<TicketSummary>,
    pub(crate) counts: Vec<(String, i64)>,
    /// Grows with every change to any ticket (tickets are never deleted): a list with a lower
    /// revision is older.
    pub(crate) revision: i64,
}

/// How many tickets the list shows (the counts cover all of them).
const LIST_LIMIT: i64 = 200;

pub(crate) fn list_view(conn: &Connection) -> DbResult<ListView> {
    let mut stmt = conn.prepare_cached(
        "SELECT t.id, t.title, t.status, u.display_name, w.id, w.name, t.current_step, t.updated_at
         FROM tickets t JOIN users u ON u.id = t.requester_id JOIN workflows w ON w.id = t.workflow_id
         ORDER BY t.updated_at DESC, t.id DESC LIMIT ?1",
    )?;
    let rows = stmt
        .query_map([LIST_LIMIT], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?
        .collect::<DbResult<Vec<_>>>()?;
    let mut workflows = std::collections::HashMap::new();
    let mut tickets = Vec::with_capacity(rows.len());
    for (id, title, status, requester, workflow_id, workflow_name, current, updated_at) in rows {
        if !workflows.contains_key(&workflow_id)
            && let Some(view) = workflow(conn, workflow_id)?
        {
            workflows.insert(workflow_id, view);
        }
        let step = workflows
            .get(&workflow_id)
            .and_then(|w| current.and_then(|c| w.steps.iter().find(|s| s.position == c)))
            .filter(|_| status == status::PENDING);
        tickets.push(TicketSummary {
            id,
            title,
            workflow: workflow_name,
            step: step.map(|s| s.name.clone()),
            approver_ids: step.map(|s| s.approver_ids.clone()).unwrap_or_default(),
            status,
            requester,
            updated_at,
        });
    }
    let mut counts: Vec<(String, i64)> = status::ALL.iter().map(|s| ((*s).to_owned(), 0)).collect();
    let mut stmt = conn.prepare_cached("SELECT status, COUNT(*) FROM tickets GROUP BY status")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (status, count) = row?;
        if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == status) {
            slot.1 = count;
        }
    }
    let revision = conn.query_row("SELECT COALESCE(SUM(revision), 0) + COUNT(*) FROM tickets", [], |r| r.get(0))?;
    Ok(ListView { tickets, counts, revision })
}
