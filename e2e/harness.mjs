// What the browser tests (token-page.mjs, laravel-spa.mjs) share: timestamped steps, the
// failure type and assertions, a browser context kept to loopback whose page errors are
// collected, and the report printed on failure.

const started = Date.now();

/** The step under way, for the failure report. */
export const progress = { step: 'start' };
/** Off-machine requests refused, page errors and console errors, in order. */
export const browserErrors = [];

export function log(message) {
  const seconds = ((Date.now() - started) / 1000).toFixed(1).padStart(5);
  console.log(`[${seconds}s] ${message}`);
}

export async function step(name, body) {
  progress.step = name;
  log(`step: ${name}`);
  return body();
}

export class Failure extends Error {}

export function fail(message) {
  throw new Failure(message);
}

/** The path of `url`. */
export function pathOf(url) {
  return new URL(url).pathname;
}

/** Equal as JSON (so strings, numbers, booleans and plain objects alike). */
export function expectEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) fail(`${what}: expected ${e}, got ${a}`);
}

/** Refuses every request of `context` that would leave this machine (or `base`'s host). */
export async function keepToLoopback(context, base) {
  const baseHost = new URL(base).hostname;
  await context.route(
    (url) => !['127.0.0.1', 'localhost', '[::1]', baseHost].includes(url.hostname) && url.protocol !== 'data:',
    (route) => {
      browserErrors.push(`blocked off-machine request: ${route.request().url()}`);
      return route.abort();
    },
  );
}

/** Collects `page`'s script errors and console errors into `browserErrors`. */
export function watchPage(page) {
  page.on('pageerror', (e) => browserErrors.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') browserErrors.push(`console error: ${m.text()}`);
  });
}

/**
 * Prints why the run failed: the step, the error, the page's URL and text, a screenshot
 * saved as `screenshot` (when there is a page) and the browser errors collected.
 */
export async function reportFailure(error, page, screenshot) {
  console.error(`\nFAILED at step "${progress.step}":`);
  console.error(error instanceof Failure ? error.message : error?.stack || String(error));
  if (page) {
    try {
      console.error(`page URL: ${page.url()}`);
      const text = await page.evaluate(() => document.body?.innerText ?? '', null);
      console.error(`page text (first 1500 chars):\n${text.slice(0, 1500)}`);
    } catch {
      // The page may be gone; the message above is what counts.
    }
    try {
      await page.screenshot({ path: screenshot, fullPage: true, timeout: 5_000 });
      console.error(`screenshot: ${screenshot}`);
    } catch (e) {
      console.error(`could not save ${screenshot}: ${e.message}`);
    }
  }
  if (browserErrors.length > 0) {
    console.error(`browser errors:\n  ${browserErrors.join('\n  ')}`);
  }
}
