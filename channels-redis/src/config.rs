//! Settings of the Redis layer, read from `redis://host:port/db?prefix=asgi&capacity=...` URLs.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use channels_core::layer::{ConfigError, LayerConfig, LayerUrl};

use crate::crypto::Encryption;
use crate::endpoint::{Endpoint, SentinelOptions};
use crate::tls::{self, TlsOptions};

/// Settings of a [`RedisChannelLayer`](crate::RedisChannelLayer).
///
/// Every process that shares the layer (Python ones included) must agree on `hosts` (same
/// order), `prefix` and the expiry settings; see the layers guide in `docs/`.
///
/// ```
/// use channels_redis::RedisConfig;
/// let config = RedisConfig::from_url("redis://a:6379,b:6380/2?prefix=chat&capacity=500").unwrap();
/// assert_eq!(config.hosts, ["redis://a:6379/2", "redis://b:6380/2"]);
/// assert_eq!(config.prefix, "chat");
/// assert_eq!(config.layer.capacity, 500);
/// ```
///
/// Its `Debug` output hides passwords and encryption keys.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// One Redis URL per shard, in order (the order decides which shard holds which key).
    pub hosts: Vec<String>,
    /// Prepended to every key (channels_redis's `prefix`, default `asgi`).
    pub prefix: String,
    /// Capacity, expiry and group expiry.
    pub layer: LayerConfig,
    /// How long one blocking pop waits before it is re-issued (channels_redis uses 5 s).
    pub blocking_timeout: Duration,
    /// channels_redis's `symmetric_encryption_keys`: when set, payloads are Fernet-encrypted
    /// with the first key and decrypted with any (URL parameter `symmetric_encryption_key`,
    /// repeatable).
    pub symmetric_encryption_keys: Vec<String>,
    /// How long a connection's batch of queued group sends (`group_send_nowait`) waits
    /// before it goes out when the connection's previous batch was done less than this long
    /// ago (default 1 ms; URL parameter `send_linger_ms`, 0 turns it off); the layer's
    /// `ChannelLayer::batch_linger`. Under a steady stream of group messages the sends
    /// queued during the wait join the batch, so every member is woken, and writes to its
    /// socket, once for more of them: less CPU per delivery in every process and in
    /// redis-server, for at most this much more latency. A batch after a pause, an awaited
    /// `group_send` and the sends of a closing connection go out at once.
    pub send_linger: Duration,
    /// How long after its last heartbeat a process of this layer counts as dead (default
    /// 20 s; URL parameter `process_ttl`, in seconds, 1 to 86400). Each process renews its
    /// entry in `<prefix>:processes` every third of this, and stays subscribed to a liveness
    /// channel of its own meanwhile; a process whose entry has expired, or whose liveness
    /// channel has lost its subscriber (Redis saw its connections close: a SIGKILL, an OOM
    /// kill), is dead, and the next group send of any other process to a group holding its
    /// members leaves them out and removes them from the group. Members of processes that never
    /// heartbeat (Python ones) are never removed this way. Every heartbeat also adds this
    /// process's memberships to Redis again, so memberships Redis lost come back within a
    /// third of this. See the layers guide in `docs/`.
    pub process_ttl: Duration,
    /// How `rediss://` hosts are reached: redis-py's `ssl_ca_certs`, `ssl_certfile`,
    /// `ssl_keyfile` and `ssl_cert_reqs` URL parameters (see [`TlsOptions`]).
    pub tls: TlsOptions,
    /// How the sentinels of `redis+sentinel://` hosts are reached (see [`SentinelOptions`]).
    pub sentinel: SentinelOptions,
}

impl RedisConfig {
    /// Settings for one Redis at `url` (`redis://127.0.0.1:6379/0`), with defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            hosts: vec![url.into()],
            prefix: "asgi".into(),
            layer: LayerConfig::default(),
            blocking_timeout: Duration::from_secs(5),
            symmetric_encryption_keys: Vec::new(),
            send_linger: DEFAULT_SEND_LINGER,
            process_ttl: DEFAULT_PROCESS_TTL,
            tls: TlsOptions::default(),
            sentinel: SentinelOptions::default(),
        }
    }

    /// Parses a layer URL: `redis://[user:password@]host[:port][,host2...][/db]?prefix=&capacity=&expiry=&group_expiry=&channel_capacity=GLOB:N&symmetric_encryption_key=K&send_linger_ms=&process_ttl=`;
    /// `rediss://` for TLS, with `ssl_ca_certs=`, `ssl_certfile=`, `ssl_keyfile=` and
    /// `ssl_cert_reqs=required|none` (see [`TlsOptions`]);
    /// `redis+sentinel://[user:password@]s1:26379,s2:26379/db?master_name=NAME` for masters
    /// found through Redis Sentinel, `master_name` repeated for several shards, with
    /// `sentinel_username=`, `sentinel_password=` and `sentinel_ssl=true` (see
    /// [`SentinelOptions`]); `ssl_*` options on such a URL (or `rediss+sentinel://`) make the
    /// masters' connections TLS ones. Several URLs of one scheme separated by `;` are the shards
    /// in order, as several hosts are; they may differ only in their hosts, password, database
    /// and `master_name`s (for shards behind different sentinels).
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        Self::from_layer_url(LayerUrl::parse(url)?)
    }

    /// As [`from_url`](Self::from_url), from a parsed URL.
    pub fn from_layer_url(mut url: LayerUrl) -> Result<Self, ConfigError> {
        let more = std::mem::take(&mut url.also);
        let mut config = Self::from_one_url(url)?;
        for (i, next) in more.into_iter().enumerate() {
            let next = Self::from_one_url(next)?;
            if let Some(option) = config.differing_option(&next) {
                return Err(ConfigError(format!(
                    "the `;`-separated URLs must agree on every option but their hosts: URL {} differs in {option}",
                    i + 2
                )));
            }
            config.hosts.extend(next.hosts);
        }
        Ok(config)
    }

    /// The first option other than the hosts that differs between `self` and `other`.
    fn differing_option(&self, other: &Self) -> Option<&'static str> {
        let Self {
            hosts: _,
            prefix,
            layer,
            blocking_timeout,
            symmetric_encryption_keys,
            send_linger,
            process_ttl,
            tls,
            sentinel,
        } = self;
        [
            (prefix == &other.prefix, "prefix"),
            (layer == &other.layer, "capacity, expiry, group_expiry or channel_capacity"),
            (blocking_timeout == &other.blocking_timeout, "blocking_timeout"),
            (symmetric_encryption_keys == &other.symmetric_encryption_keys, "symmetric_encryption_key"),
            (send_linger == &other.send_linger, "send_linger_ms"),
            (process_ttl == &other.process_ttl, "process_ttl"),
            (tls == &other.tls, "the ssl_* options"),
            (sentinel == &other.sentinel, "the sentinel_* options"),
        ]
        .into_iter()
        .find_map(|(same, name)| (!same).then_some(name))
    }

    fn from_one_url(mut url: LayerUrl) -> Result<Self, ConfigError> {
        let scheme = match url.scheme.as_str() {
            "redis" | "redis+pubsub" => "redis",
            "rediss" | "rediss+pubsub" => "rediss",
            "redis+sentinel" | "redis+sentinel+pubsub" => "redis+sentinel",
            "rediss+sentinel" | "rediss+sentinel+pubsub" => "rediss+sentinel",
            other => return Err(ConfigError(format!("expected a redis:// URL, got {other}://"))),
        };
        let db = url.path.trim_matches('/');
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err(ConfigError(format!("the path must be a database number, got {:?}", url.path)));
        }
        let path = if db.is_empty() { String::new() } else { format!("/{db}") };
        let layer = LayerConfig::take_from(&mut url)?;
        let tls = TlsOptions::take_from(&mut url.params)?;
        if scheme == "redis"
            && let Some(option) = tls.first_set()
        {
            return Err(ConfigError(format!("{option} is a TLS option: it needs a rediss:// URL")));
        }
        let (hosts, sentinel) = if scheme.ends_with("+sentinel") {
            // ssl_* options make the masters' connections TLS ones, as in redis-py.
            let scheme = if tls.is_set() { "rediss+sentinel" } else { scheme };
            sentinel_hosts(&mut url, scheme, &path)?
        } else if url.hosts.is_empty() {
            (vec![format!("{scheme}://127.0.0.1:6379{path}")], SentinelOptions::default())
        } else {
            (url.hosts.iter().map(|host| format!("{scheme}://{host}{path}")).collect(), SentinelOptions::default())
        };
        let mut prefix = "asgi".to_owned();
        let mut symmetric_encryption_keys = Vec::new();
        let mut send_linger = DEFAULT_SEND_LINGER;
        let mut process_ttl = DEFAULT_PROCESS_TTL;
        let mut rest = Vec::new();
        for (key, value) in url.params.drain(..) {
            match key.as_str() {
                "prefix" => prefix = value,
                "symmetric_encryption_key" => symmetric_encryption_keys.push(value),
                "send_linger_ms" => {
                    let ms: u64 = value.parse().ok().filter(|&ms| ms <= MAX_SEND_LINGER_MS).ok_or_else(|| {
                        ConfigError(format!("send_linger_ms must be 0 to {MAX_SEND_LINGER_MS}, got {value:?}"))
                    })?;
                    send_linger = Duration::from_millis(ms);
                }
                "process_ttl" => {
                    let secs: u64 =
                        value.parse().ok().filter(|secs| (1..=MAX_PROCESS_TTL_SECS).contains(secs)).ok_or_else(
                            || {
                                ConfigError(format!(
                                    "process_ttl must be 1 to {MAX_PROCESS_TTL_SECS} seconds, got {value:?}"
                                ))
                            },
                        )?;
                    process_ttl = Duration::from_secs(secs);
                }
                _ => rest.push((key, value)),
            }
        }
        url.params = rest;
        url.reject_unknown_params()?;
        Ok(Self {
            hosts,
            prefix,
            layer,
            blocking_timeout: Duration::from_secs(5),
            symmetric_encryption_keys,
            send_linger,
            process_ttl,
            tls,
            sentinel,
        })
    }
}

/// The hosts of a `redis+sentinel://` URL, one per `master_name` (the shards, in order), and
/// the sentinels' options, taken out of `url`'s parameters.
fn sentinel_hosts(url: &mut LayerUrl, scheme: &str, path: &str) -> Result<(Vec<String>, SentinelOptions), ConfigError> {
    let mut masters = Vec::new();
    let mut options = SentinelOptions::default();
    let mut rest = Vec::new();
    for (key, value) in url.params.drain(..) {
        match key.as_str() {
            "master_name" => {
                if value.is_empty() || value.contains(['&', '?', '#', '/', ' ']) {
                    return Err(ConfigError(format!("master_name {value:?} is not a valid master name")));
                }
                masters.push(value);
            }
            "sentinel_username" => options.username = Some(value),
            "sentinel_password" => options.password = Some(value),
            "sentinel_ssl" => {
                options.ssl = match value.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => return Err(ConfigError(format!("sentinel_ssl must be true or false, got {value:?}"))),
                }
            }
            _ => rest.push((key, value)),
        }
    }
    url.params = rest;
    if masters.is_empty() {
        return Err(ConfigError(format!(
            "{}:// needs master_name=NAME (the name the sentinels monitor the master by)",
            url.scheme
        )));
    }
    if url.hosts.is_empty() {
        return Err(ConfigError(format!("{}:// needs the sentinels' hosts (s1:26379,s2:26379)", url.scheme)));
    }
    let sentinels = url.hosts.join(",");
    let hosts = masters.iter().map(|name| format!("{scheme}://{sentinels}{path}?master_name={name}")).collect();
    Ok((hosts, options))
}

/// [`RedisConfig::send_linger`] unless set.
const DEFAULT_SEND_LINGER: Duration = Duration::from_millis(1);

/// [`RedisConfig::process_ttl`] unless set: dead processes' members are pruned within about
/// this long.
const DEFAULT_PROCESS_TTL: Duration = Duration::from_secs(20);

/// The longest `process_ttl` a URL may ask for, a day (`group_expiry`'s default): beyond
/// that, memberships expire before their process counts as dead.
const MAX_PROCESS_TTL_SECS: u64 = 86_400;

/// The longest `send_linger_ms` a URL may ask for: a wait meant to gather a burst, not to
/// hold messages back.
const MAX_SEND_LINGER_MS: u64 = 1_000;

impl RedisConfig {
    /// One endpoint per shard, in order. Certificate files are read here.
    pub(crate) fn open_endpoints(&self) -> Result<Vec<std::sync::Arc<Endpoint>>, ConfigError> {
        if self.hosts.is_empty() {
            return Err(ConfigError("at least one Redis host is needed".into()));
        }
        if self.tls.is_set() && !self.sentinel.ssl && !self.hosts.iter().any(|url| url.starts_with("rediss")) {
            return Err(ConfigError("TLS options are set but no host is a rediss:// one".into()));
        }
        self.hosts.iter().map(|url| Endpoint::open(url, &self.tls, &self.sentinel)).collect()
    }

    /// Why shard `index` could not be reached, naming its host (without secrets).
    pub(crate) fn connect_failure(&self, index: usize, error: &redis::RedisError) -> String {
        let url = self.hosts.get(index).map(String::as_str).unwrap_or_default();
        tls::ConnectFailure { host: without_password(url).into_owned(), tls: url.starts_with("rediss"), error }
            .to_string()
    }

    /// Warns, at start-up, about hosts whose certificates are not verified.
    pub(crate) fn warn_if_unverified(&self) {
        tls::warn_if_unverified(&self.hosts, &self.tls);
    }

    /// [`Self::hosts`] with their passwords hidden, for logs and `Debug` output.
    pub(crate) fn hosts_without_passwords(&self) -> Vec<Cow<'_, str>> {
        self.hosts.iter().map(|url| without_password(url)).collect()
    }

    /// The payload encryption, when keys are configured.
    pub(crate) fn encryption(&self) -> Result<Option<Encryption>, ConfigError> {
        match self.symmetric_encryption_keys.as_slice() {
            [] => Ok(None),
            keys => Encryption::new(keys).map(Some),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("hosts", &self.hosts_without_passwords())
            .field("prefix", &self.prefix)
            .field("layer", &self.layer)
            .field("blocking_timeout", &self.blocking_timeout)
            .field("symmetric_encryption_keys", &vec![HIDDEN; self.symmetric_encryption_keys.len()])
            .field("send_linger", &self.send_linger)
            .field("process_ttl", &self.process_ttl)
            .field("tls", &self.tls)
            .field("sentinel", &self.sentinel)
            .finish()
    }
}

/// What a secret shows as.
const HIDDEN: &str = "***";

/// `url` with the password of its `user:password@` part hidden (`redis://user:***@host`).
fn without_password(url: &str) -> Cow<'_, str> {
    channels_core::layer::redact_url(url)
}

/// A Redis failure as the layer trait reports it.
pub(crate) fn backend(e: impl std::error::Error + Send + Sync + 'static) -> channels_core::layer::BackendError {
    Box::new(e)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn defaults_follow_channels_redis() {
        let config = RedisConfig::from_url("redis://").unwrap();
        assert_eq!(config.hosts, ["redis://127.0.0.1:6379"]);
        assert_eq!(config.prefix, "asgi");
        assert_eq!(config.layer.expiry, Duration::from_secs(60));
        assert_eq!(config.layer.group_expiry, Duration::from_secs(86_400));
        assert_eq!(config.send_linger, Duration::from_millis(1));
    }

    #[test]
    fn send_linger_is_read_in_milliseconds_and_bounded() {
        assert_eq!(RedisConfig::from_url("redis://h?send_linger_ms=0").unwrap().send_linger, Duration::ZERO);
        assert_eq!(RedisConfig::from_url("redis://h?send_linger_ms=5").unwrap().send_linger, Duration::from_millis(5));
        for bad in ["-1", "1.5", "", "1001", "99999999999999999999"] {
            let err = RedisConfig::from_url(&format!("redis://h?send_linger_ms={bad}")).unwrap_err();
            assert!(err.to_string().contains("send_linger_ms"), "{bad}: {err}");
        }
    }

    #[test]
    fn process_ttl_is_read_in_seconds_and_bounded() {
        assert_eq!(RedisConfig::from_url("redis://h").unwrap().process_ttl, Duration::from_secs(20));
        assert_eq!(RedisConfig::from_url("redis://h?process_ttl=2").unwrap().process_ttl, Duration::from_secs(2));
        for bad in ["0", "-1", "1.5", "", "86401"] {
            let err = RedisConfig::from_url(&format!("redis://h?process_ttl={bad}")).unwrap_err();
            assert!(err.to_string().contains("process_ttl"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_tls_url_keeps_its_scheme_and_reads_the_ssl_options() {
        let config = RedisConfig::from_url("rediss://:pw@h1:1,h2:2/3?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem").unwrap();
        assert_eq!(config.hosts, ["rediss://:pw@h1:1/3", "rediss://h2:2/3"]);
        assert_eq!(config.tls.cert_reqs, crate::CertReqs::None);
        assert_eq!(config.tls.ca_certs.as_deref(), Some(std::path::Path::new("/ca.pem")));
        let pubsub = RedisConfig::from_url("rediss+pubsub://h").unwrap();
        assert_eq!(pubsub.hosts, ["rediss://h"]);
    }

    #[test]
    fn credentials_and_db_stay_in_each_host_url() {
        let config = RedisConfig::from_url("redis://:pw@h1:1,h2:2/3?expiry=5").unwrap();
        assert_eq!(config.hosts, ["redis://:pw@h1:1/3", "redis://h2:2/3"]);
        assert_eq!(config.layer.expiry, Duration::from_secs(5));
    }

    /// Everything secret a configuration can hold: passwords in host URLs, encryption keys.
    pub(crate) const SECRETS: [&str; 3] = ["hunter2", "pw-of-b", "the-encryption-key"];

    /// A configuration holding every one of [`SECRETS`].
    pub(crate) fn config_with_secrets() -> RedisConfig {
        RedisConfig::from_url(
            "redis://alice:hunter2@a:6379,pw-of-b@b:6380/2?symmetric_encryption_key=the-encryption-key",
        )
        .expect("valid URL")
    }

    #[test]
    fn debug_output_shows_no_password_or_encryption_key() {
        let shown = format!("{:?}", config_with_secrets());
        for secret in SECRETS {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        for kept in ["alice", "a:6379/2", "b:6380/2", "prefix"] {
            assert!(shown.contains(kept), "{kept} missing from {shown}");
        }
    }

    #[test]
    fn a_password_is_hidden_wherever_the_url_has_one() {
        for (url, shown) in [
            ("redis://u:p@h:1/0", "redis://u:***@h:1/0"),
            ("redis://:p@h", "redis://:***@h"),
            ("redis://p@h/0", "redis://***@h/0"),
            ("redis://u:p%40x@h", "redis://u:***@h"),
            ("redis://h:1/0", "redis://h:1/0"),
            ("redis://h/0?next=a@b", "redis://h/0?next=a@b"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(without_password(url), shown, "{url}");
        }
    }

    #[test]
    fn a_bad_host_url_error_shows_no_password() {
        let mut config = RedisConfig::new("redis://alice:hunter2@a:notaport");
        config.hosts.push("redis://ok:6379".into());
        let err = config.open_endpoints().err().expect("a port must be a number").to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("alice"), "{err}");
    }

    #[test]
    fn semicolon_separated_urls_are_shards_in_order() {
        let config = RedisConfig::from_url(
            "redis+sentinel://:pw@s1:1,s2:2/0?master_name=a&prefix=p; redis+sentinel://:pw@t1:1/0?master_name=b&prefix=p",
        )
        .unwrap();
        assert_eq!(
            config.hosts,
            ["redis+sentinel://:pw@s1:1,s2:2/0?master_name=a", "redis+sentinel://:pw@t1:1/0?master_name=b"]
        );
        assert_eq!(config.prefix, "p");
        let config = RedisConfig::from_url("redis://:a;b@h1/1;redis://h2/1").unwrap();
        assert_eq!(config.hosts, ["redis://:a;b@h1/1", "redis://h2/1"], "a `;` in a password stays");
        for (url, expected) in [
            ("redis://h1?prefix=a;redis://h2?prefix=b", "URL 2 differs in prefix"),
            ("redis://h1;rediss://h2", "one scheme"),
            ("redis+sentinel://s1?master_name=a;redis+sentinel://s2", "needs master_name"),
            ("redis://h1;redis://h2?nope=1", "unknown parameter \"nope\""),
        ] {
            let err = RedisConfig::from_url(url).expect_err(url).to_string();
            assert!(err.contains(expected), "{url}: {err}");
        }
        let memory = channels_core::layer::LayerUrl::parse("memory://;memory://").unwrap();
        assert!(memory.reject_unknown_params().unwrap_err().to_string().contains("takes one URL"));
    }

    #[test]
    fn bad_urls_are_clear_errors() {
        for bad in [
            "redis://h/notadb",
            "redis://h?bogus=1",
            "memory://",
            "redis://h?capacity=0",
            "rediss://h?ssl_cert_reqs=maybe",
        ] {
            assert!(RedisConfig::from_url(bad).is_err(), "{bad}");
        }
    }
}
