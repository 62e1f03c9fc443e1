// Terminal tabs on xterm.js over the terminal WebSocket of the contract.
// Bytes in and out are raw (Uint8Array both ways), so binary output and any
// UTF-8 split across frames render right. The page counts the output bytes it
// has received; after a drop it reconnects to the same session with
// `?session=&offset=` and the gateway sends exactly what follows: no gap, no
// repeat. Session ids are remembered per project, so a reload or a project
// switch reattaches to the same shells (the gateway replays their output).
// Focus leaves a terminal with F6 (next pane) or Escape then Tab.

import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import { openSocket, paths } from './api.js';
import { $, h, dialog } from './ui.js';

const enc = new TextEncoder();
// Keystrokes typed while the socket is down are held (bounded) and sent on reconnect.
const MAX_PENDING = 16 * 1024;
const BACKOFF_MS = [250, 500, 1000, 2000, 4000];
// After this many failed reattaches in a row the session is taken as gone
// (its keep window passed, or the gateway restarted) and a fresh shell starts.
const MAX_REATTACH_FAILURES = 6;
// A session remembered from before a reload gets fewer tries.
const MAX_RESTORE_FAILURES = 2;
// Never narrower than this: a shell squeezed to a few columns is useless.
// The pane scrolls sideways instead.
export const MIN_COLS = 20;
const MIN_ROWS = 5;
// Escape then Tab (within this long) moves focus out of the terminal.
const ESC_TAB_MS = 1000;

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
  constructor({ project, container, label, sessionId = null, onState, onSession }) {
    this.id = `term-${++seq}`;
    this.project = project;
    this.container = container || '';
    this.label = label;
    this.onState = onState || (() => {});
    this.onSession = onSession || (() => {});
    this.sessionId = sessionId;
    this.restoring = !!sessionId; // remembered from before a reload
    this.lost = false; // the previous session could not be reattached
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
    this.escAt = 0;

    this.el = h('div', { class: 'term', id: `${this.id}-panel`, role: 'tabpanel', 'aria-labelledby': `${this.id}-tab` });
    $('terms').append(this.el);
    this.term = new Terminal({
      fontFamily: '"JetBrains Mono", "Fira Code", "DejaVu Sans Mono", Menlo, monospace',
      fontSize: 13,
      cursorBlink: true,
      scrollback: 10000,
      theme: THEME,
      allowProposedApi: false,
      screenReaderMode: false,
    });
    this.fit = new FitAddon();
    this.term.loadAddon(this.fit);
    this.term.open(this.el);
    this.term.textarea?.setAttribute('aria-label', `Terminal ${label}: Escape then Tab, or F6, moves focus out`);
    this.term.attachCustomKeyEventHandler((ev) => {
      if (ev.type !== 'keydown') return true;
      if (ev.key === 'Escape') {
        this.escAt = Date.now();
        return true;
      }
      // Escape then Tab: let the browser move focus (xterm does not take it).
      if (ev.key === 'Tab' && !ev.ctrlKey && !ev.altKey && !ev.metaKey && Date.now() - this.escAt < ESC_TAB_MS) {
        this.escAt = 0;
        return false;
      }
      return true;
    });
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

  /** Fits the terminal to its pane, never below MIN_COLS x MIN_ROWS. */
  refit() {
    if (this.disposed || this.el.offsetParent === null) return;
    let dims;
    try {
      dims = this.fit.proposeDimensions();
    } catch {
      return;
    }
    if (!dims || !Number.isFinite(dims.cols) || !Number.isFinite(dims.rows)) return;
    const cols = Math.max(MIN_COLS, dims.cols);
    const rows = Math.max(MIN_ROWS, dims.rows);
    if (cols !== this.term.cols || rows !== this.term.rows) this.term.resize(cols, rows);
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
    const ws = openSocket(`${paths.project(this.project)}/terminal`, params);
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
        if (msg.type === 'session') this.onSessionFrame(msg);
        else if (msg.type === 'exit') {
          this.exited = true;
          const why = msg.reason === 'hibernated' ? 'the project was hibernated' : `process exited with code ${msg.code}`;
          this.term.write(`\r\n\x1b[90m[${why}; press Enter for a new shell]\x1b[0m\r\n`);
          this.setState('exited');
          this.onSession(this);
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
      const limit = this.restoring ? MAX_RESTORE_FAILURES : MAX_REATTACH_FAILURES;
      if (this.sessionId && this.failures >= limit) {
        // Start over with a new shell rather than retrying a dead session forever.
        this.sessionId = null;
        this.restoring = false;
        this.lost = true;
        this.failures = 0;
        this.offset = 0;
        this.skip = 0;
      }
      this.setState('reconnecting');
      const delay = Math.max(BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)], (this.holdUntil || 0) - Date.now());
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = setTimeout(() => this.connectNow(), this.lost ? 0 : delay);
    };
  }

  onSessionFrame(msg) {
    const reattached = this.sessionId !== null && this.sessionId === msg.id;
    if (!reattached && (this.lost || this.sessionId !== null)) {
      // A fresh shell where the person expected the old one: say so, on its own line.
      this.offset = 0;
      this.term.write('\r\n\x1b[33m[previous session ended; this is a new shell]\x1b[0m\r\n');
    }
    this.lost = false;
    // The gateway says where in the session's output its stream starts.
    // Bytes before our offset we already have (skip them); bytes between
    // our offset and its start are gone from its replay buffer (say so).
    if (typeof msg.offset === 'number') {
      this.skip = reattached && msg.offset < this.offset ? this.offset - msg.offset : 0;
      if (reattached && msg.offset > this.offset) {
        const note = this.restoring ? `${msg.offset} bytes of older output are no longer kept` : `${msg.offset - this.offset} bytes of output were lost while disconnected`;
        this.term.write(`\x1b[33m[${note}]\x1b[0m\r\n`);
      }
      this.offset = msg.offset;
    } else {
      this.skip = 0;
    }
    this.restoring = false;
    this.sessionId = msg.id;
    this.failures = 0;
    this.setState('connected');
    this.onSession(this);
    this.flushPending();
    // The pane may have changed size while we were away.
    this.sendControl({ type: 'resize', cols: this.term.cols, rows: this.term.rows });
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

  /** Ends the shell (SIGHUP to its foreground group, as closing a terminal
   * window does) and lets go of the tab. */
  hangUp() {
    if (!this.exited) this.sendControl({ type: 'signal', signal: 1 });
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

/** The terminal tabs of the current project: shells beside its files and in
 * its running containers, as many as wanted, each closeable. */
export class Terminals {
  /** onRemember(project, terms, activeIndex): the set of sessions changed. */
  constructor({ onRemember } = {}) {
    this.tabs = [];
    this.active = null;
    this.project = null;
    this.onRemember = onRemember || (() => {});
    this.running = [];
    this.dismissed = new Set(); // container tabs closed by hand
    $('term-new').addEventListener('click', () => this.newTerminal());
  }

  /** Points the tabs at a project (null: none), reattaching to the sessions
   * it remembers. Sessions of the project left behind stay alive in the
   * gateway for its keep window. */
  setProject(project, memory = {}) {
    if (project === this.project) return;
    for (const t of this.tabs) t.dispose();
    this.tabs = [];
    this.active = null;
    this.project = project;
    this.running = [];
    this.dismissed.clear();
    $('term-new').disabled = !project;
    if (project) {
      const terms = Array.isArray(memory.terms) ? memory.terms : [];
      for (const m of terms) {
        if (!m || typeof m.session !== 'string') continue;
        this.addTab({ container: m.container || '', label: m.label, sessionId: m.session });
      }
      if (!this.tabs.some((t) => !t.container)) this.addTab({ container: '', first: true });
      const idx = Number.isInteger(memory.activeTerm) ? memory.activeTerm : 0;
      this.activate(this.tabs[idx] || this.tabs[0], { focus: false });
    }
    this.render();
  }

  nextLabel(container) {
    if (container) {
      const n = this.tabs.filter((t) => t.container === container).length;
      return n ? `${container} ${n + 1}` : container;
    }
    let i = 1;
    while (this.tabs.some((t) => t.label === `shell ${i}`)) i++;
    return `shell ${i}`;
  }

  addTab({ container = '', label, sessionId = null }) {
    const t = new TermSession({
      project: this.project,
      container,
      label: label || this.nextLabel(container),
      sessionId,
      onState: () => this.render(),
      onSession: () => this.remember(),
    });
    // Only the active tab's panel shows.
    t.el.hidden = true;
    this.tabs.push(t);
    return t;
  }

  /** Running containers get a shell tab when they start running (unless
   * closed by hand); tabs of containers no longer running close. */
  syncContainers(project, running) {
    if (project !== this.project) return;
    const before = new Set(this.running);
    this.running = running;
    for (const t of [...this.tabs]) {
      if (t.container && !running.includes(t.container)) this.close(t, { hangUp: false });
    }
    for (const c of running) {
      if (!before.has(c)) this.dismissed.delete(c);
      if (!this.dismissed.has(c) && !this.tabs.some((t) => t.container === c)) this.addTab({ container: c });
    }
    if (!this.active && this.tabs[0]) this.activate(this.tabs[0], { focus: false });
    this.render();
    this.remember();
  }

  async newTerminal() {
    if (!this.project) return;
    let container = '';
    if (this.running.length) {
      const v = await dialog({
        title: 'New terminal',
        body: 'Where should the shell run?',
        actions: [
          { label: 'Cancel', value: 'cancel' },
          ...this.running.map((c) => ({ label: `In container ${c}`, value: `c:${c}` })),
          { label: 'Beside the project files', value: 'project', kind: 'primary' },
        ],
      });
      if (!v) return;
      container = v.startsWith('c:') ? v.slice(2) : '';
    }
    const t = this.addTab({ container });
    this.activate(t, { focus: true });
    this.remember();
  }

  close(t, { hangUp = true } = {}) {
    if (hangUp) t.hangUp();
    if (t.container && hangUp) this.dismissed.add(t.container);
    const i = this.tabs.indexOf(t);
    t.dispose();
    this.tabs = this.tabs.filter((x) => x !== t);
    if (this.active === t) {
      this.active = null;
      const next = this.tabs[i] || this.tabs[i - 1];
      if (next) this.activate(next, { focus: false });
    }
    this.render();
    this.remember();
  }

  activate(t, { focus = false } = {}) {
    if (!t) return;
    this.active = t;
    for (const x of this.tabs) x.el.hidden = x !== t;
    t.connect();
    requestAnimationFrame(() => {
      t.refit();
      if (focus) t.term.focus();
    });
    this.render();
    this.remember();
  }

  remember() {
    if (!this.project) return;
    const terms = this.tabs.filter((t) => t.sessionId && !t.exited).map((t) => ({ session: t.sessionId, container: t.container, label: t.label }));
    const remembered = this.tabs.filter((t) => t.sessionId && !t.exited);
    this.onRemember(this.project, terms, Math.max(0, remembered.indexOf(this.active)));
  }

  /** Refits the visible terminal (its pane was shown or resized). */
  refit() {
    if (this.active) requestAnimationFrame(() => this.active && this.active.refit());
  }

  render() {
    $('terms-empty').hidden = this.tabs.length > 0;
    const bar = $('term-tabs');
    const focused = bar.contains(document.activeElement) ? document.activeElement.id : null;
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
            'aria-label': `${t.container ? `Shell in container ${t.container}` : 'Project shell'} ${t.label} (${t.state})`,
            title: `${t.label}: ${t.state} · Delete closes`,
            dataset: { container: t.container, label: t.label },
            tabindex: t === this.active ? '0' : '-1',
            onclick: (ev) => {
              if (ev.target.closest('.x')) this.close(t);
              else this.activate(t, { focus: true });
            },
            onauxclick: (ev) => {
              if (ev.button === 1) this.close(t);
            },
            onkeydown: (ev) => {
              // The tabs pattern: arrows move between tabs, Tab moves on to the panel.
              const i = this.tabs.indexOf(t);
              let next = null;
              if (ev.key === 'ArrowRight') next = this.tabs[(i + 1) % this.tabs.length];
              else if (ev.key === 'ArrowLeft') next = this.tabs[(i - 1 + this.tabs.length) % this.tabs.length];
              else if (ev.key === 'Home') next = this.tabs[0];
              else if (ev.key === 'End') next = this.tabs[this.tabs.length - 1];
              else if (ev.key === 'Delete') {
                ev.preventDefault();
                this.close(t);
                const a = this.active;
                if (a) requestAnimationFrame(() => document.getElementById(`${a.id}-tab`)?.focus());
                return;
              }
              if (!next) return;
              ev.preventDefault();
              this.activate(next, { focus: false });
              requestAnimationFrame(() => document.getElementById(`${next.id}-tab`)?.focus());
            },
          },
          h('span', { class: `dot ${t.state}`, 'aria-hidden': 'true' }),
          h('span', { class: 'tlabel' }, t.label),
          h('span', { class: 'x', 'aria-hidden': 'true', title: 'Close' }, '×'),
        ),
      ),
    );
    if (focused) document.getElementById(focused)?.focus();
    const st = $('term-state');
    const a = this.active;
    st.textContent = a ? a.state : '';
    st.className = 'badge ' + (a && a.state === 'connected' ? 'ok' : a && a.state === 'exited' ? '' : 'warn');
  }
}
