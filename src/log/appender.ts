/**
 * The append side of a log, one batch at a time: pool -> batch -> plan -> build (tiles, log root,
 * sparse index) -> sign -> commit -> publish -> acknowledge (docs/architecture.md, "One batch").
 * The sequencer is the store's only writer; reads of the committed state go through the reader,
 * whose caches it moves on at each publish.
 */
import { signCheckpoint } from '../core/checkpoint.js';
import { decodeEntry, type Entry, parseIndexValue } from '../core/entry.js';
import { StateError, StorageError } from '../core/errors.js';
import { treeRoot } from '../core/merkle.js';
import type { NoteSigner } from '../core/note.js';
import { type StratumReader, smtApplyBatch } from '../core/smt.js';
import { strataAlong } from '../core/smt-strata.js';
import { appendToTiles, hashReaderFromTiles, type TileGetter } from '../core/tiles.js';
import type { LogHead, LogSnapshot, LogStore, StoredTile } from '../storage/store.js';
import { appendedEntries, type BatchPlan, PathMap, Planner, type StoredValue, valueEnds } from './plan.js';
import { acknowledge, type Batch, entryBytes, Pool, refuseAll, type SubmitReceipt } from './pool.js';
import type { CheckpointPublisher } from './publisher.js';
import type { Reader } from './reader.js';
import type { SmtOffload } from './smt-offload.js';

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
  /**
   * Called when a batch's commit failed (its submissions are refused with `err`): a sequencer over
   * a shared store then checks whether it still may write, and from what state.
   */
  onCommitError?: (err: unknown) => void;
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

/**
 * Index updates from which a batch's sparse index update runs in the worker thread. Below it the
 * round trip (packing, messages, a fresh read transaction) costs more than the overlap gains.
 */
const OFFLOAD_MIN_UPDATES = 2048;

/**
 * Strata levels whose rows a batch asks a store that fetches ahead (LogSnapshot.prefetchStrata)
 * for, along each of its paths: the levels (tops at depths 0 to 28) that hold rows up to about 4
 * billion keys.
 */
const PREFETCH_STRATA_LEVELS = 6;

/** A batch on its way to the store: see Appender.finish. */
interface Finishing {
  committed: Promise<boolean>;
  acknowledged: Promise<void>;
}

/**
 * Sequences the log's submissions in batches: append to the tree, update the index, sign one
 * checkpoint, commit durably, publish, then acknowledge. The checkpoint is signed before the
 * commit but published (served or acknowledged) only after it, and it is stored in the same
 * transaction as the tree it describes, so a crash can never leave a published checkpoint that the
 * store does not back. The next batch is appended and indexed while one is being committed (see
 * drain), never committed or acknowledged before it.
 */
export class Appender {
  /** The sequencer's own view: the last head it committed. Readers use the store's (Reader.head). */
  private sequenced: LogHead;
  private readonly pool: Pool;
  private readonly planner = new Planner();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private closed = false;
  private readonly maxBatch: number;
  private readonly batchDelayMs: number;
  private readonly onBatch: ((b: BatchInfo) => void) | undefined;
  private readonly onCommitError: ((err: unknown) => void) | undefined;

  constructor(
    private readonly store: LogStore,
    private readonly reader: Reader,
    private readonly signer: NoteSigner,
    private readonly origin: string,
    head: LogHead,
    opts: LogOptions,
    /** Runs big batches' sparse index updates on another core, when the store allows it. */
    private readonly offload: SmtOffload | undefined,
  ) {
    this.sequenced = head;
    this.maxBatch = opts.maxBatch ?? 10_000;
    this.batchDelayMs = opts.batchDelayMs ?? 20;
    this.pool = new Pool(opts.maxPending ?? 200_000);
    this.onBatch = opts.onBatch;
    this.onCommitError = opts.onCommitError;
  }

  /** The last head this sequencer committed. */
  get head(): LogHead {
    return this.sequenced;
  }

  /**
   * Queues entries for the next batches. Resolves once each is durable and covered by a signed
   * checkpoint. Invalid entries reject the whole call before anything is queued.
   */
  submit(entries: readonly Entry[]): Promise<SubmitReceipt[]> {
    const promise = this.pool.add(entries);
    this.schedule();
    return promise;
  }

  get pending(): number {
    return this.pool.pending;
  }

  private schedule(): void {
    if (this.running || this.pool.pending === 0) return;
    if (this.pool.pending >= this.maxBatch || this.closed) {
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
        while (this.pool.pending > 0 || inFlight !== undefined) {
          if (this.pool.pending === 0) {
            await inFlight!.committed;
            inFlight = undefined;
            continue;
          }
          const batch = this.pool.take(this.maxBatch);
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
        if (this.pool.pending === 0) break;
      }
    } finally {
      this.running = undefined;
      this.offload?.release();
    }
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
      if (snap.prefetchStrata) snap.prefetchStrata(strataAlong(plan.paths, PREFETCH_STRATA_LEVELS));
      const committed = this.reader.stratumReader(snap, this.sequenced.mapRoot);
      const rows = tip?.strata.writes;
      const read: StratumReader =
        rows === undefined || rows.size === 0
          ? committed
          : (id) => rows.get(id.toString('hex'))?.data ?? committed(id);
      const packed = { paths: plan.paths, values: plan.values, valueEnds: valueEnds(plan.count) };
      return smtApplyBatch(oldRoot, packed, read, onReplace);
    };
    const built = this.reader.read((snap) => {
      const committed = this.reader.tileGetter(snap);
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
        strata = this.reader.read(applyHere);
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
    let plan = this.planner.plan(batch, firstIndex, new PathMap());
    const replaced = new PathMap<Buffer>();
    let built = plan.count > 0 ? await this.build(base, plan, (path, v) => replaced.set(path, v)) : undefined;
    if (replaced.size > 0) {
      const stored = new PathMap<StoredValue>();
      this.reader.read((snap) => {
        for (const [path, v] of replaced.entries()) {
          const { logIndex } = parseIndexValue(v);
          const data = base?.entry(logIndex) ?? snap.entry(logIndex);
          if (!data) throw new StorageError(`index points at missing entry ${logIndex}`);
          stored.set(path, { index: logIndex, value: decodeEntry(data).value });
        }
      });
      const again = this.planner.plan(batch, firstIndex, stored);
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
      const published = this.publisher?.committed(head);
      await new Promise<void>((resolve) => setImmediate(resolve));
      const note = published === undefined ? head.checkpoint : await published;
      this.acknowledgeBatch(prepared, { ...head, checkpoint: note }, started);
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
          checkpoint: signCheckpoint(cp, this.signer),
        };
        await this.store.commit({
          firstIndex,
          entries: appendedEntries(batch, plan),
          tiles,
          strataWrites: rows,
          strataDeletes: strata.deletes,
          head,
        });
        this.publish(old, head, rows, strata.deletes);
        // committed: a batch built on this one reads these rows from the store from now on
        built.release?.();
      }
    } catch (err) {
      refuseAll(batch, err);
      this.onCommitError?.(err);
      return undefined;
    }
    return head;
  }

  /** Answers every submission of a committed batch with its index, `head`'s checkpoint and a proof. */
  private acknowledgeBatch(prepared: Prepared, head: LogHead, started: bigint): void {
    const { batch, plan } = prepared;
    const { indexes, duplicate, count } = plan;
    try {
      this.reader.read((snap) => {
        const proofs = this.reader.batchProofs(snap, indexes, head.size);
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
   * Makes `head`, which the store now holds, the log's: the next batches build on it and the
   * reader's caches move to it (`old` is the head it follows; `writes` and `deletes` the strata
   * rows its commit changed). Its submitters are acknowledged right after (acknowledgeBatch).
   */
  private publish(
    old: LogHead,
    head: LogHead,
    writes: Iterable<{ id: Buffer; data: Buffer }>,
    deletes: readonly Buffer[],
  ): void {
    this.sequenced = head;
    this.reader.advance(old.mapRoot, head, writes, deletes);
  }

  /** Set once by Log.attachPublisher: receipts then carry the note it publishes. */
  publisher: CheckpointPublisher | undefined;

  /** Takes no more time to fill batches: sequences everything already accepted, then returns. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    while (this.running || this.pool.pending > 0) {
      if (!this.running) this.running = this.drain();
      await this.running;
    }
  }

  /**
   * Stops sequencing without draining: every submission not taken into a batch yet is refused with
   * `reason`, batches already on their way to the store finish (committed and acknowledged, or
   * refused if their commit fails). For a sequencer that may no longer write.
   */
  async abandon(reason: unknown): Promise<void> {
    this.closed = true;
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.pool.pending > 0) refuseAll(this.pool.take(this.pool.pending), reason);
    await this.running;
    if (this.pool.pending > 0) refuseAll(this.pool.take(this.pool.pending), reason);
  }

  /** Ends the sparse index worker; after close, before the store closes. */
  async dispose(): Promise<void> {
    await this.offload?.close();
  }
}
