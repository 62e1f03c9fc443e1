// What the page remembers across reloads and project switches, in this
// origin's localStorage: the selected project, and per project its open files
// and its terminal sessions (so a reload reattaches to the same shells).
// Nothing here is a secret; the token is kept by api.js alone.

const UI_KEY = 'devgate.ui';
const projectKey = (id) => `devgate.project.${id}`;

function read(key, fallback) {
  try {
    const v = JSON.parse(localStorage.getItem(key) || 'null');
    return v && typeof v === 'object' ? v : fallback;
  } catch {
    return fallback;
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Storage full or disabled: the page works, it just forgets.
  }
}

export const ui = {
  get() {
    return read(UI_KEY, {});
  },
  set(patch) {
    write(UI_KEY, { ...ui.get(), ...patch });
  },
};

/** Per-project memory: `{files: [path], active: path, terms: [{session, container, label}], activeTerm}`. */
export const projectMemory = {
  get(id) {
    return read(projectKey(id), {});
  },
  set(id, patch) {
    if (!id) return;
    write(projectKey(id), { ...projectMemory.get(id), ...patch });
  },
  forget(id) {
    localStorage.removeItem(projectKey(id));
  },
};
