//! Where one shard's Redis is: a fixed URL, or the master that a set of Redis Sentinels names,
//! followed across failovers.
//!
//! redis-rs resolves a Sentinel master once and keeps that address (redis-rs issue 1438), so
//! the layer asks the sentinels itself: every [`SENTINEL_POLL`], and at once when a connection
//! to the master fails ([`Endpoint::suspect`]). When they name another master, the endpoint's
//! generation goes up; connections of an older generation are made again on their next use,
//! and the receive pumps re-add this process's memberships, as after a Redis restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use channels_core::layer::{ConfigError, redact_url};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use tokio::sync::{Notify, watch};

use crate::tls::{self, TlsOptions};

/// How often a Sentinel endpoint asks the sentinels which host is the master, besides when a
/// connection fails.
pub(crate) const SENTINEL_POLL: Duration = Duration::from_secs(1);

/// How long one question to one sentinel may take, connecting included.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);

/// How the layer talks to Redis Sentinels (`redis+sentinel://` URLs): URL parameters
/// `sentinel_username`, `sentinel_password` and `sentinel_ssl=true` (the sentinels speak TLS,
/// checked with the `ssl_*` options). The masters' own password is the URL's
/// `user:password@` part, as in redis-py.
///
/// ```
/// use channels_redis::RedisConfig;
/// let config = RedisConfig::from_url(
///     "redis+sentinel://:pw@s1:26379,s2:26379/0?master_name=mymaster&sentinel_password=spw",
/// )
/// .unwrap();
/// assert_eq!(config.hosts, ["redis+sentinel://:pw@s1:26379,s2:26379/0?master_name=mymaster"]);
/// assert_eq!(config.sentinel.password.as_deref(), Some("spw"));
/// assert!(!format!("{config:?}").contains("spw"), "Debug hides it");
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SentinelOptions {
    /// The user the sentinels' connections authenticate as.
    pub username: Option<String>,
    /// The sentinels' password.
    pub password: Option<String>,
    /// The sentinels speak TLS.
    pub ssl: bool,
}

impl std::fmt::Debug for SentinelOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelOptions")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ssl", &self.ssl)
            .finish()
    }
}

/// One shard's Redis.
pub(crate) struct Endpoint {
    /// The host as logs and errors show it, secrets hidden.
    shown: String,
    kind: Kind,
    /// Goes up each time the sentinels name another master.
    generation: watch::Sender<u64>,
    /// Wakes the sentinel watcher to ask now.
    ask_now: Notify,
    watching: AtomicBool,
    /// One question to the sentinels at a time.
    asking: tokio::sync::Mutex<()>,
}

// One per shard, made once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Fixed(redis::Client),
    Sentinel(Sentinel),
}

struct Sentinel {
    master_name: String,
    /// One client per sentinel, in the order the URL lists them.
    sentinels: Vec<redis::Client>,
    /// Connections to sentinels that answered, kept for the next question.
    connections: tokio::sync::Mutex<Vec<Option<MultiplexedConnection>>>,
    /// `redis://[user:password@]` or `rediss://...`: the master's URL without host and db.
    master_prefix: String,
    /// `/db`, or empty.
    db_path: String,
    tls: TlsOptions,
    /// The master the sentinels named last, and its client.
    master: Mutex<Option<((String, u16), redis::Client)>>,
}

impl Endpoint {
    /// The endpoint of one `hosts` entry: `redis://`/`rediss://` URLs are fixed,
    /// `redis+sentinel://`/`rediss+sentinel://` ones name sentinels and a `master_name`.
    pub(crate) fn open(url: &str, tls: &TlsOptions, auth: &SentinelOptions) -> Result<Arc<Endpoint>, ConfigError> {
        let shown = redact_url(url).into_owned();
        let kind = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            Kind::Sentinel(Sentinel::open(rest, false, tls, auth)?)
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            Kind::Sentinel(Sentinel::open(rest, true, tls, auth)?)
        } else {
            Kind::Fixed(tls::client(url, tls)?)
        };
        Ok(Arc::new(Endpoint {
            shown,
            kind,
            generation: watch::Sender::new(0),
            ask_now: Notify::new(),
            watching: AtomicBool::new(false),
            asking: tokio::sync::Mutex::new(()),
        }))
    }

    /// Whether the master is found through sentinels.
    pub(crate) fn is_sentinel(&self) -> bool {
        matches!(self.kind, Kind::Sentinel(_))
    }

    /// The current generation: connections made for an older one are stale.
    pub(crate) fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Changes whenever the sentinels name another master.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A client for the current master, and the generation it belongs to.
    pub(crate) async fn client(self: &Arc<Self>) -> Result<(u64, redis::Client), redis::RedisError> {
        let sentinel = match &self.kind {
            Kind::Fixed(client) => return Ok((0, client.clone())),
            Kind::Sentinel(sentinel) => sentinel,
        };
        self.start_watching();
        loop {
            let generation = self.generation();
            if let Some((_, client)) = sentinel.master.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                return Ok((generation, client.clone()));
            }
            self.ask().await?;
        }
    }

    /// A connection to this endpoint failed: ask the sentinels again now.
    pub(crate) fn suspect(&self) {
        if self.is_sentinel() {
            self.ask_now.notify_one();
        }
    }

    /// Asks the sentinels which host is the master, and moves to it if it changed.
    async fn ask(&self) -> Result<(), redis::RedisError> {
        let Kind::Sentinel(sentinel) = &self.kind else { return Ok(()) };
        let _one_at_a_time = self.asking.lock().await;
        let addr = sentinel.master_addr().await?;
        let mut master = sentinel.master.lock().unwrap_or_else(|p| p.into_inner());
        if master.as_ref().is_some_and(|(known, _)| *known == addr) {
            return Ok(());
        }
        let url = format!("{}{}:{}{}", sentinel.master_prefix, addr.0, addr.1, sentinel.db_path);
        let client = tls::client(&url, &sentinel.tls)
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))?;
        let previous = master.replace((addr.clone(), client)).map(|(addr, _)| addr);
        drop(master);
        match previous {
            Some((host, port)) => tracing::warn!(
                master_name = %sentinel.master_name,
                from = %format!("{host}:{port}"),
                to = %format!("{}:{}", addr.0, addr.1),
                "the sentinels name a new master; reconnecting"
            ),
            None => tracing::debug!(
                master_name = %sentinel.master_name,
                master = %format!("{}:{}", addr.0, addr.1),
                "the sentinels name the master"
            ),
        }
        self.generation.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Starts, once, the task that asks the sentinels every [`SENTINEL_POLL`] and whenever a
    /// connection fails.
    fn start_watching(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.watching.store(false, Ordering::SeqCst);
            return;
        };
        runtime.spawn(watch_sentinels(Arc::downgrade(self)));
    }
}

/// The watcher task of one Sentinel endpoint; ends once the endpoint is dropped.
async fn watch_sentinels(weak: Weak<Endpoint>) {
    let mut failing = false;
    loop {
        let Some(endpoint) = weak.upgrade() else { return };
        tokio::select! {
            () = tokio::time::sleep(SENTINEL_POLL) => {}
            () = endpoint.ask_now.notified() => {}
        }
        match endpoint.ask().await {
            Ok(()) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(sentinels = %endpoint.shown, error = %e, "no sentinel names the master");
                }
                failing = true;
            }
        }
        drop(endpoint);
        // A burst of failures is one question, not many.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Sentinel {
    /// `rest`: what follows the scheme of a `redis+sentinel://` URL.
    fn open(rest: &str, data_tls: bool, tls: &TlsOptions, auth: &SentinelOptions) -> Result<Sentinel, ConfigError> {
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        let (user_info, hosts) = match authority.rsplit_once('@') {
            Some((user_info, hosts)) => (Some(user_info), hosts),
            None => (None, authority),
        };
        let master_name = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("master_name="))
            .filter(|name| !name.is_empty())
            .ok_or_else(|| ConfigError("a redis+sentinel:// URL needs master_name=NAME".into()))?
            .to_owned();
        let scheme = if auth.ssl { "rediss" } else { "redis" };
        let credentials = match (&auth.username, &auth.password) {
            (None, None) => String::new(),
            (user, password) => {
                format!("{}:{}@", user.as_deref().unwrap_or(""), password.as_deref().unwrap_or(""))
            }
        };
        let sentinels = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|host| {
                let host = if host.contains(':') { host.to_owned() } else { format!("{host}:26379") };
                tls::client(&format!("{scheme}://{credentials}{host}"), tls)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if sentinels.is_empty() {
            return Err(ConfigError("a redis+sentinel:// URL needs at least one sentinel host".into()));
        }
        let data_scheme = if data_tls { "rediss" } else { "redis" };
        if data_tls {
            // Reads the certificate files now, so that a bad one is refused at start-up.
            tls::client("rediss://127.0.0.1", tls)?;
        }
        Ok(Sentinel {
            master_name,
            connections: tokio::sync::Mutex::new(vec![None; sentinels.len()]),
            sentinels,
            master_prefix: match user_info {
                Some(user_info) => format!("{data_scheme}://{user_info}@"),
                None => format!("{data_scheme}://"),
            },
            db_path: path.to_owned(),
            tls: tls.clone(),
            master: Mutex::new(None),
        })
    }

    /// The master's address as the first sentinel that knows it says.
    async fn master_addr(&self) -> Result<(String, u16), redis::RedisError> {
        let mut connections = self.connections.lock().await;
        let mut errors = Vec::new();
        for (index, client) in self.sentinels.iter().enumerate() {
            let asked = async {
                if connections[index].is_none() {
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
                        .set_response_timeout(Some(SENTINEL_TIMEOUT));
                    connections[index] = Some(client.get_multiplexed_async_connection_with_config(&config).await?);
                }
                let Some(conn) = connections[index].as_mut() else { unreachable!("made above") };
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.master_name)
                    .query_async::<Option<(String, u16)>>(conn)
                    .await
            }
            .await;
            match asked {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => errors.push(format!(
                    "{} does not know master {:?}",
                    client.get_connection_info().addr(),
                    self.master_name
                )),
                Err(e) => {
                    connections[index] = None;
                    errors.push(format!("{}: {e}", client.get_connection_info().addr()));
                }
            }
        }
        Err(std::io::Error::other(format!("no sentinel names master {:?}: {}", self.master_name, errors.join("; ")))
            .into())
    }
}

/// A shard's shared connection for ordinary commands: made on first use, made again when the
/// endpoint moved to another master.
#[derive(Default)]
pub(crate) struct CommandConnection {
    current: Mutex<Option<(u64, ConnectionManager)>>,
    making: tokio::sync::Mutex<()>,
}

impl CommandConnection {
    /// The connection, if one was made already.
    pub(crate) fn get(&self) -> Option<ConnectionManager> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, conn)| conn.clone())
    }

    fn current_for(&self, generation: u64) -> Option<ConnectionManager> {
        match self.current.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some((made_for, conn)) if *made_for == generation => Some(conn.clone()),
            _ => None,
        }
    }

    /// Drops the connection: the next [`connect`](Self::connect) makes a new one.
    pub(crate) fn reset(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The connection to `endpoint`'s current master; it reconnects by itself after a Redis
    /// restart.
    pub(crate) async fn connect(&self, endpoint: &Arc<Endpoint>) -> Result<ConnectionManager, redis::RedisError> {
        if let Some(conn) = self.current_for(endpoint.generation()) {
            return Ok(conn);
        }
        let _one_at_a_time = self.making.lock().await;
        let made = async {
            let (generation, client) = endpoint.client().await?;
            if let Some(conn) = self.current_for(generation) {
                return Ok(conn);
            }
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(5)))
                .set_number_of_retries(2);
            let conn = client.get_connection_manager_with_config(config).await?;
            *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, conn.clone()));
            Ok(conn)
        }
        .await;
        if made.is_err() {
            endpoint.suspect();
        }
        made
    }
}
