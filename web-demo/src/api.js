// The gateway's public interface (shared/API.md), and nothing else.
// Every request carries the token: a Bearer header where fetch can set one,
// `?token=` where the browser cannot (WebSocket, EventSource, iframe navigation).

const TOKEN_KEY = 'devgate.token';

/** Takes `?token=` from the page URL into sessionStorage and removes it from
 * the address bar, so the token is not left in history or shared screenshots. */
export function loadToken() {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get('token');
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete('token');
    window.history.replaceState(null, '', url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

let token = '';
export function setToken(t) {
  token = t;
}
export function getToken() {
  return token;
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
  if (!res.ok) throw await toError(res);
  return res;
}

async function getJson(method, path, opts) {
  const res = await request(method, path, opts);
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

const P = (p) => `/api/projects/${encodeURIComponent(p)}`;

export const api = {
  templates: () => getJson('GET', '/api/templates'),

  listProjects: () => getJson('GET', '/api/projects'),
  getProject: (p) => getJson('GET', P(p)),
  createProject: (id, name) => getJson('POST', '/api/projects', { json: name ? { id, name } : { id } }),
  openProject: (p) => getJson('POST', `${P(p)}/open`),
  hibernateProject: (p) => getJson('POST', `${P(p)}/hibernate`),
  deleteProject: (p) => getJson('DELETE', P(p)),

  list: (p, dir = '', depth = 1) => getJson('GET', `${P(p)}/list/${encPath(dir)}?depth=${depth}`),
  stat: (p, path) => getJson('GET', `${P(p)}/stat/${encPath(path)}`),
  mkdir: (p, path) => getJson('POST', `${P(p)}/mkdir/${encPath(path)}`),
  move: (p, from, to, overwrite = false) => getJson('POST', `${P(p)}/move`, { json: { from, to, overwrite } }),
  remove: (p, path, recursive = false) =>
    getJson('DELETE', `${P(p)}/files/${encPath(path)}${recursive ? '?recursive=true' : ''}`),

  /** Reads a file: its bytes and its ETag. */
  async readFile(p, path) {
    const res = await request('GET', `${P(p)}/files/${encPath(path)}`, { headers: { 'Cache-Control': 'no-cache' } });
    const bytes = new Uint8Array(await res.arrayBuffer());
    return { bytes, etag: res.headers.get('ETag') };
  },

  /** Writes a file. `ifMatch` makes the write conditional on the file being
   * unchanged; `ifNoneMatch` ("*") on it not existing yet. */
  writeFile: (p, path, bytes, { ifMatch, ifNoneMatch } = {}) => {
    const headers = { 'Content-Type': 'application/octet-stream' };
    if (ifMatch) headers['If-Match'] = ifMatch;
    if (ifNoneMatch) headers['If-None-Match'] = ifNoneMatch;
    return getJson('PUT', `${P(p)}/files/${encPath(path)}`, { body: bytes, headers });
  },

  listContainers: (p) => getJson('GET', `${P(p)}/containers`),
  addContainer: (p, spec) => getJson('POST', `${P(p)}/containers`, { json: spec }),
  startContainer: (p, c) => getJson('POST', `${P(p)}/containers/${encodeURIComponent(c)}/start`),
  stopContainer: (p, c) => getJson('POST', `${P(p)}/containers/${encodeURIComponent(c)}/stop`),
  deleteContainer: (p, c, deleteFiles = false) =>
    getJson('DELETE', `${P(p)}/containers/${encodeURIComponent(c)}${deleteFiles ? '?delete_files=true' : ''}`),
  /** The logs of a container as a streaming Response (`?follow=true`). */
  followLogs: (p, c, signal) =>
    request('GET', `${P(p)}/containers/${encodeURIComponent(c)}/logs?follow=true`, { signal }),
};

/** A ws:// or wss:// URL on this origin, with the token in the query. */
export function wsUrl(path, params = {}) {
  const u = new URL(path, window.location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, String(v));
  }
  u.searchParams.set('token', token);
  return u.toString();
}

export function eventsUrl(p) {
  const u = new URL(`${P(p)}/events`, window.location.href);
  u.searchParams.set('token', token);
  return u.toString();
}

export const paths = { project: P };
