import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { InsecureSecretError, readSecretFile } from '../config/secret.js';
import { equalBytes, toBase64 } from '../core/bytes.js';
import { signCheckpoint } from '../core/checkpoint.js';
import {
  decodeEntry,
  type Entry,
  encodedEntrySize,
  encodeEntryInto,
  indexPath,
  indexPathInto,
  indexValueLogIndex,
  parseIndexValue,
  writeIndexValueIndex,
} from '../core/entry.js';
import { FormatError, StateError, StorageError, TrustixError } from '../core/errors.js';
import { sha256Into } from '../core/hash.js';
import type { LookupAnswer } from '../core/lookup.js';
import {
  consistencyProof,
  EMPTY_ROOT,
  inclusionProof,
  inclusionProofAbove,
  inclusionProofBelow,
  LEAF_HASH_PREFIX,
  newRangeRootCache,
  treeRoot,
} from '../core/merkle.js';
import { generateKey, type NoteSigner, signerFromSkey } from '../core/note.js';
import {
  SMT_EMPTY,
  type StratumReader,
  type StratumTable,
  type StratumTableOf,
  smtApplyBatch,
  smtLookupBase64,
  stratumTable,
} from '../core/smt.js';
import {
  appendToTiles,
  expandedHashOffset,
  expandedTileSize,
  hashReaderFromTiles,
  TILE_HEIGHT,
  TILE_WIDTH,
  type TileGetter,
} from '../core/tiles.js';
import { fsyncPath, isTempName, tempNameFor, writeFileDurably } from '../storage/durable.js';
import { LmdbLogStore } from '../storage/lmdb.js';
import { LOCK_FILE, lockStore } from '../storage/lock.js';
import type { LogHead, LogSnapshot, LogStore, StoredTile } from '../storage/store.js';
import { SmtOffload } from './smt-offload.js';

export interface LogOptions {
  /** Most entries sequenced in one batch (one commit, one signature). */
  maxBatch?: number;
  /** How long a lone submission may wait for company before its batch is sequenced. */
  batchDelayMs?: number;
  /** Most submissions waiting to be sequenced; beyond it `submit` fails with PoolFullError. */
  maxPending?: number;
  /**
   * Full tiles kept in memory (default 4096: 64 MiB of leaf tiles, every leaf tile up to a million
   * entries). Once it is full, a lookup reads a leaf tile it misses in place from the store instead.
   */
  cachedTiles?: number;
  /** Called after each sequenced batch (for metrics). */
  onBatch?: (batch: BatchInfo) => void;
}

export interface BatchInfo {
  /** Submissions answered by this batch, duplicates included. */
  submissions: number;
  /** Entries appended to the log. */
  appended: number;
  /** Tree size after the batch. */
  size: number;
  /** From taking the batch to acknowledging it, commit included. */
  seconds: number;
}

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
interface SubmitCall {
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
interface Batch {
  calls: SubmitCall[];
  slots: Uint32Array;
}

function acknowledge(call: SubmitCall, slot: number, receipt: SubmitReceipt): void {
  call.receipts[slot] = receipt;
  if (--call.left === 0 && !call.failed) call.resolve(call.receipts);
}

function refuse(call: SubmitCall, err: unknown): void {
  if (call.failed) return;
  call.failed = true;
  call.reject(err);
}

function refuseAll(batch: Batch, err: unknown): void {
  for (const call of batch.calls) refuse(call, err);
}

/** Entry `slot` of `call`'s encoding (a view). */
function entryBytes(call: SubmitCall, slot: number): Buffer {
  return call.framed.subarray(call.starts[slot] + 1, call.starts[slot + 1]);
}

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
class PathMap<V> {
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

interface StoredValue {
  index: number;
  value: Buffer;
}

interface BatchPlan {
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

interface BatchBuild {
  newSize: number;
  tiles: ReturnType<typeof appendToTiles>;
  rootHash: Buffer;
  strata: ReturnType<typeof smtApplyBatch>;
  /** Set when the worker computed `strata` and holds it (SmtOffload.apply's `keep`). */
  offloadSeq: number | undefined;
  /** The rows to commit, when they came from the worker (see OffloadResult.rows); else strata.writes. */
  rows: (() => Array<{ id: Buffer; data: Buffer }>) | undefined;
  /** Frees the memory of `strata.writes` (emptied) once they are committed; see OffloadResult. */
  release: (() => void) | undefined;
}

/**
 * A batch planned and built but not committed yet. The next batch may be built on top of it, so
 * it answers for its uncommitted entries and tiles.
 */
class Prepared {
  private tiles: Map<string, StoredTile> | undefined;

  constructor(
    readonly batch: Batch,
    readonly firstIndex: number,
    readonly plan: BatchPlan,
    /** Undefined when the batch appends nothing. */
    readonly built: BatchBuild | undefined,
  ) {}

  get offloadSeq(): number | undefined {
    return this.built?.offloadSeq;
  }

  /** The batch's own entry `index`, or undefined for an index outside it. */
  entry(index: number): Buffer | undefined {
    const i = index - this.firstIndex;
    if (i < 0 || i >= this.plan.count) return undefined;
    const at = this.plan.appended[i];
    return entryBytes(this.batch.calls[at], this.batch.slots[at]);
  }

  /** The tiles the batch writes, by "level/index". */
  tileMap(): Map<string, StoredTile> {
    if (this.tiles === undefined) {
      this.tiles = new Map();
      for (const t of this.built?.tiles ?? []) this.tiles.set(`${t.tileLevel}/${t.tileIndex}`, t);
    }
    return this.tiles;
  }
}

const SIGNING_KEY_FILE = 'signing.key';
/**
 * Full tiles cached by default (LogOptions.cachedTiles): 16 KiB each, 64 MiB in all; every leaf tile
 * of a million entries, and every upper tile of a huge log.
 */
const CACHED_TILES = 4096;
/** Upper audit-path parts remembered for one tree size (about 0.6 KB each at a million leaves). */
const MAX_PROOF_TOPS = 65_536;
/**
 * Index updates from which a batch's sparse index update runs in the worker thread. Below it the
 * round trip (packing, messages, a fresh read transaction) costs more than the overlap gains.
 */
const OFFLOAD_MIN_UPDATES = 2048;

/**
 * Key of a tile in Log.fullTiles: a number, not a "level/index" string that every lookup would build
 * and hash (a level-0 tile's key is its index). Exact while index < 2^40 and level < 2^12.
 */
function tileKey(level: number, index: number): number {
  return level * 2 ** 40 + index;
}

/** Offsets in a leaf tile of one proof's hashes (inclusionProofB64), and a sink for touching them. */
const proofOffsets = new Int32Array(TILE_HEIGHT);
const proofTouched = { bits: 0 };

/** Lower part of an inclusion proof as base64 (Log.proofBelowB64: at most one tile's height). */
const proofBelowScratch = new Array<string>(TILE_HEIGHT).fill('');

/** The upper part of an audit path shared by the leaves of one tile (see Log.proofTops). */
interface ProofTop {
  /** Base64, leaf side first. */
  hashes: string[];
  /** The tile's first leaf and its number of leaves in the tree. */
  start: number;
  n: number;
  /** `hashes` as JSON array items, built when first asked for. */
  text: string | undefined;
}

/** Slot of a root or depth-8 stratum id in Log.topStrata. */
function topSlot(id: Uint8Array): number {
  return id[0] === 0 ? 0 : 1 + id[1];
}

/** A batch on its way to the store: see Log.finish. */
interface Finishing {
  committed: Promise<boolean>;
  acknowledged: Promise<void>;
}

/**
 * One append-only log with its sparse index. Submissions are pooled and sequenced in batches:
 * append to the tree, update the index, sign one checkpoint, commit durably, then acknowledge.
 * The checkpoint is signed before the commit but published (served or acknowledged) only after
 * it, and it is stored in the same transaction as the tree it describes, so a crash can never
 * leave a published checkpoint that the store does not back. The next batch is appended and
 * indexed while one is being committed (see drain), never committed or acknowledged before it.
 */
export class Log {
  readonly origin: string;
  readonly vkey: string;
  /** The sequencer's own view: the last head it committed. Readers use the store's (see head()). */
  private sequenced: LogHead;
  /** Calls with submissions not taken into a batch yet, from `queueHead` on. */
  private readonly queue: Array<SubmitCall | undefined> = [];
  private queueHead = 0;
  /** Submissions of queue[queueHead] already taken. */
  private queueTaken = 0;
  private pending = 0;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private closed = false;
  private storeClosed = false;
  private readonly maxBatch: number;
  private readonly batchDelayMs: number;
  private readonly maxPending: number;
  private readonly onBatch: ((b: BatchInfo) => void) | undefined;
  /** Full tiles never change, so they are cached across snapshots (bounded, oldest dropped first). */
  private readonly fullTiles = new Map<number, StoredTile>();
  private readonly cachedTiles: number;
  /**
   * The top two strata levels (at most 257 rows: slot 0 is the root stratum, slot 1 + b the
   * depth-8 stratum under first byte b) are read by every lookup and every batch. They are
   * cached for one map root only and used only by snapshots of that root, so a reader can
   * never mix strata of two states.
   */
  private readonly topStrata: Array<Buffer | undefined> = new Array(257);
  private topStrataRoot: Buffer | undefined;
  /**
   * Tables (stratumTable) of cached top rows by slot, each with the row it was built from (a slot's
   * row is replaced by commits; a table is used only with its own row), built on a lookup's first
   * use of a row.
   */
  private readonly topTables: Array<{ row: Buffer; table: StratumTable } | undefined> = new Array(257);
  /**
   * The top row a lookup's reader returned last, with its table: the walk asks for the table of the
   * row it was just given, so this answers without a search.
   */
  private lastTopRow: Buffer | undefined;
  private lastTopTable: StratumTable | undefined;
  private readonly tableOf: StratumTableOf = (row) =>
    row === this.lastTopRow ? this.lastTopTable : undefined;
  /** Ragged range roots of committed leaves (immutable), shared by all proofs. */
  private readonly rangeCache = newRangeRootCache();
  /**
   * For the tree size `proofTopsSize`: the upper part of the audit path (inclusionProofAbove,
   * base64, leaf side first) shared by all leaves of one 256-leaf tile, by tile index. Those
   * nodes are complete, so the part equals a fresh computation for as long as the size holds.
   */
  private readonly proofTops = new Map<number, ProofTop>();
  private proofTopsSize = -1;
  /** The start of answers for the last checkpoint and protocol (see answerPrefix). */
  private prefixCache: { checkpoint: string; protocol: string; text: string; bytes: Buffer } | undefined;
  /** plan's hash table of positions, kept for the next batch. */
  private planTable = new Int32Array(0);
  /** Runs big batches' sparse index updates on another core (undefined for a read-only log). */
  private readonly offload: SmtOffload | undefined;

  private constructor(
    private readonly store: LogStore,
    /** Undefined for a log opened read-only: it serves lookups and proofs but takes no submissions. */
    private readonly signer: NoteSigner | undefined,
    head: LogHead,
    opts: LogOptions,
    identity: { origin: string; vkey: string },
    dir: string,
  ) {
    this.offload = signer ? new SmtOffload(dir) : undefined;
    this.origin = identity.origin;
    this.vkey = identity.vkey;
    this.sequenced = head;
    this.maxBatch = opts.maxBatch ?? 10_000;
    this.batchDelayMs = opts.batchDelayMs ?? 20;
    this.maxPending = opts.maxPending ?? 200_000;
    this.cachedTiles = opts.cachedTiles ?? CACHED_TILES;
    this.onBatch = opts.onBatch;
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
        await store.setMeta('origin', origin);
        await store.setMeta('vkey', signer.vkey);
        const cp = { origin, size: 0, rootHash: EMPTY_ROOT, mapRoot: SMT_EMPTY, extensions: [] };
        const head: LogHead = {
          size: 0,
          rootHash: EMPTY_ROOT,
          mapRoot: SMT_EMPTY,
          checkpoint: signCheckpoint(cp, signer),
        };
        await store.commit({
          firstIndex: 0,
          entries: [],
          tiles: [],
          strataWrites: [],
          strataDeletes: [],
          head,
        });
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

  /** Opens an existing log. The signing key defaults to the one stored beside it. */
  static async open(
    dir: string,
    opts: LogOptions & { skey?: string; readOnly?: boolean } = {},
  ): Promise<Log> {
    // A reader takes no writer lock (storage/lock.ts) and writes nothing. Its LMDB environment is
    // not opened read-only: several read-only opens at once failed now and then with EINVAL.
    const store = LmdbLogStore.open(dir, { lock: !opts.readOnly });
    try {
      const vkey = store.getMeta('vkey');
      const origin = store.getMeta('origin');
      if (vkey === undefined || origin === undefined) {
        throw new StorageError(`log store in ${dir} has no origin or verifier key recorded`);
      }
      let signer: NoteSigner | undefined;
      if (!opts.readOnly) {
        signer = signerFromSkey(opts.skey ?? readSigningKey(dir));
        if (vkey !== signer.vkey) {
          throw new StateError(
            `the signing key does not belong to this log (log key ${vkey}, given ${signer.vkey})`,
          );
        }
      }
      const head = store.read((s) => s.head());
      if (!head) throw new StorageError(`log store in ${dir} has no head`);
      return new Log(store, signer, head, opts, { origin, vkey }, dir);
    } catch (err) {
      await store.close();
      throw err;
    }
  }

  /**
   * The published head: what the store's current snapshot holds. Lookups read the same, so
   * `/checkpoint` and lookup answers never go backwards relative to each other, even in the
   * moment between a commit reaching the disk and the sequencer hearing of it.
   */
  head(): LogHead {
    if (this.storeClosed) return this.sequenced;
    return this.store.read((snap) => this.snapshotHead(snap));
  }

  /** Every read goes through here, so none reaches a store that is closing. */
  private read<T>(fn: (snap: LogSnapshot) => T): T {
    if (this.storeClosed) throw new StateError('log is closed');
    return this.store.read(fn);
  }

  /**
   * A tile getter over a snapshot, memoising within one operation and caching full tiles. With
   * `leafTiles` false, full tiles of level 0 are not added to the cache: a batch's receipts read
   * each of its own leaf tiles once and no later batch reads them again, so during ingest the
   * cache filled up with tiles that only lookups could use (16 KB each, 62 MB at a million entries).
   */
  private tileGetter(snap: LogSnapshot, leafTiles = true): TileGetter {
    const memo = new Map<number, StoredTile | undefined>();
    return (level, index) => {
      const k = tileKey(level, index);
      let t = this.fullTiles.get(k);
      if (t) return t;
      if (memo.has(k)) return memo.get(k);
      t = snap.tile(level, index);
      memo.set(k, t);
      if (t && t.width === TILE_WIDTH && (leafTiles || level > 0)) {
        if (this.fullTiles.size >= this.cachedTiles)
          this.fullTiles.delete(this.fullTiles.keys().next().value!);
        this.fullTiles.set(k, t);
      }
      return t;
    };
  }

  /**
   * Strata of `snap`, whose map root is `mapRoot`, through the top strata cache when it holds that
   * root. A lookup (`adopt`) whose snapshot has another root than the cache re-keys the cache to
   * it: that is how a log that sequences nothing itself (read-only, or idle since it was opened)
   * gets a warm cache, and how a reader that saw a commit before the sequencer did moves on.
   */
  private stratumReader(snap: LogSnapshot, mapRoot: Buffer, adopt = false): StratumReader {
    if (this.topStrataRoot === undefined || !equalBytes(this.topStrataRoot, mapRoot)) {
      if (!adopt) return (id) => snap.stratum(id);
      this.topStrata.fill(undefined);
      this.topStrataRoot = Buffer.from(mapRoot);
    }
    // a lookup's walk is done with each row before it reads the next (see smtLookupBase64)
    const below = adopt && snap.peekStratum ? snap.peekStratum : snap.stratum;
    return (id) => {
      if (id[0] > 1) return below(id);
      const slot = id[0] === 0 ? 0 : 1 + id[1];
      let row = this.topStrata[slot];
      if (!row) {
        row = snap.stratum(id);
        if (!row) return undefined;
        this.topStrata[slot] = row;
      }
      if (adopt) {
        let t = this.topTables[slot];
        if (t === undefined || t.row !== row) {
          t = { row, table: stratumTable(row) };
          this.topTables[slot] = t;
        }
        this.lastTopRow = row;
        this.lastTopTable = t.table;
      }
      return row;
    };
  }

  private updateTopStrata(
    oldRoot: Buffer,
    newRoot: Buffer,
    writes: Iterable<{ id: Buffer; data: Buffer }>,
    deletes: readonly Buffer[],
  ): void {
    if (this.topStrataRoot === undefined || !equalBytes(this.topStrataRoot, oldRoot)) {
      this.topStrata.fill(undefined);
    } else {
      // copied so that a cached row does not keep its whole batch slab alive
      for (const w of writes) if (w.id[0] <= 1) this.topStrata[topSlot(w.id)] = Buffer.from(w.data);
      for (const id of deletes) if (id[0] <= 1) this.topStrata[topSlot(id)] = undefined;
    }
    this.topStrataRoot = newRoot;
  }

  /**
   * Queues entries for the next batches. Resolves once each is durable and covered by a signed
   * checkpoint. Invalid entries reject the whole call before anything is queued.
   */
  submit(entries: readonly Entry[]): Promise<SubmitReceipt[]> {
    if (this.closed) return Promise.reject(new StateError('log is closed'));
    if (!this.signer) return Promise.reject(new StateError('log is open read-only: it takes no submissions'));
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
    if (this.pending + n > this.maxPending) {
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
    this.pending += n;
    this.schedule();
    return promise;
  }

  get pendingCount(): number {
    return this.pending;
  }

  /** Takes the next `max` submissions (or all there are) off the queue. */
  private take(max: number): Batch {
    const n = Math.min(max, this.pending);
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
    this.pending -= n;
    // many one-entry calls would make shifting one at a time quadratic
    if (this.queueHead === this.queue.length || this.queueHead >= 1024) {
      this.queue.splice(0, this.queueHead);
      this.queueHead = 0;
    }
    return { calls, slots };
  }

  private schedule(): void {
    if (this.running || this.pending === 0) return;
    if (this.pending >= this.maxBatch || this.closed) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      this.running = this.drain();
    } else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.running = this.drain();
      }, this.batchDelayMs);
    }
  }

  /**
   * Sequences batches in a two-stage pipeline: while batch k is signed, committed (fsync) and
   * acknowledged, batch k+1 is planned and built on top of k's uncommitted result (its entries,
   * tiles and index rows, see Prepared). Commits and acknowledgements stay in order, one at a
   * time, but k's receipts are built while k+1 is being committed (see finish). If k's commit fails, k+1 is built again from the committed state before it is committed,
   * so nothing built on a failed batch ever reaches the store or a submitter.
   */
  private async drain(): Promise<void> {
    let inFlight: ({ prepared: Prepared } & Finishing) | undefined;
    // acknowledgements run in commit order (each waits for its commit, then for one turn of the
    // event loop); the drain ends only after the last one, so close() never races them
    let acknowledged: Promise<void> = Promise.resolve();
    try {
      for (;;) {
        while (this.pending > 0 || inFlight !== undefined) {
          if (this.pending === 0) {
            await inFlight!.committed;
            inFlight = undefined;
            continue;
          }
          const batch = this.take(this.maxBatch);
          const started = process.hrtime.bigint();
          let prepared: Prepared | undefined;
          let error: unknown;
          try {
            prepared = await this.prepare(batch, inFlight?.prepared);
          } catch (err) {
            error = err;
          }
          // the previous batch is settled before this one commits
          if (inFlight !== undefined) {
            const ok = await inFlight.committed;
            const base = inFlight.prepared;
            inFlight = undefined;
            // built on a batch that never reached the store: build it again on what did
            if (!ok && base.built !== undefined) {
              prepared = undefined;
              try {
                prepared = await this.prepare(batch, undefined);
              } catch (err) {
                error = err;
              }
            }
          }
          if (prepared === undefined) {
            refuseAll(batch, error);
            continue;
          }
          const finishing = this.finish(prepared, started);
          acknowledged = finishing.acknowledged;
          inFlight = { prepared, ...finishing };
        }
        // submissions that arrive meanwhile are this drain's to take (schedule() sees it running)
        await acknowledged;
        if (this.pending === 0) break;
      }
    } finally {
      this.running = undefined;
      this.offload?.release();
    }
  }

  /**
   * Decides which submissions append and which are answered by an existing entry, and assigns
   * indexes. `stored` holds what the index says for keys of this batch that it already has; keys
   * missing from it are taken to be new.
   */
  private plan(batch: Batch, firstIndex: number, stored: PathMap<StoredValue>): BatchPlan {
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

  /**
   * New tiles, log root and index rows for a plan, on top of `base` (the state after a batch that
   * is not committed yet) or of the committed state. A big batch's index update runs in the
   * worker while this thread builds the tiles; if the worker cannot do it, it runs here.
   */
  private async build(
    base: Prepared | undefined,
    plan: BatchPlan,
    onReplace?: (path: Buffer, oldValue: Buffer) => void,
  ): Promise<BatchBuild> {
    const tip = base?.built;
    const oldSize = tip?.newSize ?? this.sequenced.size;
    const oldRoot = tip?.strata.root ?? this.sequenced.mapRoot;
    const newSize = oldSize + plan.count;
    // the worker can build on an uncommitted result only if it holds that result itself
    const keep = base?.offloadSeq !== undefined ? [base.offloadSeq] : [];
    const offloaded =
      this.offload !== undefined &&
      plan.count >= OFFLOAD_MIN_UPDATES &&
      (tip === undefined || base?.offloadSeq !== undefined)
        ? this.offload.applyPacked(oldRoot, plan.paths, plan.values, valueEnds(plan.count), keep)
        : undefined;
    const applyHere = (snap: LogSnapshot) => {
      const committed = this.stratumReader(snap, this.sequenced.mapRoot);
      const rows = tip?.strata.writes;
      const read: StratumReader =
        rows === undefined || rows.size === 0
          ? committed
          : (id) => rows.get(id.toString('hex'))?.data ?? committed(id);
      const packed = { paths: plan.paths, values: plan.values, valueEnds: valueEnds(plan.count) };
      return smtApplyBatch(oldRoot, packed, read, onReplace);
    };
    const built = this.read((snap) => {
      const committed = this.tileGetter(snap);
      const baseTiles = base?.tileMap();
      const getTile: TileGetter =
        baseTiles === undefined ? committed : (l, n) => baseTiles.get(`${l}/${n}`) ?? committed(l, n);
      const tiles = appendToTiles(oldSize, plan.leaves, getTile);
      const overlay = new Map<string, StoredTile>();
      for (const t of tiles) overlay.set(`${t.tileLevel}/${t.tileIndex}`, t);
      const rootHash = treeRoot(
        newSize,
        hashReaderFromTiles((l, n) => overlay.get(`${l}/${n}`) ?? getTile(l, n)),
      );
      return { tiles, rootHash, strata: offloaded === undefined ? applyHere(snap) : undefined };
    });
    let strata = built.strata;
    let offloadSeq: number | undefined;
    let release: (() => void) | undefined;
    let rows: (() => Array<{ id: Buffer; data: Buffer }>) | undefined;
    if (strata === undefined) {
      const r = await offloaded;
      if (r !== undefined) {
        if (onReplace) for (const x of r.replaced) onReplace(x.path, x.value);
        strata = r.strata;
        offloadSeq = r.seq;
        release = r.release;
        rows = r.rows;
      } else {
        strata = this.read(applyHere);
      }
    }
    return { newSize, tiles: built.tiles, rootHash: built.rootHash, strata, offloadSeq, rows, release };
  }

  /**
   * Plans and builds a batch on top of `base` (a batch being committed, or undefined for the
   * committed state): everything but signing, committing and acknowledging.
   */
  private async prepare(batch: Batch, base: Prepared | undefined): Promise<Prepared> {
    // a base that appends nothing leaves the committed state as it is
    if (base?.built === undefined) base = undefined;
    const firstIndex = base?.built?.newSize ?? this.sequenced.size;
    // First plan as if every key were new, which spares a walk of the index per submission: the
    // index update itself reports the stored value of every key it replaces. Only when one of
    // those is a resubmission of the same value is the batch planned and built a second time.
    let plan = this.plan(batch, firstIndex, new PathMap());
    const replaced = new PathMap<Buffer>();
    let built = plan.count > 0 ? await this.build(base, plan, (path, v) => replaced.set(path, v)) : undefined;
    if (replaced.size > 0) {
      const stored = new PathMap<StoredValue>();
      this.read((snap) => {
        for (const [path, v] of replaced.entries()) {
          const { logIndex } = parseIndexValue(v);
          const data = base?.entry(logIndex) ?? snap.entry(logIndex);
          if (!data) throw new StorageError(`index points at missing entry ${logIndex}`);
          stored.set(path, { index: logIndex, value: decodeEntry(data).value });
        }
      });
      const again = this.plan(batch, firstIndex, stored);
      // knowing more can only turn appends into duplicates, so an equal count means an equal plan
      if (again.count !== plan.count) {
        plan = again;
        built = plan.count > 0 ? await this.build(base, plan) : undefined;
      }
    }
    return new Prepared(batch, firstIndex, plan, built);
  }

  /**
   * Signs, commits and acknowledges a prepared batch (whose base is committed by now). `committed`
   * resolves to whether the batch reached the store, as soon as it did; the submitters are
   * acknowledged a turn of the event loop later (`acknowledged`), so that the next batch's commit
   * is already on its way while this thread builds the receipts (at a million entries a commit
   * takes about 200 ms and the receipts of 10k submissions about 50 ms). Neither rejects:
   * failures reject the submissions.
   */
  private finish(prepared: Prepared, started: bigint): Finishing {
    const committed = this.commitPrepared(prepared);
    const acknowledged = committed.then(async (head) => {
      if (head === undefined) return;
      await new Promise<void>((resolve) => setImmediate(resolve));
      this.acknowledgeBatch(prepared, head, started);
    });
    return { committed: committed.then((head) => head !== undefined), acknowledged };
  }

  /** Signs and commits a prepared batch and publishes its head; undefined if it did not reach the store. */
  private async commitPrepared(prepared: Prepared): Promise<LogHead | undefined> {
    const { batch, firstIndex, plan, built } = prepared;
    const { count } = plan;
    const old = this.sequenced;
    let head = old;
    try {
      if (built) {
        if (built.newSize - count !== old.size) {
          throw new StateError(`batch built at size ${built.newSize - count}, log is at ${old.size}`);
        }
        const { newSize, tiles, rootHash, strata } = built;
        const rows = built.rows?.() ?? [...strata.writes.values()];
        const cp = { origin: this.origin, size: newSize, rootHash, mapRoot: strata.root, extensions: [] };
        head = {
          size: newSize,
          rootHash,
          mapRoot: strata.root,
          checkpoint: signCheckpoint(cp, this.signer!),
        };
        await this.store.commit({
          firstIndex,
          entries: appendedEntries(batch, plan),
          tiles,
          strataWrites: rows,
          strataDeletes: strata.deletes,
          head,
        });
        this.sequenced = head;
        this.updateTopStrata(old.mapRoot, strata.root, rows, strata.deletes);
        // committed: a batch built on this one reads these rows from the store from now on
        built.release?.();
      }
    } catch (err) {
      refuseAll(batch, err);
      return undefined;
    }
    return head;
  }

  /** Answers every submission of a committed batch with its index, `head`'s checkpoint and a proof. */
  private acknowledgeBatch(prepared: Prepared, head: LogHead, started: bigint): void {
    const { batch, plan } = prepared;
    const { indexes, duplicate, count } = plan;
    try {
      this.read((snap) => {
        const proofs = this.batchProofs(snap, indexes, head.size);
        const { calls, slots } = batch;
        for (let i = 0; i < calls.length; i++) {
          acknowledge(calls[i], slots[i], {
            index: indexes[i],
            duplicate: duplicate[i] === 1,
            checkpoint: head.checkpoint,
            proof: proofs[i],
          });
        }
      });
      this.onBatch?.({
        submissions: batch.calls.length,
        appended: count,
        size: head.size,
        seconds: Number(process.hrtime.bigint() - started) / 1e9,
      });
    } catch (err) {
      refuseAll(batch, err);
    }
  }

  /**
   * inclusionProof(index, size) for every index of a batch. Leaves of one 256-leaf tile share the
   * part of their path above the tile, so it is computed once per tile (the slices are shared
   * between receipts, like the tile views a proof is made of); inside a full tile the rest is one
   * stored hash per row.
   */
  private batchProofs(snap: LogSnapshot, indexes: ArrayLike<number>, size: number): Buffer[][] {
    const getTile = this.tileGetter(snap, false);
    const reader = hashReaderFromTiles(getTile);
    // `views`: one view per hash of a full tile, shared by the proofs of its leaves (a node's
    // sibling at row r is in the proofs of 2^r leaves), indexed by the hash's position in the tile
    const tops = new Map<
      number,
      { hashes: Buffer[]; start: number; n: number; tile?: Buffer; views?: Array<Buffer | undefined> }
    >();
    const out = new Array<Buffer[]>(indexes.length);
    for (let i = 0; i < indexes.length; i++) {
      const index = indexes[i];
      const tileIndex = Math.floor(index / TILE_WIDTH);
      let top = tops.get(tileIndex);
      if (top === undefined) {
        const above = inclusionProofAbove(index, size, TILE_WIDTH, reader, this.rangeCache);
        top = { hashes: above.hashes.reverse(), start: above.start, n: above.n };
        if (top.n === TILE_WIDTH) {
          const t = getTile(0, tileIndex);
          if (
            t !== undefined &&
            t.width === TILE_WIDTH &&
            t.expanded.length === expandedTileSize(TILE_WIDTH)
          ) {
            top.tile = Buffer.isBuffer(t.expanded)
              ? t.expanded
              : Buffer.from(t.expanded.buffer, t.expanded.byteOffset, t.expanded.byteLength);
            top.views = new Array<Buffer | undefined>(top.tile.length / 32);
          }
        }
        tops.set(tileIndex, top);
      }
      const ex = top.tile;
      const views = top.views;
      if (ex !== undefined && views !== undefined) {
        const proof = new Array<Buffer>(TILE_HEIGHT + top.hashes.length);
        const local = index - top.start;
        for (let r = 0; r < TILE_HEIGHT; r++) {
          const off = expandedHashOffset(TILE_WIDTH, r, (local >> r) ^ 1);
          let v = views[off >> 5];
          if (v === undefined) {
            v = ex.subarray(off, off + 32);
            views[off >> 5] = v;
          }
          proof[r] = v;
        }
        for (let j = 0; j < top.hashes.length; j++) proof[TILE_HEIGHT + j] = top.hashes[j];
        out[i] = proof;
      } else {
        const below = inclusionProofBelow(index, top.start, top.n, reader, this.rangeCache);
        for (let j = 0; j < top.hashes.length; j++) below.push(top.hashes[j]);
        out[i] = below;
      }
    }
    return out;
  }

  /** A lookup answer for (protocol, key) against the latest checkpoint, with every proof a client needs. */
  lookup(protocol: string, key: Uint8Array): LookupAnswer {
    const path = indexPath(protocol, key);
    return this.read((snap) => {
      const head = this.snapshotHead(snap);
      const found = this.lookupIn(snap, head, path);
      const answer: LookupAnswer = {
        checkpoint: head.checkpoint,
        protocol,
        key: toBase64(key),
        mapProof: found.mapProof,
      };
      if (found.data !== undefined) {
        answer.entry = {
          index: found.index,
          data: found.data,
          proof: this.inclusionProofB64(snap, found.index, head.size),
        };
      }
      return answer;
    });
  }

  /**
   * The same answer as `lookup`, as its JSON text (byte for byte JSON.stringify(lookup(...))), with the
   * tree size of the checkpoint it carries and whether the key is present. Built as text, since a
   * server sends nothing else.
   */
  lookupJson(protocol: string, key: Uint8Array): { body: string; size: number; present: boolean } {
    const path = indexPath(protocol, key);
    return this.read((snap) => {
      const head = this.snapshotHead(snap);
      const { rest, present } = this.answerRest(snap, head, key, path);
      return { body: this.answerPrefix(head, protocol).text + rest, size: head.size, present };
    });
  }

  /**
   * `lookupJson`'s body as UTF-8 bytes, what a server writes. The checkpoint note's signature lines
   * start with an em dash, so the text form is a two-byte string that every write would have to
   * measure and encode again; here only the part after the key's opening quote, which is ASCII
   * (base64 and digits), is copied after the cached bytes of the part before it. `cached` is asked
   * for an answer it already holds for the tree size of this read's snapshot before one is built;
   * an answer it gives comes back with `present` undefined.
   */
  lookupJsonBytes(
    protocol: string,
    key: Uint8Array,
    cached?: (size: number) => Buffer | undefined,
  ): { body: Buffer; size: number; present: boolean | undefined } {
    return this.read((snap) => {
      const head = this.snapshotHead(snap);
      const hit = cached?.(head.size);
      if (hit !== undefined) return { body: hit, size: head.size, present: undefined };
      const { rest, present } = this.answerRest(snap, head, key, indexPath(protocol, key));
      const prefix = this.answerPrefix(head, protocol).bytes;
      const body = Buffer.allocUnsafe(prefix.length + rest.length);
      prefix.copy(body, 0);
      body.write(rest, prefix.length, 'latin1');
      return { body, size: head.size, present };
    });
  }

  /**
   * Answers for several keys of one protocol, all against the same checkpoint (one read
   * snapshot), as the JSON text `{"answers":[...]}` with each answer exactly as `lookupJson` gives it.
   */
  lookupManyJson(
    protocol: string,
    keys: readonly Uint8Array[],
  ): { body: string; size: number; present: number } {
    const paths = keys.map((k) => indexPath(protocol, k));
    return this.read((snap) => {
      const head = this.snapshotHead(snap);
      const prefix = this.answerPrefix(head, protocol).text;
      let body = '{"answers":[';
      let present = 0;
      for (let i = 0; i < keys.length; i++) {
        const a = this.answerRest(snap, head, keys[i], paths[i]);
        if (a.present) present++;
        body += i === 0 ? prefix + a.rest : `,${prefix}${a.rest}`;
      }
      return { body: `${body}]}`, size: head.size, present };
    });
  }

  /**
   * The start of every answer for `protocol` against `head`, up to the key's opening quote, as text
   * and as UTF-8 bytes; remembered for the last checkpoint and protocol asked for.
   */
  private answerPrefix(head: LogHead, protocol: string): { text: string; bytes: Buffer } {
    const p = this.prefixCache;
    if (p !== undefined && p.checkpoint === head.checkpoint && p.protocol === protocol) return p;
    const text = `{"checkpoint":${JSON.stringify(head.checkpoint)},"protocol":${JSON.stringify(protocol)},"key":"`;
    this.prefixCache = { checkpoint: head.checkpoint, protocol, text, bytes: Buffer.from(text, 'utf8') };
    return this.prefixCache;
  }

  /** One lookup answer's JSON text after the key's opening quote (see answerPrefix): ASCII only. */
  private answerRest(
    snap: LogSnapshot,
    head: LogHead,
    key: Uint8Array,
    path: Buffer,
  ): { rest: string; present: boolean } {
    const found = this.lookupIn(snap, head, path);
    let rest = `${toBase64(key)}","mapProof":"${found.mapProof}"`;
    if (found.data !== undefined) {
      rest += `,"entry":{"index":${found.index},"data":"${found.data}","proof":[`;
      rest += `${this.inclusionProofText(snap, found.index, head.size)}]}`;
    }
    return { rest: `${rest}}`, present: found.data !== undefined };
  }

  /**
   * The sparse proof for `path` against `head` in base64, and for a present key the entry's index and
   * its data in base64 (data undefined for an absent key), read from `snap`.
   */
  private lookupIn(
    snap: LogSnapshot,
    head: LogHead,
    path: Buffer,
  ): { mapProof: string; index: number; data: string | undefined } {
    const { value, proof: mapProof } = smtLookupBase64(
      head.mapRoot,
      path,
      this.stratumReader(snap, head.mapRoot, true),
      this.tableOf,
    );
    if (!value) return { mapProof, index: -1, data: undefined };
    const index = indexValueLogIndex(value);
    // encoded before anything else is read: `peekEntry` may hand out a buffer the next read reuses
    const data = snap.peekEntry ? snap.peekEntry(index) : snap.entry(index);
    if (!data) throw new StorageError(`index points at missing entry ${index}`);
    return { mapProof, index, data: toBase64(data) };
  }

  /** The part of index's audit path above its 256-leaf tile for `size`, remembered (proofTops). */
  private proofTop(snap: LogSnapshot, index: number, size: number): ProofTop {
    if (this.proofTopsSize !== size || this.proofTops.size >= MAX_PROOF_TOPS) {
      this.proofTops.clear();
      this.proofTopsSize = size;
    }
    const tile = Math.floor(index / TILE_WIDTH);
    let top = this.proofTops.get(tile);
    if (top === undefined) {
      const reader = hashReaderFromTiles(this.tileGetter(snap));
      const above = inclusionProofAbove(index, size, TILE_WIDTH, reader, this.rangeCache);
      const hashes = new Array<string>(above.hashes.length);
      for (let i = 0; i < hashes.length; i++) hashes[i] = toBase64(above.hashes[hashes.length - 1 - i]);
      top = { hashes, start: above.start, n: above.n, text: undefined };
      this.proofTops.set(tile, top);
    }
    return top;
  }

  /**
   * The part of index's audit path inside its tile (below `top`), in base64, written to `out` from
   * its start; returns how many hashes.
   */
  private proofBelowB64(snap: LogSnapshot, index: number, top: ProofTop, out: string[]): number {
    const tile = Math.floor(index / TILE_WIDTH);
    // Inside a full tile the audit path is one stored hash per row, encoded straight from the tile
    // (usually from the cache of full tiles, without a getter for this one lookup). Once the cache
    // is full, a missed tile is read in place (peekTile) and not cached: copying its 16 KiB and
    // dropping another tile made a lookup that missed cost about half as much again as one that
    // hit, where reading in place costs about what a hit does, and a random key's tile is as
    // likely in the cache either way (docs/performance.md, "Growth").
    if (top.n === TILE_WIDTH) {
      const t =
        this.fullTiles.get(tileKey(0, tile)) ??
        (this.fullTiles.size >= this.cachedTiles && snap.peekTile
          ? snap.peekTile(0, tile)
          : this.tileGetter(snap)(0, tile));
      if (t !== undefined && t.width === TILE_WIDTH && t.expanded.length === expandedTileSize(TILE_WIDTH)) {
        const ex = Buffer.isBuffer(t.expanded)
          ? t.expanded
          : Buffer.from(t.expanded.buffer, t.expanded.byteOffset, t.expanded.byteLength);
        const local = index - top.start;
        // The 8 hashes lie in 8 different places of a 16 KB tile, seldom in the CPU's caches (the
        // cached tiles are 64 MB at a million leaves). Touching them all first lets their cache
        // misses overlap instead of each waiting inside its own base64 call.
        let touched = 0;
        for (let r = 0; r < TILE_HEIGHT; r++) {
          const off = expandedHashOffset(TILE_WIDTH, r, (local >> r) ^ 1);
          proofOffsets[r] = off;
          touched |= ex[off] | ex[off + 31];
        }
        proofTouched.bits = touched;
        for (let r = 0; r < TILE_HEIGHT; r++) {
          const off = proofOffsets[r];
          out[r] = ex.toString('base64', off, off + 32);
        }
        return TILE_HEIGHT;
      }
    }
    const reader = hashReaderFromTiles(this.tileGetter(snap));
    const below = inclusionProofBelow(index, top.start, top.n, reader, this.rangeCache);
    for (let i = 0; i < below.length; i++) out[i] = toBase64(below[i]);
    return below.length;
  }

  /** inclusionProof(index, size) in base64. */
  private inclusionProofB64(snap: LogSnapshot, index: number, size: number): string[] {
    const top = this.proofTop(snap, index, size);
    const n = this.proofBelowB64(snap, index, top, proofBelowScratch);
    const out = new Array<string>(n + top.hashes.length);
    for (let i = 0; i < n; i++) out[i] = proofBelowScratch[i];
    for (let i = 0; i < top.hashes.length; i++) out[n + i] = top.hashes[i];
    return out;
  }

  /**
   * inclusionProof(index, size) in base64 as the items of a JSON array (`"h0","h1",...`), the upper
   * part's text remembered with it (one string instead of a dozen joined per answer).
   */
  private inclusionProofText(snap: LogSnapshot, index: number, size: number): string {
    const top = this.proofTop(snap, index, size);
    top.text ??= top.hashes.length === 0 ? '' : `"${top.hashes.join('","')}"`;
    const n = this.proofBelowB64(snap, index, top, proofBelowScratch);
    let text = '';
    for (let i = 0; i < n; i++) text += i === 0 ? `"${proofBelowScratch[i]}"` : `,"${proofBelowScratch[i]}"`;
    if (top.text === '') return text;
    return n === 0 ? top.text : `${text},${top.text}`;
  }

  /** Inclusion proof of entry `index` in the tree of `size` (default: the latest). */
  inclusionProof(index: number, size?: number): Buffer[] {
    const current = this.head().size;
    size ??= current;
    checkRange(index, size, current, 'index');
    return this.read((snap) =>
      inclusionProof(index, size, hashReaderFromTiles(this.tileGetter(snap)), this.rangeCache),
    );
  }

  consistencyProof(oldSize: number, newSize?: number): Buffer[] {
    const current = this.head().size;
    newSize ??= current;
    if (!Number.isSafeInteger(oldSize) || oldSize < 1 || oldSize > newSize || newSize > current) {
      throw new FormatError(`need 1 <= old size <= new size <= ${current}`);
    }
    return this.read((snap) =>
      consistencyProof(oldSize, newSize, hashReaderFromTiles(this.tileGetter(snap)), this.rangeCache),
    );
  }

  entry(index: number): Buffer {
    const current = this.head().size;
    checkRange(index, current, current, 'index');
    const e = this.read((snap) => snap.entry(index));
    if (!e) throw new StorageError(`entry ${index} is missing from the store`);
    return e;
  }

  /** Reads the head from the snapshot itself so proofs and checkpoint always match, even across processes. */
  private snapshotHead(snap: LogSnapshot): LogHead {
    const h = snap.head();
    if (!h) throw new StorageError('log store has no head');
    return h;
  }

  /** Stops accepting submissions, sequences everything already accepted, and closes the store. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    while (this.running || this.pending > 0) {
      if (!this.running) this.running = this.drain();
      await this.running;
    }
    if (this.storeClosed) return;
    this.storeClosed = true;
    await this.offload?.close();
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

/** The values' ends for SmtOffload.applyPacked: every index value is 40 bytes. */
function valueEnds(n: number): Uint32Array {
  const ends = new Uint32Array(n);
  for (let i = 0; i < n; i++) ends[i] = 40 * (i + 1);
  return ends;
}

/** The encodings of a plan's appended entries, in log order (views, made for the commit). */
function appendedEntries(batch: Batch, plan: BatchPlan): Buffer[] {
  const out = new Array<Buffer>(plan.count);
  for (let i = 0; i < plan.count; i++) {
    const at = plan.appended[i];
    out[i] = entryBytes(batch.calls[at], batch.slots[at]);
  }
  return out;
}

/** Placeholder until a submission's promise exists (set before the submission is queued). */
function unsettled(): void {}

function readSigningKey(dir: string): string {
  const file = join(dir, SIGNING_KEY_FILE);
  try {
    return readSecretFile(file, 'signing key');
  } catch (err) {
    if (err instanceof InsecureSecretError) throw err;
    throw new StateError(`no signing key at ${file}; pass one explicitly`);
  }
}

function checkRange(index: number, size: number, current: number, what: string): void {
  if (!Number.isSafeInteger(size) || size < 1 || size > current) {
    throw new FormatError(`tree size must be between 1 and ${current}`);
  }
  if (!Number.isSafeInteger(index) || index < 0 || index >= size) {
    throw new FormatError(`${what} must be between 0 and ${size - 1}`);
  }
}
