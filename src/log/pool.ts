/**
 * The pool: submissions waiting to be sequenced (step 1 of a batch, docs/architecture.md). Each
 * call's entries are validated and encoded once, packed, and taken by the appender in batches.
 */
import { type Entry, encodedEntrySize, encodeEntryInto, indexPathInto } from '../core/entry.js';
import { FormatError, TrustixError } from '../core/errors.js';
import { LEAF_HASH_PREFIX } from '../core/merkle.js';

export interface SubmitReceipt {
  index: number;
  /** True when an identical value for this key was already in the log; nothing was appended. */
  duplicate: boolean;
  /** The signed checkpoint that covers the entry. */
  checkpoint: string;
  /** RFC 6962 inclusion proof of the entry at `index` in the checkpoint's tree. */
  proof: Buffer[];
}

/** The pool is full: the caller should retry later (HTTP 503 + Retry-After). */
export class PoolFullError extends TrustixError {
  constructor(readonly retryAfterSeconds: number) {
    super('POOL_FULL', `submission pool is full; retry in ${retryAfterSeconds}s`);
  }
}

/**
 * One call to `submit`: a single promise for all its entries (a promise, its two functions and
 * Promise.all's bookkeeping per entry were several objects that each lived as long as the entry
 * was queued, and made up much of the garbage collector's work during ingest). Its entries are
 * kept packed for the same reason: a few buffers per call, not an object and four buffers per
 * entry that all lived across two or three pipelined batches and so were promoted to old space.
 */
export interface SubmitCall {
  receipts: SubmitReceipt[];
  /** Entries not acknowledged yet. */
  left: number;
  failed: boolean;
  resolve: (r: SubmitReceipt[]) => void;
  reject: (e: unknown) => void;
  /**
   * Each entry as 0x00 || its encoding (the input of its RFC 6962 leaf hash), back to back: entry
   * i is framed[starts[i] + 1 .. starts[i + 1]).
   */
  framed: Buffer;
  /** Offsets below 2^32 (a Buffer's limit in Node 20), read as small integers, not doubles. */
  starts: Uint32Array;
  /** Where entry i's value starts in `framed` (the byte before it is its length). */
  valueAt: Uint32Array;
  /** Index path of entry i at paths[32 i .. 32 i + 32). */
  paths: Buffer;
}

/** The submissions of one batch, in order: submission i is entry slots[i] of calls[i]. */
export interface Batch {
  calls: SubmitCall[];
  slots: Uint32Array;
}

export function acknowledge(call: SubmitCall, slot: number, receipt: SubmitReceipt): void {
  call.receipts[slot] = receipt;
  if (--call.left === 0 && !call.failed) call.resolve(call.receipts);
}

function refuse(call: SubmitCall, err: unknown): void {
  if (call.failed) return;
  call.failed = true;
  call.reject(err);
}

export function refuseAll(batch: Batch, err: unknown): void {
  for (const call of batch.calls) refuse(call, err);
}

/** Entry `slot` of `call`'s encoding (a view). */
export function entryBytes(call: SubmitCall, slot: number): Buffer {
  return call.framed.subarray(call.starts[slot] + 1, call.starts[slot + 1]);
}

/** Calls waiting to be sequenced, in order, bounded by `maxPending` submissions. */
export class Pool {
  /** Calls with submissions not taken into a batch yet, from `queueHead` on. */
  private readonly queue: Array<SubmitCall | undefined> = [];
  private queueHead = 0;
  /** Submissions of queue[queueHead] already taken. */
  private queueTaken = 0;
  private waiting = 0;

  constructor(private readonly maxPending: number) {}

  /** Submissions waiting. */
  get pending(): number {
    return this.waiting;
  }

  /**
   * Queues one call's entries; its promise settles once all of them are acknowledged (or the first
   * is refused). Invalid entries throw before anything is queued; a full pool rejects.
   */
  add(entries: readonly Entry[]): Promise<SubmitReceipt[]> {
    const n = entries.length;
    if (n === 0) return Promise.resolve([]);
    const starts = new Uint32Array(n + 1);
    let total = 0;
    for (let i = 0; i < n; i++) {
      // encodedEntrySize validates
      total += 1 + encodedEntrySize(entries[i]);
      if (total > 0xffffffff) throw new FormatError('the entries of one call must total less than 4 GiB');
      starts[i + 1] = total;
    }
    if (this.waiting + n > this.maxPending) {
      return Promise.reject(new PoolFullError(1));
    }
    const framed = Buffer.allocUnsafe(total);
    const valueAt = new Uint32Array(n);
    const paths = Buffer.allocUnsafe(32 * n);
    for (let i = 0; i < n; i++) {
      const e = entries[i];
      framed[starts[i]] = LEAF_HASH_PREFIX;
      valueAt[i] = encodeEntryInto(e, framed, starts[i] + 1);
      indexPathInto(e.protocol, e.key, paths, 32 * i);
    }
    const call: SubmitCall = {
      receipts: new Array<SubmitReceipt>(n),
      left: n,
      failed: false,
      resolve: unsettled,
      reject: unsettled,
      framed,
      starts,
      valueAt,
      paths,
    };
    const promise = new Promise<SubmitReceipt[]>((resolve, reject) => {
      call.resolve = resolve;
      call.reject = reject;
    });
    this.queue.push(call);
    this.waiting += n;
    return promise;
  }

  /** Takes the next `max` submissions (or all there are) off the queue. */
  take(max: number): Batch {
    const n = Math.min(max, this.waiting);
    const calls = new Array<SubmitCall>(n);
    const slots = new Uint32Array(n);
    let i = 0;
    while (i < n) {
      const call = this.queue[this.queueHead]!;
      const size = call.receipts.length;
      let s = this.queueTaken;
      for (; s < size && i < n; s++, i++) {
        calls[i] = call;
        slots[i] = s;
      }
      if (s < size) {
        this.queueTaken = s;
      } else {
        this.queue[this.queueHead++] = undefined;
        this.queueTaken = 0;
      }
    }
    this.waiting -= n;
    // many one-entry calls would make shifting one at a time quadratic
    if (this.queueHead === this.queue.length || this.queueHead >= 1024) {
      this.queue.splice(0, this.queueHead);
      this.queueHead = 0;
    }
    return { calls, slots };
  }
}

/** Placeholder until a submission's promise exists (set before the submission is queued). */
function unsettled(): void {}
