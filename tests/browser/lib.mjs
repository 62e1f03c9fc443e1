// Shared by the browser tests: Debian's Chromium through playwright-core,
// axe-core on every step (no serious or critical violation allowed),
// screenshots at 400, 820 and 1440 px into tests/artifacts/, a console that
// must stay free of errors (and of tokens), and small waits that poll with a
// deadline.

import { createHmac } from 'node:crypto';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { ARTIFACTS } from './gateway.mjs';

const require = createRequire(import.meta.url);
const AXE_SOURCE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const WAIT = 60_000;
export const WIDTHS = [400, 820, 1440];

export async function launch() {
  mkdirSync(ARTIFACTS, { recursive: true });
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/**
 * A page with its console watched: errors (other than `expected` ones) and
 * any line holding `secret` (the token) are collected for `assertClean()`.
 */
export async function watchedPage(context, { name, secret, expected = [] }) {
  const page = await context.newPage();
  const log = [];
  const errors = [];
  const leaks = [];
  const note = (line, isError) => {
    log.push(`${new Date().toISOString()} ${line}`);
    if (secret && line.includes(secret)) leaks.push(line);
    if (isError && !expected.some((re) => re.test(line))) errors.push(line);
  };
  page.on('console', (m) => note(`${m.type()} ${m.text()} (${m.location().url})`, m.type() === 'error'));
  page.on('pageerror', (e) => note(`uncaught: ${e.message}`, true));
  page.on('websocket', (ws) => note(`websocket ${ws.url()}`, false));
  page.on('requestfailed', (r) => note(`requestfailed ${r.url()} ${r.failure() && r.failure().errorText}`, false));
  page.on('framenavigated', (f) => note(`navigated ${f === page.mainFrame() ? 'main' : 'frame'} ${f.url()}`, false));
  page.on('request', (r) => {
    if (r.isNavigationRequest()) note(`request ${r.method()} ${r.url()}`, false);
  });
  return {
    page,
    log,
    errors,
    leaks,
    save() {
      writeFileSync(path.join(ARTIFACTS, `${name}-console.log`), log.join('\n') + '\n');
    },
  };
}

/** Runs axe-core on the page (not in the preview iframe, another origin);
 * fails on any serious or critical violation. Answers all violations. */
export async function axeCheck(page, step) {
  const has = await page.evaluate(() => typeof window.axe !== 'undefined');
  if (!has) await page.addScriptTag({ content: AXE_SOURCE });
  const result = await page.evaluate(async () => {
    const r = await window.axe.run(document, { iframes: false, resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ') + ' :: ' + (n.failureSummary || '').split('\n').slice(0, 3).join(' ')) }));
  });
  const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(bad, [], `axe found serious/critical violations at ${step}:\n${JSON.stringify(bad, null, 2)}`);
  return result;
}

/** Screenshots of the page at 400, 820 and 1440 px wide (axe checked at
 * each width), leaving it at `restore` wide. Where panes take turns (below
 * 1200 px), `view` picks the one shown. */
export async function shots(page, name, { restore = 1440, height = 900, axe = true, view = null } = {}) {
  for (const w of WIDTHS) {
    await page.setViewportSize({ width: w, height });
    const layout = w >= 1200 ? 'wide' : w >= 760 ? 'medium' : 'narrow';
    await until(page, (l) => document.body.dataset.layout === l, layout);
    // (Files has no tab of its own at medium widths: the sidebar stays.)
    const tab = page.locator(`#views [data-view="${view}"]`);
    if (view && layout !== 'wide' && (await tab.isVisible())) await tab.click();
    // Let the terminals refit and paint.
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    if (axe) await axeCheck(page, `${name} at ${w}px`);
    await page.screenshot({ path: path.join(ARTIFACTS, `${name}-${w}.png`) });
  }
  await page.setViewportSize({ width: restore, height });
  await until(page, (l) => document.body.dataset.layout === l, restore >= 1200 ? 'wide' : restore >= 760 ? 'medium' : 'narrow');
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
}

/** Waits for `fn` (run in the page) to return a truthy value. */
export function until(page, fn, arg, timeout = WAIT) {
  return page.waitForFunction(fn, arg, { timeout, polling: 100 });
}

/** The active terminal's buffer as text, one line per logical line (rows
 * the terminal wrapped are joined back, so a long prompt changes nothing). */
export function terminalText(page) {
  return page.evaluate(() => {
    const t = window.__devgate.terminals.active;
    if (!t) return '';
    const b = t.term.buffer.active;
    const lines = [];
    for (let i = 0; i < b.length; i++) {
      const line = b.getLine(i);
      const text = line.translateToString(true);
      if (line.isWrapped && lines.length > 0) lines[lines.length - 1] += text;
      else lines.push(text);
    }
    return lines.join('\n');
  });
}

export async function waitTerminal(page, re, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let text = '';
  while (Date.now() < deadline) {
    text = await terminalText(page);
    if (re.test(text)) return text;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`terminal never showed ${re}; it shows:\n${text}`);
}

export async function typeInTerminal(page, line) {
  await page.locator('.term:not([hidden]) .xterm').click();
  await page.keyboard.type(line);
  await page.keyboard.press('Enter');
}

/** An HS256 JWT signed with the gateway's secret (read from its data dir). */
export function signToken(gw, claims) {
  const secret = readFileSync(path.join(gw.dataDir, 'secret'), 'utf8').trim();
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64(claims);
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

export function treeItem(page, p) {
  return page.locator(`#tree [role="treeitem"][data-path="${p}"]`);
}

export async function apiText(gw, project, p) {
  const res = await gw.api(`/api/projects/${project}/files/${p}`);
  assert.equal(res.status, 200, `GET ${p}`);
  return res.text();
}
