/**
 * One log's copy in an auditing mirror (docs/mirror.md): a LogStore in the node's own layout
 * (entries, expanded tiles, sparse index strata, head), so the node's read side (a read-only Log
 * and the HTTP app) serves it unchanged. The follower (dashboard/follow.ts) verifies each chunk of
 * entries against the origin's signed tree; the copy gathers verified chunks, replays them into its
 * own sparse index (one batched update per commit, core/smt) and commits entries, tiles, strata and
 * head in one durable transaction, so a restart resumes after the last chunk committed.
 *
 * Heads: a chunk that reaches the size of the latest verified checkpoint is checked against that
 * checkpoint's `map` line; when the roots agree, the head carries the origin's checkpoint with the
 * mirror's cosignature added, and the copy is served. A chunk short of it (a catch-up longer than
 * one chunk) is committed with an empty checkpoint: the copy is not served until the next audited
 * head, since its index no longer matches the last one. A map root that differs is never committed:
 * the copy writes a misbehaviour proof and stops at the last audited head.
 */
import { mkdirSync } from 'node:fs';
import { equalBytes, toBase64 } from '../core/bytes.js';
import { type Checkpoint, openCheckpoint } from '../core/checkpoint.js';
import { indexPathOfEncodedInto, writeIndexValueIndex } from '../core/entry.js';
import { StateError, StorageError, VerificationError } from '../core/errors.js';
import { EMPTY_ROOT } from '../core/merkle.js';
import {
  type Cosigner,
  formatSignatureLine,
  type NoteVerifier,
  parseNote,
  verifierFromVkey,
} from '../core/note.js';
import { SMT_EMPTY } from '../core/smt.js';
import { LevelRowCopies, smtApplyBatchRows } from '../core/smt-batch.js';
import { stratumLevel } from '../core/smt-strata.js';
import { TILE_WIDTH } from '../core/tiles.js';
import type { FollowStore, VerifiedChunk } from '../dashboard/follow.js';
import type { FrontierTile, IndexedEntry, LogRecord } from '../dashboard/store.js';
import { Log } from '../log/log.js';
import { convertStrata } from '../log/strata-format.js';
import { LmdbLogStore } from '../storage/lmdb/lmdb.js';
import type { LogHead } from '../storage/store.js';

/** Bytes of a sparse index value: the entry's u64 index and its leaf hash (core/entry.ts). */
const INDEX_VALUE_BYTES = 40;

/** Store meta: the latest checkpoint of the origin that the follower verified (the trust reference). */
const PENDING_META = 'mirror:pending';

/** What a copy reports after each commit (for progress lines and the server). */
export interface CopyProgress {
  /** Entries verified and replayed. */
  size: number;
  /** Of those, committed (a restart resumes from here). */
  committed: number;
  /** Size of the latest verified checkpoint. */
  target: number;
  /** True when `size` is an audited checkpoint's. */
  audited: boolean;
  /** True when the copy is served: its committed head is an audited checkpoint. */
  serving: boolean;
}

/**
 * Chunks verified on top of the committed head, not committed yet: their entries, the tiles they
 * wrote, and their index updates (path, value), packed per chunk. The index is updated once for
 * all of them, when they are committed: a batch of 131,072 entries at a million rewrites each
 * touched stratum row once, where sixteen chunks of 8,192 rewrote most of them sixteen times.
 */
interface Overlay {
  size: number;
  count: number;
  entries: Uint8Array[];
  tiles: Map<string, VerifiedChunk['tiles'][number]>;
  paths: Buffer[];
  values: Buffer[];
}

/** Thrown (and left in the follower's status) when a checkpoint's map line is not the index of its entries. */
export class MapMismatchError extends VerificationError {
  constructor(
    message: string,
    readonly proofFile: string | undefined,
  ) {
    super('mirror.map-mismatch', message);
  }
}

/** Writes the proof of a map mismatch (core/misbehaviour.ts); returns the file written. */
export type ProofWriter = (args: {
  vkey: string;
  note: string;
  entries: () => Iterable<Uint8Array>;
}) => string;

export class LogCopy {
  readonly verifier: NoteVerifier;
  private head: LogHead;
  private pending: string | undefined;
  private pendingCp: Checkpoint | undefined;
  private seenAt: number | undefined;
  /** Set once a map mismatch was found: nothing more is committed. */
  failed: MapMismatchError | undefined;
  /**
   * Chunks verified and replayed but not committed, while the audited head stays served (see
   * append); dropped on any failure.
   */
  private overlay: Overlay | undefined;
  /** Set by stop(): the next chunk ends the round, so a shutdown does not wait for a whole catch-up. */
  private closing = false;
  /** A catch-up chunk's commit, running while the next chunk is fetched. */
  private committing: Promise<void> | undefined;
  /** Buffers for the stratum rows the replay reads (see LevelRowCopies). */
  private readonly levelRows = new LevelRowCopies();
  /** Most entries held uncommitted before a catch-up commits (and stops serving until audited). */
  maxUncommitted = 262_144;
  /** While catching up (nothing served), entries per commit. */
  commitEntries = 131_072;

  private constructor(
    readonly id: string,
    readonly dir: string,
    readonly vkey: string,
    private readonly store: LmdbLogStore,
    /** The node's read side over this store (lookups, proofs, tiles). */
    readonly served: Log,
    private readonly cosigner: Cosigner,
    private readonly writeProof: ProofWriter,
    private readonly onProgress: (p: CopyProgress) => void,
  ) {
    this.verifier = verifierFromVkey(vkey);
    this.head = store.read((s) => s.head())!;
    this.pending = store.getMeta(PENDING_META);
    this.pendingCp =
      this.pending === undefined ? undefined : openCheckpoint(this.pending, this.verifier).checkpoint;
  }

  /**
   * Opens the copy in `dir` (its writer lock held until close), creating it on first use. Creation
   * is idempotent: an interrupted one is completed by the next open.
   */
  static async open(opts: {
    id: string;
    dir: string;
    vkey: string;
    cosigner: Cosigner;
    writeProof: ProofWriter;
    /** While catching up, entries per commit (default 131,072). */
    commitEntries?: number;
    onProgress?: (p: CopyProgress) => void;
    /** Told, a line at a time, how the conversion of a copy kept in an older format goes. */
    say?: (line: string) => void;
  }): Promise<LogCopy> {
    mkdirSync(opts.dir, { recursive: true });
    const verifier = verifierFromVkey(opts.vkey);
    const store = LmdbLogStore.open(opts.dir, { create: true });
    let served: Log | undefined;
    try {
      const vkey = store.getMeta('vkey');
      if (vkey !== undefined && vkey !== verifier.vkey) {
        throw new StorageError(`${opts.dir} holds a copy of the log with key ${vkey}, not ${verifier.vkey}`);
      }
      if (store.getMeta('origin') === undefined) await store.setMeta('origin', verifier.name);
      if (vkey === undefined) await store.setMeta('vkey', verifier.vkey);
      if (store.read((s) => s.head()) === undefined) {
        await store.commit({
          firstIndex: 0,
          entries: [],
          tiles: [],
          strataWrites: [],
          strataDeletes: [],
          head: { size: 0, rootHash: EMPTY_ROOT, mapRoot: SMT_EMPTY, checkpoint: '' },
        });
      }
      // a copy written by an older version keeps its sparse index in format 1 (src/log/strata-format.ts)
      await convertStrata(store, opts.say ?? (() => {}));
      served = await Log.open(opts.dir, { readOnly: true });
      const copy = new LogCopy(
        opts.id,
        opts.dir,
        verifier.vkey,
        store,
        served,
        opts.cosigner,
        opts.writeProof,
        opts.onProgress ?? (() => {}),
      );
      if (opts.commitEntries !== undefined) copy.commitEntries = opts.commitEntries;
      return copy;
    } catch (err) {
      await served?.close();
      await store.close();
      throw err;
    }
  }

  /** Whether the committed head is an audited checkpoint (else the copy is catching up). */
  get audited(): boolean {
    return this.head.checkpoint !== '';
  }

  get progress(): CopyProgress {
    const audited = this.audited;
    const size = this.head.size;
    return { size, committed: size, target: this.pendingCp?.size ?? size, audited, serving: audited };
  }

  /** The follower's record: where the copy stands and the checkpoint it verified last. */
  record(): LogRecord {
    return {
      size: this.head.size,
      ...(this.pending !== undefined ? { note: this.pending } : {}),
      ...(this.seenAt !== undefined ? { seenAt: this.seenAt } : {}),
      frontier: this.frontier(),
      history: [],
    };
  }

  /** The rightmost tile of each level of the tree of the head's size (what the follower extends). */
  private frontier(): FrontierTile[] {
    const out: FrontierTile[] = [];
    this.store.read((snap) => {
      for (
        let level = 0, count = this.head.size;
        count > 0;
        level++, count = Math.floor(count / TILE_WIDTH)
      ) {
        const index = Math.floor((count - 1) / TILE_WIDTH);
        const t = snap.tile(level, index);
        if (!t) throw new StorageError(`${this.dir}: tile ${level}/${index} is missing`);
        out.push({ level, index, width: t.width, expanded: Buffer.from(t.expanded) });
      }
    });
    return out;
  }

  /** A chunk verified by the follower (or, without one, a newly verified checkpoint). */
  async append(rec: LogRecord, chunk: VerifiedChunk | undefined): Promise<void> {
    if (this.failed) throw this.failed;
    if (this.closing) throw new StateError('the mirror is stopping');
    await this.settle();
    if (rec.note !== undefined && rec.note !== this.pending) {
      const cp = openCheckpoint(rec.note, this.verifier).checkpoint;
      if (cp.mapRoot === undefined) {
        throw new VerificationError(
          'mirror.no-map',
          `the checkpoint of ${cp.origin} at size ${cp.size} has no map line: not a Trustix log, nothing to audit`,
        );
      }
      await this.store.setMeta(PENDING_META, rec.note);
      this.pending = rec.note;
      this.pendingCp = cp;
    }
    if (rec.seenAt !== undefined) this.seenAt = rec.seenAt;
    const note = this.pending;
    const cp = this.pendingCp;
    if (note === undefined || cp === undefined) return;
    if (chunk === undefined || chunk.data.length === 0) {
      // a checkpoint of the size the copy already has (the empty log, or a restart)
      if (this.head.size === cp.size && !this.head.checkpoint.startsWith(note)) {
        if (!equalBytes(this.head.rootHash, cp.rootHash)) {
          throw new VerificationError(
            'mirror.root-mismatch',
            `the copy's tree of size ${cp.size} is not the tree of the checkpoint of that size`,
          );
        }
        this.checkMap(note, cp, this.head.mapRoot, () => this.store.entries(0, cp.size));
        await this.commit(cp.size, [], [], { root: this.head.mapRoot, writes: [] }, this.head.rootHash, note);
      }
      return;
    }
    const { start, data, layouts, leaves } = chunk;
    // a chunk that does not continue the uncommitted ones (the follower started over after an
    // error) continues the committed head: what was not committed is dropped
    if (this.overlay !== undefined && start !== this.overlay.size) this.overlay = undefined;
    if (this.overlay === undefined && start !== this.head.size) {
      throw new StorageError(`chunk starts at ${start} but the copy has ${this.head.size} entries`);
    }
    const o: Overlay = this.overlay ?? {
      size: this.head.size,
      count: 0,
      entries: [],
      tiles: new Map(),
      paths: [],
      values: [],
    };
    this.overlay = undefined;
    const n = data.length;
    const end = start + n;
    const paths = Buffer.allocUnsafe(32 * n);
    const values = Buffer.allocUnsafe(INDEX_VALUE_BYTES * n);
    for (let i = 0; i < n; i++) {
      indexPathOfEncodedInto(data[i], layouts[i], paths, 32 * i);
      writeIndexValueIndex(start + i, values, INDEX_VALUE_BYTES * i);
      leaves.copy(values, INDEX_VALUE_BYTES * i + 8, 32 * i, 32 * i + 32);
    }
    o.paths.push(paths);
    o.values.push(values);
    for (const d of data) o.entries.push(d);
    for (const t of chunk.tiles) o.tiles.set(`${t.tileLevel}/${t.tileIndex}`, t);
    o.size = end;
    o.count += n;
    const reached = end === cp.size;
    if (!reached && o.count < (this.audited ? this.maxUncommitted : this.commitEntries)) {
      // the audited head stays served until the next checkpoint is reached (or too much waits);
      // while catching up, chunks are committed together (fewer, larger commits)
      this.overlay = o;
      this.onProgress({
        size: end,
        committed: this.head.size,
        target: cp.size,
        audited: false,
        serving: this.audited,
      });
      return;
    }
    const smt = this.replay(o);
    let checkpoint = '';
    if (reached) {
      const base = this.head.size;
      this.checkMap(note, cp, smt.root, () => concatEntries(this.store.entries(0, base), o.entries));
      checkpoint = note;
    }
    const committed = this.commit(end, o.entries, [...o.tiles.values()], smt, chunk.root, checkpoint);
    if (checkpoint !== '') return committed;
    // catching up: the next chunk is fetched and verified while this one is committed (the next
    // append, or settle, waits for it, and a failed commit fails it)
    committed.catch(() => {});
    this.committing = committed;
    // one turn of the event loop before the next chunk's requests go out: the replay kept the
    // thread busy for a while, and kept-alive connections that the log closed meanwhile must be
    // seen closed first, else the next requests are sent on them and fail with a reset
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  /**
   * The overlay's entries replayed into the committed index, in one batched update: the new map
   * root and the rows to write.
   */
  private replay(o: Overlay): { root: Buffer; writes: Array<{ id: Uint8Array; data: Uint8Array }> } {
    const valueEnds = new Uint32Array(o.count);
    for (let i = 0; i < o.count; i++) valueEnds[i] = INDEX_VALUE_BYTES * (i + 1);
    const updates = {
      paths: o.paths.length === 1 ? o.paths[0] : Buffer.concat(o.paths),
      values: o.values.length === 1 ? o.values[0] : Buffer.concat(o.values),
      valueEnds,
    };
    const rows = this.store.read((snap) =>
      smtApplyBatchRows(this.head.mapRoot, updates, (id) =>
        this.levelRows.copy(stratumLevel(id), snap.peekStratum ? snap.peekStratum(id) : snap.stratum(id)),
      ),
    );
    const writes = new Array<{ id: Uint8Array; data: Uint8Array }>(rows.count);
    for (let i = 0; i < rows.count; i++) writes[i] = { id: rows.id(i), data: rows.row(i) };
    return { root: rows.root, writes };
  }

  /** Waits for the chunk being committed, if any; rethrows its failure once. */
  async settle(): Promise<void> {
    const c = this.committing;
    if (c === undefined) return;
    try {
      await c;
    } finally {
      if (this.committing === c) this.committing = undefined;
    }
  }

  /** Throws MapMismatchError (after writing the proof) unless `computed` is the checkpoint's map root. */
  private checkMap(
    note: string,
    cp: Checkpoint,
    computed: Buffer,
    entries: () => Iterable<Uint8Array>,
  ): void {
    if (cp.mapRoot !== undefined && equalBytes(cp.mapRoot, computed)) return;
    let file: string | undefined;
    let why = '';
    try {
      file = this.writeProof({ vkey: this.vkey, note, entries });
    } catch (err) {
      why = ` (the proof could not be written: ${(err as Error).message})`;
    }
    this.failed = new MapMismatchError(
      `the checkpoint of ${cp.origin} at size ${cp.size} says map ${toBase64(cp.mapRoot!)}, but its entries make the index ${toBase64(computed)}${file ? `; proof: ${file}` : why}`,
      file,
    );
    throw this.failed;
  }

  private async commit(
    size: number,
    entries: readonly Uint8Array[],
    tiles: VerifiedChunk['tiles'],
    smt: { root: Buffer; writes: ReadonlyArray<{ id: Uint8Array; data: Uint8Array }> },
    rootHash: Uint8Array,
    note: string,
  ): Promise<void> {
    const head: LogHead = {
      size,
      rootHash: Buffer.from(rootHash),
      mapRoot: Buffer.from(smt.root),
      checkpoint: note === '' ? '' : this.cosigned(note),
    };
    await this.store.commit({
      firstIndex: this.head.size,
      entries,
      tiles,
      strataWrites: smt.writes,
      strataDeletes: [],
      head,
    });
    this.head = head;
    this.onProgress(this.progress);
  }

  /** The origin's checkpoint with the mirror's cosignature added. */
  private cosigned(note: string): string {
    const { text } = parseNote(note);
    const sig = this.cosigner.sign(Buffer.from(text, 'utf8'));
    return note + formatSignatureLine(this.cosigner.name, this.cosigner.keyId, sig);
  }

  /** Refuses further chunks (see closing). */
  stop(): void {
    this.closing = true;
  }

  async close(): Promise<void> {
    this.closing = true;
    await this.settle().catch(() => {});
    await this.served.close();
    await this.store.close();
  }
}

function* concatEntries(a: Iterable<Uint8Array>, b: readonly Uint8Array[]): Iterable<Uint8Array> {
  yield* a;
  yield* b;
}

/** FollowStore over the copies of a mirror, by follower id. */
export class CopySet implements FollowStore {
  readonly readsChunks = true;

  constructor(private readonly copies: ReadonlyMap<string, LogCopy>) {}

  private copy(id: string): LogCopy {
    const c = this.copies.get(id);
    if (!c) throw new StorageError(`no copy for log ${id}`);
    return c;
  }

  log(id: string): LogRecord {
    return this.copy(id).record();
  }

  /** The entries come in the chunk (readsChunks). */
  append(id: string, _entries: IndexedEntry[], rec: LogRecord, chunk?: VerifiedChunk): Promise<void> {
    return this.copy(id).append(rec, chunk);
  }
}
