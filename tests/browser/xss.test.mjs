// Hostile names and messages in the chat page, in headless Chromium against the real server:
// a user whose name is markup sends markup, over WebSocket and over an HTTP POST; another
// user's page (one on WebSocket, one on long polling) must show all of it as literal text,
// create no element from it and run none of its script.
//
// Usage: node tests/browser/xss.test.mjs http://127.0.0.1:8000/
// Exit code 0 on success; on failure, a message on stderr and exit code 1.

import { WAIT_MS, check, launch, newPage, progress, run, startWatchdog } from './support.mjs';

const ROOM = 'xss';

const base = process.argv[2];
if (!base) {
  console.error('usage: node xss.test.mjs BASE_URL');
  process.exit(2);
}
startWatchdog(60_000);

// Each would set window.__xss (or load an element) if the page parsed it as HTML.
const NAME = '<img src=x onerror=__xss=1>';
const POST_NAME = '<svg onload=__xss=2>';
const MESSAGES = [
  '<script>window.__xss = "script"</script>',
  '<img src=x onerror="window.__xss = \'img\'">',
  '<svg><animate onbegin="window.__xss = \'svg\'" attributeName=x dur=1s>',
  '"><iframe src="javascript:parent.__xss=\'iframe\'"></iframe>',
  '&lt;b&gt;entities stay entities&lt;/b&gt;',
];
const POSTED = '<img src=y onerror="window.__xss = \'posted\'"> via POST';

async function join(browser, user, transport) {
  const page = await newPage(browser, user);
  const context = page.context();
  await page.goto(base, { timeout: WAIT_MS });
  await page.fill('#name', user);
  await page.fill('#room', ROOM);
  await page.selectOption('#transport', transport);
  await page.click('#join');
  await page.locator('#log', { hasText: '[connected]' }).waitFor({ timeout: WAIT_MS });
  return { context, page, user };
}

async function main() {
  const browser = await launch();
  try {
    progress.step = 'alice (WebSocket) and carol (long polling) join; mallory joins with a markup name';
    const alice = await join(browser, 'alice', 'ws');
    const carol = await join(browser, 'carol', 'longpoll');
    const mallory = await join(browser, NAME, 'ws');

    progress.step = 'mallory sends markup over WebSocket';
    for (const text of MESSAGES) {
      await mallory.page.fill('#message', text);
      await mallory.page.click('#send');
    }
    progress.step = 'someone posts markup with a markup name over HTTP';
    const url = new URL(`chat/${ROOM}/messages?user=${encodeURIComponent(POST_NAME)}`, base);
    const posted = await fetch(url, { method: 'POST', body: POSTED });
    check(posted.status === 202, `the POST was answered ${posted.status}`);

    for (const { page, user } of [alice, carol]) {
      progress.step = `${user}'s page shows every message as literal text`;
      for (const text of [...MESSAGES, POSTED]) {
        await page.locator('#log .msg', { hasText: text }).first().waitFor({ timeout: WAIT_MS });
      }
      const fromMallory = await page.locator('#log .msg', { hasText: MESSAGES[0] }).first().textContent();
      check(fromMallory.includes(NAME), `${user}: the sender's name is not shown literally: ${fromMallory}`);
      const fromPost = await page.locator('#log .msg', { hasText: POSTED }).first().textContent();
      check(fromPost.includes(POST_NAME), `${user}: the poster's name is not shown literally: ${fromPost}`);
      progress.step = `${user}'s #online lists the markup name as text`;
      await page.waitForFunction(
        (name) => Array.from(document.querySelectorAll('#online li')).some((li) => li.textContent.includes(name)),
        NAME,
        { timeout: WAIT_MS },
      );
    }
    // Give any injected handler (image errors, SVG animations) time to fire.
    await alice.page.waitForTimeout(1000);
    for (const { page, user } of [alice, carol, mallory]) {
      progress.step = `${user}'s page created no element and ran no script from user input`;
      const injected = await page.evaluate(() => ({
        xss: window.__xss,
        elements: document.querySelectorAll('#log img, #log script, #log svg, #log iframe, #online img, #online svg')
          .length,
      }));
      check(injected.xss === undefined, `${user}: injected script ran (window.__xss = ${injected.xss})`);
      check(injected.elements === 0, `${user}: ${injected.elements} element(s) were made from user input`);
    }
    console.log('xss: names and messages with markup render as text on every transport');
  } finally {
    await browser.close();
  }
}

await run('xss', main);
