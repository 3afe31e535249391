// The approval pages as a new user finds them, in headless Chromium against the real server:
// nothing the user does or types is lost, and nothing is shown that the user cannot read.
// Each case runs on its own ticket, in browser contexts of its own, and all cases run even
// when one fails (the failures are listed at the end):
//   1. Approve pressed while the socket is reconnecting is kept (comment and all) and sent
//      once the socket is back, once;
//   2. a reject the server refuses keeps the typed reason;
//   3. a double-click on Approve approves once and shows no error;
//   4. /tickets/999999/ is a 404 that says "No such ticket" and does not retry forever;
//   5. the finished deployment is in the ticket's history, live and after a reload;
//   6. the flowchart's labels are drawn at 11 px or more, the whole chart in view, at three
//      window widths (the rendered size: font size × zoom);
//   7. the pages' Chinese text is drawn with a font that has its characters (on a machine
//      without a CJK font, the example's own subset font).
//
// Usage: node tests/browser/approval_work.test.mjs http://127.0.0.1:8004/
// Run from the repository root. The server should run with a short --step-delay-ms and
// --failure-rate 0 (tests/browser_approval.rs does). Exit code 0 when every case passed.

import { chromium } from 'playwright-core';

const WAIT_MS = 15_000; // every single wait
const OVERALL_MS = 150_000; // the whole script
const CHROMIUM = '/usr/bin/chromium';
const MIN_LABEL_PX = 11;

const base = process.argv[2];
if (!base) {
  console.error('usage: node approval_work.test.mjs BASE_URL   (e.g. http://127.0.0.1:8004/)');
  process.exit(2);
}
const url = (path) => new URL(path, base).href;

const consoleLines = [];
const watchdog = setTimeout(() => {
  console.error(`FAIL: the browser test did not finish within ${OVERALL_MS / 1000} s`);
  if (consoleLines.length) console.error('--- browser console ---\n' + consoleLines.join('\n'));
  process.exit(1);
}, OVERALL_MS);
watchdog.unref();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function check(condition, message) {
  if (!condition) throw new Error(message);
}

let browser;

/** A signed-in user in a browser context of their own. */
async function signedIn(username, viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(WAIT_MS);
  const response = await context.request.post(url('/api/login'), { data: { username } });
  check(response.ok(), `signing in as ${username}: ${response.status()}`);
  const page = await context.newPage();
  page.on('console', (msg) => consoleLines.push(`[${username} console.${msg.type()}] ${msg.text()}`));
  page.on('pageerror', (err) => consoleLines.push(`[${username} page error] ${err.message}`));
  return { context, page, username };
}

async function api(user, method, path, data) {
  const response = await user.context.request.fetch(url(path), { method, data });
  const body = await response.json().catch(() => ({}));
  return { status: response.status(), body };
}

/** Files a ticket through the Release workflow (lead 付乐乐, then ops, then a deployment). */
async function fileRelease(requester, title) {
  const { body: workflows } = await api(requester, 'GET', '/api/workflows');
  const release = workflows.find((w) => w.name === '上线发布 Release');
  const { status, body } = await api(requester, 'POST', '/api/tickets', { title, body: 'from the browser test', workflow_id: release.id });
  check(status === 201, `filing a ticket: ${status} ${JSON.stringify(body)}`);
  return body.id;
}

async function approveByApi(user, id, step) {
  const { status, body } = await api(user, 'POST', `/api/tickets/${id}/actions`, { action: 'approve', step });
  check(status === 200, `${user.username} approving step ${step} of ticket ${id}: ${status} ${JSON.stringify(body)}`);
}

async function openTicket(user, id) {
  await user.page.goto(url(`/tickets/${id}/`));
  await user.page.locator('#status .badge').waitFor();
}

async function waitLive(page) {
  await page.locator('#conn.live').waitFor();
}

async function historyCount(page, decision) {
  return page.locator(`#history li[data-decision="${decision}"]`).count();
}

/**
 * Routes the page's ticket sockets through Playwright, so a test can cut the network (every
 * socket closed, every new one and every HTTP request refused) or hold the server's states.
 */
async function routeSockets(page) {
  const net = { cut: false, holdStates: false, open: [] };
  await page.route('**/*', (route) => (net.cut ? route.abort('internetdisconnected') : route.continue()));
  await page.routeWebSocket(/\/ws\/tickets\//, (ws) => {
    if (net.cut) {
      ws.close({ code: 4000, reason: 'network cut' }).catch(() => {});
      return;
    }
    const server = ws.connectToServer();
    server.onMessage((message) => {
      if (net.holdStates && String(message).includes('"ticket.state"')) return;
      ws.send(message);
    });
    ws.onMessage((message) => server.send(message));
    net.open.push([ws, server]);
  });
  net.cutNow = async () => {
    net.cut = true;
    for (const [ws, server] of net.open.splice(0)) {
      await server.close().catch(() => {});
      await ws.close({ code: 4000, reason: 'network cut' }).catch(() => {});
    }
  };
  return net;
}

const cases = [];
const test = (name, fn) => cases.push({ name, fn });

test('an approval pressed while the socket is reconnecting is kept and sent once it is back', async (ctx) => {
  const id = await fileRelease(ctx.requester, `offline approval ${Date.now()}`);
  const lead = ctx.add(await signedIn('fulele'));
  const net = await routeSockets(lead.page);
  await openTicket(lead, id);
  await waitLive(lead.page);
  await lead.page.locator('#decide').waitFor({ state: 'visible' });
  await lead.page.fill('#comment', 'approved while offline');
  await net.cutNow();
  await lead.page.locator('#conn:not(.live)').waitFor();
  await lead.page.click('#approve');
  await sleep(500);
  check(await lead.page.inputValue('#comment') === 'approved while offline', 'the typed comment was cleared although nothing could be sent');
  const told = (await lead.page.locator('#notice:visible, #error:visible').allTextContents()).join(' ');
  check(told.trim() !== '', 'the page did not say that the approval is waiting for the connection');
  check(await historyCount(lead.page, 'approve') === 0, 'the approval shows as done while the socket is down');
  net.cut = false;
  await lead.page.locator('#history li[data-decision="approve"]', { hasText: 'approved while offline' }).waitFor();
  await waitLive(lead.page);
  await sleep(500);
  check(await historyCount(lead.page, 'approve') === 1, `the approval was applied ${await historyCount(lead.page, 'approve')} times`);
  check(await lead.page.inputValue('#comment') === '', 'the comment was not cleared after the approval went through');
  check(await lead.page.locator('#error').isHidden(), `an error is shown: ${await lead.page.textContent('#error')}`);
  const { body } = await api(ctx.requester, 'GET', `/api/tickets/${id}`);
  check(body.current_step === 1, `the ticket is at step ${body.current_step}, not the ops step`);
});

test('a reject the server refuses keeps the typed reason', async (ctx) => {
  const id = await fileRelease(ctx.requester, `refused reject ${Date.now()}`);
  const lead = ctx.add(await signedIn('fulele'));
  const net = await routeSockets(lead.page);
  await openTicket(lead, id);
  await waitLive(lead.page);
  await lead.page.locator('#decide').waitFor({ state: 'visible' });
  // Someone acts first (here the same approver, from another window); this page has not
  // heard of it yet, so its reject is for a step the ticket has left: the server refuses it.
  net.holdStates = true;
  await approveByApi(lead, id, 0);
  const reason = '驳回: the migration has no rollback';
  await lead.page.fill('#comment', reason);
  await lead.page.click('#reject');
  await lead.page.locator('#error').waitFor({ state: 'visible' });
  check(await lead.page.inputValue('#comment') === reason, `the typed reason was lost after the refusal: "${await lead.page.inputValue('#comment')}"`);
  check(await lead.page.locator('#reject').isEnabled(), 'Reject stays disabled after the refusal');
});

test('a double-click on Approve approves once and shows no error', async (ctx) => {
  const id = await fileRelease(ctx.requester, `double click ${Date.now()}`);
  const lead = ctx.add(await signedIn('fulele'));
  await openTicket(lead, id);
  await waitLive(lead.page);
  await lead.page.locator('#decide').waitFor({ state: 'visible' });
  // Every action the page sends, and every error it ever shows (even one a later state hides).
  const sent = [];
  lead.page.on('websocket', (ws) => ws.on('framesent', ({ payload }) => {
    if (String(payload).includes('"action"')) sent.push(String(payload));
  }));
  await lead.page.reload();
  await waitLive(lead.page);
  await lead.page.locator('#decide').waitFor({ state: 'visible' });
  await lead.page.evaluate(() => {
    window.__errors = [];
    const error = document.getElementById('error');
    new MutationObserver(() => { if (error.textContent) window.__errors.push(error.textContent); })
      .observe(error, { childList: true, characterData: true, subtree: true });
  });
  await lead.page.fill('#comment', 'once');
  await lead.page.dblclick('#approve');
  await lead.page.locator('#nodes li[data-node="step-1"][data-state="current"]').waitFor();
  await sleep(1000);
  const errors = await lead.page.evaluate(() => window.__errors);
  check(errors.length === 0, `the page showed an error after the double-click: ${JSON.stringify(errors)}`);
  check(sent.length === 1, `the double-click sent ${sent.length} actions: ${sent.join(' ')}`);
  check(await historyCount(lead.page, 'approve') === 1, `the history shows ${await historyCount(lead.page, 'approve')} approvals`);
});

test('a ticket that does not exist is a 404 page that says so and does not retry forever', async (ctx) => {
  const page = ctx.requester.page;
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  for (const path of ['/tickets/999999/', '/tickets/nope/']) {
    sockets.length = 0;
    const response = await page.goto(url(path));
    check(response.status() === 404, `${path} answered ${response.status()}, not 404`);
    await page.locator('#title', { hasText: 'No such ticket' }).waitFor({ timeout: 5000 }).catch(async () => {
      throw new Error(`${path} shows "${await page.textContent('#title')}" and "${await page.textContent('#conn')}", not "No such ticket"`);
    });
    await sleep(3000);
    check(sockets.length <= 1, `${path} opened ${sockets.length} WebSockets in 3 s`);
    const conn = await page.textContent('#conn');
    check(!conn.includes('reconnecting'), `${path} still says "${conn}"`);
  }
  // The page's first question to the API is lost, so it tries the socket: the handshake is
  // refused (403), and the page finds out why instead of retrying forever.
  sockets.length = 0;
  let lost = 0;
  await page.route('**/api/tickets/999999', (route) => (lost++ === 0 ? route.abort() : route.continue()));
  await page.goto(url('/tickets/999999/'));
  await page.locator('#title', { hasText: 'No such ticket' }).waitFor({ timeout: 8000 }).catch(async () => {
    throw new Error(`after a refused socket the page shows "${await page.textContent('#title')}" and "${await page.textContent('#conn')}"`);
  });
  const tried = sockets.length;
  await sleep(3000);
  check(sockets.length === tried && tried <= 3, `the refused socket was tried ${tried} times, then ${sockets.length - tried} more`);
  ctx.note(`a refused socket was tried ${tried} time(s), then no more`);
});

test('the finished deployment is in the history, live and after a reload', async (ctx) => {
  const id = await fileRelease(ctx.requester, `deploy history ${Date.now()}`);
  const lead = ctx.add(await signedIn('fulele'));
  const ops = ctx.add(await signedIn('jiawenlong'));
  const page = ctx.requester.page;
  await openTicket(ctx.requester, id);
  await waitLive(page);
  await approveByApi(lead, id, 0);
  await approveByApi(ops, id, 1);
  await page.locator('#status .badge[data-status="deployed"]').waitFor();
  await page.locator('#history li[data-decision="deployed"]').waitFor({ timeout: 3000 }).catch(() => {
    throw new Error('the ticket is deployed but its history does not say so (live)');
  });
  await page.reload();
  await page.locator('#status .badge[data-status="deployed"]').waitFor();
  check(await historyCount(page, 'deployed') === 1, 'after a reload the history does not show the deployment once');
});

/** The smallest label size on screen, and whether every node is inside the flowchart's box. */
async function flowchartLabels(page) {
  await page.waitForTimeout(400); // a resize re-lays the chart out after 150 ms
  return page.evaluate(() => {
    // The page's hook, or where cytoscape keeps its instance (for pages without the hook).
    const graph = document.getElementById('graph');
    const cy = (window.ticketPage && window.ticketPage.cy) || (graph._cyreg && graph._cyreg.cy);
    const zoom = cy.zoom();
    let smallest = Infinity;
    let where = '';
    cy.elements().forEach((ele) => {
      if (!ele.data('label')) return;
      const px = parseFloat(ele.style('font-size')) * zoom;
      if (px < smallest) { smallest = px; where = ele.id(); }
    });
    const box = cy.container().getBoundingClientRect();
    const outside = cy.nodes().filter((n) => {
      const b = n.renderedBoundingBox();
      return b.x1 < -1 || b.y1 < -1 || b.x2 > box.width + 1 || b.y2 > box.height + 1;
    }).map((n) => n.id());
    return { smallest, where, zoom, outside };
  });
}

test('the flowchart labels are at least 11 px on screen, with the whole chart in view', async (ctx) => {
  const id = await fileRelease(ctx.requester, `labels ${Date.now()}`);
  const page = ctx.requester.page;
  await openTicket(ctx.requester, id);
  await page.locator('#graph canvas').first().waitFor();
  for (const width of [1280, 900, 700]) {
    await page.setViewportSize({ width, height: 900 });
    const seen = await flowchartLabels(page);
    check(seen.smallest >= MIN_LABEL_PX, `at ${width} px wide the smallest label (${seen.where}) is ${seen.smallest.toFixed(1)} px (zoom ${seen.zoom.toFixed(2)})`);
    check(seen.outside.length === 0, `at ${width} px wide these nodes are out of view: ${seen.outside.join(', ')}`);
    ctx.note(`${width} px wide: smallest label ${seen.smallest.toFixed(1)} px, zoom ${seen.zoom.toFixed(2)}`);
  }
  await page.setViewportSize({ width: 1280, height: 900 });
});

/** How many of `selector`'s characters in CJK ideographs are drawn with a font that has them. */
async function cjkGlyphs(page, cdp, selector) {
  const { root } = await cdp.send('DOM.getDocument', { depth: -1 });
  const { nodeId } = await cdp.send('DOM.querySelector', { nodeId: root.nodeId, selector });
  const { fonts } = await cdp.send('CSS.getPlatformFontsForNode', { nodeId });
  const text = await page.textContent(selector);
  const wanted = [...text].filter((c) => /[\u4e00-\u9fff]/.test(c)).length;
  const cjkFont = (f) => f.isCustomFont || /CJK|Han|Hei|PingFang|YaHei|WenQuanYi|Noto Sans SC|Source Han/i.test(f.familyName);
  const drawn = fonts.filter(cjkFont).reduce((sum, f) => sum + f.glyphCount, 0);
  return { wanted, drawn, fonts: fonts.map((f) => `${f.familyName}${f.isCustomFont ? ' (web font)' : ''}: ${f.glyphCount}`).join(', ') };
}

test('the Chinese text is drawn with a font that has its characters', async (ctx) => {
  const id = await fileRelease(ctx.requester, `fonts ${Date.now()}`);
  const page = ctx.requester.page;
  await openTicket(ctx.requester, id);
  await page.evaluate(() => document.fonts.ready);
  const cdp = await ctx.requester.context.newCDPSession(page);
  await cdp.send('DOM.enable');
  await cdp.send('CSS.enable');
  for (const selector of ['header .brand', '#status .badge', '#nodes li[data-node="deploy-download"]', '#history li strong']) {
    const seen = await cjkGlyphs(page, cdp, selector);
    check(seen.wanted > 0, `${selector} has no Chinese text to check`);
    check(seen.drawn >= seen.wanted, `${selector}: ${seen.wanted} Chinese characters, ${seen.drawn} drawn with a CJK font (${seen.fonts})`);
  }
  await cdp.detach();
});

async function main() {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], timeout: WAIT_MS });
  const failures = [];
  try {
    for (const { name, fn } of cases) {
      const users = [];
      const notes = [];
      const ctx = { add: (user) => (users.push(user), user), note: (text) => notes.push(text) };
      const started = Date.now();
      try {
        ctx.requester = ctx.add(await signedIn('zhangkun'));
        await fn(ctx);
        console.log(`ok: ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)${notes.map((n) => `\n  ${n}`).join('')}`);
      } catch (err) {
        failures.push(name);
        console.log(`FAIL: ${name}\n  ${String(err && err.message ? err.message : err).split('\n').join('\n  ')}`);
      } finally {
        for (const user of users) await user.context.close().catch(() => {});
      }
    }
  } finally {
    await browser.close().catch(() => {});
  }
  console.log(failures.length ? `${failures.length} of ${cases.length} cases failed` : `all ${cases.length} cases passed`);
  return failures;
}

const failures = await main();
if (failures.length) {
  const errors = consoleLines.filter((line) => line.includes('page error'));
  if (errors.length) console.error('--- page errors ---\n' + errors.join('\n'));
  console.error(`FAIL: ${failures.length} of ${cases.length} cases failed: ${failures.join('; ')}`);
  process.exit(1);
}
process.exit(0);
