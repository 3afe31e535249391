// Drives the chat example's page in headless Chromium with WebSockets blocked by the page's
// network: the page's channels.js falls back by itself and still chats with WebSocket users.
//   - dave joins room "fallback" normally (WebSocket);
//   - carol's page refuses every WebSocket to /ws/chat/ (a Playwright route closes each one
//     before it opens, as a proxy that drops upgrades would): her page moves to server-sent
//     events + POST on its own, with the transport menu left on "Automatic";
//   - erin's page refuses the WebSocket and aborts every event stream too: it ends on long
//     polling;
//   - the three talk; every page shows the same conversation, once each.
//
// Usage: node tests/browser/fallback.test.mjs http://127.0.0.1:8000/
// Exit code 0 on success; on failure, a message on stderr and exit code 1.

import { WAIT_MS, check, launch, newPage, progress, run, say, startWatchdog, texts, waitForText } from './support.mjs';

const ROOM = 'fallback';

const base = process.argv[2];
if (!base) {
  console.error('usage: node fallback.test.mjs BASE_URL');
  process.exit(2);
}

startWatchdog(80_000);

/** Opens the page as `user`; `block` sets up the page's network before it loads. */
async function openAs(browser, user, block) {
  const page = await newPage(browser, user);
  const context = page.context();
  const sockets = { tried: 0, upgrades: 0 };
  page.on('websocket', () => {
    sockets.upgrades += 1;
  });
  if (block) await block(page, sockets);
  await page.goto(base, { timeout: WAIT_MS });
  await page.fill('#name', user);
  await page.fill('#room', ROOM);
  const chosen = await page.inputValue('#transport');
  check(chosen === 'auto', `${user}: the transport menu starts on ${chosen}, not "auto"`);
  await page.click('#join');
  return { context, page, user, sockets };
}

/** Every WebSocket to the chat is closed before it opens, as a proxy that drops upgrades. */
async function blockWebSockets(page, sockets) {
  await page.routeWebSocket(/\/ws\/chat\//, (ws) => {
    sockets.tried += 1;
    ws.close({ code: 4000, reason: 'blocked by the network' });
  });
}

async function statusOf(page) {
  return (await page.textContent('#status')) || '';
}

async function waitForStatus(client, label) {
  try {
    await client.page.waitForFunction(
      (label) => {
        const status = document.getElementById('status');
        return status.dataset.state === 'connected' && status.textContent.includes(label);
      },
      label,
      { timeout: WAIT_MS },
    );
  } catch (err) {
    const log = await client.page.locator('#log').innerText().catch(() => '');
    throw new Error(`${client.user}: never connected over ${label}; status: ${await statusOf(client.page)}\nlog:\n${log}\n${err.message}`);
  }
}

async function waitForOnline(page, users) {
  await page.waitForFunction(
    (expected) => {
      const names = Array.from(document.querySelectorAll('#online li')).map((li) => li.dataset.user);
      return names.length === expected.length && expected.every((u) => names.includes(u));
    },
    users,
    { timeout: WAIT_MS },
  );
}

async function main() {
  const browser = await launch();
  const clients = [];
  try {
    progress.step = 'dave joins over WebSocket (Automatic)';
    const dave = await openAs(browser, 'dave', null);
    clients.push(dave);
    await waitForStatus(dave, 'WebSocket');

    progress.step = "carol's network refuses WebSockets: her page falls back to server-sent events by itself";
    const carol = await openAs(browser, 'carol', blockWebSockets);
    clients.push(carol);
    await waitForStatus(carol, 'Server-sent events');
    check(carol.sockets.tried >= 1, 'carol never tried a WebSocket');
    const fallbackNotice = await carol.page.locator('#log .notice', { hasText: 'using Server-sent events' }).count();
    check(fallbackNotice === 1, `carol's log shows ${fallbackNotice} fallback notices, expected 1`);

    progress.step = "erin's network refuses WebSockets and event streams: her page ends on long polling";
    const erin = await openAs(browser, 'erin', async (page, sockets) => {
      await blockWebSockets(page, sockets);
      await page.route(/\/chat\/[^/]+\/stream/, (route) => route.abort('connectionrefused'));
    });
    clients.push(erin);
    await waitForStatus(erin, 'Long polling');

    progress.step = 'everyone sees everyone online';
    for (const { page } of clients) await waitForOnline(page, ['carol', 'dave', 'erin']);

    progress.step = 'the three talk across transports';
    const said = [];
    for (let round = 1; round <= 3; round++) {
      for (const c of clients) {
        const text = `${c.user} says ${round}`;
        said.push(text);
        await say(c.page, text);
        for (const other of clients) await waitForText(other.page, text);
      }
    }

    progress.step = 'every page shows the whole conversation, in order, once each';
    for (const c of clients) {
      const got = await texts(c.page);
      check(JSON.stringify(got) === JSON.stringify(said), `${c.user}'s transcript is ${JSON.stringify(got)}`);
    }
    check(
      (await statusOf(carol.page)).includes('Server-sent events'),
      `carol left server-sent events: ${await statusOf(carol.page)}`,
    );
    check(carol.sockets.upgrades === 0 && erin.sockets.upgrades === 0, 'a blocked page got a WebSocket through');
  } finally {
    for (const c of clients) await c.context.close().catch(() => {});
    await browser.close().catch(() => {});
  }
}

await run('fallback', main);
