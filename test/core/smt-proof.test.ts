import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { FormatError, VerificationError } from '../../src/core/errors.js';
import {
  decodeSmtProof,
  encodeSmtProof,
  SMT_EMPTY,
  type SmtProof,
  type SmtUpdate,
  smtApplyBatch,
  smtLookup,
  verifySmtProof,
} from '../../src/core/smt.js';

const sha = (s: string) => createHash('sha256').update(s).digest();

function flipBit(b: Buffer, i: number): Buffer {
  const c = Buffer.from(b);
  c[i >> 3] ^= 0x80 >> (i & 7);
  return c;
}

/** A tree with random keys plus adversarial neighbours: pairs that differ only in bit 255 or share 100+ bits. */
function buildTree() {
  const rows = new Map<string, Buffer>();
  const read = (id: Buffer) => rows.get(id.toString('hex'));
  const model = new Map<string, Buffer>();
  const updates: SmtUpdate[] = [];
  for (let i = 0; i < 300; i++)
    updates.push({ path: sha(`k${i}`), value: sha(`v${i}`).subarray(0, 8 + (i % 33)) });
  for (let i = 0; i < 20; i++) {
    const base = sha(`pair${i}`);
    updates.push({ path: base, value: Buffer.from([i]) });
    updates.push({ path: flipBit(base, 255), value: Buffer.from([i, 1]) });
    updates.push({ path: flipBit(base, 100 + i * 7), value: Buffer.from([i, 2]) });
  }
  const r = smtApplyBatch(SMT_EMPTY, updates, read);
  for (const [k, w] of r.writes) rows.set(k, w.data);
  for (const u of updates) model.set(u.path.toString('hex'), u.value);
  return { root: r.root, read, model, keys: updates.map((u) => u.path) };
}

const tree = buildTree();
const present = tree.keys;
const absentKeys: Buffer[] = [...Array(200).keys()].map((i): Buffer => sha(`absent${i}`));
for (const k of present) absentKeys.push(flipBit(k, 254));

function lookup(path: Buffer) {
  return smtLookup(tree.root, path, tree.read);
}

function valueIn(path: Buffer): Buffer | undefined {
  return tree.model.get(path.toString('hex'));
}

function rejected(fn: () => void, check?: string): void {
  try {
    fn();
  } catch (e) {
    if (e instanceof VerificationError) {
      if (check !== undefined) assert.equal(e.check, check);
      return;
    }
    if (e instanceof FormatError && check === undefined) return;
    throw e;
  }
  assert.fail(`accepted${check === undefined ? '' : ` (expected ${check})`}`);
}

function clone(p: SmtProof): SmtProof {
  const c: SmtProof = {
    kind: p.kind,
    depth: p.depth,
    bitmap: Buffer.from(p.bitmap),
    siblings: p.siblings.map((s) => Buffer.from(s)),
  };
  if (p.otherPath !== undefined) c.otherPath = Buffer.from(p.otherPath);
  if (p.otherValue !== undefined) c.otherValue = Buffer.from(p.otherValue);
  return c;
}

function setBit(bitmap: Buffer, i: number, on: boolean): void {
  if (on) bitmap[i >> 3] |= 0x80 >> (i & 7);
  else bitmap[i >> 3] &= ~(0x80 >> (i & 7));
}

/** Proofs of each kind, including deep ones. */
function sampleProofs(): { path: Buffer; value: Buffer | undefined; proof: SmtProof }[] {
  const out: { path: Buffer; value: Buffer | undefined; proof: SmtProof }[] = [];
  for (const path of [...present.slice(0, 5), ...present.slice(300, 306), ...absentKeys.slice(0, 10)]) {
    const { value, proof } = lookup(path);
    out.push({ path, value, proof });
  }
  const kinds = new Set(out.map((o) => o.proof.kind));
  assert.deepEqual([...kinds].sort(), ['empty', 'included', 'other']);
  assert.ok(out.some((o) => o.proof.depth === 256));
  return out;
}

describe('sparse index proof encoding', () => {
  test('pinned encoding', () => {
    const p: SmtProof = {
      kind: 'other',
      depth: 9,
      bitmap: Buffer.from([0x80, 0x80]),
      siblings: [Buffer.alloc(32, 0xaa), Buffer.alloc(32, 0xbb)],
      otherPath: Buffer.alloc(32, 0x11),
      otherValue: Buffer.from([1, 2, 3]),
    };
    const hex =
      '01' + '02' + '0009' + '8080' + 'aa'.repeat(32) + 'bb'.repeat(32) + '11'.repeat(32) + '03' + '010203';
    assert.equal(encodeSmtProof(p).toString('hex'), hex);
    assert.deepEqual(decodeSmtProof(Buffer.from(hex, 'hex')), p);
    const inc: SmtProof = {
      kind: 'included',
      depth: 1,
      bitmap: Buffer.from([0x80]),
      siblings: [Buffer.alloc(32, 1)],
    };
    assert.equal(encodeSmtProof(inc).toString('hex'), '0100000180' + '01'.repeat(32));
  });

  test('real proofs round-trip', () => {
    for (const { proof } of sampleProofs()) assert.deepEqual(decodeSmtProof(encodeSmtProof(proof)), proof);
  });

  test('decoder rejects malformed input', () => {
    const good = encodeSmtProof(lookup(present[0]).proof);
    const bad: [string, Buffer][] = [
      ['empty', Buffer.alloc(0)],
      ['header only partly', Buffer.from('0101', 'hex')],
      ['version 0', Buffer.from('00010000', 'hex')],
      ['version 2', Buffer.from('02010000', 'hex')],
      ['kind 3', Buffer.from('01030000', 'hex')],
      ['kind 255', Buffer.from('01ff0000', 'hex')],
      ['depth 257', Buffer.concat([Buffer.from('01010101', 'hex'), Buffer.alloc(33)])],
      ['depth 65535', Buffer.from('0101ffff', 'hex')],
      ['padding bit', Buffer.concat([Buffer.from('0101000140', 'hex')])],
      ['trailing byte', Buffer.concat([good, Buffer.from([0])])],
      ['missing other leaf', Buffer.from('01020000', 'hex')],
      [
        'other value cut',
        Buffer.concat([Buffer.from('01020000', 'hex'), Buffer.alloc(32), Buffer.from([5, 1, 2])]),
      ],
      [
        'other value too long',
        Buffer.concat([Buffer.from('01020000', 'hex'), Buffer.alloc(32), Buffer.from([1, 1, 2])]),
      ],
    ];
    for (let n = 0; n < good.length; n++) bad.push([`truncated to ${n}`, good.subarray(0, n)]);
    for (const [name, b] of bad) assert.throws(() => decodeSmtProof(b), FormatError, name);
  });

  test('encoder refuses inconsistent proofs', () => {
    const p = lookup(present[0]).proof;
    assert.throws(() => encodeSmtProof({ ...p, siblings: p.siblings.slice(1) }), FormatError);
    assert.throws(() => encodeSmtProof({ ...p, depth: 257, bitmap: Buffer.alloc(33) }), FormatError);
    assert.throws(() => encodeSmtProof({ ...p, otherPath: Buffer.alloc(32) }), FormatError);
    assert.throws(
      () => encodeSmtProof({ kind: 'other', depth: 0, bitmap: Buffer.alloc(0), siblings: [] }),
      FormatError,
    );
  });
});

describe('sparse index proof verification is strict', () => {
  test('valid proofs verify', () => {
    for (const { path, value, proof } of sampleProofs()) verifySmtProof(tree.root, path, value, proof);
  });

  test('every single-bit flip, truncation and extension of an encoded proof is rejected', () => {
    // Two proofs of each kind, one of them 256 deep.
    const all = sampleProofs();
    const picked = ['included', 'empty', 'other'].flatMap((k) =>
      all.filter((s) => s.proof.kind === k).slice(0, 2),
    );
    picked.push(all.find((s) => s.proof.depth === 256)!);
    for (const { path, value, proof } of picked) {
      const enc = encodeSmtProof(proof);
      const check = (b: Buffer) => rejected(() => verifySmtProof(tree.root, path, value, decodeSmtProof(b)));
      // Every bit outside the siblings, every third bit inside them.
      const sibStart = 4 + proof.bitmap.length;
      const sibEnd = sibStart + 32 * proof.siblings.length;
      for (let i = 0; i < enc.length * 8; i++)
        if (i >> 3 < sibStart || i >> 3 >= sibEnd || i % 3 === 0) check(flipBit(enc, i));
      for (let n = 0; n < enc.length; n++) check(enc.subarray(0, n));
      check(Buffer.concat([enc, Buffer.from([0])]));
      check(Buffer.concat([enc, Buffer.alloc(32, 7)]));
    }
  });

  test('structural tampering is rejected with the right check', () => {
    const inc = sampleProofs().find((s) => s.proof.kind === 'included' && s.proof.siblings.length >= 2)!;
    const { path, value, proof } = inc;
    const v = (p: SmtProof, check: string, ...val: [Buffer | undefined] | []) =>
      rejected(() => verifySmtProof(tree.root, path, val.length === 0 ? value : val[0], p), check);

    let p = clone(proof);
    p.siblings.push(Buffer.alloc(32, 9));
    v(p, 'smt.sibling-count');
    p = clone(proof);
    p.siblings.pop();
    v(p, 'smt.sibling-count');
    p = clone(proof);
    p.siblings[0] = Buffer.alloc(31);
    v(p, 'smt.sibling-length');
    p = clone(proof);
    p.siblings[0] = Buffer.alloc(33);
    v(p, 'smt.sibling-length');
    p = clone(proof);
    p.siblings[0] = Buffer.from(SMT_EMPTY);
    v(p, 'smt.sibling-empty');
    p = clone(proof);
    p.bitmap = Buffer.concat([p.bitmap, Buffer.alloc(1)]);
    v(p, 'smt.bitmap-length');
    p = clone(proof);
    p.bitmap = p.bitmap.subarray(0, p.bitmap.length - 1);
    v(p, 'smt.bitmap-length');
    if (proof.depth % 8 !== 0) {
      p = clone(proof);
      setBit(p.bitmap, proof.depth, true);
      v(p, 'smt.bitmap-padding');
    }
    p = clone(proof);
    p.depth = 257;
    p.bitmap = Buffer.alloc(33);
    v(p, 'smt.depth');
    p = clone(proof);
    p.depth = -1;
    v(p, 'smt.depth');
    p = clone(proof);
    p.depth = 1.5;
    v(p, 'smt.depth');
    // Deepest sibling claimed empty: drop it and its bit.
    p = clone(proof);
    setBit(p.bitmap, proof.depth - 1, false);
    p.siblings.pop();
    v(p, 'smt.deepest-sibling');
    // Move a sibling to another depth with the same count.
    p = clone(proof);
    const firstSet = [...Array(proof.depth).keys()].find(
      (i) => (proof.bitmap[i >> 3] & (0x80 >> (i & 7))) !== 0,
    )!;
    const firstClear = [...Array(proof.depth).keys()].find(
      (i) => (proof.bitmap[i >> 3] & (0x80 >> (i & 7))) === 0,
    );
    if (firstClear !== undefined) {
      setBit(p.bitmap, firstSet, false);
      setBit(p.bitmap, firstClear, true);
      rejected(() => verifySmtProof(tree.root, path, value, p));
    }
    // Swap two siblings.
    p = clone(proof);
    [p.siblings[0], p.siblings[1]] = [p.siblings[1], p.siblings[0]];
    v(p, 'smt.root-mismatch');
    // Every bit of every sibling.
    for (let s = 0; s < proof.siblings.length; s++) {
      for (let i = 0; i < 256; i += 5) {
        p = clone(proof);
        p.siblings[s] = flipBit(p.siblings[s], i);
        v(p, 'smt.root-mismatch');
      }
    }
    // One level deeper or shallower.
    p = clone(proof);
    p.depth += 1;
    p.bitmap = Buffer.alloc((p.depth + 7) >> 3);
    proof.bitmap.copy(p.bitmap);
    setBit(p.bitmap, proof.depth, true);
    p.siblings.push(Buffer.alloc(32, 5));
    v(p, 'smt.root-mismatch');

    v(proof, 'smt.root-mismatch', Buffer.concat([value!, Buffer.from([0])]));
    v(proof, 'smt.root-mismatch', Buffer.alloc(0));
    v(proof, 'smt.kind-mismatch', undefined);
    v(proof, 'smt.value-length', Buffer.alloc(256));
    rejected(() => verifySmtProof(tree.root.subarray(1), path, value, proof), 'smt.root-length');
    rejected(() => verifySmtProof(tree.root, path.subarray(1), value, proof), 'smt.path-length');
    rejected(() => verifySmtProof(flipBit(tree.root, 0), path, value, proof), 'smt.root-mismatch');
    rejected(
      () => verifySmtProof(tree.root, path, value, { ...proof, kind: 'bogus' as 'empty' }),
      'smt.kind',
    );
    rejected(
      () =>
        verifySmtProof(tree.root, path, value, {
          ...proof,
          otherPath: Buffer.alloc(32),
          otherValue: Buffer.alloc(0),
        }),
      'smt.other-leaf',
    );
  });

  test('proofs do not transfer to other keys', () => {
    for (let i = 0; i < 40; i++) {
      const a = present[i];
      const b = present[(i * 7 + 1) % present.length];
      if (a.equals(b)) continue;
      const pa = lookup(a).proof;
      rejected(() => verifySmtProof(tree.root, b, valueIn(a), pa));
      rejected(() => verifySmtProof(tree.root, b, valueIn(b), pa));
      rejected(() => verifySmtProof(tree.root, b, undefined, pa));
    }
    // The adversarial pairs (differ only in bit 255): each one's proof fails for the other.
    for (let i = 300; i < present.length; i += 3) {
      const a = present[i];
      const b = present[i + 1];
      assert.ok(a.subarray(0, 31).equals(b.subarray(0, 31)));
      const pa = lookup(a).proof;
      assert.equal(pa.depth, 256);
      rejected(() => verifySmtProof(tree.root, b, valueIn(b), pa), 'smt.root-mismatch');
      rejected(() => verifySmtProof(tree.root, b, valueIn(a), pa), 'smt.root-mismatch');
    }
  });

  test('non-inclusion cannot be forged for a present key', () => {
    for (const path of present.slice(0, 60).concat(present.slice(300))) {
      const value = valueIn(path)!;
      const { proof } = lookup(path);
      // The honest leaf hash at the right place: only the other-is-key rule stands in the way.
      const asOther: SmtProof = {
        ...clone(proof),
        kind: 'other',
        otherPath: Buffer.from(path),
        otherValue: value,
      };
      verifySmtProof(tree.root, path, value, proof);
      rejected(() => verifySmtProof(tree.root, path, undefined, asOther), 'smt.other-is-key');
      rejected(
        () => verifySmtProof(tree.root, path, undefined, { ...clone(proof), kind: 'empty' }),
        'smt.root-mismatch',
      );
      rejected(() => verifySmtProof(tree.root, path, undefined, proof), 'smt.kind-mismatch');
      // The proof of the deepest sibling leaf, relabelled as 'other' for this key.
      if (proof.depth > 0) {
        const neighbour = flipBit(path, proof.depth - 1);
        const n = lookup(neighbour);
        if (n.proof.kind === 'other') {
          const forged: SmtProof = { ...clone(n.proof) };
          rejected(() => verifySmtProof(tree.root, path, undefined, forged), 'smt.other-prefix');
        }
      }
    }
    // An absence proof made for the tree before the key was added does not hold against the tree after.
    for (const path of [present[0], present[1], present[300], present[301]]) {
      const before = new Map<string, Buffer>();
      const oldRows = new Map<string, Buffer>();
      const rest = present.filter((k) => !k.equals(path)).map((k) => ({ path: k, value: valueIn(k)! }));
      const r = smtApplyBatch(SMT_EMPTY, rest, (id) => oldRows.get(id.toString('hex')));
      for (const [k, w] of r.writes) before.set(k, w.data);
      const old = smtLookup(r.root, path, (id) => before.get(id.toString('hex')));
      assert.equal(old.value, undefined);
      verifySmtProof(r.root, path, undefined, old.proof);
      rejected(() => verifySmtProof(tree.root, path, undefined, old.proof), 'smt.root-mismatch');
    }
  });

  test('absence proofs: tampering with the other leaf or the kind is rejected', () => {
    let others = 0;
    let empties = 0;
    for (const path of absentKeys.slice(0, 40).concat(absentKeys.slice(200, 260))) {
      const { value, proof } = lookup(path);
      assert.equal(value, undefined);
      verifySmtProof(tree.root, path, undefined, proof);
      const v = (p: SmtProof, check?: string) =>
        rejected(() => verifySmtProof(tree.root, path, undefined, p), check);
      rejected(() => verifySmtProof(tree.root, path, Buffer.alloc(8), proof), 'smt.kind-mismatch');
      if (proof.kind === 'other') {
        others++;
        for (let i = 0; i < 256; i += 3) {
          const p = clone(proof);
          p.otherPath = flipBit(p.otherPath!, i);
          v(
            p,
            i < proof.depth
              ? 'smt.other-prefix'
              : p.otherPath.equals(path)
                ? 'smt.other-is-key'
                : 'smt.root-mismatch',
          );
        }
        let p = clone(proof);
        p.otherValue = Buffer.concat([p.otherValue!, Buffer.from([1])]);
        v(p, 'smt.root-mismatch');
        p = clone(proof);
        p.otherValue = Buffer.alloc(256);
        v(p, 'smt.other-leaf');
        p = clone(proof);
        p.otherPath = undefined;
        v(p, 'smt.other-leaf');
        p = clone(proof);
        p.kind = 'empty';
        v(p, 'smt.other-leaf');
        p.otherPath = undefined;
        p.otherValue = undefined;
        v(p, 'smt.root-mismatch');
      } else {
        empties++;
        const p = clone(proof);
        p.kind = 'other';
        v(p, 'smt.other-leaf');
        // Claim the empty subtree one level further down, with an empty sibling at the deepest depth.
        const q = clone(proof);
        q.depth += 1;
        q.bitmap = Buffer.alloc((q.depth + 7) >> 3);
        proof.bitmap.copy(q.bitmap);
        v(q, 'smt.deepest-sibling');
      }
    }
    assert.ok(others > 0 && empties > 0);
  });

  test('random mutations of encoded proofs are rejected (property)', () => {
    const samples = sampleProofs().map((s) => ({ ...s, enc: encodeSmtProof(s.proof) }));
    fc.assert(
      fc.property(
        fc.nat({ max: samples.length - 1 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }),
        (si, edits) => {
          const { path, value, enc } = samples[si];
          const b = Buffer.from(enc);
          for (const [at, x] of edits) b[at % b.length] ^= x;
          if (b.equals(enc)) return;
          rejected(() => verifySmtProof(tree.root, path, value, decodeSmtProof(b)));
        },
      ),
      { numRuns: 500 },
    );
  });
});
