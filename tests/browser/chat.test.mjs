// Drives the chat example's page in headless Chromium: two users, one room, real server.
//
// Usage: node tests/browser/chat.test.mjs http://127.0.0.1:8000/
// Run from the repository root (the screenshot goes to target/browser-chat.png).
// Exit code 0 on success; on failure, a message on stderr and exit code 1.

import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const WAIT_MS = 10_000; // every single wait
const OVERALL_MS = 60_000; // the whole script
const CHROMIUM = '/usr/bin/chromium';
const SCREENSHOT = resolve('target/browser-chat.png');

const base = process.argv[2];
if (!base) {
  console.error('usage: node chat.test.mjs BASE_URL   (e.g. http://127.0.0.1:8000/)');
  process.exit(2);
}

const watchdog = setTimeout(() => {
  console.error(`FAIL: the browser test did not finish within ${OVERALL_MS / 1000} s`);
  process.exit(1);
}, OVERALL_MS);
watchdog.unref();

let step = 'starting';
const consoleLines = [];

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function openAs(browser, user) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  page.on('console', (msg) => consoleLines.push(`[${user} console.${msg.type()}] ${msg.text()}`));
  page.on('pageerror', (err) => consoleLines.push(`[${user} page error] ${err.message}`));
  await page.goto(base, { timeout: WAIT_MS });
  await page.fill('#name', user);
  await page.fill('#room', 'browser');
  await page.click('#join');
  return { context, page, user };
}

/** Waits until #log holds a `.msg` containing `text` and returns it. */
async function messageIn(page, text) {
  const msg = page.locator('#log .msg', { hasText: text });
  await msg.first().waitFor({ state: 'visible', timeout: WAIT_MS });
  return msg.first();
}

async function waitForLogText(page, text) {
  await page.locator('#log', { hasText: text }).waitFor({ timeout: WAIT_MS });
}

async function waitForOnline(page, users) {
  await page.waitForFunction(
    (expected) => {
      const names = Array.from(document.querySelectorAll('#online li')).map((li) => li.textContent);
      return expected.every((u) => names.some((n) => n.includes(u)));
    },
    users,
    { timeout: WAIT_MS },
  );
}

async function main() {
  step = `launching ${CHROMIUM}`;
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox'],
    timeout: WAIT_MS,
  });
  try {
    step = 'alice and bob join room "browser"';
    const alice = await openAs(browser, 'alice');
    const bob = await openAs(browser, 'bob');

    step = 'both pages show [connected]';
    await waitForLogText(alice.page, '[connected]');
    await waitForLogText(bob.page, '[connected]');

    step = 'both #online lists contain alice and bob';
    await waitForOnline(alice.page, ['alice', 'bob']);
    await waitForOnline(bob.page, ['alice', 'bob']);

    step = 'alice sends "hello from alice"; it reaches both pages with her name';
    await alice.page.fill('#message', 'hello from alice');
    await alice.page.click('#send');
    for (const { page, user } of [alice, bob]) {
      const msg = await messageIn(page, 'hello from alice');
      const text = await msg.textContent();
      check(text.includes('alice'), `${user}'s page shows the message without its sender: ${JSON.stringify(text)}`);
    }

    step = 'bob sends markup; alice sees it as literal text';
    const markup = '<b>not bold</b>';
    await bob.page.fill('#message', markup);
    await bob.page.click('#send');
    const msg = await messageIn(alice.page, markup);
    const text = await msg.textContent();
    check(text.includes('bob'), `the markup message does not name bob: ${JSON.stringify(text)}`);
    const bolds = await alice.page.locator('#log b').count();
    check(bolds === 0, `user text was parsed as HTML: ${bolds} <b> element(s) in alice's #log`);

    step = 'screenshot of alice\'s page';
    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await alice.page.screenshot({ path: SCREENSHOT, timeout: WAIT_MS });

    step = 'bob sends the close word 关闭 and sees [disconnected]';
    await bob.page.fill('#message', '关闭');
    await bob.page.click('#send');
    await waitForLogText(bob.page, '[disconnected]');
    await bob.page.locator('#reconnect').waitFor({ state: 'visible', timeout: WAIT_MS });
    const status = await bob.page.textContent('#status');
    check(!/reconnecting/i.test(status), `after the close word the page should not reconnect, status: ${status}`);

    step = 'alice sees bob leave';
    await waitForLogText(alice.page, 'bob left');
    await alice.page.waitForFunction(
      () => !Array.from(document.querySelectorAll('#online li')).some((li) => li.textContent.includes('bob')),
      null,
      { timeout: WAIT_MS },
    );
  } finally {
    await browser.close().catch(() => {});
  }
}

try {
  await main();
  console.log(`ok: browser chat test passed (screenshot: ${SCREENSHOT})`);
  process.exit(0);
} catch (err) {
  console.error(`FAIL at step: ${step}\n${err && err.stack ? err.stack : err}`);
  if (consoleLines.length) console.error('--- browser console ---\n' + consoleLines.join('\n'));
  process.exit(1);
}
