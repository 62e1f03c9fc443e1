// A dev server from the bundled Vite template, in Chromium against the real
// gateway: clone and install output in Logs, the private preview entered
// through a one-time code (never the token), HMR through the preview proxy,
// the address bar, a new tab, a share link opened in a second, signed-out
// browser and then revoked, and hibernate + open with start_containers: the
// preview comes back (through Reinstall when node_modules did not survive).
// axe-core on every step; screenshots at 400, 820 and 1440 px.

import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { startGateway, ARTIFACTS } from './gateway.mjs';
import { launch, watchedPage, shots, until, apiText, typeInTerminal, waitTerminal, WAIT } from './lib.mjs';

const PROJECT = 'demo';
const CONTAINER = 'web';
const STEP = 240_000;

let gw;
let browser;
let w;
let page;

function previewFrame() {
  const f = page.frames().find((fr) => fr.url().includes(`${CONTAINER}.${PROJECT}.`));
  assert.ok(f, `no preview frame among ${page.frames().map((x) => x.url()).join(', ')}`);
  return f;
}

function frameMessage() {
  return page.frameLocator('#preview-frame').locator('#message');
}

describe('a dev server and its preview', { timeout: 20 * 60_000 }, () => {
  before(async () => {
    gw = await startGateway();
    browser = await launch();
    const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    w = await watchedPage(context, { name: 'containers', secret: gw.token });
    page = w.page;
  });

  afterEach(async (t) => {
    if (page && t && t.passed === false) await page.screenshot({ path: path.join(ARTIFACTS, `failed-containers-${t.name.split(':')[0]}.png`) }).catch(() => {});
  });

  after(async () => {
    if (w) w.save();
    if (browser) await browser.close();
    if (gw) await gw.stop();
  });

  test('1: add the bundled Vite container: clone and install output reach Logs', { timeout: STEP }, async () => {
    await page.goto(gw.demoUrl);
    await page.locator('#project-id').fill(PROJECT);
    await page.getByRole('button', { name: 'Create project' }).click();
    await page.locator(`#project-list li[data-id="${PROJECT}"][data-status="active"]`).waitFor({ timeout: WAIT });
    await until(page, () => !document.getElementById('container-add').disabled);
    await page.locator('#container-add').click();
    await page.locator('#c-name').fill(CONTAINER);
    const options = await page.locator('#c-template option').allTextContents();
    assert.ok(options.includes('vite-app'), `templates offered: ${options}`);
    await page.locator('#c-template').selectOption({ label: 'vite-app' });
    await page.getByRole('button', { name: 'Add the container' }).click();
    // While it installs, the row says so.
    await page.locator(`#container-list li[data-name="${CONTAINER}"][data-status="adding"]`).waitFor({ timeout: WAIT });
    const row = page.locator(`#container-list li[data-name="${CONTAINER}"][data-status="stopped"]`);
    await Promise.race([
      row.waitFor({ timeout: 180_000 }),
      page
        .locator('.toast.error')
        .first()
        .waitFor({ timeout: 180_000 })
        .then(async () => assert.fail(`adding the container failed: ${await page.locator('.toast.error').first().textContent()}`)),
    ]);
    await until(page, () => /\(web: clone\)/.test(document.getElementById('logs').textContent) && /\(web: install\)/.test(document.getElementById('logs').textContent));
    const logs = await page.locator('#logs').textContent();
    assert.match(logs, /\$ git clone .*vite-app/);
    assert.match(logs, /\$ npm install/);
    assert.match(logs, /added \d+ packages?/);
    await shots(page, 'c1-added', { view: 'preview' });
  });

  test('2: start it: the private preview opens through a one-time code, never the token', { timeout: STEP }, async () => {
    await page.getByRole('button', { name: `Start container ${CONTAINER}` }).click();
    await page.locator(`#container-list li[data-name="${CONTAINER}"][data-status="running"]`).waitFor({ timeout: WAIT });
    await frameMessage().filter({ hasText: 'Hello from devgate' }).waitFor({ timeout: 90_000 });
    const frames = w.log.filter((l) => / request GET http:\/\/web\.demo\./.test(l));
    assert.ok(frames.some((l) => /\/__preview\/auth\?code=/.test(l)), frames.join('\n'));
    assert.ok(!frames.some((l) => l.includes(gw.token)), frames.join('\n'));
    assert.equal(await page.locator('#preview-path').inputValue(), '/');
    assert.match(await page.locator('#preview-host').textContent(), new RegExp(`^${CONTAINER}\\.${PROJECT}\\.localhost:\\d+$`));
    // A shell tab for the running container joined the project's.
    await page.locator(`#term-tabs [role="tab"][data-container="${CONTAINER}"]`).waitFor({ timeout: WAIT });
    await shots(page, 'c2-preview', { view: 'preview' });
  });

  test('3: edit a source file, save: the preview updates by HMR through the gateway, without a reload', { timeout: STEP }, async () => {
    await page.setViewportSize({ width: 1440, height: 900 });
    const frame = previewFrame();
    await frame.evaluate(() => {
      window.__marker = 'kept';
    });
    await page.locator(`#tree [role="treeitem"][data-path="${CONTAINER}"]`).click();
    await page.locator(`#tree [role="treeitem"][data-path="${CONTAINER}/src"]`).click();
    await page.locator(`#tree [role="treeitem"][data-path="${CONTAINER}/src/message.js"]`).click();
    await until(page, (p) => window.__devgate.editor.path === p, `${CONTAINER}/src/message.js`);
    await page.locator('.cm-content').click();
    await page.keyboard.press('ControlOrMeta+a');
    await page.keyboard.insertText("export const message = 'Changed in the editor';\n");
    await page.keyboard.press('ControlOrMeta+s');
    await until(page, () => document.getElementById('editor-state').textContent === 'saved');
    assert.equal(await apiText(gw, PROJECT, `${CONTAINER}/src/message.js`), "export const message = 'Changed in the editor';\n");
    await frameMessage().filter({ hasText: 'Changed in the editor' }).waitFor({ timeout: WAIT });
    const after = previewFrame();
    assert.equal(await after.evaluate(() => window.__marker), 'kept', 'the preview reloaded instead of hot-updating');
    const previewHost = new URL(after.url()).host;
    assert.ok(w.log.some((l) => l.includes(`websocket ws://${previewHost}/`)), 'no HMR WebSocket through the preview host');
    assert.ok(Number(await after.evaluate(() => document.getElementById('updates').textContent)) >= 1, 'no hot update was applied');
    // The picture of the README (docs/web-demo.png is a copy of it): a file
    // open, a command in the terminal, the dev server's preview and logs.
    await page.locator('#term-tabs [role="tab"][data-container=""]').click();
    await until(page, () => window.__devgate.terminals.active.state === 'connected');
    await typeInTerminal(page, `ls ${CONTAINER} && grep -c . ${CONTAINER}/src/*.js`);
    await waitTerminal(page, /message\.js:1/);
    await page.locator('.cm-content').click();
    await page.screenshot({ path: path.join(ARTIFACTS, 'readme-1440.png') });
  });

  test('4: the address bar: a path, back, forward, reload; open in a new tab without the token', { timeout: STEP }, async () => {
    await page.locator('#preview-path').fill('/src/message.js');
    await page.keyboard.press('Enter');
    await until(page, () => {
      const f = document.getElementById('preview-frame');
      return f && f.src.endsWith('/src/message.js');
    });
    const frameAt = async (want) => {
      const deadline = Date.now() + WAIT;
      while (Date.now() < deadline) {
        const f = page.frames().find((fr) => fr.url().includes(`${CONTAINER}.${PROJECT}.`));
        if (f && new URL(f.url()).pathname === want) return f;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.fail(`the preview never showed ${want}`);
    };
    const f = await frameAt('/src/message.js');
    assert.match(await f.locator('body').textContent(), /Changed in the editor/);
    assert.equal(await page.locator('#preview-back').isEnabled(), true);
    await page.getByRole('button', { name: 'Back', exact: true }).click();
    await frameAt('/');
    assert.equal(await page.locator('#preview-path').inputValue(), '/');
    await page.getByRole('button', { name: 'Forward', exact: true }).click();
    await frameAt('/src/message.js');
    await page.getByRole('button', { name: 'Back', exact: true }).click();
    await frameAt('/');
    await page.getByRole('button', { name: 'Reload preview' }).click();
    await frameMessage().filter({ hasText: 'Changed in the editor' }).waitFor({ timeout: WAIT });

    const [tab] = await Promise.all([page.context().waitForEvent('page'), page.getByRole('button', { name: 'Open preview in a new tab' }).click()]);
    await tab.waitForURL((u) => u.hostname.startsWith(`${CONTAINER}.${PROJECT}.`) && u.pathname === '/', { timeout: WAIT });
    await tab.locator('#message').filter({ hasText: 'Changed in the editor' }).waitFor({ timeout: WAIT });
    assert.ok(!tab.url().includes('token='));
    await tab.close();
    await shots(page, 'c4-address-bar', { view: 'preview' });
  });

  test('5: a share link works in a signed-out browser, then revoking it stops it', { timeout: STEP }, async () => {
    await page.getByRole('button', { name: 'Share the preview' }).click();
    const dlg = page.locator('dialog[open]');
    await dlg.waitFor();
    await dlg.getByLabel('Label (optional)').fill('for Sam');
    await dlg.getByLabel('Expires after').selectOption({ label: '1 hour' });
    await dlg.getByRole('button', { name: 'Create link' }).click();
    const input = dlg.getByRole('textbox', { name: /Share link for Sam/ });
    await input.waitFor({ timeout: WAIT });
    const url = await input.inputValue();
    assert.match(url, /\/__preview\/auth\?share=/);
    assert.ok(!url.includes(gw.token));
    assert.match(await dlg.textContent(), /expires in (59 min|1 h)/);
    await shots(page, 'c5-share');

    // Someone else, with no account and no cookie, opens it.
    const other = await browser.newContext({ viewport: { width: 1024, height: 700 } });
    const guest = await other.newPage();
    await guest.goto(url);
    await guest.locator('#message').filter({ hasText: 'Changed in the editor' }).waitFor({ timeout: WAIT });
    assert.equal(new URL(guest.url()).pathname, '/');
    await guest.screenshot({ path: path.join(ARTIFACTS, 'c5-shared-guest.png') });

    // Revoked: the guest's next request is refused.
    await dlg.getByRole('button', { name: /Revoke share link for Sam/ }).click();
    await until(page, () => /Revoked/.test(document.querySelector('dialog[open] .share-status').textContent));
    assert.match(await dlg.locator('.share-list').textContent(), /No active share links/);
    // (Through the browser: *.localhost resolves there, not in node.)
    const res = await guest.reload();
    assert.ok([401, 403, 404].includes(res.status()), `a revoked link still got ${res.status()}`);
    assert.ok(!(await guest.content()).includes('Hello from devgate'));
    await guest.screenshot({ path: path.join(ARTIFACTS, 'c5-revoked-guest.png') });
    await other.close();
    await dlg.getByRole('button', { name: 'Done' }).click();
  });

  test('6: hibernate with the dev server running, open: it is started again and the preview comes back', { timeout: 420_000 }, async (t) => {
    await page.getByRole('button', { name: `Hibernate project ${PROJECT}` }).click();
    const row = page.locator(`#project-list li[data-id="${PROJECT}"][data-status="hibernated"]`);
    await row.waitFor({ timeout: 180_000 });
    // The row says what opening it will do.
    await until(page, () => /Opening it starts web again/.test(document.getElementById('project-list').textContent));
    await shots(page, 'c6-hibernated');
    await page.getByRole('button', { name: `Open project ${PROJECT}` }).click();
    await page.locator(`#project-list li[data-id="${PROJECT}"][data-status="active"]`).waitFor({ timeout: 180_000 });
    // The open asked for start_containers: web was started again. Whether it
    // keeps running depends on node_modules having survived the hibernation;
    // when it did not, the row shows the failure and Reinstall brings it back.
    const status = await page
      .locator(`#container-list li[data-name="${CONTAINER}"]`)
      .evaluate((li) => li.dataset.status)
      .catch(() => 'missing');
    assert.ok(['running', 'failed', 'starting'].includes(status), `web is ${status} after the open`);
    const failed = page.locator(`#container-list li[data-name="${CONTAINER}"][data-status="failed"]`);
    const shown = frameMessage().filter({ hasText: 'Changed in the editor' });
    const which = await Promise.race([failed.waitFor({ timeout: 120_000 }).then(() => 'failed'), shown.waitFor({ timeout: 120_000 }).then(() => 'preview')]);
    t.diagnostic(`after the open: ${which}`);
    if (which === 'failed') {
      await until(page, () => /exit \d+/.test(document.querySelector('#container-list li[data-name="web"] .cstatus').textContent));
      await until(page, () => /not found|Permission denied|Cannot find|ERR/i.test(document.querySelector('#container-list li[data-name="web"] pre.tail').textContent));
      await shots(page, 'c6-failed-after-wake', { view: 'preview' });
      await page.getByRole('button', { name: /^Reinstall web/ }).click();
      await until(page, () => /\[install done\]/.test(document.getElementById('logs').textContent), undefined, 180_000);
      await page.locator(`#container-list li[data-name="${CONTAINER}"][data-status="running"]`).waitFor({ timeout: WAIT });
    }
    await shown.waitFor({ timeout: 90_000 });
    await shots(page, 'c6-woken', { view: 'preview' });
  });

  test('the console has no errors and never shows the token', () => {
    assert.deepEqual(w.errors, []);
    const first = gw.demoUrl; // the URL the gateway printed, opened by the test
    assert.deepEqual(w.leaks.filter((l) => !l.endsWith(first)), []);
    // (Vite's own HMR socket has a `?token=` of its own, on the preview host.)
    const host = new URL(gw.base).host;
    assert.deepEqual(w.log.filter((l) => l.includes('token=') && l.includes(host) && !l.endsWith(first)), []);
  });
});
