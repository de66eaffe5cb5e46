/**
 * The sparse index: a sparse Merkle tree mapping 256-bit paths to short values, stored as strata.
 * (Files: smt.ts lookups and audits, smt-batch.ts updates, smt-proof.ts proofs, smt-strata.ts rows.)
 *
 * TREE AND HASHING (prefixes distinct from the log's RFC 6962 0x00/0x01)
 * - Bit i of a path (i = 0..255) is bit 7-(i%8) of byte i/8, most significant first; it chooses the child
 *   at depth i+1 (0 = left). The root is at depth 0.
 * - Empty subtree: EMPTY = 32 zero bytes. The empty tree's root is EMPTY.
 * - Leaf: SHA-256(0x02 || path(32) || value), value 0..255 bytes (in practice 40: u64 BE log index ||
 *   the entry's 32-byte leaf hash).
 * - A subtree holding exactly one leaf has that leaf's hash, whatever its depth (it is "collapsed").
 * - A subtree holding two or more leaves: SHA-256(0x03 || left || right), either child possibly EMPTY.
 *
 * PROOFS
 * For a key path k let D be the shallowest depth at which the subtree on k's path is empty or holds exactly
 * one leaf. The proof lists the siblings (the other child of k's ancestor at depth d-1) at depths 1..D,
 * leaving out EMPTY ones, with a D-bit bitmap (bit d-1 set = sibling at depth d present). Its kind says what
 * the subtree at depth D is: 'included' (the leaf is k; the verifier is given the value), 'empty', or
 * 'other' (one leaf with another path that shares k's first D bits; the proof carries that leaf's path and
 * value). Proofs are canonical: if D > 0 the sibling at depth D is non-empty, since otherwise the parent
 * would hold at most one leaf and D would not be the shallowest. The verifier computes the subtree hash at
 * depth D (leaf hash or EMPTY) and folds it up with SHA-256(0x03 || left || right) to the root. It rejects
 * D > 256, a bitmap of the wrong length or with padding bits set, a sibling count other than the bitmap's
 * popcount, siblings that are not 32 bytes or are EMPTY, a clear bit for depth D when D > 0, an 'other' leaf
 * equal to k (that alone would let an inclusion pass as an absence) or off k's first D bits, a kind that
 * does not match the claim (present/absent), and a root mismatch. Each failure is a VerificationError whose
 * `check` is 'smt.<name>' (root-length, path-length, value-length, kind, kind-mismatch, depth, bitmap-length,
 * bitmap-padding, sibling-count, sibling-length, sibling-empty, deepest-sibling, other-leaf, other-is-key,
 * other-prefix, root-mismatch).
 *
 * Proof encoding, version 1 (all of it; decodeSmtProof rejects anything else with FormatError):
 *   u8  version = 0x01
 *   u8  kind: 0x00 included, 0x01 empty, 0x02 other
 *   u16 D, big-endian, 0..256
 *   bitmap: ceil(D/8) bytes; depth d's bit is bit d-1 numbered most-significant first (byte (d-1)>>3, mask
 *       0x80>>((d-1)&7)); the padding bits after bit D-1 are zero
 *   siblings: popcount(bitmap) x 32 bytes, root side first (increasing depth)
 *   kind 'other' only: path(32), u8 value length, value
 * Example: the empty tree's proof for any key is 01 01 0000.
 *
 * STORAGE: STRATA (format 2)
 * The trie is cut into bands: 8 levels from depths 0 and 8, then 4 levels each from depth 16 on (tops at
 * 0, 8, 16, 20, 24, ..., 252). A stratum holds the part of the trie from a node at a band's top depth t
 * down to the band's bottom depth b (8 or 4 levels lower). Its id is one byte 0x40 + its level (the
 * band's number, 0 for the root's, 1 for depth 8, 2 for depth 16, 3 for depth 20, ...) followed by the
 * first ceil(t/8) bytes of the paths under it, the bits from t on cleared (root stratum: [0x40]; depth 20
 * under path ab cd e5...: 43 ab cd e0). Internal nodes inside the band are stored with their hashes,
 * leaves with path and value in the stratum where they collapse, and an internal node at depth b as a
 * reference (hash only) whose content is the stratum with top depth b. A stratum exists iff its top node
 * is internal (or it is the root stratum of a one-leaf tree), so an insert-only tree never deletes a row.
 * A batch writes one row per touched stratum instead of one per touched node. A band of h levels holds at
 * most 2^h leaves and REFs, so below depth 16 a row stays under about 1.7 KB however large the tree grows
 * (with 40-byte values), where 8-level bands there grew with the tree, up to about 27 KB.
 *
 * Row encoding: version byte 0x02, then the band's top node in preorder:
 *   0x00                                  EMPTY
 *   0x01 len(u8) path(32) value(len)      LEAF
 *   0x02 hash(32) <left> <right>          NODE, internal, depth < b
 *   0x03 hash(32)                         REF, internal at depth b (content in the child stratum)
 * Format 1 (version byte 0x01, ids [t/8] || t/8 bytes) cut every band at 8 levels; src/log/strata-format.ts
 * converts such stores when they are opened to write.
 * Leaf hashes are not stored: they are one SHA-256 away, and storing them would make rows about 30% larger
 * (a leaf is 74 bytes with a 40-byte value) to save ~13% of the hashing.
 * Readers walk rows in place: a subtree is a contiguous byte range, untouched subtrees are copied verbatim
 * by updates, and every read checks that a row's top hash equals the reference (or root) it was reached
 * from, so a stale or damaged row is a StorageError rather than a wrong answer. smtAudit rechecks it all.
 *
 * CACHING
 * Because rows are used in place, there is no decoded form worth caching, so a cache holds raw rows and sits
 * in front of any StratumReader: StratumCache keeps the root and depth-8 strata (the largest rows, read by
 * every lookup and rewritten by every large batch; about 4.5 MB at a million leaves). The caller applies a
 * batch's writes to it after the commit succeeded. For rows kept that long, stratumTable lists every node by
 * heap position with its tag and hash, so a lookup walks a full band in 8 steps instead of skipping left
 * subtrees, and without touching the row (smtLookup's optional tableOf). Lookups copy what they keep before
 * reading the next row, so the reader they are given may hand out a reused buffer (the log's lower strata
 * come from lmdb without a copy).
 *
 * COST
 * With a batch of B random updates on a tree of N leaves the top log2(B) levels are shared, so each update
 * hashes a few nodes more than log2(N/B): at N = 1M and B = 10k, 8.1 internal nodes and 2.4 leaves (its
 * own, plus untouched sibling leaves and leaves pushed down by a split). Hashing is about half the CPU time.
 * Rows written per batch: about one per update for each stratum level below depth 8 that its path reaches,
 * each of bounded size, plus the 256 depth-8 rows (about 17 KB each once full) that a 10k batch touches:
 * by the arithmetic in docs/sparse-index.md ("Why 4-level bands from depth 16"), 1.6 KB of rows per update
 * at N = 1M, 2.3 KB at 10M and 3.1 KB at 100M (8-level bands there: 2.3, 12.8 and 18.2 KB).
 */
import { FormatError } from './errors.js';
import { sha256Pair } from './hash.js';
import { SMT_PROOF_VERSION, type SmtProof } from './smt-proof.js';
import {
  asBuffer,
  bandLevelAt,
  bandTop,
  corrupt,
  decodeStratum,
  leafHashInto,
  nodeHashAt,
  SMT_EMPTY,
  SMT_MAX_VALUE_LENGTH,
  SMT_NODE_PREFIX,
  STRATA,
  type StrataLayout,
  type StratumNode,
  type StratumReader,
  skipNode,
  smtLeafHash,
  stratumId,
  stratumIdLength,
  TAG_EMPTY,
  TAG_LEAF,
  TAG_NODE,
  TAG_REF,
  TOP_BAND_LEVELS,
} from './smt-strata.js';

export { type SmtBatchResult, type SmtUpdate, smtApplyBatch } from './smt-batch.js';
export {
  decodeSmtProof,
  encodeSmtProof,
  SMT_PROOF_VERSION,
  type SmtProof,
  type SmtProofKind,
  verifySmtProof,
} from './smt-proof.js';
export {
  decodeStratum,
  encodeStratum,
  SMT_EMPTY,
  STRATA,
  STRATA_V1,
  type StrataLayout,
  StratumCache,
  type StratumNode,
  type StratumReader,
  smtLeafHash,
  stratumId,
} from './smt-strata.js';

/** Whether buf[at..at+32) equals the 32 bytes of `h` (a loop: no view, no native call, for one hash). */
function sameHashAt(buf: Uint8Array, at: number, h: Uint8Array): boolean {
  for (let i = 0; i < 32; i++) if (buf[at + i] !== h[i]) return false;
  return true;
}

/** Reads a stratum and checks that its top node has hash `expected`. */
function readStratum(read: StratumReader, id: Buffer, expected: Uint8Array, layout = STRATA): Buffer {
  const raw = read(id);
  if (raw === undefined) throw corrupt('missing stratum', id);
  const buf = asBuffer(raw);
  if (buf.length < 2 || buf[0] !== layout.version) throw corrupt('bad version or empty row', id);
  const tag = buf[1];
  const matches =
    tag === TAG_NODE
      ? buf.length >= 34 && sameHashAt(buf, 2, expected)
      : tag === TAG_LEAF && id[0] === layout.idBase && nodeHashAt(buf, 1).equals(expected);
  if (!matches) throw corrupt('top node does not match its parent (stale or damaged row)', id);
  return buf;
}

/**
 * A row's nodes by heap position: the band's top node is 1 and the children of node h are 2h (left) and
 * 2h+1 (right), so the nodes at the band's bottom are 256..511. For rows kept in memory (the top strata),
 * a walk down the band reads this instead of the row: 8 steps instead of skipping every left subtree it
 * passes (a full band is about 17 KB), and each step touches the small tag table and one 64-byte pair of
 * hashes instead of the node's offset, its tag and its sibling, three places in a 17 KB row that are
 * seldom in the CPU's caches (at a million leaves the 257 cached rows are 4.4 MB; the walk through them
 * was about a third of a lookup's sparse proof).
 */
export interface StratumTable {
  /** Where each node starts in the row; -1 under a LEAF, EMPTY or REF. */
  readonly offsets: Int32Array;
  /** Each node's tag (TAG_EMPTY, TAG_LEAF, TAG_NODE, TAG_REF); 0xff under a LEAF, EMPTY or REF. */
  readonly tags: Uint8Array;
  /**
   * The stored hash of each NODE and REF, 8 words (32 bytes in row order) per position: two siblings
   * share 64 bytes. Leaves' hashes are not here (they are computed when needed, see smt.ts).
   */
  readonly hashes: Uint32Array;
}

/** Builds a row's StratumTable. Throws StorageError on a malformed row. */
export function stratumTable(row: Uint8Array): StratumTable {
  const buf = asBuffer(row);
  if (buf.length < 2 || buf[0] !== STRATA.version) throw corrupt('bad version or empty row');
  const size = 2 << TOP_BAND_LEVELS;
  const offsets = new Int32Array(size).fill(-1);
  const tags = new Uint8Array(size).fill(0xff);
  const hashes = new Uint32Array(8 * size);
  const hashBytes = new Uint8Array(hashes.buffer);
  const visit = (h: number, pos: number): number => {
    if (pos >= buf.length) throw corrupt('truncated row');
    const tag = buf[pos];
    offsets[h] = pos;
    tags[h] = tag;
    if (tag === TAG_NODE || tag === TAG_REF) {
      if (pos + 33 > buf.length) throw corrupt('truncated node');
      hashBytes.set(buf.subarray(pos + 1, pos + 33), 32 * h);
    }
    if (tag !== TAG_NODE) return skipNode(buf, pos);
    if (h >= 1 << TOP_BAND_LEVELS) throw corrupt('node below the band');
    return visit(2 * h + 1, visit(2 * h, pos + 33));
  };
  if (visit(1, 1) !== buf.length) throw corrupt('trailing bytes');
  return { offsets, tags, hashes };
}

/** Table of a row that the caller keeps (see stratumTable), or undefined to walk the row itself. */
export type StratumTableOf = (row: Buffer) => StratumTable | undefined;

// The walk's output, reused by every lookup: the proof's bitmap and siblings (root side first) and, for
// kinds 'included' and 'other', where the leaf found was.
const walkBitmap = Buffer.alloc(32);
const walkWords = new Uint32Array(8 * 256);
const walkSiblings = Buffer.from(walkWords.buffer);
// Siblings are copied 4 bytes at a time through DataViews (from a row) or Uint32Arrays (from a table):
// several times faster than Buffer#copy, Uint8Array#set or a byte loop for 32 bytes.
const walkSiblingsView = new DataView(walkSiblings.buffer, walkSiblings.byteOffset, walkSiblings.byteLength);
const walkRefWords = new Uint32Array(8);
const walkRef = Buffer.from(walkRefWords.buffer);
let walkCount = 0;
// Where the descent stores what it touched (see walk), so that the loads are not optimised away.
const walkTouched = { bits: 0 };

// A view of the whole memory of the last row read without a table: rows read in place from lmdb all live
// in the one buffer it reuses, so one view serves every lookup instead of a new DataView per row.
let rowMemory: ArrayBufferLike | undefined;
let rowView: DataView | undefined;
function viewOf(buf: Buffer): DataView {
  if (rowView === undefined || rowMemory !== buf.buffer) {
    rowMemory = buf.buffer;
    rowView = new DataView(rowMemory);
  }
  return rowView;
}

// One reused id per stratum level for the walk's reads (a reader may not keep the id it is given).
const walkIds: Buffer[] = Array.from({ length: bandLevelAt(256) }, (_, level) =>
  Buffer.alloc(stratumIdLength(bandTop(level))),
);

/** stratumId(depth, path) in the walk's reused buffer for that level. */
function walkId(depth: number, path: Uint8Array): Buffer {
  return stratumId(depth, path, 0, walkIds[bandLevelAt(depth)]);
}

interface Walked {
  kind: SmtProof['kind'];
  depth: number;
  /** Fresh copies: the value stored for the key ('included') or the other leaf ('other'). */
  value?: Buffer;
  otherPath?: Buffer;
}

function walk(root: Buffer, path: Uint8Array, read: StratumReader, tableOf?: StratumTableOf): Walked {
  if (path.length !== 32) throw new FormatError(`sparse index path must be 32 bytes, got ${path.length}`);
  walkBitmap.fill(0);
  walkCount = 0;
  if (asBuffer(root).equals(SMT_EMPTY)) return { kind: 'empty', depth: 0 };
  let buf = readStratum(read, walkId(0, path), root);
  let table = tableOf?.(buf);
  // depth of the current row's band bottom (its REFs), and the next band's level
  let bottom = bandTop(1);
  let level = 1;
  let pos = 1;
  let depth = 0;
  // heap position of the node at `pos` while the row has a table
  let h = 1;
  for (;;) {
    if (table !== undefined) {
      // down the band through the table; `pos` is then the first node that is not a NODE
      const { tags, hashes } = table;
      // The path alone says which positions the descent will read: touching them all first lets the
      // cache misses of a cold row overlap instead of coming one per level.
      let touched = 0;
      for (let d = depth; d < bottom; d++) {
        h = 2 * h + ((path[d >> 3] >> (7 - (d & 7))) & 1);
        touched |= tags[h] | hashes[8 * (h & ~1)] | hashes[8 * (h | 1) + 7];
      }
      walkTouched.bits = touched;
      h = 1;
      while (tags[h] === TAG_NODE) {
        h = 2 * h + ((path[depth >> 3] >> (7 - (depth & 7))) & 1);
        depth++;
        const s = h ^ 1;
        const st = tags[s];
        if (st === TAG_EMPTY) continue;
        walkBitmap[(depth - 1) >> 3] |= 0x80 >> ((depth - 1) & 7);
        if (st === TAG_LEAF) leafHashInto(buf, table.offsets[s], walkSiblings, 32 * walkCount);
        else for (let i = 0, o = 8 * walkCount, f = 8 * s; i < 8; i++) walkWords[o + i] = hashes[f + i];
        walkCount++;
      }
      pos = table.offsets[h];
    }
    const tag = table !== undefined ? table.tags[h] : buf[pos];
    if (tag === TAG_EMPTY) return { kind: 'empty', depth };
    if (tag === TAG_LEAF) {
      const len = buf[pos + 1];
      const end = pos + 34 + len;
      if (end > buf.length) throw corrupt('truncated leaf');
      const value = Buffer.allocUnsafe(len);
      for (let i = 0; i < len; i++) value[i] = buf[pos + 34 + i];
      if (sameHashAt(buf, pos + 2, path)) return { kind: 'included', depth, value };
      return { kind: 'other', depth, value, otherPath: Buffer.from(buf.subarray(pos + 2, pos + 34)) };
    }
    if (tag === TAG_REF) {
      if (depth !== bottom || pos + 33 > buf.length) throw corrupt('bad reference');
      // copied first: the next read may reuse the memory the current row lives in
      if (table !== undefined) for (let i = 0; i < 8; i++) walkRefWords[i] = table.hashes[8 * h + i];
      else for (let i = 0; i < 32; i++) walkRef[i] = buf[pos + 1 + i];
      buf = readStratum(read, walkId(depth, path), walkRef);
      table = tableOf?.(buf);
      bottom = bandTop(++level);
      pos = 1;
      h = 1;
      continue;
    }
    if (tag !== TAG_NODE || depth >= bottom) throw corrupt('bad node');
    const goRight = (path[depth >> 3] >> (7 - (depth & 7))) & 1;
    const left = pos + 33;
    const right = skipNode(buf, left);
    const sib = goRight ? left : right;
    pos = goRight ? right : left;
    depth++;
    if (buf[sib] !== TAG_EMPTY) {
      walkBitmap[(depth - 1) >> 3] |= 0x80 >> ((depth - 1) & 7);
      const o = 32 * walkCount++;
      if (buf[sib] === TAG_LEAF) {
        if (sib + 34 + buf[sib + 1] > buf.length) throw corrupt('truncated leaf');
        leafHashInto(buf, sib, walkSiblings, o);
      } else {
        if (sib + 33 > buf.length) throw corrupt('truncated node');
        const view = viewOf(buf);
        const from = buf.byteOffset + sib + 1;
        for (let i = 0; i < 32; i += 4) walkSiblingsView.setUint32(o + i, view.getUint32(from + i));
      }
    }
  }
}

/**
 * Looks up a path: its value (undefined if absent) and the proof, reading strata through `read`. The walk
 * is done with each row before it reads the next, and returns copies only, so unlike other readers of
 * strata `read` may return a buffer that its next call reuses.
 */
export function smtLookup(
  root: Buffer,
  path: Uint8Array,
  read: StratumReader,
  tableOf?: StratumTableOf,
): { value: Buffer | undefined; proof: SmtProof } {
  const w = walk(root, path, read, tableOf);
  const siblings: Buffer[] = new Array(walkCount);
  for (let i = 0; i < walkCount; i++) siblings[i] = Buffer.from(walkSiblings.subarray(32 * i, 32 * i + 32));
  const proof: SmtProof = {
    kind: w.kind,
    depth: w.depth,
    bitmap: Buffer.from(walkBitmap.subarray(0, (w.depth + 7) >> 3)),
    siblings,
  };
  if (w.kind === 'other') {
    proof.otherPath = w.otherPath;
    proof.otherValue = w.value;
  }
  return { value: w.kind === 'included' ? w.value : undefined, proof };
}

// The longest encoded proof: header, full bitmap, 256 siblings, another leaf with the longest value.
const encoded = Buffer.allocUnsafe(4 + 32 + 32 * 256 + 33 + SMT_MAX_VALUE_LENGTH);

/**
 * smtLookup with the proof encoded (exactly encodeSmtProof of smtLookup's proof) and as base64, the form a
 * lookup answer carries. It is written once in a reused buffer, without the intermediate objects, so the
 * only new memory is the text (a fresh buffer of about 700 bytes per lookup used up Node's buffer pool
 * every dozen lookups). `read` may reuse its buffer, as for smtLookup.
 */
export function smtLookupBase64(
  root: Buffer,
  path: Uint8Array,
  read: StratumReader,
  tableOf?: StratumTableOf,
): { value: Buffer | undefined; proof: string } {
  const w = walk(root, path, read, tableOf);
  const mapLen = (w.depth + 7) >> 3;
  encoded[0] = SMT_PROOF_VERSION;
  encoded[1] = w.kind === 'included' ? 0 : w.kind === 'empty' ? 1 : 2;
  encoded.writeUInt16BE(w.depth, 2);
  walkBitmap.copy(encoded, 4, 0, mapLen);
  let o = 4 + mapLen;
  walkSiblings.copy(encoded, o, 0, 32 * walkCount);
  o += 32 * walkCount;
  if (w.kind === 'other') {
    w.otherPath!.copy(encoded, o);
    encoded[o + 32] = w.value!.length;
    w.value!.copy(encoded, o + 33);
    o += 33 + w.value!.length;
  }
  return { value: w.kind === 'included' ? w.value : undefined, proof: encoded.toString('base64', 0, o) };
}

/**
 * Every (path, value) in the tree in path order, read through the strata (of `layout`, by default the
 * current one).
 */
export function* smtLeaves(
  root: Buffer,
  read: StratumReader,
  layout: StrataLayout = STRATA,
): Iterable<{ path: Buffer; value: Buffer }> {
  if (asBuffer(root).equals(SMT_EMPTY)) return;
  function* walk(
    buf: Buffer,
    pos: number,
    depth: number,
    bottom: number,
    prefix: Buffer,
  ): Generator<{ path: Buffer; value: Buffer }, number> {
    const tag = buf[pos];
    if (tag === TAG_EMPTY) return pos + 1;
    if (tag === TAG_LEAF) {
      const end = pos + 34 + buf[pos + 1];
      if (end > buf.length) throw corrupt('truncated leaf');
      yield {
        path: Buffer.from(buf.subarray(pos + 2, pos + 34)),
        value: Buffer.from(buf.subarray(pos + 34, end)),
      };
      return end;
    }
    if (tag === TAG_REF) {
      if (depth !== bottom) throw corrupt('bad reference');
      const id = stratumId(depth, prefix, 0, undefined, layout);
      const child = readStratum(read, id, buf.subarray(pos + 1, pos + 33), layout);
      const end = yield* walk(child, 1, depth, layout.top(layout.levelAt(depth) + 1), prefix);
      if (end !== child.length) throw corrupt('trailing bytes');
      return pos + 33;
    }
    if (tag !== TAG_NODE || depth >= bottom) throw corrupt('bad node');
    const byte = depth >> 3;
    const mask = 0x80 >> (depth & 7);
    prefix[byte] &= ~mask;
    const mid = yield* walk(buf, pos + 33, depth + 1, bottom, prefix);
    prefix[byte] |= mask;
    const end = yield* walk(buf, mid, depth + 1, bottom, prefix);
    prefix[byte] &= ~mask;
    return end;
  }
  const rootBuf = readStratum(read, Buffer.from([layout.idBase]), root, layout);
  const end = yield* walk(rootBuf, 1, 0, layout.top(1), Buffer.alloc(32));
  if (end !== rootBuf.length) throw corrupt('trailing bytes');
}

/**
 * Full check of the stored tree against `root`: decodes every reachable stratum with all shape checks and
 * recomputes every hash. Returns the ids of the reachable strata (preorder) and the number of leaves.
 * Throws StorageError on the first inconsistency. Cost: one read per stratum, one hash per node.
 */
export function smtAudit(
  root: Buffer,
  read: StratumReader,
  layout: StrataLayout = STRATA,
): { strata: Buffer[]; leaves: number } {
  const strata: Buffer[] = [];
  let leaves = 0;
  if (asBuffer(root).equals(SMT_EMPTY)) return { strata, leaves };
  const visit = (id: Buffer, expected: Uint8Array): void => {
    const raw = read(id);
    if (raw === undefined) throw corrupt('missing stratum', id);
    const top = decodeStratum(id, raw, layout);
    strata.push(id);
    const path = Buffer.alloc(32);
    id.copy(path, 0, 1);
    const hashOf = (n: StratumNode, depth: number): Buffer => {
      switch (n.type) {
        case 'empty':
          return SMT_EMPTY;
        case 'leaf':
          leaves++;
          return smtLeafHash(n.path, n.value);
        case 'ref': {
          visit(stratumId(depth, path, 0, undefined, layout), n.hash);
          return n.hash;
        }
        case 'node': {
          const byte = depth >> 3;
          const mask = 0x80 >> (depth & 7);
          path[byte] &= ~mask;
          const l = hashOf(n.left, depth + 1);
          path[byte] |= mask;
          const r = hashOf(n.right, depth + 1);
          path[byte] &= ~mask;
          const h = sha256Pair(SMT_NODE_PREFIX, l, r);
          if (!h.equals(n.hash)) throw corrupt('stored node hash is wrong', id);
          return h;
        }
      }
    };
    const h = hashOf(top, layout.top(id[0] - layout.idBase));
    if (!h.equals(expected)) throw corrupt('stratum does not match the hash above it', id);
  };
  visit(Buffer.from([layout.idBase]), root);
  return { strata, leaves };
}
