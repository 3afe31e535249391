//! Test helpers: a throwaway `redis-server` for integration tests, yours and ours.
//!
//! This module needs the `testing` feature: `channels = { ..., features = ["testing"] }` (or
//! `channels-redis = { ..., features = ["testing"] }`) under `[dev-dependencies]`.
//!
//! ```no_run
//! let server = channels_redis::testing::RedisServer::start();
//! let layer = channels_redis::RedisChannelLayer::from_url(&server.url()).unwrap();
//! ```
//!
//! For TLS, [`TestCertificates`] makes a throwaway certificate authority and certificates, and
//! [`RedisServer::start_tls`] a server that speaks TLS only:
//!
//! ```no_run
//! use channels_redis::testing::{RedisServer, TestCertificates, TlsServer};
//! let certs = TestCertificates::generate();
//! let server = RedisServer::start_tls(&certs, TlsServer::default());
//! let url = format!("{}?ssl_ca_certs={}", server.url(), certs.ca.display());
//! let layer = channels_redis::RedisChannelLayer::from_url(&url).unwrap();
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` on a free port, stopped when dropped (or, for a static one, by a watchdog
/// when the test process exits).
#[derive(Debug)]
pub struct RedisServer {
    /// The port it listens on (127.0.0.1): its TLS port for a server of
    /// [`start_tls`](Self::start_tls).
    pub port: u16,
    child: Option<Child>,
    /// `redis-server` arguments beyond the port and persistence ones (TLS, password).
    args: Vec<String>,
    /// What `redis-cli` needs beyond the port to reach it.
    cli_args: Vec<String>,
    tls: bool,
    /// A sentinel's configuration file (it runs `redis-server FILE --sentinel`).
    sentinel_config: Option<PathBuf>,
}

/// How [`RedisServer::start_tls`] sets its server up.
#[derive(Debug, Clone, Default)]
pub struct TlsServer {
    /// Clients must show a certificate of the test CA (`--tls-auth-clients yes`).
    pub require_client_certificates: bool,
    /// Serve the expired certificate instead of the valid one.
    pub expired_certificate: bool,
    /// `--requirepass`.
    pub password: Option<String>,
}

/// A throwaway certificate authority and the certificates tests need, as PEM files in a
/// temporary directory that is removed when this is dropped.
#[derive(Debug)]
pub struct TestCertificates {
    dir: PathBuf,
    /// The CA that signs the others.
    pub ca: PathBuf,
    /// A CA that signed none of them (a "wrong CA" for clients).
    pub other_ca: PathBuf,
    /// The server's certificate (for `127.0.0.1` and `localhost`) and its key.
    pub server_cert: PathBuf,
    /// See `server_cert`.
    pub server_key: PathBuf,
    /// A server certificate that expired in 2021, and its key.
    pub expired_cert: PathBuf,
    /// See `expired_cert`.
    pub expired_key: PathBuf,
    /// A client certificate (for mutual TLS) and its key.
    pub client_cert: PathBuf,
    /// See `client_cert`.
    pub client_key: PathBuf,
}

impl TestCertificates {
    /// Generates every certificate into a fresh temporary directory.
    ///
    /// # Panics
    /// If a certificate cannot be made or written.
    pub fn generate() -> TestCertificates {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let dir = std::env::temp_dir().join(format!(
            "channels-redis-tls-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write a PEM file");
            path
        };
        let ca_params = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params
        };
        let ca = CertifiedIssuer::self_signed(ca_params("channels-rs test CA"), KeyPair::generate().expect("key"))
            .expect("CA certificate");
        let other_ca =
            CertifiedIssuer::self_signed(ca_params("another CA"), KeyPair::generate().expect("key")).expect("CA");
        let leaf = |names: Vec<String>, purpose: ExtendedKeyUsagePurpose, expired: bool| {
            let mut params = CertificateParams::new(names).expect("certificate parameters");
            params.distinguished_name.push(DnType::CommonName, "channels-rs test");
            params.extended_key_usages = vec![purpose];
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &ca).expect("sign a certificate");
            (cert.pem(), key.serialize_pem())
        };
        let server_names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let (server_cert, server_key) = leaf(server_names.clone(), ExtendedKeyUsagePurpose::ServerAuth, false);
        let (expired_cert, expired_key) = leaf(server_names, ExtendedKeyUsagePurpose::ServerAuth, true);
        let (client_cert, client_key) = leaf(vec!["client".to_owned()], ExtendedKeyUsagePurpose::ClientAuth, false);
        TestCertificates {
            ca: write("ca.pem", ca.pem()),
            other_ca: write("other-ca.pem", other_ca.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            expired_cert: write("expired.pem", expired_cert),
            expired_key: write("expired.key", expired_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            dir,
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisServer {
    /// Starts `redis-server` (which must be on the PATH) on a free port, without persistence.
    ///
    /// # Panics
    /// If `redis-server` cannot be started.
    pub fn start() -> RedisServer {
        Self::start_with(Vec::new())
    }

    /// Starts `redis-server` on a free port with these arguments besides the port and
    /// persistence ones (`["--replicaof", "127.0.0.1", "6379"]`, say).
    ///
    /// # Panics
    /// If `redis-server` cannot be started.
    pub fn start_with(args: Vec<String>) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            args,
            cli_args: Vec::new(),
            tls: false,
            sentinel_config: None,
        };
        server.restart();
        server
    }

    /// Starts `redis-server` speaking TLS only, on a free port, with `certs`' server
    /// certificate (or its expired one) and the test CA to check client certificates.
    ///
    /// # Panics
    /// If `redis-server` cannot be started.
    pub fn start_tls(certs: &TestCertificates, options: TlsServer) -> RedisServer {
        Self::start_tls_with(certs, options, Vec::new())
    }

    /// [`start_tls`](Self::start_tls) with more `redis-server` arguments.
    fn start_tls_with(certs: &TestCertificates, options: TlsServer, extra: Vec<String>) -> RedisServer {
        let (cert, key) = if options.expired_certificate {
            (&certs.expired_cert, &certs.expired_key)
        } else {
            (&certs.server_cert, &certs.server_key)
        };
        let mut args = tls_server_args(certs, cert, key);
        args.extend([
            "--tls-auth-clients".to_owned(),
            if options.require_client_certificates { "yes" } else { "no" }.to_owned(),
        ]);
        let mut cli_args = tls_cli_args(certs);
        if options.expired_certificate {
            cli_args.push("--insecure".to_owned());
        }
        if let Some(password) = &options.password {
            args.extend(["--requirepass".to_owned(), password.clone()]);
            cli_args.extend(["-a".to_owned(), password.clone(), "--no-auth-warning".to_owned()]);
        }
        args.extend(extra);
        let mut server =
            RedisServer { port: free_port(), child: None, args, cli_args, tls: true, sentinel_config: None };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` for a TLS server (with no `ssl_*` options:
    /// add `ssl_ca_certs` naming the test CA).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port.
    ///
    /// # Panics
    /// If `redis-server` cannot be started.
    pub fn restart(&mut self) {
        self.start_process(false);
    }

    /// Starts again on the same port with the data of its last `SAVE` (as a Redis that
    /// persists its data does after a restart).
    ///
    /// # Panics
    /// If `redis-server` cannot be started.
    pub fn restart_keeping_data(&mut self) {
        self.start_process(true);
    }

    fn start_process(&mut self, keep_data: bool) {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        if let Some(config) = &self.sentinel_config {
            command.arg(config).arg("--sentinel");
        } else {
            let ports: [&str; 4] =
                if self.tls { ["--port", "0", "--tls-port", &port] } else { ["--port", &port, "", ""] };
            // A replica writes what its master sends into its RDB file even with `--save ""`:
            // keep it out of the working directory, and gone at every start (a restart loses
            // the data, as the tests expect).
            let dir = std::env::temp_dir();
            let rdb = format!("channels-redis-test-{port}.rdb");
            if !keep_data {
                let _ = std::fs::remove_file(dir.join(&rdb));
            }
            command
                .args(ports.iter().filter(|a| !a.is_empty()))
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .args(["--dbfilename", &rdb])
                .args(&self.args);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/install-test-deps installs it)");
        // Stop the server if this test process dies without dropping us.
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "while kill -0 {} 2>/dev/null && kill -0 {} 2>/dev/null; do sleep 1; done; kill {} 2>/dev/null",
                    std::process::id(),
                    child.id(),
                    child.id()
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.child = Some(child);
        for _ in 0..200 {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Kills the server (its data is gone; the port is kept for [`restart`](Self::restart)).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a command with redis-cli (over TLS, with the test client certificate, for a TLS
    /// server) and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = self.cli_args.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        redis_cli(self.port, &all)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Sentinel deployment on free ports: per master name one master and one replica,
/// and three sentinels monitoring them all (quorum 2, a master counts as down after 1 s),
/// all stopped when dropped.
///
/// ```no_run
/// use channels_redis::testing::SentinelDeployment;
/// let deployment = SentinelDeployment::start("mymaster");
/// let url = deployment.url(); // redis+sentinel://127.0.0.1:P1,...?master_name=mymaster
/// let layer = channels_redis::RedisChannelLayer::from_url(&url).unwrap();
/// ```
#[derive(Debug)]
pub struct SentinelDeployment {
    /// Per master name, the master, then its replica: which one is the master changes with
    /// failovers.
    pub servers: Vec<RedisServer>,
    /// The three sentinels.
    pub sentinels: Vec<RedisServer>,
    /// The name the sentinels monitor the (first) master by.
    pub master_name: String,
    /// Every master name, in order (the shards of [`url`](Self::url)).
    pub master_names: Vec<String>,
    /// The test CA, for a deployment of [`start_tls`](Self::start_tls).
    ca: Option<PathBuf>,
    dir: PathBuf,
}

impl SentinelDeployment {
    /// Starts the servers and the sentinels, and waits until every replica has synced and
    /// every sentinel knows the replica and the other sentinels (so that a failover can happen).
    ///
    /// # Panics
    /// If a process cannot be started, or the replicas do not sync and the sentinels see each
    /// other within 10 s.
    pub fn start(master_name: &str) -> SentinelDeployment {
        Self::start_sharded(&[master_name])
    }

    /// [`start`](Self::start) with one master (and its replica) per name.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_sharded(master_names: &[&str]) -> SentinelDeployment {
        Self::start_secured(master_names, None)
    }

    /// [`start_sharded`](Self::start_sharded) with sentinels that want `sentinel_password`
    /// (`requirepass`, and `sentinel sentinel-pass` to reach each other).
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_secured(master_names: &[&str], sentinel_password: Option<&str>) -> SentinelDeployment {
        Self::start_with(master_names, sentinel_password, None)
    }

    /// [`start`](Self::start) with every server and sentinel speaking TLS only, with `certs`'
    /// server certificate (replication and the sentinels' own connections too), client
    /// certificates not required. [`url`](Self::url) is then a `rediss+sentinel://` URL with
    /// `sentinel_ssl=true` and `ssl_ca_certs` naming the test CA.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_tls(master_names: &[&str], certs: &TestCertificates) -> SentinelDeployment {
        Self::start_with(master_names, None, Some(certs))
    }

    fn start_with(
        master_names: &[&str],
        sentinel_password: Option<&str>,
        tls: Option<&TestCertificates>,
    ) -> SentinelDeployment {
        let mut servers = Vec::new();
        let mut monitors = String::new();
        for name in master_names {
            let (master, replica) = match tls {
                None => {
                    let master = RedisServer::start_with(no_sync_delay());
                    let replica = RedisServer::start_with(replica_of(&master));
                    (master, replica)
                }
                Some(certs) => {
                    let replication = vec!["--tls-replication".to_owned(), "yes".to_owned()];
                    let mut args = no_sync_delay();
                    args.extend(replication.clone());
                    let master = RedisServer::start_tls_with(certs, TlsServer::default(), args);
                    let mut args = replica_of(&master);
                    args.extend(replication);
                    (master, RedisServer::start_tls_with(certs, TlsServer::default(), args))
                }
            };
            monitors.push_str(&format!(
                "sentinel monitor {name} 127.0.0.1 {port} 2\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 4000\n\
                 sentinel parallel-syncs {name} 1\n",
                port = master.port
            ));
            servers.extend([master, replica]);
        }
        let dir = std::env::temp_dir().join(format!(
            "channels-redis-sentinel-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let sentinels = (0..3)
            .map(|i| {
                let port = free_port();
                let config = dir.join(format!("sentinel-{i}.conf"));
                let mut text = match tls {
                    None => format!("port {port}\n"),
                    Some(certs) => {
                        let args = tls_server_args(certs, &certs.server_cert, &certs.server_key);
                        let files: String =
                            args.chunks(2).map(|pair| format!("{} {}\n", &pair[0][2..], pair[1])).collect();
                        format!(
                            "port 0\ntls-port {port}\n{files}tls-auth-clients no\ntls-replication yes\n\
                             sentinel announce-port {port}\n"
                        )
                    }
                };
                text.push_str(&format!("bind 127.0.0.1\ndir {}\n{monitors}", dir.display()));
                let mut cli_args = tls.map(tls_cli_args).unwrap_or_default();
                if let Some(password) = sentinel_password {
                    text.push_str(&format!("requirepass {password}\nsentinel sentinel-pass {password}\n"));
                    cli_args.extend(["-a".to_owned(), password.to_owned(), "--no-auth-warning".to_owned()]);
                }
                std::fs::write(&config, text).expect("write a sentinel configuration");
                let mut sentinel = RedisServer {
                    port,
                    child: None,
                    args: Vec::new(),
                    cli_args,
                    tls: tls.is_some(),
                    sentinel_config: Some(config),
                };
                sentinel.restart();
                sentinel
            })
            .collect();
        let deployment = SentinelDeployment {
            servers,
            sentinels,
            master_name: master_names.first().map(|n| n.to_string()).unwrap_or_default(),
            master_names: master_names.iter().map(|n| n.to_string()).collect(),
            ca: tls.map(|certs| certs.ca.clone()),
            dir,
        };
        deployment.wait_until_ready();
        deployment
    }

    fn wait_until_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ready = self.sentinels.iter().all(|sentinel| {
                self.master_names.iter().all(|master_name| {
                    let info = sentinel.cli(&["SENTINEL", "MASTER", master_name]);
                    let lines: Vec<&str> = info.lines().map(str::trim).collect();
                    let field = |name: &str| {
                        let value = lines.iter().position(|l| *l == name).and_then(|i| lines.get(i + 1));
                        value.and_then(|v| v.parse::<u32>().ok())
                    };
                    field("num-slaves") == Some(1) && field("num-other-sentinels") == Some(2)
                })
            });
            let synced = self.servers.iter().all(|server| {
                let info = server.cli(&["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            });
            if ready && synced {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the sentinels did not see each other, or a replica did not sync, within 10 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3?master_name=NAME` (with
    /// `master_name` once per master, in order); for a TLS deployment,
    /// `rediss+sentinel://...&sentinel_ssl=true&ssl_ca_certs=CA`.
    pub fn url(&self) -> String {
        let masters: Vec<String> = self.master_names.iter().map(|name| format!("master_name={name}")).collect();
        let hosts = self.sentinel_hosts().join(",");
        match &self.ca {
            None => format!("redis+sentinel://{hosts}?{}", masters.join("&")),
            Some(ca) => format!(
                "rediss+sentinel://{hosts}?{}&sentinel_ssl=true&ssl_ca_certs={}",
                masters.join("&"),
                ca.display()
            ),
        }
    }

    /// The sentinels' `127.0.0.1:PORT`s.
    pub fn sentinel_hosts(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect()
    }

    /// The port of the (first) master, as the first sentinel that answers names it.
    pub fn master_port(&self) -> Option<u16> {
        self.master_port_of(&self.master_name)
    }

    /// The port of the master named `master_name`, as the first sentinel that answers names it.
    pub fn master_port_of(&self, master_name: &str) -> Option<u16> {
        self.sentinels.iter().find_map(|sentinel| {
            let answer = sentinel.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name]);
            answer.lines().nth(1).and_then(|port| port.trim().parse().ok())
        })
    }

    /// The server that is the (first) master now.
    ///
    /// # Panics
    /// If no sentinel names one of ours.
    pub fn master(&mut self) -> &mut RedisServer {
        let port = self.master_port().expect("a sentinel names the master");
        self.servers.iter_mut().find(|s| s.port == port).expect("the master is one of ours")
    }

    /// Waits until a sentinel names a (first) master other than the one on `old_port` (at
    /// most `limit`), and returns when that was seen.
    pub fn wait_for_new_master(&self, old_port: u16, limit: Duration) -> Option<std::time::Instant> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if self.master_port().is_some_and(|port| port != old_port) {
                return Some(std::time::Instant::now());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for SentinelDeployment {
    fn drop(&mut self) {
        for sentinel in &mut self.sentinels {
            sentinel.stop();
        }
        for server in &mut self.servers {
            server.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A master that starts a replica's first sync at once (Redis waits 5 s by default, for more
/// replicas to share it), so the replica holds the data before a test takes the master away.
fn no_sync_delay() -> Vec<String> {
    vec!["--repl-diskless-sync-delay".to_owned(), "0".to_owned()]
}

/// `--replicaof` `master`.
fn replica_of(master: &RedisServer) -> Vec<String> {
    vec!["--replicaof".to_owned(), "127.0.0.1".to_owned(), master.port.to_string()]
}

/// `redis-server` arguments for a TLS listener with this certificate and the test CA.
fn tls_server_args(certs: &TestCertificates, cert: &Path, key: &Path) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--tls-cert-file".to_owned(),
        path(cert),
        "--tls-key-file".to_owned(),
        path(key),
        "--tls-ca-cert-file".to_owned(),
        path(&certs.ca),
    ]
}

/// `redis-cli` arguments to reach a TLS server of the test CA, with the test client certificate.
fn tls_cli_args(certs: &TestCertificates) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    ["--tls", "--cacert", &path(&certs.ca), "--cert", &path(&certs.client_cert), "--key", &path(&certs.client_key)]
        .map(str::to_owned)
        .to_vec()
}

/// Runs `redis-cli -p <port> <args>` and returns what it printed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(6390)
}
