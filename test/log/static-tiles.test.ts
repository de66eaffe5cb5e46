// `trustix publish-tiles`: a log's tlog-tiles resources as files, served by a plain static web server
// (python3 -m http.server) and read by the same spec-only client as the node
// (test/fixtures/tlog-tiles-client.ts), over an LMDB log directory and over PostgreSQL.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Entry } from '../../src/core/entry.js';
import { generateKey } from '../../src/core/note.js';
import { Log } from '../../src/log/log.js';
import { PgLogStore } from '../../src/storage/postgres/postgres.js';
import { findPostgres, type PgCluster, startPostgres } from '../fixtures/postgres.js';
import { cleanup, runCli, tempDir } from '../fixtures/server-helpers.js';
import { checkTlogTiles } from '../fixtures/tlog-tiles-client.js';

const ORIGIN = 'static.test/log';
const MAIN = new URL('../../src/cli/main.ts', import.meta.url).pathname;
const python = spawnSync('python3', ['--version']).status === 0;

let counter = 0;
function entries(n: number): Entry[] {
  return Array.from({ length: n }, () => ({
    protocol: 'nix',
    key: Buffer.from(`key-${counter++}`),
    value: Buffer.alloc(32, counter % 251),
    metadata: Buffer.alloc(0),
  }));
}

/** Submits `n` entries in one call; the checkpoint note its receipts carry. */
async function append(log: Log, n: number): Promise<string> {
  const receipts = await log.submit(entries(n));
  return receipts[0].checkpoint;
}

/** `python3 -m http.server` over `dir` on a free loopback port: its URL and a stop function. */
async function staticServer(dir: string): Promise<{ url: string; stop: () => void }> {
  const proc: ChildProcess = spawn(
    'python3',
    ['-u', '-m', 'http.server', '0', '--bind', '127.0.0.1', '--directory', dir],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = / port (\d+) /.exec(out);
      if (m) resolve(Number(m[1]));
    });
    proc.once('exit', () => reject(new Error(`http.server exited: ${out}`)));
  });
  return { url: `http://127.0.0.1:${port}/`, stop: () => proc.kill('SIGKILL') };
}

/** The checkpoint file's tree size. */
function publishedSize(out: string): number {
  return Number(readFileSync(join(out, 'checkpoint'), 'utf8').split('\n')[1]);
}

/**
 * Publishes at 300 entries, appends to 900 over several checkpoints, publishes again, and checks the
 * directory through a static server both times: full tiles are not rewritten, the checkpoint moves,
 * and the partial tiles of older checkpoints are there.
 */
async function publishAndGrow(log: Log, vkey: string, source: string[], out: string): Promise<void> {
  const publish = () => runCli(['publish-tiles', ...source, '--to', out]);
  const first = await append(log, 300);
  let r = await publish();
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^published size 300 \(\d+ files\)\n$/);
  const web = await staticServer(out);
  try {
    await checkTlogTiles(web.url, { vkey, origin: ORIGIN, size: 300 });
    const fullTile = join(out, 'tile/0/000');
    const fullBundle = join(out, 'tile/entries/000');
    const before = [statSync(fullTile), statSync(fullBundle)];

    await append(log, 500);
    const middle = await append(log, 50); // 850: its tile 0/003 is still partial at 900
    await append(log, 50);
    r = await publish();
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^published size 900 /);
    assert.equal(publishedSize(out), 900);
    for (const [i, f] of [fullTile, fullBundle].entries()) {
      const now = statSync(f);
      assert.equal(now.ino, before[i].ino, `${f} was rewritten`);
      assert.equal(now.mtimeMs, before[i].mtimeMs, `${f} was rewritten`);
    }
    assert.ok(existsSync(join(out, 'tile/0/003.p/82')), 'the partial tile of the checkpoint at 850');
    await checkTlogTiles(web.url, { vkey, origin: ORIGIN, size: 900, older: [first, middle] });

    // nothing new: nothing written
    r = await publish();
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '');
  } finally {
    web.stop();
  }
}

describe('publish-tiles', { skip: python ? false : 'python3 is not installed' }, () => {
  test('an LMDB log directory, published twice while the log grows, passes the tlog-tiles checks', async () => {
    const dir = tempDir();
    try {
      const log = await Log.create(join(dir, 'log'), ORIGIN, { batchDelayMs: 1 });
      try {
        await publishAndGrow(log, log.vkey, ['--state', join(dir, 'log')], join(dir, 'out'));
      } finally {
        await log.close();
      }
    } finally {
      cleanup(dir);
    }
  });

  test('--follow publishes each new checkpoint until SIGTERM', async () => {
    const dir = tempDir();
    const out = join(dir, 'out');
    const log = await Log.create(join(dir, 'log'), ORIGIN, { batchDelayMs: 1 });
    const proc = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        MAIN,
        'publish-tiles',
        '--state',
        join(dir, 'log'),
        '--to',
        out,
        '--follow',
        '--interval',
        '0.1',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    proc.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
    const waitFor = async (line: string) => {
      while (!stdout.includes(line)) {
        if (proc.exitCode !== null) assert.fail(`publish-tiles exited: ${stderr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    try {
      await waitFor('published size 0 ');
      await append(log, 10);
      await waitFor('published size 10 ');
      await append(log, 290);
      await waitFor('published size 300 ');
      assert.equal(publishedSize(out), 300);
      proc.kill('SIGTERM');
      assert.equal(await exited, 0, stderr);
    } finally {
      proc.kill('SIGKILL');
      await log.close();
      cleanup(dir);
    }
  });

  test('bad input gets a clear error, not a stack trace', async () => {
    const dir = tempDir();
    try {
      const log = await Log.create(join(dir, 'log'), ORIGIN, { batchDelayMs: 1 });
      await log.close();
      const out = join(dir, 'out');
      // another log's checkpoint in the directory
      writeFileSync(join(dir, 'checkpoint'), 'other.example/log\n5\nAAAA\n');
      let r = await runCli(['publish-tiles', '--state', join(dir, 'log'), '--to', dir]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /is a checkpoint of "other.example\/log", not of this log/);
      assert.doesNotMatch(r.stderr, /\n\s+at /);
      r = await runCli(['publish-tiles', '--to', out]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /give exactly one of --storage URL or --state DIR/);
      r = await runCli(['publish-tiles', '--storage', 'mysql://x', '--to', out]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /--storage must be a postgresql:/);
      r = await runCli(['publish-tiles', '--state', join(dir, 'nothing'), '--to', out]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /no log store at/);
      r = await runCli(['publish-tiles', '--help']);
      assert.equal(r.code, 0);
      assert.match(r.stdout, /checkpoint last/);
    } finally {
      cleanup(dir);
    }
  });
});

const pgSkip =
  findPostgres() === undefined ? 'PostgreSQL is not installed (apt-get install postgresql)' : false;

describe('publish-tiles over PostgreSQL', { skip: python ? pgSkip : 'python3 is not installed' }, () => {
  let cluster: PgCluster | undefined;
  before(async () => {
    cluster = await startPostgres();
  });
  after(() => cluster?.stop());

  test('a log database, published twice while the log grows, passes the tlog-tiles checks', async () => {
    const dir = tempDir();
    const url = await cluster!.createDatabase();
    const { skey, vkey } = generateKey(ORIGIN);
    const store = await PgLogStore.open(url, { sequencer: true, leaseMs: 60_000 });
    const log = await Log.createIn(store, ORIGIN, { skey, batchDelayMs: 1 });
    try {
      await publishAndGrow(log, vkey, ['--storage', url], join(dir, 'out'));
    } finally {
      await log.close();
      cleanup(dir);
    }
  });
});
