// Drives the approval example's pages in headless Chromium against the real server:
//   1. 张坤 (requester) and 付乐乐 (approver) sign in, each in a browser context of their own;
//   2. 张坤 files a ticket through the Release workflow; markup in the title stays text;
//   3. 付乐乐 approves: 张坤's flowchart shows the lead step done and the ops step current,
//      without a reload, and the history shows the approval;
//   4. the approver's context signs in as 贾文龙 (ops) and approves the last step: on 张坤's page
//      every pipeline node goes running → done in order, the ticket ends deployed, and 张坤's
//      list page (open all along) shows the new status and counts live;
//   5. nothing is loaded from anywhere but the example's own server (the page works offline).
//
// Usage: node tests/browser/approval.test.mjs http://127.0.0.1:8004/
// Run from the repository root; screenshots go to target/browser-approval-*.png. The server
// should run with a short --step-delay-ms and --failure-rate 0 (the Rust driver does).
// Exit code 0 on success; on failure, a message on stderr and exit code 1.

import { resolve } from 'node:path';
import { WAIT_MS, check, launch, newPage, progress, run, startWatchdog } from './support.mjs';

const shot = (name) => resolve(`target/browser-approval-${name}.png`);
const PIPELINE = ['deploy-download', 'deploy-compile', 'deploy-package', 'deploy-server-1', 'deploy-server-2', 'deploy-server-3', 'deploy-restart'];

const base = process.argv[2];
if (!base) {
  console.error('usage: node approval.test.mjs BASE_URL   (e.g. http://127.0.0.1:8004/)');
  process.exit(2);
}
const origin = new URL(base).origin;

const foreignRequests = [];

startWatchdog(100_000);

/** A browser context of its own (its own cookies) that may only talk to the example's server. */
async function newUser(browser, name) {
  const onlyOurs = (context) =>
    context.route('**/*', (route) => {
      const url = route.request().url();
      if (url.startsWith(origin)) return route.continue();
      foreignRequests.push(url);
      return route.abort();
    });
  const page = await newPage(browser, name, { viewport: { width: 1280, height: 900 }, prepare: onlyOurs });
  return { context: page.context(), page, name };
}

async function signIn(page, username, next = '/') {
  await page.goto(new URL(`/login/?next=${encodeURIComponent(next)}`, base).href);
  await page.click(`#users button[data-username="${username}"]`);
  await page.waitForURL((url) => url.pathname === next);
}

async function nodeState(page, node) {
  return page.getAttribute(`#nodes li[data-node="${node}"]`, 'data-state');
}

async function waitForNode(page, node, state) {
  try {
    await page.locator(`#nodes li[data-node="${node}"][data-state="${state}"]`).waitFor({ timeout: WAIT_MS });
  } catch (err) {
    throw new Error(`node ${node} never became ${state}; it is ${await nodeState(page, node)}\n${err.message}`);
  }
}

/** Records every state each flowchart node passes through, as the page renders them. */
async function recordNodeStates(page) {
  await page.evaluate(() => {
    window.__states = {};
    const note = () => {
      for (const li of document.querySelectorAll('#nodes li')) {
        const seen = (window.__states[li.dataset.node] ||= []);
        if (seen[seen.length - 1] !== li.dataset.state) seen.push(li.dataset.state);
      }
    };
    note();
    new MutationObserver(note).observe(document.getElementById('nodes'), { childList: true, subtree: true, attributes: true });
  });
}

async function main() {
  progress.step = 'launching Chromium';
  const browser = await launch();
  try {
    const requester = await newUser(browser, 'zhangkun');
    const approver = await newUser(browser, 'fulele');

    progress.step = 'an anonymous visitor is sent to the sign-in page';
    await requester.page.goto(base);
    await requester.page.waitForURL((url) => url.pathname === '/login/');

    progress.step = '张坤 signs in and opens the list page with its charts';
    await signIn(requester.page, 'zhangkun', '/');
    const list = await requester.context.newPage();
    list.on('pageerror', (err) => progress.consoleLines.push(`[zhangkun list page error] ${err.message}`));
    await list.goto(base);
    await list.locator('#conn.live').waitFor();
    const deployedBefore = Number(await list.getAttribute('#counts span[data-status="deployed"]', 'data-count'));
    check(await list.locator('#bar').isVisible(), 'the bar chart is not shown');
    check(await list.locator('#pie').isVisible(), 'the pie chart is not shown');

    progress.step = '张坤 files a ticket through the Release workflow';
    const title = `上线 v2.3 <b>not bold</b> ${Date.now()}`;
    await requester.page.goto(new URL('/tickets/new/', base).href);
    await requester.page.fill('#title', title);
    await requester.page.fill('#body', '订单服务: new checkout\n<script>alert(1)</script>');
    await requester.page.selectOption('#workflow', { label: '上线发布 Release' });
    await requester.page.click('#submit');
    await requester.page.waitForURL(/\/tickets\/\d+\/$/);
    const ticketPath = new URL(requester.page.url()).pathname;
    const page = requester.page;
    await page.locator('#conn.live').waitFor();
    await waitForNode(page, 'step-0', 'current');
    check((await page.textContent('#title')).includes('<b>not bold</b>'), 'markup in the title was not shown as text');
    check((await page.locator('#title b').count()) === 0, 'markup in the title became an element');
    check(await page.locator('#decide').isHidden(), 'the requester is offered approve/reject on the lead step');
    await page.locator('#graph canvas').first().waitFor();
    await recordNodeStates(page);

    progress.step = 'the list page shows the new ticket live';
    await list.locator(`#tickets tr[data-status="pending"] a`, { hasText: title }).waitFor();

    progress.step = '付乐乐 signs in and approves the lead step';
    await signIn(approver.page, 'fulele', ticketPath);
    await approver.page.locator('#decide').waitFor({ state: 'visible' });
    await approver.page.fill('#comment', '代码已审 LGTM');
    await approver.page.screenshot({ path: shot('approver'), timeout: WAIT_MS });
    await approver.page.click('#approve');

    progress.step = "张坤's flowchart moves to the ops step without a reload";
    await waitForNode(page, 'step-0', 'done');
    await waitForNode(page, 'step-1', 'current');
    await page.locator('#history li[data-decision="approve"]', { hasText: '代码已审 LGTM' }).waitFor();
    check(await page.locator('#decide').isHidden(), 'the requester is offered approve/reject on the ops step');
    await page.screenshot({ path: shot('waiting'), timeout: WAIT_MS });

    progress.step = '付乐乐 may not decide the ops step: the page no longer offers it';
    await approver.page.locator('#decide').waitFor({ state: 'hidden' });

    progress.step = 'the approver context signs in as 贾文龙 (ops) and approves the last step';
    await approver.page.click('#logout');
    await approver.page.waitForURL((url) => url.pathname === '/login/');
    await signIn(approver.page, 'jiawenlong', ticketPath);
    await approver.page.locator('#decide').waitFor({ state: 'visible' });
    await approver.page.click('#approve');

    progress.step = "the pipeline nodes light up on 张坤's page, one after another";
    await waitForNode(page, 'step-1', 'done');
    // A step may be over before a poll of the page sees it running (a loaded machine): read
    // what the page rendered, as recorded since before the approval.
    await page.waitForFunction(() => (window.__states['deploy-download'] || []).includes('running'), null, { timeout: WAIT_MS });
    await page.screenshot({ path: shot('running'), timeout: WAIT_MS });
    await waitForNode(page, 'deploy-restart', 'done');
    await waitForNode(page, 'end', 'done');
    await page.locator('#status .badge[data-status="deployed"]').waitFor();
    const states = await page.evaluate(() => window.__states);
    for (const node of PIPELINE) {
      const seen = (states[node] || []).join(' → ');
      check(seen.endsWith('pending → running → done'), `node ${node} went ${seen}, not pending → running → done`);
    }
    await page.screenshot({ path: shot('deployed'), timeout: WAIT_MS });

    progress.step = "张坤's list page shows the deployed ticket and the new count, live";
    await list.locator(`#tickets tr[data-status="deployed"] a`, { hasText: title }).waitFor();
    await list.locator(`#counts span[data-status="deployed"][data-count="${deployedBefore + 1}"]`).waitFor();
    await list.screenshot({ path: shot('list'), timeout: WAIT_MS });

    progress.step = 'the pages loaded nothing from other servers';
    check(foreignRequests.length === 0, `requests left the example's server: ${foreignRequests.join(', ')}`);
    const errors = progress.consoleLines.filter((line) => line.includes('page error'));
    check(errors.length === 0, `the pages raised errors:\n${errors.join('\n')}`);
    console.log(`screenshots: ${shot('*')}`);
  } finally {
    await browser.close().catch(() => {});
  }
}

await run('approval', main);
