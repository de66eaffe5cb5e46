/**
 * Planning a batch (step 2, docs/architecture.md): which submissions append and which are answered
 * by the entry the index already holds for their key, and the index each one gets.
 */
import { equalBytes } from '../core/bytes.js';
import { writeIndexValueIndex } from '../core/entry.js';
import { sha256Into } from '../core/hash.js';
import { type Batch, entryBytes, type SubmitCall } from './pool.js';

/** 30 bits of the index path at paths[at..], a small integer key (see PathMap). */
function pathBits(paths: Buffer, at: number): number {
  return paths[at] | (paths[at + 1] << 8) | (paths[at + 2] << 16) | ((paths[at + 3] & 0x3f) << 24);
}

function samePath(a: SubmitCall, i: number, b: SubmitCall, j: number): boolean {
  return a.paths.compare(b.paths, 32 * j, 32 * j + 32, 32 * i, 32 * i + 32) === 0;
}

/** Whether entry `slot` of `call` has the value `value[from..to)`. */
function valueIs(call: SubmitCall, slot: number, value: Uint8Array, from: number, to: number): boolean {
  const at = call.valueAt[slot];
  return call.framed[at - 1] === to - from && call.framed.compare(value, from, to, at, at + to - from) === 0;
}

function sameValue(a: SubmitCall, i: number, b: SubmitCall, j: number): boolean {
  const at = b.valueAt[j];
  return valueIs(a, i, b.framed, at, at + b.framed[at - 1]);
}

/**
 * A map keyed by 32-byte index paths. Paths are SHA-256 outputs, so 30 bits of one make a small
 * integer key that rarely collides (collisions chain): cheaper than a 32-character string per path.
 * Slots live in parallel arrays, so an entry is no object of its own (a batch plans 10k of them).
 */
export class PathMap<V> {
  /** 30 bits of a path -> its first slot; slots of the same bits chain through `next` (-1 ends). */
  private readonly first = new Map<number, number>();
  private readonly paths: Buffer[] = [];
  private readonly values: V[] = [];
  private readonly next: number[] = [];

  private static key(path: Buffer): number {
    return pathBits(path, 0);
  }

  private slot(path: Buffer, from: number | undefined): number {
    for (let s = from ?? -1; s >= 0; s = this.next[s]) if (equalBytes(this.paths[s], path)) return s;
    return -1;
  }

  get(path: Buffer): V | undefined {
    const s = this.slot(path, this.first.get(PathMap.key(path)));
    return s < 0 ? undefined : this.values[s];
  }

  set(path: Buffer, value: V): void {
    const k = PathMap.key(path);
    const first = this.first.get(k);
    const s = this.slot(path, first);
    if (s >= 0) {
      this.values[s] = value;
      return;
    }
    this.first.set(k, this.paths.length);
    this.paths.push(path);
    this.values.push(value);
    this.next.push(first ?? -1);
  }

  get size(): number {
    return this.paths.length;
  }

  *entries(): Generator<[Buffer, V]> {
    for (let s = 0; s < this.paths.length; s++) yield [this.paths[s], this.values[s]];
  }
}

export interface StoredValue {
  index: number;
  value: Buffer;
}

export interface BatchPlan {
  /** How many submissions append. */
  count: number;
  /** Batch positions of the appended submissions, in log order (the first `count`). */
  appended: Int32Array;
  /** Leaf hashes of the appended entries, packed (32 bytes each). */
  leaves: Buffer;
  /** Their index updates, packed: paths of 32 bytes, values (indexValue) of 40 bytes. */
  paths: Buffer;
  values: Buffer;
  /** Index each submission resolves to. */
  indexes: number[];
  /** 1 for a submission answered by an existing entry. */
  duplicate: Uint8Array;
}

/** Plans batches, one at a time; keeps its hash table of positions for the next batch. */
export class Planner {
  private planTable = new Int32Array(0);

  /**
   * Decides which submissions append and which are answered by an existing entry, and assigns
   * indexes. `stored` holds what the index says for keys of this batch that it already has; keys
   * missing from it are taken to be new.
   */
  plan(batch: Batch, firstIndex: number, stored: PathMap<StoredValue>): BatchPlan {
    const { calls, slots } = batch;
    const n = calls.length;
    const appended = new Int32Array(n);
    const leaves = Buffer.allocUnsafe(32 * n);
    const paths = Buffer.allocUnsafe(32 * n);
    const values = Buffer.allocUnsafe(40 * n);
    const indexes = new Array<number>(n);
    const duplicate = new Uint8Array(n);
    // The latest submission appended per path within this batch, so resubmissions inside a batch
    // are idempotent too: a hash table of positions (bucket: low bits of the path, see PathMap)
    // holds the last position appended per bucket, and `earlier` chains the positions appended
    // before it in the same bucket, newest first. No object per entry, and the table is reused.
    let buckets = 1024;
    while (buckets < 2 * n) buckets *= 2;
    if (this.planTable.length < buckets) this.planTable = new Int32Array(buckets);
    const latest = this.planTable;
    latest.fill(-1, 0, buckets);
    const mask = buckets - 1;
    const earlier = new Int32Array(n);
    let count = 0;
    for (let i = 0; i < n; i++) {
      const call = calls[i];
      const s = slots[i];
      const bucket = pathBits(call.paths, 32 * s) & mask;
      const head = latest[bucket];
      let j = head;
      while (j >= 0 && !samePath(calls[j], slots[j], call, s)) j = earlier[j];
      if (j >= 0) {
        if (sameValue(calls[j], slots[j], call, s)) {
          indexes[i] = indexes[j];
          duplicate[i] = 1;
          continue;
        }
      } else if (stored.size > 0) {
        const prev = stored.get(call.paths.subarray(32 * s, 32 * s + 32));
        if (prev && valueIs(call, s, prev.value, 0, prev.value.length)) {
          indexes[i] = prev.index;
          duplicate[i] = 1;
          continue;
        }
      }
      const index = firstIndex + count;
      // The leaf hash goes straight into the index value, which carries it after the log index.
      // Hashes are copied byte by byte: Buffer#copy of part of a buffer makes a view of that part.
      writeIndexValueIndex(index, values, 40 * count);
      sha256Into(call.framed.subarray(call.starts[s], call.starts[s + 1]), values, 40 * count + 8);
      const paths32 = call.paths;
      for (let b = 0, v = 40 * count + 8, l = 32 * count, q = 32 * s; b < 32; b++) {
        leaves[l + b] = values[v + b];
        paths[l + b] = paths32[q + b];
      }
      appended[count] = i;
      earlier[i] = head;
      latest[bucket] = i;
      indexes[i] = index;
      count++;
    }
    return {
      count,
      appended,
      leaves: leaves.subarray(0, 32 * count),
      paths: paths.subarray(0, 32 * count),
      values: values.subarray(0, 40 * count),
      indexes,
      duplicate,
    };
  }
}

/** The values' ends for SmtOffload.applyPacked: every index value is 40 bytes. */
export function valueEnds(n: number): Uint32Array {
  const ends = new Uint32Array(n);
  for (let i = 0; i < n; i++) ends[i] = 40 * (i + 1);
  return ends;
}

/** The encodings of a plan's appended entries, in log order (views, made for the commit). */
export function appendedEntries(batch: Batch, plan: BatchPlan): Buffer[] {
  const out = new Array<Buffer>(plan.count);
  for (let i = 0; i < plan.count; i++) {
    const at = plan.appended[i];
    out[i] = entryBytes(batch.calls[at], batch.slots[at]);
  }
  return out;
}
