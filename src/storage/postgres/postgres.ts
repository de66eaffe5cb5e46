/**
 * The PostgreSQL driver: one database per log, any number of nodes over it, exactly one of them
 * sequencing at a time. The sequencer holds a lease row (`sequencer`: holder, epoch, expiry, and the
URL where it takes writes);
 * taking it over from a holder whose lease ran out raises the epoch, and every commit checks, in
 * its own transaction and under a row lock, that the lease is still its holder's at its epoch. So
 * a sequencer that was paused past its lease can never commit after another took over: its
 * commit is refused with FencedError and nothing of it is written. Each commit also extends the
 * lease.
 *
 * A commit is one transaction (bulk inserts through `unnest`), durable when COMMIT returns with
 * synchronous_commit on. Reads are synchronous (sync-reads.ts), one REPEATABLE READ transaction
 * per `read`; a server's hot reads go through readAsync (batched-reads.ts), which batches
 * concurrent reads into one transaction and caches rows. Tables: see schema.ts.
 *
 * The write connection is made again when it breaks (PostgreSQL restarted, the network cut): the
 * operation that found it broken fails with StorageUnavailableError, the next one reconnects.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { StorageError, StorageUnavailableError } from '../../core/errors.js';
import type { CommitBatch, LogHead, LogSnapshot, LogStore, ReadHint, StoredTile } from '../store.js';
import { BatchedReads } from './batched-reads.js';
import { connectionLost } from './errors.js';
import { migrate, SCHEMA } from './schema.js';
import { SyncReads } from './sync-reads.js';

/**
 * A commit refused because this node no longer holds the sequencer lease at its epoch, or a lease
 * not taken because another node holds it: then `holderUrl` is where that node takes writes (if it
 * said) and `expiresInMs` how long its lease runs without renewal.
 */
export class FencedError extends StorageUnavailableError {
  constructor(
    message: string,
    readonly holderUrl?: string,
    readonly expiresInMs?: number,
  ) {
    super(message);
  }
}

export interface PgStoreOptions {
  /**
   * Take the sequencer lease (the store may commit), or only read. A sequencer that cannot take
   * the lease because another holds it fails to open with FencedError.
   */
  sequencer?: boolean;
  /** How long the lease lasts without renewal; renewed every third of it. Default 5 s. */
  leaseMs?: number;
  /** Who holds the lease, as recorded in the database (default: a random id). */
  holder?: string;
  /** Connections for asynchronous reads (readAsync), each running one batch of reads at a time. Default 4. */
  readConnections?: number;
  /** See BatchedReadsOptions.headMaxAgeMs (default 50 ms). */
  readHeadMaxAgeMs?: number;
  /** Recorded with the lease this node takes: the URL where it takes writes. */
  advertise?: string;
}

/** Expired nonces are swept at most this often (seconds). */
const NONCE_SWEEP_S = 60;
/** Entries fetched per round trip by `entries`. */
const ENTRIES_CHUNK = 4096;
/** How long making the write connection may take before the operation fails. */
const CONNECT_TIMEOUT_MS = 5000;

/**
 * The write connection. A transaction left idle longer than the lease (its node paused, or cut
 * off mid-commit) is ended by the server, so its row locks never keep a standby from taking the
 * lease over; a lock waited for longer than the lease fails the statement instead of hanging.
 */
function newClient(url: string, leaseMs: number): pg.Client {
  return new pg.Client({
    connectionString: url,
    application_name: 'trustix',
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    keepAlive: true,
    idle_in_transaction_session_timeout: leaseMs,
    lock_timeout: leaseMs,
  });
}

function asBuffer(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

function optBuffer(b: Uint8Array | undefined): Buffer | undefined {
  return b === undefined ? undefined : asBuffer(b);
}

export class PgLogStore implements LogStore {
  private epoch: number | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private noncesSwept = 0;
  private writing: Promise<unknown> = Promise.resolve();
  private closed = false;

  /** The write connection (migrations, commits, meta, nonces, the lease), while it works. */
  private writer: pg.Client | undefined;
  /** Recorded with the lease when this node takes it: where it takes writes (PgStoreOptions.advertise). */
  advertise: string | undefined;

  private constructor(
    private readonly url: string,
    writer: pg.Client,
    private readonly reads: SyncReads,
    private readonly batched: BatchedReads,
    readonly holder: string,
    readonly leaseMs: number,
  ) {
    this.adopt(writer);
  }

  /** Opens the log database at `url` (postgresql://...), creating or migrating its schema. */
  static async open(url: string, opts: PgStoreOptions = {}): Promise<PgLogStore> {
    const leaseMs = opts.leaseMs ?? 5000;
    const writer = await connect(url, leaseMs);
    let store: PgLogStore | undefined;
    try {
      await migrate(writer);
      store = new PgLogStore(
        url,
        writer,
        new SyncReads(url),
        new BatchedReads(url, { connections: opts.readConnections, headMaxAgeMs: opts.readHeadMaxAgeMs }),
        opts.holder ?? randomUUID(),
        leaseMs,
      );
      store.advertise = opts.advertise;
      if (opts.sequencer) await store.takeLease();
      return store;
    } catch (err) {
      if (store !== undefined) await store.close();
      else await writer.end().catch(() => {});
      if (err instanceof StorageError) throw err;
      throw new StorageError(`PostgreSQL store at ${redact(url)}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** The lease epoch this store commits under (undefined: it does not sequence). */
  get leaseEpoch(): number | undefined {
    return this.epoch;
  }

  /** Watches a (new) write connection: once it breaks, the next operation makes another. */
  private adopt(c: pg.Client): void {
    const drop = () => {
      if (this.writer === c) this.writer = undefined;
    };
    // an idle connection that breaks would otherwise crash the process with an 'error' event
    c.on('error', drop);
    c.on('end', drop);
    this.writer = c;
  }

  /**
   * Takes the sequencer lease if it is free, expired or already this holder's; raises the epoch
   * when it changes hands. Fails with FencedError while another holder's lease runs.
   */
  takeLease(): Promise<number> {
    return this.exclusive((c) => this.takeLeaseOn(c));
  }

  private async takeLeaseOn(c: pg.Client): Promise<number> {
    const r = await c.query<{ epoch: string }>(
      `UPDATE ${SCHEMA}.sequencer
         SET epoch = CASE WHEN holder IS NOT DISTINCT FROM $1 THEN epoch ELSE epoch + 1 END,
             holder = $1, url = $3, expires = now() + $2 * interval '1 millisecond'
       WHERE holder IS NOT DISTINCT FROM $1 OR expires < now()
       RETURNING epoch`,
      [this.holder, this.leaseMs, this.advertise ?? null],
    );
    if (r.rows.length === 0) {
      this.dropLease();
      const held = await c.query<{ holder: string; url: string | null; expires: Date; left_ms: number }>(
        `SELECT holder, url, expires, extract(epoch FROM expires - now()) * 1000 AS left_ms
         FROM ${SCHEMA}.sequencer`,
      );
      const h = held.rows[0];
      throw new FencedError(
        `another node (${h?.holder}${h?.url ? ` at ${h.url}` : ''}) holds the sequencer lease until ${h?.expires.toISOString()}`,
        h?.url ?? undefined,
        h === undefined ? undefined : Math.max(0, Number(h.left_ms)),
      );
    }
    this.epoch = Number(r.rows[0].epoch);
    this.scheduleRenewal();
    return this.epoch;
  }

  private scheduleRenewal(): void {
    if (this.renewTimer) clearInterval(this.renewTimer);
    this.renewTimer = setInterval(
      () => void this.renewLease().catch(() => {}),
      Math.max(50, this.leaseMs / 3),
    );
    this.renewTimer.unref();
  }

  /**
   * Extends the lease; false (and no longer sequencing) when another holder took it over. A lease
   * that ran out (this thread was busy past it) but that nobody took is extended as well.
   */
  renewLease(): Promise<boolean> {
    return this.exclusive((c) => this.renewLeaseOn(c));
  }

  private async renewLeaseOn(c: pg.Client): Promise<boolean> {
    if (this.epoch === undefined) return false;
    const r = await c.query(
      `UPDATE ${SCHEMA}.sequencer SET expires = now() + $3 * interval '1 millisecond'
       WHERE holder = $1 AND epoch = $2`,
      [this.holder, this.epoch, this.leaseMs],
    );
    if (r.rowCount === 0) {
      this.dropLease();
      return false;
    }
    return true;
  }

  /**
   * Who holds the sequencer lease now: the URL it recorded (if any) and how long the lease runs
   * without renewal (0: it ran out). Undefined when nobody ever held it.
   */
  leaseHolder(): Promise<{ url: string | undefined; expiresInMs: number } | undefined> {
    return this.exclusive(async (c) => {
      const r = await c.query<{ holder: string | null; url: string | null; left_ms: number }>(
        `SELECT holder, url, extract(epoch FROM expires - now()) * 1000 AS left_ms FROM ${SCHEMA}.sequencer`,
      );
      const h = r.rows[0];
      if (h?.holder == null) return undefined;
      return { url: h.url ?? undefined, expiresInMs: Math.max(0, Number(h.left_ms)) };
    });
  }

  /** No longer sequencing: no epoch to commit under, no renewals. */
  private dropLease(): void {
    this.epoch = undefined;
    if (this.renewTimer) clearInterval(this.renewTimer);
    this.renewTimer = undefined;
  }

  /**
   * Runs `fn` on the write connection once every operation before it is done: a lease renewal
   * never lands inside a commit's transaction.
   */
  private exclusive<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
    const run = this.writing.then(async () => {
      const c = await this.client();
      try {
        return await fn(c);
      } catch (err) {
        if (err instanceof StorageError || !connectionLost(err)) throw err;
        this.discard(c);
        throw new StorageUnavailableError(`PostgreSQL connection lost: ${(err as Error).message}`, {
          cause: err,
        });
      }
    });
    this.writing = run.catch(() => {});
    return run;
  }

  private async client(): Promise<pg.Client> {
    if (this.closed) throw new StorageError('the PostgreSQL store is closed');
    if (this.writer !== undefined) return this.writer;
    const c = await connect(this.url, this.leaseMs);
    if (this.closed) {
      await c.end().catch(() => {});
      throw new StorageError('the PostgreSQL store is closed');
    }
    this.adopt(c);
    return c;
  }

  /** Ends a write connection that cannot be trusted to be idle (a transaction may be open on it). */
  private discard(c: pg.Client): void {
    if (this.writer === c) this.writer = undefined;
    void c.end().catch(() => {});
  }

  read<T>(fn: (snapshot: LogSnapshot) => T): T {
    return this.reads.snapshot(() => fn(this.snapshot()));
  }

  readAsync<T>(fn: (snapshot: LogSnapshot) => T, hint?: ReadHint): Promise<T> {
    return this.batched.read(fn, hint);
  }

  private snapshot(): LogSnapshot {
    const reads = this.reads;
    let head: { h: LogHead | undefined } | undefined;
    let fetched: Map<string, Buffer | null> | undefined;
    return {
      head: () => {
        head ??= { h: decodeHead(reads.ask({ op: 'head' })) };
        return head.h;
      },
      entry: (index) => optBuffer(reads.ask<Uint8Array | undefined>({ op: 'entry', index })),
      tile: (level, index) => {
        const t = reads.ask<{ width: number; expanded: Uint8Array } | undefined>({
          op: 'tile',
          level,
          index,
        });
        return t === undefined
          ? undefined
          : ({ width: t.width, expanded: asBuffer(t.expanded) } satisfies StoredTile);
      },
      stratum: (id) => {
        const hit = fetched?.get(asBuffer(id).toString('latin1'));
        if (hit !== undefined) return hit ?? undefined;
        return optBuffer(reads.ask<Uint8Array | undefined>({ op: 'stratum', id }));
      },
      // rows asked for ahead, in one round trip: null for an id that has no row
      prefetchStrata: (ids) => {
        fetched ??= new Map();
        const known = fetched;
        const wanted = ids.filter((id) => !known.has(asBuffer(id).toString('latin1')));
        if (wanted.length === 0) return;
        for (const id of wanted) known.set(asBuffer(id).toString('latin1'), null);
        for (const [id, data] of reads.ask<Array<[Uint8Array, Uint8Array]>>({ op: 'strata', ids: wanted })) {
          known.set(asBuffer(id).toString('latin1'), asBuffer(data));
        }
      },
    };
  }

  async commit(batch: CommitBatch): Promise<void> {
    await this.exclusive((c) => this.commitOn(c, batch));
    // this node's own reads see what it committed at once, not up to readHeadMaxAgeMs later
    this.batched.committed(batch.head);
  }

  private async commitOn(c: pg.Client, batch: CommitBatch): Promise<void> {
    const head = batch.head;
    await c.query('BEGIN');
    try {
      // Holder and epoch decide: a node takes the lease over only by changing them, in an update
      // that waits for this row lock, so none can have committed since they were this node's. An
      // expired lease that nobody took is still this node's; the commit extends it.
      const lease = await c.query<{ holder: string | null; epoch: string }>(
        `SELECT holder, epoch FROM ${SCHEMA}.sequencer FOR UPDATE`,
      );
      const l = lease.rows[0];
      if (
        this.epoch === undefined ||
        l === undefined ||
        l.holder !== this.holder ||
        Number(l.epoch) !== this.epoch
      ) {
        throw new FencedError(
          this.epoch === undefined
            ? 'this node does not hold the sequencer lease: it may not commit'
            : `the sequencer lease (epoch ${this.epoch}) was lost${l && Number(l.epoch) !== this.epoch ? ` to epoch ${l.epoch}` : ''}; the commit is refused`,
        );
      }
      await c.query(`UPDATE ${SCHEMA}.sequencer SET expires = now() + $1 * interval '1 millisecond'`, [
        this.leaseMs,
      ]);
      const cur = await c.query<{ size: string }>(`SELECT size FROM ${SCHEMA}.head FOR UPDATE`);
      const current = cur.rows.length === 0 ? 0 : Number(cur.rows[0].size);
      if (batch.firstIndex !== current) {
        throw new StorageError(`commit at index ${batch.firstIndex} but the log has ${current} entries`);
      }
      if (batch.entries.length > 0) {
        await c.query(
          `INSERT INTO ${SCHEMA}.entries (idx, data)
           SELECT $1::bigint + i - 1, d FROM unnest($2::bytea[]) WITH ORDINALITY AS u(d, i)`,
          [batch.firstIndex, batch.entries.map(asBuffer)],
        );
      }
      if (batch.tiles.length > 0) {
        await c.query(
          `INSERT INTO ${SCHEMA}.tiles (level, idx, width, expanded)
           SELECT * FROM unnest($1::integer[], $2::bigint[], $3::integer[], $4::bytea[])
           ON CONFLICT (level, idx) DO UPDATE SET width = EXCLUDED.width, expanded = EXCLUDED.expanded`,
          [
            batch.tiles.map((t) => t.tileLevel),
            batch.tiles.map((t) => t.tileIndex),
            batch.tiles.map((t) => t.width),
            batch.tiles.map((t) => asBuffer(t.expanded)),
          ],
        );
      }
      if (batch.strataWrites.length > 0) {
        await c.query(
          `INSERT INTO ${SCHEMA}.strata (id, data) SELECT * FROM unnest($1::bytea[], $2::bytea[])
           ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data`,
          [batch.strataWrites.map((s) => asBuffer(s.id)), batch.strataWrites.map((s) => asBuffer(s.data))],
        );
      }
      if (batch.strataDeletes.length > 0) {
        await c.query(`DELETE FROM ${SCHEMA}.strata WHERE id = ANY($1::bytea[])`, [
          batch.strataDeletes.map(asBuffer),
        ]);
      }
      await c.query(
        `INSERT INTO ${SCHEMA}.checkpoints (size, note) VALUES ($1, $2)
         ON CONFLICT (size) DO UPDATE SET note = EXCLUDED.note`,
        [head.size, head.checkpoint],
      );
      await c.query(
        `INSERT INTO ${SCHEMA}.head (size, root_hash, map_root, checkpoint) VALUES ($1, $2, $3, $4)
         ON CONFLICT (one) DO UPDATE SET size = EXCLUDED.size, root_hash = EXCLUDED.root_hash,
           map_root = EXCLUDED.map_root, checkpoint = EXCLUDED.checkpoint`,
        [head.size, head.rootHash, head.mapRoot, head.checkpoint],
      );
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => this.discard(c));
      if (err instanceof StorageError) throw err;
      if (connectionLost(err)) {
        this.discard(c);
        throw new StorageUnavailableError(
          `PostgreSQL connection lost during a commit (it may or may not have been applied): ${(err as Error).message}`,
          { cause: err },
        );
      }
      throw new StorageError(`PostgreSQL commit failed: ${(err as Error).message}`, { cause: err });
    }
  }

  *checkpoints(): Iterable<{ size: number; checkpoint: string }> {
    yield* this.reads.ask<Array<{ size: number; checkpoint: string }>>({ op: 'checkpoints' });
  }

  *entries(start: number, end: number): Iterable<Buffer> {
    let expected = start;
    while (expected < end) {
      const rows = this.reads.ask<Array<[number, Uint8Array]>>({
        op: 'entries',
        start: expected,
        end,
        max: ENTRIES_CHUNK,
      });
      if (rows.length === 0) break;
      for (const [idx, data] of rows) {
        if (idx !== expected) throw new StorageError(`entry ${expected} is missing from the store`);
        expected++;
        yield asBuffer(data);
      }
    }
    if (expected !== end) throw new StorageError(`entry ${expected} is missing from the store`);
  }

  getMeta(name: string): string | undefined {
    return this.reads.ask<string | undefined>({ op: 'meta', name });
  }

  async setMeta(name: string, value: string): Promise<void> {
    await this.exclusive((c) =>
      c.query(
        `INSERT INTO ${SCHEMA}.meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value`,
        [name, value],
      ),
    );
  }

  recordNonce(id: string, expires: number, now: number): Promise<void> {
    return this.exclusive((c) => this.recordNonceOn(c, id, expires, now));
  }

  private async recordNonceOn(c: pg.Client, id: string, expires: number, now: number): Promise<void> {
    await c.query(
      `INSERT INTO ${SCHEMA}.nonces (id, expires) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET expires = EXCLUDED.expires`,
      [id, expires],
    );
    if (now - this.noncesSwept >= NONCE_SWEEP_S) {
      this.noncesSwept = now;
      await c.query(`DELETE FROM ${SCHEMA}.nonces WHERE expires < $1`, [now]);
    }
  }

  *nonces(now: number): Iterable<{ id: string; expires: number }> {
    yield* this.reads.ask<Array<{ id: string; expires: number }>>({ op: 'nonces', now });
  }

  /** Closes the connections; a sequencer gives its lease up first, so a standby takes over at once. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.renewTimer) clearInterval(this.renewTimer);
    this.renewTimer = undefined;
    const epoch = this.epoch;
    if (epoch !== undefined) {
      await this.exclusive((c) =>
        c.query(`UPDATE ${SCHEMA}.sequencer SET expires = '-infinity' WHERE holder = $1 AND epoch = $2`, [
          this.holder,
          epoch,
        ]),
      ).catch(() => {});
      this.epoch = undefined;
    }
    this.closed = true;
    await this.reads.close();
    await this.batched.close();
    await this.writer?.end().catch(() => {});
    this.writer = undefined;
  }
}

/** A new write connection to `url`; StorageUnavailableError (password not shown) if there is none. */
async function connect(url: string, leaseMs: number): Promise<pg.Client> {
  const c = newClient(url, leaseMs);
  // errors of a connection that breaks later are handled by its store (PgLogStore.adopt)
  c.on('error', () => {});
  try {
    await c.connect();
  } catch (err) {
    await c.end().catch(() => {});
    throw new StorageUnavailableError(
      `cannot connect to PostgreSQL at ${redact(url)}: ${(err as Error).message || (err as { code?: string }).code}`,
      { cause: err },
    );
  }
  return c;
}

function decodeHead(
  raw: { size: number; rootHash: Uint8Array; mapRoot: Uint8Array; checkpoint: string } | undefined,
): LogHead | undefined {
  if (raw === undefined) return undefined;
  return {
    size: raw.size,
    rootHash: asBuffer(raw.rootHash),
    mapRoot: asBuffer(raw.mapRoot),
    checkpoint: raw.checkpoint,
  };
}

/** The URL without its password, for messages. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(an invalid URL)';
  }
}
