// The demo page as an IDE, in Debian's Chromium against the real gateway on
// loopback: the editor keeps its place across saves and outside changes, tabs,
// the merge view, images and binaries; the tree by keyboard; uploads and
// downloads; several terminals that survive a reload and a project switch;
// a failed dev server with its exit code, Restart and Reinstall; a
// keyboard-only walk; the narrow layout. axe-core runs on every step and
// each step leaves screenshots at 400, 820 and 1440 px in tests/artifacts/.
// The console must stay free of errors and never show the token.

import { describe, test, before, after, afterEach } from 'node:test';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import assert from 'node:assert/strict';
import path from 'node:path';
import { startGateway, ARTIFACTS } from './gateway.mjs';
import { launch, watchedPage, axeCheck, shots, until, waitTerminal, typeInTerminal, treeItem, apiText, WAIT } from './lib.mjs';

const PROJECT = 'demo';
const STEP = 180_000;

// Chromium logs every non-2xx answer to fetch as a console error. These are
// the protocol doing its job: a 412 when If-Match caught a concurrent write,
// and the 404s of reattaching to a shell that no longer exists.
const EXPECTED = [
  /Failed to load resource: the server responded with a status of 412 .*\/api\/projects\/[^/]+\/files\//,
  /WebSocket connection to 'ws:\/\/[^']*\/terminal\?[^']*session=no-such-session[^']*' failed/,
];

let gw;
let browser;
let context;
let w; // the watched page
let page;
let tmp;

const api = (p, init) => gw.api(`/api/projects/${PROJECT}${p}`, init);

async function put(p, body) {
  const r = await api(`/files/${p}`, { method: 'PUT', body });
  assert.equal(r.status, 200, `PUT ${p}`);
  return r.json();
}

/** Waits until the editor looked at every watch event that arrived after `since`. */
async function settled(since) {
  await until(page, (n) => window.__devgate.tree.events > n && window.__devgate.editor.checking === 0, since);
}

function cursor() {
  return page.evaluate(() => {
    const v = window.__devgate.editor.view;
    const head = v.state.selection.main.head;
    const line = v.state.doc.lineAt(head);
    return { line: line.number, col: head - line.from, scroll: v.scrollDOM.scrollTop };
  });
}

describe('the demo page as an IDE', { timeout: 20 * 60_000 }, () => {
  before(async () => {
    tmp = mkdtempSync(path.join(tmpdir(), 'devgate-browser-files-'));
    gw = await startGateway();
    browser = await launch();
    context = await browser.newContext({ viewport: { width: 1440, height: 900 }, acceptDownloads: true });
    w = await watchedPage(context, { name: 'demo', secret: gw.token, expected: EXPECTED });
    page = w.page;
  });

  afterEach(async (t) => {
    if (page && t && t.passed === false) await page.screenshot({ path: path.join(ARTIFACTS, `failed-${t.name.split(':')[0]}.png`) }).catch(() => {});
  });

  after(async () => {
    if (w) w.save();
    if (browser) await browser.close();
    if (gw) await gw.stop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  test('1: sign in by the printed URL; the token leaves the address bar and is kept per origin', { timeout: STEP }, async () => {
    await page.goto(gw.demoUrl);
    await until(page, () => !window.location.search.includes('token='));
    await until(page, () => document.getElementById('conn').textContent.startsWith('signed in'));
    assert.equal(await page.evaluate(() => localStorage.getItem('devgate.token')), gw.token);
    assert.equal(await page.locator('#project-list').textContent(), 'No projects yet. Create one above.');
    await shots(page, '01-signed-in');
  });

  test('2: the project id rule is explained at the input; a project is created and opened', { timeout: STEP }, async () => {
    await page.locator('#project-id').fill('Bad_Id');
    assert.equal(await page.locator('#project-id').getAttribute('aria-invalid'), 'true');
    assert.match(await page.locator('#project-id-hint').textContent(), /Start with a lowercase letter/);
    await page.getByRole('button', { name: 'Create project' }).click();
    assert.equal((await (await gw.api('/api/projects')).json()).length, 0, 'an invalid id was sent');
    await page.locator('#project-id').fill('demo-');
    assert.match(await page.locator('#project-id-hint').textContent(), /Do not end with a dash/);
    await page.locator('#project-id').fill(PROJECT);
    assert.equal(await page.locator('#project-id').getAttribute('aria-invalid'), 'false');
    await page.getByRole('button', { name: 'Create project' }).click();
    await page.locator(`#project-list li[data-id="${PROJECT}"][data-status="active"]`).waitFor({ timeout: WAIT });
    await until(page, () => window.__devgate.terminals.active && window.__devgate.terminals.active.state === 'connected');
    // Opening a project does not grab the focus for the terminal.
    assert.equal(await page.evaluate(() => !!document.activeElement.closest('.xterm')), false);
    await shots(page, '02-project', { view: 'files' });
  });

  test('3: save, then type at the cursor: the text lands where the cursor was, no banner, undo works', { timeout: STEP }, async () => {
    const lines = Array.from({ length: 200 }, (_, i) => `line ${i + 1}`);
    await put('src/app.js', lines.join('\n') + '\n');
    await treeItem(page, 'src').click();
    await treeItem(page, 'src/app.js').click();
    await until(page, () => window.__devgate.editor.path === 'src/app.js');
    // Down to line 150, end of line; the view scrolls there.
    await page.locator('.cm-content').click();
    await page.keyboard.press('ControlOrMeta+Home');
    for (let i = 1; i < 150; i++) await page.keyboard.press('ArrowDown');
    await page.keyboard.press('End');
    await page.keyboard.type(' X');
    const before = await cursor();
    assert.equal(before.line, 150);
    assert.ok(before.scroll > 0, 'the view did not scroll');
    const events = await page.evaluate(() => window.__devgate.tree.events);
    await page.keyboard.press('ControlOrMeta+s');
    await until(page, () => document.getElementById('editor-state').textContent === 'saved');
    // The watch event of our own write came and went: nothing reloaded.
    await settled(events);
    assert.deepEqual(await cursor(), before, 'the save moved the cursor or the view');
    assert.equal(await page.locator('#editor-banner').isHidden(), true);
    await page.keyboard.type('Y');
    assert.equal(await page.locator('#editor-banner').isHidden(), true, 'typing after a save raised a banner');
    const text = await page.evaluate(() => window.__devgate.editor.text);
    assert.equal(text.split('\n')[149], 'line 150 XY');
    assert.equal(await apiText(gw, PROJECT, 'src/app.js'), lines.map((l, i) => (i === 149 ? 'line 150 X' : l)).join('\n') + '\n');
    // Undo goes back through the typing, across the save.
    await page.keyboard.press('ControlOrMeta+z');
    assert.equal((await page.evaluate(() => window.__devgate.editor.text)).split('\n')[149], 'line 150 X');
    await page.keyboard.press('ControlOrMeta+z');
    assert.equal((await page.evaluate(() => window.__devgate.editor.text)).split('\n')[149], 'line 150');
    await page.keyboard.press('ControlOrMeta+Shift+z');
    await page.keyboard.press('ControlOrMeta+s');
    await until(page, () => document.getElementById('editor-state').textContent === 'saved');
    assert.equal((await apiText(gw, PROJECT, 'src/app.js')).split('\n')[149], 'line 150 X');
    await shots(page, '03-editor');
  });

  test('4: a change on disk is applied as a minimal edit: cursor, scroll and undo history stay', { timeout: STEP }, async () => {
    const before = await cursor();
    const depth = await page.evaluate(() => window.__devgate.editor.undoDepth());
    const current = await apiText(gw, PROJECT, 'src/app.js');
    const changed = current.replace('line 1\n', 'line one, changed elsewhere\n');
    await put('src/app.js', changed);
    await until(page, (want) => window.__devgate.editor.text === want, changed);
    const after = await cursor();
    assert.equal(after.line, before.line);
    assert.equal(after.col, before.col);
    assert.equal(after.scroll, before.scroll, 'the view jumped');
    assert.ok((await page.evaluate(() => window.__devgate.editor.undoDepth())) >= depth, 'the undo history was dropped');
    assert.equal(await page.locator('#editor-state').textContent(), 'saved');
    // And the next save is conditional on the new version: no conflict.
    await page.keyboard.type('Z');
    await page.keyboard.press('ControlOrMeta+s');
    await until(page, () => document.getElementById('editor-state').textContent === 'saved');
    assert.equal((await apiText(gw, PROJECT, 'src/app.js')).split('\n')[149], 'line 150 XZ');
  });

  test('5: a conflicting save opens a diff and merge view; nothing is lost; a merge is saved', { timeout: STEP }, async () => {
    await put('notes.md', '# Notes\n\noriginal\n');
    await treeItem(page, 'notes.md').click();
    await until(page, () => window.__devgate.editor.path === 'notes.md');
    await page.locator('.cm-content').click();
    await page.keyboard.press('ControlOrMeta+Home');
    await page.keyboard.insertText('mine\n');
    await until(page, () => document.getElementById('editor-state').textContent === 'modified');
    // The tab says it has unsaved changes.
    const tab = page.locator('#editor-tabs [role="tab"][data-path="notes.md"]');
    assert.match(await tab.getAttribute('aria-label'), /unsaved changes/);
    assert.equal(await tab.locator('.mark').textContent(), '●');
    const theirs = '# Notes\n\nchanged through the API\n';
    await put('notes.md', theirs);
    // A dirty tab is not reloaded; it says the file changed.
    await page.locator('#editor-banner').waitFor({ timeout: WAIT });
    await page.getByRole('button', { name: 'Save file (Ctrl+S)' }).click();
    const dlg = page.locator('dialog[open]');
    await dlg.waitFor({ timeout: WAIT });
    assert.equal(await page.locator('#dlg-title').textContent(), 'File changed on disk');
    await dlg.locator('.cm-mergeView').waitFor();
    assert.equal(await page.evaluate(() => window.__devgate.merge.a.state.doc.toString()), 'mine\n# Notes\n\noriginal\n');
    assert.equal(await page.evaluate(() => window.__devgate.merge.b.state.doc.toString()), theirs);
    assert.ok((await dlg.locator('.cm-changedLine, .cm-changedText, .cm-deletedChunk, .cm-insertedLine').count()) > 0, 'no differences shown');
    assert.equal(await apiText(gw, PROJECT, 'notes.md'), theirs, 'something was written before the choice');
    await axeCheck(page, 'merge view');
    await page.screenshot({ path: path.join(ARTIFACTS, '05-merge-1440.png') });

    await dlg.getByRole('button', { name: 'Keep editing' }).click();
    assert.equal(await apiText(gw, PROJECT, 'notes.md'), theirs);
    assert.equal(await page.evaluate(() => window.__devgate.editor.text), 'mine\n# Notes\n\noriginal\n');

    // Merge: take the disk's line 3 into ours, keep our first line, save.
    await page.getByRole('button', { name: 'Save file (Ctrl+S)' }).click();
    await dlg.waitFor({ timeout: WAIT });
    await dlg.locator('.cm-mergeView').waitFor();
    const reverts = dlg.getByRole('button', { name: 'Take this change from the disk version' });
    await until(page, () => document.querySelectorAll('dialog[open] .cm-merge-revert').length >= 1);
    // The last chunk is the changed line.
    await reverts.last().click();
    await until(page, () => window.__devgate.merge.a.state.doc.toString() === 'mine\n# Notes\n\nchanged through the API\n');
    await dlg.getByRole('button', { name: 'Save merged' }).click();
    await until(page, () => document.getElementById('editor-state').textContent === 'saved');
    assert.equal(await apiText(gw, PROJECT, 'notes.md'), 'mine\n# Notes\n\nchanged through the API\n');
    assert.equal(await page.evaluate(() => window.__devgate.editor.text), 'mine\n# Notes\n\nchanged through the API\n');
    assert.equal(await tab.locator('.mark').textContent(), '');
  });

  test('6: file tabs keep each file\'s edits and close with a question when unsaved', { timeout: STEP }, async () => {
    assert.deepEqual(await page.locator('#editor-tabs [role="tab"]').evaluateAll((els) => els.map((e) => e.dataset.path)), ['src/app.js', 'notes.md']);
    await page.locator('.cm-content').click();
    await page.keyboard.press('ControlOrMeta+End');
    await page.keyboard.insertText('unsaved line\n');
    await page.locator('#editor-tabs [role="tab"][data-path="src/app.js"]').click();
    await until(page, () => window.__devgate.editor.path === 'src/app.js');
    await page.locator('#editor-tabs [role="tab"][data-path="notes.md"]').click();
    await until(page, () => window.__devgate.editor.text.endsWith('unsaved line\n'));
    // Keyboard on the tabs: Delete closes; a dirty one asks first.
    await page.locator('#editor-tabs [role="tab"][data-path="notes.md"]').focus();
    await page.keyboard.press('Delete');
    const dlg = page.locator('dialog[open]');
    await dlg.waitFor();
    assert.equal(await page.locator('#dlg-title').textContent(), 'Unsaved changes');
    await dlg.getByRole('button', { name: 'Cancel' }).click();
    assert.equal(await page.locator('#editor-tabs [role="tab"]').count(), 2);
    await page.locator('#editor-tabs [role="tab"][data-path="notes.md"]').focus();
    await page.keyboard.press('Delete');
    // Cancel, then Delete at once (in one task, before the browser fires the
    // dialog's `close`): the dialog opened again must not take the first
    // close as its own answer.
    await dlg.waitFor();
    await page.evaluate(() => {
      document.querySelector('#dlg-actions button[data-action="cancel"]').click();
      const t = document.querySelector('#editor-tabs [role="tab"][data-path="notes.md"]');
      t.focus();
      t.dispatchEvent(new KeyboardEvent('keydown', { key: 'Delete', bubbles: true }));
    });
    await dlg.waitFor();
    await dlg.getByRole('button', { name: 'Discard changes to notes.md' }).click();
    await until(page, () => window.__devgate.editor.tabs.length === 1);
    assert.deepEqual(await page.locator('#editor-tabs [role="tab"]').evaluateAll((els) => els.map((e) => e.dataset.path)), ['src/app.js']);
    assert.equal(await apiText(gw, PROJECT, 'notes.md'), 'mine\n# Notes\n\nchanged through the API\n');
  });

  test('7: images show as images; other binary files get size, type and a download', { timeout: STEP }, async () => {
    const png = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAFklEQVR4nGP8z8DwnwEIGBkZGRgYAAAsAAQB0Xq3qQAAAABJRU5ErkJggg==', 'base64');
    await put('assets/dot.png', png);
    const bin = Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]);
    await put('assets/tool.bin', bin);
    await treeItem(page, 'assets').click();
    await treeItem(page, 'assets/dot.png').click();
    const img = page.locator('#editor-media img');
    await img.waitFor({ timeout: WAIT });
    await until(page, () => document.querySelector('#editor-media img').naturalWidth === 2);
    assert.equal(await img.getAttribute('alt'), 'Image assets/dot.png');
    await shots(page, '07-image');
    await treeItem(page, 'assets/tool.bin').click();
    await page.locator('#editor-media .binary-view').waitFor({ timeout: WAIT });
    assert.match(await page.locator('#editor-media').textContent(), /19 B \(19 bytes\)/);
    assert.match(await page.locator('#editor-media .mime').textContent(), /application\/x-elf/);
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download assets/tool.bin' }).click()]);
    const saved = path.join(tmp, 'tool.bin');
    await download.saveAs(saved);
    assert.deepEqual(readFileSync(saved), bin);
  });

  test('8: the file tree is one Tab stop with arrow keys, Enter, F2, Delete and type-ahead', { timeout: STEP }, async () => {
    await put('zeta.txt', 'z\n');
    await treeItem(page, 'zeta.txt').waitFor({ timeout: WAIT });
    assert.equal(await page.locator('#tree [role="treeitem"][tabindex="0"]').count(), 1);
    await page.locator('#tree [role="treeitem"][tabindex="0"]').focus();
    await page.keyboard.press('Home');
    const focused = () => page.evaluate(() => document.activeElement.dataset.path);
    assert.equal(await focused(), 'assets');
    assert.equal(await page.locator('#tree [role="treeitem"][data-path="assets"]').getAttribute('aria-expanded'), 'true');
    await page.keyboard.press('ArrowLeft'); // collapse
    assert.equal(await page.locator('#tree [role="treeitem"][data-path="assets"]').getAttribute('aria-expanded'), 'false');
    await page.keyboard.press('ArrowDown');
    assert.equal(await focused(), 'src');
    await page.keyboard.press('ArrowRight'); // already open: to its first child
    assert.equal(await focused(), 'src/app.js');
    await page.keyboard.press('ArrowLeft'); // to the parent
    assert.equal(await focused(), 'src');
    await page.keyboard.press('z'); // type-ahead
    assert.equal(await focused(), 'zeta.txt');
    await page.keyboard.press('Enter');
    await until(page, () => window.__devgate.editor.path === 'zeta.txt');
    // Focus stays in the tree after opening.
    assert.equal(await focused(), 'zeta.txt');
    await page.keyboard.press('F2');
    await page.locator('#dlg-input').fill('omega.txt');
    await page.keyboard.press('Enter');
    await treeItem(page, 'omega.txt').waitFor({ timeout: WAIT });
    assert.equal((await api('/stat/omega.txt')).status, 200);
    // The open tab followed the rename.
    await until(page, () => window.__devgate.editor.path === 'omega.txt');
    await treeItem(page, 'omega.txt').focus();
    await page.keyboard.press('Delete');
    await page.locator('dialog[open]').getByRole('button', { name: 'Delete' }).click();
    await treeItem(page, 'omega.txt').waitFor({ state: 'detached', timeout: WAIT });
    assert.equal((await api('/stat/omega.txt')).status, 404);
    // The tree keeps one Tab stop after all that.
    assert.equal(await page.locator('#tree [role="treeitem"][tabindex="0"]').count(), 1);
    await shots(page, '08-tree', { view: 'files' });
  });

  test('9: upload files and a folder, download a file, a folder and the project: round trips', { timeout: STEP }, async () => {
    const up = path.join(tmp, 'up');
    mkdirSync(path.join(up, 'site', 'css'), { recursive: true });
    writeFileSync(path.join(up, 'a.txt'), 'alpha\n');
    writeFileSync(path.join(up, 'b.bin'), Buffer.from([0, 1, 2, 255]));
    writeFileSync(path.join(up, 'site', 'index.html'), '<h1>site</h1>\n');
    writeFileSync(path.join(up, 'site', 'css', 'main.css'), 'h1 { color: red }\n');
    // Loose files, into the root (nothing selected in a folder).
    await page.evaluate(() => {
      window.__devgate.tree.selected = null;
    });
    await page.locator('#upload-files').setInputFiles([path.join(up, 'a.txt'), path.join(up, 'b.bin')]);
    await treeItem(page, 'a.txt').waitFor({ timeout: WAIT });
    assert.equal(await apiText(gw, PROJECT, 'a.txt'), 'alpha\n');
    assert.deepEqual(Buffer.from(await (await api('/files/b.bin')).arrayBuffer()), Buffer.from([0, 1, 2, 255]));
    // A folder goes as one zip, extracted all or nothing.
    await page.locator('#upload-folder').setInputFiles(path.join(up, 'site'));
    await treeItem(page, 'site').waitFor({ timeout: WAIT });
    assert.equal(await apiText(gw, PROJECT, 'site/index.html'), '<h1>site</h1>\n');
    assert.equal(await apiText(gw, PROJECT, 'site/css/main.css'), 'h1 { color: red }\n');
    // Dropped files land in the folder they are dropped on.
    await page.evaluate(() => {
      const dt = new DataTransfer();
      dt.items.add(new File(['dropped\n'], 'dropped.txt', { type: 'text/plain' }));
      const row = document.querySelector('#tree [role="treeitem"][data-path="site"]');
      for (const type of ['dragenter', 'dragover', 'drop']) row.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: dt }));
    });
    const dropped = async () => (await api('/stat/site/dropped.txt')).status === 200;
    for (let i = 0; i < 100 && !(await dropped()); i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(await apiText(gw, PROJECT, 'site/dropped.txt'), 'dropped\n');

    // Downloads: a file (actions menu, Shift+F10), a folder, the project.
    await treeItem(page, 'a.txt').focus();
    await page.keyboard.press('Shift+F10');
    let [dl] = await Promise.all([page.waitForEvent('download'), page.locator('dialog[open]').getByRole('button', { name: 'Download a.txt' }).click()]);
    await dl.saveAs(path.join(tmp, 'a.txt'));
    assert.equal(readFileSync(path.join(tmp, 'a.txt'), 'utf8'), 'alpha\n');
    await treeItem(page, 'site').hover();
    [dl] = await Promise.all([page.waitForEvent('download'), treeItem(page, 'site').locator('.mini[aria-label="Download site"]').click()]);
    assert.equal(dl.suggestedFilename(), 'site.zip');
    await dl.saveAs(path.join(tmp, 'site.zip'));
    const unzip = (zip, file) => execFileSync('unzip', ['-p', zip, file]).toString();
    assert.equal(unzip(path.join(tmp, 'site.zip'), 'site/css/main.css'), 'h1 { color: red }\n');
    assert.equal(unzip(path.join(tmp, 'site.zip'), 'site/dropped.txt'), 'dropped\n');
    [dl] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download the project as a zip' }).click()]);
    assert.equal(dl.suggestedFilename(), `${PROJECT}.zip`);
    await dl.saveAs(path.join(tmp, 'project.zip'));
    assert.equal(unzip(path.join(tmp, 'project.zip'), 'site/index.html'), '<h1>site</h1>\n');
    assert.equal(unzip(path.join(tmp, 'project.zip'), 'notes.md'), 'mine\n# Notes\n\nchanged through the API\n');
    await shots(page, '09-files', { view: 'files' });
  });

  test('10: several terminals; a reload and a project switch reattach the same shells with their scrollback', { timeout: STEP }, async () => {
    await until(page, () => window.__devgate.terminals.active && window.__devgate.terminals.active.state === 'connected');
    await typeInTerminal(page, 'echo pid-$$-one; echo scroll-$((6*7))');
    const pidOne = (await waitTerminal(page, /^pid-(\d+)-one\s*$/m)).match(/^pid-(\d+)-one\s*$/m)[1];
    await waitTerminal(page, /^scroll-42\s*$/m);
    // A second shell.
    await page.getByRole('button', { name: 'New terminal' }).click();
    await until(page, () => window.__devgate.terminals.tabs.length === 2 && window.__devgate.terminals.active.state === 'connected');
    await typeInTerminal(page, 'echo pid-$$-two');
    const pidTwo = (await waitTerminal(page, /^pid-(\d+)-two\s*$/m)).match(/^pid-(\d+)-two\s*$/m)[1];
    assert.notEqual(pidOne, pidTwo);
    await shots(page, '10-terminals', { view: 'terminal' });

    // Reload: the project, its files and both shells come back.
    await page.reload();
    await until(page, (p) => window.__devgate.state.current === p && window.__devgate.terminals.tabs.length === 2, PROJECT);
    await until(page, () => window.__devgate.editor.path === 'src/app.js');
    await until(page, () => window.__devgate.terminals.active && window.__devgate.terminals.active.state === 'connected');
    assert.equal(await page.evaluate(() => window.__devgate.terminals.active.label), 'shell 2');
    await typeInTerminal(page, 'echo again-$$');
    await waitTerminal(page, new RegExp(`^again-${pidTwo}\\s*$`, 'm'));
    await page.locator('#term-tabs [role="tab"][data-label="shell 1"]').click();
    await until(page, () => window.__devgate.terminals.active.label === 'shell 1' && window.__devgate.terminals.active.state === 'connected');
    // Its scrollback was replayed.
    await waitTerminal(page, /^scroll-42\s*$/m);
    await typeInTerminal(page, 'echo again-$$');
    await waitTerminal(page, new RegExp(`^again-${pidOne}\\s*$`, 'm'));

    // Another project and back: same shells again.
    const r = await gw.api('/api/projects', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id: 'other' }) });
    assert.equal(r.status, 201);
    await page.getByRole('button', { name: 'Refresh projects' }).click();
    await page.getByRole('button', { name: 'Select project other' }).click();
    await page.locator('#project-list li[data-id="other"][data-status="active"]').waitFor({ timeout: WAIT });
    await until(page, () => window.__devgate.terminals.project === 'other' && window.__devgate.terminals.active.state === 'connected');
    await page.getByRole('button', { name: `Select project ${PROJECT}` }).click();
    await until(page, (p) => window.__devgate.terminals.project === p && window.__devgate.terminals.active && window.__devgate.terminals.active.state === 'connected', PROJECT);
    assert.equal(await page.evaluate(() => window.__devgate.terminals.tabs.length), 2);
    await typeInTerminal(page, 'echo back-$$');
    await waitTerminal(page, new RegExp(`^back-${pidOne}\\s*$`, 'm'));

    // Closing a tab ends its shell and forgets it.
    await page.locator('#term-tabs [role="tab"][data-label="shell 2"]').focus();
    await page.keyboard.press('Delete');
    await until(page, () => window.__devgate.terminals.tabs.length === 1);
    const remembered = await page.evaluate((p) => JSON.parse(localStorage.getItem(`devgate.project.${p}`)).terms.length, PROJECT);
    assert.equal(remembered, 1);
  });

  test('11: a network drop reattaches with no gap or repeat; a lost session says so on its own line', { timeout: STEP }, async () => {
    await typeInTerminal(page, 'echo before-$((1+1))');
    await waitTerminal(page, /^before-2\s*$/m);
    const session = await page.evaluate(() => window.__devgate.terminals.active.sessionId);
    await typeInTerminal(page, 'sleep 0.3; echo during-$((3*3))');
    await page.evaluate(() => window.__devgate.terminals.active.drop(1500));
    await until(page, () => window.__devgate.terminals.active.state === 'reconnecting', undefined, 10_000);
    await until(page, () => window.__devgate.terminals.active.state === 'connected');
    assert.equal(await page.evaluate(() => window.__devgate.terminals.active.sessionId), session);
    await waitTerminal(page, /^during-9\s*$/m);
    await typeInTerminal(page, 'echo after-$((2+1))');
    const text = await waitTerminal(page, /^after-3\s*$/m);
    const count = (re) => (text.match(re) || []).length;
    assert.equal(count(/^during-9\s*$/gm), 1, text);
    assert.equal(count(/^before-2\s*$/gm), 1, text);
    assert.ok(text.indexOf('before-2') < text.indexOf('during-9') && text.indexOf('during-9') < text.lastIndexOf('after-3'), text);

    // A remembered session that no longer exists: a new shell, said so.
    await page.evaluate((p) => {
      const m = JSON.parse(localStorage.getItem(`devgate.project.${p}`));
      m.terms = [{ session: 'no-such-session', container: '', label: 'shell 1' }];
      localStorage.setItem(`devgate.project.${p}`, JSON.stringify(m));
    }, PROJECT);
    await page.reload();
    await until(page, () => window.__devgate.terminals.active && window.__devgate.terminals.active.state === 'connected');
    const fresh = await waitTerminal(page, /\[previous session ended; this is a new shell\]/);
    assert.match(fresh, /^\[previous session ended; this is a new shell\]\s*$/m, 'the notice is not on its own line');
  });

  test('12: a dev server that fails shows its exit code and last lines; Reinstall streams its output; Restart', { timeout: STEP }, async () => {
    await page.locator('#container-add').click();
    await page.locator('#c-name').fill('crashy');
    await page.locator('#c-template').selectOption({ label: '(none: empty folder)' });
    await page.locator('#c-install').fill('echo installing-$((6*7))');
    await page.locator('#c-start').fill('echo boom-$((40+2)) >&2; exit 3');
    await page.getByRole('button', { name: 'Add the container' }).click();
    await page.locator('#container-list li[data-name="crashy"][data-status="stopped"]').waitFor({ timeout: WAIT });
    // The install's output reached Logs.
    await until(page, () => /installing-42/.test(document.getElementById('logs').textContent));
    await page.getByRole('button', { name: 'Start container crashy' }).click();
    // The row shows what the API says: failed, with the exit code and the last lines.
    const row = page.locator('#container-list li[data-name="crashy"][data-status="failed"]');
    await row.waitFor({ timeout: WAIT });
    await until(page, () => /exit 3/.test(document.querySelector('#container-list li[data-name="crashy"] .cstatus').textContent));
    await until(page, () => /boom-42/.test(document.querySelector('#container-list li[data-name="crashy"] pre.tail').textContent));
    assert.match(await row.locator('.failure').textContent(), /exited with code 3/);
    await shots(page, '12-failed', { view: 'preview' });
    // Reinstall: its output appears live in Logs, then the container starts (and fails again).
    await page.getByRole('button', { name: /^Reinstall crashy/ }).click();
    await until(page, () => /\[install done\]/.test(document.getElementById('logs').textContent));
    assert.ok((await page.locator('#logs').textContent()).match(/installing-42/g).length >= 2, await page.locator('#logs').textContent());
    await page.locator('#container-list li[data-name="crashy"][data-status="failed"]').waitFor({ timeout: WAIT });
    // Restart runs it again.
    const before = (await page.locator('#logs').textContent()).length;
    await page.getByRole('button', { name: 'Restart crashy' }).click();
    await page.locator('#container-list li[data-name="crashy"][data-status="failed"]').waitFor({ timeout: WAIT });
    assert.ok(before > 0);
  });

  test('13: keyboard only: Tab reaches every pane, F6 cycles them, nothing traps the focus', { timeout: STEP }, async () => {
    const where = () =>
      page.evaluate(() => {
        const a = document.activeElement;
        if (!a || a === document.body) return 'body';
        if (a.closest('.skip')) return 'skip';
        if (a.closest('.topbar')) return 'topbar';
        if (a.closest('#project-create')) return 'project-form';
        if (a.closest('#project-list')) return 'projects';
        if (a.closest('#files-panel .panel-head')) return 'files-toolbar';
        if (a.closest('#tree')) return 'tree';
        if (a.closest('#editor-tabs')) return 'editor-tabs';
        if (a.closest('.cm-editor')) return 'editor';
        if (a.closest('#editor-pane')) return 'editor-toolbar';
        if (a.id === 'splitter') return 'splitter';
        if (a.closest('.xterm')) return 'terminal';
        if (a.closest('#term-pane')) return 'terminal-tabs';
        if (a.closest('.containers')) return 'containers';
        if (a.closest('.preview')) return 'preview';
        if (a.id === 'logs') return 'logs';
        return a.id || a.tagName;
      });
    // Start from the top of the document.
    await page.evaluate(() => {
      document.body.tabIndex = -1;
      document.body.focus();
      document.body.removeAttribute('tabindex');
    });
    const reached = [];
    const treeStops = [];
    for (let i = 0; i < 120; i++) {
      await page.keyboard.press('Tab');
      let at = await where();
      // The editor and the terminal keep Tab; Escape then Tab leaves them.
      if (at === 'editor' || at === 'terminal') {
        reached.push(at);
        await page.keyboard.press('Escape');
        await page.keyboard.press('Tab');
        const next = await where();
        assert.notEqual(next, at, `Escape then Tab did not leave the ${at}`);
        at = next;
      }
      if (at === 'tree') treeStops.push(i);
      reached.push(at);
      if (at === 'logs') break;
    }
    // (The preview's controls are all disabled while no container runs: F6 reaches it below.)
    for (const want of ['skip', 'topbar', 'project-form', 'projects', 'files-toolbar', 'tree', 'editor-tabs', 'editor-toolbar', 'editor', 'splitter', 'terminal-tabs', 'terminal', 'containers', 'logs']) {
      assert.ok(reached.includes(want), `Tab never reached ${want}: ${[...new Set(reached)].join(', ')}`);
    }
    assert.equal(treeStops.length, 1, 'the tree takes more than one Tab stop');
    // F6 goes round the panes, from anywhere, the terminal included.
    await page.locator('.term:not([hidden]) .xterm').click();
    const order = [];
    for (let i = 0; i < 7; i++) {
      await page.keyboard.press('F6');
      order.push(await where());
    }
    assert.deepEqual(order, ['containers', 'preview', 'logs', 'projects', 'tree', 'editor', 'terminal']);
    await page.keyboard.press('Shift+F6');
    assert.equal(await where(), 'editor');
    // ? outside a text field opens the shortcuts help.
    await page.locator('#logs').focus();
    await page.keyboard.press('?');
    await page.locator('dialog[open] table.keys').waitFor();
    assert.match(await page.locator('dialog[open]').textContent(), /Escape, then Tab/);
    await axeCheck(page, 'shortcuts help');
    await page.screenshot({ path: path.join(ARTIFACTS, '13-shortcuts-1440.png') });
    await page.keyboard.press('Escape');
    // Every control has a name.
    const unlabelled = await page.evaluate(() =>
      [...document.querySelectorAll('button, input, select, a[href], [role="tab"], [role="treeitem"], [role="separator"]')]
        .filter((el) => !el.closest('[hidden]') && !el.closest('.xterm') && !el.closest('.cm-editor'))
        .filter((el) => !(el.getAttribute('aria-label') || el.getAttribute('aria-labelledby') || el.textContent.trim() || (el.labels && el.labels.length)))
        .map((el) => el.outerHTML.slice(0, 120)),
    );
    assert.deepEqual(unlabelled, []);
  });

  test('13b: the containers list, rebuilt on a status event, keeps a keyboard user\'s focus', { timeout: STEP }, async () => {
    const focused = () =>
      page.evaluate(() => {
        const a = document.activeElement;
        const li = a && a.closest('#container-list li.container');
        return li ? `${li.dataset.name} ${a.classList.contains('name') ? 'name' : a.getAttribute('aria-label')}` : a ? a.tagName : null;
      });
    await page.locator('#container-list li[data-name="crashy"] button.name').focus();
    assert.equal(await focused(), 'crashy name');
    // What a status event does: the list is rebuilt, its buttons replaced.
    const before = await page.evaluate(() => {
      const b = document.activeElement;
      window.__devgate.containers.render();
      return b.isConnected;
    });
    assert.equal(before, false, 'the rebuild replaced the focused button');
    assert.equal(await focused(), 'crashy name');
    await page.locator('#container-list li[data-name="crashy"] button[aria-label="Remove container crashy"]').focus();
    await page.evaluate(() => window.__devgate.containers.render());
    assert.equal(await focused(), 'crashy Remove container crashy');
  });

  test('14: 400 px: panes stack, tabs switch between them, the shell keeps at least 20 columns', { timeout: STEP }, async () => {
    await page.setViewportSize({ width: 400, height: 800 });
    await page.locator('#views').waitFor();
    for (const view of ['files', 'editor', 'terminal', 'preview']) {
      await page.locator(`#views [data-view="${view}"]`).click();
      const visible = await page.evaluate(() =>
        ['sidebar', 'editor-pane', 'term-pane', 'right'].filter((id) => {
          const r = document.getElementById(id).getBoundingClientRect();
          return r.width > 0 && r.height > 0;
        }),
      );
      const want = { files: 'sidebar', editor: 'editor-pane', terminal: 'term-pane', preview: 'right' }[view];
      assert.deepEqual(visible, [want], `view ${view}`);
      const width = await page.evaluate(() => document.getElementById({ files: 'sidebar', editor: 'editor-pane', terminal: 'term-pane', preview: 'right' }[document.body.dataset.view]).getBoundingClientRect().width);
      assert.ok(width >= 380, `the ${view} pane is ${width}px wide at 400`);
      await axeCheck(page, `400px ${view}`);
      await page.screenshot({ path: path.join(ARTIFACTS, `14-narrow-${view}-400.png`) });
    }
    await page.locator('#views [data-view="terminal"]').click();
    await until(page, () => window.__devgate.terminals.active.term.cols >= 20);
    const cols400 = await page.evaluate(() => window.__devgate.terminals.active.term.cols);
    assert.ok(cols400 >= 40, `only ${cols400} columns at 400 px`);
    await page.setViewportSize({ width: 360, height: 700 });
    await until(page, () => window.__devgate.terminals.active.term.cols >= 20);
    // Opening a file from the Files tab shows the editor.
    await page.locator('#views [data-view="files"]').click();
    await treeItem(page, 'notes.md').click();
    await until(page, () => document.body.dataset.view === 'editor' && window.__devgate.editor.path === 'notes.md');
    await page.screenshot({ path: path.join(ARTIFACTS, '14-narrow-editor-360.png') });
    // The terminal pane squeezed below 20 columns' width keeps 20 and scrolls.
    await page.setViewportSize({ width: 1440, height: 900 });
    await page.evaluate(() => {
      document.getElementById('term-pane').style.width = '120px';
    });
    await until(page, () => {
      const t = window.__devgate.terminals.active;
      t.refit();
      return t.term.cols === 20;
    });
    await page.evaluate(() => {
      document.getElementById('term-pane').style.width = '';
      window.__devgate.terminals.active.refit();
    });
    await page.setViewportSize({ width: 820, height: 900 });
    await axeCheck(page, '820px');
    await page.setViewportSize({ width: 1440, height: 900 });
  });

  test('15: hibernate and open: files intact, fresh shells said so', { timeout: STEP }, async () => {
    const notes = await apiText(gw, PROJECT, 'notes.md');
    await page.getByRole('button', { name: `Hibernate project ${PROJECT}` }).click();
    await page.locator(`#project-list li[data-id="${PROJECT}"][data-status="hibernated"]`).waitFor({ timeout: 120_000 });
    await until(page, () => !window.__devgate.tree.project && window.__devgate.terminals.tabs.length === 0);
    await shots(page, '15-hibernated', { view: 'files' });
    await page.getByRole('button', { name: `Open project ${PROJECT}` }).click();
    await page.locator(`#project-list li[data-id="${PROJECT}"][data-status="active"]`).waitFor({ timeout: 120_000 });
    await treeItem(page, 'notes.md').waitFor({ timeout: WAIT });
    assert.equal(await apiText(gw, PROJECT, 'notes.md'), notes);
    await until(page, () => window.__devgate.terminals.active && window.__devgate.terminals.active.state === 'connected');
    await until(page, () => window.__devgate.editor.path !== null);
    await shots(page, '15-restored');
  });

  test('16: a project is deleted from the page', { timeout: STEP }, async () => {
    await page.getByRole('button', { name: 'Delete project other' }).click();
    await page.locator('dialog[open]').getByRole('button', { name: 'Delete' }).click();
    await page.locator('#project-list li[data-id="other"]').waitFor({ state: 'detached', timeout: WAIT });
    assert.equal((await gw.api('/api/projects/other')).status, 404);
    await page.locator(`#project-list li[data-id="${PROJECT}"][data-status="active"]`).waitFor();
  });

  test('the console has no errors and never shows the token', () => {
    assert.deepEqual(w.errors, []);
    // The URL the gateway printed is the one place the token may be: the
    // page takes it from there and removes it.
    const first = gw.demoUrl; // the URL the gateway printed, opened by the test
    assert.deepEqual(w.leaks.filter((l) => !l.endsWith(first)), []);
    // No WebSocket or page URL carried it either.
    const host = new URL(gw.base).host;
    const withToken = w.log.filter((l) => l.includes('token=') && l.includes(host) && !l.endsWith(first));
    assert.deepEqual(withToken, []);
  });
});

