// A browser-like WebSocket client for bench-gateway's "WebSocket echo
// through the proxy" part: one connection (the `ws` package with its
// defaults, as a page's `new WebSocket(url)`), N text messages sent one at
// a time, each timed from its send to its echo. Prints one JSON line:
// {"n", "p50_ms", "p99_ms"}.
//
//   node ws-echo-client.mjs --url ws://127.0.0.1:PORT/ --host HOST [--n N] [--size BYTES]

import { writeSync } from 'node:fs';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    host: { type: 'string' },
    n: { type: 'string', default: '2000' },
    size: { type: 'string', default: '64' },
  },
});
const n = Number(opt.n);
const warmup = 100;
const message = 'x'.repeat(Number(opt.size));

function fail(msg) {
  writeSync(2, `ws-echo-client: ${msg}\n`);
  process.exit(1);
}

const timer = setTimeout(() => fail('no answer within 60 s'), 60000);
const ws = new WebSocket(opt.url, { headers: { Host: opt.host } });
const times = [];
let sent = 0n;
let count = 0;
ws.on('error', (e) => fail(e.message));
ws.on('unexpected-response', (_req, res) => fail(`status ${res.statusCode}`));
ws.on('open', () => {
  sent = process.hrtime.bigint();
  ws.send(message);
});
ws.on('message', (data) => {
  const now = process.hrtime.bigint();
  if (data.toString() !== message) fail('the echo differs from the message');
  count += 1;
  if (count > warmup) times.push(Number(now - sent) / 1e6);
  if (count < warmup + n) {
    sent = process.hrtime.bigint();
    ws.send(message);
    return;
  }
  clearTimeout(timer);
  times.sort((a, b) => a - b);
  const pct = (p) => times[Math.min(times.length - 1, Math.round((p / 100) * (times.length - 1)))];
  process.stdout.write(JSON.stringify({ n: times.length, p50_ms: pct(50), p99_ms: pct(99) }) + '\n');
  ws.close();
});
