//! Micro-benchmarks (criterion) of the hot paths under the load benchmarks:
//!
//! - `envelope`: a chat event to a layer `Message` (msgpack) and back, and wrapping bytes
//!   that arrive from Redis;
//! - `group_send`: in-memory `group_send` to 1,000 and 10,000 members, including receiving
//!   the message on every member's channel, and a batch of 8 sends to them one by one and in
//!   one `group_send_many`;
//! - `router`: one HTTP request through an application with 20 routes, in-process
//!   (`HttpCommunicator`): routing plus scope, middleware and handler, since the router's own
//!   match (`CompiledRouter::resolve`) is crate-private;
//! - `redis_wire`: the Redis layer's payload for a group send (routing key naming the local
//!   members, then the random-prefix frame), with and without Fernet encryption, and decoding
//!   such a payload on arrival.
//!
//! `cargo bench --bench micro` (about 3 minutes); `cargo bench --bench micro -- group_send`
//! runs one group. Under `cargo test --all-targets` criterion runs each benchmark once.

use std::hint::black_box;
use std::time::Duration;

use channels::http::{HttpRequest, text};
use channels::layers::{ChannelLayer, LayerConfig, Message};
use channels::memory::InMemoryChannelLayer;
use channels::prelude::*;
use channels::redis::crypto::Encryption;
use channels::redis::wire::{self, Routing};
use channels::testing::HttpCommunicator;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};

/// The chat example's layer events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
enum ChatEvent {
    #[serde(rename = "chat.message")]
    Message { user: String, text: String, ts: f64 },
}

fn chat_message() -> ChatEvent {
    ChatEvent::Message {
        user: "alice".into(),
        text: "m 17 42 1764170000123456: a typical short chat line".into(),
        ts: 1_764_170_000.123_456,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn envelope(c: &mut Criterion) {
    let event = chat_message();
    let message = Message::new(&event).expect("a chat event is a map with a type");
    let bytes = message.as_bytes().to_vec();
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode chat.message", |b| b.iter(|| Message::new(black_box(&event))));
    group.bench_function("decode chat.message (typed enum)", |b| b.iter(|| black_box(&message).decode::<ChatEvent>()));
    group.bench_function("decode chat.message (untyped value)", |b| b.iter(|| black_box(&message).to_value()));
    // A fresh message each time: the JSON is rendered once per message and then kept.
    group.bench_function("render chat.message as JSON", |b| {
        b.iter_batched(|| Message::from_msgpack(bytes.clone()).expect("valid"), |m| m.to_json(), BatchSize::SmallInput)
    });
    // The baseline: rendering through a value tree, as `to_json` did before.
    group.bench_function("render chat.message as JSON through rmpv::Value", |b| {
        b.iter_batched(
            || Message::from_msgpack(bytes.clone()).expect("valid"),
            |m| serde_json::to_string(&m.to_value().expect("decodes")),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("from_msgpack (wrap received bytes)", |b| {
        b.iter(|| Message::from_msgpack(black_box(bytes.clone())))
    });
    group.finish();
}

fn group_send(c: &mut Criterion) {
    let runtime = runtime();
    let message = Message::new(&chat_message()).expect("a chat event is a map with a type");
    let mut group = c.benchmark_group("group_send");
    group.sample_size(20);
    for members in [1_000usize, 10_000] {
        let layer = InMemoryChannelLayer::new(LayerConfig::default());
        let channels: Vec<String> = runtime.block_on(async {
            let mut channels = Vec::with_capacity(members);
            for _ in 0..members {
                let channel = layer.new_channel("specific").await.expect("new channel");
                layer.group_add("room", &channel).await.expect("group_add");
                channels.push(channel);
            }
            channels
        });
        group.throughput(Throughput::Elements(members as u64));
        group.bench_with_input(BenchmarkId::new("in-memory, send and receive all", members), &members, |b, _| {
            b.iter(|| {
                runtime.block_on(async {
                    let report = layer.group_send("room", message.clone()).await.expect("group_send");
                    for channel in &channels {
                        black_box(layer.receive(channel).await.expect("receive"));
                    }
                    report
                })
            })
        });
        group.bench_with_input(BenchmarkId::new("in-memory, send only", members), &members, |b, _| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iterations {
                        let start = std::time::Instant::now();
                        black_box(layer.group_send("room", message.clone()).await.expect("group_send"));
                        spent += start.elapsed();
                        for channel in &channels {
                            black_box(layer.receive(channel).await.expect("receive"));
                        }
                    }
                    spent
                })
            })
        });
        // A connection's queued messages to its room go out as one batch.
        let batch: Vec<(String, Message)> = (0..BATCH).map(|_| ("room".to_owned(), message.clone())).collect();
        for (name, many) in [("8 sends one by one", false), ("8 sends in one group_send_many", true)] {
            group.throughput(Throughput::Elements((members * BATCH) as u64));
            group.bench_with_input(BenchmarkId::new(format!("in-memory, {name}"), members), &members, |b, _| {
                b.iter_custom(|iterations| {
                    runtime.block_on(async {
                        let mut spent = Duration::ZERO;
                        for _ in 0..iterations {
                            let start = std::time::Instant::now();
                            if many {
                                black_box(layer.group_send_many(&batch).await);
                            } else {
                                for (group, message) in &batch {
                                    black_box(layer.group_send(group, message.clone()).await.expect("group_send"));
                                }
                            }
                            spent += start.elapsed();
                            for channel in &channels {
                                for _ in 0..BATCH {
                                    black_box(layer.receive(channel).await.expect("receive"));
                                }
                            }
                        }
                        spent
                    })
                })
            });
        }
    }
    group.finish();
}

/// Messages in a batch of queued group sends.
const BATCH: usize = 8;

struct Silent;

impl WebsocketConsumer for Silent {
    type Event = NoEvents;
}

/// A realistic application's routes: 20 of them, HTTP and WebSocket, static and captured.
fn twenty_routes() -> Application {
    let ok = |_: HttpRequest| async { text(http::StatusCode::OK, "ok") };
    let mut router = Router::new();
    for path in [
        "/",
        "/home/",
        "/about/",
        "/login/",
        "/logout/",
        "/static/{*file}",
        "/api/rooms/",
        "/api/rooms/{room}/",
        "/api/rooms/{room}/messages/",
        "/api/rooms/{room}/messages/{id}/",
        "/api/users/",
        "/api/users/{user}/",
        "/api/users/{user}/avatar/",
        "/chat/{room}/messages",
        "/chat/{room}/events",
        "/chat/{room}/stream",
        "/health/",
    ] {
        router = router.http(path, ok);
    }
    let router = router
        .websocket("/ws/chat/{room}/", |_: &Scope| Silent)
        .websocket("/ws/notifications/", |_: &Scope| Silent)
        .websocket("/ws/rooms/{room}/presence/", |_: &Scope| Silent);
    Application::builder(router).build()
}

fn router(c: &mut Criterion) {
    let runtime = runtime();
    let app = twenty_routes();
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    for (name, path) in [
        ("static", "/health/"),
        ("two captures", "/api/rooms/lobby/messages/42/"),
        ("catch-all", "/static/css/site.css"),
        ("not found", "/nope/nothing/here/"),
    ] {
        group.bench_function(BenchmarkId::new("HttpCommunicator GET", name), |b| {
            b.iter(|| runtime.block_on(HttpCommunicator::new(&app, "GET", black_box(path)).get_response()))
        });
    }
    group.finish();
}

fn redis_wire(c: &mut Criterion) {
    let message = Message::new(&chat_message()).expect("a chat event is a map with a type");
    // The fan-out over Redis: each of two processes holds 500 members of the room.
    let members: Vec<String> =
        (0..500).map(|i| format!("specific.3f2a9c1e0b7d4e5f8a6b2c1d0e9f8a7b!{i:012x}")).collect();
    let one = Routing::One("specific.3f2a9c1e0b7d4e5f8a6b2c1d0e9f8a7b!00000000002a");
    let many = Routing::Many(members.iter().map(String::as_str).collect());
    let encryption = Encryption::new(&["benchmark-secret".to_owned()]).expect("a key");
    let mut group = c.benchmark_group("redis_wire");
    group.throughput(Throughput::Elements(1));
    group.bench_function("body + frame, direct send (1 channel)", |b| {
        b.iter(|| wire::frame(&wire::body_with_routing(black_box(&message), &one)))
    });
    group.bench_function("body + frame, group send (500 local members)", |b| {
        b.iter(|| wire::frame(&wire::body_with_routing(black_box(&message), &many)))
    });
    group.bench_function("body + Fernet + frame, direct send", |b| {
        b.iter(|| wire::frame(&encryption.encrypt(&wire::body_with_routing(black_box(&message), &one))))
    });
    group.bench_function("body + Fernet + frame, group send (500 local members)", |b| {
        b.iter(|| wire::frame(&encryption.encrypt(&wire::body_with_routing(black_box(&message), &many))))
    });
    let framed_one = wire::frame(&wire::body_with_routing(&message, &one));
    let framed_many = wire::frame(&wire::body_with_routing(&message, &many));
    group.bench_function("unframe + decode, direct send", |b| {
        b.iter(|| wire::decode_body(wire::unframe(black_box(&framed_one)).expect("framed")))
    });
    group.bench_function("unframe + decode, group send (500 local members)", |b| {
        b.iter(|| wire::decode_body(wire::unframe(black_box(&framed_many)).expect("framed")))
    });
    // What the receiving process does for each message of a run after the first: the next
    // message of the same batch names the same members, compared as bytes, not read again.
    let (_, first_routing) = wire::split_body(wire::unframe(&framed_many).expect("framed")).expect("splits");
    group.bench_function("unframe + split, group send, members as the message before", |b| {
        b.iter(|| {
            let (message, routing) =
                wire::split_body(wire::unframe(black_box(&framed_many)).expect("framed")).expect("splits");
            (message, routing == first_routing)
        })
    });
    group.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = envelope, group_send, router, redis_wire
}
criterion_main!(micro);
