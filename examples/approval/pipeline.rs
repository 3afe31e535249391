//! The deployment worker: after a ticket's final approval it runs the ticket's pipeline —
//! download code → compile → package → server 1..N (at the same time) → restart service — as
//! simulated steps, recording each step's state in the database and announcing it to the
//! ticket's page and the list, so the flowchart lights up step by step.
//!
//! It is a [`WorkerConsumer`] on the channel `approval.deploy`; with the Redis layer any process
//! may run it. The job message only says which run to work on; the steps and their states live
//! in the database, and a worker claims each step there before running it, so a job delivered
//! twice never runs a step twice.
//!
//! Steps are simulated: each sleeps for the step delay and then fails with the configured
//! probability. A ticket whose title contains `[fail:KEY]` (KEY one of `download`, `compile`,
//! `package`, `server-N`, `restart`) fails that step on its first attempt, so the failure and
//! retry paths can be shown and tested on purpose.

use std::time::Duration;

use channels::prelude::*;
use channels::worker::{WorkerConsumer, WorkerContext};
use futures_util::future::join_all;

use crate::consumers::broadcast;
use crate::db::{self, Db, DeployStepView, step_state};
use crate::workflow::{self, DeployJob};

/// How steps behave.
#[derive(Debug, Clone)]
pub(crate) struct PipelineSettings {
    /// How long each simulated step takes.
    pub(crate) step_delay: Duration,
    /// The probability that a step fails, from 0 to 1.
    pub(crate) failure_rate: f64,
}

/// The worker.
pub(crate) struct Pipeline {
    pub(crate) db: Db,
    pub(crate) settings: PipelineSettings,
}

impl WorkerConsumer for Pipeline {
    type Event = DeployJob;

    async fn handle(&mut self, ctx: &WorkerContext, job: DeployJob) -> HandlerResult {
        // Runs take a while: run each on its own task so one ticket's deployment does not hold
        // up the next ticket's.
        let (db, settings, layer) = (self.db.clone(), self.settings.clone(), ctx.channel_layer().clone());
        tokio::spawn(async move {
            if let Err(e) = run(&db, &settings, &layer, &job).await {
                tracing::error!(ticket_id = job.ticket_id, run_id = job.run_id, error = %e, "deployment run failed");
            }
        });
        Ok(())
    }
}

/// Every `every`, fails the steps that have been running for longer than `abandoned_after`:
/// their worker is gone (a process that stopped mid-run), and the run can then be retried.
pub(crate) async fn sweep_abandoned_steps(
    db: Db,
    layer: std::sync::Arc<dyn channels::layers::ChannelLayer>,
    every: Duration,
    abandoned_after: Duration,
) {
    let mut interval = tokio::time::interval(every);
    loop {
        interval.tick().await;
        let started_before = db::now_ms() - abandoned_after.as_millis() as i64;
        match db.call(move |conn| workflow::fail_abandoned_steps(conn, started_before)).await {
            Ok(abandoned) => {
                for (ticket_id, run_id) in abandoned {
                    tracing::warn!(ticket_id, run_id, "a deployment step was abandoned by its worker; the run failed");
                    if let Err(e) = broadcast(&db, &layer, ticket_id).await {
                        tracing::warn!(ticket_id, error = %e, "could not announce an abandoned run");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "could not look for abandoned deployment steps"),
        }
    }
}

/// Whether a step fails this time: the `[fail:KEY]` marker on the first attempt, or by chance.
pub(crate) fn should_fail(title: &str, key: &str, attempt: i64, failure_rate: f64) -> bool {
    if title.contains(&format!("[fail:{key}]")) && attempt <= 1 {
        return true;
    }
    failure_rate > 0.0 && rand::random::<f64>() < failure_rate
}

pub(crate) async fn run(
    db: &Db,
    settings: &PipelineSettings,
    layer: &std::sync::Arc<dyn channels::layers::ChannelLayer>,
    job: &DeployJob,
) -> Result<(), BoxError> {
    let DeployJob { ticket_id, run_id } = *job;
    let (title, steps) = db
        .call(move |conn| {
            let title = db::ticket_row(conn, ticket_id)?.map(|t| t.title).unwrap_or_default();
            Ok::<_, rusqlite::Error>((title, db::run_steps(conn, run_id)?))
        })
        .await?;
    let mut stages: Vec<Vec<DeployStepView>> = Vec::new();
    for step in steps {
        match stages.last_mut() {
            Some(stage) if stage[0].stage == step.stage => stage.push(step),
            _ => stages.push(vec![step]),
        }
    }
    for stage in stages {
        let todo: Vec<DeployStepView> = stage.into_iter().filter(|s| s.status != step_state::SUCCEEDED).collect();
        let results = join_all(todo.iter().map(|step| run_step(db, settings, layer, job, &title, step))).await;
        let mut ok = true;
        for result in results {
            match result? {
                StepResult::Succeeded => {}
                StepResult::Failed => ok = false,
                // Another worker holds this run (the job was delivered twice): leave it alone.
                StepResult::Taken => return Ok(()),
            }
        }
        if !ok {
            db.call(move |conn| workflow::finish_run(conn, ticket_id, run_id, false)).await?;
            broadcast(db, layer, ticket_id).await?;
            return Ok(());
        }
    }
    db.call(move |conn| workflow::finish_run(conn, ticket_id, run_id, true)).await?;
    broadcast(db, layer, ticket_id).await?;
    Ok(())
}

enum StepResult {
    Succeeded,
    Failed,
    Taken,
}

async fn run_step(
    db: &Db,
    settings: &PipelineSettings,
    layer: &std::sync::Arc<dyn channels::layers::ChannelLayer>,
    job: &DeployJob,
    title: &str,
    step: &DeployStepView,
) -> Result<StepResult, BoxError> {
    let DeployJob { ticket_id, run_id } = *job;
    let position = step.position;
    if !db.call(move |conn| workflow::start_step(conn, run_id, position)).await? {
        return Ok(StepResult::Taken);
    }
    broadcast(db, layer, ticket_id).await?;
    tokio::time::sleep(settings.step_delay).await;
    let failed = should_fail(title, &step.key, step.attempts + 1, settings.failure_rate);
    let message = if failed { format!("{} failed (simulated)", step.name) } else { String::new() };
    db.call(move |conn| workflow::finish_step(conn, run_id, position, !failed, &message)).await?;
    broadcast(db, layer, ticket_id).await?;
    Ok(if failed { StepResult::Failed } else { StepResult::Succeeded })
}
