// The file tree, kept live by the watch WebSocket: a change reported anywhere
// in the project (an API write, a shell command, a dev server) re-lists the
// directories it touches, so what is shown is always what the listing says.
// Keyboard: the WAI-ARIA tree pattern (one Tab stop; arrows, Home/End,
// Enter, type-ahead; F2 renames, Delete deletes, Shift+F10 lists actions).
// Files and folders go in by drag and drop or the upload buttons (folders as
// one zip, extracted all or nothing) and out as downloads.

import { zipSync } from 'fflate';
import { api, openSocket, paths } from './api.js';
import { icon } from './icons.js';
import { $, h, confirmDialog, dialog, promptDialog, showError, toast, saveBlob, fmtBytes } from './ui.js';

const parentOf = (p) => (p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '');
const baseName = (p) => p.slice(p.lastIndexOf('/') + 1);
const join = (dir, name) => (dir ? `${dir}/${name}` : name);
// A zip upload bigger than this is refused here, before it is read into memory.
const MAX_UPLOAD_BYTES = 512 * 1024 * 1024;

export class FileTree {
  constructor({ onOpen, onChange }) {
    this.onOpen = onOpen; // (path) => void
    this.onChange = onChange || (() => {}); // (event) => void, every watch event
    this.project = null;
    this.children = new Map(); // dir -> entries
    this.expanded = new Set(['']);
    this.selected = null; // path
    this.focusPath = null; // the one row in the Tab order
    this.openPath = null;
    this.ws = null;
    this.wsTimer = null;
    this.reloadDirs = new Set();
    this.reloadTimer = null;
    this.failures = 0;
    this.events = 0; // watch events received (the tests wait on it)
    this.typed = '';
    this.typedAt = 0;
    $('file-new').addEventListener('click', () => this.createFile());
    $('dir-new').addEventListener('click', () => this.createDir());
    $('files-refresh').addEventListener('click', () => this.refreshAll());
    $('files-upload').addEventListener('click', () => $('upload-files').click());
    $('folder-upload').addEventListener('click', () => $('upload-folder').click());
    $('project-download').addEventListener('click', () => this.downloadProject());
    $('upload-files').addEventListener('change', (ev) => this.fromInput(ev.target));
    $('upload-folder').addEventListener('change', (ev) => this.fromInput(ev.target));
    const root = $('tree');
    root.addEventListener('keydown', (ev) => this.onKey(ev));
    root.addEventListener('focusin', (ev) => {
      const row = ev.target.closest('[role="treeitem"]');
      if (row) this.focusPath = row.dataset.path;
    });
    this.setupDrop($('files-panel'));
  }

  setProject(project) {
    if (project === this.project) return;
    this.closeWatch();
    this.project = project;
    this.children.clear();
    this.expanded = new Set(['']);
    this.selected = null;
    this.focusPath = null;
    this.openPath = null;
    for (const id of ['file-new', 'dir-new', 'files-refresh', 'files-upload', 'folder-upload', 'project-download']) $(id).disabled = !project;
    this.render();
    if (project) {
      this.openWatch();
      this.load('');
    }
  }

  async load(dir) {
    const project = this.project;
    try {
      const res = await api.list(project, dir, 1);
      if (project !== this.project) return;
      const seen = new Set();
      const entries = [];
      for (const e of res.entries || []) {
        // Entries name their path from the project root; keep only direct children.
        let p = (e.path || '').replace(/^\/+/, '').replace(/\/+$/, '');
        if (dir && !p.startsWith(dir + '/')) p = join(dir, baseName(p));
        if (!p || p === dir || parentOf(p) !== dir || seen.has(p)) continue;
        seen.add(p);
        entries.push({ ...e, path: p, name: baseName(p) });
      }
      entries.sort((a, b) => ((a.kind === 'dir') !== (b.kind === 'dir') ? (a.kind === 'dir' ? -1 : 1) : a.name.localeCompare(b.name)));
      this.children.set(dir, entries);
      // Forget expanded subdirectories that no longer exist.
      for (const d of [...this.expanded]) {
        if (d && parentOf(d) === dir && !entries.find((e) => e.path === d)) this.forget(d);
      }
    } catch (err) {
      if (project !== this.project) return;
      if (err.status === 404 || err.code === 'not_a_directory') this.forget(dir);
      else if (err.code !== 'project_not_active' && err.status !== 401) showError(`Could not list ${dir || '/'}`, err);
    }
    this.render();
  }

  forget(dir) {
    for (const d of [...this.children.keys()]) {
      if (d === dir || d.startsWith(dir + '/')) this.children.delete(d);
    }
    for (const d of [...this.expanded]) {
      if (d && (d === dir || d.startsWith(dir + '/'))) this.expanded.delete(d);
    }
  }

  refreshAll() {
    for (const d of this.expanded) this.load(d);
  }

  scheduleReload(dir) {
    if (!this.children.has(dir)) return;
    this.reloadDirs.add(dir);
    clearTimeout(this.reloadTimer);
    // Coalesce a burst (npm install writes thousands of files) into one listing per dir.
    this.reloadTimer = setTimeout(() => {
      const dirs = [...this.reloadDirs];
      this.reloadDirs.clear();
      for (const d of dirs) if (this.children.has(d)) this.load(d);
    }, 120);
  }

  openWatch() {
    const project = this.project;
    const ws = openSocket(`${paths.project(project)}/watch`);
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      // Anything could have changed while we were not watching.
      if (this.failures > 0) this.refreshAll();
      this.failures = 0;
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== 'string') return;
      let e;
      try {
        e = JSON.parse(ev.data);
      } catch {
        return;
      }
      const p = String(e.path || '').replace(/^\/+/, '');
      if (!p) return;
      this.events++;
      this.scheduleReload(parentOf(p));
      const to = e.to ? String(e.to).replace(/^\/+/, '') : undefined;
      if (to) this.scheduleReload(parentOf(to));
      if (e.kind === 'removed' || e.kind === 'renamed') {
        if (this.children.has(p)) this.forget(p);
      }
      this.onChange({ kind: e.kind, path: p, to });
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (project !== this.project) return;
      if (!opened) this.failures++;
      else this.failures = Math.max(this.failures, 1);
      const delay = Math.min(4000, 250 * 2 ** Math.min(this.failures, 4));
      this.wsTimer = setTimeout(() => {
        if (project === this.project && !this.ws) this.openWatch();
      }, delay);
    };
  }

  closeWatch() {
    clearTimeout(this.wsTimer);
    clearTimeout(this.reloadTimer);
    this.reloadDirs.clear();
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, 'project closed');
  }

  targetDir() {
    if (!this.selected) return '';
    const e = this.entry(this.selected);
    if (e && e.kind === 'dir') return e.path;
    return parentOf(this.selected);
  }

  entry(path) {
    const list = this.children.get(parentOf(path));
    return list ? list.find((e) => e.path === path) : null;
  }

  async createFile() {
    const dir = this.targetDir();
    const name = await promptDialog('New file', `File name (in /${dir})`, '', 'Create');
    if (!name) return;
    const path = join(dir, name.replace(/^\/+/, ''));
    try {
      await api.writeFile(this.project, path, new Uint8Array(), { ifNoneMatch: '*' });
      this.expandTo(parentOf(path));
      this.selected = path;
      this.focusPath = path;
      await this.load(parentOf(path));
      this.onOpen(path);
    } catch (err) {
      showError(err.status === 412 ? `${path} already exists` : `Could not create ${path}`, err);
    }
  }

  async createDir() {
    const dir = this.targetDir();
    const name = await promptDialog('New folder', `Folder name (in /${dir})`, '', 'Create');
    if (!name) return;
    const path = join(dir, name.replace(/^\/+|\/+$/g, ''));
    try {
      await api.mkdir(this.project, path);
      this.expandTo(path);
      await this.load(parentOf(path));
      await this.load(path);
    } catch (err) {
      showError(`Could not create ${path}`, err);
    }
  }

  expandTo(dir) {
    let d = dir;
    while (d) {
      this.expanded.add(d);
      d = parentOf(d);
    }
  }

  async rename(e) {
    const to = await promptDialog(`Rename ${e.name}`, 'New path from the project root', e.path, 'Rename');
    if (!to || to === e.path) return;
    try {
      const dest = to.replace(/^\/+/, '');
      await api.move(this.project, e.path, dest);
      this.selected = dest;
      this.focusPath = dest;
      this.scheduleReload(parentOf(e.path));
      this.scheduleReload(parentOf(dest));
      toast(`Renamed to ${dest}`);
    } catch (err) {
      showError(`Could not rename ${e.path}`, err);
    }
  }

  async remove(e) {
    const dir = e.kind === 'dir';
    const ok = await confirmDialog(`Delete ${e.name}?`, dir ? `The folder ${e.path} and everything in it will be deleted.` : `${e.path} will be deleted.`);
    if (!ok) return;
    try {
      await api.remove(this.project, e.path, dir);
      if (this.selected === e.path) this.selected = null;
      if (this.focusPath === e.path) this.focusPath = this.neighbour(e.path);
      this.scheduleReload(parentOf(e.path));
    } catch (err) {
      showError(`Could not delete ${e.path}`, err);
    }
  }

  /** The row to focus when `path` goes away: the next one, else the previous. */
  neighbour(path) {
    const rows = this.visible();
    const i = rows.findIndex((r) => r.path === path);
    if (i < 0) return null;
    return (rows[i + 1] || rows[i - 1] || {}).path || null;
  }

  async activate(e) {
    this.selected = e.path;
    this.focusPath = e.path;
    if (e.kind === 'dir') {
      if (this.expanded.has(e.path)) {
        this.expanded.delete(e.path);
        this.render();
      } else {
        this.expanded.add(e.path);
        this.render();
        await this.load(e.path);
      }
    } else {
      this.render();
      this.onOpen(e.path);
    }
  }

  setOpenPath(path) {
    this.openPath = path;
    if (path) {
      this.expandTo(parentOf(path));
      for (const d of this.expanded) if (!this.children.has(d) && this.project) this.load(d);
    }
    this.render();
  }

  // --- keyboard (WAI-ARIA tree pattern) ---------------------------------------

  /** The rows as shown, in order. */
  visible() {
    const out = [];
    const walk = (dir) => {
      for (const e of this.children.get(dir) || []) {
        out.push(e);
        if (e.kind === 'dir' && this.expanded.has(e.path)) walk(e.path);
      }
    };
    walk('');
    return out;
  }

  focusRow(path) {
    if (!path) return;
    this.focusPath = path;
    this.render();
    const row = $('tree').querySelector(`[role="treeitem"][data-path="${CSS.escape(path)}"]`);
    if (row) {
      row.focus();
      row.scrollIntoView({ block: 'nearest' });
    }
  }

  async onKey(ev) {
    const row = ev.target.closest('[role="treeitem"]');
    if (!row || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const rows = this.visible();
    const i = rows.findIndex((r) => r.path === row.dataset.path);
    if (i < 0) return;
    const e = rows[i];
    const isDir = e.kind === 'dir';
    const open = isDir && this.expanded.has(e.path);
    let handled = true;
    switch (ev.key) {
      case 'ArrowDown':
        if (rows[i + 1]) this.focusRow(rows[i + 1].path);
        break;
      case 'ArrowUp':
        if (rows[i - 1]) this.focusRow(rows[i - 1].path);
        break;
      case 'Home':
        this.focusRow(rows[0].path);
        break;
      case 'End':
        this.focusRow(rows[rows.length - 1].path);
        break;
      case 'ArrowRight':
        if (isDir && !open) {
          this.expanded.add(e.path);
          this.render();
          await this.load(e.path);
          this.focusRow(e.path);
        } else if (isDir && open) {
          const first = (this.children.get(e.path) || [])[0];
          if (first) this.focusRow(first.path);
        }
        break;
      case 'ArrowLeft':
        if (open) {
          this.expanded.delete(e.path);
          this.focusRow(e.path);
        } else if (parentOf(e.path)) this.focusRow(parentOf(e.path));
        break;
      case 'Enter':
      case ' ':
        await this.activate(e);
        this.focusRow(e.path);
        break;
      case 'F2':
        this.rename(e);
        break;
      case 'Delete':
        this.remove(e);
        break;
      case 'ContextMenu':
        this.actionsMenu(e);
        break;
      case 'F10':
        if (ev.shiftKey) this.actionsMenu(e);
        else handled = false;
        break;
      default:
        // Type-ahead: focus the next row whose name starts with what was typed.
        if (ev.key.length === 1 && /\S/.test(ev.key)) {
          const now = Date.now();
          this.typed = now - this.typedAt > 700 ? ev.key.toLowerCase() : this.typed + ev.key.toLowerCase();
          this.typedAt = now;
          const order = [...rows.slice(i + (this.typed.length === 1 ? 1 : 0)), ...rows.slice(0, i + 1)];
          const hit = order.find((r) => r.name.toLowerCase().startsWith(this.typed));
          if (hit) this.focusRow(hit.path);
        } else handled = false;
    }
    if (handled) ev.preventDefault();
  }

  /** The row's actions in a dialog (Shift+F10 or the context-menu key). */
  async actionsMenu(e) {
    const isDir = e.kind === 'dir';
    const v = await dialog({
      title: e.path,
      body: isDir ? 'Folder' : `File · ${fmtBytes(e.size || 0)}`,
      actions: [
        { label: 'Cancel', value: 'cancel' },
        { label: isDir ? 'Expand or collapse' : 'Open', value: 'open' },
        { label: 'Rename', value: 'rename', aria: `Rename ${e.path}` },
        { label: 'Download', value: 'download', aria: `Download ${e.path}` },
        { label: 'Delete', value: 'delete', kind: 'danger', aria: `Delete ${e.path}` },
      ],
    });
    if (v === 'open') this.activate(e);
    else if (v === 'rename') this.rename(e);
    else if (v === 'download') this.download(e);
    else if (v === 'delete') this.remove(e);
    this.focusRow(e.path);
  }

  // --- downloads ---------------------------------------------------------------

  async download(e) {
    try {
      if (e.kind === 'dir') await this.downloadFolder(e.path);
      else {
        const { bytes } = await api.readFile(this.project, e.path);
        saveBlob(new Blob([bytes]), e.name);
      }
    } catch (err) {
      showError(`Could not download ${e.path}`, err);
    }
  }

  /** A folder as a zip made here: its listing, then its files, four at a time. */
  async downloadFolder(dir) {
    const project = this.project;
    toast(`Preparing ${dir}.zip…`);
    const res = await api.list(project, dir, 64);
    const files = (res.entries || []).filter((x) => x.kind === 'file');
    const out = {};
    const prefix = parentOf(dir);
    let next = 0;
    const worker = async () => {
      while (next < files.length) {
        const f = files[next++];
        const p = f.path.replace(/^\/+/, '');
        const { bytes } = await api.readFile(project, p);
        out[prefix ? p.slice(prefix.length + 1) : p] = [bytes, { mtime: new Date(f.mtime || Date.now()) }];
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    // Empty folders too, so that the zip is the folder as it is.
    for (const x of res.entries || []) {
      if (x.kind !== 'dir') continue;
      const p = x.path.replace(/^\/+/, '');
      out[(prefix ? p.slice(prefix.length + 1) : p) + '/'] = new Uint8Array();
    }
    if (!Object.keys(out).length) out[baseName(dir) + '/'] = new Uint8Array();
    saveBlob(new Blob([zipSync(out, { level: 6 })], { type: 'application/zip' }), `${baseName(dir)}.zip`);
  }

  async downloadProject() {
    const project = this.project;
    if (!project) return;
    try {
      toast(`Preparing ${project}.zip…`);
      saveBlob(await api.downloadArchive(project), `${project}.zip`);
    } catch (err) {
      showError(`Could not download ${project}`, err);
    }
  }

  // --- uploads -----------------------------------------------------------------

  fromInput(input) {
    const files = [...(input.files || [])].map((f) => ({ path: f.webkitRelativePath || f.name, file: f }));
    input.value = '';
    if (files.length) this.upload(this.targetDir(), files);
  }

  setupDrop(zone) {
    let depth = 0;
    const over = (on) => zone.classList.toggle('drop', on);
    zone.addEventListener('dragenter', (ev) => {
      if (!this.project || !ev.dataTransfer || ![...ev.dataTransfer.types].includes('Files')) return;
      depth++;
      over(true);
    });
    zone.addEventListener('dragleave', () => {
      depth = Math.max(0, depth - 1);
      if (!depth) over(false);
    });
    zone.addEventListener('dragover', (ev) => {
      if (!this.project) return;
      ev.preventDefault();
      ev.dataTransfer.dropEffect = 'copy';
    });
    zone.addEventListener('drop', async (ev) => {
      ev.preventDefault();
      depth = 0;
      over(false);
      if (!this.project) return;
      // Dropped on a row: into that folder (or the file's folder).
      const row = ev.target.closest && ev.target.closest('[role="treeitem"]');
      const dir = row ? (row.dataset.kind === 'dir' ? row.dataset.path : parentOf(row.dataset.path)) : '';
      const entries = [...ev.dataTransfer.items].map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
      let files;
      if (entries.some(Boolean)) files = (await Promise.all(entries.filter(Boolean).map((e) => walkEntry(e, '')))).flat();
      else files = [...ev.dataTransfer.files].map((f) => ({ path: f.name, file: f }));
      if (files.length) this.upload(dir, files);
    });
  }

  /**
   * Uploads files (`[{path, file}]`, paths relative to `dir`). Loose files
   * are written one by one; anything in a folder goes as one zip, which the
   * gateway extracts all or nothing. Names that exist are replaced only
   * after the person agreed.
   */
  async upload(dir, files) {
    const project = this.project;
    const total = files.reduce((n, f) => n + f.file.size, 0);
    if (total > MAX_UPLOAD_BYTES) {
      toast(`That is ${fmtBytes(total)}; the page uploads at most ${fmtBytes(MAX_UPLOAD_BYTES)} at once`, 'error');
      return;
    }
    const tops = [...new Set(files.map((f) => f.path.split('/')[0]))];
    let existing;
    try {
      existing = new Set(((await api.list(project, dir, 1)).entries || []).map((e) => baseName(e.path.replace(/\/+$/, ''))));
    } catch (err) {
      showError(`Could not upload into /${dir}`, err);
      return;
    }
    const clash = tops.filter((t) => existing.has(t));
    if (clash.length) {
      const ok = await confirmDialog(
        'Replace existing files?',
        `${clash.slice(0, 5).join(', ')}${clash.length > 5 ? ` and ${clash.length - 5} more` : ''} already exist${clash.length === 1 ? 's' : ''} in /${dir}. Upload and replace?`,
        'Replace',
      );
      if (!ok) return;
    }
    const where = dir ? `/${dir}` : 'the project';
    try {
      if (files.some((f) => f.path.includes('/'))) {
        const entries = {};
        for (const f of files) entries[join(dir, f.path)] = [new Uint8Array(await f.file.arrayBuffer()), { mtime: new Date(f.file.lastModified || Date.now()) }];
        const zip = zipSync(entries, { level: 1 });
        toast(`Uploading ${files.length} files (${fmtBytes(total)}) into ${where}…`);
        const r = await api.uploadArchive(project, zip);
        toast(`Uploaded ${r && r.files !== undefined ? r.files : files.length} files into ${where}`, 'ok');
      } else {
        for (const f of files) {
          await api.writeFile(project, join(dir, f.path), new Uint8Array(await f.file.arrayBuffer()));
        }
        toast(`Uploaded ${files.length === 1 ? files[0].path : `${files.length} files`} into ${where}`, 'ok');
      }
    } catch (err) {
      showError('Upload failed (nothing of a failed folder upload was written)', err);
    }
    if (project !== this.project) return;
    this.expandTo(dir);
    await this.load(dir);
  }

  // --- rendering ---------------------------------------------------------------

  render() {
    const root = $('tree');
    const hadFocus = root.contains(document.activeElement) && document.activeElement.getAttribute('role') === 'treeitem';
    // A tree needs items: with none, the element is a plain message.
    const asTree = (on) => {
      if (on) {
        root.setAttribute('role', 'tree');
        root.setAttribute('aria-label', 'Project files');
      } else {
        root.removeAttribute('role');
        root.removeAttribute('aria-label');
      }
    };
    if (!this.project) {
      asTree(false);
      root.replaceChildren(h('div', { class: 'empty' }, 'Open a project to see its files.'));
      return;
    }
    const rows = this.visible();
    if (!rows.find((r) => r.path === this.focusPath)) this.focusPath = (rows.find((r) => r.path === this.selected) || rows[0] || {}).path || null;
    const out = [];
    const walk = (dir, level) => {
      const list = this.children.get(dir);
      if (!list) {
        if (this.expanded.has(dir)) out.push(h('div', { class: 'row muted', role: dir ? 'none' : null, style: `--level:${level}` }, 'loading…'));
        return;
      }
      if (list.length === 0 && dir === '') out.push(h('div', { class: 'empty' }, 'Empty project. Drop files here to upload them.'));
      list.forEach((e, idx) => {
        const isDir = e.kind === 'dir';
        const open = isDir && this.expanded.has(e.path);
        out.push(
          h(
            'div',
            {
              class: 'row' + (this.selected === e.path ? ' selected' : '') + (this.openPath === e.path ? ' open' : ''),
              style: `--level:${level}`,
              role: 'treeitem',
              tabindex: e.path === this.focusPath ? '0' : '-1',
              'aria-level': level + 1,
              'aria-setsize': list.length,
              'aria-posinset': idx + 1,
              'aria-expanded': isDir ? String(open) : null,
              'aria-selected': this.selected === e.path ? 'true' : 'false',
              title: e.path,
              dataset: { path: e.path, kind: e.kind },
              onclick: (ev) => {
                if (ev.target.closest('.mini')) return;
                this.activate(e);
              },
            },
            h('span', { class: 'twisty', 'aria-hidden': 'true' }, isDir ? (open ? '▾' : '▸') : ''),
            h('span', { class: `ico ${isDir ? 'dir' : 'file'}`, 'aria-hidden': 'true' }, isDir ? icon('folder') : fileIcon(e.name)),
            h('span', { class: 'label' }, e.name),
            // Pointer shortcuts; from the keyboard: F2, Delete, Shift+F10.
            // Out of the accessibility tree (the row's name is the file name);
            // the keyboard has F2, Delete and Shift+F10 for these.
            h(
              'span',
              { class: 'row-actions', 'aria-hidden': 'true' },
              h('button', { type: 'button', class: 'mini', tabindex: '-1', 'aria-label': `Download ${e.path}`, title: 'Download', onclick: () => this.download(e) }, icon('download')),
              h('button', { type: 'button', class: 'mini', tabindex: '-1', 'aria-label': `Rename ${e.path}`, title: 'Rename (F2)', onclick: () => this.rename(e) }, icon('pencil')),
              h('button', { type: 'button', class: 'mini', tabindex: '-1', 'aria-label': `Delete ${e.path}`, title: 'Delete (Del)', onclick: () => this.remove(e) }, icon('trash')),
            ),
          ),
        );
        if (open) walk(e.path, level + 1);
      });
    };
    walk('', 0);
    asTree(rows.length > 0);
    root.replaceChildren(...out);
    if (hadFocus && this.focusPath) root.querySelector(`[role="treeitem"][data-path="${CSS.escape(this.focusPath)}"]`)?.focus();
  }
}

/** The files under a dropped file-system entry, with paths from the drop. */
async function walkEntry(entry, prefix) {
  const path = prefix ? `${prefix}/${entry.name}` : entry.name;
  if (entry.isFile) {
    const file = await new Promise((res, rej) => entry.file(res, rej));
    return [{ path, file }];
  }
  if (!entry.isDirectory) return [];
  const reader = entry.createReader();
  const all = [];
  // readEntries answers in batches until an empty one.
  for (;;) {
    const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
    if (!batch.length) break;
    all.push(...batch);
  }
  const nested = await Promise.all(all.map((e) => walkEntry(e, path)));
  return nested.flat();
}

/** A short coloured tag for the file's type (the editor's language modes). */
function fileIcon(name) {
  const ext = name.includes('.') ? name.split('.').pop().toLowerCase() : '';
  const tag = (text, cls) => h('span', { class: `ftag ${cls}` }, text);
  if (['js', 'mjs', 'cjs', 'jsx'].includes(ext)) return tag('JS', 'js');
  if (['ts', 'tsx', 'mts', 'cts'].includes(ext)) return tag('TS', 'ts');
  if (ext === 'json') return tag('{}', 'json');
  if (['css', 'scss', 'less'].includes(ext)) return tag('#', 'css');
  if (['html', 'htm'].includes(ext)) return tag('<>', 'html');
  if (ext === 'md') return tag('MD', 'md');
  if (ext === 'py') return tag('PY', 'py');
  if (['png', 'jpg', 'jpeg', 'gif', 'webp', 'svg', 'ico', 'bmp', 'avif'].includes(ext)) return icon('image');
  return icon('file');
}
