// What the browser test scripts share: a watchdog, checks, Chromium, and reading the chat page.

import { chromium } from 'playwright-core';

export const WAIT_MS = 15_000;
const CHROMIUM = '/usr/bin/chromium';

/** The step a script is at and what the browser logged, for failure messages. */
export const progress = { step: 'starting', consoleLines: [] };

/** Fails the script if it has not finished within `overallMs`. */
export function startWatchdog(overallMs) {
  const watchdog = setTimeout(() => {
    console.error(`FAIL at step: ${progress.step}\nthe browser test did not finish within ${overallMs / 1000} s`);
    printConsole();
    process.exit(1);
  }, overallMs);
  watchdog.unref();
}

function printConsole() {
  if (progress.consoleLines.length) console.error('--- browser console ---\n' + progress.consoleLines.join('\n'));
}

export function check(condition, message) {
  if (!condition) throw new Error(message);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function launch() {
  return chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], timeout: WAIT_MS });
}

/** A new page in its own context whose console goes into the failure message as `user`;
 * `prepare(context)` runs before the page is made (routes for every page of the context). */
export async function newPage(browser, user, { viewport = { width: 1000, height: 700 }, prepare = null } = {}) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(WAIT_MS);
  if (prepare) await prepare(context);
  const page = await context.newPage();
  page.on('console', (msg) => progress.consoleLines.push(`[${user} console.${msg.type()}] ${msg.text()}`));
  page.on('pageerror', (err) => progress.consoleLines.push(`[${user} page error] ${err.message}`));
  return page;
}

/** Joins `room` as `user` over WebSocket on the chat page at `base`, and waits to be online. */
export async function joinChat(page, base, user, room) {
  await page.goto(base, { timeout: WAIT_MS });
  await page.fill('#name', user);
  await page.fill('#room', room);
  await page.selectOption('#transport', 'ws');
  await page.click('#join');
  await page.locator('#online li[data-user="' + user + '"]').waitFor({ timeout: WAIT_MS });
}

/** A new page as `user` in `room` of the chat at `base`, over WebSocket. With `route`, the
 * page's WebSockets to /ws/chat/ go through `route.socket` and its plain HTTP to those URLs
 * through `route.http` (channels.js asks a WebSocket's URL over HTTP to tell a server that is
 * down from one that refuses, so a simulated cut must cover both). */
export async function openChat(browser, base, user, room, route = null) {
  const page = await newPage(browser, user);
  if (route) {
    await page.routeWebSocket(/\/ws\/chat\//, route.socket);
    await page.route(/\/ws\/chat\//, route.http);
  }
  await joinChat(page, base, user, room);
  return page;
}

/** Sends `text` from the chat page's message box. */
export async function say(page, text) {
  await page.fill('#message', text);
  await page.click('#send');
}

/** The texts of the chat messages in the page's #log, in order. */
export function texts(page) {
  return page.locator('#log .msg .text').allTextContents();
}

export async function waitForText(page, text) {
  await page.locator('#log .msg .text', { hasText: text }).first().waitFor({ timeout: WAIT_MS });
}

/** What a chat page shows, for a failure message. */
export async function describe(page) {
  return `log: ${await page.locator('#log').innerText()}\nstatus: ${await page.locator('#status').innerText()}`;
}

/** Runs `main`, prints the outcome and exits: 0 when it passed, 1 with the step and the
 * browser console when it failed. */
export async function run(name, main) {
  try {
    const started = Date.now();
    await main();
    console.log(`ok: browser ${name} test passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    process.exit(0);
  } catch (err) {
    console.error(`FAIL at step: ${progress.step}\n${err && err.stack ? err.stack : err}`);
    printConsole();
    process.exit(1);
  }
}
