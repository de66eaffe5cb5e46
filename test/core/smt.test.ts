import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  decodeSmtProof,
  decodeStratum,
  encodeSmtProof,
  encodeStratum,
  SMT_EMPTY,
  type SmtProof,
  type SmtUpdate,
  smtApplyBatch,
  smtAudit,
  smtLeafHash,
  smtLeaves,
  smtLookup,
  verifySmtProof,
} from '../../src/core/smt.js';
import { smtApplyBatchRows } from '../../src/core/smt-batch.js';

// ---------------------------------------------------------------------------------------------------------
// Naive reference: a plain map and a recursive root computation straight from the rules, written without
// looking at the implementation's tricks (no strata, no collapsing shortcuts beyond the rule itself).

function refSha(...parts: Uint8Array[]): Buffer {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}

function refBit(path: Buffer, i: number): number {
  return (path[Math.floor(i / 8)] >> (7 - (i % 8))) & 1;
}

function refHash(entries: [Buffer, Buffer][], depth: number): Buffer {
  if (entries.length === 0) return Buffer.alloc(32);
  if (entries.length === 1) return refSha(Buffer.from([2]), entries[0][0], entries[0][1]);
  const left = entries.filter(([p]) => refBit(p, depth) === 0);
  const right = entries.filter(([p]) => refBit(p, depth) === 1);
  return refSha(Buffer.from([3]), refHash(left, depth + 1), refHash(right, depth + 1));
}

function refRoot(model: Map<string, Buffer>): Buffer {
  return refHash(
    [...model].map(([k, v]) => [Buffer.from(k, 'hex'), v]),
    0,
  );
}

// ---------------------------------------------------------------------------------------------------------

class MemStore {
  rows = new Map<string, Buffer>();
  root: Buffer = SMT_EMPTY;
  read = (id: Buffer) => this.rows.get(id.toString('hex'));
  apply(updates: SmtUpdate[]): ReturnType<typeof smtApplyBatch> {
    const r = smtApplyBatch(this.root, updates, this.read);
    for (const [k, w] of r.writes) {
      assert.equal(k, w.id.toString('hex'));
      this.rows.set(k, w.data);
    }
    for (const id of r.deletes) this.rows.delete(id.toString('hex'));
    this.root = r.root;
    return r;
  }
}

/** Keys that stress the tree: random ones, and variants of a few bases that differ only in late bits. */
const keyArb = (bases: Buffer[]) =>
  fc.oneof(
    { weight: 1, arbitrary: fc.uint8Array({ minLength: 32, maxLength: 32 }).map((a) => Buffer.from(a)) },
    {
      weight: 4,
      arbitrary: fc
        .tuple(
          fc.nat({ max: bases.length - 1 }),
          fc.array(
            fc.oneof(
              fc.constant(255),
              fc.constant(254),
              fc.integer({ min: 100, max: 255 }),
              fc.nat({ max: 255 }),
            ),
            { minLength: 0, maxLength: 3 },
          ),
        )
        .map(([b, flips]) => {
          const k = Buffer.from(bases[b]);
          for (const i of flips) k[i >> 3] ^= 0x80 >> (i & 7);
          return k;
        }),
    },
  );

const valueArb = fc.oneof(
  { weight: 6, arbitrary: fc.uint8Array({ minLength: 40, maxLength: 40 }) },
  { weight: 2, arbitrary: fc.uint8Array({ minLength: 0, maxLength: 8 }) },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 250, maxLength: 255 }) },
);

const scenarioArb = fc
  .array(fc.uint8Array({ minLength: 32, maxLength: 32 }), { minLength: 1, maxLength: 3 })
  .chain((rawBases) => {
    const bases = rawBases.map((b) => Buffer.from(b));
    const update = fc.record({ path: keyArb(bases), value: valueArb.map((v) => Buffer.from(v)) });
    return fc.record({
      batches: fc.array(fc.array(update, { minLength: 0, maxLength: 40 }), { minLength: 1, maxLength: 5 }),
      probes: fc.array(keyArb(bases), { minLength: 1, maxLength: 20 }),
    });
  });

function checkProofRoundTrip(p: SmtProof): SmtProof {
  const q = decodeSmtProof(encodeSmtProof(p));
  assert.deepEqual(q, p);
  return q;
}

describe('sparse index against the naive reference', () => {
  test('roots, lookups, proofs, leaves and strata agree for random batches', () => {
    const kinds = new Map<string, number>();
    let deepest = 0;
    fc.assert(
      fc.property(scenarioArb, ({ batches, probes }) => {
        const store = new MemStore();
        const model = new Map<string, Buffer>();
        for (const batch of batches) {
          store.apply(batch);
          for (const u of batch) model.set(u.path.toString('hex'), u.value);
          assert.deepEqual(store.root, refRoot(model));
        }
        // Every present key: value and inclusion proof.
        for (const [k, v] of model) {
          const path = Buffer.from(k, 'hex');
          const { value, proof } = smtLookup(store.root, path, store.read);
          assert.deepEqual(value, v);
          assert.equal(proof.kind, 'included');
          verifySmtProof(store.root, path, v, checkProofRoundTrip(proof));
          deepest = Math.max(deepest, proof.depth);
          kinds.set('included', (kinds.get('included') ?? 0) + 1);
        }
        // Absent keys: random probes and the neighbour of each present key in bit 255.
        const absent = [...probes];
        for (const k of model.keys()) {
          const n = Buffer.from(k, 'hex');
          n[31] ^= 1;
          absent.push(n);
        }
        for (const path of absent) {
          const { value, proof } = smtLookup(store.root, path, store.read);
          const expected = model.get(path.toString('hex'));
          assert.deepEqual(value, expected);
          verifySmtProof(store.root, path, expected, checkProofRoundTrip(proof));
          if (expected === undefined) kinds.set(proof.kind, (kinds.get(proof.kind) ?? 0) + 1);
        }
        // Leaves in path order.
        const want = [...model].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
        const got = [...smtLeaves(store.root, store.read)].map(({ path, value }) => [
          path.toString('hex'),
          value,
        ]);
        assert.deepEqual(got, want);
        // Strata: every stored row is reachable (no orphans), decodes and re-encodes to itself.
        const audit = smtAudit(store.root, store.read);
        assert.equal(audit.leaves, model.size);
        assert.deepEqual(audit.strata.map((id) => id.toString('hex')).sort(), [...store.rows.keys()].sort());
        for (const id of audit.strata) {
          const row = store.read(id)!;
          assert.deepEqual(encodeStratum(decodeStratum(id, row)), row);
        }
      }),
      { numRuns: 150 },
    );
    assert.ok((kinds.get('empty') ?? 0) > 0, 'non-inclusion of kind empty was exercised');
    assert.ok((kinds.get('other') ?? 0) > 0, 'non-inclusion of kind other was exercised');
    assert.ok(deepest === 256, `a leaf at depth 256 was exercised (deepest ${deepest})`);
  });

  test('one batch or many gives the same root and the same rows', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ minLength: 32, maxLength: 32 }), { minLength: 1, maxLength: 120 }),
        fc.array(fc.nat({ max: 119 }), { maxLength: 6 }),
        (raw, cuts) => {
          const updates = raw.map((p, i) => ({ path: Buffer.from(p), value: Buffer.from([i & 0xff]) }));
          const last = new Map<string, Buffer>();
          for (const u of updates) last.set(u.path.toString('hex'), u.value);
          const whole = new MemStore();
          whole.apply(updates);
          const split = new MemStore();
          const points = [...new Set(cuts.map((c) => c % updates.length))].sort((a, b) => a - b);
          let from = 0;
          for (const p of [...points, updates.length]) {
            split.apply(updates.slice(from, p));
            from = p;
          }
          assert.deepEqual(split.root, whole.root);
          assert.deepEqual(whole.root, refRoot(last));
          assert.deepEqual(new Map(split.rows), new Map(whole.rows));
        },
      ),
      { numRuns: 100 },
    );
  });

  test('a larger tree crosses several strata and stays consistent', () => {
    const store = new MemStore();
    const model = new Map<string, Buffer>();
    let seed = 1;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    for (let b = 0; b < 6; b++) {
      const batch: SmtUpdate[] = [];
      for (let i = 0; i < 1500; i++) {
        // Half random keys, half replacements of earlier keys.
        const path = Buffer.alloc(32);
        if (model.size > 0 && rnd() % 2 === 0) {
          const keys = [...model.keys()];
          Buffer.from(keys[rnd() % keys.length], 'hex').copy(path);
        } else {
          for (let j = 0; j < 32; j++) path[j] = rnd() & 0xff;
        }
        const value = Buffer.alloc(40, rnd() & 0xff);
        batch.push({ path, value });
      }
      store.apply(batch);
      for (const u of batch) model.set(u.path.toString('hex'), u.value);
    }
    assert.deepEqual(store.root, refRoot(model));
    const audit = smtAudit(store.root, store.read);
    assert.equal(audit.leaves, model.size);
    assert.equal(audit.strata.length, store.rows.size);
    assert.ok(
      audit.strata.some((id) => id[0] === 0x42),
      'tree reaches the depth-16 strata',
    );
    for (const [k, v] of [...model].slice(0, 300)) {
      const path = Buffer.from(k, 'hex');
      const { value, proof } = smtLookup(store.root, path, store.read);
      assert.deepEqual(value, v);
      verifySmtProof(store.root, path, v, proof);
    }
  });

  test('rewriting identical values writes nothing and keeps the root', () => {
    const store = new MemStore();
    const batch = Array.from({ length: 50 }, (_, i) => ({
      path: refSha(Buffer.from([i])),
      value: Buffer.from([i]),
    }));
    store.apply(batch);
    const before = store.root;
    const r = store.apply(batch.slice(10, 20));
    assert.deepEqual(r.root, before);
    assert.equal(r.writes.size, 0);
  });

  test('the last update of a repeated path wins', () => {
    const p = refSha(Buffer.from('k'));
    const store = new MemStore();
    store.apply([
      { path: p, value: Buffer.from('a') },
      { path: refSha(Buffer.from('x')), value: Buffer.from('x') },
      { path: p, value: Buffer.from('b') },
      { path: p, value: Buffer.from('c') },
    ]);
    assert.deepEqual(smtLookup(store.root, p, store.read).value, Buffer.from('c'));
  });

  test('pinned roots for small trees', () => {
    const a = Buffer.alloc(32);
    const b = Buffer.alloc(32);
    b[31] = 1; // differs from a only in bit 255
    const va = Buffer.from('A');
    const vb = Buffer.from('B');
    const la = refSha(Buffer.from([2]), a, va);
    const lb = refSha(Buffer.from([2]), b, vb);
    assert.deepEqual(smtLeafHash(a, va), la);
    const one = new MemStore();
    one.apply([{ path: a, value: va }]);
    assert.deepEqual(one.root, la, 'a single leaf is the root');
    const two = new MemStore();
    two.apply([
      { path: b, value: vb },
      { path: a, value: va },
    ]);
    // 255 levels of (node, EMPTY) above the split at the last bit.
    let h = refSha(Buffer.from([3]), la, lb);
    for (let d = 254; d >= 0; d--) h = refSha(Buffer.from([3]), h, Buffer.alloc(32));
    assert.deepEqual(two.root, h);
    const { proof } = smtLookup(two.root, a, two.read);
    assert.equal(proof.depth, 256);
    assert.equal(proof.siblings.length, 1);
    assert.deepEqual(proof.siblings[0], lb);
    assert.equal(proof.bitmap.length, 32);
    assert.equal(proof.bitmap[31], 1);
    // A key that shares 254 bits with both lands in the empty subtree at depth 255.
    const c = Buffer.alloc(32);
    c[31] = 2;
    const absent = smtLookup(two.root, c, two.read);
    assert.equal(absent.proof.kind, 'empty');
    assert.equal(absent.proof.depth, 255);
    verifySmtProof(two.root, c, undefined, absent.proof);
  });

  test('empty and single-leaf trees give depth-0 proofs', () => {
    const k = refSha(Buffer.from('k'));
    const empty = smtLookup(SMT_EMPTY, k, () => assert.fail('no read for the empty tree'));
    assert.deepEqual(empty.proof, { kind: 'empty', depth: 0, bitmap: Buffer.alloc(0), siblings: [] });
    verifySmtProof(SMT_EMPTY, k, undefined, empty.proof);
    assert.deepEqual(encodeSmtProof(empty.proof), Buffer.from('01010000', 'hex'));
    const store = new MemStore();
    store.apply([{ path: k, value: Buffer.from('v') }]);
    const inc = smtLookup(store.root, k, store.read);
    assert.equal(inc.proof.depth, 0);
    verifySmtProof(store.root, k, Buffer.from('v'), inc.proof);
    const other = smtLookup(store.root, refSha(Buffer.from('z')), store.read);
    assert.equal(other.proof.kind, 'other');
    assert.equal(other.proof.depth, 0);
    verifySmtProof(store.root, refSha(Buffer.from('z')), undefined, other.proof);
  });

  test("packed updates (the worker's form) give the same root and rows as an array of updates", () => {
    const bases = Array.from({ length: 3 }, (_, i) => refSha(Buffer.from([0x70, i])));
    fc.assert(
      fc.property(
        fc.array(fc.tuple(keyArb(bases), fc.uint8Array({ maxLength: 255 })), { minLength: 1, maxLength: 80 }),
        fc.array(fc.tuple(keyArb(bases), fc.uint8Array({ maxLength: 64 })), { maxLength: 40 }),
        (first, second) => {
          const store = new MemStore();
          store.apply(first.map(([path, v]) => ({ path, value: Buffer.from(v) })));
          // the second batch repeats some paths of the first and of itself
          const updates = [...second, ...first.slice(0, 5)].map(([path, v]) => ({
            path,
            value: Buffer.from(v),
          }));
          const paths = Buffer.concat(updates.map((u) => u.path));
          const values = Buffer.concat(updates.map((u) => u.value));
          const valueEnds = new Uint32Array(updates.length);
          let at = 0;
          updates.forEach((u, i) => {
            at += u.value.length;
            valueEnds[i] = at;
          });
          const packed = smtApplyBatchRows(store.root, { paths, values, valueEnds }, store.read);
          const plain = smtApplyBatch(store.root, updates, store.read);
          assert.deepEqual(packed.root, plain.root);
          const model = new Map<string, Buffer>();
          for (const [path, v] of first) model.set(path.toString('hex'), Buffer.from(v));
          for (const u of updates) model.set(u.path.toString('hex'), u.value);
          assert.deepEqual(packed.root, refRoot(model));
          const rows = new Map<string, Buffer>();
          for (let i = 0; i < packed.count; i++) {
            assert.equal(packed.row(i).length, packed.rowLength(i));
            assert.equal(packed.id(i).length, packed.idLength(i));
            rows.set(packed.id(i).toString('hex'), Buffer.from(packed.row(i)));
          }
          assert.deepEqual(rows, new Map([...plain.writes].map(([k, w]) => [k, Buffer.from(w.data)])));
        },
      ),
      { numRuns: 100 },
    );
  });

  test('malformed packed updates are FormatErrors', () => {
    const read = () => undefined;
    const paths = Buffer.alloc(64, 1);
    const values = Buffer.alloc(300);
    for (const [p, ends] of [
      [paths.subarray(0, 63), [1, 2]],
      [paths, [1, 257]],
      [paths, [2, 1]],
      [paths, [1, 301]],
    ] as const) {
      assert.throws(
        () => smtApplyBatchRows(SMT_EMPTY, { paths: p, values, valueEnds: Uint32Array.from(ends) }, read),
        {
          name: 'FormatError',
        },
      );
    }
  });

  test('malformed updates are FormatErrors', () => {
    assert.throws(
      () => smtApplyBatch(SMT_EMPTY, [{ path: Buffer.alloc(31), value: Buffer.alloc(1) }], () => undefined),
      { name: 'FormatError' },
    );
    assert.throws(
      () => smtApplyBatch(SMT_EMPTY, [{ path: Buffer.alloc(32), value: Buffer.alloc(256) }], () => undefined),
      { name: 'FormatError' },
    );
    assert.throws(() => smtLeafHash(Buffer.alloc(32), Buffer.alloc(256)), { name: 'FormatError' });
    assert.throws(() => smtApplyBatch(Buffer.alloc(31), [], () => undefined), { name: 'FormatError' });
    assert.throws(() => smtLookup(SMT_EMPTY, Buffer.alloc(33), () => undefined), { name: 'FormatError' });
  });
});
