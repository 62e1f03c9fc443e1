// Starts the real gateway binary (target/debug/gateway, built by test.sh) on a
// free loopback port with a fresh data dir, serving the built page, and reads
// its `listening on` line and the demo URL with the admin token from stdout.

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, createWriteStream, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const ARTIFACTS = path.join(ROOT, 'tests', 'artifacts');

export async function startGateway({ timeoutMs = 30_000 } = {}) {
  const bin = process.env.GATEWAY_BIN || path.join(ROOT, 'target', 'debug', 'gateway');
  if (!existsSync(bin)) throw new Error(`gateway binary not found at ${bin}: run cargo build --workspace --bins first`);
  const webDir = path.join(ROOT, 'web-demo', 'dist');
  if (!existsSync(path.join(webDir, 'index.html'))) throw new Error(`${webDir} is not built: run npm run build in web-demo`);
  const dataDir = mkdtempSync(path.join(tmpdir(), 'devgate-browser-'));
  mkdirSync(ARTIFACTS, { recursive: true });
  const log = createWriteStream(path.join(ARTIFACTS, 'gateway.log'));
  const child = spawn(
    bin,
    [
      '--listen', '127.0.0.1:0',
      '--data-dir', dataDir,
      '--web-dir', webDir,
      '--templates-dir', path.join(ROOT, 'templates'),
    ],
    {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
    },
  );
  child.stderr.pipe(log, { end: false });
  // If this process dies without stop() (a crash, Ctrl-C), take the gateway
  // with it; its agents follow it (they die with their parent).
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);

  let out = '';
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`gateway did not print its URLs in ${timeoutMs} ms; stdout so far:\n${out}`)), timeoutMs);
    const check = () => {
      const listen = out.match(/listening on (http:\/\/\S+)/);
      const demo = out.match(/(https?:\/\/\S+[?&]token=[A-Za-z0-9._-]+)/);
      if (listen && demo) {
        clearTimeout(timer);
        resolve({ base: listen[1].replace(/\/$/, ''), demoUrl: demo[1] });
      }
    };
    child.stdout.on('data', (chunk) => {
      log.write(chunk);
      out += chunk.toString();
      check();
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`gateway exited early (code ${code}, signal ${signal}); stdout:\n${out}`));
    });
  });
  const { base, demoUrl } = await ready;
  const token = new URL(demoUrl).searchParams.get('token');

  return {
    base,
    demoUrl,
    token,
    dataDir,
    /** fetch against the gateway with the admin token. */
    api(pathname, init = {}) {
      return fetch(base + pathname, {
        ...init,
        headers: { Authorization: `Bearer ${token}`, ...(init.headers || {}) },
      });
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(t);
      }
      process.removeListener('exit', killOnExit);
      log.end();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
