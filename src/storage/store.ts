/**
 * The storage contract of one log. The sequencer is the only writer; any number of readers
 * may read concurrently. A backend must guarantee:
 *  - `commit` is atomic (all of a batch or nothing survives a crash) and durable when its
 *    promise resolves (fsync'd): the log acknowledges submissions only after that;
 *  - every `read` callback sees one consistent snapshot, so a lookup's checkpoint, index
 *    strata and tiles always belong together.
 * Reads are synchronous: the embedded driver (lmdb/) serves them from a memory map far faster
 * than a promise round trip; the PostgreSQL driver (postgres/) runs each `read` as one
 * REPEATABLE READ transaction that the reading thread waits on. The sequencer is single-writer
 * either way. test/storage/conformance.ts holds every driver to this contract.
 */

/** A hash tile as stored: the C2SP tile hashes followed by its internal levels (see core/tiles.ts). */
export interface StoredTile {
  expanded: Uint8Array;
  width: number;
}

/** What a committed batch leaves behind: the state every reader starts from. */
export interface LogHead {
  size: number;
  rootHash: Buffer;
  mapRoot: Buffer;
  /** The signed checkpoint note for exactly this size and these roots. */
  checkpoint: string;
}

export interface LogSnapshot {
  head(): LogHead | undefined;
  entry(index: number): Buffer | undefined;
  tile(tileLevel: number, tileIndex: number): StoredTile | undefined;
  stratum(id: Uint8Array): Buffer | undefined;
  /**
   * The same bytes as `stratum`, possibly in a buffer that the next read of this store reuses (no
   * copy): for a caller that is done with a row before it reads anything else. Optional.
   */
  peekStratum?(id: Uint8Array): Uint8Array | undefined;
  /** `entry` in a buffer that the next read of this store may reuse, like `peekStratum`. Optional. */
  peekEntry?(index: number): Uint8Array | undefined;
  /** `tile` in a buffer that the next read of this store may reuse, like `peekStratum`. Optional. */
  peekTile?(tileLevel: number, tileIndex: number): StoredTile | undefined;
  /**
   * A hint: the strata rows this snapshot is about to be asked for (ids that have no row included).
   * A networked driver fetches them in one round trip; an embedded one has no need of it. Optional.
   */
  prefetchStrata?(ids: readonly Uint8Array[]): void;
}

/** Rows a read says it will need (see LogStore.readAsync), fetched ahead of its first run. */
export interface ReadHint {
  strata?: readonly Uint8Array[];
  entries?: readonly number[];
}

export interface CommitBatch {
  /** First index of `entries`; must equal the current size. */
  firstIndex: number;
  entries: readonly Uint8Array[];
  tiles: ReadonlyArray<{ tileLevel: number; tileIndex: number; width: number; expanded: Uint8Array }>;
  /** Rows of the sparse index; each begins with its format's version byte (never 0xfe, see smt-strata.ts). */
  strataWrites: ReadonlyArray<{ id: Uint8Array; data: Uint8Array }>;
  strataDeletes: readonly Uint8Array[];
  head: LogHead;
}

export interface LogStore {
  /** Runs `fn` against one consistent snapshot. `fn` must be synchronous. */
  read<T>(fn: (snapshot: LogSnapshot) => T): T;
  /**
   * `read` for a server's hot paths, for a driver whose reads cross a network: reads asked for
   * together share round trips, and rows are kept between them where that is correct
   * (postgres/batched-reads.ts). Each run of `fn` sees one consistent snapshot, but `fn` may be run
   * more than once, against the same or a newer snapshot (a run stops at a row that is not loaded
   * yet, by throwing an error `fn` must let through), so it may fill caches but must have no other
   * effects. Optional: without it, `read` is the fast path (lmdb/).
   */
  readAsync?<T>(fn: (snapshot: LogSnapshot) => T, hint?: ReadHint): Promise<T>;
  /** Atomically and durably applies a batch. Resolves only once it is on disk. */
  commit(batch: CommitBatch): Promise<void>;
  /** Every published checkpoint, by increasing size. */
  checkpoints(): Iterable<{ size: number; checkpoint: string }>;
  /** Entries [start, end) in order. */
  entries(start: number, end: number): Iterable<Buffer>;
  /** Small named values (log configuration such as the origin and public key). */
  getMeta(name: string): string | undefined;
  setMeta(name: string, value: string): Promise<void>;
  /**
   * Records that the signed request `id` (writer and nonce) was used, until unix second `expires`:
   * durable when the promise resolves. Records already expired at `now` may be dropped.
   */
  recordNonce(id: string, expires: number, now: number): Promise<void>;
  /** Every recorded nonce that has not expired at `now`. */
  nonces(now: number): Iterable<{ id: string; expires: number }>;
  close(): Promise<void>;
}
