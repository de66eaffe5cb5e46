import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { FormatError, VerificationError } from '../../src/core/errors.js';
import { sha256 } from '../../src/core/hash.js';
import {
  consistencyProof,
  EMPTY_ROOT,
  type HashReader,
  inclusionProof,
  inclusionProofAbove,
  inclusionProofBelow,
  leafHash,
  NodeHashMemo,
  nodeHash,
  rootFromInclusionProof,
  rootFromLeafHashes,
  subtreesOfSize,
  treeRoot,
  verifyConsistency,
  verifyInclusion,
} from '../../src/core/merkle.js';

const VECTORS = fileURLToPath(new URL('../../../shared/testdata/rfc6962/', import.meta.url));

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (name.endsWith('.json')) out.push(p);
  }
  return out;
}

// The vectors hold deliberately malformed base64-ish values (e.g. "ZG9uJ3QgY2FyZSAy"), so decode leniently.
const b64 = (s: string): Buffer => Buffer.from(s, 'base64');
const proofOf = (p: string[] | null): Buffer[] => (p ?? []).map(b64);

function expectRejected(fn: () => void, where: string): void {
  assert.throws(
    fn,
    (e: unknown) => e instanceof VerificationError || e instanceof FormatError,
    `${where}: expected a VerificationError or FormatError`,
  );
}

function leaves(n: number, seed = 0): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) out.push(leafHash(Buffer.from(`leaf ${seed} ${i}`)));
  return out;
}

/** Reference reader straight from the definition; also asserts callers only ask for complete subtrees. */
function readerFor(hashes: readonly Buffer[], size = hashes.length): HashReader {
  return (level, index) => {
    const start = index * 2 ** level;
    const end = start + 2 ** level;
    assert.ok(Number.isInteger(index) && index >= 0, `bad index ${index}`);
    assert.ok(end <= size, `asked for incomplete subtree (${level}, ${index}) of size ${size}`);
    return rootFromLeafHashes(hashes.slice(start, end));
  };
}

/**
 * The side of each audit path element, leaf first, from the RFC 9162 recursion. Two (index, size)
 * pairs with the same shape verify the very same computation, so a proof valid for one is valid for
 * the other: the root alone does not commit to the size.
 */
function inclusionShape(index: number, size: number): string {
  const topDown: string[] = [];
  let n = size;
  let m = index;
  while (n > 1) {
    let k = 1;
    while (k * 2 < n) k *= 2;
    if (m < k) {
      topDown.push('R');
      n = k;
    } else {
      topDown.push('L');
      m -= k;
      n -= k;
    }
  }
  return topDown.reverse().join('');
}

/** Same for consistency proofs: 'S' marks an explicit seed hash, 'L'/'R' the sides of the rest. */
function consistencyShape(m0: number, n0: number): string {
  const topDown: string[] = [];
  let m = m0;
  let n = n0;
  let complete = true;
  while (m !== n) {
    let k = 1;
    while (k * 2 < n) k *= 2;
    if (m <= k) {
      topDown.push('R');
      n = k;
    } else {
      topDown.push('L');
      m -= k;
      n -= k;
      complete = false;
    }
  }
  if (!complete) topDown.push('S');
  return topDown.reverse().join('');
}

function flipped(proof: readonly Buffer[], i: number, byte: number): Buffer[] {
  const copy = proof.map((p) => Buffer.from(p));
  copy[i][byte] ^= 0x01;
  return copy;
}

describe('merkle: basics', () => {
  test('hash domains and empty root', () => {
    assert.equal(
      EMPTY_ROOT.toString('hex'),
      'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
    );
    assert.deepEqual(leafHash(Buffer.from('abc')), sha256(Buffer.from('\x00abc', 'latin1')));
    const a = Buffer.alloc(32, 1);
    const b = Buffer.alloc(32, 2);
    assert.deepEqual(nodeHash(a, b), sha256(Buffer.concat([Buffer.from([1]), a, b])));
    assert.deepEqual(rootFromLeafHashes([]), EMPTY_ROOT);
    assert.deepEqual(
      treeRoot(0, () => assert.fail('no reads for the empty tree')),
      EMPTY_ROOT,
    );
  });

  test('RFC 6962 reference roots for the standard 8 leaves', () => {
    // Leaves and roots from the RFC 6962 test data used by Certificate Transparency implementations.
    const inputs = [
      '',
      '00',
      '10',
      '2021',
      '3031',
      '40414243',
      '5051525354555657',
      '606162636465666768696a6b6c6d6e6f',
    ];
    const roots = [
      '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d',
      'fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125',
      'aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77',
      'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
      '4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4',
      '76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef',
      'ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c',
      '5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328',
    ];
    const hashes = inputs.map((h) => leafHash(Buffer.from(h, 'hex')));
    for (let n = 1; n <= 8; n++) {
      assert.equal(rootFromLeafHashes(hashes.slice(0, n)).toString('hex'), roots[n - 1]);
      assert.equal(treeRoot(n, readerFor(hashes, n)).toString('hex'), roots[n - 1]);
    }
  });

  test('subtreesOfSize is the binary decomposition', () => {
    assert.deepEqual(subtreesOfSize(0), []);
    assert.deepEqual(subtreesOfSize(1), [{ level: 0, index: 0 }]);
    assert.deepEqual(subtreesOfSize(13), [
      { level: 3, index: 0 },
      { level: 2, index: 2 },
      { level: 0, index: 12 },
    ]);
    const big = 2 ** 52 + 2 ** 40 + 3;
    assert.deepEqual(subtreesOfSize(big), [
      { level: 52, index: 0 },
      { level: 40, index: 2 ** 12 },
      { level: 1, index: (2 ** 52 + 2 ** 40) / 2 },
      { level: 0, index: 2 ** 52 + 2 ** 40 + 2 },
    ]);
    assert.deepEqual(
      subtreesOfSize(Number.MAX_SAFE_INTEGER).map((s) => s.level),
      Array.from({ length: 53 }, (_, i) => 52 - i),
    );
  });

  test('sizes and indexes are validated', () => {
    for (const bad of [
      -1,
      1.5,
      Number.NaN,
      Number.POSITIVE_INFINITY,
      2 ** 53,
      Number('18446744073709551615'),
    ]) {
      assert.throws(() => subtreesOfSize(bad), FormatError);
      assert.throws(() => treeRoot(bad, () => Buffer.alloc(32)), FormatError);
      assert.throws(() => inclusionProof(bad, 10, () => Buffer.alloc(32)), FormatError);
      assert.throws(() => inclusionProof(0, bad, () => Buffer.alloc(32)), FormatError);
      assert.throws(() => verifyInclusion(Buffer.alloc(32), bad, 4, [], Buffer.alloc(32)), FormatError);
      assert.throws(() => verifyConsistency(1, bad, [], Buffer.alloc(32), Buffer.alloc(32)), FormatError);
    }
    assert.throws(() => inclusionProof(3, 3, () => Buffer.alloc(32)), FormatError);
    assert.throws(() => consistencyProof(0, 3, () => Buffer.alloc(32)), FormatError);
    assert.throws(() => consistencyProof(4, 3, () => Buffer.alloc(32)), FormatError);
    assert.deepEqual(
      consistencyProof(5, 5, () => assert.fail('no reads')),
      [],
    );
  });

  test('proofs for huge trees use exact arithmetic', () => {
    // A real tree of 2^52+ leaves, all equal except a few distinct ones placed around 2^32 and 2^52
    // boundaries: node hashes of untouched subtrees are a per-level constant, the rest recurse.
    const size = 2 ** 52 + 2 ** 33 + 5;
    const special = [
      0,
      2 ** 32 - 1,
      2 ** 32,
      2 ** 33 + 1,
      2 ** 52 - 1,
      2 ** 52,
      2 ** 52 + 2 ** 32 + 7,
      size - 2,
      size - 1,
    ];
    const plain: Buffer[] = [leafHash(Buffer.from('plain'))];
    for (let l = 1; l <= 53; l++) plain.push(nodeHash(plain[l - 1], plain[l - 1]));
    const memo = new Map<string, Buffer>();
    const node = (level: number, index: number): Buffer => {
      const start = index * 2 ** level;
      const end = start + 2 ** level;
      if (!special.some((s) => s >= start && s < end)) return plain[level];
      if (level === 0) return leafHash(Buffer.from(`special ${index}`));
      const key = `${level}:${index}`;
      let h = memo.get(key);
      if (h === undefined) {
        h = nodeHash(node(level - 1, 2 * index), node(level - 1, 2 * index + 1));
        memo.set(key, h);
      }
      return h;
    };
    const read: HashReader = (level, index) => {
      assert.ok((index + 1) * 2 ** level <= size, `incomplete subtree (${level}, ${index})`);
      return node(level, index);
    };
    const root = treeRoot(size, read);
    for (const index of [...special, 5, 2 ** 40]) {
      const proof = inclusionProof(index, size, read);
      verifyInclusion(node(0, index), index, size, proof, root);
      if (index > 0 && special.includes(index)) {
        expectRejected(() => verifyInclusion(node(0, index), index - 1, size, proof, root), 'index - 1');
      }
    }
    for (const old of [1, 2 ** 32, 2 ** 32 + 1, 2 ** 52, 2 ** 52 + 2 ** 32 + 8, size - 1, size]) {
      verifyConsistency(old, size, consistencyProof(old, size, read), treeRoot(old, read), root);
    }
  });
});

describe('merkle: transparency-dev vectors', () => {
  test('every inclusion and consistency vector', () => {
    let inclusion = 0;
    let consistency = 0;
    for (const file of walk(VECTORS)) {
      const v = JSON.parse(readFileSync(file, 'utf8'));
      const name = file.slice(VECTORS.length);
      let run: () => void;
      if ('leafIdx' in v) {
        inclusion++;
        run = () => verifyInclusion(b64(v.leafHash), v.leafIdx, v.treeSize, proofOf(v.proof), b64(v.root));
      } else {
        consistency++;
        run = () => verifyConsistency(v.size1, v.size2, proofOf(v.proof), b64(v.root1), b64(v.root2));
      }
      if (v.wantErr) expectRejected(run, name);
      else assert.doesNotThrow(run, name);
    }
    console.log(`rfc6962 vectors: ${inclusion} inclusion, ${consistency} consistency`);
    assert.ok(inclusion > 0 && consistency > 0);
  });

  test('check names', () => {
    const h = leaves(5);
    const r = readerFor(h);
    const root = treeRoot(5, r);
    const proof = inclusionProof(2, 5, r);
    const checkOf = (fn: () => void): string => {
      try {
        fn();
      } catch (e) {
        assert.ok(e instanceof VerificationError);
        return e.check;
      }
      return 'none';
    };
    assert.equal(
      checkOf(() => verifyInclusion(h[2], 2, 5, proof, root)),
      'none',
    );
    assert.equal(
      checkOf(() => verifyInclusion(h[2], 5, 5, proof, root)),
      'inclusion.index-out-of-range',
    );
    assert.equal(
      checkOf(() => verifyInclusion(h[2], 2, 5, proof.slice(1), root)),
      'inclusion.proof-length',
    );
    assert.equal(
      checkOf(() => verifyInclusion(h[3], 2, 5, proof, root)),
      'inclusion.root-mismatch',
    );
    assert.equal(
      checkOf(() => verifyInclusion(h[2].subarray(1), 2, 5, proof, root)),
      'inclusion.hash-length',
    );
    assert.equal(
      checkOf(() => verifyInclusion(h[2], 2, 5, proof, root.subarray(1))),
      'inclusion.hash-length',
    );
    const cp = consistencyProof(3, 5, r);
    const root3 = treeRoot(3, r);
    assert.equal(
      checkOf(() => verifyConsistency(3, 5, cp, root3, root)),
      'none',
    );
    assert.equal(
      checkOf(() => verifyConsistency(5, 3, cp, root, root3)),
      'consistency.size-order',
    );
    assert.equal(
      checkOf(() => verifyConsistency(0, 5, [], EMPTY_ROOT, root)),
      'consistency.empty-old-tree',
    );
    assert.equal(
      checkOf(() => verifyConsistency(3, 5, cp.slice(1), root3, root)),
      'consistency.proof-length',
    );
    assert.equal(
      checkOf(() => verifyConsistency(3, 5, cp, root, root)),
      'consistency.root1-mismatch',
    );
    assert.equal(
      checkOf(() => verifyConsistency(3, 5, cp, root3, root3)),
      'consistency.root2-mismatch',
    );
    assert.equal(
      checkOf(() => verifyConsistency(5, 5, [], root, root3)),
      'consistency.root-mismatch',
    );
    assert.equal(
      checkOf(() => verifyConsistency(5, 5, [root], root, root)),
      'consistency.proof-length',
    );
    assert.equal(
      checkOf(() => verifyConsistency(3, 5, [cp[0], cp[1].subarray(2)], root3, root)),
      'consistency.hash-length',
    );
  });
});

describe('merkle: properties', () => {
  test('treeRoot through a HashReader equals the recursive definition', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 300 }), fc.nat(), (size, seed) => {
        const h = leaves(size, seed);
        assert.deepEqual(treeRoot(size, readerFor(h)), rootFromLeafHashes(h));
        // Every prefix too, with the reader restricted to that prefix.
        const m = 1 + (seed % size);
        assert.deepEqual(treeRoot(m, readerFor(h, m)), rootFromLeafHashes(h.slice(0, m)));
      }),
      { numRuns: 60 },
    );
  });

  test('inclusion proofs verify, and any tampering fails', () => {
    fc.assert(
      fc.property(
        fc
          .integer({ min: 1, max: 300 })
          .chain((size) => fc.tuple(fc.constant(size), fc.nat({ max: size - 1 }))),
        fc.integer({ min: 1, max: 600 }),
        ([size, index], otherSize) => {
          const h = leaves(size);
          const read = readerFor(h);
          const root = rootFromLeafHashes(h);
          const proof = inclusionProof(index, size, read);
          verifyInclusion(h[index], index, size, proof, root);
          assert.deepEqual(rootFromInclusionProof(h[index], index, size, proof), root);
          const fails = (p: readonly Uint8Array[], i = index, s = size, leaf: Uint8Array = h[index]) =>
            expectRejected(() => verifyInclusion(leaf, i, s, p, root), `size ${size} index ${index}`);
          for (let e = 0; e < proof.length; e++) {
            for (let byte = 0; byte < 32; byte++) fails(flipped(proof, e, byte));
            fails([...proof.slice(0, e), ...proof.slice(e + 1)]);
          }
          fails([...proof, root]);
          fails([root, ...proof]);
          fails(proof, index, size, flipped([h[index]], 0, 31)[0]);
          // Another index of the same size is another path, so it must fail.
          for (let i = 0; i < size; i++) if (i !== index) fails(proof, i);
          fails(proof, size);
          // Another size fails unless it gives the very same path shape (then the computation is identical).
          for (const s of [size - 1, size + 1, size * 2, otherSize]) {
            if (s <= index) {
              fails(proof, index, s);
            } else if (inclusionShape(index, s) === inclusionShape(index, size)) {
              verifyInclusion(h[index], index, s, proof, root);
            } else {
              fails(proof, index, s);
            }
          }
        },
      ),
      { numRuns: 80 },
    );
  });

  test('consistency proofs verify, and any tampering fails', () => {
    fc.assert(
      fc.property(
        fc
          .integer({ min: 1, max: 300 })
          .chain((n) =>
            fc.tuple(fc.integer({ min: 1, max: n }), fc.constant(n), fc.integer({ min: 1, max: 300 })),
          ),
        ([m, n, other]) => {
          const h = leaves(n, 7);
          const read = readerFor(h);
          const root1 = rootFromLeafHashes(h.slice(0, m));
          const root2 = rootFromLeafHashes(h);
          const proof = consistencyProof(m, n, read);
          verifyConsistency(m, n, proof, root1, root2);
          const fails = (p: readonly Uint8Array[], s1 = m, s2 = n) =>
            expectRejected(() => verifyConsistency(s1, s2, p, root1, root2), `m ${m} n ${n}`);
          for (let e = 0; e < proof.length; e++) {
            for (let byte = 0; byte < 32; byte++) fails(flipped(proof, e, byte));
            fails([...proof.slice(0, e), ...proof.slice(e + 1)]);
          }
          fails([...proof, root1]);
          fails([root1, ...proof]);
          if (m !== n) {
            expectRejected(() => verifyConsistency(m, n, proof, root2, root2), 'wrong root1');
            expectRejected(() => verifyConsistency(m, n, proof, root1, root1), 'wrong root2');
          }
          const shape = consistencyShape(m, n);
          for (const [s1, s2] of [
            [m - 1, n],
            [m + 1, n],
            [m, n - 1],
            [m, n + 1],
            [other, n],
            [m, other],
            [m, 2 * n],
          ]) {
            if (s1 < 1 || s1 > s2 || (s1 === s2 && m !== n) || (s1 !== s2 && m === n)) {
              fails(proof, s1, s2);
            } else if (consistencyShape(s1, s2) === shape) {
              verifyConsistency(s1, s2, proof, root1, root2);
            } else {
              fails(proof, s1, s2);
            }
          }
        },
      ),
      { numRuns: 80 },
    );
  });

  test('an audit path split at a block (the part a log shares per tile) equals the whole path', () => {
    const h = leaves(300, 7);
    for (const block of [1, 2, 4, 8, 64]) {
      for (let size = 1; size <= 300; size += size < 40 ? 1 : 13) {
        const read = readerFor(h, size);
        for (let index = 0; index < size; index += size < 40 ? 1 : 5) {
          const above = inclusionProofAbove(index, size, block, read);
          assert.ok(above.n <= block && above.start % block === 0, `block ${block} size ${size}`);
          assert.ok(index >= above.start && index < above.start + above.n);
          // every leaf of the same block run gets the same upper part
          const sibling = Math.min(size - 1, Math.floor(index / block) * block + block - 1);
          assert.deepEqual(inclusionProofAbove(sibling, size, block, read), above);
          const whole = [
            ...inclusionProofBelow(index, above.start, above.n, read),
            ...[...above.hashes].reverse(),
          ];
          assert.deepEqual(
            whole,
            inclusionProof(index, size, read),
            `index ${index} size ${size} block ${block}`,
          );
        }
      }
    }
    assert.throws(() => inclusionProofAbove(0, 4, 3, readerFor(h, 4)), FormatError);
    assert.throws(() => inclusionProofAbove(4, 4, 2, readerFor(h, 4)), FormatError);
    assert.throws(() => inclusionProofBelow(5, 0, 4, readerFor(h, 8)), FormatError);
  });

  test('NodeHashMemo returns exactly SHA-256 of its input, through hits, misses and evictions', () => {
    // two slots only: nearly every call evicts or collides
    for (const memo of [new NodeHashMemo(1), new NodeHashMemo(4)]) {
      const pool = leaves(12, 3);
      for (let i = 0; i < 2000; i++) {
        const a = pool[(i * 7) % pool.length];
        const b = pool[(i * 5 + (i >> 3)) % pool.length];
        // near-twins: same slot, a different input
        const b2 = Buffer.from(b);
        b2[31] ^= 1;
        const prefix = i % 3 === 0 ? 0x03 : 0x01;
        for (const [x, y] of [
          [a, b],
          [a, b2],
          [b, a],
        ]) {
          assert.deepEqual(memo.hash(prefix, x, y), sha256(Buffer.concat([Buffer.from([prefix]), x, y])));
        }
      }
    }
    assert.throws(() => new NodeHashMemo(0), FormatError);
  });

  test("NodeHashMemo keeps its digests in slabs of its own, not in Node's shared buffer pool", () => {
    // a pooled digest would pin its whole pool block for as long as the memo holds it
    const memo = new NodeHashMemo(4);
    const pool = leaves(40, 5);
    const held: Buffer[] = [];
    for (let i = 0; i + 1 < pool.length; i++) held.push(memo.hash(0x01, pool[i], pool[i + 1]));
    for (const h of held) assert.notEqual(h.buffer.byteLength, Buffer.poolSize);
    assert.equal(new Set(held.map((h) => h.buffer)).size, 1, 'one slab for 39 digests');
    // digests handed out earlier never change, however many calls follow
    for (let i = 0; i + 1 < pool.length; i++) {
      assert.deepEqual(held[i], sha256(Buffer.concat([Buffer.from([0x01]), pool[i], pool[i + 1]])));
    }
  });

  test('inclusion verification through a memo gives the same verdicts as without', () => {
    const h = leaves(70, 11);
    const memo = new NodeHashMemo(3);
    for (let size = 1; size <= 70; size += 3) {
      const read = readerFor(h, size);
      const root = treeRoot(size, read);
      for (let index = 0; index < size; index += 2) {
        const proof = inclusionProof(index, size, read);
        for (const levels of [0, 2, 64]) {
          verifyInclusion(h[index], index, size, proof, root, memo, levels);
          for (let i = 0; i < proof.length; i++) {
            const bent = flipped(proof, i, i);
            expectRejected(() => verifyInclusion(h[index], index, size, bent, root), 'plain');
            expectRejected(() => verifyInclusion(h[index], index, size, bent, root, memo, levels), 'memo');
          }
          if (size > 1) {
            expectRejected(
              () => verifyInclusion(h[(index + 1) % size], index, size, proof, root, memo, levels),
              'leaf',
            );
          }
        }
      }
    }
  });
});
