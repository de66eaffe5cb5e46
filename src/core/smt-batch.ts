/**
 * Batched updates of the sparse index (design in smt.ts, row format in smt-strata.ts).
 *
 * The batch is sorted by path, then each touched stratum is rewritten in one pass that walks the old row
 * in preorder alongside the slice of the batch that falls under it: untouched subtrees are copied byte for
 * byte (their hash is in the copy), touched ones are rebuilt, and every touched internal node is hashed
 * exactly once, its hash written into the slot reserved for it in the new row. Only strata that contain a
 * touched node are read or written.
 *
 * Hashing is about half the cost, so the rest avoids per-node garbage: rows are written directly into
 * per-level slabs (rows of one level are finished one at a time, children before parents), a child's hash
 * is passed up as an offset into the row being written rather than as a Buffer, and short copies are done
 * by hand (Buffer#copy allocates a temporary view per call).
 */
import { FormatError } from './errors.js';
import { sha256Into } from './hash.js';
import {
  asBuffer,
  corrupt,
  leafHashInto,
  nodeHashAt,
  ROOT_STRATUM_ID,
  SMT_EMPTY,
  SMT_MAX_VALUE_LENGTH,
  SMT_NODE_PREFIX,
  SMT_PATH_BITS,
  STRATUM_LEVELS,
  STRATUM_VERSION,
  type StratumReader,
  skipNode,
  stratumId,
  TAG_EMPTY,
  TAG_LEAF,
  TAG_NODE,
  TAG_REF,
} from './smt-strata.js';

export interface SmtUpdate {
  path: Buffer;
  value: Buffer;
}

export interface SmtBatchResult {
  root: Buffer;
  /**
   * Rows to store, keyed by id hex. Rows whose bytes did not change are left out. Row buffers are views
   * into shared 64 KB slabs: copy a row that is kept in memory long after the batch (stores copy on put).
   */
  writes: Map<string, { id: Buffer; data: Buffer }>;
  /**
   * Rows to remove. Updates only insert or replace, which never removes an internal node, so this is
   * empty today; it is part of the result so that deletion can be added without changing callers.
   */
  deletes: Buffer[];
}

/** Size of the slabs that rows are written into (a bigger one is taken only for a bigger row). */
export const SLAB_SIZE = 1 << 16;

/**
 * Where a batch takes its slabs from, for a caller that recycles them (the index worker): `take`
 * gives a slab of at least `bytes` bytes, `retire` is told when a frame stops writing into one.
 * A retired slab may still hold rows of results the caller keeps; it is the caller's to reuse once
 * none of them refers to it.
 */
export interface SlabSource {
  take(bytes: number): Buffer;
  retire(slab: Buffer): void;
}

const heapSlabs: SlabSource = { take: (bytes) => Buffer.allocUnsafe(bytes), retire: () => {} };

/** Rewriting state of one stratum level; levels nest depth-first, so one frame per level is enough. */
interface Frame {
  level: number;
  /** Depth of the stratum's top node. */
  top: number;
  /** The old row (undefined for a new stratum) and the read cursor in it. */
  old: Buffer | undefined;
  pos: number;
  /** Slab holding the row being written at out[base..len). */
  out: Buffer;
  base: number;
  len: number;
}

// A child's hash, as returned by node()/build(): an offset >= 0 into the current row (relative to its
// base, so it survives the row moving to a bigger slab), or one of these.
const H_EMPTY = -1;
/** The hash is in BatchWriter.leafHash (valid until the next leaf is hashed). */
const H_LEAF = -2;

/** Reused between calls (a nested call, from inside a reader, gets its own). */
interface Workspace {
  frames: Frame[];
  /** One 65-byte hashing scratch per depth: a node's left hash is parked there while its right is built. */
  pairs: Buffer[];
}

function newWorkspace(): Workspace {
  const pairs: Buffer[] = [];
  for (let d = 0; d < SMT_PATH_BITS; d++) {
    const b = Buffer.alloc(65);
    b[0] = SMT_NODE_PREFIX;
    pairs.push(b);
  }
  return { frames: [], pairs };
}

let idle: Workspace | undefined;

function copy32(src: Buffer, s: number, dst: Buffer, d: number): void {
  for (let i = 0; i < 32; i++) dst[d + i] = src[s + i];
}

function copyBytes(src: Buffer, s: number, e: number, dst: Buffer, d: number): void {
  if (e - s > 96) {
    src.copy(dst, d, s, e);
    return;
  }
  for (let i = s; i < e; i++) dst[d++] = src[i];
}

class BatchWriter {
  private readonly frames: Frame[];
  private readonly pairs: Buffer[];
  readonly writes = new Map<string, { id: Buffer; data: Buffer }>();
  private readonly leafHash = Buffer.alloc(32);

  constructor(
    private readonly paths: Buffer[],
    private readonly values: Buffer[],
    private readonly read: StratumReader,
    ws: Workspace,
    private readonly onReplace: ((path: Buffer, oldValue: Buffer) => void) | undefined,
    private readonly slabs: SlabSource,
  ) {
    this.frames = ws.frames;
    this.pairs = ws.pairs;
  }

  /** Starts a new row at `level`. */
  private begin(level: number, old: Buffer | undefined): Frame {
    let f = this.frames[level];
    if (f === undefined) {
      const out = this.slabs.take(SLAB_SIZE);
      f = { level, top: level * STRATUM_LEVELS, old: undefined, pos: 0, out, base: 0, len: 0 };
      this.frames[level] = f;
    }
    f.old = old;
    f.pos = 1;
    f.base = f.len;
    this.reserve(f, 1);
    f.out[f.len++] = STRATUM_VERSION;
    return f;
  }

  private reserve(f: Frame, n: number): void {
    if (f.len + n <= f.out.length) return;
    const used = f.len - f.base;
    const slab = this.slabs.take(Math.max(SLAB_SIZE, 2 * (used + n)));
    f.out.copy(slab, 0, f.base, f.len);
    this.slabs.retire(f.out);
    f.out = slab;
    f.base = 0;
    f.len = used;
  }

  /** Copies hash `h` of the current row of `f` to dst[d..d+32). */
  private put(f: Frame, h: number, dst: Buffer, d: number): void {
    if (h >= 0) copy32(f.out, f.base + h, dst, d);
    else if (h === H_LEAF) copy32(this.leafHash, 0, dst, d);
    else dst.fill(0, d, d + 32);
  }

  /** Hash `h` of the current row of `f` as a fresh Buffer. */
  private hashBuffer(f: Frame, h: number): Buffer {
    const b = Buffer.allocUnsafe(32);
    this.put(f, h, b, 0);
    return b;
  }

  /** Ends the row of `f`: keeps it, or drops it if `keep` is false. Returns the top hash. */
  private end(f: Frame, id: Buffer, h: number, keep: (top: Buffer) => boolean): Buffer {
    const top = this.hashBuffer(f, h);
    if (keep(top)) {
      this.writes.set(id.toString('hex'), { id, data: f.out.subarray(f.base, f.len) });
    } else {
      f.len = f.base;
    }
    f.old = undefined;
    return top;
  }

  /** Rewrites an existing stratum whose top node must have hash `expected`; returns its new top hash. */
  existing(level: number, id: Buffer, expected: Buffer, lo: number, hi: number): Buffer {
    const raw = this.read(id);
    if (raw === undefined) throw corrupt('missing stratum', id);
    const old = asBuffer(raw);
    if (old.length < 2 || old[0] !== STRATUM_VERSION) throw corrupt('bad version or empty row', id);
    const tag = old[1];
    const topOk =
      tag === TAG_NODE || (tag === TAG_LEAF && level === 0) ? nodeHashAt(old, 1).equals(expected) : false;
    if (!topOk) throw corrupt('top node does not match its parent (stale or damaged row)', id);
    const f = this.begin(level, old);
    const h = this.node(f, f.top, lo, hi);
    if (f.pos !== old.length) throw corrupt('trailing bytes', id);
    // Same hash means same leaves, and the encoding is canonical: the row is unchanged.
    return this.end(f, id, h, (top) => !top.equals(expected));
  }

  /** Writes a new stratum holding updates [lo, hi) and the extra leaf, if any (2+ leaves unless root). */
  fresh(level: number, id: Buffer, lo: number, hi: number, exBuf: Buffer | undefined, exOff: number): Buffer {
    const f = this.begin(level, undefined);
    const h = this.build(f, f.top, lo, hi, exBuf, exOff);
    return this.end(f, id, h, () => true);
  }

  /** First index in [lo, hi) whose path has bit `depth` set (the slice is sorted and shares `depth` bits). */
  private split(lo: number, hi: number, depth: number): number {
    const paths = this.paths;
    const b = depth >> 3;
    const m = 0x80 >> (depth & 7);
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (paths[mid][b] & m) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /** Whether the 32-byte path at buf[off..] is among updates [lo, hi). */
  private contains(lo: number, hi: number, buf: Buffer, off: number): boolean {
    const paths = this.paths;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const c = paths[mid].compare(buf, off, off + 32);
      if (c === 0) return true;
      if (c < 0) lo = mid + 1;
      else hi = mid;
    }
    return false;
  }

  /** Reserves a NODE in the row; returns the offset (relative to base) of its hash slot. */
  private openNode(f: Frame): number {
    this.reserve(f, 33);
    f.out[f.len] = TAG_NODE;
    const slot = f.len + 1 - f.base;
    f.len += 33;
    return slot;
  }

  /** Hashes the node whose children were parked in pairs[depth] and fills its slot. */
  private closeNode(f: Frame, depth: number, slot: number, right: number): number {
    const scratch = this.pairs[depth];
    this.put(f, right, scratch, 33);
    sha256Into(scratch, f.out, f.base + slot);
    return slot;
  }

  private writeRef(f: Frame, h: Buffer): number {
    this.reserve(f, 33);
    f.out[f.len] = TAG_REF;
    f.out.set(h, f.len + 1);
    const slot = f.len + 1 - f.base;
    f.len += 33;
    return slot;
  }

  /** Rewrites the old subtree at f.pos (depth `depth`) with updates [lo, hi); advances f.pos past it. */
  private node(f: Frame, depth: number, lo: number, hi: number): number {
    const old = f.old!;
    const pos = f.pos;
    const tag = old[pos];
    if (lo === hi) {
      // Untouched: copy verbatim.
      const end = skipNode(old, pos);
      const bottom = f.top + STRATUM_LEVELS;
      if (tag === TAG_NODE ? depth >= bottom : tag === TAG_REF && depth !== bottom) {
        throw corrupt('node at the wrong depth');
      }
      this.reserve(f, end - pos);
      const at = f.len;
      copyBytes(old, pos, end, f.out, at);
      f.len += end - pos;
      f.pos = end;
      if (tag === TAG_EMPTY) return H_EMPTY;
      if (tag === TAG_LEAF) {
        leafHashInto(f.out, at, this.leafHash, 0);
        return H_LEAF;
      }
      return at + 1 - f.base;
    }
    switch (tag) {
      case TAG_EMPTY:
        f.pos = pos + 1;
        return this.build(f, depth, lo, hi, undefined, 0);
      case TAG_LEAF: {
        const end = pos + 34 + old[pos + 1];
        if (end > old.length) throw corrupt('truncated leaf');
        f.pos = end;
        // A batch entry with the same path replaces the old leaf; otherwise the old leaf joins the batch.
        if (this.contains(lo, hi, old, pos + 2)) {
          this.onReplace?.(
            Buffer.from(old.subarray(pos + 2, pos + 34)),
            Buffer.from(old.subarray(pos + 34, end)),
          );
          return this.build(f, depth, lo, hi, undefined, 0);
        }
        return this.build(f, depth, lo, hi, old, pos);
      }
      case TAG_NODE: {
        if (depth >= f.top + STRATUM_LEVELS || pos + 33 > old.length) throw corrupt('bad node');
        f.pos = pos + 33;
        const slot = this.openNode(f);
        const mid = this.split(lo, hi, depth);
        this.put(f, this.node(f, depth + 1, lo, mid), this.pairs[depth], 1);
        return this.closeNode(f, depth, slot, this.node(f, depth + 1, mid, hi));
      }
      case TAG_REF: {
        if (depth !== f.top + STRATUM_LEVELS || pos + 33 > old.length) throw corrupt('bad reference');
        f.pos = pos + 33;
        const expected = old.subarray(pos + 1, pos + 33);
        const h = this.existing(f.level + 1, stratumId(depth, this.paths[lo]), expected, lo, hi);
        return this.writeRef(f, h);
      }
      default:
        throw corrupt(`unknown tag ${tag}`);
    }
  }

  /**
   * Writes the subtree at `depth` made of updates [lo, hi) plus, if exBuf is set, the encoded leaf at
   * exBuf[exOff..] (whose path differs from all of them), with nothing old under it.
   */
  private build(
    f: Frame,
    depth: number,
    lo: number,
    hi: number,
    exBuf: Buffer | undefined,
    exOff: number,
  ): number {
    const count = hi - lo + (exBuf === undefined ? 0 : 1);
    if (count === 0) {
      this.reserve(f, 1);
      f.out[f.len++] = TAG_EMPTY;
      return H_EMPTY;
    }
    if (count === 1) {
      let at: number;
      if (exBuf !== undefined) {
        const n = 34 + exBuf[exOff + 1];
        this.reserve(f, n);
        at = f.len;
        copyBytes(exBuf, exOff, exOff + n, f.out, at);
        f.len += n;
      } else {
        const path = this.paths[lo];
        const value = this.values[lo];
        const n = 34 + value.length;
        this.reserve(f, n);
        at = f.len;
        const out = f.out;
        out[at] = TAG_LEAF;
        out[at + 1] = value.length;
        copy32(path, 0, out, at + 2);
        copyBytes(value, 0, value.length, out, at + 34);
        f.len += n;
      }
      leafHashInto(f.out, at, this.leafHash, 0);
      return H_LEAF;
    }
    if (depth === f.top + STRATUM_LEVELS) {
      // Internal node on the band's bottom edge: its content goes to a new child stratum.
      const h = this.fresh(f.level + 1, stratumId(depth, this.paths[lo]), lo, hi, exBuf, exOff);
      return this.writeRef(f, h);
    }
    const slot = this.openNode(f);
    const mid = this.split(lo, hi, depth);
    const exLeft = exBuf !== undefined && (exBuf[exOff + 2 + (depth >> 3)] & (0x80 >> (depth & 7))) === 0;
    const exRight = exBuf !== undefined && !exLeft;
    this.put(f, this.build(f, depth + 1, lo, mid, exLeft ? exBuf : undefined, exOff), this.pairs[depth], 1);
    return this.closeNode(
      f,
      depth,
      slot,
      this.build(f, depth + 1, mid, hi, exRight ? exBuf : undefined, exOff),
    );
  }
}

/** Submission positions below this fit beside 32 bits of path in one exact double (see sortBatch). */
const POS_LIMIT = 2 ** 21;

/** Validates, sorts by path and drops all but the last update of each path. */
function sortBatch(updates: readonly SmtUpdate[]): { paths: Buffer[]; values: Buffer[] } {
  const n = updates.length;
  // Each key is the path's first 32 bits followed by the submission position, so a plain numeric
  // sort of the keys (native, no comparison callback) orders by those bits and then by position.
  const keys = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const u = updates[i];
    const p = u.path;
    if (p.length !== 32) throw new FormatError(`sparse index path must be 32 bytes, got ${p.length}`);
    if (u.value.length > SMT_MAX_VALUE_LENGTH) {
      throw new FormatError(`sparse index value must be at most 255 bytes, got ${u.value.length}`);
    }
    // a batch too big for the position field gets keys without it, all in one run (sorted below)
    keys[i] = n < POS_LIMIT ? (((p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]) >>> 0) * POS_LIMIT + i : 0;
  }
  keys.sort();
  const order = new Uint32Array(n);
  for (let j = 0; j < n; j++) order[j] = n < POS_LIMIT ? keys[j] % POS_LIMIT : j;
  // Paths that share their first 32 bits (rare) are ordered by the rest, then by position.
  const byPath = (a: number, b: number) => Buffer.compare(updates[a].path, updates[b].path) || a - b;
  for (let j = 0; j < n; ) {
    const high = Math.floor(keys[j] / POS_LIMIT);
    let e = j + 1;
    while (e < n && Math.floor(keys[e] / POS_LIMIT) === high) e++;
    if (e - j > 1) order.subarray(j, e).sort(byPath);
    j = e;
  }
  const paths: Buffer[] = [];
  const values: Buffer[] = [];
  for (let j = 0; j < n; j++) {
    const i = order[j];
    // Equal paths are adjacent and in submission order: keep the last.
    if (
      j + 1 < n &&
      Math.floor(keys[j] / POS_LIMIT) === Math.floor(keys[j + 1] / POS_LIMIT) &&
      Buffer.compare(updates[i].path, updates[order[j + 1]].path) === 0
    )
      continue;
    paths.push(asBuffer(updates[i].path));
    values.push(asBuffer(updates[i].value));
  }
  return { paths, values };
}

/**
 * Applies a batch of updates (insert or replace; for a path given several times the last one wins) to the
 * tree whose root is `root` (SMT_EMPTY for a new tree), reading its strata through `read`. Returns the new
 * root and the rows to write. Throws FormatError for a malformed update, StorageError if a row is missing
 * or does not match the hashes above it (for example `root` is not the stored tree's root).
 */
export function smtApplyBatch(
  root: Buffer,
  updates: readonly SmtUpdate[],
  /**
   * Rows are read depth-first: a row of level L (id[0] = L) is no longer used once the next row of
   * level L is read, so a reader may hand out one reused buffer per level.
   */
  read: StratumReader,
  /** Told the old value of every path that the batch replaces (paths it inserts are not reported). */
  onReplace?: (path: Buffer, oldValue: Buffer) => void,
  /** Slabs for the new rows; by default fresh ones, left to the garbage collector. */
  slabs: SlabSource = heapSlabs,
): SmtBatchResult {
  if (root.length !== 32) throw new FormatError(`sparse index root must be 32 bytes, got ${root.length}`);
  if (updates.length === 0) return { root: Buffer.from(root), writes: new Map(), deletes: [] };
  const { paths, values } = sortBatch(updates);
  const ws = idle ?? newWorkspace();
  idle = undefined;
  const w = new BatchWriter(paths, values, read, ws, onReplace, slabs);
  try {
    const rootId = Buffer.from(ROOT_STRATUM_ID);
    const r = asBuffer(root);
    const h = r.equals(SMT_EMPTY)
      ? w.fresh(0, rootId, 0, paths.length, undefined, 0)
      : w.existing(0, rootId, r, 0, paths.length);
    return { root: h, writes: w.writes, deletes: [] };
  } finally {
    // After a failure a frame may hold a half-written row; its slab space is simply not reused.
    for (const f of ws.frames) if (f !== undefined) f.old = undefined;
    idle = ws;
  }
}
