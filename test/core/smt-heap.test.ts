import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { StorageError, VerificationError } from '../../src/core/errors.js';
import { NodeHashMemo } from '../../src/core/merkle.js';
import {
  encodeSmtProof,
  SMT_EMPTY,
  type SmtUpdate,
  type StratumTable,
  smtApplyBatch,
  smtLookup,
  smtLookupBase64,
  stratumTable,
  verifySmtProof,
} from '../../src/core/smt.js';

const sha = (s: string) => createHash('sha256').update(s).digest();

class MemStore {
  rows = new Map<string, Buffer>();
  root: Buffer = SMT_EMPTY;
  read = (id: Buffer) => this.rows.get(id.toString('hex'));
  apply(updates: SmtUpdate[]): void {
    const r = smtApplyBatch(this.root, updates, this.read);
    for (const [k, w] of r.writes) this.rows.set(k, Buffer.from(w.data));
    for (const id of r.deletes) this.rows.delete(id.toString('hex'));
    this.root = r.root;
  }
}

/** Every row's table, as a cache that keeps rows would hold them. */
function heapsOf(store: MemStore): (row: Buffer) => StratumTable | undefined {
  const heaps = new Map<Buffer, StratumTable>();
  for (const row of store.rows.values()) heaps.set(row, stratumTable(row));
  return (row) => heaps.get(row);
}

/** Paths that share long prefixes (so the walk crosses strata and meets leaves and empties) and random ones. */
const pathArb = (bases: Buffer[]) =>
  fc.oneof(
    fc.uint8Array({ minLength: 32, maxLength: 32 }).map((a) => Buffer.from(a)),
    fc.tuple(fc.nat({ max: bases.length - 1 }), fc.nat({ max: 255 })).map(([b, bit]) => {
      const p = Buffer.from(bases[b]);
      p[bit >> 3] ^= 0x80 >> (bit & 7);
      return p;
    }),
  );

const memo = new NodeHashMemo(2);

describe('sparse index walk with row tables', () => {
  test('lookups with heap tables, without them, and encoded all give the same answer', () => {
    fc.assert(
      fc.property(
        fc
          .array(fc.uint8Array({ minLength: 32, maxLength: 32 }), { minLength: 1, maxLength: 3 })
          .chain((raw) => {
            const bases = raw.map((b) => Buffer.from(b));
            const update = fc.record({
              path: pathArb(bases),
              value: fc.uint8Array({ minLength: 0, maxLength: 40 }).map((v) => Buffer.from(v)),
            });
            return fc.record({
              batches: fc.array(fc.array(update, { maxLength: 60 }), { minLength: 1, maxLength: 4 }),
              probes: fc.array(pathArb(bases), { minLength: 1, maxLength: 20 }),
            });
          }),
        ({ batches, probes }) => {
          const store = new MemStore();
          const known: Buffer[] = [];
          for (const b of batches) {
            store.apply(b);
            for (const u of b) known.push(u.path);
          }
          const heapOf = heapsOf(store);
          for (const path of [...probes, ...known]) {
            const plain = smtLookup(store.root, path, store.read);
            const withHeap = smtLookup(store.root, path, store.read, heapOf);
            assert.deepEqual(withHeap, plain);
            const enc = smtLookupBase64(store.root, path, store.read, heapOf);
            assert.equal(enc.proof, encodeSmtProof(plain.proof).toString('base64'));
            assert.deepEqual(enc.value, plain.value);
            verifySmtProof(store.root, path, plain.value, plain.proof);
            // through a tiny node memory (constant evictions): same verdicts
            verifySmtProof(store.root, path, plain.value, plain.proof, memo, 256);
            const wrong = plain.value === undefined ? Buffer.from('x') : undefined;
            assert.throws(
              () => verifySmtProof(store.root, path, wrong, plain.proof, memo, 256),
              VerificationError,
            );
            if (plain.proof.siblings.length > 0) {
              const bent = { ...plain.proof, siblings: plain.proof.siblings.map((b) => Buffer.from(b)) };
              bent.siblings[0][5] ^= 1;
              assert.throws(
                () => verifySmtProof(store.root, path, plain.value, bent, memo, 256),
                VerificationError,
              );
              assert.throws(() => verifySmtProof(store.root, path, plain.value, bent), VerificationError);
            }
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  test('a tree past the depth-16 strata: heap walks equal plain walks', () => {
    const store = new MemStore();
    const batch: SmtUpdate[] = [];
    for (let i = 0; i < 6000; i++) batch.push({ path: sha(`k${i}`), value: sha(`v${i}`).subarray(0, 8) });
    store.apply(batch);
    const heapOf = heapsOf(store);
    for (let i = 0; i < 6000; i += 7) {
      for (const path of [sha(`k${i}`), sha(`absent${i}`)]) {
        const plain = smtLookup(store.root, path, store.read);
        assert.deepEqual(smtLookup(store.root, path, store.read, heapOf), plain);
        assert.deepEqual(
          smtLookupBase64(store.root, path, store.read, heapOf).proof,
          encodeSmtProof(plain.proof).toString('base64'),
        );
      }
    }
  });

  test('stratumTable maps heap positions to node offsets, tags and hashes and refuses malformed rows', () => {
    const store = new MemStore();
    store.apply([
      { path: Buffer.alloc(32, 0x00), value: Buffer.from('a') },
      { path: Buffer.alloc(32, 0xff), value: Buffer.from('b') },
    ]);
    const row = store.rows.get('40')!;
    const { offsets, tags, hashes } = stratumTable(row);
    // NODE(top) then LEAF(left) then LEAF(right)
    assert.deepEqual([...offsets.subarray(1, 5)], [1, 34, 34 + 34 + 1, -1]);
    assert.deepEqual([...tags.subarray(1, 5)], [0x02, 0x01, 0x01, 0xff]);
    const hashBytes = Buffer.from(hashes.buffer, hashes.byteOffset, hashes.byteLength);
    assert.deepEqual(hashBytes.subarray(32, 64), row.subarray(2, 34));
    assert.ok(hashBytes.subarray(64).every((b) => b === 0));
    assert.throws(() => stratumTable(row.subarray(0, row.length - 1)), StorageError);
    assert.throws(() => stratumTable(Buffer.concat([row, Buffer.from([0])])), StorageError);
    assert.throws(() => stratumTable(Buffer.from([0x02, 0x02])), StorageError);
    // a NODE cut short inside its hash
    assert.throws(() => stratumTable(row.subarray(0, 20)), StorageError);
  });
});
