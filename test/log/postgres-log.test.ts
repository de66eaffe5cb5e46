import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { openCheckpoint } from '../../src/core/checkpoint.js';
import type { Entry } from '../../src/core/entry.js';
import { verifyLookup } from '../../src/core/lookup.js';
import { leafHash, verifyInclusion } from '../../src/core/merkle.js';
import { generateKey, verifierFromVkey } from '../../src/core/note.js';
import { auditStore } from '../../src/log/audit.js';
import { Log, NotSequencingError } from '../../src/log/log.js';
import {
  readEntryBundle,
  readEntryBundleAsync,
  readHashTile,
  readHashTileAsync,
} from '../../src/log/serving.js';
import { FencedError, PgLogStore } from '../../src/storage/postgres/postgres.js';
import { findPostgres, lapseLease, type PgCluster, startPostgres } from '../fixtures/postgres.js';

const skip =
  findPostgres() === undefined ? 'PostgreSQL is not installed (apt-get install postgresql)' : false;
let cluster: PgCluster | undefined;

const ORIGIN = 'test.example/pg';
const entry = (key: string, value: number): Entry => ({
  protocol: 'nix',
  key: Buffer.from(key),
  value: Buffer.alloc(32, value),
  metadata: Buffer.alloc(0),
});

describe('a log over the PostgreSQL driver', { skip }, () => {
  before(async () => {
    cluster = await startPostgres();
  });
  after(() => cluster?.stop());

  test('sequences, answers verified lookups from another node, and audits clean', async () => {
    const url = await cluster!.createDatabase();
    const { skey, vkey } = generateKey(ORIGIN);
    const verifier = verifierFromVkey(vkey);
    const store = await PgLogStore.open(url, { sequencer: true, leaseMs: 60_000 });
    const log = await Log.createIn(store, ORIGIN, { skey, batchDelayMs: 1, maxBatch: 500 });
    try {
      // three calls in flight at once: several batches, the next built while one commits
      const calls = [0, 1, 2].map((c) => Array.from({ length: 700 }, (_, i) => entry(`k${c}-${i}`, c)));
      const receipts = (await Promise.all(calls.map((c) => log.submit(c)))).flat();
      assert.deepEqual(
        receipts.map((r) => r.index).sort((a, b) => a - b),
        Array.from({ length: 2100 }, (_, i) => i),
      );
      for (const r of receipts.filter((_, i) => i % 97 === 0)) {
        const cp = openCheckpoint(r.checkpoint, verifier).checkpoint;
        verifyInclusion(leafHash(log.entry(r.index)), r.index, cp.size, r.proof, cp.rootHash);
      }
      // a resubmission is answered with its index; a new value for a key is appended
      const [again, replaced] = await log.submit([entry('k1-5', 1), entry('k1-6', 9)]);
      assert.equal(again.duplicate, true);
      assert.equal(again.index, receipts[705].index);
      assert.equal(replaced.index, 2100);

      const readerStore = await PgLogStore.open(url);
      const reader = Log.openIn(readerStore, { readOnly: true });
      try {
        assert.equal(reader.head().checkpoint, log.head().checkpoint);
        for (const [key, expect] of [
          ['k0-0', 'present'],
          ['k2-699', 'present'],
          ['k1-6', 'present'],
          ['absent', 'absent'],
        ] as const) {
          const k = Buffer.from(key);
          const v = verifyLookup(reader.lookup('nix', k), verifier, { protocol: 'nix', key: k });
          assert.equal(v.status, expect, key);
        }
        const v = verifyLookup(reader.lookup('nix', Buffer.from('k1-6')), verifier, {
          protocol: 'nix',
          key: Buffer.from('k1-6'),
        });
        assert.ok(v.status === 'present' && v.index === 2100 && v.entry.value.equals(Buffer.alloc(32, 9)));
        await assert.rejects(reader.submit([entry('x', 1)]), /read-only/);
      } finally {
        await reader.close();
      }
      const report = await auditStore(log.storage, verifier);
      assert.ok(report.ok, JSON.stringify(report));
    } finally {
      await log.close();
    }
  });

  test('asynchronous lookups and tiles from a reader node: the same bytes as synchronous ones, verified during ingest', async () => {
    const url = await cluster!.createDatabase();
    const { skey, vkey } = generateKey(ORIGIN);
    const verifier = verifierFromVkey(vkey);
    const store = await PgLogStore.open(url, { sequencer: true, leaseMs: 60_000 });
    const log = await Log.createIn(store, ORIGIN, { skey, batchDelayMs: 1, maxBatch: 300 });
    const reader = Log.openIn(await PgLogStore.open(url, { readConnections: 2 }), { readOnly: true });
    try {
      await log.submit(Array.from({ length: 1500 }, (_, i) => entry(`a${i}`, i % 256)));
      const keys = Array.from({ length: 200 }, (_, i) => Buffer.from(i % 5 === 4 ? `none${i}` : `a${i * 7}`));
      const answers = await Promise.all(keys.map((k) => reader.lookupJsonBytesAsync('nix', k)));
      for (const [i, k] of keys.entries()) {
        assert.deepEqual(answers[i].body, reader.lookupJsonBytes('nix', k).body, k.toString());
      }
      const size = reader.head().size;
      for (const [level, index, width] of [
        [0, 0, 256],
        [0, 5, size % 256],
        [1, 0, Math.floor(size / 256)],
      ]) {
        assert.deepEqual(
          await readHashTileAsync(reader.storage, size, level, index, width),
          readHashTile(reader.storage, size, level, index, width),
        );
      }
      assert.deepEqual(
        await readEntryBundleAsync(reader.storage, size, 5, size % 256),
        readEntryBundle(reader.storage, size, 5, size % 256),
      );

      // while the log grows, every answer verifies against the checkpoint it carries
      const growing = log.submit(Array.from({ length: 1500 }, (_, i) => entry(`b${i}`, i % 256)));
      const during: Array<Promise<{ body: Buffer }>> = [];
      for (let round = 0; round < 20; round++) {
        for (const k of keys.slice(round * 10, round * 10 + 10))
          during.push(reader.lookupJsonBytesAsync('nix', k));
        await new Promise((r) => setTimeout(r, 5));
      }
      await growing;
      for (const [i, a] of (await Promise.all(during)).entries()) {
        const v = verifyLookup(JSON.parse(a.body.toString()), verifier, { protocol: 'nix', key: keys[i] });
        assert.equal(v.status, i % 5 === 4 ? 'absent' : 'present', keys[i].toString());
      }
    } finally {
      await reader.close();
      await log.close();
    }
  });

  test('a standby takes over: the old sequencer is fenced, the new one signs on from the committed head', async () => {
    const url = await cluster!.createDatabase();
    const { skey, vkey } = generateKey(ORIGIN);
    const verifier = verifierFromVkey(vkey);
    const oldStore = await PgLogStore.open(url, { sequencer: true, leaseMs: 60_000, holder: 'old' });
    const old = await Log.createIn(oldStore, ORIGIN, { skey, batchDelayMs: 1 });
    await old.submit([entry('a', 1), entry('b', 2)]);
    // the old sequencer stops renewing (paused), its lease lapses, the standby takes over
    await lapseLease(url, oldStore);
    const standbyStore = await PgLogStore.open(url, { sequencer: true, leaseMs: 60_000, holder: 'standby' });
    const standby = Log.openIn(standbyStore, { skey, batchDelayMs: 1 });
    try {
      await assert.rejects(old.submit([entry('c', 3)]), FencedError);
      const [r] = await standby.submit([entry('d', 4)]);
      assert.equal(r.index, 2);
      assert.equal(openCheckpoint(r.checkpoint, verifier).checkpoint.size, 3);
      // one signed tree per size: the refused batch left no checkpoint behind
      const sizes = [...standbyStore.checkpoints()].map((c) => c.size);
      assert.deepEqual(sizes, [0, 2, 3]);
      const report = await auditStore(standbyStore, verifier);
      assert.ok(report.ok, JSON.stringify(report));
    } finally {
      await old.close();
      await standby.close();
    }
  });

  test('a standby log sequences only between startSequencing and stopSequencing, from the database head', async () => {
    const url = await cluster!.createDatabase();
    const { skey } = generateKey(ORIGIN);
    const firstStore = await PgLogStore.open(url, { sequencer: true, leaseMs: 60_000, holder: 'first' });
    const first = await Log.createIn(firstStore, ORIGIN, { skey, batchDelayMs: 1 });
    const standbyStore = await PgLogStore.open(url, { leaseMs: 60_000, holder: 'standby' });
    const standby = Log.openIn(standbyStore, { skey, batchDelayMs: 1, standby: true });
    try {
      assert.equal(standby.sequencing, false);
      await assert.rejects(standby.submit([entry('s', 1)]), NotSequencingError);
      // the first sequencer appends after the standby was opened, then hands over
      await first.submit([entry('a', 1), entry('b', 2), entry('c', 3)]);
      await first.close();
      await standbyStore.takeLease();
      assert.equal(standby.startSequencing().size, 3);
      const [r] = await standby.submit([entry('d', 4)]);
      assert.equal(r.index, 3);
      // stopping refuses what waits for a batch; the log reads on
      const waiting = standby.submit([entry('e', 5)]);
      await standby.stopSequencing(new FencedError('stepping down'));
      await assert.rejects(waiting, /stepping down/);
      assert.equal(standby.sequencing, false);
      assert.equal(standby.head().size, 4);
    } finally {
      await standby.close();
    }
  });
});
