// The page: projects on the left, the file tree under them, the editor and the
// terminal tabs in the middle, containers, preview and logs on the right. On
// narrow screens the panes stack and tabs switch between them. Project status
// is live from the project's events stream. The selected project, its open
// files and its terminal sessions are remembered across reloads.

import './style.css';
import { api, loadToken, setToken, hasToken, inspectToken, onUnauthorized, readEvents } from './api.js';
import { $, h, confirmDialog, dialog, showError, toast, debounce, fmtBytes } from './ui.js';
import { Editor } from './editor.js';
import { icon, hydrateIcons } from './icons.js';
import { FileTree } from './tree.js';
import { Terminals } from './terminal.js';
import { Containers } from './containers.js';
import { Preview } from './preview.js';
import { ui, projectMemory } from './persist.js';

const ID_RE = /^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$/;
const BUSY = new Set(['starting', 'hibernating', 'restoring']);

const state = {
  projects: [],
  current: null, // project id
  progress: new Map(), // project id -> latest progress text
  events: null, // AbortController of the current project's events stream
  pending: new Set(), // project ids with a lifecycle request in flight
  auth: 'checking', // 'checking' | 'in' | 'out'
  claims: null,
};

const editor = new Editor({
  onSaved: (project, path) => toast(`Saved ${path}`, 'ok', 2000),
  onTabs: (files, active) => {
    if (editor.project) projectMemory.set(editor.project, { files, active });
  },
  onActivate: (path) => {
    tree.setOpenPath(path);
    renderCrumb();
  },
});
const terminals = new Terminals({
  onRemember: (project, terms, activeTerm) => projectMemory.set(project, { terms, activeTerm }),
});
const preview = new Preview();
const containers = new Containers({
  preview,
  onChange: (list) => {
    const p = currentProject();
    if (p && p.status === 'active') terminals.syncContainers(p.id, list.filter((c) => c.status === 'running').map((c) => c.name));
  },
});
const tree = new FileTree({
  onOpen: async (path) => {
    if (await editor.open(path)) {
      renderCrumb();
      if (document.body.dataset.layout !== 'wide') setView('editor');
    }
  },
  onChange: (e) => editor.externalChange(e),
});

// Handles for the browser tests and for poking at the page from devtools.
window.__devgate = { state, editor, terminals, containers, tree, preview };

function currentProject() {
  return state.projects.find((p) => p.id === state.current) || null;
}

function renderCrumb() {
  const p = currentProject();
  $('crumb').textContent = p ? `${p.id}${editor.path && editor.project === p.id ? ' / ' + editor.path : ''}` : '';
}

function statusClass(s) {
  if (s === 'active') return 'ok';
  if (s === 'failed') return 'err';
  if (BUSY.has(s)) return 'busy';
  return 'idle';
}

// --- sign-in state ---------------------------------------------------------------

const REASONS = {
  missing: 'No token yet.',
  malformed: 'The token this page has is not a valid token (it is not a JWT).',
  expired: 'Your token has expired.',
  not_yet_valid: 'Your token is not valid yet.',
};

let expiryTimer = null;

function signedOut(why) {
  state.auth = 'out';
  state.claims = null;
  clearTimeout(expiryTimer);
  document.body.dataset.auth = 'out';
  $('signed-out').hidden = false;
  $('signed-out-why').textContent = why;
  $('conn').textContent = 'signed out';
  $('conn').className = 'conn err';
  $('sign-out').hidden = true;
  $('project-create-btn').disabled = true;
  // Let go of everything the old token opened.
  selectProject(null, { force: true });
  state.projects = [];
  renderProjects();
  requestAnimationFrame(() => $('token-input').focus());
}

function signedIn(claims) {
  state.auth = 'in';
  state.claims = claims;
  document.body.dataset.auth = 'in';
  $('signed-out').hidden = true;
  $('conn').textContent = claims.sub ? `signed in as ${claims.sub}` : 'signed in';
  $('conn').className = 'conn ok';
  $('sign-out').hidden = false;
  $('project-create-btn').disabled = false;
  clearTimeout(expiryTimer);
  if (typeof claims.exp === 'number') {
    const ms = claims.exp * 1000 - Date.now();
    // Timers hold 32-bit delays; a token that far out is rechecked on reload.
    if (ms < 2 ** 31 - 1) expiryTimer = setTimeout(() => signedOut(`${REASONS.expired} Open the page again with a fresh token from the gateway.`), Math.max(0, ms));
  }
}

/** Checks the token: first what the page can see (a JWT, not expired), then
 * the gateway's answer to a listing. Only then does the page look signed in. */
async function checkAuth() {
  const t = loadToken();
  setToken(t);
  const info = inspectToken(t);
  if (!info.ok) {
    const when = info.claims && info.claims.exp ? `Your token expired at ${new Date(info.claims.exp * 1000).toLocaleString()}.` : REASONS.expired;
    signedOut(info.reason === 'expired' ? when : REASONS[info.reason] || 'The token cannot be used.');
    return;
  }
  $('conn').textContent = 'checking the token…';
  $('conn').className = 'conn';
  try {
    state.projects = (await api.listProjects()) || [];
  } catch (err) {
    if (err.status === 401) return; // onUnauthorized shows why
    // The gateway is unreachable or failing: say so, keep the token.
    $('conn').textContent = 'gateway unreachable';
    $('conn').className = 'conn err';
    showError('Could not reach the gateway', err);
    setTimeout(checkAuth, 5000);
    return;
  }
  signedIn(info.claims);
  state.projects.sort((a, b) => a.id.localeCompare(b.id));
  renderProjects();
  // Back to where the person was.
  const remembered = ui.get().project;
  if (remembered && state.projects.find((p) => p.id === remembered)) await selectProject(remembered);
}

onUnauthorized((err) => {
  if (state.auth === 'out') return;
  signedOut(`The gateway refused the token: ${err.message}. Open the page again with a valid token.`);
});

$('sign-in').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const t = $('token-input').value.trim();
  $('token-input').value = '';
  if (!t) return;
  setToken(t);
  checkAuth();
});

$('sign-out').addEventListener('click', async () => {
  if (editor.dirtyTabs().length) {
    const ok = await confirmDialog('Unsaved changes', 'Some open files have unsaved changes that will be lost.', 'Sign out anyway');
    if (!ok) return;
  }
  setToken('');
  signedOut('You signed out. The token was removed from this browser.');
});

// --- projects --------------------------------------------------------------------

function renderProjects() {
  const ul = $('project-list');
  if (state.auth !== 'in') {
    ul.replaceChildren();
    return;
  }
  if (state.projects.length === 0) {
    ul.replaceChildren(h('li', { class: 'empty' }, 'No projects yet. Create one above.'));
    return;
  }
  ul.replaceChildren(
    ...state.projects.map((p) => {
      const busy = BUSY.has(p.status) || state.pending.has(p.id);
      const progress = state.progress.get(p.id);
      const selected = p.id === state.current;
      const resume = (p.containers || []).filter((c) => c.running_at_hibernation).map((c) => c.name);
      return h(
        'li',
        { class: 'project' + (selected ? ' selected' : ''), dataset: { id: p.id, status: p.status } },
        h(
          'button',
          {
            type: 'button',
            class: 'name',
            'aria-current': selected ? 'true' : null,
            onclick: () => openProject(p.id),
          },
          h('span', { class: `dot ${statusClass(p.status)}`, 'aria-hidden': 'true' }),
          h('span', { class: 'sr-only' }, 'Select project '),
          h('span', { class: 'pname', title: p.id }, p.name || p.id),
          h('span', { class: 'sr-only' }, ', '),
          h('span', { class: `status ${statusClass(p.status)}`, 'data-status': p.status }, p.status),
        ),
        h(
          'div',
          { class: 'actions' },
          p.status === 'active'
            ? h('button', { type: 'button', disabled: busy, 'aria-label': `Hibernate project ${p.id}`, title: 'Hibernate: keep the files, free the environment', onclick: () => hibernate(p.id) }, 'Hibernate')
            : h(
                'button',
                {
                  type: 'button',
                  disabled: busy,
                  class: 'primary',
                  'aria-label': `Open project ${p.id}`,
                  title: resume.length ? `Open: restore the files, then start ${resume.join(', ')} again` : 'Open: restore the files if hibernated',
                  onclick: () => openProject(p.id),
                },
                'Open',
              ),
          h('button', { type: 'button', class: 'icon', disabled: busy, 'aria-label': `Delete project ${p.id}`, title: 'Delete', onclick: () => deleteProject(p.id) }, icon('trash')),
        ),
        p.status === 'hibernated' && resume.length && !busy
          ? h('div', { class: 'ptext' }, `Opening it starts ${resume.join(', ')} again (running at hibernation).`)
          : null,
        busy || progress
          ? h(
              'div',
              { class: 'progress', role: 'status', 'aria-label': `Progress of ${p.id}` },
              busy ? h('div', { class: 'bar', 'aria-hidden': 'true' }, h('div', { class: 'fill' })) : null,
              progress ? h('div', { class: 'ptext' }, progress) : null,
            )
          : null,
      );
    }),
  );
}

async function loadProjects() {
  if (state.auth !== 'in') return;
  try {
    state.projects = (await api.listProjects()) || [];
    state.projects.sort((a, b) => a.id.localeCompare(b.id));
  } catch (err) {
    if (err.status !== 401) showError('Could not list projects', err);
    return;
  }
  if (state.current && !currentProject()) await selectProject(null, { force: true });
  renderProjects();
  applyCurrent();
}

function upsertProject(p) {
  if (!p || !p.id) return;
  const i = state.projects.findIndex((x) => x.id === p.id);
  if (i >= 0) state.projects[i] = p;
  else {
    state.projects.push(p);
    state.projects.sort((a, b) => a.id.localeCompare(b.id));
  }
  if (!BUSY.has(p.status) && !state.pending.has(p.id)) state.progress.delete(p.id);
  renderProjects();
  if (p.id === state.current) applyCurrent();
}

/** Points the workspace panes at the current project, when it is active. */
function applyCurrent() {
  const p = currentProject();
  const active = p && p.status === 'active' ? p.id : null;
  const memory = active ? projectMemory.get(active) : {};
  tree.setProject(active);
  terminals.setProject(active, memory);
  if (active) containers.setProject(active, p.containers || []);
  else containers.setProject(null, []);
  if (editor.project !== active) {
    if (active) editor.setProject(active, { files: memory.files || [], active: memory.active || null });
    else if (!editor.dirtyTabs().length) editor.setProject(null);
  }
  $('terms-empty').firstChild.textContent = p && !active ? `${p.id} is ${p.status}. Open it for a shell beside its files.` : 'Open a project for a shell beside its files.';
  renderCrumb();
}

const refreshCurrent = debounce(async () => {
  const id = state.current;
  if (!id || state.auth !== 'in') return;
  try {
    upsertProject(await api.getProject(id));
  } catch (err) {
    if (err.status === 404) {
      state.projects = state.projects.filter((p) => p.id !== id);
      await selectProject(null, { force: true });
      renderProjects();
    }
  }
  const p = currentProject();
  if (p && p.status === 'active') containers.refresh();
}, 150);

/** Follows the selected project's events stream: lifecycle progress,
 * statuses, containers and command-log lines. Reconnects after a drop. */
function watchEvents(id) {
  if (state.events) state.events.abort();
  state.events = null;
  if (!id) return;
  const ctrl = new AbortController();
  state.events = ctrl;
  let failures = 0;
  const onEvent = (type, raw) => {
    let data = null;
    try {
      data = JSON.parse(raw);
    } catch {
      return;
    }
    if (!data || typeof data !== 'object') return;
    if (type === 'project' && data.id === id) upsertProject(data);
    if (type === 'log') containers.onCommandLog(data);
    if (type === 'progress' || (type === 'status' && BUSY.has(data.status))) {
      const text = describeEvent(type, data);
      if (text) {
        state.progress.set(id, text.length > 160 ? text.slice(0, 157) + '…' : text);
        renderProjects();
      }
    }
    if (type !== 'project') refreshCurrent();
  };
  (async () => {
    while (!ctrl.signal.aborted && state.auth === 'in') {
      try {
        await readEvents(id, {
          signal: ctrl.signal,
          onOpen: () => {
            failures = 0;
          },
          onEvent,
        });
      } catch (err) {
        if (ctrl.signal.aborted || err.status === 401 || err.status === 404) return;
      }
      if (ctrl.signal.aborted) return;
      failures++;
      await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** Math.min(failures, 4))));
      refreshCurrent();
    }
  })();
}

function describeEvent(type, d) {
  const parts = [];
  const phase = d.step || d.phase || d.stage || (type !== 'message' && type !== 'progress' ? type : '');
  if (phase) parts.push(String(phase));
  if (d.status && typeof d.status === 'string') parts.push(d.status);
  if (typeof d.percent === 'number') parts.push(`${Math.round(d.percent)}%`);
  if (typeof d.done === 'number' && typeof d.total === 'number') parts.push(`${d.done}/${d.total}`);
  if (typeof d.bytes === 'number') parts.push(fmtBytes(d.bytes));
  if (d.message) parts.push(String(d.message));
  return [...new Set(parts)].join(' · ');
}

/** Makes `id` the selected project. Asks first when open files have unsaved
 * changes (they would be lost); `force` does not ask. */
async function selectProject(id, { force = false } = {}) {
  if (id === state.current) return true;
  const dirty = editor.dirtyTabs();
  if (dirty.length && !force) {
    const v = await dialog({
      title: 'Unsaved changes',
      body: `${dirty.map((t) => t.path).join(', ')} ${dirty.length === 1 ? 'has' : 'have'} unsaved changes.`,
      actions: [
        { label: 'Cancel', value: 'cancel' },
        { label: 'Discard and switch', value: 'discard', kind: 'danger' },
        { label: 'Save all and switch', value: 'save', kind: 'primary' },
      ],
    });
    if (!v) return false;
    if (v === 'save') {
      for (const t of dirty) if (!(await editor.save({ tab: t }))) return false;
    }
  }
  await editor.setProject(null);
  state.current = id;
  if (id) ui.set({ project: id });
  watchEvents(id);
  renderProjects();
  applyCurrent();
  return true;
}

async function openProject(id) {
  if (!(await selectProject(id))) return;
  const p = currentProject();
  if (!p || p.status === 'active' || BUSY.has(p.status) || state.pending.has(id)) return;
  const resume = (p.containers || []).filter((c) => c.running_at_hibernation).map((c) => c.name);
  state.pending.add(id);
  state.progress.set(
    id,
    p.status === 'hibernated' ? `restoring the files${resume.length ? `, then starting ${resume.join(', ')} again` : ''}…` : 'starting…',
  );
  renderProjects();
  try {
    // Containers that were running at hibernation start again.
    const res = await api.openProject(id, { startContainers: true });
    upsertProject(res);
    const started = ((res && res.containers) || []).filter((c) => resume.includes(c.name));
    if (started.length) {
      const ok = started.filter((c) => c.status === 'running').map((c) => c.name);
      const bad = started.filter((c) => c.status !== 'running');
      if (ok.length) toast(`Opened ${id}; started ${ok.join(', ')} again (running at hibernation)`, 'ok');
      for (const c of bad) toast(`${c.name} did not start again: ${c.status}${c.exit_code !== undefined ? ` (exit ${c.exit_code})` : ''}. See its row.`, 'warn', 9000);
    }
  } catch (err) {
    showError(`Could not open ${id}`, err);
  } finally {
    state.pending.delete(id);
    state.progress.delete(id);
    refreshCurrent();
    renderProjects();
  }
}

async function hibernate(id) {
  const p = state.projects.find((x) => x.id === id);
  if (state.current === id && editor.dirtyTabs().length) {
    const ok = await confirmDialog('Unsaved changes', 'Some open files have unsaved changes. Hibernate anyway (they stay in the editor, unsaved)?', 'Hibernate');
    if (!ok) return;
  }
  state.pending.add(id);
  state.progress.set(id, 'saving the files…');
  if (p) upsertProject({ ...p, status: 'hibernating' });
  try {
    const res = await api.hibernateProject(id);
    // Its shells ended with it; nothing to reattach to.
    projectMemory.set(id, { terms: [], activeTerm: 0 });
    upsertProject(res);
    const a = res && (res.snapshot || res.archive);
    const size = a && (a.bytes !== undefined ? a.bytes : a.size);
    toast(a && a.files !== undefined ? `Hibernated ${id}: ${a.files} files, ${fmtBytes(size || 0)}` : `Hibernated ${id}`, 'ok');
  } catch (err) {
    showError(`Could not hibernate ${id}`, err);
  } finally {
    state.pending.delete(id);
    state.progress.delete(id);
    refreshCurrent();
    loadProjects();
  }
}

async function deleteProject(id) {
  const ok = await confirmDialog(`Delete project ${id}?`, `The project ${id}, its environment and its snapshots will be deleted. This cannot be undone.`);
  if (!ok) return;
  state.pending.add(id);
  renderProjects();
  // Close the project's streams first, so none of them retries against a
  // project that is going away.
  if (state.current === id) await selectProject(null, { force: true });
  try {
    await api.deleteProject(id);
    state.projects = state.projects.filter((p) => p.id !== id);
    projectMemory.forget(id);
    if (ui.get().project === id) ui.set({ project: null });
    toast(`Deleted ${id}`);
  } catch (err) {
    showError(`Could not delete ${id}`, err);
  } finally {
    state.pending.delete(id);
    renderProjects();
  }
}

/** Why an id is not a DNS label, in words; '' when it is one. */
function idProblem(id) {
  if (!id) return 'Type an id.';
  if (id.length > 40) return 'At most 40 characters.';
  if (!/^[a-z]/.test(id)) return 'Start with a lowercase letter.';
  if (/[^a-z0-9-]/.test(id)) return 'Only lowercase letters, digits and dashes.';
  if (id.endsWith('-')) return 'Do not end with a dash.';
  return ID_RE.test(id) ? '' : 'Not a valid id.';
}

const ID_HINT = $('project-id-hint').textContent;
$('project-id').addEventListener('input', () => {
  const input = $('project-id');
  const problem = input.value ? idProblem(input.value.trim()) : '';
  input.setAttribute('aria-invalid', String(!!problem));
  $('project-id-hint').textContent = problem ? `${problem} ${ID_HINT}` : ID_HINT;
  $('project-id-hint').classList.toggle('bad', !!problem);
});

$('project-create').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  if (state.auth !== 'in') return;
  const input = $('project-id');
  const id = input.value.trim();
  const problem = idProblem(id);
  if (problem) {
    input.setAttribute('aria-invalid', 'true');
    $('project-id-hint').textContent = `${problem} ${ID_HINT}`;
    $('project-id-hint').classList.add('bad');
    input.focus();
    return;
  }
  try {
    const p = await api.createProject(id);
    input.value = '';
    upsertProject(p);
    await openProject(id);
  } catch (err) {
    showError(`Could not create ${id}`, err);
  }
});
$('projects-refresh').addEventListener('click', loadProjects);
window.addEventListener('beforeunload', (ev) => {
  if (editor.dirtyTabs().length) ev.preventDefault();
});

// --- layout: three columns, or stacked panes with tabs ----------------------------

const VIEWS = ['files', 'editor', 'terminal', 'preview'];
const wideMq = window.matchMedia('(min-width: 1200px)');
const mediumMq = window.matchMedia('(min-width: 760px)');

function layoutNow() {
  return wideMq.matches ? 'wide' : mediumMq.matches ? 'medium' : 'narrow';
}

function setView(view) {
  const layout = document.body.dataset.layout;
  if (layout === 'medium' && view === 'files') view = 'editor';
  document.body.dataset.view = view;
  for (const b of document.querySelectorAll('#views [role="tab"]')) {
    const on = b.dataset.view === view;
    b.setAttribute('aria-selected', String(on));
    b.tabIndex = on ? 0 : -1;
  }
  ui.set({ view });
  if (view === 'terminal') terminals.refit();
}

function applyLayout() {
  const layout = layoutNow();
  document.body.dataset.layout = layout;
  $('view-files').hidden = layout !== 'narrow';
  setView(ui.get().view || 'editor');
  terminals.refit();
}
wideMq.addEventListener('change', applyLayout);
mediumMq.addEventListener('change', applyLayout);
for (const b of document.querySelectorAll('#views [role="tab"]')) {
  b.addEventListener('click', () => setView(b.dataset.view));
  b.addEventListener('keydown', (ev) => {
    const tabs = [...document.querySelectorAll('#views [role="tab"]')].filter((x) => !x.hidden);
    const i = tabs.indexOf(b);
    const next = ev.key === 'ArrowRight' ? tabs[(i + 1) % tabs.length] : ev.key === 'ArrowLeft' ? tabs[(i - 1 + tabs.length) % tabs.length] : null;
    if (!next) return;
    ev.preventDefault();
    setView(next.dataset.view);
    next.focus();
  });
}

// --- keyboard: F6 between panes, ? for help -----------------------------------------

/** The panes in F6 order, each with how to put focus in it. */
const REGIONS = [
  { name: 'projects', view: 'files', el: () => $('sidebar').querySelector('.projects'), focus: () => $('project-list').querySelector('button.name[aria-current="true"]') || $('project-list').querySelector('button') || $('project-id') },
  { name: 'files', view: 'files', el: () => $('files-panel'), focus: () => $('tree').querySelector('[role="treeitem"][tabindex="0"]') || $('tree').querySelector('[role="treeitem"]') || $('file-new') },
  { name: 'editor', view: 'editor', el: () => $('editor-pane'), focus: () => (editor.active && editor.active.kind === 'text' ? editor.view.contentDOM : $('editor-tabs').querySelector('[tabindex="0"]') || $('editor-pane')) },
  { name: 'terminal', view: 'terminal', el: () => $('term-pane'), focus: () => (terminals.active ? terminals.active.term.textarea : null) || $('term-new') },
  { name: 'containers', view: 'preview', el: () => $('right').querySelector('.containers'), focus: () => $('container-list').querySelector('button:not([disabled])') || $('container-add') },
  { name: 'preview', view: 'preview', el: () => $('right').querySelector('.preview'), focus: () => ($('preview-path').disabled ? $('preview-frame').hidden ? $('preview-empty') : $('preview-frame') : $('preview-path')) },
  { name: 'logs', view: 'preview', el: () => $('right').querySelector('.logs'), focus: () => $('logs') },
];

function moveRegion(delta) {
  const a = document.activeElement;
  let i = REGIONS.findIndex((r) => r.el() && r.el().contains(a));
  for (let step = 0; step < REGIONS.length; step++) {
    i = (i + delta + REGIONS.length) % REGIONS.length;
    const r = REGIONS[i];
    if (document.body.dataset.layout !== 'wide') setView(r.view);
    const target = r.focus();
    if (target && !target.disabled && target.offsetParent !== null) {
      if (target === $('preview-empty') || target === $('editor-pane')) target.tabIndex = -1;
      target.focus();
      return;
    }
  }
}

function typingIn(el) {
  return !!el && (el.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(el.tagName));
}

function shortcutsHelp() {
  const rows = [
    ['F6 / Shift+F6', 'Next / previous pane (projects, files, editor, terminal, containers, preview, logs)'],
    ['Escape, then Tab', 'Leave the editor or a terminal (Tab alone indents or completes there)'],
    ['Ctrl+S', 'Save the file'],
    ['Arrow keys, Home, End', 'Move in the file tree, the file tabs and the terminal tabs'],
    ['Enter / Space', 'Open the file, or expand the folder'],
    ['Right / Left', 'Expand / collapse a folder (or go to its first child / its parent)'],
    ['F2', 'Rename the file or folder'],
    ['Delete', 'Delete the file or folder; on a file or terminal tab: close it'],
    ['Shift+F10', 'Actions of the file or folder (open, rename, download, delete)'],
    ['Letters', 'Jump to the next file whose name starts with them'],
    ['?', 'This help (outside text fields)'],
  ];
  dialog({
    title: 'Keyboard shortcuts',
    body: h(
      'table',
      { class: 'keys' },
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Keys'), h('th', { scope: 'col' }, 'What they do'))),
      h('tbody', {}, ...rows.map(([k, v]) => h('tr', {}, h('td', {}, h('kbd', {}, k)), h('td', {}, v)))),
    ),
    actions: [{ label: 'Close', value: 'close', kind: 'primary' }],
  });
}

// Capture phase: F6 must work inside the terminal and the editor too.
window.addEventListener(
  'keydown',
  (ev) => {
    if (ev.key === 'F6' && !ev.ctrlKey && !ev.altKey && !ev.metaKey) {
      if ($('dlg').open) return;
      ev.preventDefault();
      ev.stopPropagation();
      moveRegion(ev.shiftKey ? -1 : 1);
    } else if (ev.key === '?' && !ev.ctrlKey && !ev.altKey && !ev.metaKey && !typingIn(ev.target) && !$('dlg').open) {
      ev.preventDefault();
      shortcutsHelp();
    }
  },
  true,
);
$('help').addEventListener('click', shortcutsHelp);

// --- start ---------------------------------------------------------------------------

hydrateIcons();
applyLayout();
containers.render();
tree.render();
terminals.render();
renderProjects();
checkAuth();
// Statuses of the projects not selected (the selected one is live by its stream).
setInterval(() => {
  if (!document.hidden && state.pending.size === 0 && hasToken() && state.auth === 'in') loadProjects();
}, 15000);

// The editor/terminal splitter: drag it, or focus it and use the arrow keys.
(function splitter() {
  const sep = $('splitter');
  const center = sep.parentElement;
  const set = (pct) => {
    const v = Math.max(15, Math.min(85, Math.round(pct)));
    center.style.setProperty('--split', `${v}fr`);
    center.style.setProperty('--split-rest', `${100 - v}fr`);
    sep.setAttribute('aria-valuenow', String(v));
    ui.set({ split: v });
  };
  const saved = Number(ui.get().split);
  if (saved) set(saved);
  sep.addEventListener('pointerdown', (ev) => {
    ev.preventDefault();
    sep.setPointerCapture(ev.pointerId);
    const move = (e) => {
      const r = center.getBoundingClientRect();
      set(((e.clientY - r.top) / r.height) * 100);
    };
    const up = () => {
      sep.removeEventListener('pointermove', move);
      sep.removeEventListener('pointerup', up);
    };
    sep.addEventListener('pointermove', move);
    sep.addEventListener('pointerup', up);
  });
  sep.addEventListener('keydown', (ev) => {
    const now = Number(sep.getAttribute('aria-valuenow'));
    if (ev.key === 'ArrowUp') set(now - 5);
    else if (ev.key === 'ArrowDown') set(now + 5);
    else return;
    ev.preventDefault();
  });
})();
