//! The chat example shares a real Django site's logins: a client logged in through Django's
//! LoginView chats under its Django username whatever `?user=` says; anyone else is a guest,
//! or is refused with 403 under `--django-login-required`.

#[path = "support/django.rs"]
mod site;
mod support;

use site::{SECRET_KEY, Site};
use support::{Client, Example, next_of_type, send_text};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

async fn connect_with(example: &Example, path: &str, session: Option<&str>) -> Result<Client, u16> {
    let mut request = example.url(path).into_client_request().expect("request");
    if let Some(session) = session {
        let cookie = HeaderValue::from_str(&format!("sessionid={session}")).expect("header");
        request.headers_mut().insert("cookie", cookie);
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((client, _)) => Ok(client),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

/// The name the chat shows for this client's messages.
async fn chat_name(client: &mut Client, text: &str) -> String {
    send_text(client, text).await;
    loop {
        let message = next_of_type(client, "chat.message").await;
        if message["text"] == text {
            return message["user"].as_str().expect("user").to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_knows_django_users() {
    let (site, url) = Site::start("db", None);
    let chat = Example::start_with_env("chat", &["--django-sessions", &url], &[("DJANGO_SECRET_KEY", SECRET_KEY)]);
    let ann = site.login("ann", "ann-password").await;

    let mut client = connect_with(&chat, "/ws/chat/lobby/?user=mallory", ann.session()).await.expect("ann connects");
    assert_eq!(chat_name(&mut client, "hello from ann").await, "ann", "the Django username, not ?user=");

    let mut guest = connect_with(&chat, "/ws/chat/lobby/?user=ann", None).await.expect("a guest connects");
    let name = chat_name(&mut guest, "hello from a guest").await;
    assert!(name.starts_with("guest-"), "{name}");

    let mut forged = connect_with(&chat, "/ws/chat/lobby/?user=ann", Some("abcdefgh0123456789abcdefgh012345"))
        .await
        .expect("an unknown session is a guest");
    assert!(chat_name(&mut forged, "forged").await.starts_with("guest-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_required_refuses_guests_and_env_configures_the_store() {
    let (site, url) = Site::start("signed_cookies", None);
    let env = [("DJANGO_SECRET_KEY", SECRET_KEY), ("CHANNELS_DJANGO_SESSIONS", url.as_str())];
    let chat = Example::start_with_env("chat", &["--django-login-required"], &env);
    assert_eq!(connect_with(&chat, "/ws/chat/lobby/", None).await.err(), Some(403));
    let bob = site.login("bob", "bob-password").await;
    let mut client = connect_with(&chat, "/ws/chat/lobby/", bob.session()).await.expect("bob connects");
    assert_eq!(chat_name(&mut client, "hi").await, "bob");
    // The page itself still loads for a visitor who has not logged in.
    let (status, _) = support::http(chat.addr, "GET", "/", "").await;
    assert_eq!(status, 200);
}
