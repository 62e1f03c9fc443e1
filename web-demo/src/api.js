// The gateway's public interface (shared/API.md), and nothing else.
// This is the only module that holds the token. It goes on requests as
// `Authorization: Bearer` (fetch, including the events stream, read as a
// streaming fetch rather than an EventSource) and, for WebSockets, in the
// `Sec-WebSocket-Protocol` offer: never in a URL, so it never shows in the
// console (Chromium prints the URL of a failed WebSocket), in history or in
// anything a person could copy.

const TOKEN_KEY = 'devgate.token';

/** Takes `?token=` from the page URL into localStorage (kept per origin, so
 * a new tab is signed in too) and removes it from the address bar. */
export function loadToken() {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get('token');
  if (fromUrl) {
    localStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete('token');
    window.history.replaceState(null, '', url.pathname + url.search + url.hash);
  }
  // A token an older page version kept in this tab only.
  const old = sessionStorage.getItem(TOKEN_KEY);
  if (old) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (!localStorage.getItem(TOKEN_KEY)) localStorage.setItem(TOKEN_KEY, old);
  }
  return localStorage.getItem(TOKEN_KEY) || '';
}

let token = '';
export function setToken(t) {
  token = t || '';
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}
export function hasToken() {
  return token !== '';
}

/** What the page can tell about a token without asking the gateway: its
 * claims, or why it cannot be used (not a JWT, expired, not valid yet). */
export function inspectToken(t, now = Date.now() / 1000) {
  if (!t) return { ok: false, reason: 'missing' };
  const parts = t.split('.');
  if (parts.length !== 3) return { ok: false, reason: 'malformed' };
  let claims;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    claims = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
  } catch {
    return { ok: false, reason: 'malformed' };
  }
  if (!claims || typeof claims !== 'object') return { ok: false, reason: 'malformed' };
  if (typeof claims.exp === 'number' && claims.exp <= now) return { ok: false, reason: 'expired', claims };
  if (typeof claims.nbf === 'number' && claims.nbf > now + 60) return { ok: false, reason: 'not_yet_valid', claims };
  return { ok: true, claims };
}

// Listeners told when the gateway refuses the token (401): the page then
// shows its signed-out state instead of carrying on as if all was well.
const unauthorized = new Set();
export function onUnauthorized(fn) {
  unauthorized.add(fn);
}

/** An error answer of the gateway: `{"error": {"code", "message"}}`. */
export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message || `${status} ${code}`);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

/** Encodes a project-relative path segment by segment, keeping the slashes. */
export function encPath(path) {
  return path
    .split('/')
    .filter((s) => s.length > 0)
    .map(encodeURIComponent)
    .join('/');
}

async function toError(res) {
  let code = 'http_' + res.status;
  let message = res.statusText || `request failed with status ${res.status}`;
  let body = null;
  try {
    body = await res.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // Not JSON (a proxy's page, say): keep the status text.
  }
  return new ApiError(res.status, code, message, body);
}

/** fetch with the token; throws ApiError on a non-2xx answer. */
export async function request(method, path, { body, headers = {}, json, signal } = {}) {
  const h = { Authorization: `Bearer ${token}`, ...headers };
  let payload = body;
  if (json !== undefined) {
    h['Content-Type'] = 'application/json';
    payload = JSON.stringify(json);
  }
  const res = await fetch(path, { method, headers: h, body: payload, signal });
  if (!res.ok) {
    const err = await toError(res);
    if (res.status === 401) for (const fn of unauthorized) fn(err);
    throw err;
  }
  return res;
}

async function getJson(method, path, opts) {
  const res = await request(method, path, opts);
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

const P = (p) => `/api/projects/${encodeURIComponent(p)}`;
const C = (p, c) => `${P(p)}/containers/${encodeURIComponent(c)}`;

export const api = {
  templates: () => getJson('GET', '/api/templates'),

  listProjects: () => getJson('GET', '/api/projects'),
  getProject: (p) => getJson('GET', P(p)),
  createProject: (id, name) => getJson('POST', '/api/projects', { json: name ? { id, name } : { id } }),
  /** Opens (wakes) a project; `startContainers` also starts again the dev
   * servers that were running when it was hibernated. */
  openProject: (p, { startContainers = false } = {}) =>
    getJson('POST', `${P(p)}/open`, { json: startContainers ? { start_containers: true } : {} }),
  hibernateProject: (p) => getJson('POST', `${P(p)}/hibernate`),
  deleteProject: (p) => getJson('DELETE', P(p)),

  list: (p, dir = '', depth = 1) => getJson('GET', `${P(p)}/list/${encPath(dir)}?depth=${depth}`),
  stat: (p, path) => getJson('GET', `${P(p)}/stat/${encPath(path)}`),
  mkdir: (p, path) => getJson('POST', `${P(p)}/mkdir/${encPath(path)}`),
  move: (p, from, to, overwrite = false) => getJson('POST', `${P(p)}/move`, { json: { from, to, overwrite } }),
  remove: (p, path, recursive = false) =>
    getJson('DELETE', `${P(p)}/files/${encPath(path)}${recursive ? '?recursive=true' : ''}`),

  /** Reads a file: its bytes, its ETag and its type. */
  async readFile(p, path, { signal } = {}) {
    const res = await request('GET', `${P(p)}/files/${encPath(path)}`, { headers: { 'Cache-Control': 'no-cache' }, signal });
    const bytes = new Uint8Array(await res.arrayBuffer());
    return { bytes, etag: res.headers.get('ETag') };
  },

  /** Writes a file. `ifMatch` makes the write conditional on the file being
   * unchanged; `ifNoneMatch` ("*") on it not existing yet. Answers
   * `{etag, size}`, the etag in the same form as the ETag header. */
  writeFile: (p, path, bytes, { ifMatch, ifNoneMatch } = {}) => {
    const headers = { 'Content-Type': 'application/octet-stream' };
    if (ifMatch) headers['If-Match'] = ifMatch;
    if (ifNoneMatch) headers['If-None-Match'] = ifNoneMatch;
    return getJson('PUT', `${P(p)}/files/${encPath(path)}`, { body: bytes, headers });
  },

  /** The project as a zip (a Blob), through a fetch with the token in a header. */
  async downloadArchive(p) {
    const res = await request('GET', `${P(p)}/archive`);
    return res.blob();
  },
  /** Extracts a zip into the project, all or nothing. */
  uploadArchive: (p, bytes) =>
    getJson('POST', `${P(p)}/archive`, { body: bytes, headers: { 'Content-Type': 'application/zip' } }),

  /** The command log, oldest first. */
  commandLog: (p, limit = 100) => getJson('GET', `${P(p)}/logs?limit=${limit}`),

  listContainers: (p) => getJson('GET', `${P(p)}/containers`),
  addContainer: (p, spec) => getJson('POST', `${P(p)}/containers`, { json: spec }),
  startContainer: (p, c) => getJson('POST', `${C(p, c)}/start`),
  stopContainer: (p, c) => getJson('POST', `${C(p, c)}/stop`),
  deleteContainer: (p, c, deleteFiles = false) => getJson('DELETE', `${C(p, c)}${deleteFiles ? '?delete_files=true' : ''}`),
  /** The logs of a container as a streaming Response (`?follow=true`). */
  followLogs: (p, c, signal) => request('GET', `${C(p, c)}/logs?follow=true`, { signal }),
  /** The logs of a container so far, as text. */
  async logsText(p, c) {
    const res = await request('GET', `${C(p, c)}/logs`);
    return res.text();
  },

  /** A one-time URL that lets this browser into a private preview (60 s,
   * single use): the user's own token never goes to the preview's origin. */
  previewLink: (p, c) => getJson('POST', `${C(p, c)}/preview-link`),
  listShares: (p, c) => getJson('GET', `${C(p, c)}/shares`),
  createShare: (p, c, spec) => getJson('POST', `${C(p, c)}/shares`, { json: spec }),
  revokeShare: (p, c, id) => getJson('DELETE', `${C(p, c)}/shares/${encodeURIComponent(id)}`),
};

/** Opens a WebSocket on this origin. The token travels in the subprotocol
 * offer (`devgate.bearer.<token>`, beside `devgate`, which the gateway picks),
 * so the URL carries none. */
export function openSocket(path, params = {}) {
  const u = new URL(path, window.location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, String(v));
  }
  return new WebSocket(u.toString(), ['devgate', `devgate.bearer.${token}`]);
}

/**
 * Reads the project's events stream (`text/event-stream`) through fetch, so
 * the token goes in a header. Calls `onEvent(type, data)` per event and
 * `onOpen()` once connected; resolves when the stream ends, rejects on error.
 */
export async function readEvents(p, { onEvent, onOpen, signal }) {
  const res = await request('GET', `${P(p)}/events`, { headers: { Accept: 'text/event-stream' }, signal });
  if (onOpen) onOpen();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let type = 'message';
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      let line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (data.length) onEvent(type, data.join('\n'));
        type = 'message';
        data = [];
      } else if (line.startsWith(':')) {
        // A comment: the keep-alive.
      } else {
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? '' : line.slice(colon + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (field === 'event') type = v;
        else if (field === 'data') data.push(v);
      }
    }
  }
}

export const paths = { project: P, container: C };
