// Real-browser end-to-end test of tokengate's self-service API token page.
//
//   node e2e/token-page.mjs --base http://127.0.0.1:PORT --user alice --password PW --shots DIR
//
// Drives headless Debian Chromium (/usr/bin/chromium) through playwright-core: log in,
// create a token with only `read`, use it against the proxy from Node, grant `create` on
// the page, see `last used` move, delete it, and see the proxy refuse it. Screenshots go
// to DIR (01-empty, 02-token-shown, 03-list, 04-list-375px; failure.png on failure).
// Exits 0 on success; on failure prints the step that failed and exits 1. The whole run
// is bounded (RUN_TIMEOUT_MS). tests/browser.rs runs it against an in-process tokengate.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  browserErrors, expectEqual, fail, Failure, keepToLoopback, log, pathOf, reportFailure, step,
  watchPage,
} from './harness.mjs';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const RUN_TIMEOUT_MS = 85_000;
const STEP_TIMEOUT_MS = 10_000;
const NAV_TIMEOUT_MS = 15_000;
const FETCH_TIMEOUT_MS = 10_000;
const TOKEN_PAGE = '/_tokengate/api-tokens';
const LOGIN_PAGE = '/_tokengate/login';

const { values: args } = parseArgs({
  options: {
    base: { type: 'string' },
    user: { type: 'string' },
    password: { type: 'string' },
    shots: { type: 'string' },
  },
});
for (const name of ['base', 'user', 'password', 'shots']) {
  if (!args[name]) {
    console.error(`missing --${name}`);
    console.error(
      'usage: node e2e/token-page.mjs --base http://127.0.0.1:PORT --user NAME --password PW --shots DIR',
    );
    process.exit(2);
  }
}
const base = args.base.replace(/\/+$/, '');
const shots = args.shots;
mkdirSync(shots, { recursive: true });

let browser;
let page;

let failing = false;

async function finishWithFailure(error) {
  if (failing) return;
  failing = true;
  clearTimeout(watchdog);
  await reportFailure(error, page, join(shots, 'failure.png'));
  await closeBrowser();
  process.exit(1);
}

async function closeBrowser() {
  if (!browser) return;
  const b = browser;
  browser = undefined;
  await Promise.race([b.close().catch(() => {}), new Promise((r) => setTimeout(r, 5_000))]);
}

// A hard bound on the whole run, whatever hangs.
const watchdog = setTimeout(() => {
  finishWithFailure(new Failure(`the whole run took more than ${RUN_TIMEOUT_MS / 1000} s`));
}, RUN_TIMEOUT_MS);

/** Clicks `locator` (a submit button) and waits until the page that follows has loaded. */
async function submitAndWait(locator, what) {
  const navigated = page.waitForEvent('framenavigated', {
    predicate: (frame) => frame === page.mainFrame(),
    timeout: NAV_TIMEOUT_MS,
  });
  await locator.click();
  try {
    await navigated;
  } catch {
    fail(`${what}: no page load followed the click (still at ${page.url()})`);
  }
  await page.waitForLoadState('load');
}

/** Loads a page and checks that it answered with a success status. */
async function open(path) {
  const response = await page.goto(base + path, { waitUntil: 'load' });
  if (!response) fail(`GET ${path}: no response`);
  if (response.status() >= 400) fail(`GET ${path}: status ${response.status()}`);
  return response;
}

/** Calls the proxy from Node with the token and checks the status. */
async function callProxy(method, path, token, expected) {
  const init = {
    method,
    headers: { authorization: `Bearer ${token}`, accept: 'application/json' },
    redirect: 'manual',
    signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
  };
  if (method === 'POST') {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify({ title: 'from the e2e test' });
  }
  let response;
  try {
    response = await fetch(base + path, init);
  } catch (e) {
    fail(`${method} ${path}: request failed: ${e.cause?.message || e.message}`);
  }
  const body = await response.text();
  if (response.status !== expected) {
    fail(`${method} ${path} with the token: expected ${expected}, got ${response.status}: ${body.slice(0, 300)}`);
  }
  log(`  ${method} ${path} -> ${response.status}`);
}

function tokenItem(id) {
  return page.locator(`.token[data-token-id="${id}"]`);
}

async function text(locator) {
  return ((await locator.textContent()) ?? '').trim();
}

function abilitiesOf(textValue) {
  return textValue
    .split(',')
    .map((a) => a.trim())
    .filter((a) => a.length > 0)
    .sort();
}

async function main() {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    timeout: 20_000,
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(base).origin });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(NAV_TIMEOUT_MS);
  // Only loopback traffic: anything else the page asks for is refused.
  await keepToLoopback(context, base);
  page = await context.newPage();
  watchPage(page);

  await step('unauthenticated visit redirects to the login page', async () => {
    await page.goto(base + TOKEN_PAGE, { waitUntil: 'load' });
    const url = new URL(page.url());
    expectEqual(url.pathname, LOGIN_PAGE, 'path after visiting the token page without a session');
    expectEqual(url.searchParams.get('next'), TOKEN_PAGE, '`next` of the login page');
  });

  await step('log in', async () => {
    await page.locator('#username').fill(args.user);
    await page.locator('#password').fill(args.password);
    await submitAndWait(page.locator('button[type=submit]'), 'login');
    expectEqual(pathOf(page.url()), TOKEN_PAGE, 'path after logging in');
  });

  let tokenName;
  await step('token page, no tokens yet', async () => {
    const heading = page.getByRole('heading', { name: 'API Tokens' });
    if ((await heading.count()) === 0) fail('no heading "API Tokens" on the token page');
    expectEqual(await page.locator(".token[data-token-id]").count(), 0, "tokens listed for a new user");
    const name = page.locator('form#create-token input#token-name');
    expectEqual(await name.getAttribute('name'), 'name', 'name attribute of #token-name');
    if ((await name.getAttribute('required')) === null) fail('#token-name is not required');
    expectEqual(await name.getAttribute('maxlength'), '255', 'maxlength of #token-name');
    const expires = page.locator('form#create-token input#token-expires');
    if ((await expires.count()) > 0) {
      expectEqual(await expires.getAttribute('type'), 'date', 'type of #token-expires');
    }
    for (const ability of ['read', 'create']) {
      const box = page.locator(`form#create-token input#create-ability-${ability}`);
      expectEqual(await box.count(), 1, `checkboxes #create-ability-${ability}`);
      expectEqual(await box.getAttribute('type'), 'checkbox', `type of #create-ability-${ability}`);
      expectEqual(await box.getAttribute('name'), 'abilities', `name of #create-ability-${ability}`);
      expectEqual(await box.getAttribute('value'), ability, `value of #create-ability-${ability}`);
    }
    // default_abilities is [read] in the test config.
    expectEqual(await page.locator('#create-ability-read').isChecked(), true, '`read` (a default ability) pre-checked');
    expectEqual(await page.locator('#create-ability-create').isChecked(), false, '`create` (not a default) pre-checked');
    await page.screenshot({ path: join(shots, '01-empty.png'), fullPage: true });
  });

  let token;
  let tokenId;
  await step('create a token with only `read`', async () => {
    tokenName = `e2e read-only ${Date.now()}`;
    await page.locator('#token-name').fill(tokenName);
    const boxes = page.locator('form#create-token input[type=checkbox][name="abilities"]');
    const count = await boxes.count();
    for (let i = 0; i < count; i++) {
      const box = boxes.nth(i);
      await box.setChecked((await box.getAttribute('value')) === 'read');
    }
    await page.locator('#create-ability-read').check();
    await submitAndWait(page.locator('button#create-token-submit'), 'create token');
  });

  await step('the new token is shown once', async () => {
    const shown = page.locator('#new-token');
    await shown.waitFor({ state: 'visible' });
    const raw = (await shown.textContent()) ?? '';
    token = raw.trim();
    expectEqual(raw, token, 'text of #new-token (must be exactly the token, no whitespace)');
    if (!/^\d+\|tg_\S+$/.test(token)) fail(`#new-token is not a token like 5|tg_…: ${JSON.stringify(token)}`);
    tokenId = token.split('|')[0];
    const copy = page.locator('button#copy-token');
    if (!(await copy.isVisible())) fail('no visible button#copy-token');
    // The copy button's script runs (its CSP allows it) and puts the token on the clipboard.
    await page.evaluate(() => navigator.clipboard.writeText('clipboard before copy')).catch(() => {});
    await copy.click();
    let copied;
    for (let i = 0; i < 20; i++) {
      copied = await page.evaluate(() => navigator.clipboard.readText()).catch((e) => `(unreadable: ${e.message})`);
      if (copied === token) break;
      await page.waitForTimeout(100);
    }
    expectEqual(copied, token, 'clipboard after clicking #copy-token');
    const body = await page.locator('body').innerText();
    if (!body.includes('will not be shown again')) fail('no notice "will not be shown again"');
    const item = tokenItem(tokenId);
    expectEqual(await item.count(), 1, `.token elements with data-token-id="${tokenId}"`);
    expectEqual(await text(item.locator('.token-name')), tokenName, 'listed token name');
    expectEqual(abilitiesOf(await text(item.locator('.token-abilities'))).join(','), 'read', 'listed abilities');
    expectEqual((await text(item.locator('.token-last-used'))).toLowerCase(), 'never', 'last used of a new token');
    await page.screenshot({ path: join(shots, '02-token-shown.png'), fullPage: true });
    log(`  token id ${tokenId} created`);
  });

  await step('the proxy takes the token for `read` only', async () => {
    await callProxy('GET', '/api/posts/1', token, 200);
    await callProxy('POST', '/api/posts', token, 403);
  });

  await step('the token is not shown again', async () => {
    await open(TOKEN_PAGE);
    expectEqual(await page.locator('#new-token').count(), 0, '#new-token on a later visit');
    const html = await page.content();
    if (html.includes(token.split('|')[1])) fail('the plaintext token is still in the page on a later visit');
  });

  await step('grant `create` on the page', async () => {
    const item = tokenItem(tokenId);
    const form = item.locator('form.token-abilities-form');
    expectEqual(await form.count(), 1, 'form.token-abilities-form in the token');
    const read = form.locator('input[name="abilities"][value="read"]');
    const create = form.locator('input[name="abilities"][value="create"]');
    expectEqual(await read.isChecked(), true, '`read` checked in the abilities form');
    expectEqual(await create.isChecked(), false, '`create` checked in the abilities form');
    await create.check();
    await submitAndWait(item.locator('button.save-abilities'), 'save abilities');
    expectEqual(pathOf(page.url()), TOKEN_PAGE, 'path after saving abilities');
    expectEqual(
      abilitiesOf(await text(tokenItem(tokenId).locator('.token-abilities'))).join(','),
      'create,read',
      'listed abilities after saving',
    );
  });

  await step('the proxy now takes the token for `create` too', async () => {
    await callProxy('POST', '/api/posts', token, 200);
    await callProxy('GET', '/api/posts/1', token, 200);
  });

  await step('"last used" moved', async () => {
    // Reloads for a few seconds in case the page shows a batched value.
    let lastUsed = '';
    for (let attempt = 1; attempt <= 8; attempt++) {
      await open(TOKEN_PAGE);
      lastUsed = await text(tokenItem(tokenId).locator('.token-last-used'));
      if (lastUsed !== '' && lastUsed.toLowerCase() !== 'never') {
        if (attempt > 1) log(`  note: "last used" showed only after ${attempt} loads`);
        break;
      }
      await page.waitForTimeout(1_000);
    }
    if (lastUsed === '' || lastUsed.toLowerCase() === 'never') {
      fail(`.token-last-used is still ${JSON.stringify(lastUsed)} after the token was used`);
    }
    log(`  last used: ${lastUsed}`);
    await page.screenshot({ path: join(shots, '03-list.png'), fullPage: true });
  });

  await step('the list at 375 px wide', async () => {
    await page.setViewportSize({ width: 375, height: 740 });
    await page.waitForTimeout(100);
    await page.screenshot({ path: join(shots, '04-list-375px.png'), fullPage: true });
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    if (width > 375) log(`  note: the page is ${width} px wide at a 375 px viewport (scrolls sideways)`);
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  await step('delete the token', async () => {
    const link = tokenItem(tokenId).locator('a.delete-token');
    expectEqual(await link.count(), 1, 'a.delete-token in the token');
    await submitAndWait(link, 'delete link');
    const confirm = page.locator('button#confirm-delete');
    await confirm.waitFor({ state: 'visible' });
    await submitAndWait(confirm, 'confirm delete');
    expectEqual(pathOf(page.url()), TOKEN_PAGE, 'path after deleting');
    expectEqual(await tokenItem(tokenId).count(), 0, 'the deleted token in the list');
  });

  await step('the proxy refuses the deleted token', async () => {
    await callProxy('GET', '/api/posts/1', token, 401);
  });

  await step('the deleted token stays gone', async () => {
    await open(TOKEN_PAGE);
    expectEqual(await tokenItem(tokenId).count(), 0, 'the deleted token in the list after a reload');
    expectEqual(await page.locator(".token[data-token-id]").count(), 0, "tokens left in the list");
  });

  await step('no script errors or blocked scripts in the browser', async () => {
    const fatal = browserErrors.filter((e) => e.startsWith('page error') || /Content Security Policy/i.test(e));
    if (fatal.length > 0) fail(`the browser reported:\n  ${fatal.join('\n  ')}`);
    if (browserErrors.length > 0) log(`  browser reported:\n    ${browserErrors.join('\n    ')}`);
  });
  clearTimeout(watchdog);
  await closeBrowser();
  log(`OK: token page end-to-end passed; screenshots in ${shots}`);
  // fetch's idle keep-alive connections would hold the process open for seconds.
  process.exit(0);
}

main().catch(finishWithFailure);
