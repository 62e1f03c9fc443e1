// The file tree, kept live by the watch WebSocket: a change reported anywhere
// in the project (an API write, a shell command, a dev server) re-lists the
// directories it touches, so what is shown is always what the listing says.

import { api, wsUrl, paths } from './api.js';
import { icon } from './icons.js';
import { $, h, confirmDialog, promptDialog, showError, toast } from './ui.js';

const parentOf = (p) => (p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '');
const baseName = (p) => p.slice(p.lastIndexOf('/') + 1);
const join = (dir, name) => (dir ? `${dir}/${name}` : name);

export class FileTree {
  constructor({ onOpen, onChange }) {
    this.onOpen = onOpen; // (path) => void
    this.onChange = onChange || (() => {}); // (event) => void, every watch event
    this.project = null;
    this.children = new Map(); // dir -> entries
    this.expanded = new Set(['']);
    this.selected = null; // path
    this.openPath = null;
    this.ws = null;
    this.wsTimer = null;
    this.reloadDirs = new Set();
    this.reloadTimer = null;
    this.failures = 0;
    $('file-new').addEventListener('click', () => this.createFile());
    $('dir-new').addEventListener('click', () => this.createDir());
    $('files-refresh').addEventListener('click', () => this.refreshAll());
  }

  setProject(project) {
    if (project === this.project) return;
    this.closeWatch();
    this.project = project;
    this.children.clear();
    this.expanded = new Set(['']);
    this.selected = null;
    this.openPath = null;
    for (const id of ['file-new', 'dir-new', 'files-refresh']) $(id).disabled = !project;
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
      entries.sort((a, b) => (a.kind === 'dir') !== (b.kind === 'dir') ? (a.kind === 'dir' ? -1 : 1) : a.name.localeCompare(b.name));
      this.children.set(dir, entries);
      // Forget expanded subdirectories that no longer exist.
      for (const d of [...this.expanded]) {
        if (d && parentOf(d) === dir && !entries.find((e) => e.path === d)) this.forget(d);
      }
    } catch (err) {
      if (project !== this.project) return;
      if (err.status === 404 || err.code === 'not_a_directory') this.forget(dir);
      else if (err.code !== 'project_not_active') showError(`Could not list ${dir || '/'}`, err);
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
    const ws = new WebSocket(wsUrl(`${paths.project(project)}/watch`));
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
      this.scheduleReload(parentOf(p));
      if (e.to) this.scheduleReload(parentOf(String(e.to).replace(/^\/+/, '')));
      if (e.kind === 'removed' || e.kind === 'renamed') {
        if (this.children.has(p)) this.forget(p);
      }
      this.onChange({ kind: e.kind, path: p, to: e.to ? String(e.to).replace(/^\/+/, '') : undefined });
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
      await api.move(this.project, e.path, to.replace(/^\/+/, ''));
      this.selected = to;
      this.scheduleReload(parentOf(e.path));
      this.scheduleReload(parentOf(to));
      toast(`Renamed to ${to}`);
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
      this.scheduleReload(parentOf(e.path));
    } catch (err) {
      showError(`Could not delete ${e.path}`, err);
    }
  }

  async activate(e) {
    this.selected = e.path;
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
    this.render();
  }

  render() {
    const root = $('tree');
    const focusedPath = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.path : null;
    if (!this.project) {
      root.replaceChildren(h('div', { class: 'empty' }, 'Open a project to see its files.'));
      return;
    }
    const rows = [];
    const walk = (dir, level) => {
      const list = this.children.get(dir);
      if (!list) {
        if (this.expanded.has(dir)) rows.push(h('div', { class: 'row muted', style: `--level:${level}` }, 'loading…'));
        return;
      }
      if (list.length === 0 && dir === '') rows.push(h('div', { class: 'empty' }, 'Empty project.'));
      for (const e of list) {
        const isDir = e.kind === 'dir';
        const open = isDir && this.expanded.has(e.path);
        const row = h(
          'div',
          {
            class: 'row' + (this.selected === e.path ? ' selected' : '') + (this.openPath === e.path ? ' open' : ''),
            style: `--level:${level}`,
            role: 'treeitem',
            'aria-level': level + 1,
            'aria-expanded': isDir ? String(open) : null,
            'aria-selected': this.selected === e.path ? 'true' : 'false',
          },
          h(
            'button',
            {
              class: 'name',
              'data-path': e.path,
              'data-kind': e.kind,
              'aria-label': `${isDir ? 'Folder' : 'File'} ${e.path}`,
              title: e.path,
              onclick: () => this.activate(e),
              onkeydown: (ev) => {
                if (ev.key === 'Delete') {
                  ev.preventDefault();
                  this.remove(e);
                } else if (ev.key === 'F2') {
                  ev.preventDefault();
                  this.rename(e);
                }
              },
            },
            h('span', { class: 'twisty', 'aria-hidden': 'true' }, isDir ? (open ? '▾' : '▸') : ''),
            h('span', { class: `ico ${isDir ? 'dir' : 'file'}`, 'aria-hidden': 'true' }, isDir ? icon('folder') : fileIcon(e.name)),
            h('span', { class: 'label' }, e.name),
          ),
          h('button', { class: 'mini', 'aria-label': `Rename ${e.path}`, title: 'Rename (F2)', onclick: () => this.rename(e) }, icon('pencil')),
          h('button', { class: 'mini', 'aria-label': `Delete ${e.path}`, title: 'Delete (Del)', onclick: () => this.remove(e) }, icon('trash')),
        );
        rows.push(row);
        if (open) walk(e.path, level + 1);
      }
    };
    walk('', 0);
    root.replaceChildren(...rows);
    if (focusedPath) {
      const again = root.querySelector(`button.name[data-path="${CSS.escape(focusedPath)}"]`);
      if (again) again.focus();
    }
  }
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
  return icon('file');
}
