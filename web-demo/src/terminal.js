// Terminal tabs on xterm.js over the terminal WebSocket of the contract.
// Bytes in and out are raw (Uint8Array both ways), so binary output and any
// UTF-8 split across frames render right. The page counts the output bytes it
// has received; after a drop it reconnects to the same session with
// `?session=&offset=` and the gateway sends exactly what follows: no gap, no repeat.

import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import { wsUrl, paths } from './api.js';
import { $, h } from './ui.js';

const enc = new TextEncoder();
// Keystrokes typed while the socket is down are held (bounded) and sent on reconnect.
const MAX_PENDING = 16 * 1024;
const BACKOFF_MS = [250, 500, 1000, 2000, 4000];
// After this many failed reattaches in a row the session is taken as gone
// (its keep window passed, or the gateway restarted) and a fresh shell starts.
const MAX_REATTACH_FAILURES = 6;

const THEME = {
  background: '#0d1117',
  foreground: '#d6deeb',
  cursor: '#7aa2f7',
  selectionBackground: '#264f78',
  black: '#1b1f27',
  brightBlack: '#5c6370',
  red: '#ef6b73',
  green: '#8fd18f',
  yellow: '#e5c07b',
  blue: '#61afef',
  magenta: '#c678dd',
  cyan: '#56b6c2',
  white: '#d6deeb',
  brightWhite: '#ffffff',
};

let seq = 0;

export class TermSession {
  constructor({ project, container, label, onState }) {
    this.id = `term-${++seq}`;
    this.project = project;
    this.container = container || '';
    this.label = label;
    this.onState = onState || (() => {});
    this.sessionId = null;
    this.offset = 0; // position in the session's output stream of the next byte
    this.skip = 0; // bytes of a replay we already have
    this.ws = null;
    this.exited = false;
    this.disposed = false;
    this.failures = 0;
    this.pending = [];
    this.pendingBytes = 0;
    this.state = 'idle'; // not connected until its tab is first shown
    this.reconnectTimer = null;

    this.el = h('div', { class: 'term', id: `${this.id}-panel`, role: 'tabpanel', 'aria-label': `Terminal ${label}` });
    $('terms').append(this.el);
    this.term = new Terminal({
      fontFamily: '"JetBrains Mono", "Fira Code", "DejaVu Sans Mono", Menlo, monospace',
      fontSize: 13,
      cursorBlink: true,
      scrollback: 10000,
      theme: THEME,
      allowProposedApi: false,
    });
    this.fit = new FitAddon();
    this.term.loadAddon(this.fit);
    this.term.open(this.el);
    this.term.onData((d) => this.send(enc.encode(d)));
    // onBinary carries bytes as a string of char codes 0-255 (e.g. mouse reports).
    this.term.onBinary((d) => this.send(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff)));
    this.term.onResize(({ cols, rows }) => this.sendControl({ type: 'resize', cols, rows }));
    this.resizeObs = new ResizeObserver(() => this.refit());
    this.resizeObs.observe(this.el);
    this.onOnline = () => {
      if (this.state === 'reconnecting') this.connectNow();
    };
    window.addEventListener('online', this.onOnline);
  }

  refit() {
    if (this.disposed || this.el.offsetParent === null) return;
    try {
      this.fit.fit();
    } catch {
      // Not laid out yet; the next resize observation fits it.
    }
  }

  setState(s) {
    this.state = s;
    this.onState(this);
  }

  connect() {
    if (this.ws || this.disposed) return;
    if (this.state === 'idle') this.setState('connecting');
    this.refit();
    const params = {
      container: this.container,
      cols: this.term.cols,
      rows: this.term.rows,
    };
    if (this.sessionId) {
      params.session = this.sessionId;
      params.offset = this.offset;
    }
    const ws = new WebSocket(wsUrl(`${paths.project(this.project)}/terminal`, params));
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === 'string') {
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (msg.type === 'session') {
          const reattached = this.sessionId !== null && this.sessionId === msg.id;
          if (this.sessionId !== null && !reattached) {
            // A fresh shell: its output counts from zero.
            this.offset = 0;
            this.term.write('\r\n\x1b[33m[previous session ended; new shell]\x1b[0m\r\n');
          }
          // The gateway says where in the session's output its stream starts.
          // Bytes before our offset we already have (skip them); bytes between
          // our offset and its start are gone from its replay buffer (say so).
          if (typeof msg.offset === 'number') {
            if (reattached && msg.offset < this.offset) this.skip = this.offset - msg.offset;
            else this.skip = 0;
            if (reattached && msg.offset > this.offset) {
              this.term.write(`\r\n\x1b[33m[${msg.offset - this.offset} bytes of output were lost while disconnected]\x1b[0m\r\n`);
            }
            this.offset = msg.offset;
          } else {
            this.skip = 0;
          }
          this.sessionId = msg.id;
          this.failures = 0;
          this.setState('connected');
          this.flushPending();
          // The pane may have changed size while we were away.
          this.sendControl({ type: 'resize', cols: this.term.cols, rows: this.term.rows });
        } else if (msg.type === 'exit') {
          this.exited = true;
          this.term.write(`\r\n\x1b[90m[process exited with code ${msg.code}]\x1b[0m\r\n`);
          this.setState('exited');
        }
        return;
      }
      let bytes = new Uint8Array(ev.data);
      this.offset += bytes.byteLength;
      if (this.skip > 0) {
        const n = Math.min(this.skip, bytes.byteLength);
        this.skip -= n;
        bytes = bytes.subarray(n);
        if (bytes.byteLength === 0) return;
      }
      this.term.write(bytes);
    };
    ws.onclose = () => {
      if (this.ws === ws) this.ws = null;
      if (this.disposed || this.exited) return;
      if (!opened || this.state !== 'connected') this.failures++;
      if (this.sessionId && this.failures >= MAX_REATTACH_FAILURES) {
        // Start over with a new shell rather than retrying a dead session forever.
        this.sessionId = null;
        this.failures = 0;
      }
      this.setState('reconnecting');
      const delay = Math.max(BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)], (this.holdUntil || 0) - Date.now());
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = setTimeout(() => this.connectNow(), delay);
    };
  }

  connectNow() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (!this.ws) this.connect();
  }

  send(bytes) {
    if (this.exited) {
      // Enter after the shell ended starts a new one in the same tab.
      if (bytes.includes(13)) this.restart();
      return;
    }
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.state === 'connected') {
      this.ws.send(bytes);
    } else if (this.pendingBytes + bytes.byteLength <= MAX_PENDING) {
      this.pending.push(bytes);
      this.pendingBytes += bytes.byteLength;
    }
  }

  flushPending() {
    const p = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    for (const b of p) this.ws.send(b);
  }

  sendControl(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  restart() {
    this.exited = false;
    this.sessionId = null;
    this.offset = 0;
    this.term.write('\r\n');
    this.setState('connecting');
    this.connectNow();
  }

  /** Simulates a network drop (used by the tests and handy to try by hand),
   * staying away at least `holdMs`, so output can pile up meanwhile. */
  drop(holdMs = 0) {
    this.holdUntil = Date.now() + holdMs;
    if (this.ws) this.ws.close(4000, 'client drop');
  }

  dispose() {
    this.disposed = true;
    clearTimeout(this.reconnectTimer);
    window.removeEventListener('online', this.onOnline);
    this.resizeObs.disconnect();
    if (this.ws) this.ws.close(1000, 'tab closed');
    this.term.dispose();
    this.el.remove();
  }
}

/** The tab strip: one tab for the project shell and one per running container. */
export class Terminals {
  constructor() {
    this.tabs = [];
    this.active = null;
    this.project = null;
    this.renderTimer = null;
  }

  /** Makes the tab set match the project and its running containers. */
  sync(project, runningContainers) {
    if (project !== this.project) {
      for (const t of this.tabs) t.dispose();
      this.tabs = [];
      this.active = null;
      this.project = project;
    }
    if (!project) {
      this.render();
      return;
    }
    const want = ['', ...runningContainers];
    for (const t of [...this.tabs]) {
      if (!want.includes(t.container)) this.close(t);
    }
    for (const c of want) {
      if (!this.tabs.find((t) => t.container === c)) {
        const t = new TermSession({
          project,
          container: c,
          label: c ? c : 'project',
          onState: () => this.render(),
        });
        this.tabs.push(t);
        // Only the active tab's panel shows; the new one waits for its click.
        t.el.hidden = true;
        if (!this.active) this.activate(t);
      }
    }
    this.render();
  }

  close(t) {
    t.dispose();
    this.tabs = this.tabs.filter((x) => x !== t);
    if (this.active === t) {
      this.active = null;
      if (this.tabs[0]) this.activate(this.tabs[0]);
    }
  }

  activate(t) {
    this.active = t;
    for (const x of this.tabs) x.el.hidden = x !== t;
    t.connect();
    requestAnimationFrame(() => {
      t.refit();
      t.term.focus();
    });
    this.render();
  }

  render() {
    $('terms-empty').hidden = this.tabs.length > 0;
    const bar = $('term-tabs');
    bar.replaceChildren(
      ...this.tabs.map((t) =>
        h(
          'button',
          {
            role: 'tab',
            id: `${t.id}-tab`,
            class: 'tab' + (t === this.active ? ' active' : ''),
            'aria-selected': t === this.active ? 'true' : 'false',
            'aria-controls': `${t.id}-panel`,
            'aria-label': t.container ? `Shell in container ${t.container}` : 'Project shell',
            dataset: { container: t.container },
            tabindex: t === this.active ? '0' : '-1',
            onclick: () => this.activate(t),
            onkeydown: (ev) => {
              // The tabs pattern: arrows move between tabs, Tab moves on to the panel.
              const i = this.tabs.indexOf(t);
              const next = ev.key === 'ArrowRight' ? this.tabs[(i + 1) % this.tabs.length] : ev.key === 'ArrowLeft' ? this.tabs[(i - 1 + this.tabs.length) % this.tabs.length] : null;
              if (!next) return;
              ev.preventDefault();
              this.activate(next);
              requestAnimationFrame(() => document.getElementById(`${next.id}-tab`)?.focus());
            },
          },
          h('span', { class: `dot ${t.state}`, 'aria-hidden': 'true' }),
          t.container ? `${t.container}` : 'project',
        ),
      ),
    );
    const st = $('term-state');
    const a = this.active;
    st.textContent = a ? a.state : '';
    st.className = 'badge ' + (a && a.state === 'connected' ? 'ok' : a && a.state === 'exited' ? '' : 'warn');
  }
}
