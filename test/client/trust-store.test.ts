import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import {
  defaultTrustDir,
  FileTrustStore,
  logFileStem,
  MemoryTrustStore,
} from '../../src/client/trust-store.js';
import { StorageError } from '../../src/core/errors.js';
import { tempDir } from './helpers.js';

const LOG = { origin: 'example.com/log', vkey: 'example.com/log+12345678+AAAA' };
const WORKER = new URL('./fixtures/cas-worker.ts', import.meta.url).pathname;

describe('trust store', () => {
  test('compare-and-set on disk: first write, conflicts, atomic file with mode 0600', async () => {
    const dir = join(tempDir(), 'nested', 'trusted');
    const s = new FileTrustStore(dir);
    assert.equal(await s.get(LOG), undefined);
    assert.deepEqual(await s.compareAndSet(LOG, undefined, 'one', { size: 1, source: 'http://x/' }), {
      ok: true,
    });
    assert.deepEqual(await s.compareAndSet(LOG, undefined, 'two'), { ok: false, current: 'one' });
    assert.deepEqual(await s.compareAndSet(LOG, 'one', 'two'), { ok: true });
    assert.equal(await new FileTrustStore(dir).get(LOG), 'two');
    // another log (same origin, other key) has its own memory
    assert.equal(await s.get({ ...LOG, vkey: 'example.com/log+87654321+BBBB' }), undefined);
    assert.deepEqual(readdirSync(dir), [`${logFileStem(LOG)}.json`], 'no temporary or lock files left');
    assert.equal(statSync(s.fileFor(LOG)).mode & 0o777, 0o600);
  });

  test('concurrent writers in one process: exactly one wins each round', async () => {
    const dir = tempDir();
    const stores = Array.from({ length: 8 }, () => new FileTrustStore(dir));
    const results = await Promise.all(stores.map((s, i) => s.compareAndSet(LOG, undefined, `w${i}`)));
    assert.equal(results.filter((r) => r.ok).length, 1);
    const winner = await stores[0].get(LOG);
    for (const r of results) if (!r.ok) assert.equal(r.current, winner);
  });

  test('concurrent processes lose no update', async () => {
    const dir = tempDir();
    const rounds = 15;
    const procs = 3;
    await Promise.all(
      Array.from(
        { length: procs },
        () =>
          new Promise<void>((resolve, reject) => {
            const child = spawn(process.execPath, ['--import', 'tsx', WORKER, dir, String(rounds)], {
              stdio: ['ignore', 'ignore', 'pipe'],
            });
            let err = '';
            child.stderr.on('data', (d) => {
              err += d;
            });
            child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`worker failed: ${err}`))));
          }),
      ),
    );
    const s = new FileTrustStore(dir);
    assert.equal(
      await s.get({ origin: 'cas.example/log', vkey: 'cas.example/log+00000000+AA' }),
      String(rounds * procs),
    );
  });

  test('a lock left by a dead process is taken over; a damaged record is an error', async () => {
    const dir = tempDir();
    const s = new FileTrustStore(dir);
    await s.compareAndSet(LOG, undefined, 'one');
    // pid 2^22+1 is above Linux's default pid_max, so no such process exists
    writeFileSync(`${s.fileFor(LOG)}.lock`, `${2 ** 22 + 1}\n`);
    assert.deepEqual(await s.compareAndSet(LOG, 'one', 'two'), { ok: true });
    writeFileSync(s.fileFor(LOG), '{"version":1,');
    await assert.rejects(s.get(LOG), StorageError);
    writeFileSync(
      s.fileFor(LOG),
      JSON.stringify({ version: 1, origin: 'other', vkey: LOG.vkey, checkpoint: 'x' }),
    );
    await assert.rejects(s.get(LOG), /for another log/);
  });

  test('memory store and default location', async () => {
    const m = new MemoryTrustStore();
    assert.deepEqual(await m.compareAndSet(LOG, undefined, 'a'), { ok: true });
    assert.deepEqual(await m.compareAndSet(LOG, 'b', 'c'), { ok: false, current: 'a' });
    assert.equal(defaultTrustDir({ XDG_STATE_HOME: '/state' }), '/state/trustix/trusted');
    assert.match(defaultTrustDir({ XDG_STATE_HOME: 'relative' }), /\.local\/state\/trustix\/trusted$/);
    assert.match(logFileStem({ origin: 'a/b c', vkey: 'k' }), /^a_b_c-[0-9a-f]{16}$/);
  });
});
