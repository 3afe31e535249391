// Shared by the approval pages: the JSON API, the signed-in user, WebSockets that reconnect
// (and stop for good when the server refuses them),
// and a DOM builder that only ever sets text (user data is never parsed as HTML).
'use strict';

const App = {
  STATUS: {
    pending: '待审批 Pending',
    rejected: '已驳回 Rejected',
    approved: '已通过 Approved',
    deploying: '部署中 Deploying',
    deployed: '已部署 Deployed',
    deploy_failed: '部署失败 Deploy failed',
  },
  COLORS: {
    pending: '#2f6fde', rejected: '#d64545', approved: '#2e9e5b',
    deploying: '#f0a020', deployed: '#1d7a46', deploy_failed: '#a61b1b',
  },

  /** `el('td', {className: 'x'}, 'text', child)`: children are text or elements. */
  el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === 'string' || typeof child === 'number' ? document.createTextNode(String(child)) : child);
    }
    return node;
  },

  badge(status) {
    return App.el('span', { className: 'badge ' + status, dataset: { status } }, App.STATUS[status] || status);
  },

  time(ms) {
    return new Date(ms).toLocaleString();
  },

  /** Calls the JSON API; throws an Error carrying the server's message on failure. */
  async api(path, { method = 'GET', body } = {}) {
    const init = { method, credentials: 'same-origin', headers: {} };
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(data.error || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return data;
  },

  /** The signed-in user; sends the browser to the sign-in page when there is none. */
  async requireUser() {
    const me = await App.api('/api/me');
    if (!me.user) {
      location.href = '/login/?next=' + encodeURIComponent(location.pathname);
      return new Promise(() => {}); // the page is going away

    }
    App.user = me.user;
    const who = document.getElementById('who');
    if (who) who.textContent = `${me.user.display_name} (${me.user.role})`;
    const out = document.getElementById('logout');
    if (out) {
      out.addEventListener('click', async () => {
        await App.api('/api/logout', { method: 'POST', body: {} });
        location.href = '/login/';
      });
    }
    return me.user;
  },

  /**
   * Opens a WebSocket on `path` that reconnects by itself, with an event interface: `on(type,
   * fn)` for `open`, `message` (each JSON frame, parsed), `state` (`{state}`: `connecting`,
   * `open`, `reconnecting`, `closed`) and `closed` (`{reason}`: final). `send(value)` sends
   * at once and returns true, or returns false when the socket is not open (nothing is queued:
   * the caller keeps what it could not send). `options.refused`, when given, is asked after
   * every attempt that could not open: a string it resolves to is why the server will never
   * accept (the socket stops and closes with that reason), null means "try again".
   */
  socket(path, options = {}) {
    const conn = document.getElementById('conn');
    const listeners = {};
    const emit = (type, detail) => (listeners[type] || []).forEach((fn) => fn(detail));
    let ws = null;
    let delay = 500;
    let retry = null;
    const handle = {
      state: 'connecting',
      on(type, fn) { (listeners[type] ||= []).push(fn); return handle; },
      send(value) {
        if (handle.state !== 'open' || !ws || ws.readyState !== 1) return false;
        ws.send(JSON.stringify(value));
        return true;
      },
      close(reason) { finish(reason || 'closed'); },
    };
    const setState = (state) => {
      if (handle.state === state) return;
      handle.state = state;
      if (conn) {
        conn.textContent = { open: '● live', connecting: '○ connecting…', reconnecting: '○ reconnecting…', closed: '✕ not connected' }[state];
        conn.className = 'conn ' + (state === 'open' ? 'live' : 'down');
        conn.dataset.state = state;
      }
      emit('state', { state });
    };
    const finish = (reason) => {
      if (handle.state === 'closed') return;
      clearTimeout(retry);
      if (ws) { ws.onclose = null; ws.close(); ws = null; }
      setState('closed');
      emit('closed', { reason });
    };
    const open = () => {
      let opened = false;
      const socket = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + path);
      ws = socket;
      socket.onopen = () => { opened = true; delay = 500; setState('open'); emit('open', {}); };
      socket.onmessage = (message) => {
        let event;
        try { event = JSON.parse(message.data); } catch (err) { console.error('bad event', err); return; }
        emit('message', event);
      };
      socket.onclose = async () => {
        if (ws !== socket || handle.state === 'closed') return;
        ws = null;
        setState('reconnecting');
        if (!opened && options.refused) {
          const reason = await options.refused().catch(() => null);
          if (reason) { finish(reason); return; }
        }
        if (handle.state === 'closed') return;
        retry = setTimeout(open, delay * (0.5 + Math.random() / 2));
        delay = Math.min(delay * 2, 8000);
      };
    };
    setState('connecting');
    open();
    return handle;
  },
};
