// The demo page in Debian's Chromium against the real gateway on loopback:
// the five steps of the web demo issue, one screenshot each in tests/artifacts/,
// and no error in the browser console anywhere along the way.

import { describe, test, before, after, afterEach } from 'node:test';
import { writeFileSync, readdirSync, rmSync } from 'node:fs';
import assert from 'node:assert/strict';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startGateway, ARTIFACTS } from './gateway.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const PROJECT = 'demo';
const CONTAINER = 'web';
const STEP_TIMEOUT = 180_000;
const WAIT = 60_000;

// Chromium logs every non-2xx answer to fetch as a console error. The 412 of
// step 4 is the protocol doing its job (If-Match caught a concurrent write), so
// it is the one expected entry; anything else fails the last test.
const EXPECTED_CONSOLE = [/Failed to load resource: the server responded with a status of 412 .*\/api\/projects\/[^/]+\/files\//];

let gw;
let browser;
let page;
const consoleErrors = [];
const consoleLog = [];
const sockets = []; // URLs of every WebSocket the page and its frames opened // everything, written to tests/artifacts/console.log

async function shot(name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
}

/** Waits for `fn` (run in the page) to return a truthy value. */
function until(fn, arg, timeout = WAIT) {
  return page.waitForFunction(fn, arg, { timeout, polling: 100 });
}

/** The active terminal's buffer as text, one line per logical line (rows
 * the terminal wrapped are joined back, so a long prompt changes nothing). */
function terminalText() {
  return page.evaluate(() => {
    const t = window.__devgate.terminals.active;
    if (!t) return '';
    const b = t.term.buffer.active;
    const lines = [];
    for (let i = 0; i < b.length; i++) {
      const line = b.getLine(i);
      const text = line.translateToString(true);
      if (line.isWrapped && lines.length > 0) lines[lines.length - 1] += text;
      else lines.push(text);
    }
    return lines.join('\n');
  });
}

async function waitTerminal(re, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let text = '';
  while (Date.now() < deadline) {
    text = await terminalText();
    if (re.test(text)) return text;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`terminal never showed ${re}; it shows:\n${text}`);
}

async function typeInTerminal(line) {
  await page.locator('.term:not([hidden]) .xterm').click();
  await page.keyboard.type(line);
  await page.keyboard.press('Enter');
}

function previewFrame() {
  const f = page.frames().find((fr) => fr.url().includes(`${CONTAINER}.${PROJECT}.`));
  assert.ok(f, `no preview frame among ${page.frames().map((x) => x.url()).join(', ')}`);
  return f;
}

async function openFile(p) {
  await page.locator(`#tree button.name[data-path="${p}"]`).click();
  await until((want) => window.__devgate.editor.path === want, p);
}

async function expandDir(dir) {
  const row = page.locator(`#tree button.name[data-path="${dir}"]`);
  await row.waitFor({ timeout: WAIT });
  const expanded = await row.evaluate((b) => b.parentElement.getAttribute('aria-expanded'));
  if (expanded !== 'true') await row.click();
}

async function apiText(p) {
  const res = await gw.api(`/api/projects/${PROJECT}/files/${p}`);
  assert.equal(res.status, 200, `GET ${p}`);
  return res.text();
}

describe('demo page in Chromium', { timeout: 15 * 60_000 }, () => {
  before(async () => {
    gw = await startGateway();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    page = await context.newPage();
    page.on('console', (m) => {
      consoleLog.push(`${new Date().toISOString()} ${m.type()} ${m.text()} (${m.location().url})`);
      if (m.type() !== 'error') return;
      const line = `${m.text()} (${m.location().url})`;
      if (!EXPECTED_CONSOLE.some((re) => re.test(line))) consoleErrors.push(line);
    });
    page.on('pageerror', (e) => consoleErrors.push(`uncaught: ${e.message}`));
    page.on('websocket', (ws) => sockets.push(ws.url()));
    for (const f of readdirSync(ARTIFACTS)) if (f.endsWith('.png')) rmSync(path.join(ARTIFACTS, f));
  });

  afterEach(async (t) => {
    // A failed step leaves its screenshot too.
    if (page && t && t.passed === false) await shot(`failed-${t.name.split(':')[0]}`).catch(() => {});
  });

  after(async () => {
    writeFileSync(path.join(ARTIFACTS, 'console.log'), consoleLog.join('\n') + '\n');
    if (browser) await browser.close();
    if (gw) await gw.stop();
  });

  test('1: create a project, add the bundled Vite container, start it, see the preview', { timeout: STEP_TIMEOUT }, async () => {
    await page.goto(gw.demoUrl);
    // The token moved to sessionStorage and left the address bar.
    await until(() => !window.location.search.includes('token='));
    await page.locator('#project-id').fill(PROJECT);
    await page.getByRole('button', { name: 'Create project' }).click();
    await page.locator(`#project-list li[data-id="${PROJECT}"][data-status="active"]`).waitFor({ timeout: WAIT });
    await page.locator('#container-add').waitFor();
    await until(() => !document.getElementById('container-add').disabled);

    await page.locator('#container-add').click();
    await page.locator('#c-name').fill(CONTAINER);
    const tplOptions = await page.locator('#c-template option').allTextContents();
    assert.ok(tplOptions.includes('vite-app'), `templates offered: ${tplOptions}`);
    await page.locator('#c-template').selectOption({ label: 'vite-app' });
    await page.getByRole('button', { name: 'Add the container' }).click();
    // npm install of the template's one dependency happens here. An error
    // toast instead fails the step with the gateway's message.
    const item = page.locator(`#container-list li[data-name="${CONTAINER}"][data-status="stopped"]`);
    await Promise.race([
      item.waitFor({ timeout: 120_000 }),
      page
        .locator('.toast.error')
        .first()
        .waitFor({ timeout: 120_000 })
        .then(async () => assert.fail(`adding the container failed: ${await page.locator('.toast.error').first().textContent()}`)),
    ]);
    await expandDir(CONTAINER);
    await page.locator(`#tree button.name[data-path="${CONTAINER}/package.json"]`).waitFor({ timeout: WAIT });

    await page.getByRole('button', { name: `Start container ${CONTAINER}` }).click();
    await page.locator(`#container-list li[data-name="${CONTAINER}"][data-status="running"]`).waitFor({ timeout: WAIT });
    // A terminal tab for the running container joins the project shell.
    await page.locator(`#term-tabs button[data-container="${CONTAINER}"]`).waitFor({ timeout: WAIT });

    const frame = page.frameLocator('#preview-frame');
    await frame.locator('#message').filter({ hasText: 'Hello from devgate' }).waitFor({ timeout: 90_000 });
    await shot('1-preview');
  });

  test('2: edit a source file, save, the preview updates by HMR without a reload', { timeout: STEP_TIMEOUT }, async () => {
    const frame = previewFrame();
    // A marker on the preview's window survives HMR and dies with a reload.
    await frame.evaluate(() => {
      window.__marker = 'kept';
    });
    await expandDir(`${CONTAINER}/src`);
    await openFile(`${CONTAINER}/src/message.js`);
    await page.locator('.cm-content').click();
    await page.keyboard.press('ControlOrMeta+a');
    await page.keyboard.insertText("export const message = 'Changed in the editor';\n");
    await until(() => document.getElementById('editor-state').textContent === 'modified');
    await page.getByRole('button', { name: 'Save file (Ctrl+S)' }).click();
    await until(() => document.getElementById('editor-state').textContent === 'saved');
    assert.equal(await apiText(`${CONTAINER}/src/message.js`), "export const message = 'Changed in the editor';\n");

    await page.frameLocator('#preview-frame').locator('#message').filter({ hasText: 'Changed in the editor' }).waitFor({ timeout: WAIT });
    const after = previewFrame();
    assert.equal(await after.evaluate(() => window.__marker), 'kept', 'the preview reloaded instead of hot-updating');
    // Vite's HMR socket went through the gateway's preview host, not straight to the dev server.
    const previewHost = new URL(after.url()).host;
    assert.ok(sockets.some((u) => new URL(u).host === previewHost), `no WebSocket to ${previewHost}: ${sockets.join(', ')}`);
    // The template counts applied hot updates (a save can reach Vite as one or two file events).
    assert.ok(Number(await after.evaluate(() => document.getElementById('updates').textContent)) >= 1, 'no hot update was applied');
    await shot('2-hmr');
  });

  test('3: the terminal runs commands; a file made there appears in the tree; reconnect has no gap or repeat', { timeout: STEP_TIMEOUT }, async () => {
    await page.locator('#term-tabs button[data-container=""]').click();
    await until(() => window.__devgate.terminals.active && window.__devgate.terminals.active.state === 'connected');
    await typeInTerminal('echo ok-$((40+2))');
    await waitTerminal(/^ok-42\s*$/m);

    // The container's own tab: a shell inside the running dev container.
    await page.locator(`#term-tabs button[data-container="${CONTAINER}"]`).click();
    await until(() => window.__devgate.terminals.active.container !== '' && window.__devgate.terminals.active.state === 'connected');
    await typeInTerminal('echo in-$(basename "$PWD")');
    await waitTerminal(new RegExp(`^in-${CONTAINER}\\s*$`, 'm'));
    await page.locator('#term-tabs button[data-container=""]').click();
    await until(() => window.__devgate.terminals.active.container === '');

    // Binary-safe: a UTF-8 character split across two writes (and so across
    // frames) still renders as one character.
    await typeInTerminal("printf 'eu\\342\\202'; sleep 0.2; printf '\\254ro\\n'");
    await waitTerminal(/^eu€ro\s*$/m);

    await typeInTerminal('touch newfile.txt');
    await page.locator('#tree button.name[data-path="newfile.txt"]').waitFor({ timeout: WAIT });
    await shot('3-terminal');

    // A network drop: the page reattaches to the same shell, and the output
    // that follows appears once, right after what was there.
    await typeInTerminal('echo before-$((1+1))');
    await waitTerminal(/^before-2\s*$/m);
    const session = await page.evaluate(() => window.__devgate.terminals.active.sessionId);
    // The shell prints while the page is away: that output must arrive once.
    await typeInTerminal('sleep 0.3; echo during-$((3*3))');
    await page.evaluate(() => window.__devgate.terminals.active.drop(1500));
    await until(() => window.__devgate.terminals.active.state === 'reconnecting', undefined, 10_000);
    await until(() => window.__devgate.terminals.active.state === 'connected');
    assert.equal(await page.evaluate(() => window.__devgate.terminals.active.sessionId), session, 'reattached to another session');
    await waitTerminal(/^during-9\s*$/m);
    await typeInTerminal('echo after-$((2+1))');
    const text = await waitTerminal(/^after-3\s*$/m);
    const count = (re) => (text.match(re) || []).length;
    assert.equal(count(/^during-9\s*$/gm), 1, `output made while away is missing or repeated:\n${text}`);
    assert.equal(count(/^before-2\s*$/gm), 1, `output repeated after reconnect:\n${text}`);
    assert.equal(count(/echo before-\$\(\(1\+1\)\)/g), 1, `command line repeated after reconnect:\n${text}`);
    assert.equal(count(/^ok-42\s*$/gm), 1, `earlier output repeated after reconnect:\n${text}`);
    // In order: nothing was lost between the lines either.
    assert.ok(text.indexOf('before-2') < text.indexOf('during-9') && text.indexOf('during-9') < text.lastIndexOf('after-3'), text);
  });

  test('4: a file changed underneath: saving shows the conflict and loses nothing', { timeout: STEP_TIMEOUT }, async () => {
    const put = await gw.api(`/api/projects/${PROJECT}/files/notes.md`, { method: 'PUT', body: '# Notes\n\noriginal\n' });
    assert.equal(put.status, 200);
    await page.locator('#tree button.name[data-path="notes.md"]').waitFor({ timeout: WAIT });
    await openFile('notes.md');
    await page.locator('.cm-content').click();
    await page.keyboard.press('ControlOrMeta+End');
    await page.keyboard.insertText('mine\n');
    await until(() => document.getElementById('editor-state').textContent === 'modified');

    // Someone else writes the file through the API meanwhile.
    const theirs = '# Notes\n\nchanged through the API\n';
    const put2 = await gw.api(`/api/projects/${PROJECT}/files/notes.md`, { method: 'PUT', body: theirs });
    assert.equal(put2.status, 200);

    await page.getByRole('button', { name: 'Save file (Ctrl+S)' }).click();
    const dlg = page.locator('dialog[open]');
    await dlg.waitFor({ timeout: WAIT });
    assert.equal(await page.locator('#dlg-title').textContent(), 'File changed on disk');
    assert.equal(await dlg.locator('.conflict-theirs').textContent(), theirs);
    assert.equal(await dlg.locator('.conflict-mine').textContent(), '# Notes\n\noriginal\nmine\n');
    // Nothing was written: the other version is intact on disk, ours in the editor.
    assert.equal(await apiText('notes.md'), theirs);
    assert.equal(await page.evaluate(() => window.__devgate.editor.text), '# Notes\n\noriginal\nmine\n');
    await shot('4-conflict');

    // Keep editing: the dialog closes, both versions still where they were.
    await dlg.getByRole('button', { name: 'Keep editing' }).click();
    assert.equal(await apiText('notes.md'), theirs);
    assert.equal(await page.evaluate(() => window.__devgate.editor.dirty), true);

    // Overwrite, having seen theirs: now the file is ours.
    await page.getByRole('button', { name: 'Save file (Ctrl+S)' }).click();
    await dlg.waitFor({ timeout: WAIT });
    await dlg.getByRole('button', { name: 'Overwrite the file on disk with my version' }).click();
    await until(() => document.getElementById('editor-state').textContent === 'saved');
    assert.equal(await apiText('notes.md'), '# Notes\n\noriginal\nmine\n');
  });

  test('the tree creates, renames and deletes files', { timeout: STEP_TIMEOUT }, async () => {
    // New file at the root (nothing selected in a folder).
    await page.locator('#tree button.name[data-path="newfile.txt"]').click();
    await page.getByRole('button', { name: 'New file' }).click();
    await page.locator('#dlg-input').fill('made-in-tree.md');
    await page.keyboard.press('Enter');
    await page.locator('#tree button.name[data-path="made-in-tree.md"]').waitFor({ timeout: WAIT });
    await until(() => window.__devgate.editor.path === 'made-in-tree.md');
    assert.equal((await gw.api(`/api/projects/${PROJECT}/stat/made-in-tree.md`)).status, 200);

    // Rename by keyboard (F2 on the focused item), delete by its button.
    await page.locator('#tree button.name[data-path="made-in-tree.md"]').focus();
    await page.keyboard.press('F2');
    await page.locator('#dlg-input').fill('renamed.md');
    await page.keyboard.press('Enter');
    await page.locator('#tree button.name[data-path="renamed.md"]').waitFor({ timeout: WAIT });
    await page.locator('#tree button.name[data-path="made-in-tree.md"]').waitFor({ state: 'detached', timeout: WAIT });
    assert.equal((await gw.api(`/api/projects/${PROJECT}/stat/renamed.md`)).status, 200);

    await page.locator('#tree button.name[data-path="renamed.md"]').hover();
    await page.getByRole('button', { name: 'Delete renamed.md' }).click();
    await page.locator('dialog[open]').getByRole('button', { name: 'Delete' }).click();
    await page.locator('#tree button.name[data-path="renamed.md"]').waitFor({ state: 'detached', timeout: WAIT });
    assert.equal((await gw.api(`/api/projects/${PROJECT}/stat/renamed.md`)).status, 404);
  });

  test('5: hibernate, open again: files intact, the container stopped', { timeout: STEP_TIMEOUT }, async (t) => {
    const before = {
      notes: await apiText('notes.md'),
      message: await apiText(`${CONTAINER}/src/message.js`),
    };
    // Collect the progress lines shown while it runs: they come from the events stream.
    await page.evaluate(() => {
      window.__progressSeen = new Set();
      const seen = () => document.querySelectorAll('#project-list .ptext').forEach((e) => window.__progressSeen.add(e.textContent));
      new MutationObserver(seen).observe(document.getElementById('project-list'), { childList: true, subtree: true, characterData: true });
    });
    await page.getByRole('button', { name: `Hibernate project ${PROJECT}` }).click();
    await page.locator(`#project-list li[data-id="${PROJECT}"][data-status="hibernated"]`).waitFor({ timeout: 120_000 });
    const progress = await page.evaluate(() => [...window.__progressSeen]);
    t.diagnostic(`progress shown: ${JSON.stringify(progress)}`);
    assert.ok(progress.some((p) => p !== 'archiving…'), `no progress from the events stream was shown: ${JSON.stringify(progress)}`);
    // The workspace panes let go of the hibernated project.
    await until(() => !window.__devgate.tree.project && window.__devgate.terminals.tabs.length === 0);
    await shot('5-hibernated');

    await page.getByRole('button', { name: `Wake project ${PROJECT}` }).click();
    await page.locator(`#project-list li[data-id="${PROJECT}"][data-status="active"]`).waitFor({ timeout: 120_000 });
    await page.locator('#tree button.name[data-path="newfile.txt"]').waitFor({ timeout: WAIT });
    await page.locator(`#tree button.name[data-path="${CONTAINER}"]`).waitFor({ timeout: WAIT });
    await page.locator(`#container-list li[data-name="${CONTAINER}"][data-status="stopped"]`).waitFor({ timeout: WAIT });
    assert.equal(await apiText('notes.md'), before.notes);
    assert.equal(await apiText(`${CONTAINER}/src/message.js`), before.message);
    await openFile('notes.md');
    assert.equal(await page.evaluate(() => window.__devgate.editor.text), before.notes);
    await shot('5-restored');
  });

  test('a project is deleted from the page', { timeout: STEP_TIMEOUT }, async () => {
    const res = await gw.api('/api/projects', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id: 'scratch' }) });
    assert.equal(res.status, 201);
    await page.getByRole('button', { name: 'Refresh projects' }).click();
    await page.getByRole('button', { name: 'Delete project scratch' }).click();
    await page.locator('dialog[open]').getByRole('button', { name: 'Delete' }).click();
    await page.locator('#project-list li[data-id="scratch"]').waitFor({ state: 'detached', timeout: WAIT });
    assert.equal((await gw.api('/api/projects/scratch')).status, 404);
    // The open project is untouched.
    await page.locator(`#project-list li[data-id="${PROJECT}"][data-status="active"]`).waitFor();
  });

  test('every control is labelled and reachable by keyboard', async () => {
    const unlabelled = await page.evaluate(() =>
      [...document.querySelectorAll('button, input, select, a[href], [role="tab"], [role="separator"]')]
        .filter((el) => !el.closest('[hidden]') && !el.closest('.xterm') && !el.closest('.cm-editor'))
        .filter((el) => !(el.getAttribute('aria-label') || el.textContent.trim() || el.labels?.length))
        .map((el) => el.outerHTML.slice(0, 120)),
    );
    assert.deepEqual(unlabelled, []);
    // Tab from the top reaches the project form, the projects, the file tree and
    // the editor; Escape then Tab leaves the editor (CodeMirror's way out of its
    // Tab-indents) for the terminal tabs. The terminal keeps Tab for the shell's
    // completion, so the right-hand panes are reached with Shift+Tab from the top.
    const where = () =>
      page.evaluate(() => {
        const a = document.activeElement;
        if (!a) return '';
        if (a.closest('#project-create')) return 'project-form';
        if (a.closest('#project-list')) return 'projects';
        if (a.closest('#tree')) return 'tree';
        if (a.closest('.cm-editor')) return 'editor';
        if (a.closest('.xterm')) return 'terminal';
        if (a.closest('#term-tabs')) return 'terminal-tabs';
        if (a.closest('#container-list') || a.id === 'container-add') return 'containers';
        if (a.id === 'logs') return 'logs';
        return a.id || a.tagName;
      });
    const walk = async (key, want, stopAt) => {
      await page.locator('.brand').click();
      const reached = [];
      for (let i = 0; i < 80 && !reached.includes(stopAt); i++) {
        await page.keyboard.press(key);
        const w = await where();
        if (w === 'editor' && key === 'Tab') await page.keyboard.press('Escape');
        reached.push(w);
      }
      for (const x of want) assert.ok(reached.includes(x), `${key} never reached ${x}; reached ${[...new Set(reached)].join(', ')}`);
    };
    const text = await page.evaluate(() => window.__devgate.editor.text);
    await walk('Tab', ['project-form', 'projects', 'tree', 'editor-save', 'editor', 'splitter', 'terminal-tabs'], 'terminal');
    await walk('Shift+Tab', ['logs', 'containers'], 'containers');
    assert.equal(await page.evaluate(() => window.__devgate.editor.text), text, 'tabbing through changed the file');
  });

  test('no errors in the browser console', () => {
    assert.deepEqual(consoleErrors, []);
  });
});
