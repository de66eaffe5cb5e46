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
 * is written straight into its parent's hashing input (and its own slot in the row) rather than returned
 * as a Buffer, and short copies and comparisons are done by hand, four bytes at a time through DataViews
 * (Buffer#copy and Buffer#compare with offsets cost a temporary view or a native call each).
 */
import { FormatError } from './errors.js';
import { sha256IntoViews } from './hash.js';
import {
  asBuffer,
  bandTop,
  copy32,
  copyBytes,
  corrupt,
  dataView,
  leafInputAt,
  nodeHashAt,
  ROOT_STRATUM_ID,
  SMT_EMPTY,
  SMT_MAX_VALUE_LENGTH,
  SMT_NODE_PREFIX,
  SMT_PATH_BITS,
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
  /** Depth of the stratum's top node, and of the band's bottom edge (the REFs). */
  top: number;
  bottom: number;
  /** The old row (undefined for a new stratum), a DataView of it, and the read cursor in it. */
  old: Buffer | undefined;
  oldView: DataView | undefined;
  pos: number;
  /** Slab holding the row being written at out[base..len), and a DataView of the slab. */
  out: Buffer;
  view: DataView;
  base: number;
  len: number;
}

/** Reused between calls (a nested call, from inside a reader, gets its own). */
interface Workspace {
  frames: Frame[];
  /** One 65-byte hashing input per depth (a node's children write their hashes there), and DataViews. */
  pairs: Buffer[];
  pairViews: DataView[];
}

function newWorkspace(): Workspace {
  const pairs: Buffer[] = [];
  const pairViews: DataView[] = [];
  for (let d = 0; d < SMT_PATH_BITS; d++) {
    const b = Buffer.alloc(65);
    b[0] = SMT_NODE_PREFIX;
    pairs.push(b);
    pairViews.push(dataView(b));
  }
  return { frames: [], pairs, pairViews };
}

let idle: Workspace | undefined;

function zero32(dst: DataView, d: number): void {
  for (let i = 0; i < 32; i += 4) dst.setInt32(d + i, 0);
}

function equal32(a: DataView, s: number, b: DataView, d: number): boolean {
  for (let i = 0; i < 32; i += 4) if (a.getInt32(s + i) !== b.getInt32(d + i)) return false;
  return true;
}

/** Longest stratum id: a level byte and up to 32 path bytes (a band at depth 252). */
const MAX_ID = 33;

/**
 * Rows a batch writes, in the order they were finished (children before parents), each once. They are
 * kept as offsets into their slabs and ids as bytes at a fixed stride, not as a Buffer per row and per
 * id: those objects lived through the whole batch and the next one (the worker holds a result until
 * it is committed), so the young-generation collector copied them and the old one had to mark them.
 * `row(i)` and `id(i)` make views on demand.
 */
export class SmtBatchRows {
  root: Buffer = SMT_EMPTY;
  count = 0;
  private ids = Buffer.allocUnsafe(MAX_ID * 1024);
  private idLengths = new Uint8Array(1024);
  private readonly slabs: Buffer[] = [];
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];

  add(id: Uint8Array, slab: Buffer, start: number, end: number): void {
    const i = this.count++;
    if (MAX_ID * this.count > this.ids.length) {
      const grown = Buffer.allocUnsafe(2 * this.ids.length);
      this.ids.copy(grown);
      this.ids = grown;
      const lengths = new Uint8Array(2 * this.idLengths.length);
      lengths.set(this.idLengths);
      this.idLengths = lengths;
    }
    const at = MAX_ID * i;
    for (let j = 0; j < id.length; j++) this.ids[at + j] = id[j];
    this.idLengths[i] = id.length;
    this.slabs.push(slab);
    this.starts.push(start);
    this.ends.push(end);
  }

  /** Id of row i, as a view into this list's id bytes. */
  id(i: number): Buffer {
    const at = MAX_ID * i;
    return this.ids.subarray(at, at + this.idLengths[i]);
  }

  /** Length of the id of row i. */
  idLength(i: number): number {
    return this.idLengths[i];
  }

  /** Row i, as a view into its slab (see SmtBatchResult.writes). */
  row(i: number): Buffer {
    return this.slabs[i].subarray(this.starts[i], this.ends[i]);
  }

  /** The slab that row i is in, and its length. */
  slab(i: number): Buffer {
    return this.slabs[i];
  }
  rowLength(i: number): number {
    return this.ends[i] - this.starts[i];
  }
}

/**
 * Each subtree's hash is written by whoever finishes it straight to where it is needed next: the
 * slot of its parent's hashing input (pairs[depth - 1] at 1 or 33), or the top hash of a row. So a
 * node's hash is produced once per place it goes, with no intermediate copies.
 */
class BatchWriter {
  private readonly frames: Frame[];
  private readonly pairs: Buffer[];
  private readonly pairViews: DataView[];
  /** The batch's paths and, in path order, the update each sorted position stands for. */
  private readonly pb: Buffer;
  private readonly pbView: DataView;
  private readonly valuesView: DataView;
  private readonly order: Uint32Array;
  readonly rows = new SmtBatchRows();

  constructor(
    private readonly batch: PackedBatch,
    private readonly read: StratumReader,
    ws: Workspace,
    private readonly onReplace: ((path: Buffer, oldValue: Buffer) => void) | undefined,
    private readonly slabs: SlabSource,
  ) {
    this.frames = ws.frames;
    this.pairs = ws.pairs;
    this.pairViews = ws.pairViews;
    this.pb = batch.paths;
    this.pbView = dataView(batch.paths);
    this.valuesView = dataView(batch.values);
    this.order = batch.order;
  }

  /** Starts a new row at `level`. */
  private begin(level: number, old: Buffer | undefined, oldView: DataView | undefined): Frame {
    let f = this.frames[level];
    if (f === undefined) {
      const out = this.slabs.take(SLAB_SIZE);
      const view = dataView(out);
      f = {
        level,
        top: bandTop(level),
        bottom: bandTop(level + 1),
        old: undefined,
        oldView: undefined,
        pos: 0,
        out,
        view,
        base: 0,
        len: 0,
      };
      this.frames[level] = f;
    }
    f.old = old;
    f.oldView = oldView;
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
    f.view = dataView(slab);
    f.base = 0;
    f.len = used;
  }

  /** Ends the row of `f`: keeps it if `changed`, else drops it. */
  private end(f: Frame, id: Buffer, changed: boolean): void {
    if (changed) {
      this.rows.add(id, f.out, f.base, f.len);
    } else {
      f.len = f.base;
    }
    f.old = undefined;
    f.oldView = undefined;
  }

  /**
   * Rewrites an existing stratum whose top node must have the hash at expected[e..e+32); writes its new
   * top hash to dst[d..d+32) (the REF slot in the parent's row, which no child writes move).
   */
  existing(
    level: number,
    id: Buffer,
    expected: DataView,
    e: number,
    lo: number,
    hi: number,
    dst: DataView,
    d: number,
  ): void {
    const raw = this.read(id);
    if (raw === undefined) throw corrupt('missing stratum', id);
    const old = asBuffer(raw);
    if (old.length < 2 || old[0] !== STRATUM_VERSION) throw corrupt('bad version or empty row', id);
    const tag = old[1];
    const oldView = dataView(old);
    const topOk =
      tag === TAG_NODE
        ? old.length >= 34 && equal32(oldView, 2, expected, e)
        : tag === TAG_LEAF && level === 0 && equal32(dataView(nodeHashAt(old, 1)), 0, expected, e);
    if (!topOk) throw corrupt('top node does not match its parent (stale or damaged row)', id);
    const f = this.begin(level, old, oldView);
    this.node(f, f.top, lo, hi, dst, d);
    if (f.pos !== old.length) throw corrupt('trailing bytes', id);
    // Same hash means same leaves, and the encoding is canonical: the row is unchanged.
    this.end(f, id, !equal32(dst, d, expected, e));
  }

  /**
   * Writes a new stratum holding updates [lo, hi) and the extra leaf, if any (2+ leaves unless root);
   * its top hash goes to dst[d..d+32) as in `existing`.
   */
  fresh(
    level: number,
    id: Buffer,
    lo: number,
    hi: number,
    ex: DataView | undefined,
    exOff: number,
    dst: DataView,
    d: number,
  ): void {
    const f = this.begin(level, undefined, undefined);
    this.build(f, f.top, lo, hi, ex, exOff, dst, d);
    this.end(f, id, true);
  }

  /** First index in [lo, hi) whose path has bit `depth` set (the slice is sorted and shares `depth` bits). */
  private split(lo: number, hi: number, depth: number): number {
    const pb = this.pb;
    const order = this.order;
    const b = depth >> 3;
    const m = 0x80 >> (depth & 7);
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (pb[order[mid] * 32 + b] & m) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /**
   * Whether the 32-byte path at buf[off..] is among updates [lo, hi). Compared by hand from byte
   * `from` on (all of them share the bytes before it): Buffer#compare with offsets costs a native call.
   */
  private contains(lo: number, hi: number, buf: Buffer, off: number, from: number): boolean {
    const pb = this.pb;
    const order = this.order;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const p = order[mid] * 32;
      let c = 0;
      for (let i = from; i < 32 && c === 0; i++) c = pb[p + i] - buf[off + i];
      if (c === 0) return true;
      if (c < 0) lo = mid + 1;
      else hi = mid;
    }
    return false;
  }

  /** Reserves a NODE or REF in the row; returns the offset (relative to base) of its hash slot. */
  private open(f: Frame, tag: number): number {
    this.reserve(f, 33);
    f.out[f.len] = tag;
    const slot = f.len + 1 - f.base;
    f.len += 33;
    return slot;
  }

  /** Hashes the node whose children wrote their hashes to pairs[depth] into its slot and dst[d..). */
  private closeNode(f: Frame, depth: number, slot: number, dst: DataView, d: number): void {
    sha256IntoViews(this.pairs[depth], f.view, f.base + slot, dst, d);
  }

  /**
   * Rewrites the old subtree at f.pos (depth `depth`) with updates [lo, hi); advances f.pos past it.
   * Its hash goes to dst[d..d+32).
   */
  private node(f: Frame, depth: number, lo: number, hi: number, dst: DataView, d: number): void {
    const old = f.old!;
    const oldView = f.oldView!;
    const pos = f.pos;
    const tag = old[pos];
    if (lo === hi) {
      // Untouched: copy verbatim.
      const end = skipNode(old, pos);
      const bottom = f.bottom;
      if (tag === TAG_NODE ? depth >= bottom : tag === TAG_REF && depth !== bottom) {
        throw corrupt('node at the wrong depth');
      }
      this.reserve(f, end - pos);
      copyBytes(oldView, pos, end, f.view, f.len);
      f.len += end - pos;
      f.pos = end;
      if (tag === TAG_EMPTY) zero32(dst, d);
      else if (tag === TAG_LEAF) sha256IntoViews(leafInputAt(oldView, pos), dst, d);
      else copy32(oldView, pos + 1, dst, d);
      return;
    }
    switch (tag) {
      case TAG_EMPTY:
        f.pos = pos + 1;
        this.build(f, depth, lo, hi, undefined, 0, dst, d);
        return;
      case TAG_LEAF: {
        const end = pos + 34 + old[pos + 1];
        if (end > old.length) throw corrupt('truncated leaf');
        f.pos = end;
        // A batch entry with the same path replaces the old leaf; otherwise the old leaf joins the batch.
        if (this.contains(lo, hi, old, pos + 2, depth >> 3)) {
          this.onReplace?.(
            Buffer.from(old.subarray(pos + 2, pos + 34)),
            Buffer.from(old.subarray(pos + 34, end)),
          );
          this.build(f, depth, lo, hi, undefined, 0, dst, d);
        } else {
          this.build(f, depth, lo, hi, oldView, pos, dst, d);
        }
        return;
      }
      case TAG_NODE: {
        if (depth >= f.bottom || pos + 33 > old.length) throw corrupt('bad node');
        f.pos = pos + 33;
        const slot = this.open(f, TAG_NODE);
        const mid = this.split(lo, hi, depth);
        const pair = this.pairViews[depth];
        this.node(f, depth + 1, lo, mid, pair, 1);
        this.node(f, depth + 1, mid, hi, pair, 33);
        this.closeNode(f, depth, slot, dst, d);
        return;
      }
      case TAG_REF: {
        if (depth !== f.bottom || pos + 33 > old.length) throw corrupt('bad reference');
        f.pos = pos + 33;
        const slot = this.open(f, TAG_REF);
        const id = stratumId(depth, this.pb, this.order[lo] * 32);
        this.existing(f.level + 1, id, oldView, pos + 1, lo, hi, f.view, f.base + slot);
        copy32(f.view, f.base + slot, dst, d);
        return;
      }
      default:
        throw corrupt(`unknown tag ${tag}`);
    }
  }

  /**
   * Writes the subtree at `depth` made of updates [lo, hi) plus, if `ex` is set, the encoded
   * leaf at offset exOff of the row `ex` views (whose path differs from all of them), with nothing
   * old under it. Its hash goes to dst[d..d+32).
   */
  private build(
    f: Frame,
    depth: number,
    lo: number,
    hi: number,
    ex: DataView | undefined,
    exOff: number,
    dst: DataView,
    d: number,
  ): void {
    const count = hi - lo + (ex === undefined ? 0 : 1);
    if (count === 0) {
      this.reserve(f, 1);
      f.out[f.len++] = TAG_EMPTY;
      zero32(dst, d);
      return;
    }
    if (count === 1) {
      let at: number;
      if (ex !== undefined) {
        const n = 34 + ex.getUint8(exOff + 1);
        this.reserve(f, n);
        at = f.len;
        copyBytes(ex, exOff, exOff + n, f.view, at);
        f.len += n;
      } else {
        const valueEnds = this.batch.valueEnds;
        const u = this.order[lo];
        const vs = u === 0 ? 0 : valueEnds[u - 1];
        const vlen = valueEnds[u] - vs;
        const n = 34 + vlen;
        this.reserve(f, n);
        at = f.len;
        const out = f.out;
        out[at] = TAG_LEAF;
        out[at + 1] = vlen;
        copy32(this.pbView, u * 32, f.view, at + 2);
        copyBytes(this.valuesView, vs, vs + vlen, f.view, at + 34);
        f.len += n;
      }
      sha256IntoViews(leafInputAt(f.view, at), dst, d);
      return;
    }
    if (depth === f.bottom) {
      // Internal node on the band's bottom edge: its content goes to a new child stratum.
      const slot = this.open(f, TAG_REF);
      const id = stratumId(depth, this.pb, this.order[lo] * 32);
      this.fresh(f.level + 1, id, lo, hi, ex, exOff, f.view, f.base + slot);
      copy32(f.view, f.base + slot, dst, d);
      return;
    }
    const slot = this.open(f, TAG_NODE);
    const mid = this.split(lo, hi, depth);
    const exLeft = ex !== undefined && (ex.getUint8(exOff + 2 + (depth >> 3)) & (0x80 >> (depth & 7))) === 0;
    const exRight = ex !== undefined && !exLeft;
    const pair = this.pairViews[depth];
    this.build(f, depth + 1, lo, mid, exLeft ? ex : undefined, exOff, pair, 1);
    this.build(f, depth + 1, mid, hi, exRight ? ex : undefined, exOff, pair, 33);
    this.closeNode(f, depth, slot, dst, d);
  }
}

/**
 * Rows read from a store, each copied into one reused buffer per stratum level: smtApplyBatch is
 * done with a row of a level before it reads the next row of that level (see its `read`), so a
 * store's reused read buffer (lmdb's peek) can feed it through these instead of a fresh buffer per
 * row (about 10k rows, 22 MB per 10k batch at a million entries, all garbage for the collector).
 */
export class LevelRowCopies {
  private readonly levels: Buffer[] = [];

  /** `row` (a stratum of `level`) copied into that level's buffer, valid until the next row of it. */
  copy(level: number, row: Uint8Array | undefined): Buffer | undefined {
    if (row === undefined) return undefined;
    let b = this.levels[level];
    if (b === undefined || b.length < row.length) {
      b = Buffer.allocUnsafeSlow(Math.max(row.length, 64 * 1024));
      this.levels[level] = b;
    }
    b.set(row, 0);
    return b.subarray(0, row.length);
  }
}

/** Submission positions below this fit beside 32 bits of path in one exact double (see sortBatch). */
const POS_LIMIT = 2 ** 21;

/**
 * Updates packed in three arrays (the index worker gets them so from the sequencer): update i has the
 * path paths[32i..32i+32) and the value values[valueEnds[i-1]..valueEnds[i]) (from 0 for i = 0).
 */
export interface SmtPackedUpdates {
  paths: Uint8Array;
  values: Uint8Array;
  valueEnds: Uint32Array;
}

/** A validated packed batch and the order of its updates by path, without repeated paths. */
interface PackedBatch {
  paths: Buffer;
  values: Buffer;
  valueEnds: Uint32Array;
  order: Uint32Array;
}

/** Packs an array of updates (checking their lengths) into one buffer of paths and one of values. */
/** Updates packed as SmtPackedUpdates; FormatError for a path or value of a wrong length. */
export function packUpdates(updates: readonly SmtUpdate[]): SmtPackedUpdates {
  const n = updates.length;
  const paths = Buffer.allocUnsafe(32 * n);
  const valueEnds = new Uint32Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const u = updates[i];
    if (u.path.length !== 32)
      throw new FormatError(`sparse index path must be 32 bytes, got ${u.path.length}`);
    if (u.value.length > SMT_MAX_VALUE_LENGTH) {
      throw new FormatError(`sparse index value must be at most 255 bytes, got ${u.value.length}`);
    }
    paths.set(u.path, 32 * i);
    total += u.value.length;
    valueEnds[i] = total;
  }
  const values = Buffer.allocUnsafe(total);
  for (let i = 0; i < n; i++) values.set(updates[i].value, i === 0 ? 0 : valueEnds[i - 1]);
  return { paths, values, valueEnds };
}

/**
 * Validates a packed batch, sorts it by path and drops all but the last update of each path. The
 * packed form has no object per update: the worker's batch used to be 30k objects that lived through
 * the whole batch, copied by every young-generation collection until they were promoted.
 */
function sortBatch(u: SmtPackedUpdates): PackedBatch {
  const n = u.valueEnds.length;
  const p = asBuffer(u.paths);
  const ends = u.valueEnds;
  if (p.length !== 32 * n)
    throw new FormatError(`sparse index paths must be 32 bytes each, got ${p.length} for ${n}`);
  for (let i = 0, start = 0; i < n; start = ends[i++]) {
    const len = ends[i] - start;
    if (len < 0) throw new FormatError(`sparse index value ends must not decrease (update ${i})`);
    if (len > SMT_MAX_VALUE_LENGTH) {
      throw new FormatError(`sparse index value must be at most 255 bytes, got ${len}`);
    }
  }
  if (n > 0 && ends[n - 1] > u.values.length)
    throw new FormatError('sparse index values end past their buffer');
  // Each key is the path's first 32 bits followed by the submission position, so a plain numeric
  // sort of the keys (native, no comparison callback) orders by those bits and then by position.
  const keys = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const o = 32 * i;
    // a batch too big for the position field gets keys without it, all in one run (sorted below)
    keys[i] =
      n < POS_LIMIT
        ? (((p[o] << 24) | (p[o + 1] << 16) | (p[o + 2] << 8) | p[o + 3]) >>> 0) * POS_LIMIT + i
        : 0;
  }
  keys.sort();
  const order = new Uint32Array(n);
  for (let j = 0; j < n; j++) order[j] = n < POS_LIMIT ? keys[j] % POS_LIMIT : j;
  const cmp = (a: number, b: number) => p.compare(p, 32 * b, 32 * b + 32, 32 * a, 32 * a + 32);
  // Paths that share their first 32 bits (rare) are ordered by the rest, then by position.
  const byPath = (a: number, b: number) => cmp(a, b) || a - b;
  for (let j = 0; j < n; ) {
    const high = Math.floor(keys[j] / POS_LIMIT);
    let e = j + 1;
    while (e < n && Math.floor(keys[e] / POS_LIMIT) === high) e++;
    if (e - j > 1) order.subarray(j, e).sort(byPath);
    j = e;
  }
  let m = 0;
  for (let j = 0; j < n; j++) {
    // Equal paths are adjacent and in submission order: keep the last.
    if (
      j + 1 < n &&
      Math.floor(keys[j] / POS_LIMIT) === Math.floor(keys[j + 1] / POS_LIMIT) &&
      cmp(order[j], order[j + 1]) === 0
    )
      continue;
    order[m++] = order[j];
  }
  return { paths: p, values: asBuffer(u.values), valueEnds: ends, order: order.subarray(0, m) };
}

/**
 * Applies a batch of updates (insert or replace; for a path given several times the last one wins) to the
 * tree whose root is `root` (SMT_EMPTY for a new tree), reading its strata through `read`. Returns the new
 * root and the rows to write. Throws FormatError for a malformed update, StorageError if a row is missing
 * or does not match the hashes above it (for example `root` is not the stored tree's root). Arguments as
 * for smtApplyBatchRows.
 */
export function smtApplyBatch(...args: Parameters<typeof smtApplyBatchRows>): SmtBatchResult {
  const r = smtApplyBatchRows(...args);
  const writes = new Map<string, { id: Buffer; data: Buffer }>();
  for (let i = 0; i < r.count; i++) {
    const id = r.id(i);
    writes.set(id.toString('hex'), { id, data: r.row(i) });
  }
  return { root: r.root, writes, deletes: [] };
}

/**
 * smtApplyBatch with the rows as an SmtBatchRows instead of a map by id hex, for a caller that keys them
 * its own way (the index worker: a hex string per row read and written was a tenth of its time).
 */
export function smtApplyBatchRows(
  root: Buffer,
  updates: readonly SmtUpdate[] | SmtPackedUpdates,
  /**
   * Rows are read depth-first: a row of level L (stratumLevel(id) = L) is no longer used once the next row of
   * level L is read, so a reader may hand out one reused buffer per level.
   */
  read: StratumReader,
  /** Told the old value of every path that the batch replaces (paths it inserts are not reported). */
  onReplace?: (path: Buffer, oldValue: Buffer) => void,
  /** Slabs for the new rows; by default fresh ones, left to the garbage collector. */
  slabs: SlabSource = heapSlabs,
): SmtBatchRows {
  if (root.length !== 32) throw new FormatError(`sparse index root must be 32 bytes, got ${root.length}`);
  const batch = sortBatch('valueEnds' in updates ? updates : packUpdates(updates));
  const count = batch.order.length;
  if (count === 0) {
    const none = new SmtBatchRows();
    none.root = Buffer.from(root);
    return none;
  }
  const ws = idle ?? newWorkspace();
  idle = undefined;
  const w = new BatchWriter(batch, read, ws, onReplace, slabs);
  try {
    const rootId = Buffer.from(ROOT_STRATUM_ID);
    const r = asBuffer(root);
    const h = Buffer.allocUnsafe(32);
    if (r.equals(SMT_EMPTY)) w.fresh(0, rootId, 0, count, undefined, 0, dataView(h), 0);
    else w.existing(0, rootId, dataView(r), 0, 0, count, dataView(h), 0);
    w.rows.root = h;
    return w.rows;
  } finally {
    // After a failure a frame may hold a half-written row; its slab space is simply not reused.
    for (const f of ws.frames) if (f !== undefined) f.old = undefined;
    idle = ws;
  }
}
