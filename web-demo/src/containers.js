// Containers (dev servers): add from a bundled template, start, stop,
// restart, reinstall, remove. A row shows the status the API gives, as it is
// (the list is read again whenever the events stream, the end of a log
// stream or a short poll says it may have moved). A failed dev server shows
// its exit code and last log lines, with Restart and Reinstall. The Logs
// pane shows, for the selected container, its clone and install commands
// (from the command log and the events stream, as they finish), a reinstall
// live as it runs, and the dev server's own output (a streaming fetch of
// `/logs?follow=true`). The preview pane follows the selected container.

import { api, openSocket, paths } from './api.js';
import { $, h, dialog, showError, toast, plainText } from './ui.js';
import { icon } from './icons.js';

const MAX_LOG_CHARS = 200_000;
// A dev server's "I am listening" line (Vite, Next.js, most others).
const READY_RE = /ready in|Local:\s|listening on|started server on|compiled successfully|Serving HTTP on/i;
const TAIL_LINES = 12;
// While a container runs, its status is read again this often (a dev server
// that dies by itself becomes `failed` on the next read).
const POLL_MS = 3000;

/** `'it'\''s'`: one word for sh. */
const shq = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

export class Containers {
  /** onChange(list): the list changed. preview: the Preview pane. */
  constructor({ onChange, preview }) {
    this.onChange = onChange || (() => {});
    this.preview = preview;
    this.project = null;
    this.list = [];
    this.selected = null; // container name
    this.templates = null;
    this.logAbort = null;
    this.logsOf = null;
    this.entries = new Map(); // command-log entries of the selected container: key -> {at, text}
    this.cmdLog = ''; // live output (a reinstall) of the selected container
    this.ready = new Set(); // containers whose dev server said it listens (this run)
    this.readyTimer = null;
    this.runLog = ''; // the dev server's output
    this.pollTimer = null;
    this.busy = new Map(); // name -> what is going on ("adding", "starting", "reinstalling", ...)
    this.tails = new Map(); // name -> last log lines of a failed run
    this.waiters = []; // resolved at the next list update
    $('container-add').addEventListener('click', () => this.add());
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) this.refresh();
    });
  }

  /** Points the pane at a project. The project's own container list (from
   * the project object) is used when it changes; after that the container
   * routes are asked, as only they carry exit codes. */
  setProject(project, containers) {
    $('container-add').disabled = !project;
    if (project === this.project) {
      if (project) this.refreshSoon();
      return;
    }
    this.project = project;
    this.selected = null;
    this.busy.clear();
    this.tails.clear();
    this.ready.clear();
    this.stopLogs();
    this.preview.show(null, null);
    this.update(containers || []);
    if (project) this.refreshSoon();
  }

  refreshSoon() {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => this.refresh(), 100);
  }

  /** Resolves when the container's status is no longer `status` (or after `ms`). */
  statusChange(name, status, ms) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      const check = () => {
        const c = this.list.find((x) => x.name === name);
        if (!c || c.status !== status) {
          clearTimeout(t);
          resolve();
        } else this.waiters.push(check);
      };
      this.waiters.push(check);
    });
  }

  /** The dev server said it listens: its preview can load. */
  markReady(name) {
    this.ready.add(name);
    if (this.selected === name) this.syncSelected();
  }

  update(list) {
    this.list = list;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
    if (this.selected && !list.find((c) => c.name === this.selected) && !this.busy.has(this.selected)) this.selected = null;
    if (!this.selected && list.length) this.selected = (list.find((c) => c.status === 'running') || list[0]).name;
    for (const c of list) {
      if (c.status === 'failed' && !this.tails.has(c.name)) this.loadTail(c.name);
      if (c.status !== 'failed') this.tails.delete(c.name);
      // A dev server that is not running is not listening either.
      if (c.status !== 'running') this.ready.delete(c.name);
    }
    this.render();
    this.syncSelected();
    this.onChange(list);
    clearTimeout(this.pollTimer);
    if (this.project && list.some((c) => ['running', 'starting', 'pending'].includes(c.status))) {
      this.pollTimer = setTimeout(() => {
        if (!document.hidden) this.refresh();
      }, POLL_MS);
    }
  }

  async refresh() {
    const project = this.project;
    if (!project) return;
    try {
      const list = await api.listContainers(project);
      if (project === this.project) this.update(list || []);
    } catch (err) {
      if (err.code !== 'project_not_active' && err.status !== 401 && project === this.project) showError('Could not list containers', err);
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
      if (!this.busy.has(this.selected)) this.stopLogs();
      this.preview.show(null, null);
      return;
    }
    if (this.logsOf !== c.name) this.followLogs(c.name);
    if (c.status !== 'running' || this.readyTimerFor !== c.name) {
      clearTimeout(this.readyTimer);
      this.readyTimerFor = null;
    }
    if (c.status === 'running' && this.ready.has(c.name)) this.preview.show(this.project, c);
    else if (c.status === 'running') {
      // Not listening yet (a dev server takes a moment): the preview loads
      // when its output says it is ready, or after 20 s whatever it says.
      if (!this.preview.key) this.preview.show(null, null, `${c.name} is starting; the preview opens when it listens…`);
      else this.preview.show(this.project, c);
      if (this.readyTimerFor !== c.name) {
        const name = c.name;
        this.readyTimerFor = name;
        this.readyTimer = setTimeout(() => {
          this.readyTimerFor = null;
          this.markReady(name);
        }, 20_000);
      }
    } else {
      const msg =
        c.status === 'failed'
          ? `${c.name} failed${exitText(c)}. See its row for the last log lines, or Restart it.`
          : c.status === 'stopped'
            ? `${c.name} is stopped. Start it to see the preview.`
            : `${c.name} is ${c.status}…`;
      this.preview.show(null, null, msg);
    }
  }

  // --- logs ------------------------------------------------------------------

  stopLogs() {
    if (this.logAbort) this.logAbort.abort();
    this.logAbort = null;
    this.logsOf = null;
    this.entries.clear();
    this.cmdLog = '';
    this.runLog = '';
    this.renderLogs();
  }

  /** Adds a command-log entry (from the listing or the events stream; the
   * same entry from both is shown once). */
  addEntry(e) {
    const at = Date.parse(e.ts) || 0;
    const key = `${e.label}|${e.command}|${at}`;
    if (this.entries.has(key)) return;
    this.entries.set(key, { at, text: formatEntry(e) });
  }

  /** Follows a container's output, after its clone/install commands (kept
   * when it is the same container again). */
  async followLogs(name) {
    const same = this.logsOf === name;
    const keep = same ? { entries: new Map(this.entries), live: this.cmdLog } : null;
    this.stopLogs();
    const project = this.project;
    const ctrl = new AbortController();
    this.logAbort = ctrl;
    this.logsOf = name;
    if (keep) {
      this.entries = keep.entries;
      this.cmdLog = keep.live;
    }
    this.loadCommandLog(name);
    let attempt = 0;
    // The stream ends when the dev server stops; follow again when it restarts.
    while (!ctrl.signal.aborted) {
      const c = this.list.find((x) => x.name === name);
      if (!c) {
        // Being added: its commands arrive on the events stream.
        await sleep(1000);
        continue;
      }
      try {
        const res = await api.followLogs(project, name, ctrl.signal);
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        // The stream starts at the beginning of the output each time.
        this.runLog = '';
        this.ready.delete(name);
        attempt = 0;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          this.runLog = trimLog(this.runLog + value);
          if (!this.ready.has(name) && READY_RE.test(plainText(this.runLog))) this.markReady(name);
          this.renderLogs();
        }
        // The output ended: the dev server stopped or died. Its status says which.
        const was = this.list.find((x) => x.name === name);
        if (!ctrl.signal.aborted && was && ['running', 'starting'].includes(was.status)) this.refresh();
      } catch (err) {
        if (ctrl.signal.aborted) return;
        if (err.code && err.code !== 'project_not_active' && err.status !== 404 && err.status !== 401 && attempt === 0) {
          this.runLog += `\n[logs unavailable: ${err.message}]\n`;
          this.renderLogs();
        }
      }
      if (ctrl.signal.aborted) return;
      attempt++;
      // A dev server that is not running has no more output: wait for its
      // status to move (a start, a restart) rather than asking again and again.
      const now = this.list.find((x) => x.name === name);
      if (now && !['running', 'starting', 'pending'].includes(now.status)) await this.statusChange(name, now.status, 60_000);
      await sleep(Math.min(5000, 250 * attempt));
    }
  }

  /** The container's earlier clone and install commands, from the command log. */
  async loadCommandLog(name) {
    const project = this.project;
    let entries;
    try {
      entries = (await api.commandLog(project, 200)) || [];
    } catch {
      return;
    }
    if (project !== this.project || this.logsOf !== name) return;
    for (const e of entries.filter((x) => typeof x.label === 'string' && x.label.startsWith(`${name}: `)).slice(-6)) this.addEntry(e);
    this.renderLogs();
  }

  /** A command-log entry from the events stream (clone, install, exec...). */
  onCommandLog(entry) {
    if (!entry || typeof entry.label !== 'string') return;
    const name = entry.label.split(': ')[0];
    if (this.logsOf !== name && !(this.busy.has(name) && this.selected === name)) return;
    if (this.logsOf !== name) {
      this.logsOf = name;
      this.entries.clear();
      this.cmdLog = '';
    }
    this.addEntry(entry);
    this.renderLogs();
  }

  renderLogs() {
    const pre = $('logs');
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    const cmds = trimLog(
      [...this.entries.values()]
        .sort((a, b) => a.at - b.at)
        .map((e) => e.text)
        .join('') + this.cmdLog,
    );
    const sep = cmds && this.runLog ? '\n── dev server output ──\n' : '';
    pre.textContent = cmds + sep + this.runLog;
    $('logs-of').textContent = this.logsOf || '';
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  async loadTail(name) {
    const project = this.project;
    this.tails.set(name, null);
    try {
      const text = plainText(await api.logsText(project, name));
      if (project !== this.project) return;
      const lines = text.split('\n').filter((l) => l.trim() !== '');
      this.tails.set(name, lines.slice(-TAIL_LINES));
    } catch {
      this.tails.set(name, []);
    }
    this.render();
  }

  // --- actions -----------------------------------------------------------------

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
      h('label', { class: 'field' }, h('span', {}, label), h('input', { id, name: id, value, autocomplete: 'off', spellcheck: 'false', ...attrs }));
    const tplSelect = h(
      'select',
      { id: 'c-template' },
      h('option', { value: '' }, '(none: empty folder)'),
      ...templates.map((t, i) => h('option', { value: String(i), selected: i === 0 }, t.name)),
    );
    const body = h(
      'div',
      { class: 'form-grid' },
      field('c-name', 'Name', defaultName, { pattern: '[a-z]([a-z0-9\\-]{0,38}[a-z0-9])?', required: true, 'aria-describedby': 'c-name-hint' }),
      h('small', { id: 'c-name-hint', class: 'hint' }, 'Lowercase letters, digits and dashes; starts with a letter.'),
      h('label', { class: 'field' }, h('span', {}, 'Template'), tplSelect),
      field('c-port', 'Port', String(port), { type: 'number', min: 1, max: 65535 }),
      field('c-install', 'Install command', 'npm install'),
      field('c-start', 'Start command', 'npm run dev'),
      h('label', { class: 'check' }, h('input', { type: 'checkbox', id: 'c-public' }), h('span', {}, 'Public preview (anyone with the URL, no sign-in)')),
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
    if (body.querySelector('#c-public').checked) spec.public = true;
    const install = body.querySelector('#c-install').value.trim();
    if (install) spec.install = install;
    const t = templates[Number(tplSelect.value)];
    if (tplSelect.value !== '' && t) spec.template = t.ref ? { git: t.git, ref: t.ref } : { git: t.git };
    this.busy.set(name, spec.template ? 'cloning the template, then installing…' : 'installing…');
    // Logs shows this container's clone and install as they finish.
    this.stopLogs();
    this.selected = name;
    this.logsOf = name;
    this.renderLogs();
    this.render();
    try {
      await api.addContainer(project, spec);
      toast(`Added ${name}`, 'ok');
    } catch (err) {
      showError(`Could not add ${name}`, err);
    } finally {
      this.busy.delete(name);
      this.logsOf = null;
      await this.refresh();
    }
  }

  async act(c, what) {
    const project = this.project;
    const name = c.name;
    if (what === 'delete') {
      const v = await dialog({
        title: `Remove ${name}?`,
        body: `The container ${name} will be removed. Its files in /${name}/ can stay or go.`,
        actions: [
          { label: 'Cancel', value: 'cancel' },
          { label: 'Remove, delete files', value: 'files', kind: 'danger' },
          { label: 'Remove, keep files', value: 'keep', kind: 'primary' },
        ],
      });
      if (!v) return;
      this.busy.set(name, 'removing…');
      this.render();
      try {
        if (this.selected === name) this.preview.show(null, null);
        await api.deleteContainer(project, name, v === 'files');
      } catch (err) {
        showError(`Could not remove ${name}`, err);
      } finally {
        this.busy.delete(name);
        if (project === this.project) await this.refresh();
      }
      return;
    }
    this.busy.set(name, { start: 'starting…', stop: 'stopping…', restart: 'restarting…' }[what]);
    this.render();
    try {
      if (what === 'stop' || what === 'restart') {
        if (this.selected === name) this.preview.show(null, null, `Stopping ${name}…`);
        await api.stopContainer(project, name);
      }
      if (what === 'start' || what === 'restart') {
        this.tails.delete(name);
        this.ready.delete(name);
        this.selected = name;
        // The log stream of the last run has ended; its loop follows the new run.
        await api.startContainer(project, name);
      }
    } catch (err) {
      showError(`Could not ${what} ${name}`, err);
    } finally {
      this.busy.delete(name);
      if (project === this.project) await this.refresh();
    }
  }

  /**
   * Runs the container's install command again, its output live in Logs
   * (a terminal session running `sh -c`, whose exit frame carries the exit
   * code), then starts the container when the install succeeded.
   */
  async reinstall(c) {
    const project = this.project;
    const name = c.name;
    const install = c.install || 'npm install';
    const env = Object.entries(c.env || {})
      .map(([k, v]) => shq(`${k}=${v}`))
      .join(' ');
    const cmd = `cd ${shq(name)} && ${env ? `env ${env} ` : ''}sh -c ${shq(install)}`;
    this.busy.set(name, 'reinstalling…');
    this.select(name);
    this.cmdLog = trimLog(`${this.cmdLog}$ ${install}   (reinstall, in /${name})\n`);
    this.renderLogs();
    this.render();
    const code = await new Promise((resolve) => {
      const ws = openSocket(`${paths.project(project)}/terminal`, { cmd, cols: 120, rows: 40 });
      ws.binaryType = 'arraybuffer';
      const dec = new TextDecoder();
      let exit = null;
      let pending = '';
      ws.onmessage = (ev) => {
        if (typeof ev.data === 'string') {
          try {
            const m = JSON.parse(ev.data);
            if (m.type === 'exit') exit = m.code;
          } catch {
            // Not a control message.
          }
          return;
        }
        // Whole lines only, so that a progress line's redraws collapse.
        pending += dec.decode(new Uint8Array(ev.data), { stream: true });
        const nl = pending.lastIndexOf('\n');
        if (nl >= 0) {
          this.cmdLog = trimLog(this.cmdLog + plainText(pending.slice(0, nl + 1)));
          pending = pending.slice(nl + 1);
          if (this.logsOf === name) this.renderLogs();
        }
      };
      ws.onclose = () => {
        if (pending) this.cmdLog = trimLog(this.cmdLog + plainText(pending) + '\n');
        resolve(exit);
      };
    });
    this.busy.delete(name);
    this.cmdLog = trimLog(`${this.cmdLog}[install ${code === 0 ? 'done' : code === null ? 'lost its connection' : `exited with code ${code}`}]\n`);
    this.renderLogs();
    if (project !== this.project) return;
    if (code === 0) {
      toast(`Reinstalled ${name}; starting it`, 'ok');
      await this.act({ name }, 'restart');
    } else {
      toast(`Reinstall of ${name} failed${code === null ? '' : ` (exit ${code})`}; see Logs`, 'error');
      this.render();
    }
  }

  // --- rendering -----------------------------------------------------------------

  render() {
    const ul = $('container-list');
    if (!this.project) {
      ul.replaceChildren(h('li', { class: 'empty' }, 'Open a project to manage its containers.'));
      return;
    }
    // Containers being added: the clone and install run inside the request.
    const adding = [...this.busy.keys()].filter((n) => !this.list.find((c) => c.name === n));
    const pending = adding.map((n) =>
      h(
        'li',
        { class: 'container', dataset: { name: n, status: 'adding' } },
        h('div', { class: 'crow' }, h('span', { class: 'dot starting', 'aria-hidden': 'true' }), h('strong', {}, n), h('span', { class: 'meta' }, this.busy.get(n))),
        h('div', { class: 'progress', role: 'status', 'aria-label': `Adding ${n}` }, h('div', { class: 'bar', 'aria-hidden': 'true' }, h('div', { class: 'fill' }))),
      ),
    );
    if (this.list.length === 0 && pending.length === 0) {
      ul.replaceChildren(h('li', { class: 'empty' }, 'No containers yet. Add one from a template with the + button.'));
      return;
    }
    // The list is rebuilt on every change (a status event, say): a control
    // that had the focus gets it back in the new list, else keyboard users
    // would find themselves at the top of the page.
    const had = ul.contains(document.activeElement) ? document.activeElement : null;
    const where = had && {
      name: had.closest('li.container')?.dataset.name,
      label: had.getAttribute('aria-label'),
      isName: had.classList.contains('name'),
    };
    this.fill(ul, pending);
    if (where) {
      const li = [...ul.querySelectorAll('li.container')].find((l) => l.dataset.name === where.name);
      const buttons = li ? [...li.querySelectorAll('button')] : [];
      const back =
        buttons.find((b) => (where.isName ? b.classList.contains('name') : b.getAttribute('aria-label') === where.label) && !b.disabled) ||
        buttons.find((b) => b.classList.contains('name')) ||
        ul.querySelector('button:not([disabled])') ||
        $('container-add');
      back?.focus();
    }
  }

  /** Puts the containers (and those being added) in the list. */
  fill(ul, pending) {
    ul.replaceChildren(
      ...pending,
      ...this.list.map((c) => {
        const busy = this.busy.get(c.name);
        const running = c.status === 'running';
        const failed = c.status === 'failed';
        const tail = this.tails.get(c.name);
        const status = busy || `${c.status}${failed ? exitText(c) : ''}`;
        return h(
          'li',
          { class: 'container' + (c.name === this.selected ? ' selected' : '') + (failed ? ' failed' : ''), dataset: { name: c.name, status: c.status } },
          h(
            'div',
            { class: 'crow' },
            h(
              'button',
              { type: 'button', class: 'name', 'aria-pressed': String(c.name === this.selected), onclick: () => this.select(c.name) },
              h('span', { class: `dot ${busy ? 'starting' : c.status}`, 'aria-hidden': 'true' }),
              h('span', { class: 'sr-only' }, 'Select container '),
              h('strong', {}, c.name),
              h('span', { class: 'meta' }, `:${c.port} · `, h('span', { class: 'cstatus', 'data-status': c.status }, status)),
              c.public ? h('span', { class: 'pill' }, 'public') : null,
            ),
            h(
              'div',
              { class: 'actions' },
              running
                ? h('button', { type: 'button', disabled: !!busy, 'aria-label': `Stop container ${c.name}`, onclick: () => this.act(c, 'stop') }, 'Stop')
                : h('button', { type: 'button', class: 'primary', disabled: !!busy || c.status === 'starting', 'aria-label': `${failed ? 'Restart' : 'Start'} container ${c.name}`, onclick: () => this.act(c, failed ? 'restart' : 'start') }, failed ? 'Restart' : 'Start'),
              h('button', { type: 'button', class: 'icon', disabled: !!busy, 'aria-label': `Remove container ${c.name}`, title: 'Remove', onclick: () => this.act(c, 'delete') }, icon('trash')),
            ),
          ),
          failed
            ? h(
                'div',
                { class: 'failure', role: 'group', 'aria-label': `${c.name} failed` },
                h('p', {}, h('strong', {}, `${c.name} exited${c.exit_code !== undefined && c.exit_code !== null ? ` with code ${c.exit_code}` : ''}.`), ' Last lines of its output:'),
                h('pre', { class: 'tail', tabindex: '0', role: 'region', 'aria-label': `Last log lines of ${c.name}` }, tail === undefined || tail === null ? 'loading…' : tail.length ? tail.join('\n') : '(no output)'),
                h(
                  'div',
                  { class: 'actions' },
                  h('button', { type: 'button', class: 'primary', disabled: !!busy, 'aria-label': `Restart ${c.name}`, onclick: () => this.act(c, 'restart') }, 'Restart'),
                  h('button', { type: 'button', disabled: !!busy, 'aria-label': `Reinstall ${c.name} (${c.install || 'npm install'}), then start it`, title: `Runs ${c.install || 'npm install'} in /${c.name}, then starts it`, onclick: () => this.reinstall(c) }, 'Reinstall'),
                ),
              )
            : null,
        );
      }),
    );
  }
}

function exitText(c) {
  return c.exit_code !== undefined && c.exit_code !== null ? ` (exit ${c.exit_code})` : '';
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function trimLog(s) {
  return s.length > MAX_LOG_CHARS ? s.slice(s.length - MAX_LOG_CHARS) : s;
}

/** A command-log entry as Logs shows it: the command, its output, how it ended. */
function formatEntry(e) {
  const out = [e.stdout, e.stderr].filter((x) => x && x.trim()).map((x) => plainText(x).replace(/\n*$/, '\n')).join('');
  const secs = typeof e.duration_ms === 'number' ? `, ${(e.duration_ms / 1000).toFixed(1)} s` : '';
  const code = e.exit_code === null || e.exit_code === undefined ? '' : `exit ${e.exit_code}`;
  return `$ ${e.command}   (${e.label})\n${out}[${code}${secs}${e.truncated ? ', output cut' : ''}]\n`;
}
