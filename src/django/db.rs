//! The two tables Django's sessions and users live in, read from SQLite (blocking work on
//! tokio's blocking pool) or PostgreSQL (tokio-postgres, asynchronous).

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::{NoTls, Statement};

/// The database could not answer (down, unreachable, missing table...): not the same as "no
/// such session", which is `Ok(None)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseError(pub(crate) String);

impl fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the Django database is unavailable: {}", self.0)
    }
}

impl std::error::Error for DatabaseError {}

/// A row of the user table, with the columns of Django's `AbstractUser`.
#[derive(Debug, Clone)]
pub(crate) struct UserRow {
    pub(crate) username: String,
    pub(crate) password: String,
    pub(crate) is_active: bool,
    pub(crate) is_staff: bool,
    pub(crate) is_superuser: bool,
}

const SESSION_SQLITE: &str = "SELECT session_data FROM django_session \
     WHERE session_key = ?1 AND julianday(expire_date) > julianday('now')";
const SESSION_POSTGRES: &str =
    "SELECT session_data FROM django_session WHERE session_key = $1::text AND expire_date > now()";

fn user_sql(table: &str, param: &str) -> String {
    format!("SELECT username, password, is_active, is_staff, is_superuser FROM {table} WHERE id = {param}")
}

/// `table` or `schema.table`, each part an SQL identifier, double-quoted for the query.
pub(crate) fn quoted_table(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let valid = |p: &&str| {
        !p.is_empty()
            && p.len() <= 63
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !p.as_bytes()[0].is_ascii_digit()
    };
    (parts.len() <= 2 && parts.iter().all(valid))
        .then(|| parts.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join("."))
}

/// Where the `django_session` and user tables are.
#[derive(Clone)]
pub(crate) enum Database {
    Sqlite(Arc<Sqlite>),
    Postgres(Arc<Postgres>),
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(db) => write!(f, "sqlite://{}", db.path.display()),
            Self::Postgres(db) => write!(f, "postgresql (database {:?})", db.config.get_dbname()),
        }
    }
}

impl Database {
    pub(crate) fn sqlite(path: PathBuf, user_table: &str) -> Self {
        Self::Sqlite(Arc::new(Sqlite { path, user_sql: user_sql(user_table, "?1"), idle: Mutex::new(Vec::new()) }))
    }

    pub(crate) fn postgres(config: tokio_postgres::Config, user_table: &str) -> Self {
        Self::Postgres(Arc::new(Postgres {
            config,
            user_sql: user_sql(user_table, "$1::bigint"),
            connection: tokio::sync::Mutex::new(None),
        }))
    }

    /// The `session_data` of the unexpired session `key`.
    pub(crate) async fn session_data(&self, key: &str) -> Result<Option<String>, DatabaseError> {
        match self {
            Self::Sqlite(db) => {
                let key = key.to_owned();
                db.clone()
                    .blocking(move |conn| {
                        let mut statement = conn.prepare_cached(SESSION_SQLITE)?;
                        let mut rows = statement.query([&key])?;
                        rows.next()?.map(|row| row.get::<_, String>(0)).transpose()
                    })
                    .await
            }
            Self::Postgres(db) => {
                let conn = db.connection().await?;
                let row = conn.client.query_opt(&conn.session, &[&key]).await.map_err(|e| db.failed(e))?;
                row.map(|row| row.try_get::<_, String>(0)).transpose().map_err(|e| DatabaseError(e.to_string()))
            }
        }
    }

    /// The user whose primary key is `id`.
    pub(crate) async fn user(&self, id: i64) -> Result<Option<UserRow>, DatabaseError> {
        match self {
            Self::Sqlite(db) => {
                let sql = db.user_sql.clone();
                db.clone()
                    .blocking(move |conn| {
                        let mut statement = conn.prepare_cached(&sql)?;
                        let mut rows = statement.query([id])?;
                        let Some(row) = rows.next()? else { return Ok(None) };
                        Ok(Some(UserRow {
                            username: row.get(0)?,
                            password: row.get(1)?,
                            is_active: row.get(2)?,
                            is_staff: row.get(3)?,
                            is_superuser: row.get(4)?,
                        }))
                    })
                    .await
            }
            Self::Postgres(db) => {
                let conn = db.connection().await?;
                let row = conn.client.query_opt(&conn.user, &[&id]).await.map_err(|e| db.failed(e))?;
                let Some(row) = row else { return Ok(None) };
                let user = (|| {
                    Ok::<_, tokio_postgres::Error>(UserRow {
                        username: row.try_get(0)?,
                        password: row.try_get(1)?,
                        is_active: row.try_get(2)?,
                        is_staff: row.try_get(3)?,
                        is_superuser: row.try_get(4)?,
                    })
                })();
                user.map(Some).map_err(|e| DatabaseError(e.to_string()))
            }
        }
    }
}

/// A Django SQLite database, opened read-only; idle connections are kept for the next lookup.
pub(crate) struct Sqlite {
    path: PathBuf,
    user_sql: String,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

/// Most idle SQLite connections kept.
const MAX_IDLE_SQLITE: usize = 8;

impl Sqlite {
    fn open(&self) -> rusqlite::Result<rusqlite::Connection> {
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = rusqlite::Connection::open_with_flags(&self.path, flags)?;
        // Django may be writing: wait for its lock rather than failing at once.
        conn.busy_timeout(Duration::from_secs(2))?;
        Ok(conn)
    }

    /// Runs `work` on a connection, on tokio's blocking pool.
    async fn blocking<T, F>(self: Arc<Self>, work: F) -> Result<T, DatabaseError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let task = tokio::task::spawn_blocking(move || {
            let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            let conn = match idle {
                Some(conn) => conn,
                None => self.open().map_err(|e| DatabaseError(format!("{}: {e}", self.path.display())))?,
            };
            let result = work(&conn).map_err(|e| DatabaseError(format!("{}: {e}", self.path.display())));
            if result.is_ok()
                && let Ok(mut idle) = self.idle.lock()
                && idle.len() < MAX_IDLE_SQLITE
            {
                idle.push(conn);
            }
            result
        });
        task.await.map_err(|e| DatabaseError(format!("the SQLite lookup failed: {e}")))?
    }
}

/// A Django PostgreSQL database: one connection (queries are pipelined on it), made again when
/// it breaks.
pub(crate) struct Postgres {
    config: tokio_postgres::Config,
    user_sql: String,
    connection: tokio::sync::Mutex<Option<Arc<PgConnection>>>,
}

pub(crate) struct PgConnection {
    client: tokio_postgres::Client,
    session: Statement,
    user: Statement,
}

impl Postgres {
    async fn connection(&self) -> Result<Arc<PgConnection>, DatabaseError> {
        let mut current = self.connection.lock().await;
        if let Some(conn) = current.as_ref()
            && !conn.client.is_closed()
        {
            return Ok(conn.clone());
        }
        *current = None;
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| DatabaseError(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "the Django PostgreSQL connection broke");
            }
        });
        let session = client.prepare(SESSION_POSTGRES).await.map_err(|e| DatabaseError(e.to_string()))?;
        let user = client.prepare(&self.user_sql).await.map_err(|e| DatabaseError(e.to_string()))?;
        let conn = Arc::new(PgConnection { client, session, user });
        *current = Some(conn.clone());
        Ok(conn)
    }

    fn failed(&self, e: tokio_postgres::Error) -> DatabaseError {
        DatabaseError(e.to_string())
    }
}
