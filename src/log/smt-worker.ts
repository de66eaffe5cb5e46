/**
 * Worker thread that runs the sparse index update of a batch (smtApplyBatch) on the second core
 * while the sequencer builds tiles and serves the event loop. It opens the log's LMDB environment
 * itself and reads the strata of the last committed state; it never writes. Messages and their
 * packing are described in smt-offload.ts.
 */
import { parentPort, workerData } from 'node:worker_threads';
import {
  LevelRowCopies,
  SLAB_SIZE,
  type SlabSource,
  type SmtBatchRows,
  smtApplyBatchRows,
} from '../core/smt-batch.js';
import { stratumLevel } from '../core/smt-strata.js';
import { LmdbLogStore } from '../storage/lmdb/lmdb.js';
import type { OffloadRequest, OffloadResponse, OffloadReuse } from './smt-offload.js';
import { packItems, packRows } from './smt-offload.js';

const port = parentPort;
if (port === null) throw new Error('smt-worker must run in a worker thread');
// the sequencer of this process holds the store's writer lock
const store = LmdbLogStore.open((workerData as { dir: string }).dir, { lock: false });
/**
 * Rows of results the sequencer has not committed yet, by request seq, so that the next batch can
 * be computed on top of them while they are being committed. Forgotten when a request stops
 * listing them in `keep`: by then they are in the store, or their batch failed and was dropped.
 */
const held = new Map<number, HeldRows>();

/** A result's rows, with the index of each row by rowKey of its id. */
interface HeldRows {
  rows: SmtBatchRows;
  byKey: Map<number | string, number>;
}

/**
 * Map key of a stratum id (a level byte, then that many path bytes). Ids of the top four levels
 * (every row of a tree of a few million leaves) are a small integer: a hex string per row read and
 * per row written was about a tenth of this thread's time. Longer ids keep their hex; a number and
 * a string never collide as keys, and the length of an id is fixed by its first byte.
 */
function rowKey(id: Buffer): number | string {
  const n = id.length;
  if (n > 4) return id.toString('hex');
  let k = 0;
  for (let i = 0; i < n; i++) k = k * 256 + id[i];
  return k;
}

/**
 * Slabs the rows are written into (smtApplyBatch's SlabSource), recycled instead of left to the
 * collector: a 10k batch at a million entries fills about 350 of 64 KB, and this thread's
 * collector, started mostly by growth of its heap, let 60-110 MB of them wait (docs/performance.md,
 * "Memory"). A slab is reused once its frame has moved on (retired) and no held result has a row
 * in it.
 */
const freeSlabs: Buffer[] = [];
const retired = new Map<ArrayBufferLike, Buffer>();
/** Held results with a row in a slab, by slab; and each held result's slabs. */
const slabUsers = new Map<ArrayBufferLike, number>();
const heldSlabs = new Map<number, ArrayBufferLike[]>();
const slabs: SlabSource = {
  take(bytes) {
    return (bytes <= SLAB_SIZE ? freeSlabs.pop() : undefined) ?? Buffer.allocUnsafeSlow(bytes);
  },
  retire(slab) {
    if (slab.length === SLAB_SIZE && slab.byteOffset === 0 && slab.buffer.byteLength === SLAB_SIZE)
      retired.set(slab.buffer, slab);
  },
};

function recycleUnused(): void {
  for (const [ab, slab] of retired) {
    if (slabUsers.has(ab)) continue;
    retired.delete(ab);
    freeSlabs.push(slab);
  }
}

function hold(seq: number, rows: SmtBatchRows): void {
  const used = new Set<ArrayBufferLike>();
  const byKey = new Map<number | string, number>();
  let last: ArrayBufferLike | undefined;
  for (let i = 0; i < rows.count; i++) {
    const ab = rows.slab(i).buffer;
    // rows finished one after another are mostly in the same slab
    if (ab !== last) used.add(ab);
    last = ab;
    byKey.set(rowKey(rows.id(i)), i);
  }
  for (const ab of used) slabUsers.set(ab, (slabUsers.get(ab) ?? 0) + 1);
  heldSlabs.set(seq, [...used]);
  held.set(seq, { rows, byKey });
  recycleUnused();
}

function forget(seq: number): void {
  held.delete(seq);
  for (const ab of heldSlabs.get(seq) ?? []) {
    const n = (slabUsers.get(ab) ?? 1) - 1;
    if (n > 0) slabUsers.set(ab, n);
    else slabUsers.delete(ab);
  }
  heldSlabs.delete(seq);
  recycleUnused();
}

/** Rows read from the store (see LevelRowCopies). */
const levelRows = new LevelRowCopies();

/** Rows buffers the sequencer gave back (OffloadReuse), for packItems; two are enough in turn. */
const spareRows: ArrayBuffer[] = [];
const MAX_SPARE = 2;

port.on('message', (msg: OffloadRequest | OffloadReuse | { type: 'close' } | { type: 'release' }) => {
  if (msg.type === 'reuse') {
    for (const b of msg.buffers) if (spareRows.length < MAX_SPARE) spareRows.push(b);
    return;
  }
  if (msg.type === 'close') {
    for (const seq of [...held.keys()]) forget(seq);
    void store.close().finally(() => port.postMessage({ type: 'closed' }));
    return;
  }
  if (msg.type === 'release') {
    for (const seq of [...held.keys()]) forget(seq);
    return;
  }
  try {
    for (const seq of [...held.keys()]) if (!msg.keep.includes(seq)) forget(seq);
    // newest first: a row rewritten by several uncommitted batches is read as the last one left it
    const layers: HeldRows[] = [];
    for (let i = msg.keep.length - 1; i >= 0; i--) {
      const rows = held.get(msg.keep[i]);
      if (rows === undefined) throw new Error(`result ${msg.keep[i]} is no longer held`);
      layers.push(rows);
    }
    // the batch must read what the sequencer committed last, not an older snapshot
    store.renewSnapshot();
    const replacedPaths: Buffer[] = [];
    const replacedValues: Buffer[] = [];
    const result = store.read((snap) => {
      const stored = (id: Buffer) =>
        levelRows.copy(stratumLevel(id), snap.peekStratum ? snap.peekStratum(id) : snap.stratum(id));
      return smtApplyBatchRows(
        Buffer.from(msg.root),
        { paths: msg.paths, values: msg.values, valueEnds: msg.valueEnds },
        layers.length === 0
          ? stored
          : (id) => {
              const key = rowKey(id);
              for (const layer of layers) {
                const i = layer.byKey.get(key);
                if (i !== undefined) return layer.rows.row(i);
              }
              return stored(id);
            },
        (path, value) => {
          replacedPaths.push(path);
          replacedValues.push(value);
        },
        slabs,
      );
    });
    hold(msg.seq, result);
    const packedIds = packItems(
      result.count,
      (i) => result.idLength(i),
      (i) => result.id(i),
    );
    const packedRows = packItems(
      result.count,
      (i) => result.rowLength(i),
      (i) => result.row(i),
      spareRows,
    );
    const packedPaths = packRows(replacedPaths);
    const packedValues = packRows(replacedValues);
    const reply: OffloadResponse = {
      type: 'done',
      seq: msg.seq,
      root: result.root,
      ids: packedIds,
      rows: packedRows,
      replacedPaths: packedPaths,
      replacedValues: packedValues,
    };
    port.postMessage(reply, [
      packedIds.bytes.buffer,
      packedRows.bytes.buffer,
      packedPaths.bytes.buffer,
      packedValues.bytes.buffer,
    ] as ArrayBuffer[]);
  } catch (err) {
    const reply: OffloadResponse = { type: 'failed', seq: msg.seq, message: (err as Error).message };
    port.postMessage(reply);
  }
});
