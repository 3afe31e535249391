// Unit tests of channels.js under Node's own test runner: `node --test tests/js/`.
// The WebSocket, fetch and server-sent-event stream are small fakes driven by each test; the
// timers are Node's mocked ones, so backoff and heartbeat run without waiting.

import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";

import {
  Channel,
  DEFAULTS,
  backoffDelay,
  epochOffset,
  isUnrecovered,
} from "../../channels-core/src/client/channels.js";

// ---------- fakes ----------

class FakeWebSocket {
  static instances = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeWebSocket.instances.push(this);
  }
  send(text) {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(text);
  }
  close(code, reason) {
    if (this.readyState === 3) return;
    this.closedWith = { code, reason };
    this.readyState = 3;
  }
  // Driven by the test (the server's side):
  open() {
    this.readyState = 1;
    this.onopen && this.onopen({});
  }
  receive(data) {
    this.onmessage && this.onmessage({ data: typeof data === "string" ? data : JSON.stringify(data) });
  }
  serverClose(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose && this.onclose({ code, reason });
  }
  failToOpen() {
    this.readyState = 3;
    this.onerror && this.onerror({});
    this.onclose && this.onclose({ code: 1006, reason: "" });
  }
}

function latestSocket() {
  return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
}

/** A server-sent events response the test writes to. */
function sseResponse(signal) {
  let controller;
  const body = new ReadableStream({
    start(c) {
      controller = c;
    },
  });
  if (signal) {
    signal.addEventListener("abort", () => {
      try {
        controller.error(new Error("aborted"));
      } catch (_) {
        /* closed */
      }
    });
  }
  const encoder = new TextEncoder();
  return {
    response: { ok: true, status: 200, body, text: async () => "" },
    write(text) {
      controller.enqueue(encoder.encode(text));
    },
    end() {
      controller.close();
    },
  };
}

function jsonResponse(status, value) {
  return {
    ok: status >= 200 && status < 300,
    status,
    body: null,
    json: async () => value,
    text: async () => JSON.stringify(value),
  };
}

/** A fetch whose answers the test gives by URL path: `routes[path](url, init)`. */
function fakeFetch(routes) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    const u = new URL(url);
    calls.push({ url: u, init });
    const route = routes[u.pathname];
    if (!route) throw new TypeError("fetch failed");
    return route(u, init);
  };
  return { fetch, calls };
}

/** Lets pending promise callbacks run. */
async function settle(rounds = 5) {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve));
}

function record(channel, types) {
  const seen = [];
  for (const type of types) channel.on(type, (detail) => seen.push([type, detail]));
  return seen;
}

const BASE = "http://chat.test";

beforeEach(() => {
  FakeWebSocket.instances = [];
  mock.timers.enable({ apis: ["setTimeout"] });
});

afterEach(() => {
  mock.timers.reset();
});

// ---------- pure functions ----------

test("backoff doubles from the initial delay up to the maximum, less at most the jitter", () => {
  const reconnect = { initialDelay: 500, maxDelay: 20000, factor: 2, jitter: 0.5 };
  assert.equal(backoffDelay(0, reconnect, () => 0), 500);
  assert.equal(backoffDelay(1, reconnect, () => 0), 1000);
  assert.equal(backoffDelay(3, reconnect, () => 0), 4000);
  assert.equal(backoffDelay(10, reconnect, () => 0), 20000);
  assert.equal(backoffDelay(10, reconnect, () => 0.999999), 10000);
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(2, reconnect);
    assert.ok(d >= 1000 && d <= 2000, `delay ${d}`);
  }
  assert.equal(backoffDelay(4, { ...reconnect, jitter: 0 }, () => 0.9), 8000);
});

test("positions are read from string epoch and integer offset", () => {
  assert.equal(epochOffset({ epoch: "e1", offset: 7 }), "e1:7");
  assert.equal(epochOffset({ epoch: "e1" }), null);
  assert.equal(epochOffset({ epoch: 1, offset: 7 }), null);
  assert.equal(epochOffset({ epoch: "e1", offset: 1.5 }), null);
  assert.ok(isUnrecovered({ type: "chat.unrecovered" }));
  assert.ok(isUnrecovered({ type: "unrecovered" }));
  assert.ok(!isUnrecovered({ type: "chat.message" }));
});

test("a channel without any transport URL is an error", () => {
  assert.throws(() => new Channel({ sse: BASE + "/s" }), /no transport/);
});

// ---------- WebSocket ----------

test("connects over WebSocket, reports each state, and exchanges JSON", () => {
  const channel = new Channel({ url: "ws://chat.test/ws/chat/lobby/?user=ann", WebSocket: FakeWebSocket });
  const seen = record(channel, ["state", "connecting", "open", "message"]);
  assert.equal(channel.state, "connecting");
  const socket = latestSocket();
  assert.equal(socket.url, "ws://chat.test/ws/chat/lobby/?user=ann");
  socket.open();
  assert.equal(channel.state, "open");
  assert.equal(channel.transport, "websocket");
  assert.ok(channel.send({ message: "hi" }));
  assert.deepEqual(socket.sent, ['{"message":"hi"}']);
  socket.receive({ type: "chat.message", text: "hello" });
  assert.deepEqual(seen.map(([type]) => type), ["state", "open", "message"]);
  assert.deepEqual(seen[1][1], { transport: "websocket", resumed: false, upgraded: false });
  assert.deepEqual(seen[2][1], { type: "chat.message", text: "hello" });
  channel.close();
  assert.equal(channel.state, "closed");
  assert.equal(socket.closedWith.code, 1000);
});

test("http URLs and paths become WebSocket URLs", () => {
  new Channel({ url: "https://chat.test/ws/x/", WebSocket: FakeWebSocket });
  assert.equal(latestSocket().url, "wss://chat.test/ws/x/");
  new Channel({ url: "http://chat.test/ws/y/", WebSocket: FakeWebSocket });
  assert.equal(latestSocket().url, "ws://chat.test/ws/y/");
});

test("messages sent while offline are queued and sent in order once open", () => {
  const channel = new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket, queueSize: 2 });
  const unsent = record(channel, ["unsent"]);
  assert.ok(channel.send({ n: 1 }));
  assert.ok(channel.send({ n: 2 }));
  assert.equal(channel.send({ n: 3 }), false, "the queue holds two");
  assert.equal(unsent.length, 1);
  assert.deepEqual(unsent[0][1].messages, [{ n: 3 }]);
  assert.match(unsent[0][1].reason, /queue is full/);
  assert.equal(channel.queued, 2);
  latestSocket().open();
  assert.deepEqual(latestSocket().sent, ['{"n":1}', '{"n":2}']);
  assert.equal(channel.queued, 0);
});

test("closing reports what was still queued", () => {
  const channel = new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket });
  const seen = record(channel, ["unsent", "closed"]);
  channel.send({ n: 1 });
  channel.close(1000, "bye");
  assert.deepEqual(seen[0], ["unsent", { messages: [{ n: 1 }], reason: "bye" }]);
  assert.deepEqual(seen[1], ["closed", { code: 1000, reason: "bye", refused: false }]);
  assert.equal(channel.send({ n: 2 }), false);
});

test("a lost connection reconnects with backoff and resumes from the last position", async () => {
  const channel = new Channel({
    url: BASE + "/ws/chat/lobby/?user=ann",
    WebSocket: FakeWebSocket,
    fetch: async () => {
      throw new TypeError("fetch failed"); // the server is down
    },
    reconnect: { initialDelay: 100, jitter: 0 },
  });
  const seen = record(channel, ["disconnected", "reconnecting", "open"]);
  latestSocket().open();
  latestSocket().receive({ type: "chat.message", epoch: "E", offset: 3 });
  latestSocket().receive({ type: "chat.presence" });
  assert.equal(channel.position, "E:3");
  latestSocket().serverClose(1006);
  assert.equal(channel.state, "reconnecting");
  assert.deepEqual(seen.at(-1), ["reconnecting", { delay: 100, attempt: 1, reason: "connection closed" }]);
  assert.equal(FakeWebSocket.instances.length, 1);
  mock.timers.tick(99);
  assert.equal(FakeWebSocket.instances.length, 1);
  mock.timers.tick(1);
  assert.equal(FakeWebSocket.instances.length, 2);
  const url = new URL(latestSocket().url);
  assert.equal(url.searchParams.get("since"), "E:3");
  assert.equal(url.searchParams.get("user"), "ann");
  // Fails again: the delay doubles.
  latestSocket().failToOpen();
  await settle();
  assert.equal(seen.at(-1)[1].delay, 200);
  mock.timers.tick(200);
  latestSocket().open();
  assert.deepEqual(seen.at(-1), ["open", { transport: "websocket", resumed: true, upgraded: false }]);
});

test("a replayed message already seen is dropped, an unrecovered position is reported", () => {
  const channel = new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket, reconnect: { initialDelay: 10 } });
  const seen = record(channel, ["message", "unrecovered"]);
  latestSocket().open();
  latestSocket().receive({ type: "chat.message", epoch: "E", offset: 1 });
  latestSocket().receive({ type: "chat.message", epoch: "E", offset: 2 });
  latestSocket().serverClose(1006);
  mock.timers.tick(10);
  latestSocket().open();
  latestSocket().receive({ type: "chat.message", epoch: "E", offset: 2 });
  latestSocket().receive({ type: "chat.message", epoch: "E", offset: 3 });
  assert.deepEqual(
    seen.filter(([type]) => type === "message").map(([, m]) => m.offset),
    [1, 2, 3],
  );
  latestSocket().receive({ type: "chat.unrecovered", epoch: "F", offset: 9 });
  assert.equal(seen.at(-2)[0], "unrecovered");
  assert.equal(seen.at(-1)[0], "message");
  assert.equal(channel.position, "F:9");
});

test("a server's normal close (1000) is final; other codes reconnect", () => {
  const channel = new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket });
  const seen = record(channel, ["closed", "reconnecting"]);
  latestSocket().open();
  latestSocket().serverClose(1001, "server shutting down");
  assert.equal(seen[0][0], "reconnecting");
  mock.timers.tick(DEFAULTS.reconnect.initialDelay);
  latestSocket().open();
  latestSocket().serverClose(1000, "bye");
  assert.deepEqual(seen.at(-1), ["closed", { code: 1000, reason: "bye", refused: false }]);
  assert.equal(channel.state, "closed");
  mock.timers.tick(60000);
  assert.equal(FakeWebSocket.instances.length, 2);
});

test("gives up after maxAttempts with code 4001", () => {
  const channel = new Channel({
    url: BASE + "/ws/",
    WebSocket: FakeWebSocket,
    transports: ["websocket"],
    reconnect: { maxAttempts: 2, initialDelay: 10, jitter: 0 },
    fetch: async () => {
      throw new TypeError("fetch failed");
    },
  });
  const seen = record(channel, ["closed"]);
  latestSocket().open();
  latestSocket().serverClose(1006);
  mock.timers.tick(10);
  latestSocket().failToOpen();
  return settle().then(() => {
    mock.timers.tick(20);
    latestSocket().failToOpen();
    return settle();
  }).then(() => {
    assert.equal(seen.length, 1);
    assert.equal(seen[0][1].code, 4001);
    assert.equal(FakeWebSocket.instances.length, 3);
  });
});

// ---------- heartbeat ----------

test("a quiet WebSocket is pinged with an empty frame and kept when the server answers", () => {
  const channel = new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket, heartbeat: { interval: 1000, timeout: 500 } });
  const socket = latestSocket();
  socket.open();
  mock.timers.tick(999);
  assert.deepEqual(socket.sent, []);
  mock.timers.tick(1);
  assert.deepEqual(socket.sent, [""]);
  socket.receive(""); // the server's answer
  mock.timers.tick(999);
  assert.equal(channel.state, "open");
  assert.deepEqual(socket.sent, [""]);
  socket.receive({ type: "chat.message" }); // any traffic counts
  mock.timers.tick(999);
  assert.deepEqual(socket.sent, [""]);
  mock.timers.tick(1);
  assert.deepEqual(socket.sent, ["", ""]);
});

test("a WebSocket that does not answer the heartbeat is dropped within interval + timeout", () => {
  const channel = new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket, heartbeat: { interval: 1000, timeout: 500 } });
  const seen = record(channel, ["disconnected", "reconnecting"]);
  const socket = latestSocket();
  socket.open();
  mock.timers.tick(1000);
  assert.deepEqual(socket.sent, [""]);
  mock.timers.tick(499);
  assert.equal(channel.state, "open");
  mock.timers.tick(1);
  assert.equal(channel.state, "reconnecting");
  assert.equal(socket.closedWith.code, 4000);
  assert.match(seen[0][1].reason, /no answer from the server within 1500 ms/);
});

test("the heartbeat can be turned off", () => {
  const channel = new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket, heartbeat: false });
  latestSocket().open();
  mock.timers.tick(10 * 60 * 1000);
  assert.equal(channel.state, "open");
  assert.deepEqual(latestSocket().sent, []);
});

test("a WebSocket that never opens is given up after openTimeout", () => {
  const channel = new Channel({
    url: BASE + "/ws/",
    WebSocket: FakeWebSocket,
    openTimeout: 3000,
    fetch: async () => {
      throw new TypeError("fetch failed");
    },
  });
  const seen = record(channel, ["reconnecting"]);
  mock.timers.tick(3000);
  assert.equal(latestSocket().closedWith.code, 4000);
  return settle().then(() => {
    assert.equal(channel.state, "reconnecting");
    assert.match(seen[0][1].reason, /not open after 3000 ms/);
  });
});

// ---------- fallback ----------

test("a WebSocket that cannot open falls back to SSE + POST, which carries both ways", async () => {
  let stream;
  const posted = [];
  const { fetch, calls } = fakeFetch({
    "/chat/lobby/stream": (url, init) => {
      stream = sseResponse(init.signal);
      return stream.response;
    },
    "/chat/lobby/messages": (url, init) => {
      posted.push(init.body);
      return jsonResponse(202, { ok: true });
    },
  });
  const channel = new Channel({
    url: BASE + "/ws/chat/lobby/",
    sse: BASE + "/chat/lobby/stream?user=ann",
    post: BASE + "/chat/lobby/messages?user=ann",
    since: "E:4",
    WebSocket: FakeWebSocket,
    fetch,
  });
  const seen = record(channel, ["fallback", "open", "message"]);
  channel.send({ message: "queued while connecting" });
  latestSocket().failToOpen();
  assert.deepEqual(seen[0], ["fallback", { from: "websocket", to: "sse", reason: "the WebSocket could not open" }]);
  await settle();
  assert.equal(calls[0].url.searchParams.get("since"), "E:4");
  assert.equal(calls[0].url.searchParams.get("user"), "ann");
  assert.equal(channel.transport, "sse");
  stream.write(": keepalive\n\nid: E:5\ndata: {\"type\":\"chat.message\",\"epoch\":\"E\",");
  stream.write("\"offset\":5}\n\nevent: ping\ndata: {}\n\ndata: {\"type\":\"chat.presence\"}\r\n\r\n");
  await settle();
  assert.deepEqual(
    seen.filter(([type]) => type === "message").map(([, m]) => m.type),
    ["chat.message", "chat.presence"],
  );
  assert.equal(channel.position, "E:5");
  channel.send({ message: "hi" });
  await settle();
  assert.deepEqual(posted, ['{"message":"queued while connecting"}', '{"message":"hi"}']);
  channel.close();
});

test("a refused POST is reported unsent with the server's reason", async () => {
  let stream;
  const { fetch } = fakeFetch({
    "/s": (url, init) => {
      stream = sseResponse(init.signal);
      return stream.response;
    },
    "/p": () => jsonResponse(413, { error: "messages are limited to 4000 characters" }),
  });
  const channel = new Channel({ sse: BASE + "/s", post: BASE + "/p", fetch });
  const seen = record(channel, ["unsent"]);
  await settle();
  channel.send({ message: "x".repeat(5000) });
  await settle();
  assert.equal(seen.length, 1);
  assert.equal(seen[0][1].status, 413);
  assert.equal(seen[0][1].reason, "messages are limited to 4000 characters");
  channel.close();
});

test("an SSE stream that goes silent is dropped by the heartbeat", async () => {
  const { fetch } = fakeFetch({ "/s": (url, init) => sseResponse(init.signal).response });
  const channel = new Channel({ sse: BASE + "/s", post: BASE + "/p", fetch, heartbeat: { interval: 1000, timeout: 500 } });
  await settle();
  assert.equal(channel.state, "open");
  mock.timers.tick(1000);
  mock.timers.tick(499);
  assert.equal(channel.state, "open");
  mock.timers.tick(1);
  assert.equal(channel.state, "reconnecting");
  channel.close();
});

test("an SSE refusal (403) is reported and not retried", async () => {
  const { fetch, calls } = fakeFetch({ "/s": () => jsonResponse(403, { error: "forbidden" }) });
  const channel = new Channel({ sse: BASE + "/s", post: BASE + "/p", fetch });
  const seen = record(channel, ["refused", "closed"]);
  await settle();
  assert.deepEqual(seen[0], ["refused", { transport: "sse", status: 403, reason: "forbidden" }]);
  assert.deepEqual(seen[1], ["closed", { code: 4403, reason: "forbidden", refused: true }]);
  mock.timers.tick(120000);
  await settle();
  assert.equal(calls.length, 1);
});

test("when SSE fails too, long polling carries the conversation", async () => {
  const polls = [];
  const { fetch } = fakeFetch({
    "/chat/r/events": (url, init) => {
      polls.push(url);
      if (url.searchParams.get("wait") === "0") {
        return jsonResponse(200, [{ type: "chat.presence" }, { type: "chat.message", epoch: "E", offset: 8 }]);
      }
      return new Promise((resolve, reject) => {
        init.signal.addEventListener("abort", () => reject(new Error("aborted")));
        polls.answer = (events) => resolve(jsonResponse(200, events));
      });
    },
    "/chat/r/messages": () => jsonResponse(202, {}),
  });
  const channel = new Channel({
    url: BASE + "/ws/chat/r/",
    sse: BASE + "/chat/r/nostream",
    longPoll: BASE + "/chat/r/events?user=ann",
    post: BASE + "/chat/r/messages",
    since: "E:7",
    WebSocket: FakeWebSocket,
    fetch,
  });
  const seen = record(channel, ["fallback", "open", "message"]);
  latestSocket().failToOpen();
  await settle();
  assert.deepEqual(
    seen.filter(([type]) => type === "fallback").map(([, f]) => f.to),
    ["sse", "longpoll"],
  );
  assert.equal(channel.transport, "longpoll");
  assert.equal(polls[0].searchParams.get("since"), "E:7");
  assert.equal(polls[0].searchParams.get("client"), channel.clientId);
  assert.equal(polls[1].searchParams.get("wait"), String(DEFAULTS.longPollWait));
  assert.equal(polls[1].searchParams.get("since"), null);
  polls.answer([{ type: "chat.message", epoch: "E", offset: 9 }]);
  await settle();
  assert.deepEqual(
    seen.filter(([type]) => type === "message").map(([, m]) => m.offset ?? m.type),
    ["chat.presence", 8, 9],
  );
  // A poll that outlives `wait` + the heartbeat's timeout is a dead connection.
  mock.timers.tick(DEFAULTS.longPollWait * 1000 + DEFAULTS.heartbeat.timeout);
  await settle();
  assert.equal(channel.state, "reconnecting");
  channel.close();
});

test("on a fallback transport the WebSocket is tried again, and adopted when it opens", async () => {
  let stream;
  const { fetch } = fakeFetch({
    "/s": (url, init) => {
      stream = sseResponse(init.signal);
      return stream.response;
    },
  });
  const channel = new Channel({
    url: BASE + "/ws/",
    sse: BASE + "/s",
    post: BASE + "/p",
    upgradeAfter: 5000,
    WebSocket: FakeWebSocket,
    fetch,
  });
  const seen = record(channel, ["open", "message"]);
  latestSocket().failToOpen();
  await settle();
  stream.write('data: {"epoch":"E","offset":1}\n\n');
  await settle();
  mock.timers.tick(5000);
  assert.equal(FakeWebSocket.instances.length, 2);
  assert.equal(new URL(latestSocket().url).searchParams.get("since"), "E:1");
  // Still blocked: it stays on SSE and tries again later.
  latestSocket().failToOpen();
  assert.equal(channel.transport, "sse");
  mock.timers.tick(5000);
  assert.equal(FakeWebSocket.instances.length, 3);
  latestSocket().open();
  assert.equal(channel.transport, "websocket");
  assert.deepEqual(seen.at(-1), ["open", { transport: "websocket", resumed: true, upgraded: true }]);
  // The replay overlaps what SSE delivered: no duplicate.
  latestSocket().receive({ epoch: "E", offset: 1 });
  latestSocket().receive({ epoch: "E", offset: 2 });
  assert.deepEqual(
    seen.filter(([type]) => type === "message").map(([, m]) => m.offset),
    [1, 2],
  );
  channel.close();
});

// ---------- refusals of a WebSocket-only client ----------

test("a WebSocket-only client whose endpoint is missing (404) is refused at once", async () => {
  const { fetch, calls } = fakeFetch({ "/ws/nothing/": () => jsonResponse(404, { error: "not found" }) });
  const channel = new Channel({ url: BASE + "/ws/nothing/", WebSocket: FakeWebSocket, fetch });
  const seen = record(channel, ["refused", "closed"]);
  latestSocket().failToOpen();
  await settle();
  assert.equal(calls[0].url.href, BASE + "/ws/nothing/");
  assert.deepEqual(seen[0], ["refused", { transport: "websocket", status: 404, reason: "no such endpoint" }]);
  assert.equal(channel.state, "closed");
});

test("a handshake the server keeps refusing is reported after refuseAfter attempts", async () => {
  const { fetch } = fakeFetch({ "/ws/tickets/9999/": () => jsonResponse(426, {}) });
  const channel = new Channel({
    url: BASE + "/ws/tickets/9999/",
    WebSocket: FakeWebSocket,
    fetch,
    reconnect: { initialDelay: 10, jitter: 0 },
  });
  const seen = record(channel, ["refused", "reconnecting"]);
  for (let i = 0; i < 3; i++) {
    latestSocket().failToOpen();
    await settle();
    mock.timers.tick(1000);
  }
  assert.deepEqual(
    seen.map(([type]) => type),
    ["reconnecting", "reconnecting", "refused"],
  );
  assert.equal(seen[2][1].status, 426);
  assert.equal(channel.state, "closed");
  assert.equal(FakeWebSocket.instances.length, 3);
});

test("a server that does not answer at all is retried, not refused", async () => {
  const channel = new Channel({
    url: BASE + "/ws/",
    WebSocket: FakeWebSocket,
    fetch: async () => {
      throw new TypeError("fetch failed");
    },
    reconnect: { initialDelay: 10, jitter: 0, maxDelay: 10 },
  });
  for (let i = 0; i < 6; i++) {
    latestSocket().failToOpen();
    await settle();
    mock.timers.tick(10);
  }
  assert.equal(FakeWebSocket.instances.length, 7);
  assert.equal(channel.state, "connecting");
  channel.close();
});

test("a failing listener does not break the channel", () => {
  const errors = mock.method(console, "error", () => {});
  const channel = new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket });
  const got = [];
  channel.on("message", () => {
    throw new Error("bug in the page");
  });
  channel.on("message", (m) => got.push(m));
  latestSocket().open();
  latestSocket().receive({ n: 1 });
  latestSocket().receive("not json");
  assert.deepEqual(got, [{ n: 1 }]);
  assert.equal(errors.mock.callCount(), 1);
  assert.equal(channel.state, "open");
  errors.mock.restore();
});

test("plain polling asks with wait=0 every pollInterval, with the client ID it was given", async () => {
  const polls = [];
  const { fetch } = fakeFetch({
    "/events": (url) => {
      polls.push(url);
      return jsonResponse(200, []);
    },
  });
  const channel = new Channel({
    longPoll: BASE + "/events",
    post: BASE + "/messages",
    longPollWait: 0,
    pollInterval: 1000,
    clientId: "tab-1",
    fetch,
  });
  await settle();
  assert.equal(channel.transport, "longpoll");
  assert.equal(polls.length, 1);
  mock.timers.tick(999);
  await settle();
  assert.equal(polls.length, 1);
  mock.timers.tick(1);
  await settle();
  assert.equal(polls.length, 2);
  assert.ok(polls.every((u) => u.searchParams.get("wait") === "0" && u.searchParams.get("client") === "tab-1"));
  channel.close();
});

test("a WebSocket tried again from a fallback that hangs is given up after openTimeout", async () => {
  const { fetch } = fakeFetch({ "/s": (url, init) => sseResponse(init.signal).response });
  const channel = new Channel({
    url: BASE + "/ws/",
    sse: BASE + "/s",
    post: BASE + "/p",
    upgradeAfter: 5000,
    openTimeout: 2000,
    heartbeat: false,
    WebSocket: FakeWebSocket,
    fetch,
  });
  latestSocket().failToOpen();
  await settle();
  mock.timers.tick(5000);
  const hanging = latestSocket();
  assert.equal(FakeWebSocket.instances.length, 2);
  mock.timers.tick(2000);
  assert.equal(hanging.closedWith.code, 4000);
  assert.equal(channel.transport, "sse");
  mock.timers.tick(5000);
  assert.equal(FakeWebSocket.instances.length, 3, "tried again later");
  channel.close();
});

test("an event split between \\r and \\n across chunks is read once", async () => {
  let stream;
  const { fetch } = fakeFetch({
    "/s": (url, init) => {
      stream = sseResponse(init.signal);
      return stream.response;
    },
  });
  const channel = new Channel({ sse: BASE + "/s", post: BASE + "/p", fetch });
  const got = [];
  channel.on("message", (m) => got.push(m));
  await settle();
  stream.write('data: {"n":1}\r');
  await settle();
  stream.write('\n\r\ndata: {"n":2}\r\n\r\n');
  await settle();
  assert.deepEqual(got, [{ n: 1 }, { n: 2 }]);
  channel.close();
});

test("a close code a browser would refuse is sent as 1000", () => {
  const channel = new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket });
  latestSocket().open();
  channel.close(1011, "internal");
  assert.deepEqual(latestSocket().closedWith, { code: 1000, reason: "" });
});

// ---------- message IDs (idKey) ----------

test("with idKey, what was sent and not confirmed is sent again in order, with the same IDs, on the reconnect", () => {
  const channel = new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket, idKey: "id", reconnect: { initialDelay: 10, jitter: 0 } });
  const unsent = record(channel, ["unsent"]);
  const first = latestSocket();
  first.open();
  const given = { message: "a" };
  channel.send(given);
  channel.send({ message: "b" });
  channel.send({ message: "c", id: "mine-1" });
  assert.equal(given.id, undefined, "the caller's object is left as it was");
  const sent = first.sent.map((text) => JSON.parse(text));
  assert.deepEqual(sent.map((m) => m.message), ["a", "b", "c"]);
  assert.equal(sent[2].id, "mine-1");
  assert.ok(sent.every((m) => typeof m.id === "string" && /^[A-Za-z0-9_.:-]{1,64}$/.test(m.id)));
  assert.equal(new Set(sent.map((m) => m.id)).size, 3);
  assert.equal(channel.unconfirmed, 3);
  // "a" comes back (from anyone's page: the ID is what counts); "b" and "c" do not.
  first.receive({ type: "chat.message", text: "a", id: sent[0].id, epoch: "E", offset: 1 });
  assert.equal(channel.unconfirmed, 2);
  first.serverClose(1006);
  channel.send({ message: "d" }); // while reconnecting: queued, after the ones sent again
  mock.timers.tick(10);
  const second = latestSocket();
  assert.notEqual(second, first);
  second.open();
  assert.deepEqual(
    second.sent.map((text) => JSON.parse(text)),
    [sent[1], sent[2], { message: "d", id: JSON.parse(second.sent[2]).id }],
  );
  // The replay confirms "b", the live stream "c" and "d"; a third connection sends nothing again.
  for (const [offset, text] of second.sent.entries()) {
    const m = JSON.parse(text);
    second.receive({ type: "chat.message", text: m.message, id: m.id, epoch: "E", offset: offset + 2 });
  }
  assert.equal(channel.unconfirmed, 0);
  second.serverClose(1006);
  mock.timers.tick(20); // the second attempt in a row waits twice as long
  assert.notEqual(latestSocket(), second);
  latestSocket().open();
  assert.deepEqual(latestSocket().sent, []);
  assert.deepEqual(unsent, []);
});

test("with idKey, the unconfirmed messages are bounded, closing reports them, and confirm: false is not kept", () => {
  const channel = new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket, idKey: "id", queueSize: 2 });
  const unsent = record(channel, ["unsent"]);
  latestSocket().open();
  assert.ok(channel.send({ message: "once" }, { confirm: false }));
  assert.deepEqual(latestSocket().sent, ['{"message":"once"}']);
  assert.ok(channel.send({ message: "1" }));
  assert.ok(channel.send({ message: "2" }));
  assert.equal(channel.send({ message: "3" }), false);
  assert.equal(unsent.length, 1);
  assert.deepEqual(unsent[0][1].messages, [{ message: "3" }]);
  assert.match(unsent[0][1].reason, /not confirmed/);
  assert.equal(channel.unconfirmed, 2);
  channel.close();
  assert.equal(unsent.length, 2);
  assert.deepEqual(unsent[1][1].messages.map((m) => m.message), ["1", "2"]);
  assert.match(unsent[1][1].reason, /not confirmed/);
  assert.equal(channel.unconfirmed, 0);
});

test("with idKey, unconfirmedMessages gives copies, oldest first, that a new channel sends with their IDs", () => {
  const channel = new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket, idKey: "id" });
  const first = latestSocket();
  first.open();
  channel.send({ message: "a" });
  channel.send({ message: "b", meta: { n: 1 } });
  const sent = first.sent.map((text) => JSON.parse(text));
  first.receive({ type: "chat.message", text: "a", id: sent[0].id });
  const kept = channel.unconfirmedMessages();
  assert.deepEqual(kept, [sent[1]]);
  kept[0].meta.n = 2; // a copy: the channel's own is untouched
  assert.deepEqual(channel.unconfirmedMessages(), [sent[1]]);
  // A reloaded page: a new channel sends what the old one kept, with the same ID.
  const after = new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket, idKey: "id" });
  after.send(JSON.parse(JSON.stringify(channel.unconfirmedMessages()[0])));
  latestSocket().open();
  assert.deepEqual(latestSocket().sent.map((text) => JSON.parse(text)), [sent[1]]);
  assert.equal(after.unconfirmed, 1);
  assert.deepEqual(new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket }).unconfirmedMessages(), []);
});

test("without idKey nothing is added or sent again", () => {
  const channel = new Channel({ url: BASE + "/ws/", WebSocket: FakeWebSocket, reconnect: { initialDelay: 10, jitter: 0 } });
  latestSocket().open();
  channel.send({ message: "a" });
  assert.deepEqual(latestSocket().sent, ['{"message":"a"}']);
  latestSocket().serverClose(1006);
  mock.timers.tick(10);
  latestSocket().open();
  assert.deepEqual(latestSocket().sent, []);
  assert.equal(channel.unconfirmed, 0);
});

test("with idKey, a POST cut off by the network is sent again on the next connection, a refused one is unsent", async () => {
  let stream;
  const posted = [];
  let answer = () => {
    throw new TypeError("fetch failed");
  };
  const { fetch } = fakeFetch({
    "/s": (url, init) => {
      stream = sseResponse(init.signal);
      return stream.response;
    },
    "/p": (url, init) => {
      posted.push(JSON.parse(init.body));
      return answer();
    },
  });
  const channel = new Channel({ sse: BASE + "/s", post: BASE + "/p", fetch, idKey: "id", reconnect: { initialDelay: 10, jitter: 0 } });
  const unsent = record(channel, ["unsent"]);
  await settle();
  channel.send({ message: "lost?" });
  await settle();
  assert.deepEqual(unsent, []);
  assert.equal(channel.unconfirmed, 1);
  answer = () => jsonResponse(202, { ok: true });
  stream.end(); // the stream goes too: reconnect
  await settle();
  mock.timers.tick(10);
  await settle();
  assert.equal(posted.length, 2);
  assert.deepEqual(posted[1], posted[0]);
  answer = () => jsonResponse(413, { error: "too long" });
  channel.send({ message: "x".repeat(5000) });
  await settle();
  assert.equal(unsent.length, 1);
  assert.equal(unsent[0][1].status, 413);
  assert.equal(channel.unconfirmed, 1, "only the first, still waiting for its echo");
  channel.close();
});
