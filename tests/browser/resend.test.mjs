// Drives the chat example's page in headless Chromium: a message caught by a dying WebSocket
// arrives once. ann and bob chat over WebSocket in room "resend"; ann's WebSocket goes through a
// Playwright route that forwards every frame itself, so it can cut the connection at the exact
// moment a frame passes:
//
// 1. ann's frame "lost in the cut" is swallowed and her socket closed before it reaches the
//    server (the browser took it, the network did not deliver it). While she is cut off she
//    types "typed while away". Once back, her page sends the lost message again, with the ID it
//    had, then the one typed meanwhile: both pages show each once, in that order.
// 2. ann's frame "arrived before the cut" reaches the server, but her socket is cut before its
//    echo comes back, and she stays cut off until bob has it. Once back, her page sends it
//    again (it never saw it come back), the server drops the copy, and the replay (`?since=`)
//    shows it to her: both pages show it once.
//
// Usage: node tests/browser/resend.test.mjs http://127.0.0.1:8000/
// Exit code 0 on success; on failure, a message on stderr and exit code 1.

import { WAIT_MS, check, describe, launch, openChat, progress, run, say, sleep, startWatchdog, texts, waitForText } from './support.mjs';

const ROOM = 'resend';
const LOST = 'lost in the cut';
const AWAY = 'typed while away';
const ARRIVED = 'arrived before the cut';

const base = process.argv[2];
if (!base) {
  console.error('usage: node resend.test.mjs BASE_URL');
  process.exit(2);
}

startWatchdog(80_000);

async function main() {
  const browser = await launch();
  try {
    let cut = false; // new connections (and HTTP to the WebSocket's URL) fail
    // What to do with ann's next frame whose message is this text: 'swallow' or 'deliver',
    // and then cut her connection.
    const cutAt = new Map();
    const connections = []; // ann's routed connections, in order: { frames: [parsed frames from the page] }
    const route = {
      socket: (ws) => {
        if (cut) {
          ws.close({ code: 4000, reason: 'network cut' });
          return;
        }
        const server = ws.connectToServer();
        const connection = { frames: [], dead: false };
        connections.push(connection);
        const kill = (closeServerAfterMs) => {
          connection.dead = true;
          cut = true;
          ws.close({ code: 4000, reason: 'network cut' }).catch(() => {});
          setTimeout(() => server.close().catch(() => {}), closeServerAfterMs);
        };
        ws.onMessage((frame) => {
          if (connection.dead) return;
          let parsed = null;
          try {
            parsed = typeof frame === 'string' && frame ? JSON.parse(frame) : null;
          } catch (_) {
            parsed = null; // plain text: the old page
          }
          const text = parsed && typeof parsed === 'object' ? parsed.message : frame;
          if (frame !== '') connection.frames.push(parsed && typeof parsed === 'object' ? parsed : { message: frame });
          const what = cutAt.get(text);
          if (what === 'swallow') {
            cutAt.delete(text);
            kill(0);
            return;
          }
          server.send(frame);
          if (what === 'deliver') {
            cutAt.delete(text);
            // The frame went out to the server; the echo never makes it back to the page. The
            // server side goes later, as a real network's would.
            kill(1000);
          }
        });
        server.onMessage((frame) => {
          if (!connection.dead) ws.send(frame);
        });
      },
      http: (request) => (cut ? request.abort('internetdisconnected') : request.continue()),
    };

    progress.step = 'ann (routed) and bob join room "resend" over WebSocket';
    const ann = await openChat(browser, base, 'ann', ROOM, route);
    const bob = await openChat(browser, base, 'bob', ROOM, null);
    await say(bob, 'hello');
    await waitForText(ann, 'hello');

    progress.step = `ann's "${LOST}" never reaches the server: her socket dies as she sends it`;
    cutAt.set(LOST, 'swallow');
    await say(ann, LOST);
    await ann.locator('#status[data-state="reconnecting"]').waitFor({ timeout: WAIT_MS });
    check(!cutAt.has(LOST), `the route did not see "${LOST}"`);
    const lostFrame = connections[0].frames.find((f) => f.message === LOST);
    progress.step = `while cut off, ann types "${AWAY}"`;
    await say(ann, AWAY);
    await sleep(500);
    check((await texts(bob)).length === 1, `bob got something during the cut: ${JSON.stringify(await texts(bob))}`);

    progress.step = 'the network is back: ann reconnects and sends again what did not come back';
    cut = false;
    try {
      await waitForText(bob, AWAY);
      await waitForText(ann, AWAY);
    } catch (err) {
      throw new Error(`ann's ${await describe(ann)}\nbob's ${await describe(bob)}\n${err.message}`);
    }
    check(connections.length >= 2, 'ann did not reconnect through the route');
    const resent = connections.slice(1).flatMap((c) => c.frames).filter((f) => f.message === LOST);
    check(resent.length >= 1, `ann's page did not send "${LOST}" again`);
    check(typeof lostFrame.id === 'string' && lostFrame.id.length > 0, `"${LOST}" was sent without an ID: ${JSON.stringify(lostFrame)}`);
    check(resent.every((f) => f.id === lostFrame.id), `"${LOST}" was sent again with another ID: ${JSON.stringify([lostFrame, ...resent])}`);

    progress.step = `ann's "${ARRIVED}" reaches the server, but her socket dies before its echo comes back`;
    const before = connections.length;
    cutAt.set(ARRIVED, 'deliver');
    await say(ann, ARRIVED);
    await ann.locator('#status[data-state="reconnecting"]').waitFor({ timeout: WAIT_MS });
    check(!cutAt.has(ARRIVED), `the route did not see "${ARRIVED}"`);
    const arrivedFrame = connections[before - 1].frames.find((f) => f.message === ARRIVED);
    await waitForText(bob, ARRIVED); // the first send did go through
    check(!(await texts(ann)).includes(ARRIVED), `ann saw the echo of "${ARRIVED}" before the cut`);

    progress.step = 'the network is back: the page sends it again, the server keeps it once, the replay shows it';
    cut = false;
    try {
      await waitForText(ann, ARRIVED);
    } catch (err) {
      throw new Error(`ann's ${await describe(ann)}\n${err.message}`);
    }
    await say(bob, 'after');
    await waitForText(ann, 'after');
    await waitForText(bob, 'after');
    const again = connections.slice(before).flatMap((c) => c.frames).filter((f) => f.message === ARRIVED);
    check(again.length >= 1, `ann's page did not send "${ARRIVED}" again (nothing to drop)`);
    check(again.every((f) => f.id === arrivedFrame.id), `"${ARRIVED}" was sent again with another ID`);

    progress.step = 'both transcripts hold every message once, in order';
    await sleep(500); // a double would arrive right behind "after"
    const expected = ['hello', LOST, AWAY, ARRIVED, 'after'];
    for (const [who, page] of [['ann', ann], ['bob', bob]]) {
      const got = await texts(page);
      check(JSON.stringify(got) === JSON.stringify(expected), `${who}'s transcript is ${JSON.stringify(got)}`);
    }
    const errors = await ann.locator('#log .notice.error').allTextContents();
    check(errors.length === 0, `ann was shown errors: ${JSON.stringify(errors)}`);
  } finally {
    await browser.close().catch(() => {});
  }
}

await run('resend', main);
