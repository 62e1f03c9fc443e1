// The preview of the selected container: an iframe on the container's
// preview host, with an address bar (path, back, forward, reload), "open in
// a new tab" and Share. A private preview is entered through a one-time code
// (`POST .../preview-link`, single use, 60 s), which sets a cookie for that
// preview host only: the person's own token never goes to the preview's
// origin, whose scripts the project controls, nor into any URL shown here.
// Share links are for people without an account; they expire, and are
// listed and revoked here.

import { api } from './api.js';
import { $, h, dialog, showError, toast } from './ui.js';

// The gateway answers a share link's URL once, when it is made (it keeps only
// a digest); the page keeps those it made for as long as it is open.
const shareUrls = new Map(); // share id -> URL

const EXPIRIES = [
  [15 * 60, '15 minutes'],
  [60 * 60, '1 hour'],
  [8 * 60 * 60, '8 hours'],
  [24 * 60 * 60, '1 day'],
  [7 * 24 * 60 * 60, '7 days'],
];

export class Preview {
  constructor() {
    this.project = null;
    this.container = null; // the container object shown
    this.key = null; // `${project}/${name}` in the iframe
    this.origin = null;
    this.history = [];
    this.index = -1;
    this.afterAuth = null; // path to go to once the auth redirect landed
    this.frame = $('preview-frame');
    this.frame.addEventListener('load', () => this.onLoad());
    $('preview-back').addEventListener('click', () => this.go(-1));
    $('preview-forward').addEventListener('click', () => this.go(1));
    $('preview-reload').addEventListener('click', () => this.reload());
    $('preview-open').addEventListener('click', () => this.openInTab());
    $('preview-share').addEventListener('click', () => this.shareDialog());
    $('preview-bar').addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.navigate($('preview-path').value);
    });
    this.render();
  }

  /** Shows a running container's preview, or (container null) a message. */
  show(project, c, message) {
    if (!c) {
      if (this.key === null && !message && this.frame.hidden) return;
      this.key = null;
      this.project = null;
      this.container = null;
      this.origin = null;
      this.history = [];
      this.index = -1;
      // Unload whatever was there: the dev server's client in there would
      // otherwise keep polling a server that is going away.
      if (this.frame.getAttribute('src') && this.frame.getAttribute('src') !== 'about:blank') this.frame.src = 'about:blank';
      this.frame.hidden = true;
      this.frame.dataset.container = '';
      $('preview-empty').hidden = false;
      $('preview-empty').textContent = message || 'Start a container to see its preview.';
      this.render();
      return;
    }
    const key = `${project}/${c.name}`;
    this.container = c;
    if (this.key === key) return;
    this.key = key;
    this.project = project;
    this.origin = previewOrigin(project, c);
    this.history = ['/'];
    this.index = 0;
    this.load('/');
  }

  /** Loads `path` in the iframe, entering through a fresh one-time code (so
   * an expired preview cookie is renewed on the way). */
  async load(path) {
    const key = this.key;
    const c = this.container;
    this.render();
    let url;
    try {
      url = await this.authUrl(c);
    } catch (err) {
      if (key !== this.key) return;
      showError(`Could not open the preview of ${c.name}`, err);
      $('preview-empty').hidden = false;
      $('preview-empty').textContent = `The preview of ${c.name} could not be opened: ${err.message}`;
      return;
    }
    if (key !== this.key) return;
    this.afterAuth = path !== '/' ? path : null;
    $('preview-empty').hidden = true;
    this.frame.hidden = false;
    this.frame.dataset.container = c.name;
    this.frame.src = url;
    this.render();
  }

  /** The URL that lets this browser in: a one-time code for a private
   * preview, the plain preview URL for a public one. */
  async authUrl(c) {
    if (c.public) return this.origin + '/';
    const r = await api.previewLink(this.project, c.name);
    if (!r || typeof r.url !== 'string') throw new Error('the gateway answered no preview link');
    return r.url;
  }

  onLoad() {
    if (this.afterAuth && this.key) {
      const p = this.afterAuth;
      this.afterAuth = null;
      this.frame.src = this.origin + p;
    }
  }

  navigate(input) {
    if (!this.key) return;
    let path = String(input || '/').trim();
    // A full URL of this preview host is fine too; anything else is a path here.
    try {
      const u = new URL(path);
      if (u.origin === this.origin) path = u.pathname + u.search + u.hash;
    } catch {
      // A path.
    }
    if (!path.startsWith('/')) path = '/' + path;
    this.history = this.history.slice(0, this.index + 1);
    this.history.push(path);
    this.index = this.history.length - 1;
    this.frame.src = this.origin + path;
    this.render();
  }

  go(delta) {
    const i = this.index + delta;
    if (!this.key || i < 0 || i >= this.history.length) return;
    this.index = i;
    this.frame.src = this.origin + this.history[i];
    this.render();
  }

  reload() {
    if (!this.key) return;
    this.load(this.history[this.index] || '/');
  }

  /** Opens the preview in a new tab, entering through a fresh one-time code.
   * The tab is opened at once (a popup blocker allows that in a click) and
   * sent to the URL when the code arrives. */
  async openInTab() {
    if (!this.key) return;
    const w = window.open('about:blank', '_blank');
    try {
      const url = await this.authUrl(this.container);
      if (w) {
        w.opener = null;
        // The auth answer redirects to `/` of the preview (a public preview
        // opens at `/` too).
        w.location.href = url;
      }
    } catch (err) {
      if (w) w.close();
      showError('Could not open the preview', err);
    }
  }

  // --- sharing -----------------------------------------------------------------

  async shareDialog() {
    const c = this.container;
    const project = this.project;
    if (!c || !project) return;
    const list = h('ul', { class: 'share-list', 'aria-label': 'Share links' });
    const status = h('p', { class: 'share-status', role: 'status' });
    const refresh = async () => {
      let shares;
      try {
        shares = (await api.listShares(project, c.name)) || [];
      } catch (err) {
        status.textContent = `Could not list share links: ${err.message}`;
        return;
      }
      const now = Date.now();
      const live = shares
        .filter((s) => !s.revoked && (!s.expires_at || Date.parse(s.expires_at) > now))
        .map((s) => ({ ...s, url: s.url || shareUrls.get(s.id) || null }));
      list.replaceChildren(
        ...(live.length
          ? live.map((s) =>
              h(
                'li',
                { dataset: { id: s.id } },
                h('div', { class: 'share-meta' }, h('strong', {}, s.label || 'Share link'), h('span', {}, `expires ${fmtWhen(s.expires_at)}${s.wake ? ' · wakes the project' : ''}`)),
                s.url
                  ? h('input', { type: 'text', readonly: true, value: s.url, 'aria-label': `Share link ${s.label || s.id}`, class: 'share-url', onfocus: (ev) => ev.target.select() })
                  : h('span', { class: 'share-note' }, `made by ${s.created_by || 'someone'}; its URL was shown to them only`),
                h(
                  'div',
                  { class: 'actions' },
                  s.url ? h('button', { type: 'button', 'aria-label': `Copy share link ${s.label || s.id}`, onclick: () => copy(s.url) }, 'Copy') : null,
                  h(
                    'button',
                    {
                      type: 'button',
                      class: 'danger',
                      'aria-label': `Revoke share link ${s.label || s.id}`,
                      onclick: async () => {
                        try {
                          await api.revokeShare(project, c.name, s.id);
                          shareUrls.delete(s.id);
                          await refresh();
                          status.textContent = 'Revoked: the link stopped working.';
                        } catch (err) {
                          status.textContent = `Could not revoke: ${err.message}`;
                        }
                      },
                    },
                    'Revoke',
                  ),
                ),
              ),
            )
          : [h('li', { class: 'empty' }, 'No active share links.')]),
      );
    };
    const expiry = h('select', { id: 'share-expiry' }, ...EXPIRIES.map(([s, label]) => h('option', { value: String(s), selected: s === 3600 }, label)));
    const label = h('input', { id: 'share-label', type: 'text', placeholder: 'e.g. for Sam', autocomplete: 'off', maxlength: 80 });
    const wake = h('input', { id: 'share-wake', type: 'checkbox' });
    const create = h(
      'button',
      {
        type: 'button',
        class: 'primary',
        id: 'share-create',
        onclick: async () => {
          const spec = { expires_in_s: Number(expiry.value) };
          if (label.value.trim()) spec.label = label.value.trim();
          if (wake.checked) spec.wake = true;
          try {
            const s = await api.createShare(project, c.name, spec);
            if (s.url) shareUrls.set(s.id, s.url);
            status.textContent = `Link made; it expires ${fmtWhen(s.expires_at)}. Copy it now: its URL is shown only while this page is open.`;
            label.value = '';
            await refresh();
            list.querySelector(`li[data-id="${CSS.escape(s.id)}"] .share-url`)?.focus();
          } catch (err) {
            status.textContent = `Could not make a link: ${err.message}`;
          }
        },
      },
      'Create link',
    );
    const body = h(
      'div',
      { class: 'share' },
      h('p', {}, `Anyone with a share link sees the preview of ${c.name} without signing in, until it expires or you revoke it. It gives no access to files, terminals or other containers.`),
      h(
        'div',
        { class: 'form-grid' },
        h('label', { class: 'field' }, h('span', {}, 'Expires after'), expiry),
        h('label', { class: 'field' }, h('span', {}, 'Label (optional)'), label),
        h('label', { class: 'check' }, wake, h('span', {}, 'Opening it wakes the project when hibernated')),
        create,
      ),
      status,
      h('h4', {}, 'Active links'),
      list,
    );
    refresh();
    await dialog({ title: `Share the preview of ${c.name}`, body, actions: [{ label: 'Done', value: 'done', kind: 'primary' }] });
  }

  render() {
    const on = !!this.key;
    $('preview-path').value = on ? this.history[this.index] || '/' : '';
    $('preview-path').disabled = !on;
    $('preview-go').disabled = !on;
    $('preview-back').disabled = !on || this.index <= 0;
    $('preview-forward').disabled = !on || this.index >= this.history.length - 1;
    $('preview-reload').disabled = !on;
    $('preview-open').disabled = !on;
    $('preview-share').disabled = !on;
    $('preview-host').textContent = on ? new URL(this.origin).host : '';
  }
}

/** The preview host of a container: from its `preview_url`, else the
 * contract's default `{container}.{project}.localhost` on this port. */
export function previewOrigin(project, c) {
  if (c.preview_url) return new URL(c.preview_url).origin;
  const port = window.location.port ? `:${window.location.port}` : '';
  return `${window.location.protocol}//${c.name}.${project}.localhost${port}`;
}

function fmtWhen(iso) {
  if (!iso) return 'never';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return String(iso);
  const mins = Math.round((t - Date.now()) / 60000);
  const rel = mins < 60 ? `in ${mins} min` : mins < 48 * 60 ? `in ${Math.round(mins / 60)} h` : `in ${Math.round(mins / 1440)} days`;
  return `${rel} (${new Date(t).toLocaleString()})`;
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast('Copied', 'ok', 1500);
  } catch {
    toast('Select the link and copy it (the clipboard is not available here)', 'warn');
  }
}
