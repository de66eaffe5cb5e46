/**
 * Sparse-index hashing primitives and the stratum row format (described in smt.ts). Rows are read in place:
 *   version 0x02, then the top node in preorder: 0x00 EMPTY | 0x01 len path(32) value LEAF |
 *   0x02 hash(32) left right NODE | 0x03 hash(32) REF.
 * Bands: 8 levels from depths 0 and 8, then 4 levels each from depth 16 on (see STRATA).
 */
import { FormatError, StorageError } from './errors.js';
import { sha256, sha256Into } from './hash.js';

/** Hash of an empty subtree and root of the empty tree. */
export const SMT_EMPTY: Buffer = Buffer.alloc(32);
export const SMT_LEAF_PREFIX = 0x02;
export const SMT_NODE_PREFIX = 0x03;
export const SMT_MAX_VALUE_LENGTH = 255;
export const SMT_PATH_BITS = 256;
/** First byte of every row of the current layout (STRATA). */
export const STRATUM_VERSION = 0x02;
/** Levels of the bands of the two top strata levels (depths 0 and 8), the rows kept in tables. */
export const TOP_BAND_LEVELS = 8;

/**
 * How the trie is cut into strata: which depths bands start at, how ids are made, what version byte
 * rows carry. Stratum levels are numbered from 0 (the root's band) down; a band of level k spans
 * depths top(k) .. top(k + 1), where the nodes at top(k + 1) are REFs to the strata of level k + 1.
 * A stratum's id is [idBase + k] followed by the first ceil(top(k) / 8) bytes of the paths under it,
 * the bits from top(k) on cleared.
 */
export interface StrataLayout {
  readonly version: number;
  readonly idBase: number;
  /** Depth of the top node of the strata of `level`. */
  top(level: number): number;
  /** The level whose strata have their top node at `depth` (a band boundary). */
  levelAt(depth: number): number;
}

/**
 * Top depth of a stratum of `level` in the current layout: 8-level bands at depths 0 and 8, then
 * 4-level bands from depth 16 on. A band holds at most 2^levels leaves and REFs, so a row's size is
 * bounded whatever the tree's size: about 1.7 KB at most for a 4-level band (16 leaves of 40-byte
 * values and 15 NODEs), where an 8-level band at depth 16 grows with the tree up to 256 leaves
 * (about 27 KB). The two top levels keep 8 levels: they are few (257 rows), cached and kept in
 * tables, and fewer levels there would only add reads (docs/sparse-index.md, "Why 4-level bands
 * from depth 16").
 */
export function bandTop(level: number): number {
  return level < 2 ? 8 * level : 4 * level + 8;
}

/** The level of the current layout whose strata start at `depth` (0, 8, 16, 20, 24, ...). */
export function bandLevelAt(depth: number): number {
  return depth < 16 ? depth >> 3 : (depth >> 2) - 2;
}

/**
 * First byte of the id of a root stratum in the current layout. Ids of the 8-level layout (format
 * 1) start with their level, 0 to 31: with ids of this layout from 0x40 on, rows of both can sit in
 * one store while it is converted (src/log/strata-format.ts).
 */
export const STRATUM_ID_BASE = 0x40;

/** The current layout (rows of format 2). */
export const STRATA: StrataLayout = {
  version: STRATUM_VERSION,
  idBase: STRATUM_ID_BASE,
  top: bandTop,
  levelAt: bandLevelAt,
};

/** The layout of format 1 (8-level bands everywhere), read only to convert a store to STRATA. */
export const STRATA_V1: StrataLayout = {
  version: 0x01,
  idBase: 0,
  top: (level) => 8 * level,
  levelAt: (depth) => depth >> 3,
};

/** Level of the stratum with id `id` in the current layout. */
export function stratumLevel(id: Uint8Array): number {
  return id[0] - STRATUM_ID_BASE;
}

/** Length of the ids of strata whose top node is at `depth`. */
export function stratumIdLength(depth: number): number {
  return 1 + ((depth + 7) >> 3);
}

export const TAG_EMPTY = 0x00;
export const TAG_LEAF = 0x01;
export const TAG_NODE = 0x02;
export const TAG_REF = 0x03;

/**
 * Reads one stratum row by id, or undefined if there is none. The returned bytes must stay unchanged until
 * the call that asked for them returns (so no buffer that the store reuses for its next read, such as
 * lmdb's getBinaryFast; plain `get` is fine). The id is the caller's for the call only: a lookup passes
 * the same buffer, rewritten, for every read of one level.
 */
export type StratumReader = (id: Buffer) => Uint8Array | undefined;

// Scratch for leaf hashing: 0x02 || path || value, with one cached view per value length so that
// hashing a leaf allocates nothing but the digest.
const leafScratch = Buffer.alloc(1 + 32 + SMT_MAX_VALUE_LENGTH);
leafScratch[0] = SMT_LEAF_PREFIX;
const leafViews: Buffer[] = [];
function leafView(len: number): Buffer {
  let v = leafViews[len];
  if (v === undefined) {
    v = leafScratch.subarray(0, 33 + len);
    leafViews[len] = v;
  }
  return v;
}

/** SHA-256(0x02 || path || value). */
export function smtLeafHash(path: Uint8Array, value: Uint8Array): Buffer {
  if (path.length !== 32) throw new FormatError(`sparse index path must be 32 bytes, got ${path.length}`);
  if (value.length > SMT_MAX_VALUE_LENGTH) {
    throw new FormatError(`sparse index value must be at most 255 bytes, got ${value.length}`);
  }
  leafScratch.set(path, 1);
  leafScratch.set(value, 33);
  return sha256(leafView(value.length));
}

/**
 * Puts the path and value of the encoded LEAF at `off` after the prefix in leafScratch; returns the
 * hash input. Copied by hand: Buffer#copy allocates a view per call, which cost more than the copy.
 */
function leafInput(buf: Uint8Array, off: number): Buffer {
  const len = buf[off + 1];
  const n = 32 + len;
  const s = off + 2;
  for (let i = 0; i < n; i++) leafScratch[1 + i] = buf[s + i];
  return leafView(len);
}

/** A DataView of exactly the bytes of `b`. */
export function dataView(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/**
 * Copies src[s..s+32) to dst[d..), four bytes at a time: through DataViews (whose unaligned 32-bit
 * reads and writes the optimizing compiler inlines) a copy or a hash written into place takes about
 * half the time of a byte loop, and no temporary view as Buffer#copy or TypedArray#set of a subarray.
 */
export function copy32(src: DataView, s: number, dst: DataView, d: number): void {
  for (let i = 0; i < 32; i += 4) dst.setInt32(d + i, src.getInt32(s + i));
}

/** Copies src[s..e) to dst[d..) (as copy32; long runs through TypedArray#set). */
export function copyBytes(src: DataView, s: number, e: number, dst: DataView, d: number): void {
  const n = e - s;
  if (n > 256) {
    new Uint8Array(dst.buffer, dst.byteOffset + d, n).set(new Uint8Array(src.buffer, src.byteOffset + s, n));
    return;
  }
  let i = 0;
  for (; i + 4 <= n; i += 4) dst.setInt32(d + i, src.getInt32(s + i));
  for (; i < n; i++) dst.setUint8(d + i, src.getUint8(s + i));
}

const leafScratchView = dataView(leafScratch);

/** The leaf hash input of the encoded LEAF at `off` of a DataView, in a scratch valid until the next call. */
export function leafInputAt(src: DataView, off: number): Buffer {
  const len = src.getUint8(off + 1);
  copyBytes(src, off + 2, off + 34 + len, leafScratchView, 1);
  return leafView(len);
}

/** Leaf hash of the encoded LEAF at `off` (bounds are the caller's business). */
export function leafHashAt(buf: Buffer, off: number): Buffer {
  return sha256(leafInput(buf, off));
}

/** leafHashAt written to out[at..at+32) instead of a new buffer (a lookup's sibling leaves). */
export function leafHashInto(buf: Buffer, off: number, out: Uint8Array, at: number): void {
  sha256Into(leafInput(buf, off), out, at);
}

/** Bit `i` (0 = most significant bit of byte 0) of a path. */
export function pathBit(path: Uint8Array, i: number): number {
  return (path[i >> 3] >> (7 - (i & 7))) & 1;
}

/**
 * Id of the stratum whose top node sits at `depth` (a band boundary of `layout`, by default the
 * current one) on the path at path[at..], written into `out` (at least stratumIdLength(depth) bytes;
 * the id is its first stratumIdLength(depth)) if given.
 */
export function stratumId(depth: number, path: Uint8Array, at = 0, out?: Buffer, layout = STRATA): Buffer {
  const n = (depth + 7) >> 3;
  const id = out ?? Buffer.allocUnsafe(n + 1);
  id[0] = layout.idBase + layout.levelAt(depth);
  for (let i = 0; i < n; i++) id[i + 1] = path[at + i];
  // a band starting in the middle of a byte: the bits from `depth` on are not the stratum's
  if (depth & 7) id[n] &= (0xff00 >> (depth & 7)) & 0xff;
  return id;
}

/** Ids of the strata of levels 0 .. levels - 1 along each 32-byte path of `paths`, each once. */
export function strataAlong(paths: Buffer, levels: number): Buffer[] {
  const seen = new Set<string>();
  const out: Buffer[] = [];
  for (let at = 0; at < paths.length; at += 32) {
    for (let level = 0; level < levels; level++) {
      const id = stratumId(bandTop(level), paths, at);
      const k = id.toString('latin1');
      if (seen.has(k)) continue;
      seen.add(k);
      out.push(id);
    }
  }
  return out;
}

export const ROOT_STRATUM_ID: Buffer = Buffer.from([STRATUM_ID_BASE]);

export function asBuffer(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

export function corrupt(what: string, id?: Uint8Array): StorageError {
  const where = id === undefined ? '' : ` in stratum ${Buffer.from(id).toString('hex')}`;
  return new StorageError(`sparse index storage damaged${where}: ${what}`);
}

/** Offset just past the encoded subtree starting at `pos`. Checks tags and bounds, not the tree's shape. */
export function skipNode(buf: Buffer, pos: number): number {
  const n = buf.length;
  let pending = 1;
  while (pending > 0) {
    if (pos >= n) throw corrupt('truncated row');
    const tag = buf[pos];
    if (tag === TAG_NODE) {
      pos += 33;
      pending++;
      continue;
    }
    pending--;
    if (tag === TAG_EMPTY) pos += 1;
    else if (tag === TAG_LEAF) pos += pos + 1 < n ? 34 + buf[pos + 1] : 34;
    else if (tag === TAG_REF) pos += 33;
    else throw corrupt(`unknown tag ${tag}`);
  }
  if (pos > n) throw corrupt('truncated row');
  return pos;
}

/** Hash of the encoded subtree at `pos`: a view into `buf` for NODE/REF, fresh for LEAF. */
export function nodeHashAt(buf: Buffer, pos: number): Buffer {
  const tag = buf[pos];
  if (tag === TAG_EMPTY) return SMT_EMPTY;
  if (tag === TAG_LEAF) {
    if (pos + 34 + buf[pos + 1] > buf.length) throw corrupt('truncated leaf');
    return leafHashAt(buf, pos);
  }
  if (tag === TAG_NODE || tag === TAG_REF) {
    if (pos + 33 > buf.length) throw corrupt('truncated node');
    return buf.subarray(pos + 1, pos + 33);
  }
  throw corrupt(`unknown tag ${tag}`);
}

// ---------------------------------------------------------------------------------------------------------
// Object form, for audits and tests. The hot paths (batch, lookup) never build it.

export type StratumNode =
  | { type: 'empty' }
  | { type: 'leaf'; path: Buffer; value: Buffer }
  | { type: 'node'; hash: Buffer; left: StratumNode; right: StratumNode }
  | { type: 'ref'; hash: Buffer };

function sharesPrefix(a: Uint8Array, b: Uint8Array, bits: number): boolean {
  const full = bits >> 3;
  for (let i = 0; i < full; i++) if (a[i] !== b[i]) return false;
  const rest = bits & 7;
  if (rest === 0) return true;
  const mask = (0xff00 >> rest) & 0xff;
  return ((a[full] ^ b[full]) & mask) === 0;
}

/** The level of a well-formed id of `layout`; StorageError for any other id. */
function checkId(id: Uint8Array, layout: StrataLayout): number {
  const level = id.length < 1 ? -1 : id[0] - layout.idBase;
  const top = layout.top(level);
  const ok =
    level >= 0 &&
    top < SMT_PATH_BITS &&
    layout.levelAt(top) === level &&
    id.length === stratumIdLength(top) &&
    ((top & 7) === 0 || (id[id.length - 1] & (0xff >> (top & 7))) === 0);
  if (!ok) throw corrupt('malformed stratum id', id);
  return level;
}

/**
 * Decodes a stratum row and checks its shape: tags and lengths, no trailing bytes, NODEs only inside the
 * band and REFs only at its bottom, every NODE with two or more leaves below, every leaf under the position
 * it is stored at, a non-root top that is a NODE. Stored hashes are returned as found, not recomputed.
 * Throws StorageError.
 */
export function decodeStratum(id: Uint8Array, data: Uint8Array, layout = STRATA): StratumNode {
  const level = checkId(id, layout);
  const buf = asBuffer(data);
  if (buf.length < 2 || buf[0] !== layout.version) throw corrupt('bad version or empty row', id);
  const top = layout.top(level);
  const bottom = layout.top(level + 1);
  // Position of the node being decoded, as a path whose first `depth` bits are meaningful.
  const at = Buffer.alloc(32);
  for (let i = 1; i < id.length; i++) at[i - 1] = id[i];
  let pos = 1;
  // Returns the node and the number of leaves under it, capped at 2 (a REF counts as 2).
  const walk = (depth: number): [StratumNode, number] => {
    if (pos >= buf.length) throw corrupt('truncated row', id);
    const tag = buf[pos];
    if (tag === TAG_EMPTY) {
      pos += 1;
      return [{ type: 'empty' }, 0];
    }
    if (tag === TAG_LEAF) {
      const len = buf[pos + 1];
      const end = pos + 34 + len;
      if (pos + 1 >= buf.length || end > buf.length) throw corrupt('truncated leaf', id);
      const path = Buffer.from(buf.subarray(pos + 2, pos + 34));
      if (!sharesPrefix(path, at, depth)) throw corrupt('leaf stored off its path', id);
      const value = Buffer.from(buf.subarray(pos + 34, end));
      pos = end;
      return [{ type: 'leaf', path, value }, 1];
    }
    if (tag === TAG_NODE || tag === TAG_REF) {
      if (pos + 33 > buf.length) throw corrupt('truncated node', id);
      const hash = Buffer.from(buf.subarray(pos + 1, pos + 33));
      pos += 33;
      if (tag === TAG_REF) {
        if (depth !== bottom) throw corrupt('reference inside the band', id);
        return [{ type: 'ref', hash }, 2];
      }
      if (depth >= bottom) throw corrupt('node below the band', id);
      const byte = depth >> 3;
      const mask = 0x80 >> (depth & 7);
      at[byte] &= ~mask;
      const [left, nl] = walk(depth + 1);
      at[byte] |= mask;
      const [right, nr] = walk(depth + 1);
      at[byte] &= ~mask;
      if (nl + nr < 2) throw corrupt('internal node with fewer than two leaves', id);
      return [{ type: 'node', hash, left, right }, 2];
    }
    throw corrupt(`unknown tag ${tag}`, id);
  };
  const [node] = walk(top);
  if (pos !== buf.length) throw corrupt('trailing bytes', id);
  if (node.type === 'empty' || node.type === 'ref' || (node.type === 'leaf' && level !== 0)) {
    throw corrupt(`stratum top is ${node.type}`, id);
  }
  return node;
}

/** Encodes the object form (no shape checks: decodeStratum is the validator). */
export function encodeStratum(top: StratumNode, layout = STRATA): Buffer {
  const parts: Buffer[] = [Buffer.from([layout.version])];
  const walk = (n: StratumNode): void => {
    switch (n.type) {
      case 'empty':
        parts.push(Buffer.from([TAG_EMPTY]));
        return;
      case 'leaf':
        if (n.path.length !== 32 || n.value.length > SMT_MAX_VALUE_LENGTH) throw new FormatError('bad leaf');
        parts.push(Buffer.from([TAG_LEAF, n.value.length]), n.path, n.value);
        return;
      case 'ref':
        parts.push(Buffer.from([TAG_REF]), n.hash);
        return;
      case 'node':
        parts.push(Buffer.from([TAG_NODE]), n.hash);
        walk(n.left);
        walk(n.right);
        return;
    }
  };
  walk(top);
  return Buffer.concat(parts);
}

/**
 * Keeps the rows of the top strata in memory (by default the root and the 256 strata at depth 8: about
 * 4.5 MB for a tree of a million leaves). Those rows are read by every lookup and rewritten by every large
 * batch, and they are the largest ones (full bands). Rows are kept as bytes: the format is read in place,
 * so there is nothing to gain from caching a decoded form. Call `apply` with a batch's writes and deletes
 * once they are durable; call `clear` if a commit fails after `apply`.
 */
export class StratumCache {
  private readonly rows = new Map<string, Uint8Array>();
  constructor(
    private readonly backing: StratumReader,
    private readonly maxLevel = 1,
  ) {}

  readonly read: StratumReader = (id) => {
    if (stratumLevel(id) > this.maxLevel) return this.backing(id);
    const key = id.toString('hex');
    let row = this.rows.get(key);
    if (row === undefined) {
      row = this.backing(id);
      if (row !== undefined) this.rows.set(key, row);
    }
    return row;
  };

  apply(result: {
    writes: ReadonlyMap<string, { id: Buffer; data: Buffer }>;
    deletes: readonly Buffer[];
  }): void {
    // Copied so that a cached row does not keep its whole batch slab alive.
    for (const [key, w] of result.writes)
      if (stratumLevel(w.id) <= this.maxLevel) this.rows.set(key, Buffer.from(w.data));
    for (const id of result.deletes) this.rows.delete(id.toString('hex'));
  }

  clear(): void {
    this.rows.clear();
  }
}
