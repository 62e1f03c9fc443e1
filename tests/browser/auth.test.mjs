// Signing in and out, in Chromium against the real gateway: a malformed, an
// expired, a refused and a soon-expiring token each give a clear signed-out
// screen (never a green dot), a token is kept per origin (a new tab is signed
// in), a pasted token signs in, and Sign out forgets it.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { startGateway, ARTIFACTS } from './gateway.mjs';
import { launch, watchedPage, shots, until, signToken, WAIT } from './lib.mjs';

// A refused token is refused with a 401; Chromium logs that answer.
const EXPECTED = [/Failed to load resource: the server responded with a status of 401 .*\/api\/projects/];

let gw;
let browser;
const watched = [];

async function fresh(name) {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const w = await watchedPage(context, { name: `auth-${name}`, secret: gw.token, expected: EXPECTED });
  watched.push(w);
  return { context, page: w.page };
}

async function signedOutSays(page, re) {
  await page.locator('#signed-out').waitFor({ timeout: WAIT });
  assert.match(await page.locator('#signed-out-why').textContent(), re);
  assert.equal(await page.locator('#conn').textContent(), 'signed out');
  assert.equal(await page.locator('#conn').getAttribute('class'), 'conn err');
  // Nothing that looks signed in: no projects pane, no Create.
  assert.equal(await page.locator('#sidebar').isVisible(), false);
  assert.equal(await page.locator('#project-create-btn').isDisabled(), true);
  assert.equal(await page.locator('#sign-out').isVisible(), false);
}

describe('signing in and out', { timeout: 10 * 60_000 }, () => {
  before(async () => {
    gw = await startGateway();
    browser = await launch();
  });

  afterEach(async (t) => {
    if (t && t.passed === false) {
      for (const w of watched) await w.page.screenshot({ path: path.join(ARTIFACTS, `failed-auth-${t.name.split(':')[0]}.png`) }).catch(() => {});
    }
  });

  after(async () => {
    for (const w of watched) w.save();
    if (browser) await browser.close();
    if (gw) await gw.stop();
  });

  test('a garbage token: signed out, saying the token is not valid', async () => {
    const { page, context } = await fresh('garbage');
    await page.goto(`${gw.base}/?token=garbage`);
    await signedOutSays(page, /not a valid token/);
    assert.equal(await page.evaluate(() => window.location.search), '');
    await shots(page, 'auth-garbage');
    await context.close();
  });

  test('an expired token: signed out, saying it expired and when', async () => {
    const { page, context } = await fresh('expired');
    const token = signToken(gw, { sub: 'alice', projects: ['*'], exp: Math.floor(Date.now() / 1000) - 3600 });
    await page.goto(`${gw.base}/?token=${token}`);
    await signedOutSays(page, /expired/);
    assert.doesNotMatch(await page.locator('body').textContent(), /signed in as alice/);
    await shots(page, 'auth-expired');
    await context.close();
  });

  test('a token the gateway refuses (another secret): signed out with its reason', async () => {
    const { page, context } = await fresh('refused');
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const forged = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: 'mallory', projects: ['*'], exp: Math.floor(Date.now() / 1000) + 3600 })}.c2lnbmF0dXJl`;
    await page.goto(`${gw.base}/?token=${forged}`);
    await signedOutSays(page, /refused the token/);
    await context.close();
  });

  test('a token that expires while the page is open signs it out then', async () => {
    const { page, context } = await fresh('expiring');
    const token = signToken(gw, { sub: 'bob', projects: ['*'], exp: Math.floor(Date.now() / 1000) + 4 });
    await page.goto(`${gw.base}/?token=${token}`);
    await until(page, () => document.getElementById('conn').textContent === 'signed in as bob');
    await signedOutSays(page, /expired/);
    await context.close();
  });

  test('kept per origin: a new tab is signed in; a pasted token signs in; Sign out forgets it', async () => {
    const { page, context } = await fresh('tabs');
    await page.goto(gw.demoUrl);
    await until(page, () => document.getElementById('conn').textContent.startsWith('signed in'));
    await until(page, () => !document.getElementById('project-create-btn').disabled);
    // A second tab without any token in its URL.
    const second = await context.newPage();
    await second.goto(`${gw.base}/`);
    await until(second, () => document.getElementById('conn').textContent.startsWith('signed in'));
    await second.close();

    await page.getByRole('button', { name: 'Sign out' }).click();
    await signedOutSays(page, /signed out/);
    assert.equal(await page.evaluate(() => localStorage.getItem('devgate.token')), null);
    const third = await context.newPage();
    await third.goto(`${gw.base}/`);
    await signedOutSays(third, /No token/);
    // The token field is labelled and takes a pasted token.
    await third.getByLabel('Token').fill(gw.token);
    await third.getByRole('button', { name: 'Sign in' }).click();
    await until(third, () => document.getElementById('conn').textContent.startsWith('signed in'));
    assert.equal(await third.locator('#sidebar').isVisible(), true);
    await shots(third, 'auth-signed-in-again');
    await context.close();
  });

  test('the console has no errors and never shows the token', () => {
    for (const w of watched) {
      assert.deepEqual(w.errors, []);
      const first = gw.demoUrl; // the URL the gateway printed, opened by the test
      assert.deepEqual(w.leaks.filter((l) => !l.endsWith(first)), []);
    }
  });
});
