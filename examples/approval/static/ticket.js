// One ticket: its flowchart (cytoscape), history and the actions the signed-in user may take.
// The WebSocket /ws/tickets/{id}/ sends the whole ticket whenever anything changes, to every
// page showing it; actions go back over the same socket. The server decides who may do what:
// the buttons shown here are only a convenience.
'use strict';

const COLORS = { done: '#2e9e5b', current: '#2f6fde', running: '#f0a020', pending: '#c8ccd2', rejected: '#d64545', failed: '#d64545' };
const SHAPES = { start: 'ellipse', end: 'ellipse', approval: 'round-rectangle', deploy: 'round-rectangle' };
const ticketId = Number(location.pathname.split('/').filter(Boolean)[1]);
let cy = null;
let layoutKey = '';
let ticket = null;

const SIZES = { start: [64, 40], end: [64, 40], approval: [124, 60], deploy: [100, 48] };
const GAP = 60; // room for a link's label between two columns

/** Left to right, one column per rank, each as wide as its widest node; lanes stacked. */
function positions(nodes) {
  const widths = [];
  for (const n of nodes) widths[n.rank] = Math.max(widths[n.rank] || 0, SIZES[n.kind][0]);
  const centers = [];
  let x = 0;
  for (let rank = 0; rank < widths.length; rank++) {
    const width = widths[rank] || 0;
    centers[rank] = x + width / 2;
    x += width + GAP;
  }
  return (n) => ({ x: centers[n.rank], y: (n.lane - (n.lanes - 1) / 2) * 64 });
}

/** "下载代码 Download" → "下载代码\nDownload": the Chinese and English names on two lines. */
function nodeLabel(label) {
  return label.replace(' ', '\n');
}

function drawGraph(graph) {
  const key = graph.nodes.map((n) => n.id).join(',');
  if (cy && key === layoutKey) {
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
  const position = positions(graph.nodes);
  const elements = [
    ...graph.nodes.map((n) => ({
      group: 'nodes',
      data: {
        id: n.id, label: nodeLabel(n.label), state: n.state, color: COLORS[n.state],
        shape: SHAPES[n.kind] || 'round-rectangle', width: SIZES[n.kind][0], height: SIZES[n.kind][1],
      },
      position: position(n),
    })),
    ...graph.edges.map((e) => ({
      group: 'edges',
      data: { id: `${e.source}->${e.target}`, source: e.source, target: e.target, label: e.label, state: e.state, color: COLORS[e.state] },
    })),
  ];
  if (cy) cy.destroy();
  cy = cytoscape({
    container: document.getElementById('graph'),
    elements,
    layout: { name: 'preset', fit: true, padding: 16 },
    maxZoom: 1.3,
    userZoomingEnabled: true,
    boxSelectionEnabled: false,
    autoungrabify: true,
    style: [
      { selector: 'node', style: {
        shape: 'data(shape)', 'background-color': 'data(color)', label: 'data(label)', color: '#fff',
        'text-valign': 'center', 'text-halign': 'center', 'text-wrap': 'wrap', 'text-max-width': '120px',
        'font-size': 11, width: 'data(width)', height: 'data(height)', 'border-width': 2, 'border-color': '#ffffff',
      } },
      { selector: 'node[state = "pending"]', style: { color: '#3e4c59' } },
      { selector: 'node[state = "running"], node[state = "current"]', style: { 'border-color': '#1f2933', 'border-width': 3 } },
      { selector: 'edge', style: {
        'curve-style': 'bezier', width: 2, 'line-color': '#b8c2cc', 'target-arrow-color': '#b8c2cc',
        'target-arrow-shape': 'triangle', label: 'data(label)', 'font-size': 11, color: '#1f2933',
        'text-background-color': '#fbfcfd', 'text-background-opacity': 1, 'text-background-padding': 2,
        'text-rotation': 'autorotate', 'text-margin-y': -9, 'font-weight': 600,
      } },
      { selector: 'edge[state = "done"]', style: { 'line-color': '#2e9e5b', 'target-arrow-color': '#2e9e5b' } },
      { selector: 'edge[state = "running"], edge[state = "current"]', style: {
        'line-color': 'data(color)', 'target-arrow-color': 'data(color)', 'line-style': 'dashed', width: 3 } },
      { selector: 'edge[state = "rejected"], edge[state = "failed"]', style: { 'line-color': '#d64545', 'target-arrow-color': '#d64545' } },
    ],
  });
}

// The running links' dashes move, so a running step is visible at a glance.
setInterval(() => {
  if (!cy) return;
  const offset = (Date.now() / 40) % 24;
  cy.edges('[state = "running"], [state = "current"]').style('line-dash-offset', -offset);
}, 60);

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
      { submit: '提交 submitted', approve: '通过 approved', reject: '驳回 rejected', resubmit: '重新提交 resubmitted', retry: '重试 retried the deployment' }[h.decision] || h.decision,
      h.step ? ` · ${h.step}` : '', ' ',
      App.el('span', { className: 'muted' }, App.time(h.at)),
      h.comment ? App.el('div', { className: 'comment' }, h.comment) : null)));

  const me = App.user;
  const step = t.workflow.steps.find((s) => s.position === t.current_step);
  const mayDecide = t.status === 'pending' && step && step.approver_ids.includes(me.id);
  const mayRetry = t.status === 'deploy_failed' && t.retry_ids.includes(me.id);
  const mayResubmit = t.status === 'rejected' && t.requester.id === me.id;
  document.getElementById('decide').classList.toggle('hidden', !mayDecide);
  document.getElementById('retry-box').classList.toggle('hidden', !mayRetry);
  const resubmit = document.getElementById('resubmit-box');
  if (mayResubmit && resubmit.classList.contains('hidden')) {
    document.getElementById('edit-title').value = t.title;
    document.getElementById('edit-body').value = t.body;
  }
  resubmit.classList.toggle('hidden', !mayResubmit);
  let waiting = '';
  if (t.status === 'pending' && step && !mayDecide) waiting = `Waiting for ${step.approver} (${step.name}).`;
  else if (t.status === 'deploying') waiting = 'Deploying…';
  else if (t.status === 'deployed') waiting = 'Approved and deployed.';
  else if (t.status === 'approved') waiting = 'Approved.';
  else if (t.status === 'rejected' && !mayResubmit) waiting = 'Rejected; the requester may edit and resubmit.';
  else if (t.status === 'deploy_failed' && !mayRetry) waiting = 'A deployment step failed; the last approver or a manager may retry it.';
  document.getElementById('waiting').textContent = waiting;
}

function showError(message) {
  const error = document.getElementById('error');
  error.textContent = message;
  error.classList.toggle('hidden', !message);
}

(async () => {
  await App.requireUser();
  const socket = App.socket(`/ws/tickets/${ticketId}/`, (event) => {
    if (event.type === 'ticket.state') { showError(''); render(event.ticket); }
    else if (event.type === 'error') showError(event.error);
  });
  const act = (action, extra = {}) => {
    showError('');
    socket.send({ action, step: ticket ? ticket.current_step : undefined, ...extra });
  };
  const comment = document.getElementById('comment');
  document.getElementById('approve').addEventListener('click', () => { act('approve', { comment: comment.value }); comment.value = ''; });
  document.getElementById('reject').addEventListener('click', () => {
    if (!comment.value.trim()) { showError('Say why you reject the ticket.'); return; }
    act('reject', { comment: comment.value });
    comment.value = '';
  });
  document.getElementById('retry').addEventListener('click', () => act('retry'));
  document.getElementById('resubmit').addEventListener('click', () => act('resubmit', {
    title: document.getElementById('edit-title').value,
    body: document.getElementById('edit-body').value,
  }));
})();
