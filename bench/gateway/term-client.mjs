// A browser-like terminal client for bench-gateway: measures terminal output
// throughput and keystroke echo through one terminal server, speaking its
// own protocol the way its web page does, and prints one JSON line.
//
//   node term-client.mjs --proto devgate|wetty|terminado --url URL
//        [--token T] --mode throughput|echo [--file PATH] [--keys N]
//
// devgate: the gateway's terminal WebSocket (API.md "Terminal"), opened as
//   web-demo does (subprotocols `devgate` + `devgate.bearer.<token>`,
//   binaryType `arraybuffer`): one binary frame is one message, as xterm.js's
//   attach addon reads it; keystrokes go out as binary frames.
// wetty: socket.io (websocket transport), `data` events of text out, `input`
//   events in, and the `commit` acknowledgements its page sends every
//   256 KiB (wetty pauses the PTY past 2 MiB unacknowledged).
// terminado: a WebSocket of JSON arrays, ["stdout", text] out and
//   ["stdin", text] in.
//
// Every protocol gets the same work per message: count the bytes and look
// for the end marker (throughput) or the echoed key (echo).
//
// Throughput: `cat FILE; echo __DO""NE__` is typed at the shell's prompt;
// the time runs from that keystroke to the `__DONE__` the shell prints after
// the file. Echo: `a` typed N times (Ctrl-U every 50 keeps the line short),
// each timed from its send to the first output that holds it.

import { writeSync } from 'node:fs';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';
import { io } from 'socket.io-client';

const { values: opt } = parseArgs({
  options: {
    proto: { type: 'string' },
    url: { type: 'string' },
    token: { type: 'string', default: '' },
    mode: { type: 'string', default: 'throughput' },
    file: { type: 'string', default: '' },
    keys: { type: 'string', default: '500' },
  },
});

const MARKER = '__DONE__';
const MARKER_BYTES = Buffer.from(MARKER);
const WETTY_ACK = 262144;

function fail(msg) {
  writeSync(2, `term-client: ${msg}\n`);
  process.exit(1);
}

/**
 * Opens a terminal. Resolves to { send(text), close() } once the shell runs;
 * every output chunk (a Uint8Array or a string) goes to `onChunk`.
 */
function open(onChunk) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no terminal within 30 s')), 30000);
    const ready = (t) => {
      clearTimeout(timer);
      resolve(t);
    };
    if (opt.proto === 'devgate') {
      const ws = new WebSocket(opt.url, ['devgate', `devgate.bearer.${opt.token}`]);
      ws.binaryType = 'arraybuffer';
      ws.on('message', (data, isBinary) => {
        if (!isBinary) {
          const msg = JSON.parse(data.toString());
          if (msg.type === 'session') {
            ws.send(JSON.stringify({ type: 'resize', cols: 80, rows: 24 }));
            ready({ send: (s) => ws.send(Buffer.from(s)), close: () => ws.close() });
          }
          return;
        }
        onChunk(new Uint8Array(data));
      });
      ws.on('error', reject);
      ws.on('close', () => onChunk(null));
    } else if (opt.proto === 'wetty') {
      const u = new URL(opt.url);
      const socket = io(u.origin, { path: u.pathname, transports: ['websocket'], reconnection: false });
      let unacked = 0;
      socket.on('login', () => {
        socket.emit('resize', { cols: 80, rows: 24 });
        ready({ send: (s) => socket.emit('input', s), close: () => socket.close() });
      });
      socket.on('data', (s) => {
        unacked += s.length;
        if (unacked >= WETTY_ACK) {
          unacked -= WETTY_ACK;
          socket.emit('commit', WETTY_ACK);
        }
        onChunk(s);
      });
      socket.on('connect_error', reject);
      socket.on('logout', () => onChunk(null));
      socket.on('disconnect', () => onChunk(null));
    } else if (opt.proto === 'terminado') {
      const ws = new WebSocket(opt.url);
      ws.on('message', (data) => {
        const msg = JSON.parse(data.toString());
        if (msg[0] === 'setup') {
          ws.send(JSON.stringify(['set_size', 24, 80]));
          ready({ send: (s) => ws.send(JSON.stringify(['stdin', s])), close: () => ws.close() });
        } else if (msg[0] === 'stdout') {
          onChunk(msg[1]);
        } else if (msg[0] === 'disconnect') {
          onChunk(null);
        }
      });
      ws.on('error', reject);
      ws.on('close', () => onChunk(null));
    } else {
      reject(new Error(`unknown --proto ${opt.proto}`));
    }
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let handler = () => {};
let lastChunkAt = performance.now();
function onChunk(c) {
  if (c === null) {
    handler(null);
    return;
  }
  lastChunkAt = performance.now();
  handler(c);
}

/** Waits until no output came for `ms`. */
async function quiet(ms) {
  handler = () => {};
  lastChunkAt = performance.now();
  while (performance.now() - lastChunkAt < ms) await sleep(ms / 5);
}

const includes = (c, s, bytes) => (typeof c === 'string' ? c.includes(s) : Buffer.from(c.buffer, c.byteOffset, c.byteLength).indexOf(bytes) >= 0);

async function throughput(t) {
  // The echoed command line holds `__DO""NE__`, never the marker itself.
  const cmd = `cat ${opt.file}; echo __DO""NE__\r`;
  let bytes = 0;
  let frames = 0;
  let tail = '';
  const done = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no marker within 120 s (${bytes} bytes)`)), 120000);
    handler = (c) => {
      if (c === null) {
        clearTimeout(timer);
        reject(new Error(`terminal ended after ${bytes} bytes`));
        return;
      }
      const n = typeof c === 'string' ? c.length : c.byteLength;
      bytes += n;
      frames++;
      // The marker may straddle two chunks: look at the joint too.
      const edge = tail + (typeof c === 'string' ? c.slice(0, MARKER.length) : Buffer.from(c.buffer, c.byteOffset, Math.min(n, MARKER.length)).toString('latin1'));
      if (includes(c, MARKER, MARKER_BYTES) || edge.includes(MARKER)) {
        clearTimeout(timer);
        resolve();
        return;
      }
      tail = typeof c === 'string' ? c.slice(-MARKER.length) : Buffer.from(c.buffer, c.byteOffset + Math.max(0, n - MARKER.length), Math.min(n, MARKER.length)).toString('latin1');
    };
  });
  const t0 = performance.now();
  t.send(cmd);
  await done;
  const secs = (performance.now() - t0) / 1000;
  return { bytes, secs, frames, mb_s: bytes / 1e6 / secs };
}

async function echo(t) {
  const keys = Number(opt.keys);
  const lat = [];
  for (let i = 0; i < keys; i++) {
    if (i > 0 && i % 50 === 0) {
      t.send('\x15');
      await quiet(100);
    }
    const got = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no echo within 10 s')), 10000);
      handler = (c) => {
        if (c === null) {
          clearTimeout(timer);
          reject(new Error('terminal ended'));
        } else if (includes(c, 'a', Buffer.from('a'))) {
          clearTimeout(timer);
          resolve(performance.now());
        }
      };
    });
    const t0 = performance.now();
    t.send('a');
    lat.push((await got) - t0);
  }
  lat.sort((a, b) => a - b);
  const pct = (p) => lat[Math.min(lat.length - 1, Math.round((p / 100) * (lat.length - 1)))];
  return { keys: lat.length, p50_ms: pct(50), p99_ms: pct(99), max_ms: lat[lat.length - 1] };
}

try {
  const t = await open(onChunk);
  // Let the prompt (and anything the shell prints first) arrive.
  await quiet(500);
  const result = opt.mode === 'echo' ? await echo(t) : await throughput(t);
  // Written at once: process.exit() would cut an asynchronous pipe write.
  writeSync(1, `${JSON.stringify(result)}\n`);
  handler = () => {};
  t.close();
  // socket.io and ws keep timers; the answer is out, so leave now.
  process.exit(0);
} catch (e) {
  fail(e?.stack || String(e));
}
