//! The WebSocket side: one consumer per open ticket page, one per open list page, and the
//! group messages that keep them all current.
//!
//! Groups: `ticket_<id>` holds every page showing ticket `<id>`; `tickets` holds every list
//! page. Whenever anything changes a ticket — an approval from any process, a pipeline step —
//! the actor sends the ticket's new state to its group and the new list to `tickets`, each
//! encoded once for all members.
//!
//! Client → server, on `/ws/tickets/{id}/`: `{"action": "approve" | "reject" | "retry" |
//! "resubmit", "comment": "...", "step": N, "request_id": "..."}` (`step`, optional, is the
//! step the user saw; `request_id`, optional, makes a resend of the same action harmless).
//! Server → client: `{"type": "ticket.state", "ticket": {...}}` on connect and after every
//! change; to the sender of an action with a `request_id`, `{"type": "action.done",
//! "request_id"}` when it was applied (or had been, under that id); to the sender of a refused
//! action, `{"type": "error", "code", "error", "request_id"}` (`request_id` when it had one); and `{"type": "tickets.list", "list": {...}}` on `/ws/tickets/`.

use std::sync::Arc;

use channels::layers::{ChannelLayer, Message};
use channels::prelude::*;
use serde::{Deserialize, Serialize};

use crate::auth::current_user;
use crate::db::{self, Db, User};
use crate::workflow::{self, Action, ActionError, Asked, DeployJob, ErrorBody, Outcome};

/// The channel the deployment worker listens on.
pub(crate) const DEPLOY_CHANNEL: &str = "approval.deploy";
/// The group of every list page.
pub(crate) const LIST_GROUP: &str = "tickets";

pub(crate) fn ticket_group(id: i64) -> String {
    format!("ticket_{id}")
}

/// What travels in the groups. The payloads are the JSON views of `db.rs`, built once by the
/// sender.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub(crate) enum ApprovalEvent {
    #[serde(rename = "ticket.state")]
    TicketState { ticket: serde_json::Value },
    #[serde(rename = "tickets.list")]
    List { list: serde_json::Value },
}

/// Held while a state is read and sent, so that states leave this process in the order they
/// were read: two pipeline steps finishing at once must not deliver an older picture last.
static BROADCAST_ORDER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sends ticket `ticket_id`'s current state to its group and the current list to the list
/// group.
pub(crate) async fn broadcast(db: &Db, layer: &Arc<dyn ChannelLayer>, ticket_id: i64) -> Result<(), BoxError> {
    let _order = BROADCAST_ORDER.lock().await;
    let (ticket, list) = db
        .call(move |conn| {
            // One read transaction: both views from the same moment, even while another
            // process writes.
            let tx = conn.transaction()?;
            let views = (db::ticket_view(&tx, ticket_id)?, db::list_view(&tx)?);
            tx.commit()?;
            Ok::<_, rusqlite::Error>(views)
        })
        .await?;
    if let Some(ticket) = ticket {
        let event = ApprovalEvent::TicketState { ticket: serde_json::to_value(ticket)? };
        layer.group_send(&ticket_group(ticket_id), Message::new(&event)?).await?;
    }
    let event = ApprovalEvent::List { list: serde_json::to_value(list)? };
    layer.group_send(LIST_GROUP, Message::new(&event)?).await?;
    Ok(())
}

/// Applies an action (from HTTP or WebSocket alike), then tells everyone and starts the
/// deployment it leads to.
pub(crate) async fn perform(
    db: &Db,
    layer: Option<&Arc<dyn ChannelLayer>>,
    user: User,
    ticket_id: i64,
    action: Action,
    asked: Asked,
) -> Result<Outcome, ActionError> {
    let outcome = db.call(move |conn| workflow::act(conn, &user, ticket_id, &action, &asked)).await?;
    if outcome.repeated {
        return Ok(outcome);
    }
    if let Some(layer) = layer {
        if let Some(job) = &outcome.deploy {
            start_deploy(db, layer, job).await;
        }
        if let Err(e) = broadcast(db, layer, ticket_id).await {
            tracing::warn!(ticket_id, error = %e, "could not announce a ticket change");
        }
    }
    Ok(outcome)
}

/// Hands a deployment to whichever worker takes it; if the layer cannot take the job, the run
/// fails at once so that it can be retried instead of waiting forever.
async fn start_deploy(db: &Db, layer: &Arc<dyn ChannelLayer>, job: &DeployJob) {
    let sent = match Message::new(job) {
        Ok(message) => layer.send(DEPLOY_CHANNEL, message).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = sent {
        tracing::error!(ticket_id = job.ticket_id, error = %e, "could not start a deployment");
        let (ticket_id, run_id) = (job.ticket_id, job.run_id);
        if let Err(e) = db.call(move |conn| workflow::finish_run(conn, ticket_id, run_id, false)).await {
            tracing::error!(ticket_id, error = %e, "could not record the failed start");
        }
    }
}

/// What a ticket page sends.
#[derive(Deserialize)]
struct Request {
    #[serde(flatten)]
    action: Action,
    #[serde(flatten)]
    asked: Asked,
}

/// Tells the sender that its action was applied; the new state follows through the group.
#[derive(Serialize)]
#[serde(tag = "type", rename = "action.done")]
struct Done {
    request_id: String,
}

/// `/ws/tickets/{id}/`: a page showing one ticket.
pub(crate) struct TicketConsumer {
    db: Db,
    ticket_id: Option<i64>,
    /// The revision of the last state sent to the client.
    sent: Revision,
}

/// The latest revision a client has, so that an older state arriving late (sent by another
/// process, say) is not shown over a newer one.
#[derive(Default)]
struct Revision(Option<i64>);

impl Revision {
    /// True (and remembered) if `payload`'s `revision` is newer than the last one sent.
    fn is_newer(&mut self, payload: &serde_json::Value) -> bool {
        let revision = payload["revision"].as_i64();
        if revision.is_some() && revision <= self.0 {
            return false;
        }
        self.0 = revision;
        true
    }
}

impl TicketConsumer {
    pub(crate) fn new(scope: &Scope, db: Db) -> Self {
        let ticket_id = scope.param("id").and_then(|id| id.parse().ok()).filter(|id| *id > 0);
        Self { db, ticket_id, sent: Revision::default() }
    }

    async fn refuse(ctx: &mut WebsocketContext, error: &ActionError, request_id: Option<String>) -> HandlerResult {
        ctx.send_json(&ErrorBody { request_id, ..ErrorBody::from(error) }).await?;
        Ok(())
    }
}

/// Close code for a connection without a signed-in user (4000-4999 are the application's).
pub(crate) const CLOSE_NOT_SIGNED_IN: u16 = 4001;
/// Close code for a ticket that does not exist.
pub(crate) const CLOSE_NOT_FOUND: u16 = 4004;

impl WebsocketConsumer for TicketConsumer {
    type Event = ApprovalEvent;

    fn groups(&self) -> Vec<String> {
        self.ticket_id.map(ticket_group).into_iter().collect()
    }

    async fn connect(&mut self, ctx: &mut WebsocketContext) -> HandlerResult {
        if current_user(ctx.scope()).is_err() {
            ctx.close(CLOSE_NOT_SIGNED_IN).await?;
            return Ok(());
        }
        let Some(ticket_id) = self.ticket_id else {
            ctx.close(CLOSE_NOT_FOUND).await?;
            return Ok(());
        };
        let Some(ticket) = self.db.call(move |conn| db::ticket_view(conn, ticket_id)).await? else {
            ctx.close(CLOSE_NOT_FOUND).await?;
            return Ok(());
        };
        ctx.accept();
        let ticket = serde_json::to_value(ticket)?;
        self.sent.is_newer(&ticket);
        ctx.send_json(&ApprovalEvent::TicketState { ticket }).await?;
        Ok(())
    }

    async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
        let Some(ticket_id) = self.ticket_id else { return Ok(()) };
        let request = match frame.as_text().map(serde_json::from_str::<Request>) {
            Some(Ok(request)) => request,
            _ => {
                let error = ActionError::Invalid(
                    "expected {\"action\": \"approve\"|\"reject\"|\"retry\"|\"resubmit\", \"comment\": \"...\"}".into(),
                );
                return Self::refuse(ctx, &error, None).await;
            }
        };
        let request_id = request.asked.request_id.clone();
        // The user was loaded when the socket opened; load it again so that a user removed
        // since then cannot act.
        let user = match current_user(ctx.scope()) {
            Ok(user) => {
                let id = user.id;
                self.db.call(move |conn| db::user_by_id(conn, id)).await?.ok_or(ActionError::NotSignedIn)
            }
            Err(e) => Err(e),
        };
        let user = match user {
            Ok(user) => user,
            Err(e) => return Self::refuse(ctx, &e, request_id).await,
        };
        let layer = ctx.channel_layer().cloned();
        match perform(&self.db, layer.as_ref(), user, ticket_id, request.action, request.asked).await {
            // Only a page that gave its action an id waits for this answer.
            Ok(_) => {
                if let Some(request_id) = request_id {
                    ctx.send_json(&Done { request_id }).await?;
                }
            }
            Err(e) => return Self::refuse(ctx, &e, request_id).await,
        }
        Ok(())
    }

    async fn event(&mut self, ctx: &mut WebsocketContext, event: ApprovalEvent) -> HandlerResult {
        if let ApprovalEvent::TicketState { ticket } = &event
            && self.sent.is_newer(ticket)
        {
            ctx.send_json(&event).await?;
        }
        Ok(())
    }
}

/// `/ws/tickets/`: a list page (the ticket table and the status charts).
pub(crate) struct ListConsumer {
    db: Db,
    sent: Revision,
}

impl ListConsumer {
    pub(crate) fn new(db: Db) -> Self {
        Self { db, sent: Revision::default() }
    }
}

impl WebsocketConsumer for ListConsumer {
    type Event = ApprovalEvent;

    fn groups(&self) -> Vec<String> {
        vec![LIST_GROUP.to_owned()]
    }

    async fn connect(&mut self, ctx: &mut WebsocketContext) -> HandlerResult {
        if current_user(ctx.scope()).is_err() {
            ctx.close(CLOSE_NOT_SIGNED_IN).await?;
            return Ok(());
        }
        let list = self.db.call(|conn| db::list_view(conn)).await?;
        ctx.accept();
        let list = serde_json::to_value(list)?;
        self.sent.is_newer(&list);
        ctx.send_json(&ApprovalEvent::List { list }).await?;
        Ok(())
    }

    async fn event(&mut self, ctx: &mut WebsocketContext, event: ApprovalEvent) -> HandlerResult {
        if let ApprovalEvent::List { list } = &event
            && self.sent.is_newer(list)
        {
            ctx.send_json(&event).await?;
        }
        Ok(())
    }
}
