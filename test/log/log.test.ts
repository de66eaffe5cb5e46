import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { open } from 'lmdb';
import { openCheckpoint } from '../../src/core/checkpoint.js';
import { type Entry, encodeEntry, indexPath, parseIndexValue } from '../../src/core/entry.js';
import { FormatError, StateError, StorageError } from '../../src/core/errors.js';
import { type LookupAnswer, verifyLookup } from '../../src/core/lookup.js';
import { inclusionProof, leafHash, verifyConsistency, verifyInclusion } from '../../src/core/merkle.js';
import { generateKey, verifierFromVkey } from '../../src/core/note.js';
import { encodeSmtProof, smtLookup } from '../../src/core/smt.js';
import { hashReaderFromTiles } from '../../src/core/tiles.js';
import { auditStore } from '../../src/log/audit.js';
import { Log, type SubmitReceipt } from '../../src/log/log.js';
import type { LogSnapshot } from '../../src/storage/store.js';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'trustix-log-'));
  dirs.push(d);
  return d;
}
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const entry = (key: string, value: Buffer | number, metadata = ''): Entry => ({
  protocol: 'nix',
  key: Buffer.from(key),
  value: typeof value === 'number' ? Buffer.alloc(32, value) : value,
  metadata: Buffer.from(metadata),
});

describe('log', () => {
  test('submit, look up with verification, idempotence and replacement', async () => {
    const dir = tempDir();
    const log = await Log.create(dir, 'test.example/log', { batchDelayMs: 1 });
    const verifier = verifierFromVkey(log.vkey);
    const q = (key: string) =>
      verifyLookup(log.lookup('nix', Buffer.from(key)), verifier, { protocol: 'nix', key: Buffer.from(key) });

    assert.equal(q('missing').status, 'absent', 'empty log proves absence');
    const receipts = await log.submit([entry('a', 1), entry('b', 2), entry('c', 3, '{"name":"c"}')]);
    assert.deepEqual(
      receipts.map((r) => [r.index, r.duplicate]),
      [
        [0, false],
        [1, false],
        [2, false],
      ],
    );
    for (const r of receipts) {
      const cp = openCheckpoint(r.checkpoint, verifier).checkpoint;
      assert.equal(cp.size, 3);
      verifyInclusion(leafHash(log.entry(r.index)), r.index, cp.size, r.proof, cp.rootHash);
    }
    const b = q('b');
    assert.equal(b.status, 'present');
    if (b.status === 'present') {
      assert.equal(b.index, 1);
      assert.deepEqual(Buffer.from(b.entry.value), Buffer.alloc(32, 2));
    }
    assert.equal(q('zzz').status, 'absent');

    // identical resubmission: nothing appended, same index
    const again = await log.submit([entry('b', 2)]);
    assert.deepEqual([again[0].index, again[0].duplicate], [1, true]);
    assert.equal(log.head().size, 3);

    // a different value is a new entry; the index follows it; history stays
    const changed = await log.submit([entry('b', 9)]);
    assert.deepEqual([changed[0].index, changed[0].duplicate], [3, false]);
    const b2 = q('b');
    assert.equal(b2.status, 'present');
    if (b2.status === 'present') assert.equal(b2.index, 3);
    assert.equal(log.head().size, 4);

    // within one batch: repeats collapse, changes append in order, last wins
    const mixed = await log.submit([entry('d', 4), entry('d', 4), entry('d', 5), entry('a', 1)]);
    assert.deepEqual(
      mixed.map((r) => [r.index, r.duplicate]),
      [
        [4, false],
        [4, true],
        [5, false],
        [0, true],
      ],
    );
    const d = q('d');
    assert.ok(d.status === 'present' && d.index === 5);
    await log.close();
  });

  test('batches from concurrent submitters share a checkpoint and stay consistent', async () => {
    const dir = tempDir();
    const log = await Log.create(dir, 'test.example/concurrent', { batchDelayMs: 5, maxBatch: 500 });
    const verifier = verifierFromVkey(log.vkey);
    const checkpoints: string[] = [];
    await Promise.all(
      Array.from({ length: 20 }, async (_, w) => {
        for (let round = 0; round < 5; round++) {
          const rs = await log.submit(
            Array.from({ length: 37 }, (_, i) => entry(`w${w}-r${round}-${i}`, randomBytes(32))),
          );
          checkpoints.push(rs[0].checkpoint);
        }
      }),
    );
    const head = log.head();
    assert.equal(head.size, 20 * 5 * 37);
    const cur = openCheckpoint(head.checkpoint, verifier).checkpoint;
    for (const note of new Set(checkpoints)) {
      const cp = openCheckpoint(note, verifier).checkpoint;
      if (cp.size < cur.size)
        verifyConsistency(cp.size, cur.size, log.consistencyProof(cp.size), cp.rootHash, cur.rootHash);
    }
    const report = await auditStore(log.storage, verifier);
    assert.ok(report.ok, JSON.stringify(report));
    assert.ok(report.checkpoints >= 2);
    await log.close();
  });

  test('state survives reopening; the wrong key is refused', async () => {
    const dir = tempDir();
    const log = await Log.create(dir, 'test.example/reopen', { batchDelayMs: 1 });
    await log.submit([entry('x', 1)]);
    const vkey = log.vkey;
    await log.close();
    const again = await Log.open(dir);
    assert.equal(again.head().size, 1);
    assert.equal(again.vkey, vkey);
    await again.close();
    const other = generateKey('test.example/reopen').skey;
    await assert.rejects(Log.open(dir, { skey: other }), StateError);
    await assert.rejects(Log.create(dir, 'test.example/reopen'), StateError);
    await assert.rejects(Log.open(tempDir()), StorageError);
  });

  test('a log opened read-only needs no signing key, answers lookups and refuses submissions', async () => {
    const dir = tempDir();
    const log = await Log.create(dir, 'test.example/readonly', { batchDelayMs: 1 });
    await log.submit([entry('ro', 7)]);
    const vkey = log.vkey;
    await log.close();
    rmSync(join(dir, 'signing.key'));
    await assert.rejects(Log.open(dir), StateError, 'a writer still needs its key');
    const ro = await Log.open(dir, { readOnly: true });
    assert.equal(ro.vkey, vkey);
    assert.equal(ro.origin, 'test.example/readonly');
    const v = verifyLookup(ro.lookup('nix', Buffer.from('ro')), verifierFromVkey(vkey), {
      protocol: 'nix',
      key: Buffer.from('ro'),
    });
    assert.equal(v.status, 'present');
    await assert.rejects(ro.submit([entry('x', 1)]), StateError);
    await ro.close();
  });

  test('lookups from the warm caches equal fresh computations from the store as the log grows', async () => {
    const dir = tempDir();
    const log = await Log.create(dir, 'test.example/caches', { batchDelayMs: 1, maxBatch: 5000 });
    const verifier = verifierFromVkey(log.vkey);
    // The answer computed from the store alone: no strata, tile or proof caches.
    const fresh = (l: Log, key: Buffer): LookupAnswer =>
      l.storage.read((snap) => {
        const head = snap.head()!;
        const { value, proof } = smtLookup(head.mapRoot, indexPath('nix', key), (id) => snap.stratum(id));
        const a: LookupAnswer = {
          checkpoint: head.checkpoint,
          protocol: 'nix',
          key: key.toString('base64'),
          mapProof: encodeSmtProof(proof).toString('base64'),
        };
        if (value) {
          const { logIndex } = parseIndexValue(value);
          const read = hashReaderFromTiles((l, i) => snap.tile(l, i));
          a.entry = {
            index: logIndex,
            data: snap.entry(logIndex)!.toString('base64'),
            proof: inclusionProof(logIndex, head.size, read).map((h) => h.toString('base64')),
          };
        }
        return a;
      });
    const keys: string[] = [];
    let round = 0;
    const check = () => {
      const sample = [...keys.filter((_, i) => i % 37 === 0 || i >= keys.length - 3), `absent-${round}`];
      for (const k of sample) {
        const key = Buffer.from(k);
        const answer = log.lookup('nix', key);
        assert.deepEqual(answer, fresh(log, key), `round ${round} key ${k}`);
        const json = log.lookupJson('nix', key);
        assert.equal(json.body, JSON.stringify(answer));
        assert.equal(json.present, answer.entry !== undefined);
        assert.equal(json.size, openCheckpoint(answer.checkpoint, verifier).checkpoint.size);
        // the bytes a server sends: the same text in UTF-8 (the checkpoint's em dash included)
        const bytes = log.lookupJsonBytes('nix', key);
        assert.deepEqual(bytes.body, Buffer.from(json.body, 'utf8'));
        assert.equal(bytes.size, json.size);
        assert.equal(bytes.present, json.present);
        // a cache is asked for the size the read sees, and what it holds is answered as is
        const sizes: number[] = [];
        const hit = log.lookupJsonBytes('nix', key, (size) => {
          sizes.push(size);
          return Buffer.from('cached');
        });
        assert.deepEqual(sizes, [json.size]);
        assert.equal(hit.body.toString(), 'cached');
        assert.equal(hit.present, undefined);
        const miss = log.lookupJsonBytes('nix', key, () => undefined);
        assert.deepEqual(miss.body, bytes.body);
        assert.notEqual(verifyLookup(answer, verifier, { protocol: 'nix', key }).status, 'invalid');
      }
    };
    check();
    // peekStratum gives the bytes stratum gives (in a reused buffer: compared before the next read)
    const peekSame = () =>
      log.storage.read((snap) => {
        for (const id of [
          Buffer.from([0x40]),
          Buffer.from([0x41, 0x42]),
          Buffer.from([0x42, 1, 2]),
          Buffer.from([0x49]),
        ]) {
          const copy = snap.stratum(id);
          const peeked = snap.peekStratum!(id);
          assert.deepEqual(peeked === undefined ? undefined : Buffer.from(peeked), copy);
        }
        const size = snap.head()!.size;
        for (const i of [0, size - 1, size]) {
          const copy = snap.entry(i);
          const peeked = snap.peekEntry!(i);
          assert.deepEqual(peeked === undefined ? undefined : Buffer.from(peeked), copy);
        }
      });
    peekSame();
    // sizes that cross tile boundaries (full tiles, ragged edges) and replace stored values
    for (const n of [1, 255, 1, 700, 2000, 513]) {
      round++;
      const batch: Entry[] = [];
      for (let i = 0; i < n; i++) {
        const k = i % 5 === 4 && keys.length > 0 ? keys[(i * 31) % keys.length] : `k-${round}-${i}`;
        if (!keys.includes(k)) keys.push(k);
        batch.push(entry(k, randomBytes(32)));
      }
      await log.submit(batch);
      check();
      peekSame();
    }
    // a protocol that needs escaping in JSON
    await log.submit([{ ...entry('q', 1), protocol: 'a"b\\c' }]);
    const odd = log.lookupJson('a"b\\c', Buffer.from('q'));
    assert.equal(odd.body, JSON.stringify(log.lookup('a"b\\c', Buffer.from('q'))));
    assert.deepEqual(log.lookupJsonBytes('a"b\\c', Buffer.from('q')).body, Buffer.from(odd.body));
    // answers for two protocols in a row each carry their own protocol
    assert.equal(
      log.lookupJson('nix', Buffer.from('q')).body,
      JSON.stringify(log.lookup('nix', Buffer.from('q'))),
    );
    await log.close();
    // a read-only log adopts the snapshot's root for its caches and gives the same answers
    const ro = await Log.open(dir, { readOnly: true });
    for (const k of [keys[0], keys[keys.length - 1], 'absent']) {
      assert.equal(ro.lookupJson('nix', Buffer.from(k)).body, JSON.stringify(fresh(ro, Buffer.from(k))));
    }
    await ro.close();
  });

  test('with the tile cache full, a lookup reads a missed leaf tile in place and answers the same', async () => {
    const dir = tempDir();
    const log = await Log.create(dir, 'test.example/tiles', { batchDelayMs: 1, maxBatch: 2000 });
    const verifier = verifierFromVkey(log.vkey);
    // 1,300 entries: five full leaf tiles and a partial one
    const entries = Array.from({ length: 1300 }, (_, i) => entry(`t${i}`, randomBytes(32)));
    await log.submit(entries);
    // one cached tile: the first lookups fill it, the rest miss
    const small = await Log.open(dir, { readOnly: true, cachedTiles: 1 });
    let peeks = 0;
    const read = small.storage.read;
    small.storage.read = <T>(fn: (snap: LogSnapshot) => T): T =>
      read.call(small.storage, (snap: LogSnapshot) =>
        fn({
          ...snap,
          peekTile: (level, index) => {
            peeks++;
            return snap.peekTile!(level, index);
          },
        }),
      ) as T;
    try {
      for (let i = 0; i < entries.length; i += 97) {
        const key = entries[i].key;
        const answer = small.lookup('nix', key);
        assert.deepEqual(answer, log.lookup('nix', key), `key ${i}`);
        assert.equal(small.lookupJson('nix', key).body, JSON.stringify(answer));
        assert.equal(verifyLookup(answer, verifier, { protocol: 'nix', key }).status, 'present');
      }
    } finally {
      small.storage.read = read;
    }
    assert.ok(peeks > 0, 'leaf tiles were read in place');
    await small.close();
    await log.close();
  });

  test('receipt proofs across full and partial tiles equal fresh proofs and verify', async () => {
    const dir = tempDir();
    const log = await Log.create(dir, 'test.example/log', { batchDelayMs: 1, maxBatch: 300 });
    const verifier = verifierFromVkey(log.vkey);
    const check = (receipts: Awaited<ReturnType<Log['submit']>>) => {
      const head = log.head();
      log.storage.read((snap) => {
        const read = hashReaderFromTiles((level, index) => snap.tile(level, index));
        for (const r of receipts) {
          const cp = openCheckpoint(r.checkpoint, verifier).checkpoint;
          assert.equal(cp.size, head.size);
          assert.deepEqual(
            r.proof.map((h) => Buffer.from(h).toString('hex')),
            inclusionProof(r.index, cp.size, read).map((h) => Buffer.from(h).toString('hex')),
          );
          verifyInclusion(leafHash(log.entry(r.index)), r.index, cp.size, r.proof, cp.rootHash);
        }
      });
    };
    // sizes 300, 600, 601, 900 and 1100: tiles fill inside a batch, one leaf alone, a batch of
    // mixed new entries and resubmissions whose leaves sit in old full tiles
    const all: Entry[] = [];
    for (const n of [300, 300, 1, 299, 200]) {
      const fresh = Array.from({ length: n }, (_, i) => entry(`k${all.length + i}`, randomBytes(32)));
      const resubmitted = all.filter((_, i) => i % 37 === 5);
      const receipts = await log.submit([...fresh, ...resubmitted]);
      assert.equal(receipts.filter((r) => r.duplicate).length, resubmitted.length);
      check(receipts);
      all.push(...fresh);
    }
    assert.equal(log.head().size, 1100);
    await log.close();
  });

  test('batches taken across calls: a call split between batches, duplicates across calls', async () => {
    const log = await Log.create(tempDir(), 'test.example/log', { batchDelayMs: 50, maxBatch: 4 });
    // the second call fills a batch: it takes the first call and the second call's first entry
    const calls = [
      log.submit([entry('a', 1), entry('b', 2), entry('c', 3)]),
      // b with a value that starts like b's but is shorter: a new value, not a duplicate
      log.submit([entry('a', 1), entry('b', Buffer.alloc(16, 2))]),
      log.submit([entry('c', 3)]),
    ];
    const [one, two, three] = await Promise.all(calls);
    const pairs = (rs: SubmitReceipt[]) => rs.map((r) => [r.index, r.duplicate]);
    assert.deepEqual(pairs(one), [
      [0, false],
      [1, false],
      [2, false],
    ]);
    assert.deepEqual(pairs(two), [
      [0, true],
      [3, false],
    ]);
    assert.deepEqual(pairs(three), [[2, true]]);
    assert.deepEqual(log.entry(3), encodeEntry(entry('b', Buffer.alloc(16, 2))));
    assert.equal(log.pendingCount, 0);
    await log.close();
  });

  test('big batches (index update in the worker thread) give the state that small batches give', async () => {
    const keys = Array.from({ length: 3000 }, (_, i) => `w${i}`);
    const rounds: Entry[][] = [
      keys.map((k) => entry(k, randomBytes(32))),
      // replacements, identical resubmissions and new keys in one batch
      [
        ...keys.slice(0, 1500).map((k, i) => entry(k, randomBytes(32), `{"r":${i}}`)),
        ...keys.slice(1500, 2000).map((k) => entry(k, 0)),
        ...Array.from({ length: 1000 }, (_, i) => entry(`n${i}`, randomBytes(32))),
      ],
    ];
    rounds.push(rounds[0].slice(2000, 2600)); // identical resubmissions only: nothing appended
    rounds.push([...rounds[1].slice(0, 2500), ...rounds[0].slice(2500)]); // appended 0, replan path
    const big = await Log.create(tempDir(), 'test.example/log', { batchDelayMs: 1, maxBatch: 5000 });
    const small = await Log.create(tempDir(), 'test.example/log', { batchDelayMs: 1, maxBatch: 1000 });
    const verifier = verifierFromVkey(big.vkey);
    for (const round of rounds) {
      const [a, b] = await Promise.all([big.submit(round), small.submit(round)]);
      assert.deepEqual(
        a.map((r) => [r.index, r.duplicate]),
        b.map((r) => [r.index, r.duplicate]),
      );
      for (let i = 0; i < a.length; i += 97) {
        const cp = openCheckpoint(a[i].checkpoint, verifier).checkpoint;
        verifyInclusion(leafHash(big.entry(a[i].index)), a[i].index, cp.size, a[i].proof, cp.rootHash);
      }
      const hb = big.head();
      const hs = small.head();
      assert.equal(hb.size, hs.size);
      assert.deepEqual(hb.rootHash, hs.rootHash);
      assert.deepEqual(hb.mapRoot, hs.mapRoot);
      // the worker really ran (a silent fallback to this thread would make the comparison moot)
      const offload = (big as unknown as { appender: { offload: { worker?: unknown; broken: boolean } } })
        .appender.offload;
      assert.ok(offload.worker !== undefined && !offload.broken);
    }
    for (const k of ['w0', 'w1600', 'w2999', 'n999', 'absent']) {
      const key = Buffer.from(k);
      const ans = verifyLookup(big.lookup('nix', key), verifier, { protocol: 'nix', key });
      assert.equal(ans.status, k === 'absent' ? 'absent' : 'present');
    }
    const report = await auditStore(big.storage, verifier);
    assert.ok(report.ok, JSON.stringify(report));
    await Promise.all([big.close(), small.close()]);
  });

  test('keys whose paths share their first 30 bits are told apart when planning a batch', async () => {
    // the sequencer keys its per-batch maps by 30 bits of the path; find two keys that collide there
    const seen = new Map<number, string>();
    let pair: [string, string] | undefined;
    for (let i = 0; pair === undefined; i++) {
      const p = indexPath('nix', Buffer.from(`c${i}`));
      const k = p[0] | (p[1] << 8) | (p[2] << 16) | ((p[3] & 0x3f) << 24);
      const other = seen.get(k);
      if (other !== undefined) pair = [other, `c${i}`];
      else seen.set(k, `c${i}`);
    }
    const [a, b] = pair;
    const log = await Log.create(tempDir(), 'test.example/collide', { batchDelayMs: 1 });
    const first = await log.submit([entry(a, 1), entry(b, 2), entry(a, 1), entry(b, 3), entry(b, 3)]);
    assert.deepEqual(
      first.map((r) => [r.index, r.duplicate]),
      [
        [0, false],
        [1, false],
        [0, true],
        [2, false],
        [2, true],
      ],
    );
    // against the stored index: the replan path, whose map is keyed the same way
    const second = await log.submit([entry(b, 3), entry(a, 1), entry(a, 4)]);
    assert.deepEqual(
      second.map((r) => [r.index, r.duplicate]),
      [
        [2, true],
        [0, true],
        [3, false],
      ],
    );
    await log.close();
  });

  test('bad input is refused before anything is queued', async () => {
    const log = await Log.create(tempDir(), 'test.example/bad', { batchDelayMs: 1 });
    assert.throws(
      () => log.submit([entry('ok', 1), { ...entry('k', 1), key: Buffer.alloc(2000) }]),
      FormatError,
    );
    assert.throws(() => log.submit([{ ...entry('k', 1), value: Buffer.alloc(0) }]), FormatError);
    assert.equal(log.pendingCount, 0);
    assert.throws(() => log.inclusionProof(0), FormatError, 'no entry yet');
    await log.submit([entry('k', 1)]);
    assert.throws(() => log.inclusionProof(1), FormatError);
    assert.throws(() => log.consistencyProof(2), FormatError);
    await log.close();
  });

  test('audit reports the first divergence when an entry is altered on disk', async () => {
    const dir = tempDir();
    const log = await Log.create(dir, 'test.example/audit', { batchDelayMs: 1 });
    for (let b = 0; b < 3; b++)
      await log.submit(Array.from({ length: 50 }, (_, i) => entry(`k${b}-${i}`, b + 1)));
    const verifier = verifierFromVkey(log.vkey);
    assert.ok((await auditStore(log.storage, verifier)).ok);
    await log.close();

    // tamper: change entry 70's value behind the log's back
    const env = open({ path: join(dir, 'log.mdb'), maxDbs: 8 });
    const entries = env.openDB<Buffer, number>({ name: 'entries', encoding: 'binary' });
    const e = Buffer.from(entries.getBinary(70)!);
    e[e.length - 3] ^= 1;
    await entries.put(70, e);
    await env.close();

    const reopened = await Log.open(dir);
    const report = await auditStore(reopened.storage, verifier);
    assert.equal(report.ok, false);
    assert.equal(report.divergence?.size, 100, 'first checkpoint after entry 70 is the one at size 100');
    assert.equal(report.divergence?.check, 'log-root');
    await reopened.close();
  });

  test('a corrupt store file gives a storage error, not a crash or a wrong answer', async () => {
    const dir = tempDir();
    const log = await Log.create(dir, 'test.example/corrupt', { batchDelayMs: 1 });
    await log.close();
    writeFileSync(join(dir, 'log.mdb'), randomBytes(64 * 1024));
    await assert.rejects(Log.open(dir), StorageError);
  });
});
