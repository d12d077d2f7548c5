// Real-browser end-to-end test of tokengate in front of an unchanged Laravel app, with the
// app's own session cookie (sessions.laravel).
//
//   node e2e/laravel-spa.mjs http://127.0.0.1:PORT [--shots DIR]
//
// PORT is tokengate's, in front of tests/laravel/spa/index.php (Laravel 8.83 under
// `php -S`) with the routes /login auth: none, /dashboard and /api/** auth: session,
// /** auth: any. Drives headless Debian Chromium (/usr/bin/chromium) through playwright-core:
//
//   1. /dashboard without a session: tokengate (not the app) answers 302 to the login_url;
//   2. log in through Laravel's form: the dashboard shows user 42 as Laravel and tokengate
//      see it (X-Auth-User 42, X-Auth-Method session);
//   3. the dashboard's button POSTs to /api/notes as Axios does (the XSRF-TOKEN cookie,
//      decoded, in X-XSRF-TOKEN): it passes tokengate's CSRF rules (the browser's
//      Sec-Fetch-Site: same-origin, and the token) and Laravel's, and the page shows the
//      identity headers the app got;
//   4. the X-XSRF-TOKEN path on its own, with Playwright's APIRequestContext (the browser
//      context's cookies, but no Sec-Fetch-Site or Origin): with the token 200, without it
//      or with a tampered one tokengate's own 419; with only a same-origin Origin tokengate
//      lets it through and Laravel's VerifyCsrfToken refuses it (419 from the app); and a
//      copy of the session cookie in another client's jar is a session there too;
//   5. log out through the page: /dashboard sends the browser to /login again, and the
//      copied cookie is refused by tokengate (401) within 2 s.
//
// Screenshots go to DIR (default: target/e2e-screenshots of this repository):
// laravel-01-login, laravel-02-dashboard, laravel-03-note, laravel-04-logged-out (.png);
// laravel-failure.png on failure. Exits 0 on success; on failure prints the step that failed
// and exits 1. The whole run is bounded (RUN_TIMEOUT_MS). tests/laravel_browser.rs runs it.

import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  browserErrors, expectEqual, fail, Failure, keepToLoopback, log, pathOf, reportFailure, step,
  watchPage,
} from './harness.mjs';
import { chromium, request as playwrightRequest } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const RUN_TIMEOUT_MS = 50_000;
const STEP_TIMEOUT_MS = 10_000;
const NAV_TIMEOUT_MS = 15_000;
/** tokengate re-checks a Laravel session at least every store.sync_interval_ms (500 ms). */
const LOGOUT_SEEN_WITHIN_MS = 2_000;
const USER_ID = '42';
const EMAIL = 'user@example.com';
const PASSWORD = 'secret';
const SESSION_COOKIE = 'laravel_session';
/** tokengate's own CSRF refusal (Laravel's says `"refused_by": "laravel"` in this app). */
const TOKENGATE_419 = JSON.stringify({ message: 'CSRF token mismatch.' });

const { values: args, positionals } = parseArgs({
  options: { shots: { type: 'string' } },
  allowPositionals: true,
});
if (positionals.length !== 1 || !/^https?:\/\//.test(positionals[0])) {
  console.error('usage: node e2e/laravel-spa.mjs http://127.0.0.1:PORT [--shots DIR]');
  process.exit(2);
}
const base = positionals[0].replace(/\/+$/, '');
const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
const shots = args.shots || join(repo, 'target/e2e-screenshots');
mkdirSync(shots, { recursive: true });

let browser;
let context;
let page;
const apiContexts = [];

let failing = false;

async function finishWithFailure(error) {
  if (failing) return;
  failing = true;
  clearTimeout(watchdog);
  await reportFailure(error, page, join(shots, 'laravel-failure.png'));
  await closeAll();
  process.exit(1);
}

async function closeAll() {
  const closing = apiContexts.splice(0).map((c) => c.dispose().catch(() => {}));
  if (browser) {
    const b = browser;
    browser = undefined;
    closing.push(b.close().catch(() => {}));
  }
  await Promise.race([Promise.all(closing), new Promise((r) => setTimeout(r, 5_000))]);
}

// A hard bound on the whole run, whatever hangs.
const watchdog = setTimeout(() => {
  finishWithFailure(new Failure(`the whole run took more than ${RUN_TIMEOUT_MS / 1000} s`));
}, RUN_TIMEOUT_MS);

/** The browser's cookie `name` for the site, or undefined. */
async function cookie(name) {
  return (await context.cookies(base)).find((c) => c.name === name);
}

/** What Axios sends as X-XSRF-TOKEN: the XSRF-TOKEN cookie, decodeURIComponent()ed. */
async function xsrfHeader() {
  const xsrf = await cookie('XSRF-TOKEN');
  if (!xsrf) fail('the browser holds no XSRF-TOKEN cookie');
  return decodeURIComponent(xsrf.value);
}

/**
 * Loads `path` in the page and checks that tokengate sent the browser to the login page:
 * a 302 to /login that is tokengate's refusal (its JSON, no cookie of the app's), then
 * Laravel's login form.
 */
async function expectSentToLogin(path) {
  const response = await page.goto(base + path, { waitUntil: 'load' });
  if (!response) fail(`GET ${path}: no response`);
  expectEqual(pathOf(page.url()), '/login', `path after GET ${path} without a session`);
  const redirected = response.request().redirectedFrom();
  if (!redirected) fail(`GET ${path}: no redirect (status ${response.status()})`);
  expectEqual(pathOf(redirected.url()), path, 'the redirected request');
  const redirect = await redirected.response();
  const headers = await redirect.allHeaders();
  expectEqual(redirect.status(), 302, `status of GET ${path} without a session`);
  expectEqual(headers.location, '/login', 'Location (sessions.laravel.login_url)');
  // Laravel would have started a session (Set-Cookie); tokengate answers itself.
  expectEqual(headers['content-type'], 'application/json', 'Content-Type of the redirect (tokengate\'s)');
  expectEqual(headers['set-cookie'], undefined, 'Set-Cookie on the redirect');
  expectEqual(response.status(), 200, 'status of the login page');
  expectEqual(await page.locator('form input[name="_token"]').count(), 1, 'the form\'s _token field');
}

/** POST /api/notes through `api` (an APIRequestContext); the status and the body's text. */
async function postNote(api, headers, what) {
  const response = await api.post(base + '/api/notes', {
    headers: { 'Content-Type': 'application/json', Accept: 'application/json', ...headers },
    data: JSON.stringify({ text: what }),
    timeout: STEP_TIMEOUT_MS,
    maxRedirects: 0,
  });
  const body = await response.text();
  log(`  POST /api/notes ${what} -> ${response.status()} ${body.slice(0, 200)}`);
  return { status: response.status(), body };
}

function json(text, what) {
  try {
    return JSON.parse(text);
  } catch {
    fail(`${what} is not JSON: ${text.slice(0, 300)}`);
  }
}

/** `value` (base64 JSON of Laravel's Encrypter) with one hex digit of its MAC changed. */
function tamperedMac(value) {
  const payload = JSON.parse(Buffer.from(value, 'base64').toString('utf8'));
  if (typeof payload.mac !== 'string' || payload.mac.length !== 64) {
    fail(`the XSRF-TOKEN cookie is not an Encrypter payload with a MAC: ${JSON.stringify(Object.keys(payload))}`);
  }
  payload.mac = (payload.mac[0] === '0' ? '1' : '0') + payload.mac.slice(1);
  return Buffer.from(JSON.stringify(payload), 'utf8').toString('base64');
}

async function main() {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    timeout: 20_000,
  });
  context = await browser.newContext({ viewport: { width: 1024, height: 720 } });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(NAV_TIMEOUT_MS);
  // Only loopback traffic: anything else the page asks for is refused.
  await keepToLoopback(context, base);
  page = await context.newPage();
  watchPage(page);

  await step('without a session, tokengate sends the browser to the login page', async () => {
    await expectSentToLogin('/dashboard');
    // The login page went to Laravel (auth: none): it started a guest session.
    if (!(await cookie(SESSION_COOKIE))) fail(`no ${SESSION_COOKIE} cookie from Laravel's login page`);
    if (!(await cookie('XSRF-TOKEN'))) fail('no XSRF-TOKEN cookie from Laravel\'s login page');
    await page.screenshot({ path: join(shots, 'laravel-01-login.png'), fullPage: true });
  });

  await step('log in through Laravel\'s form', async () => {
    await page.locator('#email').fill(EMAIL);
    await page.locator('#password').fill(PASSWORD);
    await Promise.all([
      page.waitForURL((url) => url.pathname === '/dashboard', { waitUntil: 'load' }),
      page.locator('#login').click(),
    ]);
    // (EncryptCookies encrypts the cookies anew in every answer: their values always change.)
    if (!(await cookie(SESSION_COOKIE)).httpOnly) fail(`${SESSION_COOKIE} is not HttpOnly`);
    expectEqual(await page.locator('#laravel-user').textContent(), USER_ID, 'the user Laravel sees');
    expectEqual(await page.locator('#auth-user').textContent(), USER_ID, 'X-Auth-User on the dashboard');
    expectEqual(await page.locator('#auth-method').textContent(), 'session', 'X-Auth-Method on the dashboard');
    expectEqual(await page.locator('#token-abilities').textContent(), '*', 'X-Token-Abilities on the dashboard');
    await page.screenshot({ path: join(shots, 'laravel-02-dashboard.png'), fullPage: true });
  });

  await step('the dashboard\'s Axios-style POST passes tokengate and Laravel', async () => {
    // (Laravel sends a new XSRF-TOKEN cookie with every answer: the same token, encrypted
    // anew. The page reads the one the browser holds when the button is clicked.)
    const xsrf = await xsrfHeader();
    const [response] = await Promise.all([
      page.waitForResponse((r) => pathOf(r.url()) === '/api/notes' && r.request().method() === 'POST'),
      page.locator('#add-note').click(),
    ]);
    const sent = await response.request().allHeaders();
    expectEqual(sent['x-xsrf-token'], xsrf, 'X-XSRF-TOKEN the page sent');
    expectEqual(response.status(), 200, `POST /api/notes from the page (${(await response.text()).slice(0, 300)})`);
    const result = page.locator('#result[data-status]');
    await result.waitFor();
    expectEqual(await result.getAttribute('data-status'), '200', 'status the page shows');
    const shown = json(await result.textContent(), 'the answer the page shows');
    expectEqual(shown.note, { text: 'A note from the dashboard' }, 'the note');
    expectEqual(shown.laravel_user, Number(USER_ID), 'Laravel\'s user');
    expectEqual(shown.x_auth_user, USER_ID, 'X-Auth-User the app got');
    expectEqual(shown.x_auth_method, 'session', 'X-Auth-Method the app got');
    expectEqual(shown.x_token_abilities, '*', 'X-Token-Abilities the app got');
    // Added by the browser (Playwright's view of the request may lack them): tokengate
    // passed them on, and they alone pass its CSRF rules here.
    expectEqual(shown.sec_fetch_site, 'same-origin', 'Sec-Fetch-Site the app got');
    expectEqual(shown.origin, new URL(base).origin, 'Origin the app got');
    expectEqual(shown.x_xsrf_token, true, 'X-XSRF-TOKEN reached the app');
    await page.screenshot({ path: join(shots, 'laravel-03-note.png'), fullPage: true });
  });

  let elsewhere;
  let loggedInXsrf;
  await step('the X-XSRF-TOKEN alone passes; without it or tampered, tokengate answers 419', async () => {
    // page.request shares the browser context's cookies but sends no Sec-Fetch-Site or
    // Origin: only the token can pass tokengate's CSRF rules.
    const api = page.request;
    loggedInXsrf = await xsrfHeader();
    const passed = await postNote(api, { 'X-XSRF-TOKEN': loggedInXsrf }, 'with X-XSRF-TOKEN');
    expectEqual(passed.status, 200, 'POST with the X-XSRF-TOKEN header');
    const seen = json(passed.body, 'the answer');
    expectEqual(seen.sec_fetch_site, null, 'Sec-Fetch-Site the app got from the API request');
    expectEqual(seen.origin, null, 'Origin the app got from the API request');
    expectEqual(seen.x_auth_user, USER_ID, 'X-Auth-User');
    expectEqual(seen.x_auth_method, 'session', 'X-Auth-Method');
    expectEqual(seen.laravel_user, Number(USER_ID), 'Laravel\'s user');

    const without = await postNote(api, {}, 'without X-XSRF-TOKEN');
    expectEqual(without.status, 419, 'POST without X-XSRF-TOKEN');
    expectEqual(without.body, TOKENGATE_419, 'the refusal (tokengate\'s own)');

    const tampered = await postNote(api, { 'X-XSRF-TOKEN': tamperedMac(loggedInXsrf) }, 'with a tampered MAC');
    expectEqual(tampered.status, 419, 'POST with a tampered X-XSRF-TOKEN');
    expectEqual(tampered.body, TOKENGATE_419, 'the refusal (tokengate\'s own)');

    // Laravel keeps its own check: a same-origin Origin passes tokengate's rules without a
    // token, and VerifyCsrfToken refuses the request.
    const originOnly = await postNote(api, { Origin: new URL(base).origin }, 'with only a same-origin Origin');
    expectEqual(originOnly.status, 419, 'POST with only Origin');
    expectEqual(json(originOnly.body, 'the refusal').refused_by, 'laravel', 'who refused it');

    // The session cookie as it is now, held by another client (its own cookie jar): a
    // session there too, until the logout below.
    elsewhere = await playwrightRequest.newContext({
      storageState: { cookies: [await cookie(SESSION_COOKIE)], origins: [] },
    });
    apiContexts.push(elsewhere);
    const copied = await postNote(elsewhere, { 'X-XSRF-TOKEN': loggedInXsrf }, 'with a copy of the session cookie');
    expectEqual(copied.status, 200, 'POST with a copy of the session cookie');
    expectEqual(json(copied.body, 'the answer').x_auth_user, USER_ID, 'X-Auth-User');
  });

  await step('log out through the page; /dashboard sends the browser to the login page again', async () => {
    await Promise.all([
      page.waitForURL((url) => url.pathname === '/login', { waitUntil: 'load' }),
      page.locator('#logout').click(),
    ]);
    await page.screenshot({ path: join(shots, 'laravel-04-logged-out.png'), fullPage: true });
    await expectSentToLogin('/dashboard');
  });

  await step('the old session cookie is refused once Laravel logged it out', async () => {
    const deadline = Date.now() + LOGOUT_SEEN_WITHIN_MS;
    let last;
    for (;;) {
      last = await postNote(elsewhere, { 'X-XSRF-TOKEN': loggedInXsrf }, 'with the logged-out cookie');
      if (last.status === 401 || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expectEqual(last.status, 401, `POST with the logged-out cookie, ${LOGOUT_SEEN_WITHIN_MS} ms after the logout`);
  });

  await step('no script errors in the browser', async () => {
    const fatal = browserErrors.filter((e) => e.startsWith('page error') || /Content Security Policy/i.test(e));
    if (fatal.length > 0) fail(`the browser reported:\n  ${fatal.join('\n  ')}`);
    if (browserErrors.length > 0) log(`  browser reported:\n    ${browserErrors.join('\n    ')}`);
  });
  clearTimeout(watchdog);
  await closeAll();
  log(`OK: Laravel SPA end-to-end passed; screenshots in ${shots}`);
  process.exit(0);
}

main().catch(finishWithFailure);
