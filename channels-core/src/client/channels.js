// channels.js: the browser client of channels-rs. One dependency-free ES module.
//
//   import { Channel } from "/static/channels.js";
//   const channel = new Channel({ url: "/ws/chat/lobby/", sse: "/chat/lobby/stream",
//                                 post: "/chat/lobby/messages", longPoll: "/chat/lobby/events" });
//   channel.on("message", (event) => console.log(event));
//   channel.send({ message: "hello" });
//
// It reconnects by itself (exponential backoff with jitter), notices a dead connection
// (heartbeat), falls back from WebSocket to server-sent events + POST, then to long polling,
// when the WebSocket cannot open (and tries the WebSocket again later), resumes from the last
// position it saw (`?since=`), queues what is sent while offline (bounded), and reports every
// change of state as an event. The guide is docs/client.md; served by the Rust API
// `channels::client::channels_js()`.

/** The transports, in the order they are tried by default. */
export const TRANSPORTS = Object.freeze(["websocket", "sse", "longpoll"]);

/** Every default, in one place (docs/client.md lists them too). */
export const DEFAULTS = Object.freeze({
  reconnect: Object.freeze({
    /** Milliseconds before the first retry. */
    initialDelay: 500,
    /** The delay never grows past this. */
    maxDelay: 20000,
    /** Each failed attempt multiplies the delay by this. */
    factor: 2,
    /** Up to this fraction of each delay is taken off at random, so clients spread out. */
    jitter: 0.5,
    /** Attempts in a row before giving up (`closed` with code 4001); Infinity: never give up. */
    maxAttempts: Infinity,
    /** A connection that stayed open this long resets the backoff. */
    stableAfter: 5000,
  }),
  heartbeat: Object.freeze({
    /** After this long without hearing from the server, the client checks the connection. */
    interval: 20000,
    /** ... and declares it dead when the check gets no answer within this. */
    timeout: 10000,
  }),
  /** Messages kept while offline; more are refused (`unsent` event). */
  queueSize: 100,
  /** A connection not open after this long is given up (and the next transport tried). */
  openTimeout: 10000,
  /** On a fallback transport, try the WebSocket again after this long (0: never). */
  upgradeAfter: 60000,
  /** Seconds a long poll may be held by the server (0: plain polling, see `pollInterval`). */
  longPollWait: 25,
  /** Milliseconds between two polls (for plain polling; 0 for long polling). */
  pollInterval: 0,
  /** A WebSocket-only client whose socket fails to open this many times in a row while the
   *  server answers HTTP takes it as a refusal. */
  refuseAfter: 3,
  /** The query parameter that carries the position to resume from. */
  sinceParam: "since",
  /** The key of a message's ID (`"id"`): sent messages are kept until one with their ID comes
   *  back, and sent again on each reconnect. null: off. */
  idKey: null,
});

/**
 * The position of a message, as `"EPOCH:OFFSET"` when it carries string `epoch` and integer
 * `offset` fields (the chat example's, and `channels::layers::History`'s), otherwise null.
 * @param {any} message
 * @returns {string|null}
 */
export function epochOffset(message) {
  if (message && typeof message.epoch === "string" && Number.isInteger(message.offset)) {
    return message.epoch + ":" + message.offset;
  }
  return null;
}

/**
 * Whether a message says the position could not be recovered: its `type` is `unrecovered` or
 * ends in `.unrecovered` (the chat's `chat.unrecovered`).
 * @param {any} message
 * @returns {boolean}
 */
export function isUnrecovered(message) {
  return !!message && typeof message.type === "string" && /(^|\.)unrecovered$/.test(message.type);
}

/**
 * The delay before reconnect attempt `attempt` (0 for the first retry): `initialDelay *
 * factor ** attempt`, at most `maxDelay`, less up to `jitter` of it at random.
 * @param {number} attempt
 * @param {{initialDelay:number,maxDelay:number,factor:number,jitter:number}} reconnect
 * @param {() => number} [random] a number in [0, 1)
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, reconnect, random = Math.random) {
  const base = Math.min(reconnect.maxDelay, reconnect.initialDelay * Math.pow(reconnect.factor, attempt));
  const jitter = Math.min(1, Math.max(0, reconnect.jitter));
  return Math.max(0, Math.round(base * (1 - jitter * random())));
}

/** HTTP statuses that mean "do not ask again": the server refuses this client or URL. */
function isRefusal(status) {
  return status >= 400 && status < 500 && status !== 408 && status !== 429;
}

function pageBase() {
  const location = globalThis.location;
  return location && location.href ? location.href : undefined;
}

/** `url` (absolute, or relative to the page) with `scheme` ws/wss or http/https as asked. */
function resolve(url, websocket) {
  const u = new URL(url, pageBase());
  if (websocket) {
    if (u.protocol === "http:") u.protocol = "ws:";
    else if (u.protocol === "https:") u.protocol = "wss:";
  } else {
    if (u.protocol === "ws:") u.protocol = "http:";
    else if (u.protocol === "wss:") u.protocol = "https:";
  }
  return u;
}

function withParams(url, params) {
  const u = new URL(url.href);
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined) u.searchParams.set(key, String(value));
  }
  return u.href;
}

/** A random message ID: a UUID where the browser makes them (secure contexts), else 32 hex digits. */
function messageId() {
  const crypto = globalThis.crypto;
  if (crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  return randomId();
}

function randomId() {
  const bytes = new Uint8Array(16);
  const crypto = globalThis.crypto;
  if (crypto && crypto.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function describe(error) {
  return error && error.message ? error.message : String(error);
}

async function errorText(response) {
  try {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      if (body && typeof body.error === "string") return body.error;
    } catch (_) {
      /* not JSON */
    }
    return text.slice(0, 200) || "HTTP " + response.status;
  } catch (_) {
    return "HTTP " + response.status;
  }
}

// ---------------------------------------------------------------------------------------------
// Transports. Each reports to its channel through `channel._opened`, `_data`, `_alive` and
// `_lost`; the channel ignores reports from a transport that is no longer its current one.

class WebSocketTransport {
  constructor(channel, since) {
    this.name = "websocket";
    this.channel = channel;
    this.since = since;
    this.socket = null;
    this.opened = false;
    this.done = false;
  }

  start() {
    const ch = this.channel;
    const params = {};
    if (this.since) params[ch.options.sinceParam] = this.since;
    let socket;
    try {
      socket = new ch.options.WebSocket(withParams(ch.urls.websocket, params));
    } catch (error) {
      ch._lost(this, { opened: false, reason: "cannot open a WebSocket: " + describe(error) });
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      if (this.done) return;
      this.opened = true;
      ch._opened(this);
    };
    socket.onmessage = (event) => {
      if (this.done) return;
      // An empty text frame is the server's answer to our heartbeat.
      if (event.data === "") ch._alive(this);
      else ch._data(this, event.data);
    };
    socket.onclose = (event) => {
      if (this.done) return;
      this.done = true;
      ch._lost(this, {
        opened: this.opened,
        code: event.code,
        reason: event.reason || (this.opened ? "connection closed" : "the WebSocket could not open"),
        serverClosed: this.opened,
      });
    };
    socket.onerror = () => {
      /* a close event follows */
    };
  }

  ready() {
    return !!this.socket && this.socket.readyState === 1;
  }

  send(text) {
    this.socket.send(text);
    return Promise.resolve({ ok: true });
  }

  /** The heartbeat: an empty text frame, which the server answers with one. */
  ping() {
    if (this.ready()) this.socket.send("");
  }

  stop(code = 1000, reason = "") {
    this.done = true;
    if (this.socket) {
      // Browsers accept 1000 and 3000-4999 from a page, and throw on anything else.
      const allowed = code === 1000 || (code >= 3000 && code <= 4999);
      try {
        this.socket.close(allowed ? code : 1000, allowed ? reason : "");
      } catch (_) {
        /* already closed */
      }
    }
  }
}

/** Sends by POST, one at a time, in order (the SSE and long-poll transports). */
class Poster {
  constructor(channel) {
    this.channel = channel;
    this.chain = Promise.resolve();
  }

  send(text) {
    const ch = this.channel;
    const result = this.chain.then(async () => {
      try {
        const response = await ch.options.fetch(ch.urls.post, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: text,
          cache: "no-store",
        });
        if (response.ok) return { ok: true };
        return { ok: false, status: response.status, reason: await errorText(response) };
      } catch (error) {
        return { ok: false, status: 0, reason: "network error, the message may not have arrived: " + describe(error) };
      }
    });
    this.chain = result;
    return result;
  }
}

/** What the two HTTP transports share: POSTs for sending, a fetch to abort when stopped. */
class HttpTransport {
  constructor(name, channel, since) {
    this.name = name;
    this.channel = channel;
    this.since = since;
    this.opened = false;
    this.done = false;
    this.controller = null;
    this.poster = new Poster(channel);
  }

  fail(info) {
    if (this.done) return;
    this.done = true;
    if (this.controller) this.controller.abort();
    this.channel._lost(this, info);
  }

  ready() {
    return this.opened && !this.done;
  }

  send(text) {
    return this.poster.send(text);
  }

  stop() {
    this.done = true;
    if (this.controller) this.controller.abort();
  }
}

class SseTransport extends HttpTransport {
  constructor(channel, since) {
    super("sse", channel, since);
  }

  start() {
    const ch = this.channel;
    const params = {};
    if (this.since) params[ch.options.sinceParam] = this.since;
    this.controller = new AbortController();
    const url = withParams(ch.urls.sse, params);
    this.run(url).catch((error) => this.fail({ opened: this.opened, reason: describe(error) }));
  }

  async run(url) {
    const ch = this.channel;
    const response = await ch.options.fetch(url, {
      headers: { accept: "text/event-stream" },
      cache: "no-store",
      signal: this.controller.signal,
    });
    if (this.done) return;
    if (!response.ok || !response.body) {
      const reason = await errorText(response);
      this.fail({ opened: false, status: response.status, refused: isRefusal(response.status), reason });
      return;
    }
    this.opened = true;
    ch._opened(this);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let data = [];
    let type = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (this.done) return;
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        // A "\r" that ends the chunk may be the first half of a "\r\n": wait for more.
        if (buffer[newline] === "\r" && newline === buffer.length - 1) break;
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          // End of an event: `message` events carry data, named ones (`ping`) and comments
          // only show the stream is alive.
          if (data.length && (type === "" || type === "message")) ch._data(this, data.join("\n"));
          else ch._alive(this);
          data = [];
          type = "";
          if (this.done) return;
          continue;
        }
        if (line.startsWith(":")) {
          ch._alive(this);
          continue;
        }
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value2 = colon < 0 ? "" : line.slice(colon + 1);
        if (value2.startsWith(" ")) value2 = value2.slice(1);
        if (field === "data") data.push(value2);
        else if (field === "event") type = value2;
      }
    }
    this.fail({ opened: true, reason: "the event stream ended" });
  }

  ping() {
    /* the server's keep-alive comments are the heartbeat */
  }
}

class LongPollTransport extends HttpTransport {
  constructor(channel, since) {
    super("longpoll", channel, since);
  }

  start() {
    this.loop().catch((error) => this.fail({ opened: this.opened, reason: describe(error) }));
  }

  async loop() {
    const ch = this.channel;
    while (!this.done) {
      // The first poll of a connection is answered at once; later ones are held up to `wait`.
      const wait = this.opened ? ch.options.longPollWait : 0;
      const params = { client: ch.clientId, wait };
      if (!this.opened && this.since) params[ch.options.sinceParam] = this.since;
      this.controller = new AbortController();
      const guardMs = wait * 1000 + ch.options.heartbeat.timeout;
      const guard = ch._setTimeout(() => this.controller.abort(), guardMs);
      let response;
      let events;
      try {
        response = await ch.options.fetch(withParams(ch.urls.longPoll, params), {
          cache: "no-store",
          signal: this.controller.signal,
        });
        if (this.done) return;
        if (!response.ok) {
          const reason = await errorText(response);
          this.fail({ opened: this.opened, status: response.status, refused: isRefusal(response.status), reason });
          return;
        }
        events = await response.json();
      } catch (error) {
        const timedOut = this.controller.signal.aborted;
        this.fail({ opened: this.opened, reason: timedOut ? "no answer from the server (heartbeat timeout)" : describe(error) });
        return;
      } finally {
        ch._clearTimeout(guard);
      }
      if (this.done) return;
      if (!this.opened) {
        this.opened = true;
        ch._opened(this);
      } else {
        ch._alive(this);
      }
      for (const event of Array.isArray(events) ? events : []) {
        if (this.done) return;
        ch._event(this, event);
      }
      if (ch.options.pollInterval > 0 && !this.done) {
        await new Promise((resolve) => {
          this.pause = ch._setTimeout(resolve, ch.options.pollInterval);
        });
      }
    }
  }

  ping() {
    /* every poll is answered within `wait`: a poll that is not is the dead connection */
  }

  /** Leaves at once rather than after the server's poll timeout. */
  leave() {
    const ch = this.channel;
    ch.options
      .fetch(withParams(ch.urls.longPoll, { client: ch.clientId }), { method: "DELETE", keepalive: true })
      .catch(() => {});
  }
}

const MAKERS = { websocket: WebSocketTransport, sse: SseTransport, longpoll: LongPollTransport };

// ---------------------------------------------------------------------------------------------

/**
 * @typedef {object} ChannelOptions
 * @property {string} [url] the consumer's WebSocket URL: `ws://`, `wss://`, `http(s)://` or a
 *   path relative to the page (`/ws/chat/lobby/?user=ann`).
 * @property {string} [sse] server-sent events URL (fallback; needs `post`).
 * @property {string} [longPoll] long-poll URL (fallback; needs `post`); `client=ID&wait=SECS`
 *   are added, and `DELETE` on it with `client=ID` leaves.
 * @property {string} [post] where the HTTP transports POST what `send` sends (JSON body).
 * @property {string[]} [transports] the order to try them; default: those given a URL, in the
 *   order websocket, sse, longpoll. `["sse"]` forces one.
 * @property {Partial<typeof DEFAULTS.reconnect>} [reconnect]
 * @property {Partial<typeof DEFAULTS.heartbeat>|false} [heartbeat] false turns it off.
 * @property {number} [queueSize]
 * @property {number} [openTimeout]
 * @property {number} [upgradeAfter]
 * @property {number} [longPollWait]
 * @property {number} [pollInterval]
 * @property {string} [clientId] the long-poll client ID (default: random, kept for the
 *   channel's life); keep it across page reloads to carry on with the server's queue.
 * @property {number} [refuseAfter]
 * @property {string} [sinceParam]
 * @property {string|null} [since] the position to start from.
 * @property {(message:any) => string|null} [position] reads a message's position (default
 *   `epochOffset`); null for messages without one.
 * @property {(message:any) => boolean} [isUnrecovered] default `isUnrecovered`.
 * @property {(code:number) => boolean} [shouldReconnect] for a WebSocket the server closed
 *   with `code`; default: every code but 1000.
 * @property {string|null} [idKey] the key of a message's ID (`"id"`); when set, `send` gives
 *   each object without one a random ID, and keeps it until a received message carries the
 *   same ID: a reconnect sends again, in order, what was not confirmed. Default null: off.
 * @property {boolean} [autoConnect] default true: connects at once.
 * @property {typeof WebSocket} [WebSocket] default `globalThis.WebSocket`.
 * @property {typeof fetch} [fetch] default `globalThis.fetch`.
 */

/**
 * A connection to one consumer that stays up by itself. Events (subscribe with `on`):
 *
 * | event | detail |
 * |---|---|
 * | `state` | `{state, previous}`: `idle`, `connecting`, `open`, `reconnecting`, `closed` |
 * | `connecting` | `{transport, attempt}` |
 * | `open` | `{transport, resumed, upgraded}`: `resumed` when a position was sent |
 * | `message` | each JSON event the server sent, parsed |
 * | `unrecovered` | the server could not resume from the position sent (also a `message`) |
 * | `disconnected` | `{transport, code, reason}`: an open connection was lost |
 * | `fallback` | `{from, to, reason}`: the next transport is tried |
 * | `reconnecting` | `{delay, attempt, reason}`: the next attempt starts in `delay` ms |
 * | `refused` | `{transport, status, reason}`: the server refuses; no more attempts |
 * | `unsent` | `{messages, reason}`: what `send` was given and will not be sent (or, with
 *   `idKey`, was sent but not confirmed when the channel closed) |
 * | `closed` | `{code, reason, refused}`: final; no more attempts |
 * | `error` | `{error, transport}`: something not fatal (a frame that is not JSON) |
 */
export class Channel {
  /** @param {ChannelOptions} options */
  constructor(options = {}) {
    const reconnect = Object.assign({}, DEFAULTS.reconnect, options.reconnect || {});
    const heartbeat =
      options.heartbeat === false ? false : Object.assign({}, DEFAULTS.heartbeat, options.heartbeat || {});
    this.options = Object.assign({}, DEFAULTS, options, { reconnect, heartbeat });
    if (!this.options.WebSocket) this.options.WebSocket = globalThis.WebSocket;
    if (!this.options.fetch) this.options.fetch = globalThis.fetch && globalThis.fetch.bind(globalThis);
    if (!this.options.position) this.options.position = epochOffset;
    if (!this.options.isUnrecovered) this.options.isUnrecovered = isUnrecovered;
    if (!this.options.shouldReconnect) this.options.shouldReconnect = (code) => code !== 1000;

    this.urls = {};
    if (options.url) this.urls.websocket = resolve(options.url, true);
    if (options.sse) this.urls.sse = resolve(options.sse, false);
    if (options.longPoll) this.urls.longPoll = resolve(options.longPoll, false);
    if (options.post) this.urls.post = resolve(options.post, false).href;
    const available = TRANSPORTS.filter((name) => {
      if (name === "websocket") return !!this.urls.websocket;
      if (name === "sse") return !!this.urls.sse && !!this.urls.post;
      return !!this.urls.longPoll && !!this.urls.post;
    });
    const wanted = options.transports ? options.transports.filter((name) => available.includes(name)) : available;
    if (!wanted.length) {
      throw new Error("channels.js: no transport: give `url`, or `sse`/`longPoll` with `post`");
    }
    /** @type {string[]} */
    this.transports = wanted;
    this.clientId = options.clientId || randomId();

    this._listeners = new Map();
    this._state = "idle";
    this._current = null;
    this._index = 0;
    this._attempt = 0;
    this._failedOpens = 0;
    this._queue = [];
    /** With `idKey`: messages sent or queued whose ID has not come back, by ID, in order. */
    this._unconfirmed = new Map();
    this._position = options.since || null;
    this._seen = new Set();
    this._seenOrder = [];
    this._timers = { retry: null, heartbeat: null, open: null, stable: null, upgrade: null };
    this._pinged = false;
    this._probe = null;
    if (this.options.autoConnect !== false) this.connect();
  }

  /** `idle`, `connecting`, `open`, `reconnecting` or `closed`. */
  get state() {
    return this._state;
  }

  /** The transport of the open connection (`websocket`, `sse`, `longpoll`), or null. */
  get transport() {
    return this._state === "open" && this._current ? this._current.name : null;
  }

  /** The position of the last message seen: what a reconnect resumes from. */
  get position() {
    return this._position;
  }

  /** Messages waiting for a connection. */
  get queued() {
    return this._queue.length;
  }

  /** With `idKey`: messages sent or queued whose ID has not come back yet. */
  get unconfirmed() {
    return this._unconfirmed.size;
  }

  /**
   * With `idKey`: copies of the messages sent or queued whose ID has not come back, oldest
   * first. A page can keep them across a reload (in `sessionStorage`, say) and `send` them
   * again: they keep their IDs, so a server that has them already can drop the copies.
   * @returns {any[]}
   */
  unconfirmedMessages() {
    return Array.from(this._unconfirmed.values(), (data) => JSON.parse(JSON.stringify(data)));
  }

  /**
   * Listens to an event; returns a function that stops listening.
   * @param {string} type
   * @param {(detail:any) => void} listener
   * @returns {() => void}
   */
  on(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this.off(type, listener);
  }

  /** Stops listening. */
  off(type, listener) {
    const set = this._listeners.get(type);
    if (set) set.delete(listener);
  }

  _emit(type, detail) {
    const set = this._listeners.get(type);
    if (!set) return;
    for (const listener of Array.from(set)) {
      try {
        listener(detail);
      } catch (error) {
        // A listener's bug must not break the connection.
        if (globalThis.console) console.error("channels.js: a `" + type + "` listener failed", error);
      }
    }
  }

  _setState(state) {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this._emit("state", { state, previous });
  }

  _setTimeout(fn, ms) {
    return setTimeout(fn, ms);
  }

  _clearTimeout(timer) {
    if (timer !== null) clearTimeout(timer);
  }

  _clear(name) {
    this._clearTimeout(this._timers[name]);
    this._timers[name] = null;
  }

  /** Starts connecting (again, after `close`); does nothing while connecting or open. */
  connect() {
    if (this._state === "connecting" || this._state === "open") return;
    this._clear("retry");
    this._attempt = 0;
    this._failedOpens = 0;
    this._start(0);
  }

  _start(index) {
    this._clear("retry");
    this._index = index;
    const name = this.transports[index];
    const transport = new MAKERS[name](this, this._position);
    this._current = transport;
    this._setState("connecting");
    this._emit("connecting", { transport: name, attempt: this._attempt });
    this._timers.open = this._setTimeout(() => {
      if (this._current === transport && !transport.opened) {
        transport.stop(4000, "open timeout");
        this._lost(transport, { opened: false, reason: "not open after " + this.options.openTimeout + " ms" });
      }
    }, this.options.openTimeout);
    transport.start();
  }

  /**
   * Sends `data` as JSON: at once when open, otherwise queued (at most `queueSize`) and sent
   * in order on the next open. Returns false, and emits `unsent`, when it will not be sent.
   * With `idKey`, an object is kept until its ID comes back (one is added to a copy when it
   * has none), at most `queueSize` of them; `{confirm: false}` sends it once, untracked.
   * @param {any} data
   * @param {{confirm?: boolean}} [options]
   * @returns {boolean}
   */
  send(data, options = {}) {
    if (this._state === "closed") {
      this._emit("unsent", { messages: [data], reason: "the channel is closed" });
      return false;
    }
    const key = this.options.idKey;
    const tracked = !!key && options.confirm !== false && !!data && typeof data === "object" && !Array.isArray(data);
    if (tracked) {
      if (this._unconfirmed.size >= this.options.queueSize) {
        const reason = "too many messages not confirmed yet (" + this.options.queueSize + ")";
        this._emit("unsent", { messages: [data], reason });
        return false;
      }
      if (typeof data[key] !== "string" || !data[key]) data = Object.assign({}, data, { [key]: messageId() });
      if (this._unconfirmed.has(data[key])) return true; // the same message again: sent once
    }
    if (this._state === "open" && this._queue.length === 0 && this._current.ready()) {
      if (tracked) this._unconfirmed.set(data[key], data);
      this._transmit(this._current, data);
      return true;
    }
    if (this._queue.length >= this.options.queueSize) {
      this._emit("unsent", { messages: [data], reason: "the offline queue is full (" + this.options.queueSize + ")" });
      return false;
    }
    if (tracked) this._unconfirmed.set(data[key], data);
    this._queue.push(data);
    return true;
  }

  _transmit(transport, data) {
    let text;
    try {
      text = JSON.stringify(data);
    } catch (error) {
      const id = this._trackedId(data);
      if (id !== null) this._unconfirmed.delete(id);
      this._emit("unsent", { messages: [data], reason: "not JSON: " + describe(error) });
      return;
    }
    transport.send(text).then((result) => {
      if (result.ok) return;
      const id = this._trackedId(data);
      // A POST cut off by the network may or may not have arrived: a tracked message is sent
      // again on the next connection (the server drops it if it had it).
      if (id !== null && result.status === 0 && this._state !== "closed") return;
      if (id !== null) this._unconfirmed.delete(id);
      this._emit("unsent", { messages: [data], reason: result.reason, status: result.status });
    });
  }

  /** The ID of `data` when it is a message waiting for its confirmation, otherwise null. */
  _trackedId(data) {
    const key = this.options.idKey;
    if (!key || !data || typeof data !== "object") return null;
    const id = data[key];
    return typeof id === "string" && this._unconfirmed.get(id) === data ? id : null;
  }

  /** A new connection: what was sent on an earlier one and not confirmed goes first, in order. */
  _resend() {
    if (!this._unconfirmed.size) return;
    const queued = new Set(this._queue);
    const again = Array.from(this._unconfirmed.values()).filter((data) => !queued.has(data));
    this._queue.unshift(...again);
  }

  _flush() {
    while (this._queue.length && this._state === "open" && this._current.ready()) {
      this._transmit(this._current, this._queue.shift());
    }
  }

  /**
   * Closes for good (until `connect`): no reconnect; queued messages are reported `unsent`.
   * @param {number} [code]
   * @param {string} [reason]
   */
  close(code = 1000, reason = "") {
    this._finish({ code, reason, refused: false });
  }

  _finish(detail) {
    if (this._state === "closed") return;
    for (const name of Object.keys(this._timers)) this._clear(name);
    const transport = this._current;
    this._current = null;
    if (transport) {
      transport.stop(detail.code >= 1000 && detail.code < 5000 && detail.code !== 1006 ? detail.code : 1000, "");
      if (transport.leave && transport.opened) transport.leave();
    }
    if (this._probe) {
      this._probe.stop();
      this._probe = null;
    }
    this._setState("closed");
    // Sent but not confirmed (they may have arrived), then never sent.
    const queued = new Set(this._queue);
    const unconfirmed = Array.from(this._unconfirmed.values()).filter((data) => !queued.has(data));
    this._unconfirmed.clear();
    if (unconfirmed.length) {
      this._emit("unsent", { messages: unconfirmed, reason: "sent but not confirmed before the channel closed (it may have arrived)" });
    }
    if (this._queue.length) {
      const messages = this._queue.splice(0);
      this._emit("unsent", { messages, reason: detail.reason || "the channel is closed" });
    }
    this._emit("closed", detail);
  }

  // ----- reports from transports -----

  _opened(transport) {
    if (transport === this._probe) {
      this._adopt(transport);
      return;
    }
    if (transport !== this._current) return;
    this._clear("open");
    this._failedOpens = 0;
    this._setState("open");
    this._emit("open", { transport: transport.name, resumed: !!transport.since, upgraded: false });
    this._timers.stable = this._setTimeout(() => {
      this._attempt = 0;
    }, this.options.reconnect.stableAfter);
    this._beat();
    this._scheduleUpgrade();
    this._resend();
    this._flush();
  }

  _data(transport, text) {
    let event;
    try {
      event = JSON.parse(text);
    } catch (error) {
      if (transport === this._current) this._emit("error", { error: "not JSON: " + describe(error), transport: transport.name });
      return;
    }
    this._event(transport, event);
  }

  _event(transport, event) {
    if (transport !== this._current) return;
    this._beat();
    let key = null;
    try {
      key = this.options.position(event);
    } catch (_) {
      key = null;
    }
    if (this.options.isUnrecovered(event)) {
      // Resume from the server's current position from now on (when it gave one).
      this._position = typeof key === "string" && key ? key : null;
      this._emit("unrecovered", event);
      this._emit("message", event);
      return;
    }
    if (typeof key === "string" && key) {
      // Seen already (a replay that overlaps what a previous connection delivered): dropped.
      if (this._seen.has(key)) return;
      this._seen.add(key);
      this._seenOrder.push(key);
      if (this._seenOrder.length > 1000) this._seen.delete(this._seenOrder.shift());
      this._position = key;
    }
    const idKey = this.options.idKey;
    if (idKey && event && typeof event[idKey] === "string") this._unconfirmed.delete(event[idKey]);
    this._emit("message", event);
  }

  _alive(transport) {
    if (transport === this._current) this._beat();
  }

  /** Heard from the server: the next check is `interval` from now. */
  _beat() {
    const heartbeat = this.options.heartbeat;
    if (!heartbeat || !this._current || this._current.name === "longpoll") return;
    this._clear("heartbeat");
    this._pinged = false;
    const transport = this._current;
    this._timers.heartbeat = this._setTimeout(() => {
      if (transport !== this._current) return;
      this._pinged = true;
      transport.ping();
      this._timers.heartbeat = this._setTimeout(() => {
        if (transport !== this._current) return;
        transport.stop(4000, "heartbeat timeout");
        this._lost(transport, {
          opened: true,
          reason: "no answer from the server within " + (heartbeat.interval + heartbeat.timeout) + " ms",
        });
      }, heartbeat.timeout);
    }, heartbeat.interval);
  }

  _lost(transport, info) {
    if (transport === this._probe) {
      this._probe = null;
      this._scheduleUpgrade();
      return;
    }
    if (transport !== this._current || this._state === "closed") return;
    transport.stop(4000, "");
    this._current = null;
    for (const name of ["open", "heartbeat", "stable", "upgrade"]) this._clear(name);
    if (this._probe) {
      this._probe.stop();
      this._probe = null;
    }
    const name = transport.name;
    if (info.opened) {
      this._emit("disconnected", { transport: name, code: info.code, reason: info.reason });
    }
    if (info.refused) {
      this._refuse(name, info.status, info.reason);
      return;
    }
    if (info.serverClosed && info.code !== undefined && !this.options.shouldReconnect(info.code)) {
      this._finish({ code: info.code, reason: info.reason, refused: false });
      return;
    }
    if (!info.opened && this._index + 1 < this.transports.length) {
      const to = this.transports[this._index + 1];
      this._emit("fallback", { from: name, to, reason: info.reason });
      this._start(this._index + 1);
      return;
    }
    if (!info.opened && name === "websocket" && this.transports.length === 1) {
      this._checkRefusal(info.reason);
      return;
    }
    this._retry(info.reason);
  }

  /**
   * A WebSocket that did not open, with nothing to fall back to: browsers do not say why, so
   * ask the server over HTTP. No answer: it is down, retry. 404: no such endpoint. An answer,
   * `refuseAfter` times in a row: it refuses the handshake (a consumer's `deny`).
   */
  _checkRefusal(reason) {
    const url = resolve(this.urls.websocket.href, false).href;
    this._setState("reconnecting");
    Promise.resolve()
      .then(() => this.options.fetch(url, { cache: "no-store" }))
      .then(
        (response) => {
          if (this._state !== "reconnecting" || this._current) return;
          this._failedOpens += 1;
          if (response.status === 404) {
            this._refuse("websocket", 404, "no such endpoint");
          } else if (this._failedOpens >= this.options.refuseAfter) {
            this._refuse(
              "websocket",
              response.status,
              "the server answers but refused the WebSocket " + this._failedOpens + " times in a row",
            );
          } else {
            this._retry(reason);
          }
        },
        () => {
          if (this._state !== "reconnecting" || this._current) return;
          this._failedOpens = 0;
          this._retry(reason);
        },
      );
  }

  _refuse(transport, status, reason) {
    this._emit("refused", { transport, status: status || 0, reason });
    this._finish({ code: 4403, reason: reason || "refused", refused: true });
  }

  _retry(reason) {
    const reconnect = this.options.reconnect;
    if (this._attempt >= reconnect.maxAttempts) {
      this._finish({ code: 4001, reason: "gave up after " + this._attempt + " attempts: " + reason, refused: false });
      return;
    }
    const delay = backoffDelay(this._attempt, reconnect);
    this._attempt += 1;
    this._setState("reconnecting");
    this._emit("reconnecting", { delay, attempt: this._attempt, reason });
    this._clear("retry");
    this._timers.retry = this._setTimeout(() => {
      this._timers.retry = null;
      if (this._state === "reconnecting") this._start(0);
    }, delay);
  }

  /** Reconnects now, skipping the wait (a "retry now" button). */
  reconnectNow() {
    if (this._state !== "reconnecting") return;
    this._clear("retry");
    this._start(0);
  }

  // ----- back up to the WebSocket -----

  _scheduleUpgrade() {
    this._clear("upgrade");
    const current = this._current;
    if (!current || current.name === "websocket" || this.transports[0] !== "websocket") return;
    if (!(this.options.upgradeAfter > 0)) return;
    this._timers.upgrade = this._setTimeout(() => {
      this._timers.upgrade = null;
      if (this._state !== "open" || this._current !== current || this._probe) return;
      // Opened beside the current transport; adopted once open, forgotten if it fails.
      const probe = new WebSocketTransport(this, this._position);
      this._probe = probe;
      probe.start();
      this._timers.upgrade = this._setTimeout(() => {
        this._timers.upgrade = null;
        if (this._probe === probe && !probe.opened) {
          probe.stop(4000, "open timeout");
          this._lost(probe, { opened: false, reason: "not open after " + this.options.openTimeout + " ms" });
        }
      }, this.options.openTimeout);
    }, this.options.upgradeAfter);
  }

  _adopt(socket) {
    const old = this._current;
    this._probe = null;
    this._current = socket;
    this._index = 0;
    for (const name of ["open", "heartbeat", "upgrade"]) this._clear(name);
    if (old) {
      old.stop();
      if (old.leave) old.leave();
    }
    this._emit("open", { transport: "websocket", resumed: !!socket.since, upgraded: true });
    this._beat();
    this._resend();
    this._flush();
  }
}

/**
 * Connects to a consumer: `new Channel(options)`.
 * @param {ChannelOptions} options
 * @returns {Channel}
 */
export function connect(options) {
  return new Channel(options);
}
