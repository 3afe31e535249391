// One ticket: its flowchart (cytoscape), history and the actions the signed-in user may take.
// The WebSocket /ws/tickets/{id}/ sends the whole ticket whenever anything changes, to every
// page showing it; actions go back over the same socket. The server decides who may do what:
// the buttons shown here are only a convenience.
//
// The socket is a channels.js `Channel`: it reconnects by itself, and queues what is sent
// while it is down. An action is never lost silently: it carries a request id, the buttons stay
// disabled and the comment stays (read-only) until the server answers; pressed while the
// socket is down, it waits in the channel's queue and goes out when the socket is back; sent
// but unanswered when the socket dropped, it is sent again after the reconnect (the server
// applies one request id once). A refusal, or a channel that gives up, shows why and keeps
// the comment for another try.
import { Channel } from '/static/channels.js';

const COLORS = { done: '#2e9e5b', current: '#2f6fde', running: '#f0a020', pending: '#c8ccd2', rejected: '#d64545', failed: '#d64545' };
const SHAPES = { start: 'ellipse', end: 'ellipse', approval: 'round-rectangle', deploy: 'round-rectangle' };
const ticketId = Number(location.pathname.split('/').filter(Boolean)[1]);
let cy = null;
let layoutKey = '';
let ticket = null;

const SIZES = { start: [64, 40], end: [64, 40], approval: [124, 60], deploy: [100, 48] };
const GAP = 60; // room for a link's label between two columns
const LANE = 64; // between the rows of one column (the servers)
const ROW_GAP = 56; // between two rows of columns, room for the link that wraps
const PADDING = 16;
const FONT_PX = 12;
// Labels are never drawn smaller than 11 px: the layout wraps into rows rather than shrink.
const MIN_ZOOM = 11 / FONT_PX;
const MAX_ZOOM = 1.3;
const FONTS = getComputedStyle(document.documentElement).getPropertyValue('--fonts').trim() || 'sans-serif';

/**
 * Left to right, one column per rank, each as wide as its widest node; lanes stacked. When
 * the columns do not fit `width` at full size, they wrap into rows of about equal width, so
 * the whole flowchart stays visible with readable labels (a row wider than `width`, left when
 * the page is narrower than a fan-out, is shrunk down to MIN_ZOOM at most).
 */
function layout(nodes, width) {
  const widths = [];
  const heights = [];
  const lanes = [];
  for (const n of nodes) {
    const [w, h] = SIZES[n.kind];
    widths[n.rank] = Math.max(widths[n.rank] || 0, w);
    heights[n.rank] = Math.max(heights[n.rank] || 0, h + (n.lanes - 1) * LANE);
    lanes[n.rank] = Math.max(lanes[n.rank] || 1, n.lanes);
  }
  // A row ends only where one link goes on to the next row: never inside a fan-out (the
  // servers), whose links would run over each other.
  const mayBreakBefore = (rank) => lanes[rank] === 1 && lanes[rank - 1] === 1;
  const ranks = widths.map((w, rank) => rank).filter((rank) => widths[rank]);
  const rowWidth = (row) => row.reduce((sum, rank) => sum + widths[rank], 0) + GAP * (row.length - 1);
  // Runs of columns that must stay on one row; rows are filled with whole runs.
  const runs = [];
  for (const rank of ranks) {
    if (runs.length && !mayBreakBefore(rank)) runs[runs.length - 1].push(rank);
    else runs.push([rank]);
  }
  const split = (limit) => {
    const rows = [];
    let row = null;
    let x = 0;
    for (const run of runs) {
      const w = rowWidth(run);
      if (row && x + GAP + w > limit) {
        rows.push(row);
        row = null;
      }
      if (row) {
        row.push(...run);
        x += GAP + w;
      } else {
        row = [...run];
        x = w;
      }
    }
    if (row) rows.push(row);
    return rows;
  };
  let rows = split(width);
  if (rows.length > 1) {
    // The same number of rows, balanced: the fewest columns left for the last row.
    const total = rowWidth(ranks);
    const balanced = split(total / rows.length + Math.max(...widths.filter(Boolean)));
    if (balanced.length <= rows.length && balanced.every((row) => rowWidth(row) <= width)) rows = balanced;
  }
  const centers = [];
  const rowOf = [];
  let y = 0;
  rows.forEach((row, index) => {
    const height = Math.max(...row.map((rank) => heights[rank]));
    let x = 0;
    for (const rank of row) {
      centers[rank] = { x: x + widths[rank] / 2, y: y + height / 2 };
      rowOf[rank] = index;
      x += widths[rank] + GAP;
    }
    y += height + ROW_GAP;
  });
  return {
    rows: rows.map((row) => row.join('.')).join('/'),
    height: y - ROW_GAP,
    row: (n) => rowOf[n.rank],
    position: (n) => ({ x: centers[n.rank].x, y: centers[n.rank].y + (n.lane - (n.lanes - 1) / 2) * LANE }),
  };
}

/** "下载代码 Download" → "下载代码\nDownload": the Chinese and English names on two lines. */
function nodeLabel(label) {
  return label.replace(' ', '\n');
}

function drawGraph(graph, resized = false) {
  const container = document.getElementById('graph');
  const plan = layout(graph.nodes, container.clientWidth - 2 * PADDING);
  const key = graph.nodes.map((n) => n.id).join(',') + '|' + plan.rows;
  if (cy && key === layoutKey) {
    if (resized) {
      cy.resize();
      cy.fit(undefined, PADDING);
    }
    // Same shape: change colors and labels in place, as GoJS's setDataProperty does.
    cy.batch(() => {
      for (const n of graph.nodes) cy.getElementById(n.id).data({ state: n.state, color: COLORS[n.state], label: nodeLabel(n.label) });
      for (const e of graph.edges) {
        cy.getElementById(`${e.source}->${e.target}`).data({ state: e.state, label: e.label, color: COLORS[e.state] });
      }
    });
    return;
  }
  layoutKey = key;
  // As tall as the rows at full size: the fit below then never has to shrink the labels.
  container.style.height = `${Math.max(160, plan.height + 2 * PADDING + 24)}px`;
  const rowOf = Object.fromEntries(graph.nodes.map((n) => [n.id, plan.row(n)]));
  const elements = [
    ...graph.nodes.map((n) => ({
      group: 'nodes',
      data: {
        id: n.id, label: nodeLabel(n.label), state: n.state, color: COLORS[n.state],
        shape: SHAPES[n.kind] || 'round-rectangle', width: SIZES[n.kind][0], height: SIZES[n.kind][1],
      },
      position: plan.position(n),
    })),
    ...graph.edges.map((e) => ({
      group: 'edges',
      data: {
        id: `${e.source}->${e.target}`, source: e.source, target: e.target, label: e.label, state: e.state,
        color: COLORS[e.state], wraps: rowOf[e.source] !== rowOf[e.target],
      },
    })),
  ];
  if (cy) cy.destroy();
  cy = cytoscape({
    container,
    elements,
    layout: { name: 'preset', fit: true, padding: PADDING },
    minZoom: MIN_ZOOM,
    maxZoom: MAX_ZOOM,
    userZoomingEnabled: true,
    boxSelectionEnabled: false,
    autoungrabify: true,
    style: [
      { selector: 'node', style: {
        shape: 'data(shape)', 'background-color': 'data(color)', label: 'data(label)', color: '#fff',
        'text-valign': 'center', 'text-halign': 'center', 'text-wrap': 'wrap', 'text-max-width': '120px',
        'font-size': FONT_PX, 'font-family': FONTS, width: 'data(width)', height: 'data(height)', 'border-width': 2, 'border-color': '#ffffff',
      } },
      { selector: 'node[state = "pending"]', style: { color: '#3e4c59' } },
      { selector: 'node[state = "running"], node[state = "current"]', style: { 'border-color': '#1f2933', 'border-width': 3 } },
      { selector: 'edge', style: {
        'curve-style': 'bezier', width: 2, 'line-color': '#b8c2cc', 'target-arrow-color': '#b8c2cc',
        'target-arrow-shape': 'triangle', label: 'data(label)', 'font-size': FONT_PX, 'font-family': FONTS, color: '#1f2933',
        'text-background-color': '#fbfcfd', 'text-background-opacity': 1, 'text-background-padding': 2,
        'text-rotation': 'autorotate', 'text-margin-y': -9, 'font-weight': 600,
      } },
      // A link from the end of one row to the start of the next: down, across, down.
      { selector: 'edge[?wraps]', style: { 'curve-style': 'taxi', 'taxi-direction': 'downward', 'taxi-turn': ROW_GAP / 2, 'text-rotation': 'none' } },
      { selector: 'edge[state = "done"]', style: { 'line-color': '#2e9e5b', 'target-arrow-color': '#2e9e5b' } },
      { selector: 'edge[state = "running"], edge[state = "current"]', style: {
        'line-color': 'data(color)', 'target-arrow-color': 'data(color)', 'line-style': 'dashed', width: 3 } },
      { selector: 'edge[state = "rejected"], edge[state = "failed"]', style: { 'line-color': '#d64545', 'target-arrow-color': '#d64545' } },
    ],
  });
}

// The canvas draws with the fonts loaded when it draws: once a font arrives (the Chinese
// subset, on a machine without a CJK font), draw the labels again.
document.fonts.addEventListener('loadingdone', () => { if (cy) cy.style().update(); });

// A narrower or wider window may need another number of rows.
let resizeTimer = null;
window.addEventListener('resize', () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => { if (ticket) drawGraph(ticket.graph, true); }, 150);
});

// The running links' dashes move, so a running step is visible at a glance.
setInterval(() => {
  if (!cy) return;
  const offset = (Date.now() / 40) % 24;
  cy.edges('[state = "running"], [state = "current"]').style('line-dash-offset', -offset);
}, 60);

const HISTORY = {
  submit: '提交 submitted', approve: '通过 approved', reject: '驳回 rejected', resubmit: '重新提交 resubmitted',
  retry: '重试 retried the deployment', deployed: '部署完成 deployment finished', deploy_failed: '部署失败 deployment failed',
};

function render(t) {
  ticket = t;
  document.title = `#${t.id} ${t.title} · 工单审批`;
  document.getElementById('title').textContent = `#${t.id} ${t.title}`;
  document.getElementById('status').replaceChildren(App.badge(t.status));
  document.getElementById('meta').textContent =
    `${t.workflow.name} · requested by ${t.requester.display_name} · ${App.time(t.created_at)}`;
  document.getElementById('body').textContent = t.body || '(no description)';

  drawGraph(t.graph);
  document.getElementById('nodes').replaceChildren(...t.graph.nodes.map((n) =>
    App.el('li', { dataset: { node: n.id, state: n.state } }, n.label.replace('\n', ' · '))));

  document.getElementById('history').replaceChildren(...t.history.map((h) =>
    App.el('li', { dataset: { decision: h.decision } },
      App.el('strong', {}, h.actor), ' ',
      HISTORY[h.decision] || h.decision,
      h.step ? ` · ${h.step}` : '', ' ',
      App.el('span', { className: 'muted' }, App.time(h.at)),
      h.comment ? App.el('div', { className: 'comment' }, h.comment) : null)));

  const me = App.user;
  const step = t.workflow.steps.find((s) => s.position === t.current_step);
  const mayDecide = t.status === 'pending' && step && step.approver_ids.includes(me.id);
  const mayRetry = t.status === 'deploy_failed' && t.retry_ids.includes(me.id);
  const mayResubmit = t.status === 'rejected' && t.requester.id === me.id;
  // An action on its way keeps its box (and the words typed in it) until the server answers.
  const keep = pending ? pending.box : null;
  document.getElementById('decide').classList.toggle('hidden', !mayDecide && keep !== 'decide');
  document.getElementById('retry-box').classList.toggle('hidden', !mayRetry && keep !== 'retry-box');
  const resubmit = document.getElementById('resubmit-box');
  if (mayResubmit && resubmit.classList.contains('hidden')) {
    document.getElementById('edit-title').value = t.title;
    document.getElementById('edit-body').value = t.body;
  }
  resubmit.classList.toggle('hidden', !mayResubmit && keep !== 'resubmit-box');
  let waiting = '';
  if (t.status === 'pending' && step && !mayDecide) waiting = `Waiting for ${step.approver} (${step.name}).`;
  else if (t.status === 'deploying') waiting = 'Deploying…';
  else if (t.status === 'deployed') waiting = 'Approved and deployed.';
  else if (t.status === 'approved') waiting = 'Approved.';
  else if (t.status === 'rejected' && !mayResubmit) waiting = 'Rejected; the requester may edit and resubmit.';
  else if (t.status === 'deploy_failed' && !mayRetry) waiting = 'A deployment step failed; the last approver or a manager may retry it.';
  document.getElementById('waiting').textContent = waiting;
  if (settledAt !== null && t.revision > settledAt) {
    settledAt = null;
    setBusy(false);
  }
}

function showError(message) {
  const error = document.getElementById('error');
  error.textContent = message;
  error.classList.toggle('hidden', !message);
}

function showNotice(message) {
  const notice = document.getElementById('notice');
  notice.textContent = message;
  notice.classList.toggle('hidden', !message);
}

/** The page for a ticket that does not exist (or an id that is not one): no socket, no retries. */
function showMissing() {
  document.title = 'No such ticket · 工单审批';
  document.getElementById('title').textContent = '工单不存在 No such ticket';
  document.getElementById('meta').textContent = `There is no ticket ${location.pathname.split('/').filter(Boolean)[1]}.`;
  document.getElementById('body').replaceChildren(App.el('a', { href: '/' }, 'Back to the tickets'));
  for (const id of ['flowchart', 'panels']) document.getElementById(id).classList.add('hidden');
  const conn = document.getElementById('conn');
  conn.textContent = '';
  conn.dataset.state = 'none';
}

// The action on its way to the server, if any: {payload, box, clear, generation}; it was
// handed to the channel while connection number `generation` was (or was about to be) open.
let pending = null;
let generation = 0;
// After the server applied our action: the revision the page showed then; the buttons come
// back with the first newer state (which shows the action's result).
let settledAt = null;
let socket = null;

const BUTTONS = ['approve', 'reject', 'retry', 'resubmit'];
const FIELDS = ['comment', 'edit-title', 'edit-body'];

function setBusy(busy) {
  for (const id of BUTTONS) document.getElementById(id).disabled = busy;
  for (const id of FIELDS) document.getElementById(id).readOnly = busy;
  document.getElementById('actions').dataset.busy = busy ? 'true' : 'false';
}

function newRequestId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Hands the pending action to the channel: sent now when open, else queued until it is. */
function transmit() {
  if (!pending) return;
  const open = socket.state === 'open';
  pending.generation = open ? generation : generation + 1;
  if (!socket.send(pending.payload)) return; // refused at once: an `unsent` event says why
  showNotice(open ? 'Sending…' : 'Not connected: this will be sent as soon as the connection is back. Keep this page open.');
}

/** The channel will not send the pending action: say so, keep the words, free the buttons. */
function notSent(why) {
  pending = null;
  showNotice('');
  setBusy(false);
  showError(`Not sent: ${why}. Your words are still here; try again.`);
  if (ticket) render(ticket);
}

function act(box, action, extra, clear) {
  if (pending || settledAt !== null || !ticket) return; // one action at a time
  showError('');
  const request_id = newRequestId();
  pending = { box, clear, payload: { action, step: ticket.current_step, request_id, ...extra } };
  setBusy(true);
  transmit();
}

function onMessage(event) {
  if (event.type === 'ticket.state') {
    render(event.ticket);
  } else if (event.type === 'action.done') {
    if (!pending || event.request_id !== pending.payload.request_id) return;
    const { clear } = pending;
    pending = null;
    showNotice('');
    if (clear) clear();
    settledAt = ticket.revision;
  } else if (event.type === 'error') {
    if (pending && event.request_id && event.request_id !== pending.payload.request_id) return;
    pending = null;
    showNotice('');
    setBusy(false);
    showError(event.error);
    if (ticket) render(ticket);
  }
}

/** Why the server refuses this page's socket, from the API: the ticket is gone, the user signed out. */
async function refusal() {
  try {
    const response = await fetch(`/api/tickets/${ticketId}`, { credentials: 'same-origin', cache: 'no-store' });
    if (response.status === 404) return 'missing';
    if (response.status === 401) return 'signed out';
  } catch (_) {
    // No answer: the network or the server is down; the channel keeps trying.
  }
  return null;
}

function refused(reason) {
  if (reason === 'missing') showMissing();
  else if (reason === 'signed out') location.href = '/login/?next=' + encodeURIComponent(location.pathname);
}

(async () => {
  await App.requireUser();
  let first;
  try {
    first = await App.api(`/api/tickets/${ticketId}`);
  } catch (err) {
    if (err.status === 404) { showMissing(); return; }
    first = null; // the socket brings the state
  }
  if (first) render(first);
  socket = new Channel({ url: `/ws/tickets/${ticketId}/`, autoConnect: false });
  App.showConnection(socket);
  socket.on('message', onMessage);
  socket.on('open', () => {
    generation += 1;
    // Sent on a connection that dropped before the answer came: send it again.
    if (pending && pending.generation < generation) transmit();
    else if (pending) showNotice('Sending…');
  });
  socket.on('unsent', ({ messages, reason }) => {
    if (pending && messages.includes(pending.payload)) notSent(reason);
  });
  // A handshake that fails while the server answers HTTP: the ticket is gone or the session
  // ended (the server refuses with 403 before the upgrade). Ask the API which, and stop.
  socket.on('reconnecting', async () => {
    const reason = await refusal();
    if (reason) {
      socket.close(1000, reason);
      refused(reason);
    }
  });
  socket.on('closed', async ({ reason, refused: byServer }) => {
    if (pending) notSent(`the connection closed (${reason})`);
    if (!byServer) return;
    const why = await refusal();
    if (why) refused(why);
    else showError(`The server refuses the live connection (${reason}). Reload the page to try again.`);
  });
  socket.connect();
  const comment = document.getElementById('comment');
  const clearComment = () => { comment.value = ''; };
  document.getElementById('approve').addEventListener('click', () =>
    act('decide', 'approve', { comment: comment.value }, clearComment));
  document.getElementById('reject').addEventListener('click', () => {
    if (!comment.value.trim()) { showError('Say why you reject the ticket.'); return; }
    act('decide', 'reject', { comment: comment.value }, clearComment);
  });
  document.getElementById('retry').addEventListener('click', () => act('retry-box', 'retry', {}, null));
  document.getElementById('resubmit').addEventListener('click', () => act('resubmit-box', 'resubmit', {
    title: document.getElementById('edit-title').value,
    body: document.getElementById('edit-body').value,
  }, null));
})();

// For the browser tests: the flowchart's cytoscape instance.
window.ticketPage = { get cy() { return cy; } };
