//! examples/django_chat end to end: its Django project (run-django, Django's runserver) and the
//! Rust chat share the SQLite session store, the user table and a Redis channel layer. A user
//! who logs in on Django's page chats under that name over the Rust chat, and the Django
//! announcement view's `group_send` reaches the Rust chat's clients.

#[path = "support/django.rs"]
mod site;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use site::{Cookies, SECRET_KEY, TempDir, csrf_token, request};
use support::{Client, Example, next_of_type, send_text};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

struct Django(Child);

impl Drop for Django {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "Django did not start listening on {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(chat: &Example, session: Option<&str>) -> Client {
    let mut request = chat.url("/ws/chat/lobby/?user=mallory").into_client_request().expect("request");
    if let Some(session) = session {
        request.headers_mut().insert("cookie", HeaderValue::from_str(&format!("sessionid={session}")).expect("cookie"));
    }
    tokio_tungstenite::connect_async(request).await.expect("connect").0
}

async fn message_with_text(client: &mut Client, text: &str) -> serde_json::Value {
    loop {
        let message = next_of_type(client, "chat.message").await;
        if message["text"] == text {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_in_on_django_chat_over_rust_and_hear_django_announce() {
    let redis = channels::redis::testing::RedisServer::start();
    let dir = TempDir::new("django-chat");
    let db = dir.0.join("db.sqlite3");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let django_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/django_chat");
    let _django = Django(
        Command::new(example.join("run-django"))
            .env("PYTHON", site::python())
            .env("DJANGO_SECRET_KEY", SECRET_KEY)
            .env("DJANGO_CHAT_DB", &db)
            .env("DJANGO_CHAT_REDIS", format!("{}/0", redis.url()))
            .env("DJANGO_CHAT_BIND", django_addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run-django"),
    );
    wait_for(django_addr).await;
    let layer = format!("{}/0?prefix=asgi", redis.url());
    let sessions = format!("sqlite://{}", db.display());
    let chat = Example::start_with_env(
        "chat",
        &["--layer", &layer, "--django-sessions", &sessions],
        &[("DJANGO_SECRET_KEY", SECRET_KEY)],
    );

    // Log in on Django's page.
    let mut cookies = Cookies::default();
    let page = request(django_addr, "GET", "/login/", &mut cookies, None).await;
    let form = format!("csrfmiddlewaretoken={}&username=alice&password=alice-password", csrf_token(&page.body));
    assert_eq!(request(django_addr, "POST", "/login/", &mut cookies, Some(&form)).await.status, 302);
    let home = request(django_addr, "GET", "/", &mut cookies, None).await;
    assert!(home.body.contains("Logged in as <b>alice</b>"), "{}", home.body);

    // Chat over Rust as alice; a guest in the same room.
    let mut alice = connect(&chat, cookies.session()).await;
    let mut guest = connect(&chat, None).await;
    send_text(&mut alice, "hello from alice").await;
    assert_eq!(message_with_text(&mut guest, "hello from alice").await["user"], "alice");

    // Django's announcement view reaches the Rust clients through the shared layer.
    let token = csrf_token(&home.body);
    let form = format!("csrfmiddlewaretoken={token}&room=lobby&text=Django+says+hello");
    assert_eq!(request(django_addr, "POST", "/announce/", &mut cookies, Some(&form)).await.status, 302);
    for client in [&mut alice, &mut guest] {
        let message = message_with_text(client, "Django says hello").await;
        assert_eq!(message["user"], "Django");
    }

    // Logged out in Django: a guest in the chat.
    let form = format!("csrfmiddlewaretoken={token}");
    let session = cookies.session().expect("session").to_owned();
    assert_eq!(request(django_addr, "POST", "/logout/", &mut cookies, Some(&form)).await.status, 302);
    let mut after = connect(&chat, Some(&session)).await;
    send_text(&mut after, "who am I").await;
    let name = message_with_text(&mut after, "who am I").await["user"].as_str().expect("user").to_owned();
    assert!(name.starts_with("guest-"), "{name}");
}
