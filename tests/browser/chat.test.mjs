// Drives the chat example's page in headless Chromium against the real server:
//   1. two users chat over WebSocket in room "browser": the online list and its "joined"/"left"
//      notices (a second tab of a user counts, but is no new arrival), markup stays text, the
//      close word;
//   2. four users in room "mixed", one per transport (WebSocket, long polling, polling,
//      server-sent events), all see each other and each other's messages, errors from the
//      server show in the log, and the close word ends every HTTP transport on the client side;
//   3. `?transport=` in the page URL picks the transport (the menu's default, "Automatic",
//      connects over WebSocket here), and a reloaded polling tab carries on with the same client.
//
// Usage: node tests/browser/chat.test.mjs http://127.0.0.1:8000/
// Run from the repository root (screenshots go to target/browser-chat.png and
// target/browser-chat-mixed.png). The server should run with a short `--poll-timeout` (the Rust
// driver passes 5 s): the test waits for an abandoned poller to be announced as gone.
// Exit code 0 on success; on failure, a message on stderr and exit code 1.

import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { check, launch, newPage as newSupportPage, progress, run, startWatchdog } from './support.mjs';

const WAIT_MS = 12_000; // every single wait
const SCREENSHOT = resolve('target/browser-chat.png');
const SCREENSHOT_MIXED = resolve('target/browser-chat-mixed.png');
const LABELS = { ws: 'WebSocket', longpoll: 'Long polling', poll: 'Polling', sse: 'Server-sent events' };

const base = process.argv[2];
if (!base) {
  console.error('usage: node chat.test.mjs BASE_URL   (e.g. http://127.0.0.1:8000/)');
  process.exit(2);
}

startWatchdog(90_000);

/** A fresh browser context (its own storage) with one page, console captured. */
async function newPage(browser, user) {
  const page = await newSupportPage(browser, user);
  const context = page.context();
  context.setDefaultTimeout(WAIT_MS);
  return { context, page, user };
}

/** Opens the page and joins `room` as `user` through the join form, with the given transport. */
async function openAs(browser, user, room = 'browser', transport = null) {
  const client = await newPage(browser, user);
  const { page } = client;
  await page.goto(base, { timeout: WAIT_MS });
  await page.fill('#name', user);
  await page.fill('#room', room);
  if (transport) await page.selectOption('#transport', transport);
  await page.click('#join');
  return { ...client, transport };
}

/** Opens the page with `query` in its URL (the page joins by itself when it names a room). */
async function openUrl(browser, user, query) {
  const client = await newPage(browser, user);
  await client.page.goto(new URL('?' + query, base).href, { timeout: WAIT_MS });
  return client;
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

/** Waits until #online names exactly `users` (in any order). */
async function waitForOnline(page, users) {
  try {
    await page.waitForFunction(
      (expected) => {
        const names = Array.from(document.querySelectorAll('#online li')).map((li) => li.dataset.user);
        return names.length === expected.length && expected.every((u) => names.includes(u));
      },
      users,
      { timeout: WAIT_MS },
    );
  } catch (err) {
    const shown = await page.locator('#online li').allTextContents().catch(() => []);
    throw new Error(`#online never became ${JSON.stringify(users)}; it shows ${JSON.stringify(shown)}\n${err.message}`);
  }
}

/** How many notices in #log say `text` (e.g. "bob joined"). */
async function notices(page, text) {
  return page.locator('#log .notice', { hasText: text }).count();
}

/** Waits until exactly `n` notices in #log say `text`. */
async function waitForNotices(page, text, n) {
  try {
    await page.waitForFunction(
      ([text, n]) => Array.from(document.querySelectorAll('#log .notice')).filter((li) => li.textContent.includes(text)).length === n,
      [text, n],
      { timeout: WAIT_MS },
    );
  } catch (err) {
    throw new Error(`#log never held ${n} notice(s) "${text}"; it has ${await notices(page, text)}\n${err.message}`);
  }
}

/** The tag after `user` in #online ("×2" for two connections), or null. */
async function tagOf(page, user) {
  const tag = page.locator(`#online li[data-user="${user}"] .tag`);
  return (await tag.count()) ? tag.textContent() : null;
}

async function waitForGone(page, user) {
  await page.waitForFunction(
    (name) => !Array.from(document.querySelectorAll('#online li')).some((li) => li.dataset.user === name),
    user,
    { timeout: WAIT_MS },
  );
}

async function statusOf(page) {
  return (await page.textContent('#status')) || '';
}

async function send(page, text) {
  await page.fill('#message', text);
  await page.click('#send');
}

/** Sends the close word and checks the page ends up disconnected for good. */
async function closeWith(client, word) {
  const { page, user } = client;
  await send(page, word);
  await waitForLogText(page, '[disconnected]');
  await page.locator('#reconnect').waitFor({ state: 'visible', timeout: WAIT_MS });
  const status = await statusOf(page);
  check(!/reconnecting/i.test(status), `${user}: after the close word the page should not reconnect, status: ${status}`);
  check(await page.isDisabled('#message'), `${user}: the message box is still enabled after the close word`);
}

async function websocketScenario(browser) {
  progress.step = 'alice joins room "browser" over WebSocket and sees herself online';
  const alice = await openAs(browser, 'alice');
  let bob = null;
  let bobAgain = null;
  try {
    await waitForOnline(alice.page, ['alice']);
    check((await tagOf(alice.page, 'alice')) === '(you)', 'alice is not marked as "(you)" in her own list');

    progress.step = 'bob joins; both pages show [connected]';
    bob = await openAs(browser, 'bob');
    await waitForLogText(alice.page, '[connected]');
    await waitForLogText(bob.page, '[connected]');
    const status = await statusOf(alice.page);
    check(status.includes('WebSocket'), `the status line does not name the transport: ${JSON.stringify(status)}`);

    progress.step = 'both #online lists contain alice and bob; alice is told "bob joined", bob not "alice joined"';
    await waitForOnline(alice.page, ['alice', 'bob']);
    await waitForOnline(bob.page, ['alice', 'bob']);
    await waitForNotices(alice.page, 'bob joined', 1);
    check((await notices(bob.page, 'alice joined')) === 0, 'bob was told alice joined, but she was there before him');

    progress.step = 'bob opens a second tab: alice lists him once with ×2, and is not told he joined again';
    bobAgain = await openAs(browser, 'bob');
    await alice.page.waitForFunction(
      () => document.querySelector('#online li[data-user="bob"] .tag')?.textContent === '×2',
      null,
      { timeout: WAIT_MS },
    );
    await waitForOnline(alice.page, ['alice', 'bob']);
    check((await notices(alice.page, 'bob joined')) === 1, 'alice was told again that bob joined');

    progress.step = "bob closes his second tab: he stays online at alice's, with one connection";
    await bobAgain.context.close();
    bobAgain = null;
    await alice.page.waitForFunction(
      () => document.querySelector('#online li[data-user="bob"]') && !document.querySelector('#online li[data-user="bob"] .tag'),
      null,
      { timeout: WAIT_MS },
    );
    check((await notices(alice.page, 'bob left')) === 0, 'alice was told bob left while he still had a tab open');

    progress.step = 'alice sends "hello from alice"; it reaches both pages with her name';
    await send(alice.page, 'hello from alice');
    for (const { page, user } of [alice, bob]) {
      const msg = await messageIn(page, 'hello from alice');
      const text = await msg.textContent();
      check(text.includes('alice'), `${user}'s page shows the message without its sender: ${JSON.stringify(text)}`);
    }

    progress.step = 'bob sends markup; alice sees it as literal text';
    const markup = '<b>not bold</b>';
    await send(bob.page, markup);
    const msg = await messageIn(alice.page, markup);
    const text = await msg.textContent();
    check(text.includes('bob'), `the markup message does not name bob: ${JSON.stringify(text)}`);
    const bolds = await alice.page.locator('#log b').count();
    check(bolds === 0, `user text was parsed as HTML: ${bolds} <b> element(s) in alice's #log`);

    progress.step = "screenshot of alice's page";
    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await alice.page.screenshot({ path: SCREENSHOT, timeout: WAIT_MS });

    progress.step = 'bob sends the close word 关闭 and sees [disconnected]';
    await closeWith(bob, '关闭');

    progress.step = 'alice sees bob leave';
    await waitForNotices(alice.page, 'bob left', 1);
    await waitForGone(alice.page, 'bob');
  } finally {
    for (const c of [alice, bob, bobAgain]) if (c) await c.context.close().catch(() => {});
  }
}

async function mixedScenario(browser) {
  progress.step = 'w, l, p and s join room "mixed" over ws, longpoll, poll and sse';
  const clients = [];
  for (const [user, transport] of [['w', 'ws'], ['l', 'longpoll'], ['p', 'poll'], ['s', 'sse']]) {
    clients.push(await openAs(browser, user, 'mixed', transport));
  }
  const [w, l, p, s] = clients;
  const users = clients.map((c) => c.user);
  try {
    for (const { page, user, transport } of clients) {
      progress.step = `${user} (${transport}) shows [connected] and names its transport`;
      await waitForLogText(page, '[connected]');
      const status = await statusOf(page);
      check(status.includes(LABELS[transport]), `${user}: the status line does not say ${LABELS[transport]}: ${status}`);
      check(status.includes('#mixed'), `${user}: the status line does not name the room: ${status}`);
      const inUrl = new URL(page.url()).searchParams.get('transport');
      check(
        inUrl === transport,
        `${user}: after joining, the page URL has transport=${inUrl} (expected ${transport})`,
      );
    }

    progress.step = 'every page lists all four users as online';
    for (const { page } of clients) await waitForOnline(page, users);

    progress.step = 'each user sends one message (with markup in it)';
    const said = (c) => `hello <i>from</i> ${c.user} over ${c.transport}`;
    for (const c of clients) await send(c.page, said(c));

    for (const { page, user } of clients) {
      progress.step = `${user}'s page shows all four messages, each with its sender`;
      for (const from of clients) {
        const msg = await messageIn(page, said(from));
        const body = await msg.locator('.user').textContent();
        check(body === from.user, `${user}'s page shows ${from.user}'s message as sent by ${JSON.stringify(body)}`);
      }
      const italics = await page.locator('#log i').count();
      check(italics === 0, `user text was parsed as HTML: ${italics} <i> element(s) in ${user}'s #log`);
      const count = await page.locator('#log .msg').count();
      check(count === 4, `${user}'s page shows ${count} messages, expected exactly 4 (nothing twice)`);
    }

    progress.step = 'screenshot of the polling page';
    mkdirSync(dirname(SCREENSHOT_MIXED), { recursive: true });
    await p.page.screenshot({ path: SCREENSHOT_MIXED, timeout: WAIT_MS });

    progress.step = 'p (poll) loses the network: it shows the backoff, then catches up on what it missed';
    await p.context.setOffline(true);
    await p.page.waitForFunction(() => document.getElementById('status').dataset.state === 'reconnecting', null, {
      timeout: WAIT_MS,
    });
    const backoff = await statusOf(p.page);
    check(/reconnecting in \d+s/.test(backoff) && backoff.includes('Polling'), `p's status while offline: ${backoff}`);
    await send(w.page, 'while p was offline');
    await messageIn(w.page, 'while p was offline');
    await p.context.setOffline(false);
    await messageIn(p.page, 'while p was offline');
    await p.page.waitForFunction(() => document.getElementById('status').dataset.state === 'connected', null, {
      timeout: WAIT_MS,
    });
    await waitForOnline(p.page, users);

    progress.step = 'a message over the server limit: the HTTP error shows as an error line';
    await l.page.evaluate(() => {
      document.getElementById('message').value = 'x'.repeat(4001); // past the input's maxlength
    });
    await l.page.click('#send');
    await l.page
      .locator('#log .notice.error', { hasText: 'limited to 4000 characters' })
      .waitFor({ state: 'visible', timeout: WAIT_MS });

    progress.step = 's (sse) sends 关闭: its page disconnects, the others see s leave';
    await closeWith(s, '关闭');
    for (const { page } of [w, l, p]) {
      await waitForLogText(page, 's left');
      await waitForGone(page, 's');
    }

    progress.step = 'p (poll) sends /close: it stops polling, the server drops it after its poll timeout';
    const polls = [];
    p.page.on('request', (req) => {
      if (req.url().includes('/events?')) polls.push(req.url());
    });
    await closeWith(p, '/close');
    const pollsAtClose = polls.length;
    for (const { page } of [w, l]) {
      await waitForLogText(page, 'p left');
      await waitForGone(page, 'p');
    }
    check(polls.length === pollsAtClose, `p kept polling after the close word: ${polls.length - pollsAtClose} more`);
    const closeSent = await w.page.locator('#log .msg', { hasText: '/close' }).count();
    check(closeSent === 0, 'the close word was posted to the room as a message');

    progress.step = 'p reconnects as a new polling client and is announced again';
    const pJoined = await notices(w.page, 'p joined');
    await p.page.click('#reconnect');
    await p.page.locator('#log .notice.state', { hasText: '[connected]' }).nth(1).waitFor({ timeout: WAIT_MS });
    await waitForOnline(p.page, ['w', 'l', 'p']);
    await waitForOnline(w.page, ['w', 'l', 'p']);
    await waitForNotices(w.page, 'p joined', pJoined + 1);

    progress.step = 'l (long polling) sends 关闭: its page disconnects and stops polling';
    await closeWith(l, '关闭');
    check((await l.page.locator('#online li').count()) === 0, 'l still lists users after disconnecting');
  } finally {
    for (const c of clients) await c.context.close().catch(() => {});
  }
}

async function urlScenario(browser) {
  progress.step = '?transport=sse in the URL joins over server-sent events';
  const a = await openUrl(browser, 'ua', 'room=urlroom&user=ua&transport=sse');
  await waitForOnline(a.page, ['ua']); // so that ua is told when ub joins
  const b = await openUrl(browser, 'ub', 'room=urlroom&user=ub&transport=longpoll');
  const c = await openUrl(browser, 'uc', 'room=urlroom&user=uc&transport=nonsense');
  try {
    // An unknown ?transport= leaves the menu on "Automatic", which connects over WebSocket.
    for (const [client, transport, label] of [[a, 'sse', 'sse'], [b, 'longpoll', 'longpoll'], [c, 'auto', 'ws']]) {
      progress.step = `${client.user}: ?transport= in the URL selects ${transport}`;
      const { page, user } = client;
      await waitForLogText(page, '[connected]');
      const chosen = await page.inputValue('#transport');
      check(chosen === transport, `${user}: #transport is ${JSON.stringify(chosen)}, expected ${transport}`);
      const status = await statusOf(page);
      check(status.includes(LABELS[label]), `${user}: the status line does not say ${LABELS[label]}: ${status}`);
    }

    progress.step = 'the three URL-joined pages see each other and each other\'s messages';
    for (const { page } of [a, b, c]) await waitForOnline(page, ['ua', 'ub', 'uc']);
    await send(b.page, 'long poll via the URL');
    await messageIn(a.page, 'long poll via the URL');
    await messageIn(c.page, 'long poll via the URL');

    progress.step = 'ub reloads: the tab resumes its polling client (same ID, nobody joins twice)';
    const idBefore = await b.page.evaluate(() => JSON.parse(sessionStorage.getItem('channels-chat-client')).id);
    await b.page.reload({ timeout: WAIT_MS });
    await waitForLogText(b.page, '[connected]');
    check((await b.page.inputValue('#transport')) === 'longpoll', 'after a reload the page left long polling');
    const idAfter = await b.page.evaluate(() => JSON.parse(sessionStorage.getItem('channels-chat-client')).id);
    check(idAfter === idBefore, `the reload changed the polling client ID: ${idBefore} → ${idAfter}`);
    await waitForOnline(b.page, ['ua', 'ub', 'uc']);
    await send(b.page, 'back after a reload');
    await messageIn(a.page, 'back after a reload');
    await messageIn(b.page, 'back after a reload');
    const joins = await a.page.locator('#log .notice', { hasText: 'ub joined' }).count();
    check(joins === 1, `ua saw ub join ${joins} times`);
    const twice = await a.page.locator('#online li[data-user="ub"] .tag').count();
    check(twice === 0, 'ua lists ub with more than one connection after the reload');
  } finally {
    for (const client of [a, b, c]) await client.context.close().catch(() => {});
  }
}

async function main() {
  progress.step = 'launching Chromium';
  const browser = await launch();
  try {
    await websocketScenario(browser);
    await mixedScenario(browser);
    await urlScenario(browser);
    console.log(`screenshots: ${SCREENSHOT}, ${SCREENSHOT_MIXED}`);
  } finally {
    await browser.close().catch(() => {});
  }
}

await run('chat', main);
