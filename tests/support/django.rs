//! A real Django site for the tests that share its logins (tests/python/django_site), its
//! databases (SQLite in a temporary directory, PostgreSQL in a fresh database) and an HTTP
//! client that logs in through Django's own LoginView.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SECRET_KEY: &str = "django-insecure-test-key-for-the-rust-side-0123456789";

/// The repository's root, whether this file is compiled into the tests or the benchmarks.
fn repo_root() -> &'static Path {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    if dir.ends_with("benches") { dir.parent().unwrap_or(dir) } else { dir }
}

pub fn python() -> PathBuf {
    let python = repo_root().join("target/test-venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/install-test-deps", python.display());
    python
}

fn site_dir() -> PathBuf {
    repo_root().join("tests/python/django_site")
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "channels-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A PostgreSQL database made for this test run, dropped at the end.
pub struct PgDatabase {
    pub port: u16,
    pub name: String,
    server: Option<(TempDir, PathBuf)>,
}

fn psql(port: u16, db: &str, sql: &str) -> bool {
    Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-d", db, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Runs a PostgreSQL tool as the `postgres` user when we are root (initdb refuses root).
fn pg_tool(tool: &str) -> Command {
    // Debian keeps the server's tools out of PATH, in /usr/lib/postgresql/VERSION/bin.
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|version| version.path().join("bin").join(tool))
        .find(|path| path.exists());
    let local = PathBuf::from(format!("/usr/local/bin/{tool}"));
    let path = if local.exists() { Some(local) } else { debian }
        .unwrap_or_else(|| panic!("{tool} is missing: run scripts/install-test-deps"));
    let path = path.to_string_lossy().into_owned();
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", &path]);
        command
    } else {
        Command::new(path)
    }
}

impl PgDatabase {
    /// A fresh database on the server at 127.0.0.1:5432 when it answers, else on a server
    /// started here (initdb, pg_ctl) on a free port.
    pub fn create() -> PgDatabase {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("channels_django_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let forced_local = std::env::var_os("CHANNELS_TEST_OWN_POSTGRES").is_some();
        if !forced_local && psql(5432, "test", "SELECT 1") {
            assert!(psql(5432, "test", &format!("CREATE DATABASE {name}")), "create database {name}");
            return PgDatabase { port: 5432, name, server: None };
        }
        let dir = TempDir::new("postgres");
        let data = dir.0.join("data");
        let _ = Command::new("chmod").args(["777", &dir.0.to_string_lossy()]).status();
        let ok = pg_tool("initdb")
            .args(["-D", &data.to_string_lossy(), "-A", "trust", "-U", "root", "--no-sync"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "initdb failed");
        let port = free_port();
        let options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", dir.0.display());
        let ok = pg_tool("pg_ctl")
            .args([
                "-D",
                &data.to_string_lossy(),
                "-o",
                &options,
                "-l",
                &dir.0.join("log").to_string_lossy(),
                "-w",
                "start",
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pg_ctl start failed");
        assert!(psql(port, "postgres", &format!("CREATE DATABASE {name}")), "create database {name}");
        PgDatabase { port, name, server: Some((dir, data)) }
    }

    pub fn url(&self) -> String {
        format!("postgresql://root@127.0.0.1:{}/{}", self.port, self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        match &self.server {
            Some((_, data)) => {
                let _ = pg_tool("pg_ctl").args(["-D", &data.to_string_lossy(), "-m", "immediate", "stop"]).status();
            }
            None => {
                let _ = psql(5432, "test", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
            }
        }
    }
}

/// The Django site, served on a free port.
pub struct Site {
    pub port: u16,
    /// The site's database as `DjangoAuth` names it (`sqlite:///...` or `postgresql://...`).
    pub rust_database: String,
    env: Vec<(String, String)>,
    server: Child,
    _dir: TempDir,
}

impl Site {
    /// `engine` is `db` or `signed_cookies`; `database` is `None` for SQLite in a temporary
    /// directory, or a PostgreSQL URL. Returns the site and the URL of its database for
    /// `DjangoAuth::from_url`.
    pub fn start(engine: &str, database: Option<&str>) -> (Site, String) {
        Self::start_with_cache(engine, database, None)
    }

    /// [`Site::start`] with Django's `RedisCache` on `cache` (`redis://...`), key prefix `site`
    /// and version 3; for the `cache` and `cached_db` engines.
    pub fn start_with_cache(engine: &str, database: Option<&str>, cache: Option<&str>) -> (Site, String) {
        let dir = TempDir::new("django");
        let (django_db, rust_db) = match database {
            None => {
                let path = dir.0.join("db.sqlite3");
                (format!("sqlite:{}", path.display()), format!("sqlite://{}", path.display()))
            }
            Some(url) => (url.to_owned(), url.to_owned()),
        };
        let mut env = vec![
            ("DJANGO_SECRET_KEY".to_owned(), SECRET_KEY.to_owned()),
            ("SITE_SESSION_ENGINE".to_owned(), engine.to_owned()),
            ("SITE_DATABASE".to_owned(), django_db),
        ];
        if let Some(cache) = cache {
            env.push(("SITE_CACHE".to_owned(), cache.to_owned()));
            env.push(("SITE_CACHE_KEY_PREFIX".to_owned(), "site".to_owned()));
            env.push(("SITE_CACHE_VERSION".to_owned(), "3".to_owned()));
        }
        let server = Command::new("true").spawn().expect("true");
        let mut site = Site { port: 0, rust_database: rust_db.clone(), server, env, _dir: dir };
        site.tool(&["setup"]);
        let mut server = site.command(&["serve"]).stdout(Stdio::piped()).spawn().expect("start the Django site");
        let mut line = String::new();
        BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("the site's port");
        site.port = line.trim().strip_prefix("port ").and_then(|p| p.parse().ok()).expect("port N");
        site.server = server;
        let cache_url = cache.map(|c| format!("{c}?key_prefix=site&version=3")).unwrap_or_default();
        let rust_url = match engine {
            "signed_cookies" => format!("signed-cookies:{rust_db}"),
            "cache" => cache_url,
            "cached_db" => format!("cached-db:{cache_url},{rust_db}"),
            _ => rust_db,
        };
        (site, rust_url)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(python());
        command.arg(site_dir().join("tool.py")).args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs `tool.py` with `args` (see its docstring); panics if it fails.
    pub fn tool(&self, args: &[&str]) {
        let status = self.command(args).status().expect("run tool.py");
        assert!(status.success(), "tool.py {args:?} failed");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Logs `user` in through Django's LoginView; returns the browser's cookies.
    pub async fn login(&self, user: &str, password: &str) -> Cookies {
        let mut cookies = Cookies::default();
        let page = request(self.addr(), "GET", "/login/", &mut cookies, None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let token = csrf_token(&page.body);
        let form = format!("csrfmiddlewaretoken={token}&username={user}&password={password}");
        let response = request(self.addr(), "POST", "/login/", &mut cookies, Some(&form)).await;
        assert_eq!(response.status, 302, "login of {user} refused: {}", response.body);
        let home = request(self.addr(), "GET", "/", &mut cookies, None).await;
        assert_eq!(home.body, user, "Django itself sees the login");
        cookies
    }

    /// Logs out through Django's LogoutView (a POST, as Django 5 requires).
    pub async fn logout(&self, cookies: &mut Cookies) {
        let token = cookies.0.get("csrftoken").cloned().expect("csrftoken");
        let form = format!("csrfmiddlewaretoken={token}");
        let response = request(self.addr(), "POST", "/logout/", cookies, Some(&form)).await;
        assert_eq!(response.status, 302, "logout: {}", response.body);
    }

    /// What Django says of the session (`anonymous` or a username).
    pub async fn whoami(&self, cookies: &mut Cookies) -> String {
        request(self.addr(), "GET", "/", cookies, None).await.body
    }

    /// Values signed by `django.core.signing.dumps` for each `{"salt", "value", "compress", "age"}`.
    pub fn sign(&self, cases: &serde_json::Value) -> Vec<String> {
        let mut child = self.command(&["sign"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("sign");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(cases.to_string().as_bytes()).expect("write cases");
        }
        let output = child.wait_with_output().expect("signed values");
        assert!(output.status.success(), "tool.py sign failed");
        serde_json::from_slice(&output.stdout).expect("a JSON list")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A browser's cookie jar for one site.
#[derive(Debug, Default, Clone)]
pub struct Cookies(pub BTreeMap<String, String>);

impl Cookies {
    pub fn header(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub fn session(&self) -> Option<&str> {
        self.0.get("sessionid").map(String::as_str)
    }
}

pub fn csrf_token(html: &str) -> String {
    let after = html.split("name=\"csrfmiddlewaretoken\" value=\"").nth(1).expect("a CSRF token in the form");
    after.split('"').next().expect("token").to_owned()
}

pub struct Response {
    pub status: u16,
    pub body: String,
}

/// One HTTP/1.1 request (connection closed after it); `Set-Cookie` updates `cookies`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookies: &mut Cookies,
    form: Option<&str>,
) -> Response {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to Django");
    let body = form.unwrap_or("");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nReferer: http://127.0.0.1:{}/login/\r\n",
        addr.port(),
        addr.port()
    );
    if !cookies.0.is_empty() {
        head.push_str(&format!("Cookie: {}\r\n", cookies.header()));
    }
    if form.is_some() {
        head.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("send");
    stream.write_all(body.as_bytes()).await.expect("send body");
    let mut raw = Vec::new();
    tokio::time::timeout_at(deadline.into(), stream.read_to_end(&mut raw))
        .await
        .expect("Django answers")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        if !name.eq_ignore_ascii_case("set-cookie") {
            continue;
        }
        let pair = value.trim().split(';').next().unwrap_or_default();
        if let Some((k, v)) = pair.split_once('=') {
            let v = v.trim_matches('"');
            let expired = value.contains("Max-Age=0") || value.contains("01 Jan 1970");
            if v.is_empty() || expired {
                cookies.0.remove(k);
            } else {
                cookies.0.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    Response { status, body: body.to_owned() }
}
