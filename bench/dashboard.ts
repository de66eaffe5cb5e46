// npm run bench:dashboard: the dashboard at scale. Builds LOGS logs of ENTRIES entries each (the
// same keys in every log; in each log 1% of the values differ), serves each with a `trustix
// serve` process, then times: following them all from scratch (verified, indexed, the agreement
// figures kept as it goes), the overview and agreement API calls (first and cached), a package set
// of SET keys (upload, figures), the page load in Debian's chromium (skipped without
// /usr/bin/chromium), and a restart that resumes from the index and answers from the kept figures.
// One JSON line per figure.
// Knobs: TRUSTIX_BENCH_DASH_LOGS (default 5), TRUSTIX_BENCH_DASH_ENTRIES (default 1000000),
// TRUSTIX_BENCH_DASH_SET (keys of the package set, default 2000, about a NixOS ISO closure).
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { chromium } from 'playwright-core';
import type { Entry } from '../src/core/entry.js';
import { sha256 } from '../src/core/hash.js';
import { Dashboard } from '../src/dashboard/app.js';
import { parseDecideConfig } from '../src/decide/config.js';
import { Log } from '../src/log/log.js';
import { serveConfig } from './common.js';

const LOGS = Number(process.env.TRUSTIX_BENCH_DASH_LOGS ?? 5);
const ENTRIES = Number(process.env.TRUSTIX_BENCH_DASH_ENTRIES ?? 1_000_000);
const SET = Number(process.env.TRUSTIX_BENCH_DASH_SET ?? 2000);
const BATCH = 10_000;
const CHROMIUM = '/usr/bin/chromium';

function emit(name: string, value: number, unit: string, extra: Record<string, unknown> = {}): void {
  console.log(
    JSON.stringify({
      name,
      value: Math.round(value * 1000) / 1000,
      unit,
      logs: LOGS,
      entries: ENTRIES,
      ...extra,
    }),
  );
}

const keyOf = (i: number) =>
  sha256(Buffer.from(`key ${i}`))
    .toString('hex')
    .slice(0, 32);

function entries(log: number, from: number, n: number): Entry[] {
  const out: Entry[] = [];
  for (let i = from; i < from + n; i++) {
    const differs = i % 100 === log;
    out.push({
      protocol: 'nix',
      key: Buffer.from(keyOf(i)),
      value: sha256(Buffer.from(`value ${i}${differs ? ` of ${log}` : ''}`)),
      metadata: Buffer.alloc(0),
    });
  }
  return out;
}

const dir = mkdtempSync(join(tmpdir(), 'trustix-bench-dash-'));
const servers: ChildProcess[] = [];
try {
  const logs: Array<{ name: string; url: string; vkey: string }> = [];
  const t0 = performance.now();
  for (let l = 0; l < LOGS; l++) {
    const logDir = join(dir, `log${l}`);
    const log = await Log.create(logDir, `bench${l}.example/log`, { maxBatch: BATCH, batchDelayMs: 1 });
    for (let i = 0; i < ENTRIES; i += BATCH) await log.submit(entries(l, i, Math.min(BATCH, ENTRIES - i)));
    const vkey = log.vkey;
    await log.close();
    const config = join(dir, `serve${l}.toml`);
    writeFileSync(config, `[[log]]\nid = "default"\norigin = "bench${l}.example/log"\ndir = "${logDir}"\n`);
    const s = await serveConfig(config);
    servers.push(s.proc);
    logs.push({ name: `builder${l}`, url: `${s.url}/logs/default/`, vkey });
  }
  emit('dashboard_build_logs', (performance.now() - t0) / 1000, 's');
  const trust = parseDecideConfig(
    logs.map((l) => `[[log]]\nname = "${l.name}"\nurl = "${l.url}"\nvkey = "${l.vkey}"\n`).join('\n'),
  );
  const state = join(dir, 'state');
  let dash = new Dashboard(trust, { stateDir: state });
  let t = performance.now();
  await dash.follower.pollAll();
  const follow = (performance.now() - t) / 1000;
  const sizes = dash.follower.statuses().map((s) => `${s.state}:${s.size}`);
  emit('dashboard_follow_all', follow, 's', { entries_per_s: Math.round((LOGS * ENTRIES) / follow), sizes });

  const timed = async (name: string, url: string) => {
    const t1 = performance.now();
    const r = await dash.app.inject({ method: 'GET', url });
    if (r.statusCode !== 200) throw new Error(`${url}: ${r.statusCode} ${r.body}`);
    emit(name, performance.now() - t1, 'ms', { bytes: r.body.length });
  };
  await timed('dashboard_api_overview_first', '/api/overview');
  await timed('dashboard_api_overview', '/api/overview');
  await timed('dashboard_api_agreement_first', '/api/agreement');
  await timed('dashboard_api_agreement_cached', '/api/agreement?sort=-logs&page=3');

  // a package set: every (ENTRIES / SET)-th key (hex keys, so given as keys, not store paths)
  const step = Math.max(1, Math.floor(ENTRIES / SET));
  const paths: string[] = [];
  for (let i = 0; i < ENTRIES && paths.length < SET; i += step) paths.push(keyOf(i));
  const t1 = performance.now();
  const up = await dash.app.inject({
    method: 'PUT',
    url: '/api/sets/closure',
    headers: { 'content-type': 'text/plain' },
    body: `${paths.join('\n')}\n`,
  });
  if (up.statusCode !== 201) throw new Error(`set upload: ${up.statusCode} ${up.body}`);
  emit('dashboard_api_set_upload', performance.now() - t1, 'ms', { keys: paths.length });
  await dash.sets.recordAll();
  await timed('dashboard_api_set', '/api/sets/closure');

  if (existsSync(CHROMIUM)) {
    const url = await dash.app.listen({ host: '127.0.0.1', port: 0 });
    const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'trustix-chromium-')), {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    const page = browser.pages()[0] ?? (await browser.newPage());
    t = performance.now();
    await page.goto(url);
    await page.waitForFunction(() => (document.getElementById('dis-total')?.textContent ?? '') !== '');
    emit('dashboard_page_load_first', performance.now() - t, 'ms', {
      note: 'a fresh browser, agreement computed',
    });
    t = performance.now();
    await page.reload();
    await page.waitForFunction(() => (document.getElementById('dis-total')?.textContent ?? '') !== '');
    emit('dashboard_page_load', performance.now() - t, 'ms', { note: 'reload, agreement computed' });
    await browser.close();
  }

  await dash.close();
  dash = new Dashboard(trust, { stateDir: state });
  await timed('dashboard_api_agreement_after_restart', '/api/agreement');
  t = performance.now();
  await dash.follower.pollAll();
  emit('dashboard_resume_poll', performance.now() - t, 'ms');
  await dash.close();
} finally {
  for (const p of servers) p.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 500));
  rmSync(dir, { recursive: true, force: true });
}
