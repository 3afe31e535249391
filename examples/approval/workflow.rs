//! The workflow's rules: who may do what to a ticket, and what each action changes.
//!
//! Every action runs in one `BEGIN IMMEDIATE` transaction that first checks the rules against
//! the rows as they are now; a refused action returns before anything is written, so it changes
//! nothing. HTTP handlers and WebSocket consumers both call these functions: the rules live in
//! one place, on the server.

use std::fmt;

use channels::middleware::StatusCode;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::db::{self, User, now_ms, status, step_state};

pub(crate) const MAX_TITLE_CHARS: usize = 200;
pub(crate) const MAX_BODY_CHARS: usize = 5000;
pub(crate) const MAX_COMMENT_CHARS: usize = 1000;

/// What a user asks to do to a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub(crate) enum Action {
    /// Approve the current step.
    Approve {
        #[serde(default)]
        comment: String,
    },
    /// Reject at the current step: the ticket ends, the requester may resubmit.
    Reject {
        #[serde(default)]
        comment: String,
    },
    /// The requester edits a rejected ticket and sends it back to the first step.
    Resubmit {
        #[serde(default)]
        title: Option<String>,
        #[serde(default)]
        body: Option<String>,
        #[serde(default)]
        comment: String,
    },
    /// Run the failed steps of a deployment again.
    Retry {
        #[serde(default)]
        comment: String,
    },
}

impl Action {
    fn decision(&self) -> &'static str {
        match self {
            Action::Approve { .. } => "approve",
            Action::Reject { .. } => "reject",
            Action::Resubmit { .. } => "resubmit",
            Action::Retry { .. } => "retry",
        }
    }
}

/// Why an action was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ActionError {
    /// No signed-in user.
    NotSignedIn,
    /// No such ticket (or workflow).
    NotFound(String),
    /// The user may not do this.
    Forbidden(String),
    /// The ticket is not in a state that allows it (someone else acted first, say).
    Conflict(String),
    /// The request itself is wrong (empty title, comment too long...).
    Invalid(String),
    /// The database failed.
    Database(String),
}

impl ActionError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ActionError::NotSignedIn => StatusCode::UNAUTHORIZED,
            ActionError::NotFound(_) => StatusCode::NOT_FOUND,
            ActionError::Forbidden(_) => StatusCode::FORBIDDEN,
            ActionError::Conflict(_) => StatusCode::CONFLICT,
            ActionError::Invalid(_) => StatusCode::BAD_REQUEST,
            ActionError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short machine-readable code, for clients.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ActionError::NotSignedIn => "not_signed_in",
            ActionError::NotFound(_) => "not_found",
            ActionError::Forbidden(_) => "forbidden",
            ActionError::Conflict(_) => "conflict",
            ActionError::Invalid(_) => "invalid",
            ActionError::Database(_) => "database",
        }
    }
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionError::NotSignedIn => f.write_str("sign in first"),
            ActionError::NotFound(what)
            | ActionError::Forbidden(what)
            | ActionError::Conflict(what)
            | ActionError::Invalid(what) => f.write_str(what),
            ActionError::Database(e) => write!(f, "database error: {e}"),
        }
    }
}

impl std::error::Error for ActionError {}

impl From<rusqlite::Error> for ActionError {
    fn from(e: rusqlite::Error) -> Self {
        ActionError::Database(e.to_string())
    }
}

/// The error as clients see it: `{"type": "error", "code": ..., "error": ...}`, plus the
/// `request_id` of the refused action when it had one.
#[derive(Serialize)]
pub(crate) struct ErrorBody {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) code: &'static str,
    pub(crate) error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request_id: Option<String>,
}

impl From<&ActionError> for ErrorBody {
    fn from(e: &ActionError) -> Self {
        ErrorBody { kind: "error", code: e.code(), error: e.to_string(), request_id: None }
    }
}

/// A request for the worker to run (or resume) a ticket's deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "deploy.run")]
pub(crate) struct DeployJob {
    pub(crate) ticket_id: i64,
    pub(crate) run_id: i64,
}

/// What the page knew when it asked for an action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct Asked {
    /// The step the user was looking at: if the ticket has moved on since (another approver
    /// acted first), the action is refused instead of applied to a step the user did not see.
    #[serde(default)]
    pub(crate) step: Option<i64>,
    /// An id the page gave this action (up to 64 ASCII letters, digits, `-` and `_`): the same
    /// user sending the same id again (a resend after a reconnect, a double click) is told it
    /// was done, and nothing is applied twice.
    #[serde(default)]
    pub(crate) request_id: Option<String>,
}

pub(crate) const MAX_REQUEST_ID_CHARS: usize = 64;

/// What a successful action leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) ticket_id: i64,
    /// A deployment to start, after the final approval or a retry.
    pub(crate) deploy: Option<DeployJob>,
    /// The action had been applied already, under the same request id: nothing changed now.
    pub(crate) repeated: bool,
}

/// A new ticket's fields.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct NewTicket {
    pub(crate) title: String,
    #[serde(default)]
    pub(crate) body: String,
    pub(crate) workflow_id: i64,
}

fn clean_title(title: &str) -> Result<String, ActionError> {
    let title = title.trim();
    match title.chars().count() {
        0 => Err(ActionError::Invalid("the title is empty".into())),
        n if n > MAX_TITLE_CHARS => {
            Err(ActionError::Invalid(format!("titles are limited to {MAX_TITLE_CHARS} characters")))
        }
        _ => Ok(title.to_owned()),
    }
}

fn clean_body(body: &str) -> Result<String, ActionError> {
    if body.chars().count() > MAX_BODY_CHARS {
        return Err(ActionError::Invalid(format!("descriptions are limited to {MAX_BODY_CHARS} characters")));
    }
    Ok(body.trim().to_owned())
}

fn clean_comment(comment: &str) -> Result<String, ActionError> {
    if comment.chars().count() > MAX_COMMENT_CHARS {
        return Err(ActionError::Invalid(format!("comments are limited to {MAX_COMMENT_CHARS} characters")));
    }
    Ok(comment.trim().to_owned())
}

fn clean_request_id(id: Option<&str>) -> Result<Option<&str>, ActionError> {
    match id {
        Some(id)
            if id.is_empty()
                || id.len() > MAX_REQUEST_ID_CHARS
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Err(ActionError::Invalid(format!(
                "a request_id is 1 to {MAX_REQUEST_ID_CHARS} ASCII letters, digits, '-' or '_'"
            )))
        }
        id => Ok(id),
    }
}

fn record(
    conn: &Connection,
    ticket_id: i64,
    step: Option<i64>,
    actor: i64,
    decision: &str,
    comment: &str,
    request_id: Option<&str>,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO approvals (ticket_id, step_position, actor_id, decision, comment, created_at, request_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![ticket_id, step, actor, decision, comment, now_ms(), request_id],
    )?;
    Ok(())
}

/// Any signed-in user files a ticket; it waits for the workflow's first step.
pub(crate) fn create_ticket(conn: &mut Connection, user: &User, new: &NewTicket) -> Result<i64, ActionError> {
    let title = clean_title(&new.title)?;
    let body = clean_body(&new.body)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(workflow) = db::workflow(&tx, new.workflow_id)? else {
        return Err(ActionError::NotFound(format!("there is no workflow {}", new.workflow_id)));
    };
    let Some(first) = workflow.steps.first() else {
        return Err(ActionError::Invalid(format!("the workflow {:?} has no steps", workflow.name)));
    };
    let now = now_ms();
    tx.execute(
        "INSERT INTO tickets (title, body, requester_id, workflow_id, current_step, status, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![title, body, user.id, workflow.id, first.position, status::PENDING, now],
    )?;
    let id = tx.last_insert_rowid();
    record(&tx, id, None, user.id, "submit", "", None)?;
    tx.commit()?;
    Ok(id)
}

/// Applies `action` by `user` to ticket `ticket_id`, or refuses it and changes nothing (see
/// [`Asked`] for what the page may add).
pub(crate) fn act(
    conn: &mut Connection,
    user: &User,
    ticket_id: i64,
    action: &Action,
    asked: &Asked,
) -> Result<Outcome, ActionError> {
    let request_id = clean_request_id(asked.request_id.as_deref())?;
    let seen_step = asked.step;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(ticket) = db::ticket_row(&tx, ticket_id)? else {
        return Err(ActionError::NotFound(format!("there is no ticket {ticket_id}")));
    };
    if let Some(request_id) = request_id {
        let done: Option<String> = tx
            .query_row(
                "SELECT decision FROM approvals WHERE ticket_id = ?1 AND actor_id = ?2 AND request_id = ?3",
                params![ticket_id, user.id, request_id],
                |r| r.get(0),
            )
            .optional()?;
        match done {
            Some(decision) if decision == action.decision() => {
                return Ok(Outcome { ticket_id, deploy: None, repeated: true });
            }
            Some(decision) => {
                return Err(ActionError::Invalid(format!(
                    "request {request_id} was a {decision}, not a {}",
                    action.decision()
                )));
            }
            None => {}
        }
    }
    let Some(workflow) = db::workflow(&tx, ticket.workflow_id)? else {
        return Err(ActionError::NotFound(format!("ticket {ticket_id} has no workflow")));
    };
    if let Some(seen) = seen_step
        && ticket.current_step != Some(seen)
    {
        return Err(ActionError::Conflict("the ticket has moved on since you loaded it; look again".into()));
    }
    let now = now_ms();
    let mut deploy = None;
    match action {
        Action::Approve { comment } | Action::Reject { comment } => {
            let comment = clean_comment(comment)?;
            if ticket.status != status::PENDING {
                return Err(ActionError::Conflict(format!(
                    "ticket {ticket_id} is {}, not waiting for approval",
                    ticket.status
                )));
            }
            let Some(step) = workflow.steps.iter().find(|s| Some(s.position) == ticket.current_step) else {
                return Err(ActionError::Conflict(format!("ticket {ticket_id} is at no step")));
            };
            if !step.approver_ids.contains(&user.id) {
                return Err(ActionError::Forbidden(format!(
                    "{} is not the approver of step {:?} (its approver is {})",
                    user.display_name, step.name, step.approver
                )));
            }
            if matches!(action, Action::Reject { .. }) {
                if comment.is_empty() {
                    return Err(ActionError::Invalid("say why you reject the ticket".into()));
                }
                tx.execute(
                    "UPDATE tickets SET status = ?1, updated_at = ?2 WHERE id = ?3",
                    params![status::REJECTED, now, ticket_id],
                )?;
            } else if let Some(next) = workflow.steps.iter().find(|s| s.position > step.position) {
                tx.execute(
                    "UPDATE tickets SET current_step = ?1, updated_at = ?2 WHERE id = ?3",
                    params![next.position, now, ticket_id],
                )?;
            } else if workflow.deploys {
                tx.execute(
                    "UPDATE tickets SET current_step = NULL, status = ?1, updated_at = ?2 WHERE id = ?3",
                    params![status::DEPLOYING, now, ticket_id],
                )?;
                let run_id = create_run(&tx, ticket_id, workflow.servers, now)?;
                deploy = Some(DeployJob { ticket_id, run_id });
            } else {
                tx.execute(
                    "UPDATE tickets SET current_step = NULL, status = ?1, updated_at = ?2 WHERE id = ?3",
                    params![status::APPROVED, now, ticket_id],
                )?;
            }
            record(&tx, ticket_id, Some(step.position), user.id, action.decision(), &comment, request_id)?;
        }
        Action::Resubmit { title, body, comment } => {
            let comment = clean_comment(comment)?;
            if ticket.status != status::REJECTED {
                return Err(ActionError::Conflict(format!(
                    "only a rejected ticket can be resubmitted; ticket {ticket_id} is {}",
                    ticket.status
                )));
            }
            if ticket.requester_id != user.id {
                return Err(ActionError::Forbidden(format!("only the requester may resubmit ticket {ticket_id}")));
            }
            let title = match title {
                Some(title) => clean_title(title)?,
                None => ticket.title.clone(),
            };
            let body = match body {
                Some(body) => clean_body(body)?,
                None => ticket.body.clone(),
            };
            let first = workflow.steps.first().map(|s| s.position);
            tx.execute(
                "UPDATE tickets SET title = ?1, body = ?2, current_step = ?3, status = ?4, updated_at = ?5 WHERE id = ?6",
                params![title, body, first, status::PENDING, now, ticket_id],
            )?;
            record(&tx, ticket_id, None, user.id, "resubmit", &comment, request_id)?;
        }
        Action::Retry { comment } => {
            let comment = clean_comment(comment)?;
            if ticket.status != status::DEPLOY_FAILED {
                return Err(ActionError::Conflict(format!(
                    "ticket {ticket_id} has no failed deployment to retry; it is {}",
                    ticket.status
                )));
            }
            if !db::retry_user_ids(&tx, &workflow)?.contains(&user.id) {
                return Err(ActionError::Forbidden(format!(
                    "{} may not retry this deployment: the last step's approver or a manager may",
                    user.display_name
                )));
            }
            let Some(run) = db::latest_run(&tx, ticket_id)? else {
                return Err(ActionError::Conflict(format!("ticket {ticket_id} has no deployment run")));
            };
            tx.execute(
                "UPDATE deploy_steps SET status = ?1, message = '' WHERE run_id = ?2 AND status IN (?3, ?4)",
                params![step_state::PENDING, run.run_id, step_state::FAILED, step_state::RUNNING],
            )?;
            tx.execute(
                "UPDATE deploy_runs SET status = ?1, finished_at = NULL WHERE id = ?2",
                params![step_state::RUNNING, run.run_id],
            )?;
            tx.execute(
                "UPDATE tickets SET status = ?1, updated_at = ?2 WHERE id = ?3",
                params![status::DEPLOYING, now, ticket_id],
            )?;
            record(&tx, ticket_id, None, user.id, "retry", &comment, request_id)?;
            deploy = Some(DeployJob { ticket_id, run_id: run.run_id });
        }
    }
    tx.execute("UPDATE tickets SET revision = revision + 1 WHERE id = ?1", [ticket_id])?;
    tx.commit()?;
    Ok(Outcome { ticket_id, deploy, repeated: false })
}

fn create_run(conn: &Connection, ticket_id: i64, servers: i64, now: i64) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO deploy_runs (ticket_id, status, created_at) VALUES (?1, ?2, ?3)",
        params![ticket_id, step_state::RUNNING, now],
    )?;
    let run_id = conn.last_insert_rowid();
    for (position, (stage, key, name)) in db::pipeline_plan(servers).into_iter().enumerate() {
        conn.execute(
            "INSERT INTO deploy_steps (run_id, position, stage, key, name, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![run_id, position as i64, stage, key, name, step_state::PENDING],
        )?;
    }
    Ok(run_id)
}

/// A change to a run is a change to its ticket.
fn bump_revision_of_run(conn: &Connection, run_id: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE tickets SET revision = revision + 1 WHERE id = (SELECT ticket_id FROM deploy_runs WHERE id = ?1)",
        [run_id],
    )?;
    Ok(())
}

/// The worker claims a pending step of a running run: true if this call moved it to running
/// (so two workers given the same job never run one step twice).
pub(crate) fn start_step(conn: &mut Connection, run_id: i64, position: i64) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let changed = tx.execute(
        "UPDATE deploy_steps SET status = ?1, attempts = attempts + 1, started_at = ?2, finished_at = NULL
         WHERE run_id = ?3 AND position = ?4 AND status = ?5
           AND run_id IN (SELECT id FROM deploy_runs WHERE status = ?1)",
        params![step_state::RUNNING, now_ms(), run_id, position, step_state::PENDING],
    )?;
    if changed == 1 {
        bump_revision_of_run(&tx, run_id)?;
    }
    tx.commit()?;
    Ok(changed == 1)
}

/// Records a step's result.
pub(crate) fn finish_step(
    conn: &mut Connection,
    run_id: i64,
    position: i64,
    ok: bool,
    message: &str,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let state = if ok { step_state::SUCCEEDED } else { step_state::FAILED };
    tx.execute(
        "UPDATE deploy_steps SET status = ?1, message = ?2, finished_at = ?3 WHERE run_id = ?4 AND position = ?5",
        params![state, message, now_ms(), run_id, position],
    )?;
    bump_revision_of_run(&tx, run_id)?;
    tx.commit()
}

/// Ends a run: the ticket is deployed, or waits for a retry. The end goes into the ticket's
/// history, with the names and messages of the failed steps.
pub(crate) fn finish_run(conn: &mut Connection, ticket_id: i64, run_id: i64, ok: bool) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_ms();
    let (run_state, ticket_state) =
        if ok { (step_state::SUCCEEDED, status::DEPLOYED) } else { (step_state::FAILED, status::DEPLOY_FAILED) };
    tx.execute("UPDATE deploy_runs SET status = ?1, finished_at = ?2 WHERE id = ?3", params![run_state, now, run_id])?;
    let ended = tx.execute(
        "UPDATE tickets SET status = ?1, updated_at = ?2, revision = revision + 1 WHERE id = ?3 AND status = ?4",
        params![ticket_state, now, ticket_id, status::DEPLOYING],
    )?;
    if ended == 1 {
        let failed: Vec<String> = tx
            .prepare(
                "SELECT CASE message WHEN '' THEN name ELSE message END FROM deploy_steps
                 WHERE run_id = ?1 AND status = ?2 ORDER BY position",
            )?
            .query_map(params![run_id, step_state::FAILED], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let message = if ok || failed.is_empty() { String::new() } else { failed.join("; ") };
        tx.execute(
            "INSERT INTO deploy_results (ticket_id, run_id, status, message, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![ticket_id, run_id, run_state, message, now],
        )?;
    }
    tx.commit()
}

/// Fails the steps left `running` since before `started_before` (ms since the epoch): their
/// worker stopped mid-step (the process ended). Their runs fail too, so that an authorized
/// user can retry them. Returns the tickets that changed.
pub(crate) fn fail_abandoned_steps(conn: &mut Connection, started_before: i64) -> rusqlite::Result<Vec<(i64, i64)>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let abandoned: Vec<(i64, i64)> = tx
        .prepare(
            "SELECT DISTINCT r.ticket_id, r.id FROM deploy_steps s JOIN deploy_runs r ON r.id = s.run_id
             WHERE s.status = ?1 AND s.started_at < ?2 AND r.status = ?1",
        )?
        .query_map(params![step_state::RUNNING, started_before], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (_, run_id) in &abandoned {
        tx.execute(
            "UPDATE deploy_steps SET status = ?1, message = 'interrupted: its worker stopped', finished_at = ?2
             WHERE run_id = ?3 AND status = ?4 AND started_at < ?5",
            params![step_state::FAILED, now_ms(), run_id, step_state::RUNNING, started_before],
        )?;
    }
    tx.commit()?;
    for (ticket_id, run_id) in &abandoned {
        finish_run(conn, *ticket_id, *run_id, false)?;
    }
    Ok(abandoned)
}
