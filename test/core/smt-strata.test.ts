import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import { StorageError } from '../../src/core/errors.js';
import {
  decodeStratum,
  encodeStratum,
  SMT_EMPTY,
  type SmtUpdate,
  StratumCache,
  smtApplyBatch,
  smtAudit,
  smtLeafHash,
  smtLeaves,
  smtLookup,
  stratumId,
  verifySmtProof,
} from '../../src/core/smt.js';
import { bandTop } from '../../src/core/smt-strata.js';

const sha = (s: string) => createHash('sha256').update(s).digest();
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

class MemStore {
  rows = new Map<string, Buffer>();
  root: Buffer = SMT_EMPTY;
  reads: string[] = [];
  read = (id: Buffer) => {
    this.reads.push(hex(id));
    return this.rows.get(hex(id));
  };
  apply(updates: SmtUpdate[]) {
    const r = smtApplyBatch(this.root, updates, this.read);
    // Copy, as a store would: the writer's slabs must not be relied on after the call.
    for (const [k, w] of r.writes) this.rows.set(k, Buffer.from(w.data));
    this.root = r.root;
    return r;
  }
}

/** A path with the given leading bytes and the rest from a hash. */
function pathWith(prefix: number[], tag: string): Buffer {
  const p = sha(tag);
  Buffer.from(prefix).copy(p);
  return p;
}

describe('sparse index strata', () => {
  test('a single leaf lives in the root stratum', () => {
    const s = new MemStore();
    const path = sha('a');
    s.apply([{ path, value: Buffer.from('xyz') }]);
    assert.deepEqual([...s.rows.keys()], ['40']);
    assert.equal(hex(s.rows.get('40')!), `02` + `01` + `03` + hex(path) + hex(Buffer.from('xyz')));
    assert.deepEqual(s.root, smtLeafHash(path, Buffer.from('xyz')));
    assert.deepEqual(decodeStratum(Buffer.from([0x40]), s.rows.get('40')!), {
      type: 'leaf',
      path,
      value: Buffer.from('xyz'),
    });
  });

  test('leaves sharing 20 bits go four strata down (4-level bands from depth 16), and a band edge holds a reference', () => {
    const s = new MemStore();
    const a = pathWith([0xab, 0xcd, 0xe0], 'a'); // bits 0..19 shared, bit 20 = 0
    const b = pathWith([0xab, 0xcd, 0xe8], 'b'); // bit 20 = 1
    s.apply([
      { path: a, value: Buffer.from('A') },
      { path: b, value: Buffer.from('B') },
    ]);
    assert.deepEqual([...s.rows.keys()].sort(), ['40', '41ab', '42abcd', '43abcde0']);
    const root = decodeStratum(Buffer.from([0x40]), s.rows.get('40')!);
    // Eight NODEs down the path of 0xab, then a REF at depth 8.
    let n = root;
    for (let d = 0; d < 8; d++) {
      assert.equal(n.type, 'node');
      if (n.type !== 'node') return;
      const bit = (0xab >> (7 - d)) & 1;
      assert.equal((bit ? n.left : n.right).type, 'empty');
      n = bit ? n.right : n.left;
    }
    assert.equal(n.type, 'ref');
    // the depth-16 band ends at depth 20: four NODEs down 0xe, then a REF
    let mid = decodeStratum(stratumId(16, a), s.rows.get('42abcd')!);
    for (let d = 16; d < 20; d++) {
      assert.equal(mid.type, 'node');
      if (mid.type !== 'node') return;
      mid = (0xe0 >> (7 - (d - 16))) & 1 ? mid.right : mid.left;
    }
    assert.equal(mid.type, 'ref');
    assert.deepEqual(stratumId(20, a), Buffer.from('43abcde0', 'hex'));
    const bottom = decodeStratum(stratumId(20, a), s.rows.get('43abcde0')!);
    assert.equal(bottom.type, 'node');
    const leaves = [...smtLeaves(s.root, s.read)];
    assert.deepEqual(
      leaves.map((l) => l.path),
      [a, b],
    );
    // A third leaf under 0xab 0xcd that parts from them at depth 16 touches the three strata above it.
    const c = pathWith([0xab, 0xcd, 0x10], 'c');
    const r = s.apply([{ path: c, value: Buffer.from('C') }]);
    assert.deepEqual([...r.writes.keys()].sort(), ['40', '41ab', '42abcd']);
    assert.deepEqual(r.deletes, []);
    // A leaf elsewhere touches only the root stratum: it collapses at depth 1.
    const d = pathWith([0x10], 'd');
    const r2 = s.apply([{ path: d, value: Buffer.from('D') }]);
    assert.deepEqual([...r2.writes.keys()], ['40']);
    assert.equal(smtAudit(s.root, s.read).leaves, 4);
  });

  test('leaves differing only in bit 255 need all 62 strata', () => {
    const s = new MemStore();
    const a = sha('deep');
    const b = Buffer.from(a);
    b[31] ^= 1;
    s.apply([
      { path: a, value: Buffer.alloc(40, 1) },
      { path: b, value: Buffer.alloc(40, 2) },
    ]);
    assert.equal(s.rows.size, 62);
    for (let level = 0; level < 62; level++) assert.ok(s.rows.has(hex(stratumId(bandTop(level), a))));
    assert.equal(bandTop(61), 252);
    const audit = smtAudit(s.root, s.read);
    assert.equal(audit.strata.length, 62);
    for (const id of audit.strata)
      assert.deepEqual(encodeStratum(decodeStratum(id, s.rows.get(hex(id))!)), s.rows.get(hex(id)));
  });

  test('only strata on touched paths are read and written', () => {
    const s = new MemStore();
    const batch: SmtUpdate[] = [];
    for (let i = 0; i < 3000; i++) batch.push({ path: sha(`k${i}`), value: Buffer.from([i & 0xff]) });
    s.apply(batch);
    const k = sha('k7');
    s.reads = [];
    const r = s.apply([{ path: k, value: Buffer.from('new') }]);
    const onPath = new Set(Array.from({ length: 62 }, (_, l) => hex(stratumId(bandTop(l), k))));
    assert.ok(s.reads.length >= 2);
    for (const id of s.reads) assert.ok(onPath.has(id), `read ${id} off the path`);
    for (const id of r.writes.keys()) assert.ok(onPath.has(id), `wrote ${id} off the path`);
    assert.equal(r.writes.size, s.reads.length);
  });

  test('decodeStratum rejects damaged rows', () => {
    const leaf = (p: Buffer, v: number[]) => Buffer.concat([Buffer.from([1, v.length]), p, Buffer.from(v)]);
    const node = (...kids: Buffer[]) => Buffer.concat([Buffer.from([2]), Buffer.alloc(32, 9), ...kids]);
    const ref = Buffer.concat([Buffer.from([3]), Buffer.alloc(32, 8)]);
    const p0 = pathWith([0x00], 'x'); // goes left at depth 0
    const p1 = pathWith([0x80], 'y'); // goes right
    const v = Buffer.from([2]); // the row version
    const ok = Buffer.concat([v, node(leaf(p0, [1]), leaf(p1, [2]))]);
    decodeStratum(Buffer.from([0x40]), ok);
    // Eight levels of nodes down the all-zero path, then a reference on the band edge.
    let deep = ref;
    for (let d = 7; d >= 0; d--) deep = node(deep, d === 0 ? leaf(p1, [3]) : Buffer.from([0]));
    decodeStratum(Buffer.from([0x40]), Buffer.concat([v, deep]));
    let tooDeep = node(ref, ref);
    for (let d = 7; d >= 0; d--) tooDeep = node(tooDeep, d === 0 ? leaf(p1, [3]) : Buffer.from([0]));
    // A 4-level band (depth 16 to 20): four levels of nodes, then the reference.
    const p16 = pathWith([0x12, 0x34, 0x00], 'q');
    const p16r = pathWith([0x12, 0x34, 0x80], 'r');
    let band4 = ref;
    for (let d = 3; d >= 0; d--) band4 = node(band4, d === 0 ? leaf(p16r, [3]) : Buffer.from([0]));
    decodeStratum(stratumId(16, p16), Buffer.concat([v, band4]));
    let below4 = node(ref, ref);
    for (let d = 3; d >= 0; d--) below4 = node(below4, d === 0 ? leaf(p16r, [3]) : Buffer.from([0]));
    const bad: [string, Buffer, Buffer?][] = [
      ['format 1 row', Buffer.concat([Buffer.from([1]), ok.subarray(1)])],
      ['empty row', Buffer.alloc(0)],
      ['trailing', Buffer.concat([ok, Buffer.from([0])])],
      ['truncated', ok.subarray(0, ok.length - 1)],
      ['unknown tag', Buffer.concat([Buffer.from([2, 7])])],
      ['empty top', Buffer.from([2, 0])],
      ['ref top', Buffer.concat([v, ref])],
      ['ref inside the band', Buffer.concat([v, node(ref, leaf(p1, [1]))])],
      ['node below the band', Buffer.concat([v, tooDeep])],
      ['node below a 4-level band', Buffer.concat([v, below4]), stratumId(16, p16)],
      ['node with one leaf', Buffer.concat([v, node(leaf(p0, [1]), Buffer.from([0]))])],
      ['node with no leaf', Buffer.concat([v, node(Buffer.from([0]), Buffer.from([0]))])],
      ['leaf off its path', Buffer.concat([v, node(leaf(p1, [1]), leaf(p0, [2]))])],
      ['leaf top below root', Buffer.concat([v, leaf(p1, [1])]), stratumId(8, p1)],
      ['leaf outside the stratum prefix', ok, stratumId(8, pathWith([0x55], 'z'))],
      ['bad id', ok, Buffer.from([0x41])],
      ['bad id level', ok, Buffer.from([0xff])],
      ['format 1 id', ok, Buffer.from([0])],
      ['id with bits past its band', Buffer.concat([v, band4]), Buffer.from([0x43, 0x12, 0x34, 0x01])],
    ];
    for (const [name, row, id] of bad) {
      assert.throws(() => decodeStratum(id ?? Buffer.from([0x40]), row), StorageError, name);
    }
  });

  test('damaged or stale storage is reported, not silently used', () => {
    const s = new MemStore();
    const batch: SmtUpdate[] = [];
    for (let i = 0; i < 2000; i++) batch.push({ path: sha(`k${i}`), value: Buffer.from([i & 0xff]) });
    s.apply(batch);
    const oldRoot = s.root;
    s.apply([{ path: sha('k1'), value: Buffer.from('changed') }]);
    // A stale root no longer matches the stored root stratum.
    assert.throws(() => smtLookup(oldRoot, sha('k1'), s.read), StorageError);
    assert.throws(
      () => smtApplyBatch(oldRoot, [{ path: sha('z'), value: Buffer.alloc(1) }], s.read),
      StorageError,
    );
    assert.throws(() => [...smtLeaves(oldRoot, s.read)], StorageError);
    // A flipped byte in a stored hash deep down is caught by the audit and by the parent check.
    const id = [...s.rows.keys()].find((k) => k.startsWith('42'))!;
    const row = Buffer.from(s.rows.get(id)!);
    row[5] ^= 1; // inside the top node's hash
    const damaged = new Map(s.rows).set(id, row);
    const readDamaged = (x: Buffer) => damaged.get(hex(x));
    assert.throws(() => smtAudit(s.root, readDamaged), StorageError);
    const victim = batch.find((u) => hex(stratumId(16, u.path)) === id)!.path;
    assert.throws(() => smtLookup(s.root, victim, readDamaged), StorageError);
    assert.throws(
      () => smtApplyBatch(s.root, [{ path: victim, value: Buffer.alloc(1) }], readDamaged),
      StorageError,
    );
    // A missing row.
    const missing = new Map(s.rows);
    missing.delete(id);
    assert.throws(() => smtLookup(s.root, victim, (x) => missing.get(hex(x))), StorageError);
    assert.throws(() => smtAudit(s.root, (x) => missing.get(hex(x))), StorageError);
    // A leaf value changed in place keeps the row well formed; the audit still catches it.
    smtAudit(s.root, s.read);
    const good = s.rows.get(id)!;
    const at = good.indexOf(victim) + 32; // first value byte of the victim's leaf
    assert.ok(at > 32);
    const edited = Buffer.from(good);
    edited[at] ^= 0xff;
    decodeStratum(Buffer.from(id, 'hex'), edited);
    const readEdited = (x: Buffer) => (hex(x) === id ? edited : s.rows.get(hex(x)));
    assert.throws(() => smtAudit(s.root, readEdited), StorageError);
  });

  test('StratumCache serves the top strata from memory and follows writes', () => {
    const s = new MemStore();
    const batch: SmtUpdate[] = [];
    for (let i = 0; i < 2000; i++) batch.push({ path: sha(`k${i}`), value: Buffer.from([i & 0xff]) });
    s.apply(batch);
    // Only the root stratum is cached (level 0); the tree of 2000 leaves ends in level-1 strata.
    const cache = new StratumCache(s.read, 0);
    const k = sha('k5');
    smtLookup(s.root, k, cache.read);
    s.reads = [];
    smtLookup(s.root, k, cache.read);
    assert.ok(s.reads.length > 0, 'the bottom stratum is read from the store');
    assert.ok(
      s.reads.every((id) => id !== '40'),
      `only level 1+ rows reach the store: ${s.reads}`,
    );
    const stale = new StratumCache(s.read, 0);
    smtLookup(s.root, k, stale.read);
    const r = smtApplyBatch(s.root, [{ path: k, value: Buffer.from('new') }], cache.read);
    for (const [key, w] of r.writes) s.rows.set(key, Buffer.from(w.data));
    s.root = r.root;
    cache.apply(r);
    const after = smtLookup(s.root, k, cache.read);
    assert.deepEqual(after.value, Buffer.from('new'));
    verifySmtProof(s.root, k, Buffer.from('new'), after.proof);
    // A cache that missed the writes serves an old root row, which the lookup refuses.
    assert.throws(() => smtLookup(s.root, k, stale.read), StorageError);
    cache.clear();
    assert.deepEqual(smtLookup(s.root, k, cache.read).value, Buffer.from('new'));
  });
});
