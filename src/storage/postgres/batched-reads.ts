/**
 * Asynchronous reads from PostgreSQL for a server's hot paths (LogStore.readAsync): the reads asked
 * for while the connections are busy are gathered into one batch, and a batch runs in one
 * REPEATABLE READ transaction, so every read of it sees one committed state. A read's function runs
 * against that snapshot from memory; a row it needs that is not loaded yet stops the run, and the
 * rows every stopped run of the batch needs are fetched in one round trip before they run again. So
 * N concurrent lookups cost a handful of round trips together instead of several each.
 *
 * Rows are kept between batches where that is correct whatever state a later batch sees
 * (content-addressed): entries never change; a tile is the same for every tree size that gives it
 * the same width; strata rows are kept for one map root and dropped when a batch sees another.
 * So a read can also be answered without the database, from the kept rows of the last head a batch
 * saw, as long as that head is recent (headMaxAgeMs): one committed state, at most that old. A read
 * that misses a row there goes to the next batch, which reads the head again.
 */
import pg from 'pg';
import { StorageError, StorageUnavailableError } from '../../core/errors.js';
import { tileWidthAt } from '../../core/tiles.js';
import type { LogHead, LogSnapshot, ReadHint, StoredTile } from '../store.js';
import { connectionLost } from './errors.js';
import { SCHEMA } from './schema.js';

/** Reads gathered into one batch at most. */
const MAX_BATCH = 512;
/** Rounds of fetching a batch may take before its reads are failed (a read that never settles). */
const MAX_ROUNDS = 32;
/** Bytes of strata rows (of the current map root) and of entries kept between batches. */
const STRATA_CACHE_BYTES = 128 << 20;
const ENTRY_CACHE_BYTES = 64 << 20;
/** Tiles kept between batches (the Reader keeps full tiles too; these are mostly the partial ones). */
const TILE_CACHE_COUNT = 1024;

/**
 * Thrown inside a read's run for a row not loaded yet. One instance: a run that misses is common,
 * and a stack trace for each would cost more than the row.
 */
const NOT_LOADED = new Error('row not loaded yet');

function tileKey(level: number, index: number): number {
  return level * 2 ** 40 + index;
}

/** A map of byte strings with a bound on their total size: the oldest go first. */
class BoundedCache<K> {
  private readonly map = new Map<K, Buffer | null>();
  private bytes = 0;
  constructor(private readonly maxBytes: number) {}
  get(k: K): Buffer | null | undefined {
    return this.map.get(k);
  }
  set(k: K, v: Buffer | null): void {
    if (this.map.has(k)) return;
    this.map.set(k, v);
    this.bytes += (v?.length ?? 0) + 64;
    while (this.bytes > this.maxBytes) {
      const [oldK, oldV] = this.map.entries().next().value!;
      this.map.delete(oldK);
      this.bytes -= (oldV?.length ?? 0) + 64;
    }
  }
  clear(): void {
    this.map.clear();
    this.bytes = 0;
  }
}

interface Job {
  fn: (snap: LogSnapshot) => unknown;
  hint: ReadHint | undefined;
  resolve(v: unknown): void;
  reject(e: unknown): void;
}

/** What a batch's runs asked for that was not loaded. */
interface Wanted {
  strata: Map<string, Buffer>;
  entries: Set<number>;
  tiles: Map<number, [number, number]>;
}

export interface BatchedReadsOptions {
  /** Connections, each running one batch at a time. Default 4. */
  connections?: number;
  /**
   * How old the last head a batch read may be for a read to be answered from the kept rows of its
   * state without asking the database. Default 50 ms; 0: every read goes to the database.
   */
  headMaxAgeMs?: number;
}

export class BatchedReads {
  private readonly pool: pg.Pool;
  /** Reads not tried yet; reads that need the database. */
  private incoming: Job[] = [];
  private readonly queue: Job[] = [];
  private running = 0;
  private scheduled = false;
  private closed = false;
  private readonly maxRunning: number;
  private readonly headMaxAgeMs: number;
  /** The newest head a batch read, and when (performance.now()). */
  private known: { head: LogHead; at: number } | undefined;
  /** Strata rows (null: no such row) of the map root `strataRoot`, which is the `strataGen`th. */
  private readonly strata = new BoundedCache<string>(STRATA_CACHE_BYTES);
  private strataRoot: Buffer | undefined;
  private strataGen = 0;
  private readonly entryCache = new BoundedCache<number>(ENTRY_CACHE_BYTES);
  private readonly tileCache = new Map<number, StoredTile>();

  constructor(url: string, opts: BatchedReadsOptions = {}) {
    this.maxRunning = opts.connections ?? 4;
    this.headMaxAgeMs = opts.headMaxAgeMs ?? 50;
    this.pool = new pg.Pool({
      connectionString: url,
      application_name: 'trustix reader',
      max: this.maxRunning,
    });
    // a connection that breaks while idle is dropped by the pool; this keeps it from crashing the process
    this.pool.on('error', () => {});
  }

  /** Runs `fn` against one snapshot, with the reads asked for around the same time. */
  read<T>(fn: (snap: LogSnapshot) => T, hint?: ReadHint): Promise<T> {
    if (this.closed) return Promise.reject(new StorageError('the PostgreSQL store is closed'));
    return new Promise<T>((resolve, reject) => {
      this.incoming.push({ fn, hint, resolve: resolve as (v: unknown) => void, reject });
      this.schedule();
    });
  }

  /** Handles the reads on the next turn, so that reads asked for in this one join them. */
  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      if (this.incoming.length > 0) {
        const jobs = this.incoming;
        this.incoming = [];
        for (const j of this.fromKeptRows(jobs)) this.queue.push(j);
      }
      while (this.running < this.maxRunning && this.queue.length > 0) {
        const jobs = this.queue.splice(0, MAX_BATCH);
        this.running++;
        void this.runBatch(jobs).finally(() => {
          this.running--;
          if (this.queue.length > 0) this.schedule();
        });
      }
    });
  }

  /** A head this process just committed: the newest there is, so reads may start from it now. */
  committed(head: LogHead): void {
    if (this.known === undefined || head.size > this.known.head.size) {
      this.known = { head, at: performance.now() };
    }
  }

  /**
   * Answers what it can of `jobs` from the rows kept for the last head a batch read, if that is
   * recent; returns the rest.
   */
  private fromKeptRows(jobs: Job[]): Job[] {
    const known = this.known;
    if (known === undefined || performance.now() - known.at > this.headMaxAgeMs) return jobs;
    const gen = this.strataRoot?.equals(known.head.mapRoot) ? this.strataGen : -1;
    return runJobsOn(new BatchSnapshot(this, known.head, gen).snapshot, jobs);
  }

  private async runBatch(jobs: Job[]): Promise<void> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      for (const j of jobs) j.reject(readError(err));
      return;
    }
    let broken: Error | undefined;
    try {
      const res = (await client.query(
        `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
         SELECT size::float8 AS size, root_hash, map_root, checkpoint FROM ${SCHEMA}.head`,
      )) as unknown as pg.QueryResult[];
      const h = res[1].rows[0] as
        | { size: number; root_hash: Buffer; map_root: Buffer; checkpoint: string }
        | undefined;
      const head: LogHead | undefined =
        h === undefined
          ? undefined
          : { size: h.size, rootHash: h.root_hash, mapRoot: h.map_root, checkpoint: h.checkpoint };
      if (head !== undefined && (this.known === undefined || head.size >= this.known.head.size)) {
        this.known = { head, at: performance.now() };
      }
      await this.runJobs(client, jobs, head);
      await client.query('COMMIT');
    } catch (err) {
      broken = err as Error;
      for (const j of jobs) j.reject(readError(err));
    } finally {
      client.release(broken);
    }
  }

  /** Runs the jobs of one batch, fetching what they miss, until each has an answer or an error. */
  private async runJobs(client: pg.PoolClient, jobs: Job[], head: LogHead | undefined): Promise<void> {
    if (head !== undefined && (this.strataRoot === undefined || !this.strataRoot.equals(head.mapRoot))) {
      this.strata.clear();
      this.strataRoot = Buffer.from(head.mapRoot);
      this.strataGen++;
    }
    const batch = new BatchSnapshot(this, head, this.strataGen);
    // the rows the reads say they will need, in the first round
    for (const j of jobs) {
      for (const id of j.hint?.strata ?? []) batch.wantStratum(id);
      for (const i of j.hint?.entries ?? []) batch.wantEntry(i);
    }
    let pending = jobs;
    for (let round = 0; pending.length > 0; round++) {
      if (round === MAX_ROUNDS) {
        for (const j of pending) j.reject(new StorageError('a PostgreSQL read needed too many rounds'));
        return;
      }
      await this.fetch(client, batch);
      pending = runJobsOn(batch.snapshot, pending);
    }
  }

  /** Fetches everything `batch` wants in one statement, into its rows and the caches. */
  private async fetch(client: pg.PoolClient, batch: BatchSnapshot): Promise<void> {
    const w = batch.takeWanted();
    if (w.strata.size === 0 && w.entries.size === 0 && w.tiles.size === 0) return;
    const tiles = [...w.tiles.values()];
    const r = await client.query<{
      k: number;
      id: Buffer | null;
      n: number | null;
      w: number | null;
      data: Buffer;
    }>({
      // prepared once per connection: planning the statement anew cost about as much as running it
      name: 'trustix-batched-fetch',
      text: `SELECT 0 AS k, id, NULL::float8 AS n, NULL::integer AS w, data FROM ${SCHEMA}.strata
         WHERE id = ANY($1::bytea[])
       UNION ALL
       SELECT 1, NULL, idx::float8, NULL, data FROM ${SCHEMA}.entries WHERE idx = ANY($2::bigint[])
       UNION ALL
       SELECT 2 + t.level, NULL, t.idx::float8, t.width, t.expanded FROM ${SCHEMA}.tiles t
         JOIN unnest($3::integer[], $4::bigint[]) AS u(level, idx) ON t.level = u.level AND t.idx = u.idx`,
      values: [[...w.strata.values()], [...w.entries], tiles.map((t) => t[0]), tiles.map((t) => t[1])],
    });
    for (const row of r.rows) {
      if (row.k === 0) batch.gotStratum(row.id!, row.data);
      else if (row.k === 1) batch.gotEntry(row.n!, row.data);
      else batch.gotTile(row.k - 2, row.n!, { width: row.w!, expanded: row.data });
    }
    // what was asked for and not returned does not exist in this snapshot
    for (const [k] of w.strata) batch.gotStratum(k, null);
    for (const i of w.entries) batch.gotEntry(i, null);
    for (const [key] of w.tiles) batch.gotTileKey(key, null);
  }

  /** A strata row kept for the map root of generation `gen` (undefined: not kept, or another root now). */
  cachedStratum(gen: number, k: string): Buffer | null | undefined {
    return gen === this.strataGen ? this.strata.get(k) : undefined;
  }

  keepStratum(gen: number, k: string, data: Buffer | null): void {
    if (gen === this.strataGen) this.strata.set(k, data);
  }

  cachedEntry(index: number): Buffer | undefined {
    return this.entryCache.get(index) ?? undefined;
  }

  keepEntry(index: number, data: Buffer): void {
    this.entryCache.set(index, data);
  }

  cachedTile(key: number): StoredTile | undefined {
    return this.tileCache.get(key);
  }

  keepTile(key: number, t: StoredTile): void {
    this.tileCache.delete(key);
    if (this.tileCache.size >= TILE_CACHE_COUNT) this.tileCache.delete(this.tileCache.keys().next().value!);
    this.tileCache.set(key, t);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const j of [...this.incoming.splice(0), ...this.queue.splice(0)]) {
      j.reject(new StorageError('the PostgreSQL store is closed'));
    }
    await this.pool.end().catch(() => {});
  }
}

/** The rows one batch has loaded, and the snapshot its reads run against. */
class BatchSnapshot {
  private readonly strata = new Map<string, Buffer | null>();
  private readonly entries = new Map<number, Buffer | null>();
  private readonly tiles = new Map<number, StoredTile | null>();
  private wanted: Wanted = { strata: new Map(), entries: new Set(), tiles: new Map() };
  readonly snapshot: LogSnapshot;

  constructor(
    private readonly reads: BatchedReads,
    private readonly head: LogHead | undefined,
    /** The generation of the strata cache that holds this snapshot's map root. */
    private readonly gen: number,
  ) {
    this.snapshot = {
      head: () => this.head,
      stratum: (id) => this.stratum(id),
      entry: (index) => this.entry(index),
      tile: (level, index) => this.tile(level, index),
    };
  }

  private stratum(id: Uint8Array): Buffer | undefined {
    const k = Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString('latin1');
    let row = this.strata.get(k);
    if (row === undefined) row = this.reads.cachedStratum(this.gen, k);
    if (row === undefined) {
      this.wanted.strata.set(k, Buffer.from(id));
      throw NOT_LOADED;
    }
    return row ?? undefined;
  }

  private entry(index: number): Buffer | undefined {
    // entries are kept whatever state they were read in: the ones past this head are not in it
    if (this.head === undefined || index >= this.head.size) return undefined;
    let e = this.entries.get(index);
    if (e === undefined) e = this.reads.cachedEntry(index);
    if (e === undefined) {
      this.wanted.entries.add(index);
      throw NOT_LOADED;
    }
    return e ?? undefined;
  }

  private tile(level: number, index: number): StoredTile | undefined {
    const key = tileKey(level, index);
    let t = this.tiles.get(key);
    if (t === undefined) {
      const cached = this.reads.cachedTile(key);
      // a tile is the same in every state where it has the same width
      if (
        cached !== undefined &&
        this.head !== undefined &&
        cached.width === tileWidthAt(this.head.size, level, index)
      )
        t = cached;
    }
    if (t === undefined) {
      this.wanted.tiles.set(key, [level, index]);
      throw NOT_LOADED;
    }
    return t ?? undefined;
  }

  wantStratum(id: Uint8Array): void {
    const k = Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString('latin1');
    if (!this.strata.has(k) && this.reads.cachedStratum(this.gen, k) === undefined) {
      this.wanted.strata.set(k, Buffer.from(id));
    }
  }

  wantEntry(index: number): void {
    if (!this.entries.has(index) && this.reads.cachedEntry(index) === undefined) {
      this.wanted.entries.add(index);
    }
  }

  takeWanted(): Wanted {
    const w = this.wanted;
    this.wanted = { strata: new Map(), entries: new Set(), tiles: new Map() };
    return w;
  }

  gotStratum(id: Buffer | string, data: Buffer | null): void {
    const k = typeof id === 'string' ? id : id.toString('latin1');
    if (this.strata.has(k)) return;
    this.strata.set(k, data);
    // kept for later batches only while the cache is of this batch's root
    this.reads.keepStratum(this.gen, k, data);
  }

  gotEntry(index: number, data: Buffer | null): void {
    if (this.entries.has(index)) return;
    this.entries.set(index, data);
    if (data !== null) this.reads.keepEntry(index, data);
  }

  gotTile(level: number, index: number, t: StoredTile): void {
    const key = tileKey(level, index);
    if (this.tiles.has(key)) return;
    this.tiles.set(key, t);
    this.reads.keepTile(key, t);
  }

  gotTileKey(key: number, t: null): void {
    if (!this.tiles.has(key)) this.tiles.set(key, t);
  }
}

/** Settles each job that `snapshot` answers; returns those that need rows it has not loaded. */
function runJobsOn(snapshot: LogSnapshot, jobs: Job[]): Job[] {
  const missing: Job[] = [];
  for (const j of jobs) {
    try {
      j.resolve(j.fn(snapshot));
    } catch (err) {
      if (err === NOT_LOADED) missing.push(j);
      else j.reject(err);
    }
  }
  return missing;
}

function readError(err: unknown): StorageError {
  if (err instanceof StorageError) return err;
  // out of reach is a 503 the client retries, not a fault of the node
  const Failure = connectionLost(err) ? StorageUnavailableError : StorageError;
  return new Failure(`PostgreSQL read failed: ${(err as Error).message}`, { cause: err });
}
