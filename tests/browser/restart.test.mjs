// Drives the chat example's page in headless Chromium while the server restarts on Redis:
// ann and bob talk in room "restart"; the driver (tests/browser_client.rs) stops the chat
// process and starts a new one on the same address and the same Redis mid-conversation. Both
// keep typing while the server is away (channels.js queues it), the pages reconnect by
// themselves with the last position they saw, and afterwards each page's transcript is the
// same, holds every message sent once, and keeps each sender's order.
//
// Usage: node tests/browser/restart.test.mjs http://127.0.0.1:PORT/
// It prints "RESTART" on a line of its own when the server should restart, and waits for
// "RESTARTED" on its standard input. Exit code 0 on success; on failure, a message on stderr
// and exit code 1.

import { createInterface } from 'node:readline';
import { check, launch, newPage, progress, run, startWatchdog, texts } from './support.mjs';

// Longer than the other scripts' waits: a page may take a while to get back after the restart.
const WAIT_MS = 20_000;
const ROOM = 'restart';
const PER_PHASE = 5; // messages per user in each phase

const base = process.argv[2];
if (!base) {
  console.error('usage: node restart.test.mjs BASE_URL');
  process.exit(2);
}

startWatchdog(100_000);

const stdinLines = [];
const stdinWaiters = [];
createInterface({ input: process.stdin }).on('line', (line) => {
  const waiter = stdinWaiters.shift();
  if (waiter) waiter(line.trim());
  else stdinLines.push(line.trim());
});
function nextStdinLine() {
  if (stdinLines.length) return Promise.resolve(stdinLines.shift());
  return new Promise((resolve) => stdinWaiters.push(resolve));
}

async function openAs(browser, user) {
  const page = await newPage(browser, user);
  const context = page.context();
  context.setDefaultTimeout(WAIT_MS);
  await page.goto(base, { timeout: WAIT_MS });
  await page.fill('#name', user);
  await page.fill('#room', ROOM);
  await page.click('#join');
  await page.locator('#status[data-state="connected"]').waitFor({ timeout: WAIT_MS });
  return { context, page, user };
}

async function send(page, text) {
  await page.fill('#message', text);
  await page.click('#send');
  // The box empties once channels.js took the message (sent, or queued while offline).
  await page.waitForFunction(() => document.getElementById('message').value === '', null, { timeout: WAIT_MS });
}

async function waitForCount(client, n) {
  try {
    await client.page.waitForFunction((n) => document.querySelectorAll('#log .msg').length >= n, n, { timeout: WAIT_MS });
  } catch (err) {
    const got = await texts(client.page);
    const status = await client.page.textContent('#status');
    throw new Error(`${client.user} shows ${got.length} of ${n} messages (status: ${status}): ${JSON.stringify(got)}\n${err.message}`);
  }
}

async function main() {
  const browser = await launch();
  try {
    progress.step = 'ann and bob join room "restart"';
    const ann = await openAs(browser, 'ann');
    const bob = await openAs(browser, 'bob');
    const clients = [ann, bob];
    const sent = { ann: [], bob: [] };
    const say = async (client, text) => {
      sent[client.user].push(text);
      await send(client.page, text);
    };

    progress.step = 'they talk';
    for (let k = 1; k <= PER_PHASE; k++) {
      for (const c of clients) await say(c, `${c.user} before ${k}`);
    }
    for (const c of clients) await waitForCount(c, 2 * PER_PHASE);

    progress.step = 'the server restarts; both pages notice';
    console.log('RESTART');
    for (const c of clients) {
      await c.page.waitForFunction(() => document.getElementById('status').dataset.state !== 'connected', null, {
        timeout: WAIT_MS,
      });
    }

    progress.step = 'both keep talking while the server is away (their pages queue it)';
    for (let k = 1; k <= PER_PHASE; k++) {
      for (const c of clients) await say(c, `${c.user} during ${k}`);
    }
    const reply = await Promise.race([
      nextStdinLine(),
      new Promise((resolve) => setTimeout(() => resolve('(nothing within 30 s)'), 30_000)),
    ]);
    check(reply === 'RESTARTED', `the driver answered ${JSON.stringify(reply)} instead of RESTARTED`);

    progress.step = 'the pages reconnect by themselves; ann talks while bob may still be reconnecting';
    for (let k = 1; k <= PER_PHASE; k++) await say(ann, `ann after ${k}`);
    for (const c of clients) {
      await c.page.locator('#status[data-state="connected"]').waitFor({ timeout: WAIT_MS });
    }
    for (let k = 1; k <= PER_PHASE; k++) await say(bob, `bob after ${k}`);

    progress.step = "every page shows every message once, in each sender's order, and the same transcript";
    const total = sent.ann.length + sent.bob.length;
    for (const c of clients) await waitForCount(c, total);
    // A moment for anything doubled to show up.
    await new Promise((r) => setTimeout(r, 500));
    const transcripts = [];
    for (const c of clients) {
      const got = await texts(c.page);
      transcripts.push(got);
      check(got.length === total, `${c.user} shows ${got.length} messages, expected ${total}: ${JSON.stringify(got)}`);
      check(new Set(got).size === got.length, `${c.user} shows a message twice: ${JSON.stringify(got)}`);
      for (const user of ['ann', 'bob']) {
        const theirs = got.filter((t) => t.startsWith(user + ' '));
        check(
          JSON.stringify(theirs) === JSON.stringify(sent[user]),
          `${c.user} shows ${user}'s messages as ${JSON.stringify(theirs)}, ${user} sent ${JSON.stringify(sent[user])}`,
        );
      }
      const unrecovered = await c.page.locator('#log .notice', { hasText: 'could not be recovered' }).count();
      check(unrecovered === 0, `${c.user} was told messages could not be recovered`);
    }
    check(
      JSON.stringify(transcripts[0]) === JSON.stringify(transcripts[1]),
      `the transcripts differ:\nann: ${JSON.stringify(transcripts[0])}\nbob: ${JSON.stringify(transcripts[1])}`,
    );
    console.log(`transcript: ${total} messages, identical on both pages`);
  } finally {
    await browser.close().catch(() => {});
  }
}

await run('restart', main);
