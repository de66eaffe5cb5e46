// A first start is atomic: SIGKILLed at any moment, or out of disk space at any point, it leaves a
// state directory that the next start completes; leftovers of an unfinished start are cleaned.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statfsSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { generateKey } from '../../src/core/note.js';
import { Log } from '../../src/log/log.js';
import {
  cleanup,
  mountTmpfs,
  runServeExpectingFailure,
  startServer,
  tempDir,
  unmount,
} from '../fixtures/server-helpers.js';

const MAIN = new URL('../../src/cli/main.ts', import.meta.url).pathname;
const TRIALS = Number(process.env.TRUSTIX_FIRST_START_TRIALS ?? 30);

/** Starts a first `serve` and SIGKILLs it `delayMs` after it was spawned (or lets it end first). */
function killFirstStart(state: string, delayMs: number): Promise<void> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', MAIN, 'serve', '--state', state, '--listen', '127.0.0.1:0'],
    {
      stdio: 'ignore',
    },
  );
  const timer = setTimeout(() => child.kill('SIGKILL'), delayMs);
  return new Promise((resolve) =>
    child.on('exit', () => {
      clearTimeout(timer);
      resolve();
    }),
  );
}

/** Starts `serve` normally, checks it answers, stops it. */
async function startsCleanly(state: string): Promise<void> {
  const srv = await startServer(['--state', state, '--listen', '127.0.0.1:0']);
  try {
    assert.equal((await fetch(`${srv.url}/logs/default/checkpoint`)).status, 200);
  } finally {
    await srv.stop();
  }
}

test(`a first start SIGKILLed at ${TRIALS} moments: the next start always works`, {
  timeout: 900_000,
}, async () => {
  const dir = tempDir();
  try {
    // how long a first start takes here, to spread the kills over it
    const t0 = Date.now();
    await startsCleanly(join(dir, 'probe'));
    const span = Date.now() - t0;
    for (let i = 0; i < TRIALS; i++) {
      const state = join(dir, `s${i}`);
      // from the process start to past its readiness, weighted towards the end where files are written
      const delay = span * (0.3 + (0.8 * (i + Math.random())) / TRIALS);
      await killFirstStart(state, delay);
      await startsCleanly(state);
    }
  } finally {
    cleanup(dir);
  }
});

test('leftovers of an unfinished first start are cleaned or replaced', async () => {
  const dir = tempDir();
  try {
    // a state directory killed after writing its token (no config yet), with a temporary file
    const state = join(dir, 'state');
    mkdirSync(join(state, 'writers'), { recursive: true });
    writeFileSync(join(state, 'writers', 'default.token'), '', { mode: 0o600 });
    writeFileSync(join(state, '.trustix.toml.tmp-1-abcd'), 'half');
    await startsCleanly(state);
    assert.ok(!existsSync(join(state, '.trustix.toml.tmp-1-abcd')));
    assert.match(readFileSync(join(state, 'writers', 'default.token'), 'utf8'), /^[0-9a-f]{64}\n$/);

    // a log directory killed during creation: its temporary store and its key, reused
    const logDir = join(dir, 'log');
    mkdirSync(join(logDir, '.log.tmp-1-abcd'), { recursive: true });
    writeFileSync(join(logDir, '.log.tmp-1-abcd', 'log.mdb'), 'garbage');
    const { skey, vkey } = generateKey('x.test/log');
    writeFileSync(join(logDir, 'signing.key'), `${skey}\n`, { mode: 0o600 });
    const log = await Log.create(logDir, 'x.test/log');
    assert.equal(log.vkey, vkey);
    await log.close();
    assert.deepEqual(readdirSync(logDir).sort(), ['lock', 'log.mdb', 'log.mdb-lock', 'signing.key']);

    // a log directory holding anything else is not taken for a leftover
    const other = join(dir, 'other');
    mkdirSync(other);
    writeFileSync(join(other, 'notes.txt'), 'mine');
    await assert.rejects(Log.create(other, 'x.test/log'), /is not empty \(notes\.txt\)/);
  } finally {
    cleanup(dir);
  }
});

test('a first start out of disk space at any point: the next start, with space, works', {
  timeout: 600_000,
}, async (t) => {
  const mnt = mountTmpfs('8m');
  if (!mnt.startsWith('/')) {
    t.skip(mnt);
    return;
  }
  try {
    // leave `free` bytes on the file system, start, free the space, start again
    for (const free of [0, 2048, 4096, 8192, 16384, 65536, 262144, 1 << 20, 1536 * 1024]) {
      const state = join(mnt, `s${free}`);
      const filler = join(mnt, 'filler');
      const fs = statfsSync(mnt);
      const keep = Math.max(0, fs.bavail * fs.bsize - free);
      const fd = openSync(filler, 'w');
      try {
        for (let at = 0; at < keep; ) at += writeSync(fd, Buffer.alloc(Math.min(1 << 20, keep - at)));
      } catch {
        // full a little early (the file's own blocks)
      } finally {
        closeSync(fd);
      }
      const r = await runServeExpectingFailure(['--state', state, '--listen', '127.0.0.1:0']);
      rmSync(filler);
      if (!r.stdout.includes('\nready\n')) assert.equal(r.code, 1, `free ${free}: ${r.stderr}`);
      assert.doesNotMatch(r.stderr, /\n\s+at /, `free ${free}: no stack trace`);
      await startsCleanly(state);
      rmSync(state, { recursive: true, force: true });
    }
  } finally {
    unmount(mnt);
  }
});
