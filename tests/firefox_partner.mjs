// A partner in Firefox: Debian's firefox-esr, headless with a fake camera and microphone,
// driven by puppeteer-core over WebDriver BiDi (no geckodriver). tests/firefox.py starts it
// (inside a network namespace when asked) and talks to it over stdin/stdout, one JSON object
// per line:
//
//   out: {"ready": true, "version": "...", "pid": N} once the page at URL has loaded (N: Firefox's,
//        which puppeteer starts in a process group of its own)
//   in:  {"id": 1, "cmd": "sample"}                 -> tests/probe.js's reading of the page
//   in:  {"id": 2, "cmd": "click", "name": "Join session"}   a button, by its accessible name
//   in:  {"id": 3, "cmd": "eval", "js": "() => document.title"}  any expression, evaluated
//   in:  {"id": 4, "cmd": "quit"}
//   out: {"id": n, "ok": true, "value": ...} or {"id": n, "ok": false, "error": "..."}
//
// Usage: node tests/firefox_partner.mjs URL [SECURE_HOST]. SECURE_HOST (the server's host as
// this browser sees it) is treated as a secure context, so getUserMedia works on plain http.

import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';

const here = dirname(fileURLToPath(import.meta.url));
const FIREFOX = process.env.FIREFOX || '/usr/bin/firefox-esr';
const [url, secureHost] = process.argv.slice(2);
if (!url) {
  process.stderr.write('usage: node tests/firefox_partner.mjs URL [SECURE_HOST]\n');
  process.exit(2);
}

const send = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);

const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: FIREFOX,
  headless: true,
  extraPrefsFirefox: {
    'media.navigator.streams.fake': true,
    'media.navigator.permission.disabled': true,
    'media.autoplay.default': 0,
    'media.autoplay.blocking_policy': 0,
    ...(secureHost ? { 'dom.securecontext.allowlist': secureHost } : {}),
    // Firefox phones home and updates itself; nothing here may leave the machine.
    'app.update.enabled': false,
    'datareporting.policy.dataSubmissionEnabled': false,
    'network.captive-portal-service.enabled': false,
  },
});
const page = await browser.newPage();
await page.setViewport({ width: 1280, height: 800 });
await page.evaluateOnNewDocument(readFileSync(join(here, 'probe.js'), 'utf8'));
await page.goto(url);
send({ ready: true, version: await browser.version(), pid: browser.process()?.pid ?? null });

async function run(message) {
  switch (message.cmd) {
    case 'sample':
      return page.evaluate(() => window.__probeSample());
    case 'click': {
      const button = await page.waitForSelector(`::-p-aria([name="${message.name}"][role="button"])`,
        { timeout: message.timeout ?? 20000 });
      await button.click();
      return true;
    }
    case 'eval':
      // eslint-disable-next-line no-new-func
      return page.evaluate(new Function(`return (${message.js})();`));
    case 'quit':
      await browser.close();
      return true;
    default:
      throw new Error(`unknown command ${message.cmd}`);
  }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const message = JSON.parse(line);
  try {
    send({ id: message.id, ok: true, value: (await run(message)) ?? null });
  } catch (error) {
    send({ id: message.id, ok: false, error: String(error?.message ?? error) });
  }
  if (message.cmd === 'quit') break;
}
await browser.close().catch(() => {});
process.exit(0);
