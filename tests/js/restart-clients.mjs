// Twenty channels.js clients (the module itself, run by Node with its WebSocket and fetch)
// talk in one chat room while the server restarts on Redis; afterwards every client's
// transcript is the same, holds every message once, and keeps each sender's order.
//
//   1. the clients send the first 40% of the messages and wait until everyone has them;
//   2. the script prints RESTART; the driver (tests/client_js.rs) stops the chat process and
//      starts a new one on the same address and Redis; the clients notice (1001) and keep
//      sending: channels.js queues it;
//   3. once RESTARTED, the clients send the rest while they reconnect, at their own pace
//      (backoff with jitter), each resuming from the last position it saw.
//
// Usage: node --experimental-websocket tests/js/restart-clients.mjs BASE_URL [CLIENTS] [MESSAGES]
// Prints one summary line with the numbers; exit code 0 on success, 1 on failure.

import { createInterface } from "node:readline";
import { Channel } from "../../channels-core/src/client/channels.js";

const base = process.argv[2];
const CLIENTS = Number(process.argv[3] || 20);
const MESSAGES = Number(process.argv[4] || 1000);
const ROOM = "load";
const OVERALL_MS = 100_000;
const WAIT_MS = 30_000;

if (!base || typeof WebSocket === "undefined") {
  console.error("usage: node --experimental-websocket restart-clients.mjs BASE_URL [CLIENTS] [MESSAGES]");
  process.exit(2);
}

let step = "starting";
const watchdog = setTimeout(() => {
  console.error(`FAIL at step: ${step}\nnot finished within ${OVERALL_MS / 1000} s`);
  report();
  process.exit(1);
}, OVERALL_MS);
watchdog.unref();

const stdinLines = [];
const stdinWaiters = [];
createInterface({ input: process.stdin }).on("line", (line) => {
  const waiter = stdinWaiters.shift();
  if (waiter) waiter(line.trim());
  else stdinLines.push(line.trim());
});
const nextStdinLine = () =>
  stdinLines.length ? Promise.resolve(stdinLines.shift()) : new Promise((resolve) => stdinWaiters.push(resolve));

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Resolves when `predicate()` holds, polling every 20 ms; rejects after `ms`. */
async function until(predicate, ms, what) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

const clients = [];
for (let i = 0; i < CLIENTS; i++) {
  const user = "c" + String(i).padStart(2, "0");
  const q = "?user=" + user;
  const channel = new Channel({
    url: base.replace(/^http/, "ws") + "ws/chat/" + ROOM + "/" + q,
    sse: base + "chat/" + ROOM + "/stream" + q,
    longPoll: base + "chat/" + ROOM + "/events" + q,
    post: base + "chat/" + ROOM + "/messages" + q,
    queueSize: MESSAGES,
  });
  const client = { user, channel, transcript: [], sent: [], unrecovered: 0, unsent: [], opens: [], states: [] };
  channel.on("message", (event) => {
    if (event.type === "chat.message") client.transcript.push(event.user + ": " + event.text);
  });
  channel.on("unrecovered", () => client.unrecovered++);
  channel.on("unsent", ({ messages, reason }) => client.unsent.push({ messages, reason }));
  channel.on("open", ({ transport, resumed }) => client.opens.push(transport + (resumed ? " (resumed)" : "")));
  channel.on("state", ({ state }) => client.states.push(state));
  clients.push(client);
}

function report() {
  for (const c of clients) {
    console.error(
      `${c.user}: ${c.transcript.length} messages, sent ${c.sent.length}, opens ${JSON.stringify(c.opens)}, ` +
        `state ${c.channel.state}, queued ${c.channel.queued}, unsent ${JSON.stringify(c.unsent)}`,
    );
  }
}

let next = 0;
/** Sends message `next` from the client whose turn it is (round robin). */
function sendOne() {
  const client = clients[next % CLIENTS];
  const text = "m" + String(next).padStart(4, "0");
  client.sent.push(client.user + ": " + text);
  check(client.channel.send({ message: text }), `${client.user} could not send ${text}`);
  next++;
}

async function main() {
  step = `${CLIENTS} clients connect`;
  await until(() => clients.every((c) => c.channel.state === "open"), WAIT_MS, "every client open");

  const before = Math.floor(MESSAGES * 0.4);
  const during = Math.floor(MESSAGES * 0.2);
  step = `the clients send ${before} messages and everyone has them`;
  while (next < before) {
    sendOne();
    if (next % 20 === 0) await sleep(5);
  }
  await until(() => clients.every((c) => c.transcript.length >= before), WAIT_MS, `${before} messages everywhere`);

  step = "the server restarts: every client notices";
  const restartAt = Date.now();
  console.log("RESTART");
  await until(() => clients.every((c) => c.channel.state !== "open"), WAIT_MS, "every client to notice");

  step = `the clients send ${during} messages while the server is away (queued)`;
  while (next < before + during) sendOne();
  const reply = await Promise.race([nextStdinLine(), sleep(WAIT_MS).then(() => "(nothing)")]);
  check(reply === "RESTARTED", `the driver answered ${JSON.stringify(reply)}`);

  step = `the clients send the other ${MESSAGES - before - during} while they reconnect`;
  while (next < MESSAGES) {
    sendOne();
    if (next % 20 === 0) await sleep(5);
  }
  await until(() => clients.every((c) => c.channel.state === "open"), WAIT_MS, "every client open again");
  const reconnectedIn = Date.now() - restartAt;

  step = "every client has every message";
  await until(() => clients.every((c) => c.transcript.length >= MESSAGES), WAIT_MS, `${MESSAGES} messages everywhere`);
  await sleep(500); // time for anything doubled to arrive

  step = "every transcript is the same, once each, in each sender's order";
  const reference = clients[0].transcript;
  for (const c of clients) {
    check(c.transcript.length === MESSAGES, `${c.user} has ${c.transcript.length} messages, expected ${MESSAGES}`);
    check(new Set(c.transcript).size === MESSAGES, `${c.user} has a message twice`);
    check(c.unrecovered === 0, `${c.user} was told ${c.unrecovered} times it could not recover`);
    check(c.unsent.length === 0, `${c.user} reports unsent messages: ${JSON.stringify(c.unsent)}`);
    const mine = reference.filter((line) => line.startsWith(c.user + ": "));
    check(JSON.stringify(mine) === JSON.stringify(c.sent), `${c.user}'s messages are out of order or missing`);
    const first = c.transcript.findIndex((line, k) => line !== reference[k]);
    check(first === -1, `${c.user}'s transcript differs from ${clients[0].user}'s at ${first}: ${c.transcript[first]} vs ${reference[first]}`);
  }
  const transports = {};
  for (const c of clients) for (const t of c.opens) transports[t] = (transports[t] || 0) + 1;
  console.log(
    `restart: ${CLIENTS} clients, ${MESSAGES} messages (${during} queued during the restart), ` +
      `0 lost, 0 doubled, transcripts identical; all open again ${(reconnectedIn / 1000).toFixed(1)} s after RESTART; ` +
      `opens: ${JSON.stringify(transports)}`,
  );
  for (const c of clients) c.channel.close();
}

try {
  await main();
  process.exit(0);
} catch (err) {
  console.error(`FAIL at step: ${step}\n${err && err.stack ? err.stack : err}`);
  report();
  process.exit(1);
}
