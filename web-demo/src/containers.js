// Containers (dev servers): add from a bundled template, start, stop, remove,
// follow the logs (a streaming fetch of `/logs?follow=true`), and show the
// preview in an iframe through the contract's cookie flow: the iframe first
// opens `/__preview/auth?token=` on the preview host, which sets an HttpOnly
// cookie for that host and redirects to `/`.

import { api, getToken } from './api.js';
import { $, h, dialog, showError, toast } from './ui.js';
import { icon } from './icons.js';

const MAX_LOG_CHARS = 200_000;
// A dev server's "I am listening" line (Vite, Next.js, most others).
const READY_RE = /ready in|Local:\s|listening on|started server on|compiled successfully/i;

export class Containers {
  constructor({ onChange }) {
    this.onChange = onChange || (() => {}); // (containers) => void
    this.project = null;
    this.list = [];
    this.selected = null; // container name
    this.templates = null;
    this.logAbort = null;
    this.logsOf = null;
    this.previewKey = null; // `${project}/${name}` currently in the iframe
    this.readyTimer = null;
    this.pollTimer = null;
    this.busy = new Set();
    $('container-add').addEventListener('click', () => this.add());
    $('preview-reload').addEventListener('click', () => this.reloadPreview());
  }

  setProject(project, containers) {
    if (project !== this.project) {
      this.project = project;
      this.selected = null;
      this.stopLogs();
      this.setPreview(null);
    }
    $('container-add').disabled = !project;
    this.update(containers || []);
  }

  update(list) {
    this.list = list;
    if (this.selected && !list.find((c) => c.name === this.selected)) this.selected = null;
    if (!this.selected && list.length) this.selected = (list.find((c) => c.status === 'running') || list[0]).name;
    this.render();
    this.syncSelected();
    this.onChange(list);
    // A container on its way somewhere: look again soon (the events stream
    // also triggers refreshes; this covers a gateway that reports less).
    clearTimeout(this.pollTimer);
    if (list.some((c) => c.status === 'starting' || c.status === 'pending')) {
      this.pollTimer = setTimeout(() => this.refresh(), 1000);
    }
  }

  async refresh() {
    const project = this.project;
    if (!project) return;
    try {
      const list = await api.listContainers(project);
      if (project === this.project) this.update(list || []);
    } catch (err) {
      if (err.code !== 'project_not_active' && project === this.project) showError('Could not list containers', err);
    }
  }

  current() {
    return this.list.find((c) => c.name === this.selected) || null;
  }

  select(name) {
    this.selected = name;
    this.render();
    this.syncSelected();
  }

  /** Logs and preview follow the selected container. */
  syncSelected() {
    const c = this.current();
    if (!c) {
      this.stopLogs();
      this.setPreview(null);
      return;
    }
    if (this.logsOf !== c.name) this.followLogs(c.name);
    if (c.status === 'running') {
      const key = `${this.project}/${c.name}`;
      if (this.previewKey !== key) this.previewWhenReady(c);
    } else {
      this.setPreview(null, c.status === 'stopped' ? `${c.name} is stopped. Start it to see the preview.` : `${c.name} is ${c.status}…`);
    }
  }

  previewRoot(c) {
    if (c.preview_url) return new URL('/', c.preview_url).toString();
    // The contract's default: {container}.{project}.localhost on the gateway's port.
    const port = window.location.port ? `:${window.location.port}` : '';
    return `${window.location.protocol}//${c.name}.${this.project}.localhost${port}/`;
  }

  authUrl(c) {
    const u = new URL('/__preview/auth', this.previewRoot(c));
    u.searchParams.set('token', getToken());
    return u.toString();
  }

  /** Loads the preview once the dev server says it listens (from its log), or
   * after a few seconds at the latest. */
  previewWhenReady(c) {
    const key = `${this.project}/${c.name}`;
    this.setPreview(null, `Waiting for ${c.name} to listen…`);
    this.previewKey = key;
    const go = () => {
      clearTimeout(this.readyTimer);
      this.readyTimer = null;
      const now = this.current();
      if (this.previewKey === key && now && now.name === c.name && now.status === 'running') this.setPreview(now);
    };
    this.pendingReady = go;
    if (READY_RE.test($('logs').textContent)) go();
    else this.readyTimer = setTimeout(go, 8000);
  }

  setPreview(c, message) {
    const frame = $('preview-frame');
    const empty = $('preview-empty');
    const open = $('preview-open');
    if (!c) {
      this.previewKey = null;
      this.pendingReady = null;
      clearTimeout(this.readyTimer);
      frame.hidden = true;
      // Navigate away (not just hide): the dev server's client in there would
      // otherwise keep polling a server that is going away.
      if (frame.getAttribute('src') && frame.getAttribute('src') !== 'about:blank') frame.src = 'about:blank';
      frame.dataset.container = '';
      empty.hidden = false;
      empty.textContent = message || 'Start a container to see its preview.';
      $('preview-url').textContent = '';
      $('preview-reload').disabled = true;
      open.hidden = true;
      return;
    }
    this.previewKey = `${this.project}/${c.name}`;
    this.pendingReady = null;
    const root = this.previewRoot(c);
    $('preview-url').textContent = root;
    $('preview-reload').disabled = false;
    open.hidden = false;
    open.href = this.authUrl(c);
    empty.hidden = true;
    frame.hidden = false;
    frame.dataset.container = c.name;
    frame.src = this.authUrl(c);
  }

  reloadPreview() {
    const c = this.current();
    if (c && c.status === 'running') this.setPreview(c);
  }

  stopLogs() {
    if (this.logAbort) this.logAbort.abort();
    this.logAbort = null;
    this.logsOf = null;
    $('logs').textContent = '';
    $('logs-of').textContent = '';
  }

  async followLogs(name) {
    this.stopLogs();
    const project = this.project;
    const ctrl = new AbortController();
    this.logAbort = ctrl;
    this.logsOf = name;
    $('logs-of').textContent = name;
    const pre = $('logs');
    let attempt = 0;
    // The stream ends when the dev server stops; follow again when it restarts.
    while (!ctrl.signal.aborted) {
      try {
        const res = await api.followLogs(project, name, ctrl.signal);
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        pre.textContent = '';
        attempt = 0;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          this.appendLog(pre, value);
        }
      } catch (err) {
        if (ctrl.signal.aborted) return;
        if (err.code && err.code !== 'project_not_active' && err.status !== 404 && attempt === 0) {
          this.appendLog(pre, `\n[logs unavailable: ${err.message}]\n`);
        }
      }
      if (ctrl.signal.aborted) return;
      attempt++;
      await new Promise((r) => setTimeout(r, Math.min(5000, 500 * attempt)));
    }
  }

  appendLog(pre, text) {
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    let all = pre.textContent + text;
    if (all.length > MAX_LOG_CHARS) all = all.slice(all.length - MAX_LOG_CHARS);
    pre.textContent = all;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
    if (this.pendingReady && READY_RE.test(text)) this.pendingReady();
  }

  async loadTemplates() {
    if (this.templates) return this.templates;
    try {
      this.templates = (await api.templates()) || [];
    } catch (err) {
      showError('Could not list templates', err);
      this.templates = [];
    }
    return this.templates;
  }

  async add() {
    const project = this.project;
    if (!project) return;
    const templates = await this.loadTemplates();
    const used = new Set(this.list.map((c) => c.port));
    let port = 5173;
    while (used.has(port)) port++;
    const defaultName = this.list.find((c) => c.name === 'web') ? `web${this.list.length + 1}` : 'web';
    const field = (id, label, value, attrs = {}) =>
      h('label', { class: 'field' }, h('span', {}, label), h('input', { id, name: id, value, 'aria-label': label, autocomplete: 'off', spellcheck: 'false', ...attrs }));
    const tplSelect = h(
      'select',
      { id: 'c-template', 'aria-label': 'Template' },
      h('option', { value: '' }, '(none: empty folder)'),
      ...templates.map((t, i) => h('option', { value: String(i), selected: i === 0 }, t.name)),
    );
    const body = h(
      'div',
      { class: 'form-grid' },
      field('c-name', 'Name', defaultName, { pattern: '[a-z]([a-z0-9\\-]{0,38}[a-z0-9])?', required: true }),
      h('label', { class: 'field' }, h('span', {}, 'Template'), tplSelect),
      field('c-port', 'Port', String(port), { type: 'number', min: 1, max: 65535 }),
      field('c-install', 'Install command', 'npm install'),
      field('c-start', 'Start command', 'npm run dev'),
    );
    const v = await dialog({
      title: 'Add a container',
      body,
      actions: [
        { label: 'Cancel', value: 'cancel' },
        { label: 'Add', value: 'add', kind: 'primary', aria: 'Add the container' },
      ],
    });
    if (v !== 'add') return;
    const name = body.querySelector('#c-name').value.trim();
    const spec = {
      name,
      port: Number(body.querySelector('#c-port').value),
      start: body.querySelector('#c-start').value.trim(),
    };
    const install = body.querySelector('#c-install').value.trim();
    if (install) spec.install = install;
    const t = templates[Number(tplSelect.value)];
    if (tplSelect.value !== '' && t) spec.template = t.ref ? { git: t.git, ref: t.ref } : { git: t.git };
    this.busy.add(name);
    this.render();
    toast(`Adding ${name}…`);
    try {
      await api.addContainer(project, spec);
      this.selected = name;
      toast(`Added ${name}`);
    } catch (err) {
      showError(`Could not add ${name}`, err);
    } finally {
      this.busy.delete(name);
      await this.refresh();
    }
  }

  async act(c, what) {
    const project = this.project;
    this.busy.add(c.name);
    this.render();
    try {
      if (what === 'start') {
        const res = await api.startContainer(project, c.name);
        this.selected = c.name;
        // Fresh logs for the fresh run (the stream of the last run has ended).
        if (res) this.logsOf = null;
      } else if (what === 'stop') {
        if (this.selected === c.name) this.setPreview(null, `Stopping ${c.name}…`);
        await api.stopContainer(project, c.name);
      } else if (what === 'delete') {
        const v = await dialog({
          title: `Remove ${c.name}?`,
          body: `The container ${c.name} will be removed. Its files in /${c.name}/ can stay or go.`,
          actions: [
            { label: 'Cancel', value: 'cancel' },
            { label: 'Remove, delete files', value: 'files', kind: 'danger' },
            { label: 'Remove, keep files', value: 'keep', kind: 'primary' },
          ],
        });
        if (!v) return;
        if (this.selected === c.name) this.setPreview(null);
        await api.deleteContainer(project, c.name, v === 'files');
      }
    } catch (err) {
      showError(`Could not ${what} ${c.name}`, err);
    } finally {
      this.busy.delete(c.name);
      if (project === this.project) await this.refresh();
    }
  }

  render() {
    const ul = $('container-list');
    if (!this.project) {
      ul.replaceChildren(h('li', { class: 'empty' }, 'Open a project to manage its containers.'));
      return;
    }
    // Containers being added: the clone and install run inside the request.
    const adding = [...this.busy].filter((n) => !this.list.find((c) => c.name === n));
    const pending = adding.map((n) =>
      h(
        'li',
        { class: 'container', dataset: { name: n, status: 'adding' } },
        h('div', { class: 'name' }, h('span', { class: 'dot starting', 'aria-hidden': 'true' }), h('strong', {}, n), h('span', { class: 'meta' }, 'cloning the template, installing…')),
        h('div', { class: 'progress', role: 'status', 'aria-label': `Adding ${n}` }, h('div', { class: 'bar', 'aria-hidden': 'true' }, h('div', { class: 'fill' }))),
      ),
    );
    if (this.list.length === 0 && pending.length === 0) {
      ul.replaceChildren(h('li', { class: 'empty' }, 'No containers yet. Add one from a template with the + button.'));
      return;
    }
    ul.replaceChildren(
      ...pending,
      ...this.list.map((c) => {
        const busy = this.busy.has(c.name);
        const running = c.status === 'running';
        return h(
          'li',
          { class: 'container' + (c.name === this.selected ? ' selected' : ''), dataset: { name: c.name, status: c.status } },
          h(
            'button',
            { class: 'name', 'aria-label': `Select container ${c.name}`, 'aria-pressed': String(c.name === this.selected), onclick: () => this.select(c.name) },
            h('span', { class: `dot ${c.status}`, 'aria-hidden': 'true' }),
            h('strong', {}, c.name),
            h('span', { class: 'meta' }, `:${c.port} · ${c.status}`),
          ),
          h(
            'div',
            { class: 'actions' },
            running
              ? h('button', { disabled: busy, 'aria-label': `Stop container ${c.name}`, onclick: () => this.act(c, 'stop') }, 'Stop')
              : h('button', { class: 'primary', disabled: busy || c.status === 'starting', 'aria-label': `Start container ${c.name}`, onclick: () => this.act(c, 'start') }, busy ? '…' : 'Start'),
            h('button', { class: 'icon', disabled: busy, 'aria-label': `Remove container ${c.name}`, title: 'Remove', onclick: () => this.act(c, 'delete') }, icon('trash')),
          ),
        );
      }),
    );
  }
}
