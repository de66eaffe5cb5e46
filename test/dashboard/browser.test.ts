// The dashboard page in a real browser: Debian's chromium driven by playwright-core (never a
// downloaded browser), against a `trustix dashboard` process following real `trustix serve` logs.
// Screenshots go to a temporary directory, printed at the end.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import { cleanup, tempDir } from '../fixtures/server-helpers.js';
import { HOSTILE_NAME, SHARED, SPLIT, startLogs, type TestLog, TIE, trustToml, value } from './fixtures.js';

const CHROMIUM = '/usr/bin/chromium';
const MAIN = new URL('../../src/cli/main.ts', import.meta.url).pathname;

/** Starts `trustix dashboard ARGS`; resolves with its URL once it printed `ready`. */
function startDashboard(args: string[]): Promise<{ proc: ChildProcess; url: string }> {
  const proc = spawn(process.execPath, ['--import', 'tsx', MAIN, 'dashboard', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
  });
  return new Promise((resolve, reject) => {
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^listening (\S+)\nready$/m.exec(out);
      if (m) resolve({ proc, url: m[1] });
    });
    proc.on('exit', (code) => reject(new Error(`trustix dashboard exited (${code}):\n${out}\n${err}`)));
  });
}

describe('dashboard in a browser', {
  skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed`,
}, () => {
  let dir: string;
  let shots: string;
  let logs: TestLog[];
  let dashboard: { proc: ChildProcess; url: string };
  let browser: BrowserContext;
  let page: Page;
  const problems: string[] = [];

  before(async () => {
    dir = tempDir('trustix-dash-browser-');
    shots = mkdtempSync(join(tmpdir(), 'trustix-dashboard-shots-'));
    logs = await startLogs(dir);
    const config = join(dir, 'trust.toml');
    writeFileSync(config, trustToml(logs));
    dashboard = await startDashboard([
      '--config',
      config,
      '--listen',
      '127.0.0.1:0',
      '--state',
      join(dir, 'state'),
      '--interval',
      '0.3',
    ]);
    // a fresh profile each run
    browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'trustix-chromium-')), {
      executablePath: CHROMIUM,
      viewport: { width: 1100, height: 900 },
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
    page = browser.pages()[0] ?? (await browser.newPage());
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()}`));
    await page.goto(dashboard.url);
  });

  after(async () => {
    await browser?.close();
    dashboard?.proc.kill('SIGTERM');
    await Promise.all((logs ?? []).map((l) => l.server.stop()));
    cleanup(dir);
    if (shots) console.log(`# screenshots in ${shots}`);
  });

  test('overview: every log, its state and size; a hostile name is shown as text', async () => {
    await page.waitForFunction(() => document.querySelectorAll('#logs tbody .state.ok').length === 3);
    const rows = await page.$$eval('#logs tbody tr', (trs) =>
      trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent ?? '')),
    );
    assert.equal(rows.length, 3);
    assert.deepEqual(
      rows.map((r) => r[2]),
      ['7', '6', '5'],
    );
    const names = await page.$$eval('#logs .name', (els) => els.map((e) => e.textContent));
    assert.deepEqual(names, ['alpha', 'beta', HOSTILE_NAME]);
    assert.equal(await page.$$eval('img', (els) => els.length), 0, 'the name was not parsed as markup');
    assert.equal(await page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned), undefined);
    assert.equal(await page.$$eval('#logs svg.chart polyline', (els) => els.length), 3);
    await page.screenshot({ path: join(shots, 'overview.png') });
  });

  test('agreement: shares, matrix, disagreeing keys sortable', async () => {
    await page.waitForFunction(() => document.getElementById('dis-total')?.textContent === '(2)');
    const summary = await page.textContent('#agree-summary');
    assert.match(summary ?? '', /6 keys .* 66\.7% all agree, 83\.3% decided .* 16\.7% undecided/);
    assert.equal(await page.$$eval('#matrix tbody tr', (trs) => trs.length), 3);
    const keys = () => page.$$eval('#disagreeing tbody .key', (els) => els.map((e) => e.textContent));
    assert.deepEqual(await keys(), [SPLIT, TIE]);
    await page.click('#disagreeing thead button.sort >> text=Key');
    await page.waitForFunction(
      (first) => document.querySelector('#disagreeing tbody .key')?.textContent === first,
      TIE,
    );
    assert.deepEqual(await keys(), [TIE, SPLIT]);
    await page.locator('#agreement').screenshot({ path: join(shots, 'agreement.png') });
  });

  test('search: a key that is decided, and one that is not', async () => {
    await page.fill('#q', SPLIT);
    await page.click('#search-form button');
    await page.waitForSelector('#result .verdict');
    assert.equal(await page.getAttribute('#result .verdict', 'class'), 'verdict decided');
    assert.match((await page.textContent('#result .verdict')) ?? '', new RegExp(value(SPLIT)));
    const answers = await page.$$eval('#result tbody tr', (trs) =>
      trs.map((tr) => tr.children[1].textContent),
    );
    assert.deepEqual(answers, ['agrees', 'agrees', 'disagrees']);
    const href = await page.getAttribute('#result a[download]', 'href');
    assert.match(href ?? '', /^\/api\/evidence\?/);
    await page.screenshot({ path: join(shots, 'search-decided.png'), fullPage: true });

    await page.fill('#q', TIE);
    await page.click('#search-form button');
    await page.waitForFunction(() =>
      document.querySelector('#result .verdict')?.classList.contains('undecided'),
    );
    assert.match((await page.textContent('#result .reason')) ?? '', /percentage/);
  });

  test('package sets: upload a file of store paths and see the figures of just that set', async () => {
    const name = '<img src=x onerror="window.__pwned=2"> iso';
    const paths = [SHARED[0], SPLIT, TIE, '/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-hello-2.12'];
    await page.fill('#set-name', name);
    await page.setInputFiles('#set-file', {
      name: 'closure.txt',
      mimeType: 'text/plain',
      buffer: Buffer.from(`${paths.join('\n')}\n`),
    });
    await page.click('#set-form button[type=submit]');
    await page.waitForSelector('#set-summary');
    assert.match((await page.textContent('#set-message')) ?? '', /: 4 paths\./);
    const row = await page.$$eval('#set-list tbody tr', (trs) =>
      trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent ?? '')),
    );
    assert.equal(row.length, 1);
    assert.deepEqual(row[0].slice(1, 6), ['4', '3 (75.0%)', '1 (25.0%)', '2 (50.0%)', '1 (25.0%)']);
    assert.equal(await page.textContent('#set-list tbody button.name'), name);
    assert.match(
      (await page.textContent('#set-summary')) ?? '',
      /1 of 4 paths all agree; 3 are held by two logs or more, 1 are not/,
    );
    const keys = await page.$$eval('#set-disagreeing tbody .key', (els) => els.map((e) => e.textContent));
    assert.deepEqual(keys, [SPLIT, TIE]);
    assert.equal(await page.$$eval('#set-list svg.chart polyline', (els) => els.length), 2);
    assert.equal(await page.$$eval('img', (els) => els.length), 0, 'the set name was not parsed as markup');
    assert.equal(await page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned), undefined);
    await page.locator('#sets').screenshot({ path: join(shots, 'sets.png') });
    // a file that is not a list of paths is refused, and the page says why
    await page.fill('#set-name', 'sizes');
    await page.setInputFiles('#set-file', {
      name: 'sizes.txt',
      mimeType: 'text/plain',
      buffer: Buffer.from(`${paths[3]}\t123456\n`),
    });
    const before = problems.length;
    await page.click('#set-form button[type=submit]');
    await page.waitForFunction(() =>
      /Upload failed: line 1/.test(document.getElementById('set-message')?.textContent ?? ''),
    );
    // the browser logs the refused upload (400) as a failed resource: expected here, and only that
    assert.deepEqual(
      problems.splice(before).map((p) => /status of 400/.test(p)),
      [true],
    );
  });

  test('a log going down while the page is open shows as unreachable', async () => {
    await logs[1].server.stop();
    await page.waitForFunction(
      () => document.querySelectorAll('#logs tbody .state.unreachable').length === 1,
      null,
      {
        timeout: 15_000,
      },
    );
    const row = await page.$$eval('#logs tbody tr', (trs) => trs[1].textContent ?? '');
    assert.match(row, /unreachable/);
    assert.match(row, /http\.network/);
    await page.screenshot({ path: join(shots, 'log-down.png'), fullPage: true });
  });

  test('readable on a phone: the page itself does not scroll sideways', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForFunction(() => document.documentElement.scrollWidth <= 390);
    await page.screenshot({ path: join(shots, 'phone.png'), fullPage: true });
    await page.setViewportSize({ width: 1100, height: 900 });
  });

  test('no console errors, failed requests or page errors', () => {
    assert.deepEqual(problems, []);
  });
});
