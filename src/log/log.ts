/**
 * A log: one store with its appender (the sequencer, for a log opened to write) and its reader.
 * This facade creates and opens logs and hands each call to the side it belongs to.
 */
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { InsecureSecretError, readSecretFile } from '../config/secret.js';
import { signCheckpoint } from '../core/checkpoint.js';
import type { Entry } from '../core/entry.js';
import { StateError, StorageError } from '../core/errors.js';
import type { LookupAnswer } from '../core/lookup.js';
import { EMPTY_ROOT } from '../core/merkle.js';
import { generateKey, type NoteSigner, signerFromSkey } from '../core/note.js';
import { SMT_EMPTY } from '../core/smt.js';
import { fsyncPath, isTempName, tempNameFor, writeFileDurably } from '../storage/durable.js';
import { LmdbLogStore } from '../storage/lmdb/lmdb.js';
import { LOCK_FILE, lockStore } from '../storage/lock.js';
import type { LogHead, LogStore } from '../storage/store.js';
import { Appender, type LogOptions } from './appender.js';
import { PoolFullError, type SubmitReceipt } from './pool.js';
import type { CheckpointPublisher } from './publisher.js';
import { Reader } from './reader.js';
import { SmtOffload } from './smt-offload.js';
import { convertStrata, strataState } from './strata-format.js';

export type { BatchInfo, LogOptions } from './appender.js';
export type { CheckpointPublisher } from './publisher.js';
export { PoolFullError, type SubmitReceipt };

/** A submission to a log that does not sequence (read-only, or a standby): send it to the sequencer. */
export class NotSequencingError extends StateError {}

const SIGNING_KEY_FILE = 'signing.key';

/**
 * One append-only log with its sparse index: submissions go to the appender (src/log/appender.ts),
 * lookups and proofs to the reader (src/log/reader.ts), both over one LogStore.
 */
export class Log {
  readonly origin: string;
  readonly vkey: string;
  private readonly reader: Reader;
  /**
   * Undefined for a log opened read-only (it serves lookups and proofs but takes no submissions),
   * and for a standby while it does not sequence (see startSequencing).
   */
  private appender: Appender | undefined;
  /** A standby: it holds the signing key and sequences only between startSequencing and stopSequencing. */
  private readonly standby: boolean;
  private closed = false;
  private storeClosed = false;
  /** Set once by attachPublisher. */
  private publisher: CheckpointPublisher | undefined;

  private constructor(
    private readonly store: LogStore,
    private readonly signer: NoteSigner | undefined,
    head: LogHead,
    private readonly opts: LogOptions & { standby?: boolean },
    identity: { origin: string; vkey: string },
    offload: (() => SmtOffload) | undefined,
  ) {
    this.origin = identity.origin;
    this.vkey = identity.vkey;
    this.reader = new Reader(store, head, opts.cachedTiles);
    this.standby = opts.standby === true && signer !== undefined;
    this.appender =
      signer && !this.standby
        ? new Appender(store, this.reader, signer, this.origin, head, opts, offload?.())
        : undefined;
  }

  /**
   * Creates a new log in an empty directory: store, signing key (mode 0600) and the empty
   * checkpoint. Atomic: the store is made whole in a temporary directory inside `dir` (its identity
   * and first checkpoint committed, fsynced), the signing key written durably beside it, and only
   * then is `log.mdb` renamed into place, so `dir` holds a complete log or none. A creation that
   * was killed or ran out of disk space leaves only what the next one cleans up or reuses: the
   * temporary directory, the lock file, and its signing key (used again if no other key is given).
   */
  static async create(dir: string, origin: string, opts: LogOptions & { skey?: string } = {}): Promise<Log> {
    if (existsSync(join(dir, 'log.mdb'))) throw new StateError(`a log already exists in ${dir}`);
    mkdirSync(dir, { recursive: true });
    const lock = lockStore(dir);
    let skey: string;
    try {
      if (existsSync(join(dir, 'log.mdb'))) throw new StateError(`a log already exists in ${dir}`);
      for (const name of readdirSync(dir)) {
        if (isTempName(name)) rmSync(join(dir, name), { recursive: true, force: true });
        else if (name !== LOCK_FILE && name !== SIGNING_KEY_FILE) {
          throw new StateError(`${dir} is not empty (${name}); a new log needs an empty directory`);
        }
      }
      const keyFile = join(dir, SIGNING_KEY_FILE);
      const leftKey = existsSync(keyFile) ? readSecretFile(keyFile, 'signing key') : undefined;
      if (leftKey !== undefined && opts.skey !== undefined && leftKey !== opts.skey.trim()) {
        throw new StateError(`cannot write signing key in ${dir}: ${keyFile} already holds another key`);
      }
      skey = opts.skey ?? leftKey ?? generateKey(origin).skey;
      const signer = signerFromSkey(skey);
      if (signer.name !== origin) throw new StateError(`signing key is for ${signer.name}, not ${origin}`);
      const tmp = tempNameFor(join(dir, 'log'));
      const store = LmdbLogStore.open(tmp, { create: true, lock: false });
      try {
        await initialize(store, origin, signer);
      } finally {
        await store.close();
      }
      if (leftKey === undefined) writeFileDurably(keyFile, `${skey}\n`, 0o600);
      fsyncPath(join(tmp, 'log.mdb'));
      renameSync(join(tmp, 'log.mdb'), join(dir, 'log.mdb'));
      fsyncPath(dir);
      rmSync(tmp, { recursive: true, force: true });
    } finally {
      lock.release();
    }
    return Log.open(dir, { ...opts, skey });
  }

  /**
   * Opens an existing log. The signing key defaults to the one stored beside it. Opened to write, a
   * store whose sparse index is in an older format is converted first (see strata-format.ts),
   * telling `progress` (by default stderr) how far it got.
   */
  static async open(
    dir: string,
    opts: LogOptions & { skey?: string; readOnly?: boolean; progress?: (line: string) => void } = {},
  ): Promise<Log> {
    // A reader takes no writer lock (storage/lock.ts) and writes nothing. Its LMDB environment is
    // not opened read-only: several read-only opens at once failed now and then with EINVAL.
    const store = LmdbLogStore.open(dir, { lock: !opts.readOnly });
    try {
      if (!opts.readOnly) {
        const progress =
          opts.progress ?? ((line: string) => process.stderr.write(`trustix: ${dir}: ${line}\n`));
        await convertStrata(store, progress);
      }
      return Log.over(
        store,
        dir,
        opts,
        () => opts.skey ?? readSigningKey(dir),
        () => new SmtOffload(dir),
      );
    } catch (err) {
      await store.close();
      throw err;
    }
  }

  /**
   * Creates a log in an empty store of any driver (one that has no head yet) and opens it for
   * writing with `skey`, whose name must be `origin`.
   */
  static async createIn(
    store: LogStore,
    origin: string,
    opts: LogOptions & { skey: string; standby?: boolean },
  ): Promise<Log> {
    if (store.read((s) => s.head()) !== undefined) throw new StateError('a log already exists in this store');
    const signer = signerFromSkey(opts.skey);
    if (signer.name !== origin) throw new StateError(`signing key is for ${signer.name}, not ${origin}`);
    await initialize(store, origin, signer);
    return Log.openIn(store, opts);
  }

  /**
   * Opens the log in a store of any driver: read-only, or for writing with `skey`. The store stays
   * the caller's until the log is opened, then the log's (closed by `close`). Without the LMDB
   * driver's directory, big batches' index updates run on this thread. With `standby`, a log
   * opened with its key sequences only once told to (startSequencing): for a store that several
   * nodes share, one of them sequencing at a time.
   */
  static openIn(
    store: LogStore,
    opts: LogOptions & { skey?: string; readOnly?: boolean; standby?: boolean } = {},
  ): Log {
    return Log.over(store, 'the store', opts, () => {
      if (opts.skey === undefined) throw new StateError('a signing key is needed to write to this log');
      return opts.skey;
    });
  }

  /** A log over `store` (described as `where` in errors), checked against its recorded identity. */
  private static over(
    store: LogStore,
    where: string,
    opts: LogOptions & { readOnly?: boolean; standby?: boolean },
    skey: () => string,
    offload?: () => SmtOffload,
  ): Log {
    const vkey = store.getMeta('vkey');
    const origin = store.getMeta('origin');
    if (vkey === undefined || origin === undefined) {
      throw new StorageError(`log store in ${where} has no origin or verifier key recorded`);
    }
    let signer: NoteSigner | undefined;
    if (!opts.readOnly) {
      signer = signerFromSkey(skey());
      if (vkey !== signer.vkey) {
        throw new StateError(
          `the signing key does not belong to this log (log key ${vkey}, given ${signer.vkey})`,
        );
      }
    }
    const head = store.read((s) => s.head());
    if (!head) throw new StorageError(`log store in ${where} has no head`);
    if (strataState(store) !== 'current') {
      throw new StorageError(
        `the sparse index of the log store in ${where} is in an older format: open the log once to write ` +
          '(for example with `trustix serve`) to convert it',
      );
    }
    return new Log(store, signer, head, opts, { origin, vkey }, offload);
  }

  /**
   * The published head: what the store's current snapshot holds. Lookups read the same, so
   * `/checkpoint` and lookup answers never go backwards relative to each other, even in the
   * moment between a commit reaching the disk and the sequencer hearing of it.
   */
  head(): LogHead {
    return this.reader.head();
  }

  /**
   * Queues entries for the next batches. Resolves once each is durable and covered by a signed
   * checkpoint. Invalid entries reject the whole call before anything is queued.
   */
  submit(entries: readonly Entry[]): Promise<SubmitReceipt[]> {
    if (this.closed) return Promise.reject(new StateError('log is closed'));
    if (!this.appender) {
      return Promise.reject(
        new NotSequencingError(
          this.standby
            ? 'this node does not sequence the log now (another node does, or none yet)'
            : 'log is open read-only: it takes no submissions',
        ),
      );
    }
    return this.appender.submit(entries);
  }

  /** Whether this log takes submissions now. */
  get sequencing(): boolean {
    return this.appender !== undefined;
  }

  /**
   * A standby starts sequencing, from the head its store holds now (which other nodes may have
   * moved on since this log was opened). The caller must hold the right to write the store.
   */
  startSequencing(): LogHead {
    if (this.closed) throw new StateError('log is closed');
    if (!this.standby || this.signer === undefined) throw new StateError('this log is not a standby');
    if (this.appender) return this.appender.head;
    const head = this.reader.read((s) => s.head());
    if (!head) throw new StorageError('the log store has no head');
    this.appender = new Appender(
      this.store,
      this.reader,
      this.signer,
      this.origin,
      head,
      this.opts,
      undefined,
    );
    if (this.publisher) this.appender.publisher = this.publisher;
    return head;
  }

  /**
   * A standby stops sequencing: submissions not in a batch yet are refused with `reason`, batches
   * under way finish (see Appender.abandon). Resolves once nothing of it is left running.
   */
  async stopSequencing(reason: unknown): Promise<void> {
    const appender = this.appender;
    if (appender === undefined || !this.standby) return;
    this.appender = undefined;
    await appender.abandon(reason);
    await appender.dispose();
  }

  get pendingCount(): number {
    return this.appender?.pending ?? 0;
  }

  /** A lookup answer for (protocol, key) against the latest checkpoint, with every proof a client needs. */
  lookup(protocol: string, key: Uint8Array): LookupAnswer {
    return this.reader.lookup(protocol, key);
  }

  /** See Reader.lookupJson. */
  lookupJson(protocol: string, key: Uint8Array): { body: string; size: number; present: boolean } {
    return this.reader.lookupJson(protocol, key);
  }

  /** See Reader.lookupJsonBytes. */
  lookupJsonBytes(
    protocol: string,
    key: Uint8Array,
    cached?: (size: number) => Buffer | undefined,
  ): { body: Buffer; size: number; present: boolean | undefined } {
    return this.reader.lookupJsonBytes(protocol, key, cached);
  }

  /** See Reader.lookupJsonBytesAsync. */
  lookupJsonBytesAsync(
    protocol: string,
    key: Uint8Array,
    cached?: (size: number) => Buffer | undefined,
  ): Promise<{ body: Buffer; size: number; present: boolean | undefined }> {
    return this.reader.lookupJsonBytesAsync(protocol, key, cached);
  }

  /** See Reader.headAsync. */
  headAsync(): Promise<LogHead> {
    return this.reader.headAsync();
  }

  /**
   * Whether the store reads asynchronously (LogStore.readAsync: a networked driver): a server then
   * answers its hot reads through the *Async methods, which share round trips.
   */
  get readsAsync(): boolean {
    return this.store.readAsync !== undefined;
  }

  /** See Reader.lookupManyJson. */
  lookupManyJson(
    protocol: string,
    keys: readonly Uint8Array[],
  ): { body: string; size: number; present: number } {
    return this.reader.lookupManyJson(protocol, keys);
  }

  /** Inclusion proof of entry `index` in the tree of `size` (default: the latest). */
  inclusionProof(index: number, size?: number): Buffer[] {
    return this.reader.inclusionProof(index, size);
  }

  consistencyProof(oldSize: number, newSize?: number): Buffer[] {
    return this.reader.consistencyProof(oldSize, newSize);
  }

  entry(index: number): Buffer {
    return this.reader.entry(index);
  }

  /** From now on, checkpoints are published through `p` (see CheckpointPublisher). */
  attachPublisher(p: CheckpointPublisher): void {
    this.publisher = p;
    this.reader.publisher = p;
    if (this.appender) this.appender.publisher = p;
  }

  /** Stops accepting submissions, sequences everything already accepted, and closes the store. */
  async close(): Promise<void> {
    this.closed = true;
    await this.appender?.close();
    if (this.storeClosed) return;
    await this.publisher?.close();
    this.storeClosed = true;
    this.reader.close();
    await this.appender?.dispose();
    await this.store.close();
  }

  /** The store, for auditing. */
  get storage(): LogStore {
    return this.store;
  }

  describe(): { origin: string; vkey: string; size: number; checkpoint: string } {
    const { size, checkpoint } = this.head();
    return { origin: this.origin, vkey: this.vkey, size, checkpoint };
  }
}

function readSigningKey(dir: string): string {
  const file = join(dir, SIGNING_KEY_FILE);
  try {
    return readSecretFile(file, 'signing key');
  } catch (err) {
    if (err instanceof InsecureSecretError) throw err;
    throw new StateError(`no signing key at ${file}; pass one explicitly`);
  }
}

/** Records a new log's identity and commits its empty, signed checkpoint. */
async function initialize(store: LogStore, origin: string, signer: NoteSigner): Promise<void> {
  await store.setMeta('origin', origin);
  await store.setMeta('vkey', signer.vkey);
  const cp = { origin, size: 0, rootHash: EMPTY_ROOT, mapRoot: SMT_EMPTY, extensions: [] };
  const head: LogHead = {
    size: 0,
    rootHash: EMPTY_ROOT,
    mapRoot: SMT_EMPTY,
    checkpoint: signCheckpoint(cp, signer),
  };
  await store.commit({ firstIndex: 0, entries: [], tiles: [], strataWrites: [], strataDeletes: [], head });
}
