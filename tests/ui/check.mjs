// Open pages in a real headless Chromium and report what a person would meet.
//
//   node tests/ui/check.mjs CONFIG.json RESULTS.json
//
// CONFIG: {"browser_dir": ".ui-browser", "screenshots": "reports/ui",
//          "pages": [{"name", "url", "texts": [...], "own": bool}]}
// For each page: waits until every expected text shows (in the page or any of its frames),
// then records broken images (in every frame), console errors and page errors, requests to
// any host outside loopback (blocked, so an offline machine does not hang on them), the
// expected texts that never showed, and a screenshot. Python (tests/test_ui.py) judges them.
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';

const [configFile, resultsFile] = process.argv.slice(2);
const config = JSON.parse(readFileSync(configFile, 'utf8'));
const require = createRequire(path.resolve(config.browser_dir, 'package.json'));
const chromium = require('@sparticuz/chromium').default ?? require('@sparticuz/chromium');
const puppeteer = require('puppeteer-core');

const LOCAL_PROTOCOLS = new Set(['file:', 'data:', 'blob:', 'about:', 'chrome-error:']);
const LOCAL_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);
// Flags that break a normal (non-Lambda) Chromium or weaken what the test checks.
const DROPPED = new Set(['--single-process', '--in-process-gpu', '--disable-web-security',
  '--allow-running-insecure-content']);

const isExternal = (url) => {
  const u = new URL(url);
  return !LOCAL_PROTOCOLS.has(u.protocol) && !LOCAL_HOSTS.has(u.hostname);
};

async function textsShown(page, texts) {
  const missing = [];
  for (const text of texts) {
    const deadline = Date.now() + 45000;
    let found = false;
    while (!found && Date.now() < deadline) {
      for (const frame of page.frames()) {
        try {
          if (await frame.evaluate((t) => document.body && document.body.innerText.includes(t), text)) found = true;
        } catch { /* a frame navigating away */ }
      }
      if (!found) await new Promise((r) => setTimeout(r, 500));
    }
    if (!found) missing.push(text);
  }
  return missing;
}

async function brokenImages(page) {
  const broken = [];
  for (const frame of page.frames()) {
    try {
      broken.push(...await frame.evaluate(() => [...document.images]
        .filter((i) => !i.complete || i.naturalWidth === 0)
        .map((i) => i.alt || i.src.slice(0, 80))));
    } catch { /* detached frame */ }
  }
  return broken;
}

const browser = await puppeteer.launch({
  executablePath: await chromium.executablePath(),
  headless: 'shell',
  args: [...chromium.args.filter((a) => !DROPPED.has(a)), '--lang=en-US'],
  // Under LANG=C.UTF-8 the MLflow UI throws "Invalid language tag: en-US@posix".
  env: { ...process.env, LANG: 'en_US.UTF-8' },
});
mkdirSync(config.screenshots, { recursive: true });
const results = [];
try {
  for (const spec of config.pages) {
    const page = await browser.newPage();
    await page.setViewport({ width: 1400, height: 900 });
    const result = { name: spec.name, url: spec.url, own: !!spec.own, external: [], console_errors: [] };
    await page.setRequestInterception(true);
    page.on('request', (req) => {
      if (isExternal(req.url())) {
        result.external.push(req.url());
        req.abort();
      } else {
        req.continue();
      }
    });
    page.on('console', (msg) => { if (msg.type() === 'error') result.console_errors.push(msg.text()); });
    page.on('pageerror', (err) => result.console_errors.push(`page error: ${err.message}`));
    try {
      await page.goto(spec.url, { waitUntil: 'networkidle2', timeout: 60000 });
    } catch (err) {
      result.console_errors.push(`navigation: ${err.message}`);
    }
    result.missing_texts = await textsShown(page, spec.texts || []);
    await new Promise((r) => setTimeout(r, 1000)); // images inside frames that just appeared
    result.broken_images = await brokenImages(page);
    result.images = (await Promise.all(page.frames().map((f) => f.evaluate(() => document.images.length)
      .catch(() => 0)))).reduce((a, b) => a + b, 0);
    result.screenshot = path.join(config.screenshots, `${spec.name}.png`);
    await page.screenshot({ path: result.screenshot });
    results.push(result);
    await page.close();
  }
} finally {
  await browser.close();
}
writeFileSync(resultsFile, JSON.stringify(results, null, 2));
