// Shared by the approval pages: the JSON API, the signed-in user, WebSockets that reconnect,
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

  /** Opens a WebSocket on `path`, hands each JSON frame to `onEvent`, reconnects when it drops. */
  socket(path, onEvent) {
    const status = document.getElementById('conn');
    const show = (text, live) => {
      if (!status) return;
      status.textContent = text;
      status.className = 'conn ' + (live ? 'live' : 'down');
    };
    let delay = 500;
    const handle = { ws: null, send: (value) => handle.ws && handle.ws.readyState === 1 && handle.ws.send(JSON.stringify(value)) };
    const open = () => {
      const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + path);
      handle.ws = ws;
      ws.onopen = () => { delay = 500; show('● live', true); };
      ws.onmessage = (message) => {
        try { onEvent(JSON.parse(message.data)); } catch (err) { console.error('bad event', err); }
      };
      ws.onclose = (event) => {
        show('○ reconnecting…', false);
        setTimeout(open, delay);
        delay = Math.min(delay * 2, 8000);
      };
    };
    open();
    return handle;
  },
};
