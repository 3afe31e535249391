// Drives the chat example's page in headless Chromium: a network cut of 5 s loses nothing.
// ann and bob chat over WebSocket in room "recovery"; ann's WebSocket goes through a Playwright
// route that, during the cut, closes her connection and refuses every new one (and her plain
// HTTP requests to the same URLs fail, as in a real cut). bob keeps
// talking; when the network is back, ann's page reconnects by itself with the position of the
// last message it saw (?since=) and shows what bob said meanwhile, in order, once each.
//
// Usage: node tests/browser/recovery.test.mjs http://127.0.0.1:8000/
// Exit code 0 on success; on failure, a message on stderr and exit code 1.

import { WAIT_MS, check, launch, openChat, progress, run, say, startWatchdog, texts, waitForText } from './support.mjs';

const CUT_MS = 5_000;

const base = process.argv[2];
if (!base) {
  console.error('usage: node recovery.test.mjs BASE_URL');
  process.exit(2);
}

startWatchdog(80_000);

async function main() {
  const browser = await launch();
  try {
    let cut = false;
    const open = []; // ann's routed connections: [page side, server side]
    const urls = [];
    const route = {
      socket: (ws) => {
        urls.push(ws.url());
        if (cut) {
          ws.close({ code: 4000, reason: 'network cut' });
          return;
        }
        const server = ws.connectToServer();
        open.push([ws, server]);
      },
      http: (request) => (cut ? request.abort('internetdisconnected') : request.continue()),
    };
    progress.step = 'ann (routed) and bob join room "recovery" over WebSocket';
    const ann = await openChat(browser, base, 'ann', 'recovery', route);
    const bob = await openChat(browser, base, 'bob', 'recovery', null);
    await say(bob, 'before the cut');
    await waitForText(ann, 'before the cut');

    progress.step = 'the network is cut for ann; bob says three things';
    cut = true;
    for (const [ws, server] of open.splice(0)) {
      await server.close().catch(() => {});
      await ws.close({ code: 4000, reason: 'network cut' }).catch(() => {});
    }
    await ann.locator('#status[data-state="reconnecting"]').waitFor({ timeout: WAIT_MS });
    const started = Date.now();
    for (let k = 1; k <= 3; k++) {
      await say(bob, `during the cut ${k}`);
      await waitForText(bob, `during the cut ${k}`);
    }
    await new Promise((r) => setTimeout(r, Math.max(0, CUT_MS - (Date.now() - started))));

    progress.step = 'the network is back: ann reconnects by herself and recovers what bob said';
    cut = false;
    try {
      await waitForText(ann, 'during the cut 3');
    } catch (err) {
      throw new Error(`ann's log: ${await ann.locator('#log').innerText()}\nstatus: ${await ann.locator('#status').innerText()}\nurls: ${JSON.stringify(urls)}\n${err.message}`);
    }
    await say(bob, 'after the cut');
    await waitForText(ann, 'after the cut');
    const got = await texts(ann);
    const expected = ['before the cut', 'during the cut 1', 'during the cut 2', 'during the cut 3', 'after the cut'];
    check(JSON.stringify(got) === JSON.stringify(expected), `ann's transcript is ${JSON.stringify(got)}`);
    check(JSON.stringify(await texts(bob)) === JSON.stringify(expected), `bob's transcript is ${JSON.stringify(await texts(bob))}`);
    const unrecovered = await ann.locator('#log .notice', { hasText: 'could not be recovered' }).count();
    check(unrecovered === 0, 'ann was told messages could not be recovered');
  } finally {
    await browser.close().catch(() => {});
  }
}

await run('recovery', main);
