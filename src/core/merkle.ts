/**
 * RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.
 *
 * Notation used below: a tree of `size` leaves, node (level, index) is the root of the perfect
 * subtree of 2^level leaves starting at leaf index * 2^level. A tree whose size is not a power of
 * two is the fold, right to left, of the perfect subtrees given by the binary decomposition of its
 * size: for size 13 = 8 + 4 + 1 the root is H(n(3,0), H(n(2,2), n(0,12))).
 *
 * Sizes and indexes are JS numbers. They stay below 2^53, so every computation here uses
 * arithmetic (division by powers of two) instead of 32-bit bitwise operators, except where the
 * operands are split into 32-bit halves first.
 */
import { equalBytes } from './bytes.js';
import { FormatError, VerificationError } from './errors.js';
import { HASH_SIZE, sha256, sha256Pair, sha256PairInto, sha256Prefixed, sha256PrefixedInto } from './hash.js';

/** The byte in front of an entry in its leaf hash. */
export const LEAF_HASH_PREFIX = 0x00;
const NODE_PREFIX = 0x01;
const TWO_32 = 2 ** 32;

/** SHA-256(0x00 || entry). */
export function leafHash(entry: Uint8Array): Buffer {
  return sha256Prefixed(LEAF_HASH_PREFIX, entry);
}

/** Writes leafHash(entry) to out[at..at+32). */
export function leafHashInto(entry: Uint8Array, out: Uint8Array, at: number): void {
  sha256PrefixedInto(LEAF_HASH_PREFIX, entry, out, at);
}

/** SHA-256(0x01 || left || right); both sides must be 32 bytes. */
export function nodeHash(left: Uint8Array, right: Uint8Array): Buffer {
  return sha256Pair(NODE_PREFIX, left, right);
}

/** Root of the empty tree: SHA-256 of nothing. */
export const EMPTY_ROOT: Buffer = sha256(new Uint8Array(0));

/**
 * Hash of the perfect subtree with 2^level leaves whose leftmost leaf is index << level.
 * Callers only ask for complete subtrees of the tree at hand.
 */
export type HashReader = (level: number, index: number) => Uint8Array;

// ---------------------------------------------------------------------------------------------
// Integer helpers for values up to 2^53 - 1.

function checkCount(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new FormatError(`${what} must be a non-negative safe integer, got ${String(n)}`);
  }
}

function bitLength32(n: number): number {
  return 32 - Math.clz32(n);
}

/** Number of bits needed for n (0 for 0). */
function bitLength(n: number): number {
  return n < TWO_32 ? bitLength32(n) : 32 + bitLength32(Math.floor(n / TWO_32));
}

/** Bit length of a XOR b: the number of right shifts after which a and b agree. */
function xorBitLength(a: number, b: number): number {
  const hi = (Math.floor(a / TWO_32) ^ Math.floor(b / TWO_32)) >>> 0;
  if (hi !== 0) return 32 + bitLength32(hi);
  return bitLength32(((a >>> 0) ^ (b >>> 0)) >>> 0);
}

function popcount32(x: number): number {
  let v = x >>> 0;
  v -= (v >>> 1) & 0x55555555;
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

function popcount(n: number): number {
  return popcount32(n >>> 0) + popcount32(Math.floor(n / TWO_32));
}

/** Index of the lowest set bit of n > 0. */
function trailingZeros(n: number): number {
  const lo = n >>> 0;
  if (lo !== 0) return 31 - Math.clz32(lo & -lo);
  const hi = Math.floor(n / TWO_32);
  return 32 + 31 - Math.clz32(hi & -hi);
}

// Float division and modulo are slow enough to dominate proof generation, hence the table and
// the 32-bit fast path.
const POW2: readonly number[] = Array.from({ length: 64 }, (_, i) => 2 ** i);

function bitIsSet(n: number, bit: number): boolean {
  if (n < TWO_32 && bit < 32) return ((n >>> bit) & 1) === 1;
  return Math.floor(n / POW2[bit]) % 2 === 1;
}

/** Largest power of two strictly below n, for n >= 2 (the split point k of RFC 9162 2.1.1). */
function splitPoint(n: number): number {
  return POW2[bitLength(n - 1) - 1];
}

// ---------------------------------------------------------------------------------------------
// Roots.

/** MTH(D[0:n]) straight from the RFC 9162 2.1.1 definition. Slow; the reference for tests. */
export function rootFromLeafHashes(hashes: readonly Uint8Array[]): Buffer {
  if (hashes.length === 0) return Buffer.from(EMPTY_ROOT);
  for (let i = 0; i < hashes.length; i++) {
    if (hashes[i].length !== HASH_SIZE) throw new FormatError(`leaf hash ${i} is not ${HASH_SIZE} bytes`);
  }
  const mth = (start: number, n: number): Buffer => {
    if (n === 1) return Buffer.from(hashes[start]);
    const k = splitPoint(n);
    return nodeHash(mth(start, k), mth(start + k, n - k));
  };
  return mth(0, hashes.length);
}

/** Levels and indexes of the perfect subtrees that make up a tree of `size`, left to right. */
export function subtreesOfSize(size: number): Array<{ level: number; index: number }> {
  checkCount(size, 'tree size');
  const out: Array<{ level: number; index: number }> = [];
  let offset = 0;
  for (let level = bitLength(size) - 1; level >= 0; level--) {
    if (!bitIsSet(size, level)) continue;
    const width = 2 ** level;
    out.push({ level, index: offset / width });
    offset += width;
  }
  return out;
}

/**
 * MTH(D[start : start + count]) for count >= 1, where start is a multiple of the largest power of
 * two in count (true for every range the RFC recursion produces). Folds the decomposition from
 * the smallest (rightmost) subtree leftwards, so no list is built. Always returns a fresh Buffer.
 */
function rangeRoot(start: number, count: number, read: HashReader, cache?: RangeRootCache): Buffer {
  // A perfect range is one stored hash; only ragged right edges need hashing, and are worth caching.
  const ragged = cache !== undefined && (count & (count - 1)) !== 0;
  if (ragged) {
    const hit = cache.get(start, count);
    if (hit) return Buffer.from(hit);
  }
  let acc: Buffer | undefined;
  let rest = count;
  while (rest > 0) {
    const level = trailingZeros(rest);
    const width = POW2[level];
    rest -= width;
    // Subtrees above this bit sit to its left, so this one starts after all of them.
    const h = read(level, (start + rest) / width);
    acc = acc === undefined ? Buffer.from(h) : nodeHash(h, acc);
  }
  if (ragged) cache.set(start, count, acc!);
  return acc!;
}

/**
 * Memory of ragged range roots MTH(D[start : start + count]). Such a root never changes once its
 * leaves exist, so one cache can serve every tree size of a log; it spares each of the thousands
 * of proofs made for one checkpoint from rehashing the same right edge.
 */
export interface RangeRootCache {
  get(start: number, count: number): Uint8Array | undefined;
  set(start: number, count: number, hash: Buffer): void;
}

/** A bounded RangeRootCache that forgets everything when full (right edges move on anyway). */
export function newRangeRootCache(max = 4096): RangeRootCache {
  const m = new Map<string, Buffer>();
  return {
    get: (start, count) => m.get(`${start}+${count}`),
    set: (start, count, hash) => {
      if (m.size >= max) m.clear();
      m.set(`${start}+${count}`, hash);
    },
  };
}

/** Root of the tree of `size` leaves. */
export function treeRoot(size: number, read: HashReader, cache?: RangeRootCache): Buffer {
  checkCount(size, 'tree size');
  if (size === 0) return Buffer.from(EMPTY_ROOT);
  return rangeRoot(0, size, read, cache);
}

// ---------------------------------------------------------------------------------------------
// Proof generation (RFC 9162 2.1.3.1 and 2.1.4.1), iterative and emitted leaf-side first.

/** Audit path for leaf `index` in the tree of `size` leaves. */
export function inclusionProof(
  index: number,
  size: number,
  read: HashReader,
  cache?: RangeRootCache,
): Buffer[] {
  checkCount(index, 'leaf index');
  checkCount(size, 'tree size');
  if (index >= size) throw new FormatError(`leaf index ${index} is not below tree size ${size}`);
  const topDown: Buffer[] = [];
  inclusionWalk(topDown, index, 0, size, 1, read, cache);
  return topDown.reverse();
}

/**
 * The upper part of leaf `index`'s audit path in the tree of `size`: the elements that the RFC 9162
 * recursion emits while its subtree is wider than `block` (a power of two), root side first, and the
 * subtree [start, start + n) it continues in. Every leaf of the same `block`-aligned run of indexes
 * shares this part, so a caller can compute it once per run and tree size (see inclusionProofBelow).
 */
export function inclusionProofAbove(
  index: number,
  size: number,
  block: number,
  read: HashReader,
  cache?: RangeRootCache,
): { hashes: Buffer[]; start: number; n: number } {
  checkCount(index, 'leaf index');
  checkCount(size, 'tree size');
  if (index >= size) throw new FormatError(`leaf index ${index} is not below tree size ${size}`);
  if (!Number.isSafeInteger(block) || block < 1 || (block & (block - 1)) !== 0) {
    throw new FormatError(`block must be a power of two, got ${String(block)}`);
  }
  const hashes: Buffer[] = [];
  const { start, n } = inclusionWalk(hashes, index, 0, size, block, read, cache);
  return { hashes, start, n };
}

/**
 * The rest of the audit path below inclusionProofAbove's subtree [start, start + n), leaf side first.
 * inclusionProof(index, size) = inclusionProofBelow(index, start, n) followed by the reversed upper part.
 */
export function inclusionProofBelow(
  index: number,
  start: number,
  n: number,
  read: HashReader,
  cache?: RangeRootCache,
): Buffer[] {
  checkCount(index, 'leaf index');
  checkCount(start, 'subtree start');
  checkCount(n, 'subtree size');
  if (index < start || index - start >= n) {
    throw new FormatError(`leaf index ${index} is not in the subtree [${start}, ${start + n})`);
  }
  const topDown: Buffer[] = [];
  inclusionWalk(topDown, index, start, n, 1, read, cache);
  return topDown.reverse();
}

/** RFC 9162 2.1.3.1 iteratively, from subtree [start, start + n), until it is at most `stop` wide. */
function inclusionWalk(
  out: Buffer[],
  index: number,
  start: number,
  n: number,
  stop: number,
  read: HashReader,
  cache?: RangeRootCache,
): { start: number; n: number } {
  let m = index - start;
  while (n > stop) {
    const k = splitPoint(n);
    if (m < k) {
      out.push(rangeRoot(start + k, n - k, read, cache));
      n = k;
    } else {
      out.push(rangeRoot(start, k, read, cache));
      start += k;
      m -= k;
      n -= k;
    }
  }
  return { start, n };
}

/** Consistency proof between the trees of `oldSize` and `newSize` leaves, 0 < oldSize <= newSize. */
export function consistencyProof(
  oldSize: number,
  newSize: number,
  read: HashReader,
  cache?: RangeRootCache,
): Buffer[] {
  checkCount(oldSize, 'old tree size');
  checkCount(newSize, 'new tree size');
  if (oldSize === 0) throw new FormatError('a consistency proof from the empty tree proves nothing');
  if (oldSize > newSize) throw new FormatError(`old tree size ${oldSize} exceeds new tree size ${newSize}`);
  const topDown: Buffer[] = [];
  let start = 0;
  let m = oldSize;
  let n = newSize;
  // `complete` is RFC 9162's b: true while the current subtree's left edge is the old tree's.
  let complete = true;
  while (m !== n) {
    const k = splitPoint(n);
    if (m <= k) {
      topDown.push(rangeRoot(start + k, n - k, read, cache));
      n = k;
    } else {
      topDown.push(rangeRoot(start, k, read, cache));
      start += k;
      m -= k;
      n -= k;
      complete = false;
    }
  }
  if (!complete) topDown.push(rangeRoot(start, m, read, cache));
  return topDown.reverse();
}

// ---------------------------------------------------------------------------------------------
// A memory of node hashes, for verifiers.

/** Digests per slab of a NodeHashMemo: a slab is freed once none of its digests is held. */
const MEMO_SLAB_DIGESTS = 512;

/**
 * A bounded memory of node hashes SHA-256(prefix || a || b) (a and b 32 bytes), direct-mapped: each input
 * has one slot, chosen by a few of its bytes (hash outputs, so uniform), and a newer input evicts an older
 * one. A hit compares the whole stored input, so `hash` returns exactly SHA-256 of its input, hit or miss:
 * a proof checked through it passes or fails exactly as without it. It pays off for the nodes near a
 * root, which every proof against that root recomputes (a client checking many lookup answers against one
 * checkpoint); callers ask it only for those and hash deeper nodes directly.
 */
export class NodeHashMemo {
  private static readonly SLOT = 65; // used flag + prefix (1), a (32), b (32)
  private readonly slots: Buffer;
  // Outputs are kept as the digests themselves and handed out again on a hit: callers must not change them.
  private readonly outs: Buffer[];
  private readonly mask: number;
  // Digests are written into slabs of the memo's own. A digest from Node's shared buffer pool would
  // keep its whole 8 KB pool block alive for as long as the memo holds it: a long-running verifier
  // held about 80 MiB more ArrayBuffers that way (2026-12-06, 550k verifications at 200k entries).
  private slab = Buffer.alloc(0);
  private slabUsed = 0;

  constructor(bits = 16) {
    if (!Number.isInteger(bits) || bits < 1 || bits > 24) throw new FormatError('memo size out of range');
    this.slots = Buffer.alloc(NodeHashMemo.SLOT << bits);
    this.outs = new Array<Buffer>(1 << bits);
    this.mask = (1 << bits) - 1;
  }

  /** SHA-256(prefix || a || b). The result is shared with later calls: read it, never write to it. */
  hash(prefix: number, a: Uint8Array, b: Uint8Array): Buffer {
    const s = this.slots;
    const i =
      ((a[0] | (a[1] << 8) | (a[2] << 16)) ^ (b[0] | (b[1] << 8) | (b[2] << 16)) ^ (prefix << 20)) &
      this.mask;
    const o = i * NodeHashMemo.SLOT;
    // slot tag: 0 = unused, else prefix + 1 (a prefix is a byte)
    if (s[o] === prefix + 1) {
      let j = 0;
      while (j < 32 && s[o + 1 + j] === a[j] && s[o + 33 + j] === b[j]) j++;
      if (j === 32) return this.outs[i];
    }
    if (this.slabUsed === this.slab.length) {
      this.slab = Buffer.allocUnsafeSlow(MEMO_SLAB_DIGESTS * HASH_SIZE);
      this.slabUsed = 0;
    }
    const h = this.slab.subarray(this.slabUsed, this.slabUsed + HASH_SIZE);
    this.slabUsed += HASH_SIZE;
    sha256PairInto(prefix, a, b, h, 0);
    s[o] = prefix + 1;
    for (let j = 0; j < 32; j++) {
      s[o + 1 + j] = a[j];
      s[o + 33 + j] = b[j];
    }
    this.outs[i] = h;
    return h;
  }
}

// ---------------------------------------------------------------------------------------------
// Verification.
//
// Instead of RFC 9162's bit-shifting loops we use the equivalent closed form: the audit path of
// node `i` among `last + 1` nodes has `inner = bitlen(i XOR last)` elements below the level where
// the paths to i and to the last node merge (element j is a left sibling iff bit j of i is set),
// followed by one left sibling for each set bit of i >> inner (the right edge of the tree has no
// right siblings). Knowing the exact length up front lets us reject malformed proofs before
// hashing anything.

function checkHash(h: Uint8Array, check: string, what: string): void {
  if (h.length !== HASH_SIZE) {
    throw new VerificationError(check, `${what} is ${h.length} bytes, not ${HASH_SIZE}`);
  }
}

function checkProofHashes(proof: readonly Uint8Array[], check: string): void {
  for (let i = 0; i < proof.length; i++) checkHash(proof[i], check, `proof element ${i}`);
}

/**
 * Root implied by an inclusion proof; throws VerificationError if the proof is malformed. With `memo`,
 * the last `memoLevels` node hashes (those nearest the root) go through it.
 */
export function rootFromInclusionProof(
  leaf: Uint8Array,
  index: number,
  size: number,
  proof: readonly Uint8Array[],
  memo?: NodeHashMemo,
  memoLevels = 0,
): Buffer {
  const r = foldInclusionProof(leaf, index, size, proof, memo, memoLevels);
  // a digest from the memo is shared with its later hits: the caller gets its own copy
  return memo !== undefined && proof.length > 0 ? Buffer.from(r) : r;
}

/** rootFromInclusionProof, whose answer may be a digest the memo still holds. */
function foldInclusionProof(
  leaf: Uint8Array,
  index: number,
  size: number,
  proof: readonly Uint8Array[],
  memo: NodeHashMemo | undefined,
  memoLevels: number,
): Buffer {
  checkCount(index, 'leaf index');
  checkCount(size, 'tree size');
  if (index >= size) {
    throw new VerificationError(
      'inclusion.index-out-of-range',
      `leaf index ${index} is not below tree size ${size}`,
    );
  }
  checkHash(leaf, 'inclusion.hash-length', 'leaf hash');
  checkProofHashes(proof, 'inclusion.hash-length');
  const inner = xorBitLength(index, size - 1);
  const border = popcount(Math.floor(index / POW2[inner]));
  if (proof.length !== inner + border) {
    throw new VerificationError(
      'inclusion.proof-length',
      `inclusion proof for leaf ${index} of ${size} needs ${inner + border} hashes, got ${proof.length}`,
    );
  }
  let r: Buffer = Buffer.from(leaf);
  const memoFrom = memo === undefined ? proof.length : proof.length - memoLevels;
  for (let i = 0; i < inner; i++) {
    const left = bitIsSet(index, i);
    if (i >= memoFrom) r = left ? memo!.hash(NODE_PREFIX, proof[i], r) : memo!.hash(NODE_PREFIX, r, proof[i]);
    else r = left ? nodeHash(proof[i], r) : nodeHash(r, proof[i]);
  }
  for (let i = inner; i < proof.length; i++) {
    r = i >= memoFrom ? memo!.hash(NODE_PREFIX, proof[i], r) : nodeHash(proof[i], r);
  }
  return r;
}

/** Checks that `leaf` (a leaf hash) is at `index` in the tree of `size` leaves with root `root`. */
export function verifyInclusion(
  leaf: Uint8Array,
  index: number,
  size: number,
  proof: readonly Uint8Array[],
  root: Uint8Array,
  memo?: NodeHashMemo,
  memoLevels = 0,
): void {
  checkCount(index, 'leaf index');
  checkCount(size, 'tree size');
  checkHash(root, 'inclusion.hash-length', 'root');
  if (!equalBytes(foldInclusionProof(leaf, index, size, proof, memo, memoLevels), root)) {
    throw new VerificationError(
      'inclusion.root-mismatch',
      `inclusion proof for leaf ${index} does not lead to the root of the tree of size ${size}`,
    );
  }
}

/**
 * Checks that the tree of size1 with root1 is a prefix of the tree of size2 with root2 (RFC 9162
 * 2.1.4.2). size1 = 0 is rejected: every tree extends the empty one, so such a "proof" would be
 * meaningless, and accepting it would let a caller skip a real check by mistake.
 */
export function verifyConsistency(
  size1: number,
  size2: number,
  proof: readonly Uint8Array[],
  root1: Uint8Array,
  root2: Uint8Array,
): void {
  checkCount(size1, 'old tree size');
  checkCount(size2, 'new tree size');
  if (size1 > size2) {
    throw new VerificationError('consistency.size-order', `old size ${size1} exceeds new size ${size2}`);
  }
  if (size1 === 0) {
    throw new VerificationError(
      'consistency.empty-old-tree',
      'consistency with the empty tree proves nothing',
    );
  }
  if (size1 === size2) {
    if (proof.length !== 0) {
      throw new VerificationError('consistency.proof-length', 'equal sizes need an empty proof');
    }
    // The roots are only compared, as the RFC does (and the reference vectors expect).
    if (!equalBytes(root1, root2)) {
      throw new VerificationError('consistency.root-mismatch', `two different roots for size ${size1}`);
    }
    return;
  }
  checkHash(root1, 'consistency.hash-length', 'old root');
  checkHash(root2, 'consistency.hash-length', 'new root');
  checkProofHashes(proof, 'consistency.hash-length');
  const { count } = consistencyShape(size1, size2);
  if (proof.length !== count) {
    throw new VerificationError(
      'consistency.proof-length',
      `consistency proof from ${size1} to ${size2} needs ${count} hashes, got ${proof.length}`,
    );
  }
  const { oldRoot: r1, newRoot: r2 } = rootsFromConsistencyProof(size1, size2, proof, root1);
  if (!equalBytes(r1, root1)) {
    throw new VerificationError(
      'consistency.root1-mismatch',
      `consistency proof does not lead to the root of the old tree of size ${size1}`,
    );
  }
  if (!equalBytes(r2, root2)) {
    throw new VerificationError(
      'consistency.root2-mismatch',
      `consistency proof does not lead to the root of the new tree of size ${size2}`,
    );
  }
}

/**
 * The two roots that a consistency proof from size1 to size2 (0 < size1 < size2) leads to, by the
 * RFC 9162 2.1.4.2 algorithm: the proof's hashes placed where the sizes say and folded up. The
 * old tree's rightmost perfect subtree, node (shift, index), is also complete in the new tree. The
 * proof is that node's hash (omitted when it is the whole old tree, i.e. when size1 is a power of
 * two) followed by its audit path among the level-`shift` nodes of the new tree; the path's left
 * siblings are exactly the old tree's other perfect subtrees.
 *
 * When size1 is a power of two the fold starts from `seedOldRoot`, or, if the proof has one hash
 * more than the RFC's, from that first hash: the new tree's own root at size1, which a
 * misbehaviour proof needs (core/misbehaviour.ts) to show that the new tree's prefix is not the
 * old tree. VerificationError 'consistency.proof-length' when the count fits neither form.
 */
export function rootsFromConsistencyProof(
  size1: number,
  size2: number,
  proof: readonly Uint8Array[],
  seedOldRoot?: Uint8Array,
): { oldRoot: Buffer; newRoot: Buffer } {
  const { index, inner, count } = consistencyShape(size1, size2);
  checkProofHashes(proof, 'consistency.hash-length');
  const seeded = index !== 0 || proof.length === count + 1;
  if (proof.length !== count && !(seeded && index === 0)) {
    throw new VerificationError(
      'consistency.proof-length',
      `consistency proof from ${size1} to ${size2} needs ${count} hashes, got ${proof.length}`,
    );
  }
  if (!seeded && seedOldRoot === undefined) {
    throw new VerificationError('consistency.proof-length', `a proof from ${size1} needs the old root first`);
  }
  const seed = seeded ? proof[0] : (seedOldRoot as Uint8Array);
  checkHash(seed, 'consistency.hash-length', 'old root');
  let r1: Buffer = Buffer.from(seed);
  let r2: Buffer = r1;
  let p = seeded ? 1 : 0;
  for (let i = 0; i < inner; i++, p++) {
    if (bitIsSet(index, i)) {
      r1 = nodeHash(proof[p], r1);
      r2 = nodeHash(proof[p], r2);
    } else {
      r2 = nodeHash(r2, proof[p]);
    }
  }
  for (; p < proof.length; p++) {
    r1 = nodeHash(proof[p], r1);
    r2 = nodeHash(proof[p], r2);
  }
  return { oldRoot: r1, newRoot: r2 };
}

/** Where a consistency proof from size1 to size2 starts, and its RFC 9162 length (`count`). */
function consistencyShape(size1: number, size2: number): { index: number; inner: number; count: number } {
  checkCount(size1, 'old tree size');
  checkCount(size2, 'new tree size');
  if (!(size1 > 0 && size1 < size2)) {
    throw new VerificationError(
      'consistency.size-order',
      `a consistency proof needs 0 < ${size1} < ${size2}`,
    );
  }
  const shift = trailingZeros(size1);
  const unit = POW2[shift];
  const index = size1 / unit - 1;
  const last = Math.floor((size2 - 1) / unit);
  const inner = xorBitLength(index, last);
  const border = popcount(Math.floor(index / POW2[inner]));
  return { index, inner, count: (index !== 0 ? 1 : 0) + inner + border };
}
