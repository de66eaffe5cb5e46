/**
 * The sequencer's side of smt-worker.ts: runs smtApplyBatch for big batches in a worker thread,
 * so that hashing the sparse index overlaps with the tiles, the event loop and the next batch's
 * submissions. Any failure of the worker (it cannot start, it dies, it reports an error) is
 * answered by running the same update on the calling thread, which gives the typed error of a
 * real problem (for example a damaged row) or the result, so the worker changes no outcome.
 */

import { Worker } from 'node:worker_threads';
import type { SmtBatchResult, SmtUpdate } from '../core/smt.js';
import { packUpdates, type SmtPackedUpdates } from '../core/smt-batch.js';
import { workerEntry } from '../runtime/worker-entry.js';

/** Byte strings packed into one buffer: string i is bytes[ends[i-1] .. ends[i]). */
export interface PackedRows {
  bytes: Uint8Array;
  ends: Uint32Array;
}

/**
 * Packs `count` byte strings, string i being `item(i)` of length `length(i)`. `spare` buffers (given
 * back by the sequencer, see OffloadResult.release) are packed into when one is big enough; the one
 * taken is removed from the list.
 */
export function packItems(
  count: number,
  length: (i: number) => number,
  item: (i: number) => Uint8Array,
  spare: ArrayBuffer[] = [],
): PackedRows {
  let total = 0;
  for (let i = 0; i < count; i++) total += length(i);
  const k = spare.findIndex((b) => b.byteLength >= total);
  // spares too small now stay too small (a batch's rows grow with the log): not kept idle
  if (k < 0) spare.length = 0;
  // not from the Buffer pool: the buffer is transferred whole; a new one with room to grow, so
  // that it fits the next batches when it comes back
  const buffer = k >= 0 ? spare.splice(k, 1)[0] : new ArrayBuffer(total + (total >> 3));
  const bytes = new Uint8Array(buffer, 0, total);
  const ends = new Uint32Array(count);
  let at = 0;
  for (let i = 0; i < count; i++) {
    bytes.set(item(i), at);
    at += length(i);
    ends[i] = at;
  }
  return { bytes, ends };
}

/** packItems of an array. */
export function packRows(items: readonly Uint8Array[], spare: ArrayBuffer[] = []): PackedRows {
  return packItems(
    items.length,
    (i) => items[i].length,
    (i) => items[i],
    spare,
  );
}

function unpackRows(p: PackedRows): Buffer[] {
  const b = Buffer.from(p.bytes.buffer, p.bytes.byteOffset, p.bytes.byteLength);
  const out = new Array<Buffer>(p.ends.length);
  let start = 0;
  for (let i = 0; i < p.ends.length; i++) {
    out[i] = b.subarray(start, p.ends[i]);
    start = p.ends[i];
  }
  return out;
}

/**
 * The worker's young generation. V8 gives a worker the same as the main thread (32 MB, almost all
 * of it resident during ingest), but what the worker allocates per update dies young or lives for a
 * whole batch, so a smaller nursery costs it little CPU and saves about 24 MB of resident memory.
 */
const WORKER_YOUNG_GENERATION_MB = 8;

export interface OffloadRequest {
  type: 'apply';
  seq: number;
  /**
   * Earlier results (by seq) that lie, in this order, between the committed state and `root`: the
   * worker reads their rows before the store's, and forgets every other result it still holds.
   */
  keep: number[];
  root: Uint8Array;
  /** n paths of 32 bytes. */
  paths: Uint8Array;
  values: Uint8Array;
  valueEnds: Uint32Array;
}

/** Buffers of committed results for the worker to pack later results into. */
export interface OffloadReuse {
  type: 'reuse';
  buffers: ArrayBuffer[];
}

export type OffloadResponse =
  | {
      type: 'done';
      seq: number;
      root: Uint8Array;
      ids: PackedRows;
      rows: PackedRows;
      replacedPaths: PackedRows;
      replacedValues: PackedRows;
    }
  | { type: 'failed'; seq: number; message: string };

/** Rows given as ids and data packed apart (row i is ids' string i and rows' string i), as views. */
function rowList(ids: PackedRows, rows: PackedRows): Array<{ id: Buffer; data: Buffer }> {
  const ib = Buffer.from(ids.bytes.buffer, ids.bytes.byteOffset, ids.bytes.byteLength);
  const rb = Buffer.from(rows.bytes.buffer, rows.bytes.byteOffset, rows.bytes.byteLength);
  const out = new Array<{ id: Buffer; data: Buffer }>(ids.ends.length);
  let id = 0;
  let row = 0;
  for (let i = 0; i < out.length; i++) {
    out[i] = { id: ib.subarray(id, ids.ends[i]), data: rb.subarray(row, rows.ends[i]) };
    id = ids.ends[i];
    row = rows.ends[i];
  }
  return out;
}

/** The result of an offloaded update, with the replaced values it reported. */
export interface OffloadResult {
  /** Names this result for a later update built on top of it before it is committed (`keep`). */
  seq: number;
  /**
   * `strata.writes` is made on first use: the sequencer needs it only to build a batch on top of this
   * one in its own thread, and a map keyed by hex of about one row per update (each row an object,
   * two views and a string) lived from the result to the end of its commit, long enough to be
   * promoted to old space.
   */
  strata: SmtBatchResult;
  /** The rows to store, made afresh at each call as views (none once released). */
  rows(): Array<{ id: Buffer; data: Buffer }>;
  replaced: Array<{ path: Buffer; value: Buffer }>;
  /**
   * Gives the rows' memory back to the worker once they are in the store and nothing reads them
   * any more: `strata.writes` is emptied. A transferred buffer is freed only by a full collection
   * of this thread, which does not count it as its own memory, so at a million entries 60-80 MB of
   * them used to wait for one (docs/performance.md, "Memory").
   */
  release(): void;
}

export class SmtOffload {
  private worker: Worker | undefined;
  private broken = false;
  private seq = 0;
  private waiting: { seq: number; settle: (r: OffloadResponse | undefined) => void } | undefined;

  constructor(private readonly dir: string) {}

  private start(): Worker | undefined {
    if (this.broken) return undefined;
    if (this.worker) return this.worker;
    let w: Worker;
    try {
      const e = workerEntry(import.meta.url, 'smt-worker');
      w = new Worker(e.entry, {
        eval: e.eval,
        workerData: { dir: this.dir },
        resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_GENERATION_MB },
      });
    } catch {
      this.broken = true;
      return undefined;
    }
    w.unref();
    w.on('message', (m: OffloadResponse | { type: 'closed' }) => {
      const waiting = this.waiting;
      if (m.type === 'closed' || waiting === undefined || m.seq !== waiting.seq) return;
      this.waiting = undefined;
      waiting.settle(m);
    });
    const fail = () => {
      this.broken = true;
      this.worker = undefined;
      const waiting = this.waiting;
      this.waiting = undefined;
      waiting?.settle(undefined);
    };
    w.on('error', fail);
    w.on('exit', fail);
    this.worker = w;
    return w;
  }

  /**
   * Starts the update of the tree `root` by `updates` in the worker. `root` is the committed tree,
   * or the result of the worker's updates `keep` (seqs of earlier results, oldest first) on top of
   * it, which the caller has not committed yet. The worker keeps each result until an update
   * that does not list it in `keep` (or `release`). The promise gives undefined when the worker
   * could not do it; the caller then runs the update itself. At most one update is in flight.
   */
  apply(
    root: Buffer,
    updates: readonly SmtUpdate[],
    keep: readonly number[] = [],
  ): Promise<OffloadResult | undefined> {
    let packed: SmtPackedUpdates;
    try {
      packed = packUpdates(updates);
    } catch {
      // a bad length is left to the in-thread run, which reports it as the FormatError it is
      return Promise.resolve(undefined);
    }
    return this.applyPacked(root, packed.paths, packed.values, packed.valueEnds, keep);
  }

  /**
   * `apply` for updates already packed as the worker takes them: n 32-byte paths back to back,
   * the values back to back, value i ending at valueEnds[i]. The arrays are copied (the copies are
   * transferred), so the caller keeps them for an update in its own thread.
   */
  applyPacked(
    root: Buffer,
    paths: Uint8Array,
    values: Uint8Array,
    valueEnds: Uint32Array,
    keep: readonly number[] = [],
  ): Promise<OffloadResult | undefined> {
    // copies (a Buffer's slice would be a view)
    return this.send(root, new Uint8Array(paths), new Uint8Array(values), new Uint32Array(valueEnds), keep);
  }

  /** Sends an update whose arrays are this call's own (they are transferred). */
  private send(
    root: Buffer,
    paths: Uint8Array<ArrayBuffer>,
    values: Uint8Array<ArrayBuffer>,
    valueEnds: Uint32Array<ArrayBuffer>,
    keep: readonly number[],
  ): Promise<OffloadResult | undefined> {
    const w = this.start();
    if (w === undefined || this.waiting !== undefined) return Promise.resolve(undefined);
    const seq = ++this.seq;
    const req: OffloadRequest = {
      type: 'apply',
      seq,
      keep: [...keep],
      root: Uint8Array.from(root),
      paths,
      values,
      valueEnds,
    };
    return new Promise<OffloadResult | undefined>((resolve) => {
      w.ref();
      this.waiting = {
        seq,
        settle: (m) => {
          this.worker?.unref();
          if (m === undefined || m.type !== 'done') {
            resolve(undefined);
            return;
          }
          let writes: Map<string, { id: Buffer; data: Buffer }> | undefined;
          let released = false;
          const rows = () => (released ? [] : rowList(m.ids, m.rows));
          const paths = unpackRows(m.replacedPaths);
          const vals = unpackRows(m.replacedValues);
          const replaced = paths.map((path, i) => ({ path, value: vals[i] }));
          const buffer = m.rows.bytes.buffer as ArrayBuffer;
          resolve({
            release: () => {
              released = true;
              writes?.clear();
              const to = this.worker;
              if (to !== undefined && buffer.byteLength > 0) {
                const reuse: OffloadReuse = { type: 'reuse', buffers: [buffer] };
                to.postMessage(reuse, [buffer]);
              }
            },
            seq,
            rows,
            strata: {
              root: Buffer.from(m.root.buffer, m.root.byteOffset, m.root.byteLength),
              get writes() {
                if (writes === undefined) {
                  writes = new Map();
                  for (const w of rows()) writes.set(w.id.toString('hex'), w);
                }
                return writes;
              },
              deletes: [],
            },
            replaced,
          });
        },
      };
      w.postMessage(req, [paths.buffer, values.buffer, valueEnds.buffer]);
    });
  }

  /** Lets the worker forget every result it holds (they are committed or abandoned). */
  release(): void {
    if (this.worker !== undefined && this.waiting === undefined) this.worker.postMessage({ type: 'release' });
  }

  /** Closes the worker's store and ends the worker. */
  async close(): Promise<void> {
    const w = this.worker;
    this.broken = true;
    if (w === undefined) return;
    this.worker = undefined;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 2000);
      w.on('message', (m: { type: string }) => {
        if (m.type === 'closed') {
          clearTimeout(timer);
          resolve();
        }
      });
      w.on('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      w.ref();
      w.postMessage({ type: 'close' });
    });
    await w.terminate();
  }
}
