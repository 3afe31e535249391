//! TLS to Redis (`rediss://` URLs) through rustls, with the option names of redis-py
//! (`ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`, `ssl_cert_reqs`), and the words a failed
//! connection is reported in.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Once;

use channels_core::layer::{ConfigError, redact_url};
use redis::{ClientTlsConfig, TlsCertificates};

/// Whether the server's certificate is checked (redis-py's `ssl_cert_reqs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CertReqs {
    /// The server's certificate must verify against the trusted roots and name the host
    /// (`ssl_cert_reqs=required`, the default).
    #[default]
    Required,
    /// Anything the server shows is accepted (`ssl_cert_reqs=none`): encryption without
    /// knowing who is at the other end. Only when written out; the layer warns at start-up.
    None,
}

/// How the layer speaks TLS to `rediss://` hosts: URL parameters `ssl_ca_certs=PATH` (a PEM
/// bundle of the roots to trust instead of the system's), `ssl_certfile=PATH` and
/// `ssl_keyfile=PATH` (a client certificate, for mutual TLS; without `ssl_keyfile` the key is
/// read from the certificate file), `ssl_cert_reqs=required|none`.
///
/// ```
/// use channels_redis::{CertReqs, RedisConfig};
/// let config = RedisConfig::from_url("rediss://:pw@cache.example:6380/0?ssl_ca_certs=/etc/ca.pem").unwrap();
/// assert_eq!(config.tls.ca_certs.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
/// assert_eq!(config.tls.cert_reqs, CertReqs::Required);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TlsOptions {
    /// PEM file of the certificate authorities to trust; the system's roots when unset.
    pub ca_certs: Option<PathBuf>,
    /// PEM file of the client certificate (and its key, when `keyfile` is unset).
    pub certfile: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub keyfile: Option<PathBuf>,
    /// Whether the server's certificate is verified.
    pub cert_reqs: CertReqs,
}

/// The URL parameters [`TlsOptions`] reads.
const PARAMS: [&str; 4] = ["ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"];

impl TlsOptions {
    /// Takes the `ssl_*` parameters out of `params`.
    pub(crate) fn take_from(params: &mut Vec<(String, String)>) -> Result<Self, ConfigError> {
        let mut options = Self::default();
        let mut rest = Vec::with_capacity(params.len());
        for (key, value) in params.drain(..) {
            let path = || {
                if value.is_empty() {
                    Err(ConfigError(format!("{key} needs a file path")))
                } else {
                    Ok(Some(PathBuf::from(&value)))
                }
            };
            match key.as_str() {
                "ssl_ca_certs" => options.ca_certs = path()?,
                "ssl_certfile" => options.certfile = path()?,
                "ssl_keyfile" => options.keyfile = path()?,
                "ssl_cert_reqs" => {
                    options.cert_reqs = match value.to_ascii_lowercase().as_str() {
                        "required" | "cert_required" => CertReqs::Required,
                        "none" | "cert_none" => CertReqs::None,
                        _ => {
                            return Err(ConfigError(format!(
                                "ssl_cert_reqs must be \"required\" or \"none\", got {value:?}"
                            )));
                        }
                    }
                }
                _ => rest.push((key, value)),
            }
        }
        *params = rest;
        if options.keyfile.is_some() && options.certfile.is_none() {
            return Err(ConfigError("ssl_keyfile needs ssl_certfile (the certificate of that key)".into()));
        }
        Ok(options)
    }

    /// Whether any TLS option was written.
    pub(crate) fn is_set(&self) -> bool {
        *self != Self::default()
    }

    /// The first `ssl_*` option that is set, to name it when the URL is not a TLS one.
    pub(crate) fn first_set(&self) -> Option<&'static str> {
        [self.ca_certs.is_some(), self.certfile.is_some(), self.keyfile.is_some(), self.cert_reqs != CertReqs::Required]
            .iter()
            .position(|&set| set)
            .map(|i| PARAMS[i])
    }

    /// The certificates these options name, read and checked now, so that a missing or
    /// unreadable file is an error at start-up that names it.
    fn certificates(&self) -> Result<Option<TlsCertificates>, ConfigError> {
        if self.ca_certs.is_none() && self.certfile.is_none() {
            return Ok(None);
        }
        let root_cert = match &self.ca_certs {
            Some(path) => Some(read_pem("ssl_ca_certs", path, "CERTIFICATE")?),
            None => None,
        };
        let client_tls = match &self.certfile {
            Some(certfile) => {
                let client_cert = read_pem("ssl_certfile", certfile, "CERTIFICATE")?;
                let client_key = match &self.keyfile {
                    Some(keyfile) => read_pem("ssl_keyfile", keyfile, "PRIVATE KEY")?,
                    None => {
                        if !contains_pem(&client_cert, "PRIVATE KEY") {
                            return Err(ConfigError(format!(
                                "ssl_certfile {} holds no private key; name the key file with ssl_keyfile",
                                certfile.display()
                            )));
                        }
                        client_cert.clone()
                    }
                };
                Some(ClientTlsConfig { client_cert, client_key })
            }
            None => None,
        };
        Ok(Some(TlsCertificates { client_tls, root_cert }))
    }
}

/// Reads a PEM file that must hold at least one block whose label ends in `label`.
fn read_pem(option: &str, path: &Path, label: &str) -> Result<Vec<u8>, ConfigError> {
    let bytes =
        std::fs::read(path).map_err(|e| ConfigError(format!("{option}: cannot read {}: {e}", path.display())))?;
    if !contains_pem(&bytes, label) {
        return Err(ConfigError(format!("{option}: {} holds no PEM {label}", path.display())));
    }
    Ok(bytes)
}

/// Whether `pem` has a `-----BEGIN ...<label>-----` line (`PRIVATE KEY` also matches
/// `RSA PRIVATE KEY` and `EC PRIVATE KEY`).
fn contains_pem(pem: &[u8], label: &str) -> bool {
    String::from_utf8_lossy(pem)
        .lines()
        .any(|line| line.starts_with("-----BEGIN ") && line.trim_end().ends_with(&format!("{label}-----")))
}

/// rustls needs a process-wide crypto provider: ring's, unless the application chose one.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error means another provider is installed already, which serves as well.
        // ring rather than aws-lc-rs: a smaller build, and Redis needs no post-quantum key
        // exchange (the reason ring's provider is deprecated).
        #[allow(deprecated)]
        let mut provider = rustls::crypto::ring::default_provider();
        // AES-128-GCM first: Redis takes the client's order by default
        // (`tls-prefer-server-ciphers no`), and it costs fewer cycles per byte than
        // AES-256-GCM, which ring lists first. Every suite stays available.
        provider.cipher_suites.sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let _ = provider.install_default();
    });
}

/// The redis-rs client for one host URL (`redis://` or `rediss://`), with `tls` applied to a
/// `rediss://` one. Certificate files are read here.
pub(crate) fn client(url: &str, tls: &TlsOptions) -> Result<redis::Client, ConfigError> {
    let bad = |e: redis::RedisError| ConfigError(format!("bad Redis URL {:?}: {e}", redact_url(url)));
    if !url.starts_with("rediss://") {
        return redis::Client::open(url).map_err(bad);
    }
    install_crypto_provider();
    // redis-rs reads "skip verification" from the URL's fragment.
    let url = match tls.cert_reqs {
        CertReqs::Required => url.to_owned(),
        CertReqs::None => format!("{url}#insecure"),
    };
    match tls.certificates()? {
        None => redis::Client::open(url.as_str()).map_err(bad),
        Some(certificates) => redis::Client::build_with_tls(url.as_str(), certificates)
            .map_err(|e| ConfigError(format!("TLS settings for {}: {e}", redact_url(&url)))),
    }
}

/// Logs, once per layer, that `ssl_cert_reqs=none` leaves the server unverified.
pub(crate) fn warn_if_unverified(hosts: &[impl AsRef<str>], tls: &TlsOptions) {
    if tls.cert_reqs == CertReqs::None {
        for host in hosts.iter().filter(|h| h.as_ref().starts_with("rediss")) {
            tracing::warn!(
                host = %redact_url(host.as_ref()),
                "ssl_cert_reqs=none: the Redis server's certificate is not verified; anyone on the path can pose as it"
            );
        }
    }
}

/// A connection failure in words a user can act on: the cause redis-rs gives, and what it
/// usually means.
pub(crate) struct ConnectFailure<'a> {
    /// Where the layer tried to connect, secrets hidden.
    pub(crate) host: String,
    /// Whether that host is a `rediss://` one.
    pub(crate) tls: bool,
    pub(crate) error: &'a redis::RedisError,
}

impl fmt::Display for ConnectFailure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redis at {}: {}", self.host, self.error)?;
        let text = self.error.to_string();
        let lower = text.to_ascii_lowercase();
        let hint = if lower.contains("wrongpass")
            || lower.contains("invalid password")
            || lower.contains("noauth")
            || lower.contains("authentication failed")
        {
            Some("wrong or missing password (the URL's user:password@ part)")
        } else if self.tls && lower.contains("certificaterequired") {
            Some("the server wants a client certificate: set ssl_certfile and ssl_keyfile")
        } else if lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("expired") {
            Some(if self.tls {
                "the server's TLS certificate does not verify: check ssl_ca_certs (or the system roots), the host name and the certificate's dates"
            } else {
                "a certificate problem"
            })
        } else if lower.contains("refused") {
            Some("nothing listens there: is Redis running, and is the host and port right?")
        } else if self.tls
            && (lower.contains("corrupt message")
                || lower.contains("invalidcontenttype")
                || lower.contains("timed out"))
        {
            Some("no TLS answer: does the server speak TLS on this port? A plain one needs redis://")
        } else if !self.tls
            && (lower.contains("connection reset")
                || lower.contains("broken pipe")
                || lower.contains("connection closed")
                || lower.contains("closed by")
                || lower.contains("unexpected end")
                || lower.contains("timed out"))
        {
            Some("the server dropped a plain connection: if it speaks TLS only, use rediss://")
        } else {
            None
        };
        if let Some(hint) = hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}
