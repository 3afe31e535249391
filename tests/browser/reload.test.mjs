// Drives the chat example's page in headless Chromium: a reload loses nothing. ann and bob chat
// over WebSocket in room "reload"; ann's WebSocket goes through a Playwright route that can cut
// her off. While cut off she sends "typed before the reload" (it waits in the page), then
// reloads the page, still cut off; bob says "said during the reload". Once the network is back,
// ann's reloaded page sends her message again (with the ID it had) and resumes from the last
// message it had seen: both pages show each message once, in order.
//
// Usage: node tests/browser/reload.test.mjs http://127.0.0.1:8000/
// Exit code 0 on success; on failure, a message on stderr and exit code 1.

import { WAIT_MS, check, describe, launch, openChat, progress, run, say, sleep, startWatchdog, texts, waitForText } from './support.mjs';

const ROOM = 'reload';
const TYPED = 'typed before the reload';
const SAID = 'said during the reload';

const base = process.argv[2];
if (!base) {
  console.error('usage: node reload.test.mjs BASE_URL');
  process.exit(2);
}
startWatchdog(80_000);

await run('reload', async () => {
  const browser = await launch();
  try {
    let cut = false; // ann's connections (and HTTP to the WebSocket's URL) fail
    let current = null; // ann's open routed connection
    const frames = []; // what ann's page sent, parsed
    const route = {
      socket: (ws) => {
        if (cut) {
          ws.close({ code: 4000, reason: 'network cut' });
          return;
        }
        const server = ws.connectToServer();
        current = { ws, server };
        ws.onMessage((frame) => {
          try {
            if (frame) frames.push(JSON.parse(frame));
          } catch (_) {
            frames.push({ message: frame });
          }
          server.send(frame);
        });
        server.onMessage((frame) => ws.send(frame));
      },
      http: (request) => (cut ? request.abort('internetdisconnected') : request.continue()),
    };

    progress.step = 'ann (routed) and bob join room "reload" over WebSocket';
    const ann = await openChat(browser, base, 'ann', ROOM, route);
    const bob = await openChat(browser, base, 'bob', ROOM);
    await say(bob, 'hello');
    await waitForText(ann, 'hello');

    progress.step = `ann is cut off and sends "${TYPED}"`;
    cut = true;
    await current.ws.close({ code: 4000, reason: 'network cut' }).catch(() => {});
    await current.server.close().catch(() => {});
    await ann.locator('#status[data-state="reconnecting"]').waitFor({ timeout: WAIT_MS });
    await say(ann, TYPED);

    progress.step = `ann reloads the page, still cut off; bob says "${SAID}"`;
    await ann.reload({ timeout: WAIT_MS });
    await ann.locator('#status[data-state="reconnecting"]').waitFor({ timeout: WAIT_MS });
    await say(bob, SAID);
    await waitForText(bob, SAID);
    await sleep(300);
    check(!(await texts(bob)).includes(TYPED), `bob got "${TYPED}" while ann was cut off`);

    progress.step = 'the network is back: ann sends her message again and gets what she missed';
    cut = false;
    await ann.locator('#reconnect').click({ timeout: 2_000 }).catch(() => {}); // sooner than the backoff
    try {
      await waitForText(bob, TYPED);
      await waitForText(ann, TYPED);
      await waitForText(ann, SAID);
    } catch (err) {
      throw new Error(`ann's ${await describe(ann)}\nbob's ${await describe(bob)}\n${err.message}`);
    }
    const typed = frames.filter((f) => f.message === TYPED);
    check(typed.length >= 1 && typed.every((f) => typeof f.id === 'string' && f.id === typed[0].id),
      `"${TYPED}" was not sent, or sent with different IDs: ${JSON.stringify(typed)}`);

    progress.step = 'both transcripts hold every message once, in order';
    await say(bob, 'after');
    await waitForText(ann, 'after');
    await sleep(500); // a double would arrive right behind "after"
    const bobs = await texts(bob);
    check(JSON.stringify(bobs) === JSON.stringify(['hello', SAID, TYPED, 'after']), `bob's transcript is ${JSON.stringify(bobs)}`);
    const anns = await texts(ann);
    check(JSON.stringify(anns) === JSON.stringify([SAID, TYPED, 'after']), `ann's transcript after the reload is ${JSON.stringify(anns)}`);
    // The reloaded page says it cannot connect while cut off; nothing may be reported unsent.
    const errors = await ann.locator('#log .notice.error').allTextContents();
    check(!errors.some((e) => e.includes(TYPED) || e.includes('not sent') || e.includes('not confirmed')), `ann was told a message was not sent: ${JSON.stringify(errors)}`);
  } finally {
    await browser.close().catch(() => {});
  }
});
