//! The HTTP side: the pages (static HTML that fills itself from the JSON API and the
//! WebSockets) and the JSON API, which enforces the same rules as the WebSockets.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /`, `/tickets/new/`, `/tickets/{id}/`, `/login/` | the pages (a ticket's page is a 404 when the ticket does not exist) |
//! | `GET /static/{*path}` | scripts, styles and the vendored libraries |
//! | `GET /api/me` | `{"user": User or null, "users": [demo users]}` |
//! | `POST /api/login`, `POST /api/logout` | sign in as a demo user, sign out |
//! | `GET /api/workflows` | the workflow templates and their steps |
//! | `GET /api/tickets` | the list: latest tickets and counts by status |
//! | `POST /api/tickets` | `{"title", "body", "workflow_id"}` → `201 {"id"}` |
//! | `GET /api/tickets/{id}` | one ticket, as its page shows it |
//! | `POST /api/tickets/{id}/actions` | `{"action", "comment", "step"}`, as on the WebSocket |
//!
//! Errors are `{"type": "error", "code", "error"}` with 400, 401, 403, 404 or 409.

use channels::http::{HttpRequest, HttpResponse, json, response};
use channels::middleware::{OriginValidator, StatusCode};
use serde::Deserialize;

use crate::auth::{check_post, current_user, error_response};
use crate::consumers::{broadcast, perform};
use crate::db::{self, Db};
use crate::workflow::{self, Action, ActionError, Asked, NewTicket};

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) db: Db,
    pub(crate) origins: OriginValidator,
}

fn method_not_allowed() -> HttpResponse {
    json(
        StatusCode::METHOD_NOT_ALLOWED,
        &serde_json::json!({"type": "error", "code": "method", "error": "method not allowed"}),
    )
}

fn ticket_id(request: &HttpRequest) -> Result<i64, ActionError> {
    request
        .scope
        .param("id")
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| ActionError::NotFound("there is no such ticket".into()))
}

impl Api {
    /// `GET /tickets/{id}/`: the ticket page; with status 404 for a ticket that does not exist
    /// (the page then says so itself, from the API's answer).
    pub(crate) async fn ticket_page(&self, request: HttpRequest, html: &'static str) -> HttpResponse {
        if !matches!(*request.scope.method(), http::Method::GET | http::Method::HEAD) {
            return method_not_allowed();
        }
        let exists = match ticket_id(&request) {
            Ok(id) => self.db.call(move |conn| db::ticket_row(conn, id)).await.map(|row| row.is_some()),
            Err(_) => Ok(false),
        };
        let status = match exists {
            Ok(true) => StatusCode::OK,
            Ok(false) => StatusCode::NOT_FOUND,
            Err(e) => {
                tracing::error!(error = %e, "could not look a ticket up for its page");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        response(status, "text/html; charset=utf-8", html)
    }

    /// `GET /api/me`.
    pub(crate) async fn me(&self, request: HttpRequest) -> HttpResponse {
        let user = current_user(&request.scope).ok();
        match self.db.call(|conn| db::users(conn)).await {
            Ok(users) => json(StatusCode::OK, &serde_json::json!({"user": user, "users": users})),
            Err(e) => error_response(&e.into()),
        }
    }

    /// `GET /api/workflows`.
    pub(crate) async fn workflows(&self, request: HttpRequest) -> HttpResponse {
        if let Err(e) = current_user(&request.scope) {
            return error_response(&e);
        }
        match self.db.call(|conn| db::workflows(conn)).await {
            Ok(workflows) => json(StatusCode::OK, &workflows),
            Err(e) => error_response(&e.into()),
        }
    }

    /// `GET /api/tickets` and `POST /api/tickets`.
    pub(crate) async fn tickets(&self, request: HttpRequest) -> HttpResponse {
        let user = match current_user(&request.scope) {
            Ok(user) => user,
            Err(e) => return error_response(&e),
        };
        match *request.scope.method() {
            http::Method::GET => match self.db.call(|conn| db::list_view(conn)).await {
                Ok(list) => json(StatusCode::OK, &list),
                Err(e) => error_response(&e.into()),
            },
            http::Method::POST => {
                if let Err(e) = check_post(&request.scope, &self.origins) {
                    return error_response(&e);
                }
                let new = match serde_json::from_slice::<NewTicket>(&request.body) {
                    Ok(new) => new,
                    Err(e) => {
                        return error_response(&ActionError::Invalid(format!(
                            "expected {{\"title\", \"body\", \"workflow_id\"}}: {e}"
                        )));
                    }
                };
                match self.db.call(move |conn| workflow::create_ticket(conn, &user, &new)).await {
                    Ok(id) => {
                        if let Some(layer) = request.layers().default_layer()
                            && let Err(e) = broadcast(&self.db, layer, id).await
                        {
                            tracing::warn!(ticket_id = id, error = %e, "could not announce a new ticket");
                        }
                        json(StatusCode::CREATED, &serde_json::json!({"id": id}))
                    }
                    Err(e) => error_response(&e),
                }
            }
            _ => method_not_allowed(),
        }
    }

    /// `GET /api/tickets/{id}`.
    pub(crate) async fn ticket(&self, request: HttpRequest) -> HttpResponse {
        if let Err(e) = current_user(&request.scope) {
            return error_response(&e);
        }
        if request.scope.method() != http::Method::GET {
            return method_not_allowed();
        }
        let id = match ticket_id(&request) {
            Ok(id) => id,
            Err(e) => return error_response(&e),
        };
        match self.db.call(move |conn| db::ticket_view(conn, id)).await {
            Ok(Some(ticket)) => json(StatusCode::OK, &ticket),
            Ok(None) => error_response(&ActionError::NotFound(format!("there is no ticket {id}"))),
            Err(e) => error_response(&e.into()),
        }
    }

    /// `POST /api/tickets/{id}/actions`.
    pub(crate) async fn action(&self, request: HttpRequest) -> HttpResponse {
        #[derive(Deserialize)]
        struct Body {
            #[serde(flatten)]
            action: Action,
            #[serde(flatten)]
            asked: Asked,
        }
        if request.scope.method() != http::Method::POST {
            return method_not_allowed();
        }
        let user = match current_user(&request.scope) {
            Ok(user) => user,
            Err(e) => return error_response(&e),
        };
        if let Err(e) = check_post(&request.scope, &self.origins) {
            return error_response(&e);
        }
        let id = match ticket_id(&request) {
            Ok(id) => id,
            Err(e) => return error_response(&e),
        };
        let body = match serde_json::from_slice::<Body>(&request.body) {
            Ok(body) => body,
            Err(e) => {
                return error_response(&ActionError::Invalid(format!("expected {{\"action\", \"comment\"}}: {e}")));
            }
        };
        let layer = request.layers().default_layer();
        match perform(&self.db, layer, user, id, body.action, body.asked).await {
            Ok(outcome) => {
                json(StatusCode::OK, &serde_json::json!({"ok": true, "deploying": outcome.deploy.is_some()}))
            }
            Err(e) => error_response(&e),
        }
    }
}
