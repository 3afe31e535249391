//! Who is asking: the user loader for the session middleware, sign-in and sign-out, and the
//! cross-site request check for state-changing HTTP requests.
//!
//! The framework's `AuthMiddlewareStack` reads the signed session cookie on every request and
//! WebSocket handshake and, through [`DbUsers`], puts the signed-in [`User`] in the scope. This
//! module only says how to load a user and how to sign in; every permission rule is in
//! `workflow.rs`.

use channels::http::{HttpRequest, HttpResponse, json};
use channels::middleware::{OriginValidator, StatusCode};
use channels::scope::Scope;
use channels::sessions::{Session, SessionMiddleware, UserLoader};
use serde::Deserialize;

use crate::db::{self, Db, User};
use crate::workflow::{ActionError, ErrorBody};

/// Loads users from the `users` table by the id the session stores.
pub(crate) struct DbUsers(pub(crate) Db);

#[channels::async_trait]
impl UserLoader for DbUsers {
    type User = User;

    async fn load_user(&self, user_id: &str) -> Option<User> {
        let id: i64 = user_id.parse().ok()?;
        match self.0.call(move |conn| db::user_by_id(conn, id)).await {
            Ok(user) => user,
            Err(e) => {
                tracing::error!(error = %e, "could not load the session's user");
                None
            }
        }
    }
}

/// The signed-in user of a request or connection, or the refusal to send.
pub(crate) fn current_user(scope: &Scope) -> Result<User, ActionError> {
    scope.extensions().get::<User>().cloned().ok_or(ActionError::NotSignedIn)
}

pub(crate) fn error_response(error: &ActionError) -> HttpResponse {
    json(error.status(), &ErrorBody::from(error))
}

/// Refuses a state-changing request another site could have made a browser send: its `Origin`
/// (or, without one, `Sec-Fetch-Site`) must be ours, and its body must be JSON, which an HTML
/// form cannot send cross-site without the browser asking first.
pub(crate) fn check_post(scope: &Scope, origins: &OriginValidator) -> Result<(), ActionError> {
    if let Some(origin) = scope.header("origin") {
        if !origins.is_allowed(origin) {
            let origin: String = origin.chars().take(100).collect();
            return Err(ActionError::Forbidden(format!("requests from origin {origin} are not accepted")));
        }
    } else if scope.header("sec-fetch-site").is_some_and(|site| site == "cross-site") {
        return Err(ActionError::Forbidden("cross-site requests are not accepted".into()));
    }
    let is_json = scope.header("content-type").is_some_and(|t| t.trim_start().starts_with("application/json"));
    if !is_json {
        return Err(ActionError::Invalid("send the request body as application/json".into()));
    }
    Ok(())
}

#[derive(Deserialize)]
struct SignIn {
    username: String,
}

/// The refusal for anything but a same-site POST: 405 for another method, the cross-site
/// error otherwise; `None` lets the request through.
fn refuse_unless_same_site_post(request: &HttpRequest, origins: &OriginValidator) -> Option<HttpResponse> {
    if request.scope.method() != http::Method::POST {
        return Some(json(StatusCode::METHOD_NOT_ALLOWED, &serde_json::json!({"error": "use POST"})));
    }
    check_post(&request.scope, origins).err().map(|e| error_response(&e))
}

/// `POST /api/login` with `{"username": "zhangkun"}`: signs in as a demo user (the demo has no
/// passwords; a real application checks one here) and sets the session cookie.
pub(crate) async fn login(
    request: HttpRequest,
    db: Db,
    sessions: SessionMiddleware,
    origins: OriginValidator,
) -> HttpResponse {
    if let Some(refused) = refuse_unless_same_site_post(&request, &origins) {
        return refused;
    }
    let Ok(sign_in) = serde_json::from_slice::<SignIn>(&request.body) else {
        return error_response(&ActionError::Invalid("expected {\"username\": \"...\"}".into()));
    };
    let user = match db.call(move |conn| db::user_by_username(conn, &sign_in.username)).await {
        Ok(Some(user)) => user,
        Ok(None) => return error_response(&ActionError::NotFound("no such user".into())),
        Err(e) => return error_response(&ActionError::from(e)),
    };
    let mut session = Session::new();
    session.login(user.id.to_string());
    let mut response = json(StatusCode::OK, &serde_json::json!({"user": user}));
    sessions.set_cookie(&mut response, &session);
    response
}

/// `POST /api/logout`: forgets the session.
pub(crate) async fn logout(
    request: HttpRequest,
    sessions: SessionMiddleware,
    origins: OriginValidator,
) -> HttpResponse {
    if let Some(refused) = refuse_unless_same_site_post(&request, &origins) {
        return refused;
    }
    let mut response = json(StatusCode::OK, &serde_json::json!({"user": null}));
    sessions.clear_cookie(&mut response);
    response
}
