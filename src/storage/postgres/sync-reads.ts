/**
 * Synchronous reads from PostgreSQL, as the LogStore contract asks: a worker thread holds the
 * read connection (read-worker.ts); a read posts its request and waits on a shared flag until the
 * worker has posted the answer, then takes it off the port. One `read` of the store is one
 * REPEATABLE READ transaction, so everything it reads belongs to one committed state. A read
 * blocks its thread for one round trip to the database per row it asks for.
 */
import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from 'node:worker_threads';
import { StorageError, StorageUnavailableError } from '../../core/errors.js';
import { workerEntry } from '../../runtime/worker-entry.js';

/** `seq` numbers a request; its answer carries the same number. */
export type ReadRequest = { begin?: boolean; inRead?: boolean; seq?: number } & (
  | { op: 'head' }
  | { op: 'entry'; index: number }
  | { op: 'tile'; level: number; index: number }
  | { op: 'stratum'; id: Uint8Array }
  | { op: 'strata'; ids: readonly Uint8Array[] }
  | { op: 'entries'; start: number; end: number; max: number }
  | { op: 'checkpoints' }
  | { op: 'meta'; name: string }
  | { op: 'nonces'; now: number }
  | { op: 'end' }
  | { op: 'close' }
);

/** `lost`: the read failed because the connection is gone (the database is out of reach), not on a statement. */
export type ReadAnswer = { seq?: number } & (
  | { ok: true; value: unknown }
  | { ok: false; message: string; code?: string; lost?: boolean }
);

/** How long a read waits for the database before it fails. */
const READ_TIMEOUT_MS = 30_000;
/** How long an answer the worker flagged may take to arrive on the port. */

export class SyncReads {
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly flag = new Int32Array(new SharedArrayBuffer(4));
  /** Whether a read's snapshot is open, and whether its transaction has begun. */
  private inRead = false;
  private begun = false;
  private closed = false;
  /** Requests asked so far (the last one's `seq`). */
  private asked = 0;

  constructor(url: string) {
    const { port1, port2 } = new MessageChannel();
    const e = workerEntry(import.meta.url, 'read-worker');
    this.worker = new Worker(e.entry, {
      eval: e.eval,
      workerData: { url, ctrl: this.flag.buffer, port: port2 },
      transferList: [port2],
    });
    this.worker.unref();
    this.port = port1;
  }

  /** Runs `fn` in one snapshot: every `ask` inside it reads the same committed state. */
  snapshot<T>(fn: () => T): T {
    if (this.inRead) return fn();
    this.inRead = true;
    this.begun = false;
    try {
      return fn();
    } finally {
      this.inRead = false;
      // the worker ends the transaction before it runs the next request
      if (this.begun) this.port.postMessage({ op: 'end' } satisfies ReadRequest);
    }
  }

  /** Asks the worker and waits for its answer. */
  ask<T>(req: ReadRequest): T {
    if (this.closed) throw new StorageError('the PostgreSQL store is closed');
    if (this.inRead) {
      req.inRead = true;
      if (!this.begun) {
        req.begin = true;
        this.begun = true;
      }
    }
    const seq = ++this.asked;
    req.seq = seq;
    Atomics.store(this.flag, 0, 0);
    this.port.postMessage(req);
    const deadline = performance.now() + READ_TIMEOUT_MS;
    let a: ReadAnswer | undefined;
    while (a === undefined) {
      const m = receiveMessageOnPort(this.port);
      // an answer with another number belongs to a read that gave up before it came: never this one's
      if (m !== undefined) {
        if ((m.message as ReadAnswer).seq === seq) a = m.message as ReadAnswer;
        continue;
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new StorageUnavailableError(`PostgreSQL did not answer a read in ${READ_TIMEOUT_MS / 1000} s`);
      }
      // flag 0: nothing answered yet, sleep until the worker says so; flag 1: an answer was posted
      // and can be seen on the port a moment after the flag (seen under load), so look again soon
      const flagged = Atomics.load(this.flag, 0);
      Atomics.wait(this.flag, 0, flagged, flagged === 0 ? left : 1);
    }
    // after a failure inside a read, its later requests fail too (the worker ended its snapshot)
    if (!a.ok) {
      throw new (a.lost ? StorageUnavailableError : StorageError)(`PostgreSQL read failed: ${a.message}`);
    }
    return a.value as T;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.port.postMessage({ op: 'close' } satisfies ReadRequest);
    this.port.close();
    // the worker ends its connection; it is not waited for past a moment
    await new Promise((r) => setTimeout(r, 50));
    await this.worker.terminate();
  }
}
