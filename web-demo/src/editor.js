// The editor: file tabs over one CodeMirror 6 view (each tab keeps its own
// EditorState, so its undo history, cursor and scroll survive switching).
// Saves go through the file API with If-Match. The etag the PUT answers is
// the one later reads, lists and stats show (one string everywhere), so the
// watch event of our own write is recognised and never taken for someone
// else's change. A real change on disk is applied as a minimal edit (cursor,
// selection, scroll and undo history stay); with unsaved changes the save
// asks, in a diff and merge view, which version to keep. Images show as
// images; other binary files get their size, type and a download.

import { EditorView, basicSetup } from 'codemirror';
import { EditorState, Compartment } from '@codemirror/state';
import { keymap } from '@codemirror/view';
import { indentWithTab, undoDepth, isolateHistory } from '@codemirror/commands';
import { editorTheme } from './theme.js';
import { javascript } from '@codemirror/lang-javascript';
import { json } from '@codemirror/lang-json';
import { css } from '@codemirror/lang-css';
import { html } from '@codemirror/lang-html';
import { markdown } from '@codemirror/lang-markdown';
import { python } from '@codemirror/lang-python';
import { MergeView, diff } from '@codemirror/merge';
import { api, ApiError } from './api.js';
import { $, h, dialog, showError, toast, saveBlob, fmtBytes } from './ui.js';

const utf8 = new TextDecoder('utf-8', { fatal: true });
const enc = new TextEncoder();

const IMAGE_TYPES = {
  png: 'image/png',
  jpg: 'image/jpeg',
  jpeg: 'image/jpeg',
  gif: 'image/gif',
  webp: 'image/webp',
  avif: 'image/avif',
  bmp: 'image/bmp',
  ico: 'image/x-icon',
};

const extOf = (path) => {
  const name = path.split('/').pop().toLowerCase();
  return name.includes('.') ? name.split('.').pop() : '';
};
const baseName = (p) => p.slice(p.lastIndexOf('/') + 1);

/** The language extension for a path, by its extension. */
export function languageFor(path) {
  switch (extOf(path)) {
    case 'js':
    case 'mjs':
    case 'cjs':
      return javascript();
    case 'jsx':
      return javascript({ jsx: true });
    case 'ts':
    case 'mts':
    case 'cts':
      return javascript({ typescript: true });
    case 'tsx':
      return javascript({ jsx: true, typescript: true });
    case 'json':
    case 'jsonc':
      return json();
    case 'css':
    case 'scss':
    case 'less':
      return css();
    case 'html':
    case 'htm':
    case 'vue':
    case 'svelte':
    case 'svg':
      return html();
    case 'md':
    case 'markdown':
      return markdown();
    case 'py':
    case 'pyi':
      return python();
    default:
      return [];
  }
}

/** A type for a binary file: from its first bytes, else its extension. */
export function sniffType(path, bytes) {
  const b = bytes;
  const starts = (...sig) => sig.every((v, i) => b[i] === v);
  if (starts(0x89, 0x50, 0x4e, 0x47)) return 'image/png';
  if (starts(0xff, 0xd8, 0xff)) return 'image/jpeg';
  if (starts(0x47, 0x49, 0x46, 0x38)) return 'image/gif';
  if (starts(0x52, 0x49, 0x46, 0x46) && b[8] === 0x57 && b[9] === 0x45) return 'image/webp';
  if (starts(0x25, 0x50, 0x44, 0x46)) return 'application/pdf';
  if (starts(0x50, 0x4b, 0x03, 0x04)) return 'application/zip';
  if (starts(0x1f, 0x8b)) return 'application/gzip';
  if (starts(0x7f, 0x45, 0x4c, 0x46)) return 'application/x-elf (executable)';
  if (starts(0x00, 0x61, 0x73, 0x6d)) return 'application/wasm';
  if (starts(0x53, 0x51, 0x4c, 0x69, 0x74, 0x65)) return 'application/x-sqlite3';
  return IMAGE_TYPES[extOf(path)] || 'application/octet-stream';
}

/** Decodes text; null when the bytes are not UTF-8 text (or hold NUL bytes). */
function decodeText(bytes) {
  if (bytes.subarray(0, 8192).includes(0)) return null;
  try {
    return utf8.decode(bytes);
  } catch {
    return null;
  }
}

/** The changes that turn `a` into `b`, hunk by hunk, so that positions
 * outside the hunks (the cursor, the selection, the scroll) map unchanged. */
export function minimalChanges(a, b) {
  return diff(a, b, { scanLimit: 2000 }).map((c) => ({ from: c.fromA, to: c.toA, insert: b.slice(c.fromB, c.toB) }));
}

let tabSeq = 0;

/** Those of `paths` that are files in the project, by listing each folder on
 * the way from the root (a folder is listed only when its parent shows it). */
async function existing(project, paths) {
  const listings = new Map();
  const names = async (dir) => {
    if (!listings.has(dir)) {
      listings.set(
        dir,
        api
          .list(project, dir, 1)
          .then((r) => new Map((r.entries || []).map((e) => [e.path.replace(/^\/+|\/+$/g, ''), e.kind])))
          .catch(() => new Map()),
      );
    }
    return listings.get(dir);
  };
  const out = [];
  for (const p of paths) {
    const parts = p.split('/');
    let dir = '';
    let ok = true;
    for (let i = 0; i < parts.length && ok; i++) {
      const child = dir ? `${dir}/${parts[i]}` : parts[i];
      const kind = (await names(dir)).get(child);
      ok = i === parts.length - 1 ? kind === 'file' : kind === 'dir';
      dir = child;
    }
    if (ok) out.push(p);
  }
  return out;
}

export class Editor {
  /**
   * onSaved(project, path), onTabs(paths, activePath): the open tabs changed
   * (the page remembers them), onActivate(path): the shown tab changed.
   */
  constructor({ onSaved, onTabs, onActivate } = {}) {
    this.project = null;
    this.tabs = [];
    this.active = null;
    this.onSaved = onSaved || (() => {});
    this.onTabs = onTabs || (() => {});
    this.onActivate = onActivate || (() => {});
    // Etags our own saves produced, per path: the watch event of our own
    // write reports one of these. A few are kept, as saves can follow fast.
    this.ownEtags = new Map();
    this.checking = 0; // watch events being looked at (the tests wait on it)
    this.lang = new Compartment();
    this.view = new EditorView({ parent: $('editor'), state: this.makeState('', null) });
    $('editor-save').addEventListener('click', () => this.save());
    $('editor-close').addEventListener('click', () => this.active && this.closeTab(this.active));
    $('editor-download').addEventListener('click', () => this.active && this.download(this.active));
    this.render();
  }

  makeState(doc, path) {
    return EditorState.create({
      doc,
      extensions: [
        basicSetup,
        editorTheme,
        keymap.of([
          indentWithTab,
          {
            key: 'Mod-s',
            preventDefault: true,
            run: () => {
              this.save();
              return true;
            },
          },
        ]),
        this.lang.of(path ? languageFor(path) : []),
        EditorState.readOnly.of(path === null),
        EditorView.updateListener.of((u) => {
          if (u.docChanged) this.renderSoon();
        }),
        EditorView.contentAttributes.of({ 'aria-label': path ? `Content of ${path}` : 'File content' }),
      ],
    });
  }

  // --- tab model -----------------------------------------------------------

  get path() {
    return this.active ? this.active.path : null;
  }

  /** The active tab's text (the live view's document). */
  get text() {
    return this.active && this.active.kind === 'text' ? this.view.state.doc.toString() : '';
  }

  textOf(tab) {
    if (tab.kind !== 'text') return '';
    return (tab === this.active ? this.view.state : tab.state).doc.toString();
  }

  isDirty(tab) {
    return !!tab && tab.kind === 'text' && (tab.missing || this.textOf(tab) !== tab.savedText);
  }

  /** Whether the active tab has unsaved changes. */
  get dirty() {
    return this.isDirty(this.active);
  }

  dirtyTabs() {
    return this.tabs.filter((t) => this.isDirty(t));
  }

  find(path) {
    return this.tabs.find((t) => t.path === path) || null;
  }

  /** Points the editor at a project, opening the files it had open. The
   * caller asked about unsaved changes first. */
  async setProject(project, { files = [], active = null } = {}) {
    if (project === this.project) return;
    for (const t of this.tabs) this.dropTab(t);
    this.tabs = [];
    this.active = null;
    this.project = project;
    this.ownEtags.clear();
    this.view.setState(this.makeState('', null));
    this.render();
    if (!project) return;
    // Files deleted since are left out, found by listing their folders (so
    // that no read of a missing file is even tried).
    const present = await existing(project, files.slice(0, 20));
    for (const path of present) {
      if (this.project !== project) return;
      await this.open(path, { quiet: true, activate: false });
    }
    if (this.project !== project) return;
    const want = (active && this.find(active)) || this.tabs[0];
    if (want) this.activate(want);
    this.emitTabs();
  }

  emitTabs() {
    this.onTabs(
      this.tabs.map((t) => t.path),
      this.active ? this.active.path : null,
    );
  }

  /** Opens a file in a tab (or shows its tab). Returns true when shown. */
  async open(path, { quiet = false, activate = true } = {}) {
    const project = this.project;
    if (!project) return false;
    const existing = this.find(path);
    if (existing) {
      if (activate) this.activate(existing);
      return true;
    }
    let r;
    try {
      r = await api.readFile(project, path);
    } catch (err) {
      if (!quiet) showError(`Could not open ${path}`, err);
      return false;
    }
    if (project !== this.project) return false;
    if (this.find(path)) {
      if (activate) this.activate(this.find(path));
      return true;
    }
    const tab = this.makeTab(path, r.bytes, r.etag);
    this.tabs.push(tab);
    if (activate) this.activate(tab);
    else this.render();
    this.emitTabs();
    return true;
  }

  makeTab(path, bytes, etag) {
    const tab = { id: `ftab-${++tabSeq}`, path, etag, size: bytes.byteLength, banner: null, missing: false };
    const type = IMAGE_TYPES[extOf(path)];
    const text = type ? null : decodeText(bytes);
    if (type) {
      tab.kind = 'image';
      tab.mime = type;
      tab.url = URL.createObjectURL(new Blob([bytes], { type }));
    } else if (text === null) {
      tab.kind = 'binary';
      tab.mime = sniffType(path, bytes);
      tab.bytes = bytes;
    } else {
      tab.kind = 'text';
      tab.savedText = text;
      tab.state = this.makeState(text, path);
    }
    return tab;
  }

  dropTab(t) {
    if (t.url) URL.revokeObjectURL(t.url);
    t.url = null;
  }

  activate(tab) {
    if (this.active === tab) {
      this.render();
      return;
    }
    if (this.active && this.active.kind === 'text') {
      this.active.state = this.view.state;
      this.active.scroll = this.view.scrollDOM.scrollTop;
    }
    this.active = tab;
    if (tab.kind === 'text') {
      this.view.setState(tab.state);
      // setState starts at the top; put the tab's view back where it was.
      const top = tab.scroll || 0;
      if (top) requestAnimationFrame(() => {
        if (this.active === tab) this.view.scrollDOM.scrollTop = top;
      });
    } else this.view.setState(this.makeState('', null));
    this.render();
    this.onActivate(tab.path);
    this.emitTabs();
  }

  /** Closes a tab, asking first when it has unsaved changes. */
  async closeTab(tab) {
    if (this.isDirty(tab)) {
      if (this.active !== tab) this.activate(tab);
      const v = await dialog({
        title: 'Unsaved changes',
        body: `${tab.path} has changes that are not saved.`,
        actions: [
          { label: 'Cancel', value: 'cancel' },
          { label: 'Discard changes', value: 'discard', kind: 'danger', aria: `Discard changes to ${tab.path}` },
          { label: 'Save and close', value: 'save', kind: 'primary', aria: `Save and close ${tab.path}` },
        ],
      });
      if (!v) return false;
      if (v === 'save' && !(await this.save())) return false;
    }
    const i = this.tabs.indexOf(tab);
    if (i < 0) return true;
    this.tabs.splice(i, 1);
    this.dropTab(tab);
    if (this.active === tab) {
      this.active = null;
      const next = this.tabs[i] || this.tabs[i - 1];
      if (next) this.activate(next);
      else {
        this.view.setState(this.makeState('', null));
        this.onActivate(null);
      }
    }
    this.render();
    this.emitTabs();
    return true;
  }

  /** Closes every tab without asking (the project went away). */
  closeAll() {
    for (const t of this.tabs) this.dropTab(t);
    this.tabs = [];
    this.active = null;
    this.view.setState(this.makeState('', null));
    this.render();
    this.emitTabs();
  }

  // --- saving ----------------------------------------------------------------

  rememberOwn(path, etag) {
    if (!etag) return;
    const set = this.ownEtags.get(path) || [];
    set.push(etag);
    while (set.length > 8) set.shift();
    this.ownEtags.set(path, set);
  }

  isOwn(path, etag) {
    return !!etag && (this.ownEtags.get(path) || []).includes(etag);
  }

  /** Saves the active tab with If-Match; on 412 asks how to resolve. Returns true when saved. */
  async save({ force = false, tab = this.active } = {}) {
    if (!tab || tab.kind !== 'text' || tab.saving) return false;
    const project = this.project;
    const path = tab.path;
    const text = this.textOf(tab);
    tab.saving = true;
    this.render();
    try {
      const opts = force || !tab.etag || tab.missing ? {} : { ifMatch: tab.etag };
      const res = await api.writeFile(project, path, enc.encode(text), opts);
      if (project === this.project) {
        if (res && res.etag) {
          tab.etag = res.etag;
          this.rememberOwn(path, res.etag);
        }
        // What is on disk now; typing during the save stays "modified".
        tab.savedText = text;
        // A save is an undo stop: Ctrl+Z after it takes back only what
        // was typed after it (no reload, so the history is all there).
        const mark = { annotations: isolateHistory.of('full') };
        if (tab === this.active) this.view.dispatch(mark);
        else if (tab.state) tab.state = tab.state.update(mark).state;
        tab.missing = false;
        tab.banner = null;
      }
      this.onSaved(project, path);
      return true;
    } catch (err) {
      if (err instanceof ApiError && err.status === 412) {
        tab.saving = false;
        this.render();
        return this.resolveConflict(tab, text);
      }
      showError(`Could not save ${path}`, err);
      return false;
    } finally {
      tab.saving = false;
      this.render();
    }
  }

  /** The file changed since we read it: show the two versions side by side
   * with their differences, and let the person choose or merge. Nothing is
   * written or discarded before the choice. */
  async resolveConflict(tab, mine) {
    const project = this.project;
    const path = tab.path;
    let theirs = null;
    let theirsEtag = null;
    let gone = false;
    try {
      const r = await api.readFile(project, path);
      theirsEtag = r.etag;
      theirs = decodeText(r.bytes);
      if (theirs === null) theirs = `(${r.bytes.length} bytes, not UTF-8 text)`;
    } catch (err) {
      gone = err instanceof ApiError && err.status === 404;
      theirs = gone ? '' : `(could not read: ${err.message})`;
    }
    tab.banner = `${path} changed on disk since you opened it. Your version is still here, unsaved.`;
    this.render();
    const holder = h('div', { class: 'merge', role: 'group', 'aria-label': 'Differences between your version and the one on disk' });
    const view = new MergeView({
      a: {
        doc: mine,
        extensions: [basicSetup, editorTheme, languageFor(path), EditorView.contentAttributes.of({ 'aria-label': 'Your version (editable: take changes from disk with the arrows)' })],
      },
      b: {
        doc: theirs,
        extensions: [basicSetup, editorTheme, languageFor(path), EditorState.readOnly.of(true), EditorView.editable.of(false), EditorView.contentAttributes.of({ 'aria-label': 'Version on disk' })],
      },
      parent: holder,
      revertControls: 'b-to-a',
      // The merge view acts on mousedown; Enter and Space do the same here.
      renderRevertControl: () =>
        h(
          'button',
          {
            type: 'button',
            'aria-label': 'Take this change from the disk version',
            title: 'Take this change from disk',
            onkeydown: (ev) => {
              if (ev.key !== 'Enter' && ev.key !== ' ') return;
              ev.preventDefault();
              ev.target.dispatchEvent(new MouseEvent('mousedown', { bubbles: true, cancelable: true }));
            },
          },
          '←',
        ),
      collapseUnchanged: { margin: 3, minSize: 6 },
      gutter: true,
    });
    const body = h(
      'div',
      { class: 'conflict' },
      h('p', {}, gone ? `${path} was deleted on disk since you opened it.` : `${path} was changed by someone else since you opened it. Your version is on the left, the one on disk on the right.`),
      h('div', { class: 'merge-heads', 'aria-hidden': 'true' }, h('span', {}, 'Yours (editable)'), h('span', {}, 'On disk')),
      holder,
    );
    window.__devgate.merge = view;
    const choice = await dialog({
      title: 'File changed on disk',
      body,
      wide: true,
      actions: [
        { label: 'Keep editing', value: 'cancel' },
        { label: 'Use the disk version', value: 'reload', kind: 'danger', aria: 'Use the disk version (drop my changes)' },
        { label: 'Overwrite with mine', value: 'overwrite', aria: 'Overwrite with mine (replace the file on disk)' },
        { label: 'Save merged', value: 'merged', kind: 'primary', aria: 'Save merged (the version on the left)' },
      ],
    });
    const merged = view.a.state.doc.toString();
    view.destroy();
    window.__devgate.merge = null;
    if (project !== this.project || !this.tabs.includes(tab)) return false;
    if (choice === 'reload') {
      // Re-read rather than reuse what the dialog showed: it may have moved on.
      if (await this.reloadTab(tab, { force: true })) toast(`Reloaded ${path} from disk`);
      return false;
    }
    if (choice === 'overwrite' || choice === 'merged') {
      if (choice === 'merged') this.replaceText(tab, merged);
      tab.etag = theirsEtag;
      tab.missing = gone;
      // Conditional on the version just shown, so a third writer is still caught.
      return this.save({ tab, force: !theirsEtag && !gone });
    }
    return false;
  }

  /** Turns a tab's text into `next` with minimal edits. */
  replaceText(tab, next) {
    const current = this.textOf(tab);
    if (current === next) return;
    // In the undo history like any edit, so that Ctrl+Z can take it back.
    const spec = { changes: minimalChanges(current, next), userEvent: 'input.reload' };
    if (tab === this.active) this.view.dispatch(spec);
    else tab.state = tab.state.update(spec).state;
  }

  /** Reads the file again and applies it as minimal edits. `force` drops
   * unsaved changes; otherwise a dirty tab gets a banner instead. */
  async reloadTab(tab, { force = false } = {}) {
    const project = this.project;
    let r;
    try {
      r = await api.readFile(project, tab.path);
    } catch (err) {
      if (force) showError(`Could not reload ${tab.path}`, err);
      return false;
    }
    if (project !== this.project || !this.tabs.includes(tab)) return false;
    if (!force && (r.etag === tab.etag || this.isOwn(tab.path, r.etag))) return false;
    if (tab.kind !== 'text') {
      const fresh = this.makeTab(tab.path, r.bytes, r.etag);
      this.dropTab(tab);
      Object.assign(tab, fresh, { id: tab.id });
      this.render();
      return true;
    }
    const text = decodeText(r.bytes);
    if (text === null) return false;
    if (!force && (this.isDirty(tab) || tab.saving)) {
      tab.banner = `${tab.path} changed on disk. Saving will show both versions and ask which to keep.`;
      this.render();
      return false;
    }
    this.replaceText(tab, text);
    tab.savedText = text;
    tab.etag = r.etag;
    tab.missing = false;
    tab.banner = null;
    this.render();
    return true;
  }

  /** How many steps Ctrl+Z can take back in the active tab. */
  undoDepth() {
    return undoDepth(this.view.state);
  }

  /** A watch event touched a path: reload open tabs that really changed.
   * The event of our own save carries nothing new: its etag is ours. */
  async externalChange(e) {
    this.checking++;
    try {
      await this.checkChange(e);
    } finally {
      this.checking--;
    }
  }

  async checkChange(e) {
    const tab = this.find(e.path);
    if (e.kind === 'renamed' && tab) {
      const to = e.to;
      if (to && !this.find(to)) {
        // Follow the file: same content under its new name.
        tab.path = to;
        if (tab.kind === 'text') {
          const effects = this.lang.reconfigure(languageFor(to));
          if (tab === this.active) this.view.dispatch({ effects });
          else tab.state = tab.state.update({ effects }).state;
        }
        try {
          const st = await api.stat(this.project, to);
          tab.etag = st.etag || tab.etag;
        } catch {
          // Gone again: the next save says so.
        }
        this.render();
        this.emitTabs();
        if (tab === this.active) this.onActivate(to);
      }
      return;
    }
    const target = tab || (e.to ? this.find(e.to) : null);
    if (!target) return;
    if (e.kind === 'removed') {
      target.missing = true;
      target.banner = `${target.path} was deleted on disk. Save to write it again.`;
      this.render();
      return;
    }
    // An unchanged etag (or one of our own saves) needs no read.
    let st;
    try {
      st = await api.stat(this.project, target.path);
    } catch {
      return;
    }
    if (!this.tabs.includes(target)) return;
    if (st.kind !== 'file' || st.etag === target.etag || this.isOwn(target.path, st.etag)) {
      if (target.missing && st.kind === 'file') {
        target.missing = false;
        target.banner = null;
        this.render();
      }
      return;
    }
    await this.reloadTab(target);
  }

  async download(tab) {
    try {
      let blob;
      if (tab.kind === 'text' && !this.isDirty(tab)) blob = new Blob([this.textOf(tab)]);
      else blob = new Blob([(await api.readFile(this.project, tab.path)).bytes], { type: tab.mime || 'application/octet-stream' });
      saveBlob(blob, baseName(tab.path));
    } catch (err) {
      showError(`Could not download ${tab.path}`, err);
    }
  }

  // --- rendering -------------------------------------------------------------

  renderSoon() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    queueMicrotask(() => {
      this.renderQueued = false;
      this.render();
    });
  }

  render() {
    const t = this.active;
    $('editor-path').textContent = t ? t.path : 'No file open';
    const badge = $('editor-state');
    const dirty = this.isDirty(t);
    badge.textContent = t && t.kind === 'text' ? (t.saving ? 'saving…' : dirty ? 'modified' : 'saved') : '';
    badge.className = 'badge ' + (dirty ? 'warn' : 'ok');
    $('editor-save').disabled = !t || t.kind !== 'text' || !!t.saving;
    $('editor-close').disabled = !t;
    $('editor-download').disabled = !t;
    const banner = $('editor-banner');
    banner.hidden = !(t && t.banner);
    banner.textContent = t && t.banner ? t.banner : '';
    $('editor').hidden = !(t && t.kind === 'text');
    $('editor-empty').hidden = !!t;
    const media = $('editor-media');
    if (t && t.kind !== 'text') {
      media.hidden = false;
      if (media.dataset.tab !== t.id + t.etag) {
        media.dataset.tab = t.id + t.etag;
        if (t.kind === 'image') {
          media.replaceChildren(
            h('figure', { class: 'image-view' }, h('img', { src: t.url, alt: `Image ${t.path}` }), h('figcaption', {}, `${t.mime} · ${fmtBytes(t.size)}`)),
          );
        } else {
          media.replaceChildren(
            h(
              'div',
              { class: 'binary-view' },
              h('p', {}, h('strong', {}, baseName(t.path)), ' is a binary file; it is not shown in the editor.'),
              h('dl', {}, h('dt', {}, 'Size'), h('dd', {}, `${fmtBytes(t.size)} (${t.size} bytes)`), h('dt', {}, 'Type'), h('dd', { class: 'mime' }, t.mime)),
              h('button', { type: 'button', class: 'primary', 'aria-label': `Download ${t.path}`, onclick: () => this.download(t) }, 'Download'),
            ),
          );
        }
      }
    } else {
      media.hidden = true;
      media.dataset.tab = '';
      media.replaceChildren();
    }
    this.renderTabs();
  }

  renderTabs() {
    const bar = $('editor-tabs');
    const focused = document.activeElement && bar.contains(document.activeElement) ? document.activeElement.dataset.path : null;
    bar.hidden = this.tabs.length === 0;
    bar.replaceChildren(
      ...this.tabs.map((t) => {
        const dirty = this.isDirty(t);
        const selected = t === this.active;
        return h(
          'button',
          {
            role: 'tab',
            id: t.id,
            class: 'ftab' + (selected ? ' active' : '') + (dirty ? ' dirty' : ''),
            'aria-selected': String(selected),
            'aria-controls': 'editor-panel',
            'aria-label': `${t.path}${dirty ? ', unsaved changes' : ''}`,
            title: `${t.path}${dirty ? ' (unsaved)' : ''} · Delete closes`,
            tabindex: selected ? '0' : '-1',
            dataset: { path: t.path },
            onclick: (ev) => {
              if (ev.target.closest('.x')) this.closeTab(t);
              else this.activate(t);
            },
            onauxclick: (ev) => {
              if (ev.button === 1) this.closeTab(t);
            },
            onkeydown: (ev) => {
              const i = this.tabs.indexOf(t);
              let next = null;
              if (ev.key === 'ArrowRight') next = this.tabs[(i + 1) % this.tabs.length];
              else if (ev.key === 'ArrowLeft') next = this.tabs[(i - 1 + this.tabs.length) % this.tabs.length];
              else if (ev.key === 'Home') next = this.tabs[0];
              else if (ev.key === 'End') next = this.tabs[this.tabs.length - 1];
              else if (ev.key === 'Delete') {
                ev.preventDefault();
                this.closeTab(t);
                return;
              }
              if (!next) return;
              ev.preventDefault();
              this.activate(next);
              document.getElementById(next.id)?.focus();
            },
          },
          h('span', { class: 'fname' }, baseName(t.path)),
          h('span', { class: 'mark', 'aria-hidden': 'true' }, dirty ? '●' : ''),
          h('span', { class: 'x', 'aria-hidden': 'true', title: 'Close' }, '×'),
        );
      }),
    );
    if (focused) bar.querySelector(`[data-path="${CSS.escape(focused)}"]`)?.focus();
  }
}
