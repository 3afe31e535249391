// Shared by the approval pages: the JSON API, the signed-in user, the connection indicator
// (the pages' sockets are channels.js `Channel`s, served at /static/channels.js), and a DOM
// builder that only ever sets text (user data is never parsed as HTML).
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
   * Shows a channels.js `Channel`'s state in the header's `#conn` (its `data-state` is the
   * channel's state, for tests).
   */
  showConnection(channel) {
    const conn = document.getElementById('conn');
    const show = ({ state }) => {
      if (!conn) return;
      conn.textContent = { idle: '', connecting: '○ connecting…', open: '● live', reconnecting: '○ reconnecting…', closed: '✕ not connected' }[state];
      conn.className = 'conn ' + (state === 'open' ? 'live' : 'down');
      conn.dataset.state = state;
    };
    show({ state: channel.state });
    channel.on('state', show);
  },
};
