//! Consumer behaviour through the in-process communicator: no sockets, real frames.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use channels::layers::{ChannelLayer, LayerConfig, Message};
use channels::memory::InMemoryChannelLayer;
use channels::middleware::{Middleware, Rejection};
use channels::prelude::*;
use channels::testing::{Connected, WebsocketCommunicator};
use serde::{Deserialize, Serialize};

type Log = Arc<Mutex<Vec<String>>>;

fn log(log: &Log, line: impl Into<String>) {
    log.lock().expect("log").push(line.into());
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
enum Event {
    #[serde(rename = "test.ping")]
    Ping { n: u32 },
    #[serde(rename = "test.fail")]
    Fail,
    #[serde(rename = "test.panic")]
    Panic,
}

/// A consumer whose behaviour is chosen by the query string, recording its hooks.
struct Probe {
    log: Log,
    group: Option<String>,
}

impl WebsocketConsumer for Probe {
    type Event = Event;

    fn groups(&self) -> Vec<String> {
        self.group.iter().cloned().collect()
    }

    async fn connect(&mut self, ctx: &mut WebsocketContext) -> HandlerResult {
        log(&self.log, "connect");
        let mode = ctx.scope().query_param("mode").unwrap_or_default();
        match mode.as_str() {
            "deny" => ctx.deny(),
            "close4003" => ctx.close(4003).await?,
            "silent" => {}
            "error" => return Err("connect blew up".into()),
            "send-early" => {
                let err = ctx.send_text("too early").await.expect_err("sending before accept fails");
                log(&self.log, format!("early: {err}"));
                ctx.accept();
            }
            "welcome" => {
                ctx.accept();
                ctx.send_text("welcome").await?;
            }
            "welcome-bye" => {
                ctx.accept();
                ctx.send_text("welcome").await?;
                ctx.close_with_reason(4000, "bye").await?;
            }
            "subprotocol" => ctx.accept_subprotocol("v2")?,
            "bad-subprotocol" => {
                let err = ctx.accept_subprotocol("v9").expect_err("v9 was not offered");
                log(&self.log, format!("{err}"));
                ctx.accept();
            }
            "headers" => ctx.accept_with(None, vec![("x-test".into(), "1".into())])?,
            _ => ctx.accept(),
        }
        Ok(())
    }

    async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
        match frame {
            Frame::Text(text) => match text.as_str() {
                "room" => ctx.send_text(ctx.scope().param("room").unwrap_or("-").to_owned()).await?,
                "channel" => ctx.send_text(ctx.channel_name().unwrap_or("none").to_owned()).await?,
                "fail" => return Err("receive failed on purpose".into()),
                "panic" => panic!("receive panicked on purpose"),
                "close" => ctx.close(4001).await?,
                "user" => {
                    let user = ctx.scope().extensions().get::<User>().map_or("anonymous".into(), |u| u.0.clone());
                    ctx.send_text(user).await?;
                }
                "join-extra" => {
                    ctx.group_add("extra").await?;
                    ctx.send_text(ctx.groups().join(",")).await?;
                }
                "group-send" => {
                    let report = ctx.group_send("g", &Event::Ping { n: 9 }).await?;
                    ctx.send_text(format!("queued {}", report.queued)).await?;
                }
                other => ctx.send_text(format!("echo {other}")).await?,
            },
            Frame::Binary(data) => ctx.send_binary(data).await?,
        }
        Ok(())
    }

    async fn event(&mut self, ctx: &mut WebsocketContext, event: Event) -> HandlerResult {
        match event {
            Event::Ping { n } => ctx.send_text(format!("ping {n}")).await?,
            Event::Fail => return Err("event failed".into()),
            Event::Panic => panic!("event handler panicked on purpose"),
        }
        Ok(())
    }

    async fn disconnect(&mut self, _ctx: &mut WebsocketContext, code: u16) -> HandlerResult {
        log(&self.log, format!("disconnect {code}"));
        Ok(())
    }
}

#[derive(Clone)]
struct User(String);

struct FakeAuth;

#[channels::async_trait]
impl Middleware for FakeAuth {
    async fn process(&self, scope: &mut Scope) -> Result<(), Rejection> {
        match scope.query_param("token").as_deref() {
            None => Ok(()),
            Some("good") => {
                scope.extensions_mut().insert(User("ann".into()));
                Ok(())
            }
            Some(_) => Err(Rejection::new(channels::middleware::StatusCode::UNAUTHORIZED, "bad token")),
        }
    }
}

struct Fixture {
    app: Application,
    layer: InMemoryChannelLayer,
    log: Log,
}

fn fixture() -> Fixture {
    let log: Log = Arc::default();
    let layer = InMemoryChannelLayer::new(LayerConfig::default());
    let (l1, l2) = (log.clone(), log.clone());
    let router = Router::new().websocket("/ws/", move |_: &Scope| Probe { log: l1.clone(), group: None }).websocket(
        "/ws/rooms/{room}/",
        move |scope: &Scope| Probe {
            log: l2.clone(),
            group: scope.param("room").filter(|r| r.is_ascii()).map(|r| format!("room_{r}")),
        },
    );
    let app = Application::builder(router).layer(Arc::new(layer.clone())).middleware(FakeAuth).build();
    Fixture { app, layer, log }
}

fn logged(fixture: &Fixture) -> Vec<String> {
    fixture.log.lock().expect("log").clone()
}

fn ping(n: u32) -> Message {
    Message::new(&Event::Ping { n }).expect("message")
}

async fn connected(fixture: &Fixture, path: &str) -> WebsocketCommunicator {
    let mut client = WebsocketCommunicator::new(&fixture.app, path);
    assert_eq!(client.connect().await.expect("connect"), Connected::Accepted { subprotocol: None });
    client
}

#[tokio::test]
async fn the_default_connect_accepts() {
    let f = fixture();
    let mut client = connected(&f, "/ws/").await;
    client.send_text("hi").await.expect("send");
    assert_eq!(client.receive_text().await.expect("reply"), "echo hi");
    client.disconnect().await.expect("disconnect");
    assert_eq!(logged(&f), ["connect", "disconnect 1000"]);
}

#[tokio::test]
async fn deny_is_403_and_disconnect_still_runs_once() {
    let f = fixture();
    let mut client = WebsocketCommunicator::new(&f.app, "/ws/?mode=deny");
    assert_eq!(client.connect().await.expect("connect"), Connected::Denied { status: 403, code: 1000 });
    assert_eq!(logged(&f), ["connect", "disconnect 1000"]);
}

#[tokio::test]
async fn close_before_accept_denies_with_that_code() {
    let f = fixture();
    let mut client = WebsocketCommunicator::new(&f.app, "/ws/?mode=close4003");
    assert_eq!(client.connect().await.expect("connect"), Connected::Denied { status: 403, code: 4003 });
}

#[tokio::test]
async fn returning_without_accepting_denies() {
    let f = fixture();
    let mut client = WebsocketCommunicator::new(&f.app, "/ws/?mode=silent");
    assert!(matches!(client.connect().await.expect("connect"), Connected::Denied { status: 403, .. }));
}

#[tokio::test]
async fn a_failing_connect_denies() {
    let f = fixture();
    let mut client = WebsocketCommunicator::new(&f.app, "/ws/?mode=error");
    assert_eq!(client.connect().await.expect("connect"), Connected::Denied { status: 403, code: 1011 });
    assert_eq!(logged(&f), ["connect", "disconnect 1011"]);
}

#[tokio::test]
async fn sending_before_accept_is_an_error_and_frames_sent_in_connect_arrive_after_the_upgrade() {
    let f = fixture();
    let _early = connected(&f, "/ws/?mode=send-early").await;
    assert!(logged(&f).iter().any(|l| l == "early: the connection has not been accepted"), "{:?}", logged(&f));
    let mut client = connected(&f, "/ws/?mode=welcome").await;
    assert_eq!(client.receive_text().await.expect("greeting"), "welcome");
}

#[tokio::test]
async fn close_inside_connect_after_accept_sends_the_frames_then_closes() {
    let f = fixture();
    let mut client = connected(&f, "/ws/?mode=welcome-bye").await;
    assert_eq!(client.receive_text().await.expect("greeting"), "welcome");
    assert_eq!(client.receive_close().await.expect("close"), (4000, "bye".to_string()));
}

#[tokio::test]
async fn a_subprotocol_the_client_offered_is_selected() {
    let f = fixture();
    let mut client = WebsocketCommunicator::new(&f.app, "/ws/?mode=subprotocol").subprotocols(&["v1", "v2"]);
    assert_eq!(client.connect().await.expect("connect"), Connected::Accepted { subprotocol: Some("v2".into()) });
}

#[tokio::test]
async fn a_subprotocol_the_client_did_not_offer_is_refused() {
    let f = fixture();
    let mut client = WebsocketCommunicator::new(&f.app, "/ws/?mode=bad-subprotocol").subprotocols(&["v1"]);
    assert_eq!(client.connect().await.expect("connect"), Connected::Accepted { subprotocol: None });
    assert!(logged(&f).iter().any(|l| l.contains("did not offer subprotocol \"v9\"")), "{:?}", logged(&f));
}

#[tokio::test]
async fn accept_headers_reach_the_client() {
    let f = fixture();
    let client = connected(&f, "/ws/?mode=headers").await;
    assert_eq!(client.response_headers(), [("x-test".to_string(), "1".to_string())]);
}

#[tokio::test]
async fn route_params_are_decoded_into_the_scope() {
    let f = fixture();
    let mut client = connected(&f, "/ws/rooms/caf%C3%A9/").await;
    client.send_text("room").await.expect("send");
    assert_eq!(client.receive_text().await.expect("reply"), "café");
}

#[tokio::test]
async fn a_group_name_that_breaks_the_rules_denies_the_connection() {
    let f = fixture();
    let mut client = WebsocketCommunicator::new(&f.app, "/ws/rooms/has%20space/");
    assert!(matches!(client.connect().await.expect("connect"), Connected::Denied { status: 403, .. }));
}

#[tokio::test]
async fn a_missing_trailing_slash_still_reaches_the_websocket_route() {
    let f = fixture();
    let mut client = connected(&f, "/ws/rooms/lobby").await;
    client.send_text("room").await.expect("send");
    assert_eq!(client.receive_text().await.expect("reply"), "lobby");
}

#[tokio::test]
async fn an_unknown_path_is_denied_with_403() {
    let f = fixture();
    let mut client = WebsocketCommunicator::new(&f.app, "/nowhere/");
    assert!(matches!(client.connect().await.expect("connect"), Connected::Denied { status: 403, .. }));
}

#[tokio::test]
async fn typed_events_are_dispatched_to_members_of_the_consumers_groups() {
    let f = fixture();
    let mut client = connected(&f, "/ws/rooms/lobby/").await;
    f.layer.group_send("room_lobby", ping(7)).await.expect("group_send");
    assert_eq!(client.receive_text().await.expect("event"), "ping 7");
}

#[tokio::test]
async fn an_event_of_unknown_type_is_dropped_and_the_connection_stays_up() {
    let f = fixture();
    let mut client = connected(&f, "/ws/rooms/lobby/").await;
    let unknown = Message::new(&HashMap::from([("type", "no.such.handler")])).expect("message");
    f.layer.group_send("room_lobby", unknown).await.expect("group_send");
    let malformed = Message::new(&HashMap::from([("type", "test.ping"), ("n", "not a number")])).expect("message");
    f.layer.group_send("room_lobby", malformed).await.expect("group_send");
    assert!(client.receive_nothing().await);
    f.layer.group_send("room_lobby", ping(1)).await.expect("group_send");
    assert_eq!(client.receive_text().await.expect("event"), "ping 1");
}

#[tokio::test]
async fn direct_sends_reach_a_consumer_by_channel_name() {
    let f = fixture();
    let mut client = connected(&f, "/ws/").await;
    client.send_text("channel").await.expect("send");
    let channel = client.receive_text().await.expect("channel name");
    assert!(channel.starts_with("specific."), "{channel}");
    f.layer.send(&channel, ping(3)).await.expect("send");
    assert_eq!(client.receive_text().await.expect("event"), "ping 3");
}

#[tokio::test]
async fn a_failing_handler_closes_with_1011_and_disconnect_runs() {
    let f = fixture();
    let mut client = connected(&f, "/ws/").await;
    client.send_text("fail").await.expect("send");
    assert_eq!(client.receive_close().await.expect("close").0, 1011);
    client.wait_closed().await.expect("closed");
    assert_eq!(logged(&f).last().map(String::as_str), Some("disconnect 1011"));
}

#[tokio::test]
async fn a_panicking_handler_closes_with_1011_and_disconnect_runs() {
    let f = fixture();
    let mut client = connected(&f, "/ws/").await;
    client.send_text("panic").await.expect("send");
    assert_eq!(client.receive_close().await.expect("close").0, 1011);
    client.wait_closed().await.expect("closed");
    assert_eq!(logged(&f).last().map(String::as_str), Some("disconnect 1011"));
}

#[tokio::test]
async fn a_failing_event_handler_closes_with_1011() {
    let f = fixture();
    let mut client = connected(&f, "/ws/rooms/x/").await;
    f.layer.group_send("room_x", Message::new(&Event::Fail).expect("message")).await.expect("group_send");
    assert_eq!(client.receive_close().await.expect("close").0, 1011);
}

#[tokio::test]
async fn a_panicking_event_handler_closes_with_1011_after_the_frames_before_it() {
    let f = fixture();
    let mut client = connected(&f, "/ws/rooms/x/").await;
    // Queued before the consumer runs, so they are handled as one burst.
    let panic = Message::new(&Event::Panic).expect("message");
    for message in [ping(1), ping(2), panic, ping(3)] {
        f.layer.group_send("room_x", message).await.expect("group_send");
    }
    assert_eq!(client.receive_text().await.expect("first"), "ping 1");
    assert_eq!(client.receive_text().await.expect("second"), "ping 2");
    assert_eq!(client.receive_close().await.expect("close").0, 1011);
    client.wait_closed().await.expect("closed");
    assert_eq!(logged(&f).last().map(String::as_str), Some("disconnect 1011"));
}

#[tokio::test]
async fn a_server_close_reports_its_code_to_disconnect() {
    let f = fixture();
    let mut client = connected(&f, "/ws/").await;
    client.send_text("close").await.expect("send");
    assert_eq!(client.receive_close().await.expect("close").0, 4001);
    client.disconnect().await.expect("disconnect");
    assert_eq!(logged(&f).last().map(String::as_str), Some("disconnect 4001"));
}

#[tokio::test]
async fn the_clients_close_code_reaches_disconnect_exactly_once() {
    let f = fixture();
    let mut client = connected(&f, "/ws/").await;
    client.disconnect_with(4321).await.expect("disconnect");
    assert_eq!(logged(&f), ["connect", "disconnect 4321"]);
}

#[tokio::test]
async fn a_vanished_client_gets_disconnect_1006() {
    let f = fixture();
    let mut client = connected(&f, "/ws/").await;
    client.drop_connection();
    client.wait_closed().await.expect("closed");
    assert_eq!(logged(&f), ["connect", "disconnect 1006"]);
}

#[tokio::test]
async fn groups_are_left_after_disconnect() {
    let f = fixture();
    let mut client = connected(&f, "/ws/rooms/gone/").await;
    client.disconnect().await.expect("disconnect");
    let report = f.layer.group_send("room_gone", ping(1)).await.expect("group_send");
    assert_eq!(report.queued, 0);
    assert_eq!(f.layer.stats().channels, 0, "the channel was forgotten");
}

#[tokio::test]
async fn binary_frames_round_trip() {
    let f = fixture();
    let mut client = connected(&f, "/ws/").await;
    let all_bytes: Vec<u8> = (0..=255).collect();
    client.send_binary(all_bytes.clone()).await.expect("send");
    assert_eq!(client.receive_binary().await.expect("reply"), all_bytes);
}

#[tokio::test]
async fn middleware_extensions_reach_the_consumer_and_rejections_refuse() {
    let f = fixture();
    let mut client = connected(&f, "/ws/?token=good").await;
    client.send_text("user").await.expect("send");
    assert_eq!(client.receive_text().await.expect("reply"), "ann");
    let mut refused = WebsocketCommunicator::new(&f.app, "/ws/?token=bad");
    assert!(matches!(refused.connect().await.expect("connect"), Connected::Denied { status: 401, .. }));
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let f = fixture();
    let mut client = connected(&f, "/ws/").await;
    client.send_raw_text_frame(vec![b'o', b'k', 0xc3]).await.expect("send");
    assert_eq!(client.receive_close().await.expect("close").0, 1007);
    client.wait_closed().await.expect("closed");
    assert_eq!(logged(&f).last().map(String::as_str), Some("disconnect 1007"));
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let f = fixture();
    let mut client = connected(&f, "/ws/").await;
    let _ = client.send_binary(vec![0u8; (1 << 20) + 1]).await;
    assert_eq!(client.receive_close().await.expect("close").0, 1009);
}

#[tokio::test]
async fn without_a_layer_there_is_no_channel_and_group_operations_fail_clearly() {
    let log: Log = Arc::default();
    let l = log.clone();
    let app =
        Application::builder(Router::new().websocket("/ws/", move |_: &Scope| Probe { log: l.clone(), group: None }))
            .build();
    let mut client = WebsocketCommunicator::new(&app, "/ws/");
    client.connect().await.expect("connect");
    client.send_text("channel").await.expect("send");
    assert_eq!(client.receive_text().await.expect("reply"), "none");
    client.send_text("group-send").await.expect("send");
    assert_eq!(client.receive_close().await.expect("close").0, 1011);
}

mod json {
    use super::*;

    #[derive(Deserialize)]
    struct Inbound {
        message: String,
    }

    struct Shouter;

    impl JsonWebsocketConsumer for Shouter {
        type Inbound = Inbound;
        type Event = NoEvents;

        async fn receive_json(&mut self, ctx: &mut WebsocketContext, inbound: Inbound) -> HandlerResult {
            ctx.send_json(&serde_json::json!({ "shout": inbound.message.to_uppercase() })).await?;
            Ok(())
        }
    }

    fn app() -> Application {
        Application::builder(Router::new().websocket("/ws/", |_: &Scope| Shouter)).build()
    }

    #[tokio::test]
    async fn valid_json_is_decoded_into_the_inbound_type() {
        let app = app();
        let mut client = WebsocketCommunicator::new(&app, "/ws/");
        client.connect().await.expect("connect");
        client.send_json(&serde_json::json!({ "message": "hi" })).await.expect("send");
        let reply: serde_json::Value = client.receive_json().await.expect("reply");
        assert_eq!(reply["shout"], "HI");
    }

    #[tokio::test]
    async fn malformed_json_closes_with_1007() {
        for bad in ["{not json", "{\"other\": 1}", "[1,2]"] {
            let app = app();
            let mut client = WebsocketCommunicator::new(&app, "/ws/");
            client.connect().await.expect("connect");
            client.send_text(bad).await.expect("send");
            assert_eq!(client.receive_close().await.expect("close").0, 1007, "{bad:?}");
        }
    }

    /// An empty text frame is a client's heartbeat (browsers cannot ping): the server answers
    /// it with an empty text frame, and the consumer never sees it (this one would close 1007).
    #[tokio::test]
    async fn an_empty_text_frame_is_answered_by_the_server_and_not_seen_by_the_consumer() {
        let app = app();
        let mut client = WebsocketCommunicator::new(&app, "/ws/");
        client.connect().await.expect("connect");
        client.send_text("").await.expect("send");
        assert_eq!(client.receive_text().await.expect("the answer"), "");
        client.send_json(&serde_json::json!({ "message": "still open" })).await.expect("send");
        let reply: serde_json::Value = client.receive_json().await.expect("reply");
        assert_eq!(reply["shout"], "STILL OPEN");
    }

    #[tokio::test]
    async fn a_binary_frame_closes_with_1003() {
        let app = app();
        let mut client = WebsocketCommunicator::new(&app, "/ws/");
        client.connect().await.expect("connect");
        client.send_binary(vec![1, 2, 3]).await.expect("send");
        assert_eq!(client.receive_close().await.expect("close").0, 1003);
    }
}

#[tokio::test]
async fn a_long_lived_connection_keeps_its_groups_past_group_expiry() {
    let log: Log = Arc::default();
    let layer = InMemoryChannelLayer::new(LayerConfig::default().group_expiry(std::time::Duration::from_secs(1)));
    let l = log.clone();
    let router = Router::new()
        .websocket("/ws/rooms/{room}/", move |_: &Scope| Probe { log: l.clone(), group: Some("room_long".into()) });
    let app = Application::builder(router)
        .layer(Arc::new(layer.clone()))
        .websocket_limits(WebsocketLimits::default().ping_interval(std::time::Duration::from_millis(100)))
        .build();
    let mut client = WebsocketCommunicator::new(&app, "/ws/rooms/long/");
    client.connect().await.expect("connect");
    for _ in 0..25 {
        // Keep reading so the pings are answered.
        assert!(client.receive_nothing_within(std::time::Duration::from_millis(100)).await);
    }
    let report = layer.group_send("room_long", ping(5)).await.expect("group_send");
    assert_eq!(report.queued, 1, "still a member after 2.5 s with a 1 s group_expiry");
    assert_eq!(client.receive_text().await.expect("event"), "ping 5");
}

#[tokio::test]
async fn groups_joined_in_handlers_are_left_when_the_connection_ends() {
    let f = fixture();
    let mut client = connected(&f, "/ws/rooms/lobby/").await;
    client.send_text("join-extra").await.expect("send");
    assert_eq!(client.receive_text().await.expect("groups"), "room_lobby,extra");
    client.disconnect().await.expect("disconnect");
    assert_eq!(f.layer.group_send("extra", ping(1)).await.expect("group_send").queued, 0);
    assert_eq!(f.layer.stats().groups, 0);
}

/// Forwards `room.*` messages as they are and decodes the rest.
struct Relay;

#[derive(Deserialize)]
#[serde(tag = "type", rename = "typed.ping")]
struct TypedPing {
    n: u32,
}

impl WebsocketConsumer for Relay {
    type Event = TypedPing;

    fn groups(&self) -> Vec<String> {
        vec!["relay".into()]
    }

    async fn message(&mut self, ctx: &mut WebsocketContext, message: Message) -> HandlerResult {
        if message.message_type().starts_with("room.") {
            ctx.send_message_json(&message).await?;
            Ok(())
        } else {
            decode_and_dispatch(self, ctx, message).await
        }
    }

    async fn event(&mut self, ctx: &mut WebsocketContext, event: TypedPing) -> HandlerResult {
        ctx.send_text(format!("typed {}", event.n)).await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_forwarded_group_message_is_rendered_once_and_the_rest_take_the_typed_path() {
    let layer = InMemoryChannelLayer::new(LayerConfig::default());
    let app = Application::builder(Router::new().websocket("/relay/", |_: &Scope| Relay))
        .layer(Arc::new(layer.clone()) as Arc<dyn ChannelLayer>)
        .build();
    let mut a = WebsocketCommunicator::new(&app, "/relay/");
    let mut b = WebsocketCommunicator::new(&app, "/relay/");
    assert!(matches!(a.connect().await.expect("a"), Connected::Accepted { .. }));
    assert!(matches!(b.connect().await.expect("b"), Connected::Accepted { .. }));

    let message = Message::new(&serde_json::json!({"type": "room.note", "text": "<b>hi</b>", "n": 1.5})).unwrap();
    layer.group_send("relay", message.clone()).await.unwrap();
    let expected = r#"{"n":1.5,"text":"<b>hi</b>","type":"room.note"}"#;
    assert_eq!(a.receive_text().await.unwrap(), expected);
    assert_eq!(b.receive_text().await.unwrap(), expected);
    assert_eq!(
        message.to_json().unwrap().as_str().as_ptr(),
        Message::clone(&message).to_json().unwrap().as_str().as_ptr(),
        "every member's copy shares one rendering"
    );

    layer.group_send("relay", Message::new(&serde_json::json!({"type": "typed.ping", "n": 7})).unwrap()).await.unwrap();
    assert_eq!(a.receive_text().await.unwrap(), "typed 7");
    layer.group_send("relay", Message::new(&serde_json::json!({"type": "other.thing"})).unwrap()).await.unwrap();
    assert!(a.receive_nothing().await, "an unhandled type is dropped, not forwarded");
    a.disconnect().await.unwrap();
    b.disconnect().await.unwrap();
}

/// Queues its messages with `group_send_nowait`; `sync:` waits for them with an awaited send.
struct Caster;

#[derive(Serialize)]
#[serde(tag = "type", rename = "room.cast")]
struct Cast<'a> {
    text: &'a str,
}

impl WebsocketConsumer for Caster {
    type Event = NoEvents;

    async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
        let text = frame.as_text().unwrap_or_default();
        match text.strip_prefix("sync:") {
            Some(text) => {
                ctx.group_send("relay", &Cast { text }).await?;
            }
            None if text == "close" => {
                ctx.group_send_nowait("relay", &Cast { text: "last words" })?;
                ctx.close(1000).await?;
            }
            None => ctx.group_send_nowait("relay", &Cast { text })?,
        }
        Ok(())
    }

    async fn group_send_failed(
        &mut self,
        ctx: &mut WebsocketContext,
        group: &str,
        error: ContextError,
    ) -> HandlerResult {
        ctx.send_text(format!("not sent to {group}: {error}")).await?;
        Ok(())
    }
}

fn caster_app(layer: Arc<dyn ChannelLayer>) -> Application {
    Application::builder(Router::new().websocket("/cast/", |_: &Scope| Caster).websocket("/relay/", |_: &Scope| Relay))
        .layer(layer)
        .build()
}

#[tokio::test]
async fn queued_group_sends_keep_their_order_with_awaited_ones_and_survive_a_close() {
    let app = caster_app(Arc::new(InMemoryChannelLayer::new(LayerConfig::default())));
    let mut listener = WebsocketCommunicator::new(&app, "/relay/");
    assert!(matches!(listener.connect().await.expect("listener"), Connected::Accepted { .. }));
    let mut caster = WebsocketCommunicator::new(&app, "/cast/");
    assert!(matches!(caster.connect().await.expect("caster"), Connected::Accepted { .. }));

    let said = ["1", "2", "sync:3", "4", "sync:5", "6", "7"];
    for text in said {
        caster.send_text(text).await.expect("send");
    }
    caster.send_text("close").await.expect("send close");
    let mut heard = Vec::new();
    for _ in 0..said.len() + 1 {
        let json: serde_json::Value = serde_json::from_str(&listener.receive_text().await.expect("cast")).unwrap();
        heard.push(json["text"].as_str().unwrap().to_owned());
    }
    assert_eq!(heard, ["1", "2", "3", "4", "5", "6", "7", "last words"], "one order for queued and awaited sends");
    assert!(listener.receive_nothing().await);
    listener.disconnect().await.unwrap();
}

#[tokio::test]
async fn a_queued_group_send_that_fails_reaches_the_hook_and_the_connection_stays() {
    // A real Redis layer pointed at a port nobody listens on: every send fails for real.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let layer = channels::redis::RedisChannelLayer::from_url(&format!("redis://127.0.0.1:{port}/0")).unwrap();
    let app = caster_app(Arc::new(layer));
    let mut caster = WebsocketCommunicator::new(&app, "/cast/");
    assert!(matches!(caster.connect().await.expect("caster"), Connected::Accepted { .. }));
    caster.send_text("hello").await.expect("send");
    let reply = caster.receive_text().await.expect("the hook's reply");
    assert!(reply.starts_with("not sent to relay: channel layer backend error"), "{reply}");
    caster.send_text("again").await.expect("the connection is still open");
    assert!(caster.receive_text().await.expect("reply").starts_with("not sent to relay"));
    caster.disconnect().await.unwrap();
}

#[tokio::test]
async fn group_send_nowait_refuses_bad_names_and_missing_layers_at_once() {
    struct Checker;
    impl WebsocketConsumer for Checker {
        type Event = NoEvents;
        async fn receive(&mut self, ctx: &mut WebsocketContext, _frame: Frame) -> HandlerResult {
            let bad = ctx.group_send_nowait("has space", &Cast { text: "x" }).expect_err("bad name");
            ctx.send_text(bad.to_string()).await?;
            Ok(())
        }
    }
    let app = Application::builder(Router::new().websocket("/check/", |_: &Scope| Checker))
        .layer(Arc::new(InMemoryChannelLayer::new(LayerConfig::default())) as Arc<dyn ChannelLayer>)
        .build();
    let mut client = WebsocketCommunicator::new(&app, "/check/");
    assert!(matches!(client.connect().await.expect("connect"), Connected::Accepted { .. }));
    client.send_text("go").await.unwrap();
    assert!(client.receive_text().await.unwrap().contains("has space"));
    client.disconnect().await.unwrap();

    let app = Application::builder(Router::new().websocket("/check/", |_: &Scope| Caster)).build();
    let mut client = WebsocketCommunicator::new(&app, "/check/");
    assert!(matches!(client.connect().await.expect("connect"), Connected::Accepted { .. }));
    client.send_text("x").await.unwrap();
    assert_eq!(client.receive_close().await.expect("closed").0, 1011, "no layer: the handler's error closes with 1011");
}

/// An in-memory layer whose group sends wait until [`HeldSends::release`], and which echoes a
/// sender's group sends (`group_send_echo`) while `echo` is set. An echoed send reaches nobody
/// else: the echo test's group holds only the sender. It asks connections to wait `linger`
/// between batches, and records when each batch started and how many sends it held.
struct HeldSends {
    inner: InMemoryChannelLayer,
    released: tokio::sync::watch::Sender<bool>,
    echo: std::sync::atomic::AtomicBool,
    linger: std::time::Duration,
    batches: Mutex<Vec<(tokio::time::Instant, usize)>>,
}

impl HeldSends {
    fn new(inner: InMemoryChannelLayer) -> Self {
        Self {
            inner,
            released: tokio::sync::watch::Sender::new(false),
            echo: false.into(),
            linger: std::time::Duration::ZERO,
            batches: Mutex::default(),
        }
    }

    fn release(&self) {
        self.released.send_replace(true);
    }

    fn set_echo(&self, echo: bool) {
        self.echo.store(echo, std::sync::atomic::Ordering::SeqCst);
    }
}

#[channels::async_trait]
impl ChannelLayer for HeldSends {
    async fn new_channel(&self, prefix: &str) -> Result<String, channels::layers::NewChannelError> {
        self.inner.new_channel(prefix).await
    }
    async fn send(&self, channel: &str, message: Message) -> Result<(), channels::layers::SendError> {
        self.inner.send(channel, message).await
    }
    async fn receive(&self, channel: &str) -> Result<Message, channels::layers::ReceiveError> {
        self.inner.receive(channel).await
    }
    async fn group_add(&self, group: &str, channel: &str) -> Result<(), channels::layers::GroupError> {
        self.inner.group_add(group, channel).await
    }
    async fn group_discard(&self, group: &str, channel: &str) -> Result<(), channels::layers::GroupError> {
        self.inner.group_discard(group, channel).await
    }
    async fn group_send(
        &self,
        group: &str,
        message: Message,
    ) -> Result<channels::layers::GroupSendReport, channels::layers::GroupError> {
        let _ = self.released.subscribe().wait_for(|released| *released).await;
        self.inner.group_send(group, message).await
    }
    fn group_send_echo(&self, _group: &str, channel: &str, message: &Message) -> bool {
        use futures_util::FutureExt;
        self.echo.load(std::sync::atomic::Ordering::SeqCst)
            && matches!(self.inner.send(channel, message.clone()).now_or_never(), Some(Ok(())))
    }
    async fn group_send_many(
        &self,
        sends: &[(String, Message)],
    ) -> Vec<Result<channels::layers::GroupSendReport, channels::layers::GroupError>> {
        self.group_send_many_echoed(sends, "", 0).await
    }
    async fn group_send_many_echoed(
        &self,
        sends: &[(String, Message)],
        _channel: &str,
        echoed: usize,
    ) -> Vec<Result<channels::layers::GroupSendReport, channels::layers::GroupError>> {
        self.batches.lock().expect("batches").push((tokio::time::Instant::now(), sends.len()));
        let _ = self.released.subscribe().wait_for(|released| *released).await;
        let mut reports = Vec::new();
        for (i, (group, message)) in sends.iter().enumerate() {
            reports.push(match i < echoed {
                true => Ok(channels::layers::GroupSendReport::default()),
                false => self.inner.group_send(group, message.clone()).await,
            });
        }
        reports
    }
    async fn flush(&self) -> Result<(), channels::layers::FlushError> {
        self.inner.flush().await
    }
    fn batch_linger(&self) -> std::time::Duration {
        self.linger
    }
    fn config(&self) -> &LayerConfig {
        self.inner.config()
    }
}

#[tokio::test]
async fn a_batch_right_after_the_connections_previous_one_waits_the_linger_and_takes_what_came_meanwhile() {
    use std::time::Duration;
    let linger = Duration::from_millis(300);
    let mut layer = HeldSends::new(InMemoryChannelLayer::new(LayerConfig::default()));
    layer.linger = linger;
    layer.release();
    let layer = Arc::new(layer);
    let app = caster_app(layer.clone());
    let mut listener = WebsocketCommunicator::new(&app, "/relay/");
    assert!(matches!(listener.connect().await.expect("listener"), Connected::Accepted { .. }));
    let mut casters = Vec::new();
    for _ in 0..2 {
        let mut caster = WebsocketCommunicator::new(&app, "/cast/");
        assert!(matches!(caster.connect().await.expect("caster"), Connected::Accepted { .. }));
        casters.push(caster);
    }
    let heard =
        |text: String| serde_json::from_str::<serde_json::Value>(&text).unwrap()["text"].as_str().unwrap().to_owned();
    let mut hear = async |expected: &str| {
        let text = tokio::time::timeout(Duration::from_secs(5), listener.receive_text()).await.expect("cast").unwrap();
        assert_eq!(heard(text), expected);
        tokio::time::Instant::now()
    };

    let started = tokio::time::Instant::now();
    casters[0].send_text("1").await.unwrap();
    assert!(hear("1").await - started < linger, "a first batch goes at once");
    // Right after it: the next batch waits, and takes both.
    casters[0].send_text("2").await.unwrap();
    casters[0].send_text("3").await.unwrap();
    // Another connection's batches do not make this one wait.
    let started = tokio::time::Instant::now();
    casters[1].send_text("other").await.unwrap();
    assert!(hear("other").await - started < linger, "the linger is per connection");
    hear("2").await;
    hear("3").await;
    tokio::time::sleep(linger + Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    casters[0].send_text("4").await.unwrap();
    assert!(hear("4").await - started < linger, "after a pause: at once");
    // A closing connection sends what it queued at once.
    casters[0].send_text("5").await.unwrap();
    let started = tokio::time::Instant::now();
    casters[0].disconnect().await.unwrap();
    assert!(hear("5").await - started < linger, "a closing connection does not wait");

    let batches = layer.batches.lock().expect("batches").clone();
    let sizes: Vec<usize> = batches.iter().map(|&(_, n)| n).collect();
    assert_eq!(sizes, [1, 1, 2, 1, 1], "batches: 1, other, 2+3, 4, 5");
    assert!(batches[2].0 - batches[0].0 >= linger, "2+3 waited the linger after 1: {batches:?}");
    casters[1].disconnect().await.unwrap();
    listener.disconnect().await.unwrap();
}

#[tokio::test]
async fn a_client_read_paused_by_a_full_outbox_is_read_again_once_it_drains() {
    let layer = Arc::new(HeldSends::new(InMemoryChannelLayer::new(LayerConfig::default().capacity(1000))));
    let app = caster_app(layer.clone());
    let mut listener = WebsocketCommunicator::new(&app, "/relay/");
    assert!(matches!(listener.connect().await.expect("listener"), Connected::Accepted { .. }));
    let mut caster = WebsocketCommunicator::new(&app, "/cast/");
    assert!(matches!(caster.connect().await.expect("caster"), Connected::Accepted { .. }));

    // More queued sends than the outbox holds: the server stops reading the client.
    let count = 400;
    for n in 0..count {
        caster.send_text(&n.to_string()).await.expect("send");
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(listener.receive_nothing().await, "nothing is sent while the layer holds the sends");
    layer.release();
    for n in 0..count {
        let text = tokio::time::timeout(std::time::Duration::from_secs(5), listener.receive_text())
            .await
            .unwrap_or_else(|_| panic!("cast {n} never came: the client was not read again"))
            .expect("cast");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["text"], n.to_string());
    }
    caster.disconnect().await.unwrap();
    listener.disconnect().await.unwrap();
}

/// In the group "self" alone; casts what its client says there and forwards what comes back.
struct SelfCaster;

impl WebsocketConsumer for SelfCaster {
    type Event = NoEvents;

    fn groups(&self) -> Vec<String> {
        vec!["self".into()]
    }

    async fn receive(&mut self, ctx: &mut WebsocketContext, frame: Frame) -> HandlerResult {
        ctx.group_send_nowait("self", &Cast { text: frame.as_text().unwrap_or_default() })?;
        Ok(())
    }

    async fn message(&mut self, ctx: &mut WebsocketContext, message: Message) -> HandlerResult {
        ctx.send_message_json(&message).await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_send_is_not_echoed_ahead_of_an_earlier_one_that_was_not() {
    let heard =
        |text: String| serde_json::from_str::<serde_json::Value>(&text).unwrap()["text"].as_str().unwrap().to_owned();
    // The send that could not be echoed is in flight, or still queued behind an echoed one.
    for queued in [false, true] {
        let layer = Arc::new(HeldSends::new(InMemoryChannelLayer::new(LayerConfig::default())));
        let app = Application::builder(Router::new().websocket("/self/", |_: &Scope| SelfCaster))
            .layer(layer.clone())
            .build();
        let mut client = WebsocketCommunicator::new(&app, "/self/");
        assert!(matches!(client.connect().await.expect("connect"), Connected::Accepted { .. }));
        if queued {
            // Echoed: the copy comes back while its group send is held in flight.
            layer.set_echo(true);
            client.send_text("0").await.unwrap();
            assert_eq!(heard(client.receive_text().await.expect("echo")), "0");
        }
        // "1" cannot be echoed; "2" could be, but must not overtake it.
        layer.set_echo(false);
        client.send_text("1").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        layer.set_echo(true);
        client.send_text("2").await.unwrap();
        assert!(client.receive_nothing().await, "nothing overtakes the held send (queued: {queued})");
        layer.release();
        for text in ["1", "2"] {
            assert_eq!(heard(client.receive_text().await.expect("cast")), text, "queued: {queued}");
        }
        assert!(client.receive_nothing().await, "each once");
        client.disconnect().await.unwrap();
    }
}

/// Joins the group `room`; `connect` accepts.
struct Member;

impl WebsocketConsumer for Member {
    type Event = NoEvents;

    fn groups(&self) -> Vec<String> {
        vec!["room".into()]
    }
}

fn member_app(layer: Arc<dyn ChannelLayer>, limits: WebsocketLimits) -> Application {
    Application::builder(Router::new().websocket("/member/", |_: &Scope| Member))
        .layer(layer)
        .websocket_limits(limits)
        .build()
}

#[tokio::test]
async fn a_group_that_cannot_be_joined_in_a_layer_outage_refuses_with_503() {
    // A real Redis layer pointed at a port nobody listens on: the join fails for real.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let layer = channels::redis::RedisChannelLayer::from_url(&format!("redis://127.0.0.1:{port}/0")).unwrap();
    let app = member_app(Arc::new(layer), WebsocketLimits::default());
    let mut client = WebsocketCommunicator::new(&app, "/member/").timeout(std::time::Duration::from_secs(10));
    assert_eq!(client.connect().await.expect("connect"), Connected::Denied { status: 503, code: 1011 });
}

/// An in-memory layer whose `new_channel` or `group_add` takes `delay`: a slow backend.
struct SlowLayer {
    inner: InMemoryChannelLayer,
    slow_new_channel: bool,
    delay: std::time::Duration,
}

#[channels::async_trait]
impl ChannelLayer for SlowLayer {
    async fn new_channel(&self, prefix: &str) -> Result<String, channels::layers::NewChannelError> {
        if self.slow_new_channel {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.new_channel(prefix).await
    }
    async fn send(&self, channel: &str, message: Message) -> Result<(), channels::layers::SendError> {
        self.inner.send(channel, message).await
    }
    async fn receive(&self, channel: &str) -> Result<Message, channels::layers::ReceiveError> {
        self.inner.receive(channel).await
    }
    async fn group_add(&self, group: &str, channel: &str) -> Result<(), channels::layers::GroupError> {
        if !self.slow_new_channel {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.group_add(group, channel).await
    }
    async fn group_discard(&self, group: &str, channel: &str) -> Result<(), channels::layers::GroupError> {
        self.inner.group_discard(group, channel).await
    }
    async fn group_send(
        &self,
        group: &str,
        message: Message,
    ) -> Result<channels::layers::GroupSendReport, channels::layers::GroupError> {
        self.inner.group_send(group, message).await
    }
    async fn flush(&self) -> Result<(), channels::layers::FlushError> {
        self.inner.flush().await
    }
    fn config(&self) -> &LayerConfig {
        self.inner.config()
    }
}

#[tokio::test]
async fn a_slow_layer_cannot_hold_the_handshake_past_connect_timeout() {
    for slow_new_channel in [true, false] {
        let inner = InMemoryChannelLayer::new(LayerConfig::default());
        let layer = SlowLayer { inner, slow_new_channel, delay: std::time::Duration::from_secs(30) };
        let limits = WebsocketLimits::default().connect_timeout(std::time::Duration::from_millis(200));
        let app = member_app(Arc::new(layer), limits);
        let mut client = WebsocketCommunicator::new(&app, "/member/").timeout(std::time::Duration::from_secs(2));
        let started = std::time::Instant::now();
        let outcome = client.connect().await;
        assert!(
            matches!(outcome, Ok(Connected::Denied { status: 503, .. })),
            "slow new_channel: {slow_new_channel}: {outcome:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "refused in {:?}", started.elapsed());
    }
}

/// Asks, after the handshake, to accept again, and says what happened.
struct LateAcceptor;

impl WebsocketConsumer for LateAcceptor {
    type Event = NoEvents;

    async fn receive(&mut self, ctx: &mut WebsocketContext, _frame: Frame) -> HandlerResult {
        match ctx.accept_with(None, Vec::new()) {
            Ok(()) => ctx.send_text("accepted").await?,
            Err(e) => ctx.send_text(format!("refused: {e}")).await?,
        }
        Ok(())
    }
}

#[tokio::test]
async fn accept_outside_connect_is_an_error() {
    let app = Application::builder(Router::new().websocket("/late/", |_: &Scope| LateAcceptor)).build();
    let mut client = WebsocketCommunicator::new(&app, "/late/");
    assert!(matches!(client.connect().await.expect("connect"), Connected::Accepted { .. }));
    client.send_text("accept again").await.expect("send");
    let reply = client.receive_text().await.expect("reply");
    assert!(reply.starts_with("refused: ") && reply.contains("connect"), "{reply}");
    client.disconnect().await.expect("disconnect");
}

/// On any frame, fills the client's pipe exactly with one frame (the client does not read),
/// then closes: the close frame cannot be sent.
struct Stuffer {
    disconnects: Arc<Mutex<Vec<u16>>>,
}

/// The communicator's pipe holds 64 KiB each way; a binary frame of this payload has a 4-byte
/// header.
const PIPE_FILLING_PAYLOAD: usize = 64 * 1024 - 4;

impl WebsocketConsumer for Stuffer {
    type Event = NoEvents;

    async fn receive(&mut self, ctx: &mut WebsocketContext, _frame: Frame) -> HandlerResult {
        ctx.send_binary(vec![b'x'; PIPE_FILLING_PAYLOAD]).await?;
        let _ = ctx.close(4001).await;
        Ok(())
    }

    async fn disconnect(&mut self, _ctx: &mut WebsocketContext, code: u16) -> HandlerResult {
        self.disconnects.lock().expect("disconnects").push(code);
        Ok(())
    }
}

#[tokio::test]
async fn a_close_frame_that_cannot_be_sent_ends_the_connection_at_once() {
    let disconnects: Arc<Mutex<Vec<u16>>> = Arc::default();
    let d = disconnects.clone();
    let limits = WebsocketLimits::default()
        .send_timeout(std::time::Duration::from_millis(100))
        .close_timeout(std::time::Duration::from_secs(30));
    let app =
        Application::builder(Router::new().websocket("/stuff/", move |_: &Scope| Stuffer { disconnects: d.clone() }))
            .websocket_limits(limits)
            .build();
    let mut client = WebsocketCommunicator::new(&app, "/stuff/").timeout(std::time::Duration::from_secs(2));
    assert!(matches!(client.connect().await.expect("connect"), Connected::Accepted { .. }));
    client.send_text("stuff").await.expect("send");
    // The client never reads: the close frame waits behind the full pipe until the send timeout.
    client.wait_closed().await.expect("the connection ends without waiting for close_timeout");
    assert_eq!(*disconnects.lock().expect("disconnects"), [1006], "the close handshake did not happen");
}

#[tokio::test]
async fn unreachable_layers_names_each_alias_with_a_host_that_does_not_answer() {
    let redis = channels::redis::testing::RedisServer::start();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let live = redis.url();
    let live = live.trim_start_matches("redis://");
    let layer = |url: String| channels::layers::from_url(&url).expect("a valid layer URL");
    let layers = channels::layers::ChannelLayers::new()
        .with_default(layer(format!("redis://{live}/0")))
        .with_alias("memory", layer("memory://".into()))
        .with_alias("pubsub", layer(format!("redis+pubsub://{live}/0")))
        .with_alias("sharded", layer(format!("redis://{live},127.0.0.1:{dead}/0")))
        .with_alias("pubsub-down", layer(format!("redis+pubsub://127.0.0.1:{dead}/0")));
    let app = Application::builder(Router::new()).layers(layers).build();
    let mut unreachable = app.unreachable_layers().await;
    unreachable.sort_by(|a, b| a.0.cmp(&b.0));
    let aliases: Vec<&str> = unreachable.iter().map(|(alias, _)| alias.as_str()).collect();
    assert_eq!(aliases, ["pubsub-down", "sharded"]);
    for (alias, error) in &unreachable {
        assert!(error.to_string().contains(&format!("127.0.0.1:{dead}")), "{alias}: {error}");
    }
}

#[tokio::test]
async fn groups_without_a_layer_deny_with_403_not_503() {
    let app = Application::builder(Router::new().websocket("/member/", |_: &Scope| Member)).build();
    let mut client = WebsocketCommunicator::new(&app, "/member/");
    assert_eq!(client.connect().await.expect("connect"), Connected::Denied { status: 403, code: 1011 });
}
