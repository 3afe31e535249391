//! The chat shares a Django site's logins (`--django-sessions URL`): a client whose `sessionid`
//! cookie is a valid Django session chats under its Django username (`?user=` is ignored);
//! any other client is a guest, or is refused with 403 under `--django-login-required`.
//!
//! The Django settings come from the environment: `DJANGO_SECRET_KEY`,
//! `DJANGO_SECRET_KEY_FALLBACKS` (comma-separated), and optionally `DJANGO_SESSION_COOKIE_NAME`
//! and `DJANGO_SESSION_COOKIE_AGE`. The URL says where sessions and users are (see
//! `channels::django`): `sqlite:///ABSOLUTE/PATH/db.sqlite3`,
//! `postgresql://USER[:PW]@HOST:PORT/DB`, `signed-cookies:` followed by one of those,
//! `redis://HOST:PORT/DB?key_prefix=&version=1` (Django's cache engine on `RedisCache`; the
//! user table's database in `DJANGO_DATABASE_URL`) or `cached-db:REDIS_URL,DATABASE_URL`.

use channels::django::{DjangoAuth, DjangoSettings};
use channels::middleware::{Middleware, Rejection};
use channels::prelude::*;

/// Who a connection chats as, when the chat shares Django's logins.
#[derive(Debug, Clone)]
pub(crate) struct ChatIdentity(Option<String>);

impl ChatIdentity {
    /// The Django username, or a guest name.
    pub(crate) fn name(&self) -> String {
        self.0.clone().unwrap_or_else(|| format!("guest-{}", rand::random_range(1000..10_000)))
    }
}

/// Middleware putting a [`ChatIdentity`] in every chat scope (the page itself is left alone).
#[derive(Debug, Clone)]
pub(crate) struct DjangoLogins {
    auth: DjangoAuth,
    login_required: bool,
}

impl DjangoLogins {
    /// From `--django-sessions URL` and the `DJANGO_*` environment variables.
    pub(crate) fn new(url: &str, login_required: bool) -> Result<Self, channels::django::ConfigError> {
        let auth = DjangoAuth::from_url(url, DjangoSettings::from_env()?)?;
        Ok(Self { auth, login_required })
    }
}

#[channels::async_trait]
impl Middleware for DjangoLogins {
    async fn process(&self, scope: &mut Scope) -> Result<(), Rejection> {
        if matches!(scope.path(), "/" | "/home/") {
            return Ok(());
        }
        match self.auth.user_of(scope).await {
            Ok(Some(user)) => {
                scope.extensions_mut().insert(ChatIdentity(Some(user.username)));
                Ok(())
            }
            Ok(None) if self.login_required => {
                Err(Rejection::new(channels::middleware::StatusCode::FORBIDDEN, "log in to the Django site first"))
            }
            Ok(None) => {
                scope.extensions_mut().insert(ChatIdentity(None));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "refusing a chat client: no answer from the Django session store");
                Err(Rejection::new(
                    channels::middleware::StatusCode::SERVICE_UNAVAILABLE,
                    "the session store is unavailable",
                ))
            }
        }
    }
}

/// The logins the options ask for: none without `--django-sessions`; a configuration that is
/// not usable ends the program with the reason.
pub(crate) fn from_options(url: Option<&str>, login_required: bool) -> Option<DjangoLogins> {
    let fail = |why: String| -> ! {
        eprintln!("chat: {why}");
        std::process::exit(2)
    };
    match url {
        None if login_required => fail("--django-login-required needs --django-sessions URL".into()),
        None => None,
        Some(url) => {
            Some(DjangoLogins::new(url, login_required).unwrap_or_else(|e| fail(format!("--django-sessions: {e}"))))
        }
    }
}
