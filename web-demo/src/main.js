// The page: projects on the left, the file tree under them, the editor and the
// terminal tabs in the middle, containers, preview and logs on the right.
// Project status is live from the project's events stream (EventSource).

import './style.css';
import { api, loadToken, setToken, eventsUrl } from './api.js';
import { $, h, confirmDialog, showError, toast, debounce } from './ui.js';
import { Editor } from './editor.js';
import { icon, hydrateIcons } from './icons.js';
import { FileTree } from './tree.js';
import { Terminals } from './terminal.js';
import { Containers } from './containers.js';

const ID_RE = /^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$/;
const BUSY = new Set(['starting', 'hibernating', 'restoring']);

const state = {
  projects: [],
  current: null, // project id
  progress: new Map(), // project id -> latest progress text
  events: null, // EventSource of the current project
  pending: new Set(), // project ids with a lifecycle request in flight
};

const editor = new Editor({
  onSaved: (project, path) => toast(`Saved ${path}`, 'ok', 2000),
});
const terminals = new Terminals();
const containers = new Containers({
  onChange: (list) => {
    const p = currentProject();
    if (p && p.status === 'active') terminals.sync(p.id, list.filter((c) => c.status === 'running').map((c) => c.name));
  },
});
const tree = new FileTree({
  onOpen: async (path) => {
    if (await editor.open(state.current, path)) {
      tree.setOpenPath(path);
      renderCrumb();
    }
  },
  onChange: (e) => {
    if (!editor.path || editor.project !== state.current) return;
    if (e.path === editor.path || e.to === editor.path) {
      editor.externalChange(e.kind === 'renamed' && e.path === editor.path ? 'removed' : e.kind);
    }
  },
});

// Handles for the browser tests and for poking at the page from devtools.
window.__devgate = { state, editor, terminals, containers, tree };

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

function renderProjects() {
  const ul = $('project-list');
  if (state.projects.length === 0) {
    ul.replaceChildren(h('li', { class: 'empty' }, 'No projects yet. Create one above.'));
    return;
  }
  ul.replaceChildren(
    ...state.projects.map((p) => {
      const busy = BUSY.has(p.status) || state.pending.has(p.id);
      const progress = state.progress.get(p.id);
      return h(
        'li',
        { class: 'project' + (p.id === state.current ? ' selected' : ''), dataset: { id: p.id, status: p.status } },
        h(
          'button',
          {
            class: 'name',
            'aria-label': `Open project ${p.id}`,
            'aria-current': p.id === state.current ? 'true' : null,
            onclick: () => openProject(p.id),
          },
          h('span', { class: `dot ${statusClass(p.status)}`, 'aria-hidden': 'true' }),
          h('span', { class: 'pname', title: p.id }, p.name || p.id),
          h('span', { class: `status ${statusClass(p.status)}`, 'data-status': p.status }, p.status),
        ),
        h(
          'div',
          { class: 'actions' },
          p.status === 'active'
            ? h('button', { disabled: busy, 'aria-label': `Hibernate project ${p.id}`, title: 'Hibernate: archive the files and free the environment', onclick: () => hibernate(p.id) }, 'Hibernate')
            : h('button', { disabled: busy, class: 'primary', 'aria-label': `Wake project ${p.id}`, title: 'Open: restore from the archive if hibernated', onclick: () => openProject(p.id) }, 'Open'),
          h('button', { class: 'icon', disabled: busy, 'aria-label': `Delete project ${p.id}`, title: 'Delete', onclick: () => deleteProject(p.id) }, icon('trash')),
        ),
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
  try {
    state.projects = (await api.listProjects()) || [];
    state.projects.sort((a, b) => a.id.localeCompare(b.id));
  } catch (err) {
    showError('Could not list projects', err);
  }
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
  tree.setProject(active);
  if (active) {
    containers.setProject(active, p.containers || []);
  } else {
    containers.setProject(null, []);
    terminals.sync(null, []);
    if (editor.path && !editor.dirty) editor.close();
  }
  renderCrumb();
}

const refreshCurrent = debounce(async () => {
  const id = state.current;
  if (!id) return;
  try {
    upsertProject(await api.getProject(id));
  } catch (err) {
    if (err.status === 404) {
      state.projects = state.projects.filter((p) => p.id !== id);
      selectProject(null);
      renderProjects();
    }
  }
  const p = currentProject();
  if (p && p.status === 'active') containers.refresh();
}, 150);

/** The events stream of the selected project: lifecycle progress and command
 * log lines. Every event refreshes the project; its text becomes the progress line. */
function watchEvents(id) {
  if (state.events) state.events.close();
  state.events = null;
  if (!id) return;
  const es = new EventSource(eventsUrl(id));
  state.events = es;
  const onEvent = (ev) => {
    let text = '';
    let data = null;
    try {
      data = JSON.parse(ev.data);
    } catch {
      text = String(ev.data || '');
    }
    if (data && typeof data === 'object') {
      if (data.status && data.id === id) upsertProject(data);
      else if (data.project && data.project.id === id) upsertProject(data.project);
      // A whole project (sent first on connect) or a lag notice has no progress to tell.
      if (ev.type !== 'project' && ev.type !== 'lagged') text = describeEvent(ev.type, data);
    }
    if (text) {
      state.progress.set(id, text.length > 160 ? text.slice(0, 157) + '…' : text);
      renderProjects();
    }
    refreshCurrent();
  };
  es.onmessage = onEvent;
  for (const name of ['project', 'status', 'progress', 'container', 'log', 'lagged']) {
    es.addEventListener(name, onEvent);
  }
}

function describeEvent(type, d) {
  const parts = [];
  const phase = d.phase || d.step || d.stage || d.event || d.kind || (type !== 'message' ? type : '');
  if (phase) parts.push(String(phase));
  if (d.status && typeof d.status === 'string') parts.push(d.status);
  if (typeof d.percent === 'number') parts.push(`${Math.round(d.percent)}%`);
  else if (typeof d.progress === 'number') parts.push(d.progress <= 1 ? `${Math.round(d.progress * 100)}%` : `${d.progress}`);
  if (typeof d.done === 'number' && typeof d.total === 'number') parts.push(`${d.done}/${d.total}`);
  if (typeof d.bytes === 'number') parts.push(fmtBytes(d.bytes));
  if (d.message) parts.push(String(d.message));
  else if (d.label) parts.push(String(d.label));
  else if (d.line) parts.push(String(d.line));
  return [...new Set(parts)].join(' · ');
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

async function selectProject(id) {
  if (id === state.current) return true;
  if (editor.dirty) {
    const ok = await confirmDialog('Unsaved changes', `${editor.path} has unsaved changes that will be lost.`, 'Discard and switch');
    if (!ok) return false;
  }
  editor.close();
  state.current = id;
  watchEvents(id);
  renderProjects();
  applyCurrent();
  return true;
}

async function openProject(id) {
  if (!(await selectProject(id))) return;
  const p = currentProject();
  if (p && p.status === 'active') return;
  state.pending.add(id);
  state.progress.set(id, p && p.status === 'hibernated' ? 'restoring from the archive…' : 'starting…');
  renderProjects();
  try {
    upsertProject(await api.openProject(id));
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
  if (state.current === id && editor.dirty) {
    const ok = await confirmDialog('Unsaved changes', `${editor.path} has unsaved changes. Hibernate anyway (they stay in the editor, unsaved)?`, 'Hibernate');
    if (!ok) return;
  }
  state.pending.add(id);
  state.progress.set(id, 'archiving…');
  if (p) upsertProject({ ...p, status: 'hibernating' });
  try {
    const res = await api.hibernateProject(id);
    upsertProject(res);
    const a = res && res.archive;
    toast(a ? `Hibernated ${id}: ${a.files} files, ${fmtBytes(a.size)}` : `Hibernated ${id}`, 'ok');
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
  const ok = await confirmDialog(`Delete project ${id}?`, `The project ${id}, its environment and its archives will be deleted. This cannot be undone.`);
  if (!ok) return;
  state.pending.add(id);
  renderProjects();
  // Close the project's streams first, so none of them retries against a
  // project that is going away.
  if (state.current === id) {
    editor.close();
    await selectProject(null);
  }
  try {
    await api.deleteProject(id);
    state.projects = state.projects.filter((p) => p.id !== id);
    toast(`Deleted ${id}`);
  } catch (err) {
    showError(`Could not delete ${id}`, err);
  } finally {
    state.pending.delete(id);
    renderProjects();
  }
}

$('project-create').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('project-id');
  const id = input.value.trim();
  if (!ID_RE.test(id)) {
    toast('A project id is a DNS label: lowercase letters, digits and dashes, starting with a letter', 'error');
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
  if (editor.dirty) ev.preventDefault();
});

function describeToken(t) {
  try {
    const payload = JSON.parse(atob(t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    return payload.sub ? `signed in as ${payload.sub}` : 'signed in';
  } catch {
    return 'token set';
  }
}

const token = loadToken();
setToken(token);
if (!token) {
  $('conn').textContent = 'no token';
  $('conn').className = 'conn err';
  $('project-list').replaceChildren(
    h('li', { class: 'empty' }, 'Open this page with the URL the gateway printed at start-up (it ends in ?token=…).'),
  );
} else {
  $('conn').textContent = describeToken(token);
  $('conn').className = 'conn ok';
  loadProjects();
  // Statuses of the projects not selected (the selected one is live by its stream).
  setInterval(() => {
    if (!document.hidden && state.pending.size === 0) loadProjects();
  }, 15000);
}
hydrateIcons();
containers.render();
tree.render();
terminals.render();

// The editor/terminal splitter: drag it, or focus it and use the arrow keys.
(function splitter() {
  const sep = $('splitter');
  const center = sep.parentElement;
  const KEY = 'devgate.split';
  const set = (pct) => {
    const v = Math.max(15, Math.min(85, Math.round(pct)));
    center.style.gridTemplateRows = `minmax(0, ${v}fr) 2px minmax(0, ${100 - v}fr)`;
    sep.setAttribute('aria-valuenow', String(v));
    localStorage.setItem(KEY, String(v));
  };
  const saved = Number(localStorage.getItem(KEY));
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
