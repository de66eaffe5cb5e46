// The read API of a node over a PostgreSQL log (the app answering through the driver's batched
// asynchronous reads): the spec-only tlog-tiles client's checks, and verified lookups while the log
// grows. The node is bench/pg-reader.ts, built from the modules `trustix serve` is made of.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import type { Entry } from '../../src/core/entry.js';
import { type LookupAnswer, verifyLookup } from '../../src/core/lookup.js';
import { generateKey, verifierFromVkey } from '../../src/core/note.js';
import { Log } from '../../src/log/log.js';
import { PgLogStore } from '../../src/storage/postgres/postgres.js';
import { findPostgres, type PgCluster, startPostgres } from '../fixtures/postgres.js';
import { checkTlogTiles } from '../fixtures/tlog-tiles-client.js';

const skip =
  findPostgres() === undefined ? 'PostgreSQL is not installed (apt-get install postgresql)' : false;
const READER = new URL('../../bench/pg-reader.ts', import.meta.url).pathname;
const ORIGIN = 'pgreads.test/log';

const entries = (prefix: string, n: number): Entry[] =>
  Array.from({ length: n }, (_, i) => ({
    protocol: 'nix',
    key: Buffer.from(`${prefix}${i}`),
    value: Buffer.alloc(32, i % 256),
    metadata: Buffer.alloc(0),
  }));

/** The reader node over `url`: its base URL and its process. */
async function startReader(url: string): Promise<{ base: string; proc: ChildProcess }> {
  const proc = spawn(process.execPath, ['--import', 'tsx', READER, url, '2'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const base = await new Promise<string>((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^listening (\S+)\nready$/m.exec(out);
      if (m) resolve(m[1]);
    });
    proc.once('exit', (code) => reject(new Error(`reader exited with ${code}: ${err}`)));
  });
  return { base, proc };
}

describe('a read node over PostgreSQL', { skip }, () => {
  let cluster: PgCluster | undefined;
  before(async () => {
    cluster = await startPostgres();
  });
  after(() => cluster?.stop());

  test('passes the tlog-tiles checks and answers verified lookups while the log grows', async () => {
    const url = await cluster!.createDatabase();
    const { skey, vkey } = generateKey(ORIGIN);
    const verifier = verifierFromVkey(vkey);
    const log = await Log.createIn(await PgLogStore.open(url, { sequencer: true, leaseMs: 60_000 }), ORIGIN, {
      skey,
      batchDelayMs: 1,
    });
    const reader = await startReader(url);
    try {
      const old = (await log.submit(entries('a', 300)))[0].checkpoint;
      await log.submit(entries('b', 500));
      const prefix = `${reader.base}/logs/default/`;
      // a head at most readHeadMaxAgeMs old: the checks wait for the node to have seen the last commit
      for (let i = 0; ; i++) {
        const cp = await (await fetch(`${prefix}checkpoint`)).text();
        if (cp.split('\n')[1] === '800') break;
        assert.ok(i < 100, `the node's checkpoint stays at ${cp.split('\n')[1]}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      await checkTlogTiles(prefix, { vkey, origin: ORIGIN, size: 800, older: [old], headers: true });

      const lookup = async (key: string) => {
        const r = await fetch(`${prefix}lookup/nix/${key}`);
        assert.equal(r.status, 200, key);
        return verifyLookup((await r.json()) as LookupAnswer, verifier, {
          protocol: 'nix',
          key: Buffer.from(key),
        });
      };
      // concurrent lookups while batches commit: each verifies against the checkpoint it carries
      const growing = log.submit(entries('c', 2000));
      const answers = await Promise.all(
        Array.from({ length: 120 }, (_, i) => lookup(i % 4 === 3 ? `none${i}` : `a${i * 2}`)),
      );
      await growing;
      for (const [i, v] of answers.entries()) assert.equal(v.status, i % 4 === 3 ? 'absent' : 'present');
      // the last entry committed is found once the node has seen its head (at most 50 ms later)
      for (let i = 0; (await lookup('c1999')).status !== 'present'; i++) {
        assert.ok(i < 100, 'an entry committed is found by the node');
        await new Promise((r) => setTimeout(r, 20));
      }
      // what the asynchronous path does not answer goes to the routes: a bad request is a 400
      assert.equal((await fetch(`${prefix}lookup/nix/%FF`)).status, 400);
      assert.equal((await fetch(`${prefix}tile/0/x001`)).status, 400);
      assert.equal((await fetch(`${prefix}tile/0/999`)).status, 404);
    } finally {
      reader.proc.kill('SIGTERM');
      await log.close();
    }
  });
});
