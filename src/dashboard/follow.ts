/**
 * Follows the logs of a trust config through their C2SP tlog-tiles endpoints and indexes their
 * entries (docs/dashboard.md, "What is verified"). Per poll and log:
 *
 * 1. the latest checkpoint: its signature by the configured key, and its consistency with the
 *    last one verified (the verifying client; rollback and fork are failed checks);
 * 2. the new entries, in chunks of entry bundles: each entry must hash to its leaf in the level-0
 *    hash tile of the same tree (`follow.leaf-mismatch`);
 * 3. the tree recomputed from every indexed entry (the stored right edge extended by the chunk)
 *    must be the signed tree: at the checkpoint's size, the same root (`follow.root-mismatch`);
 *    before it, a prefix of it by the log's consistency proof (`follow.inconsistent`).
 *
 * Only then is a chunk written to the index, in one transaction with the new size, so the index
 * never holds an entry that was not verified, and a restart resumes where the last chunk ended.
 */
import { LogClient } from '../client/client.js';
import { logFileStem, MemoryTrustStore } from '../client/trust-store.js';
import { equalBytes } from '../core/bytes.js';
import { type EntryLayout, entryLayout } from '../core/entry.js';
import { VerificationError } from '../core/errors.js';
import { HASH_SIZE } from '../core/hash.js';
import { leafHashInto, treeRoot, verifyConsistency } from '../core/merkle.js';
import { appendToTiles, hashReaderFromTiles, TILE_WIDTH, type TileGetter } from '../core/tiles.js';
import type { LogConfig } from '../decide/config.js';
import { failure, localFetch } from '../decide/decide.js';
import type { FrontierTile, IndexedEntry, LogRecord } from './store.js';

/** Entry bundles per verified chunk, by default. */
const CHUNK_BUNDLES = 32;

export type LogState = 'starting' | 'ok' | 'unreachable' | 'failed' | 'unsupported';

export interface LogStatus {
  name: string;
  id: string;
  origin: string;
  url?: string;
  /** A local log's directory. */
  dir?: string;
  state: LogState;
  /** The failed check (state failed or unreachable). */
  check?: string;
  reason?: string;
  /** Entries indexed (verified). */
  size: number;
  /** Size of the latest verified checkpoint; above `size` while catching up. */
  target: number;
  /** When the latest checkpoint size was first verified, ms since the epoch. */
  seenAt?: number;
  /** When the log was last asked, ms since the epoch. */
  polledAt?: number;
  history: Array<[number, number]>;
}

/**
 * A chunk as it was verified, for a store that keeps more than the index (a mirror's copy): the
 * entries' encodings from index `start`, their leaf hashes (32 bytes each, packed) and every tile
 * the chunk wrote, as appendToTiles returns them, and the recomputed root.
 */
export interface VerifiedChunk {
  start: number;
  data: readonly Buffer[];
  /** Where each entry's fields are in its encoding (checked: a valid entry). */
  layouts: readonly EntryLayout[];
  leaves: Buffer;
  tiles: ReturnType<typeof appendToTiles>;
  /** The root of the tree of the chunk's end, as recomputed. */
  root: Buffer;
}

/** Where a follower keeps what it verified: the dashboard's index (DashboardStore), or a mirror. */
export interface FollowStore {
  /**
   * True for a store that reads the entries from each chunk (data and layouts): `append` then gets
   * no decoded entries, which spares an object and three views per entry (the mirror).
   */
  readonly readsChunks?: boolean;
  log(id: string): LogRecord;
  append(id: string, entries: IndexedEntry[], rec: LogRecord, chunk?: VerifiedChunk): Promise<void>;
}

export interface FollowOptions {
  timeoutMs?: number;
  /** Parallel entry bundle downloads (the client's default: 4). */
  concurrency?: number;
  /** Entry bundles fetched and verified together (one consistency proof each). Default 32. */
  chunkBundles?: number;
  fetch?: typeof globalThis.fetch;
}

export class LogFollower {
  readonly id: string;
  readonly client: LogClient | undefined;
  /** A local log (`state = DIR`): opens it read-only (LocalLogError when it cannot), and closes it. */
  private readonly local: ReturnType<typeof localFetch> | undefined;
  private readonly trust = new MemoryTrustStore();
  private seeded = false;
  private readonly chunkBundles: number;
  private status: Omit<LogStatus, 'history'>;

  constructor(
    readonly cfg: LogConfig,
    private readonly store: FollowStore,
    opts: FollowOptions = {},
  ) {
    const origin = cfg.vkey.split('+')[0];
    this.chunkBundles = opts.chunkBundles ?? CHUNK_BUNDLES;
    // a local log is read from its store through the same client, so verified the same way
    if (cfg.state !== undefined) this.local = localFetch(cfg.state);
    this.client = new LogClient({
      url: cfg.url ?? 'http://local.invalid/',
      vkey: cfg.vkey,
      trustStore: this.trust,
      ...(cfg.witnessPolicy ? { witnessPolicy: cfg.witnessPolicy } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
      ...(opts.concurrency !== undefined ? { concurrency: opts.concurrency } : {}),
      ...(this.local ? { fetch: this.local.fetch } : opts.fetch ? { fetch: opts.fetch } : {}),
    });
    this.id = logFileStem({ origin, vkey: cfg.vkey });
    const rec = store.log(this.id);
    this.status = {
      name: cfg.name,
      id: this.id,
      origin,
      ...(cfg.url !== undefined ? { url: cfg.url } : {}),
      ...(cfg.state !== undefined ? { dir: cfg.state } : {}),
      state: 'starting',
      size: rec.size,
      target: rec.size,
      ...(rec.seenAt !== undefined ? { seenAt: rec.seenAt } : {}),
    };
  }

  snapshot(): LogStatus {
    return { ...this.status, history: this.store.log(this.id).history };
  }

  /** What was verified before a restart stays the reference: a rollback or fork since is caught. */
  private async seed(): Promise<void> {
    if (this.seeded) return;
    const note = this.store.log(this.id).note;
    if (note !== undefined) await this.trust.compareAndSet(this.client!.identity, undefined, note);
    this.seeded = true;
  }

  /**
   * The checkpoint every later one must extend (signed note): the latest this follower verified, or
   * one a caller adopted since (adopt). Undefined before the first.
   */
  async reference(): Promise<string | undefined> {
    if (!this.client) return undefined;
    await this.seed();
    return this.trust.get(this.client.identity);
  }

  /**
   * Makes `note`, a checkpoint of this log that the caller verified to extend `expected` (what
   * reference() gave), the reference, so the log's later checkpoints must extend it too (a mirror
   * told of a checkpoint through add-checkpoint). False when the reference is no longer `expected`.
   */
  async adopt(expected: string | undefined, note: string): Promise<boolean> {
    if (!this.client) return false;
    await this.seed();
    return (await this.trust.compareAndSet(this.client.identity, expected, note)).ok;
  }

  /** One round: the latest checkpoint, then every new entry. Never throws; the outcome is in `snapshot()`. */
  async poll(): Promise<void> {
    if (!this.client) return;
    this.status.polledAt = Date.now();
    try {
      await this.local?.open();
      await this.seed();
      let rec = this.store.log(this.id);
      const t = await this.client.checkpoint();
      const n = t.checkpoint.size;
      if (rec.note === undefined || this.client.open(rec.note).size !== n) {
        rec = { ...rec, note: t.note, seenAt: Date.now() };
        // the checkpoint is verified now, entries or not
        await this.store.append(this.id, [], rec);
      }
      this.status.seenAt = rec.seenAt!;
      this.status.target = n;
      while (rec.size < n) rec = await this.chunk(rec, t.checkpoint.rootHash, n);
      this.status = { ...this.status, state: 'ok', size: rec.size };
      delete this.status.check;
      delete this.status.reason;
    } catch (err) {
      const f = failure(err);
      this.status = {
        ...this.status,
        state: err instanceof VerificationError ? 'failed' : 'unreachable',
        check: f.check,
        reason: f.reason,
      };
    }
  }

  /** Closes a local log's store. */
  async close(): Promise<void> {
    await this.local?.close();
  }

  /** Fetches, verifies and indexes the next chunk of entries of the tree of size `n`. */
  private async chunk(rec: LogRecord, root: Uint8Array, n: number): Promise<LogRecord> {
    const client = this.client!;
    const start = rec.size;
    const end = Math.min(n, (Math.floor(start / TILE_WIDTH) + this.chunkBundles) * TILE_WIDTH);
    const first = Math.floor(start / TILE_WIDTH);
    const last = Math.floor((end - 1) / TILE_WIDTH);
    const tiles = new Map<number, Promise<Buffer>>();
    for (let i = first; i <= last; i++) {
      const p = client.tile(0, i, Math.min(TILE_WIDTH, n - i * TILE_WIDTH));
      p.catch(() => {});
      tiles.set(i, p);
    }
    // asked for with the entries, not after them: one round trip less per chunk
    const proofAsked = end === n ? undefined : client.consistencyProof(end, n);
    proofAsked?.catch(() => {});
    const leaves = Buffer.allocUnsafe((end - start) * HASH_SIZE);
    const data: Buffer[] = [];
    let at = start;
    for await (const bundle of client.entries(start, end, { treeSize: n })) {
      const from = at;
      const tile = await tiles.get(Math.floor(from / TILE_WIDTH))!;
      for (const e of bundle) leafHashInto(e, leaves, (at++ - start) * HASH_SIZE);
      for (const e of bundle) data.push(e);
      // the bundle's leaf hashes against the tile's, compared at once; one by one only to say which
      const ours = leaves.subarray((from - start) * HASH_SIZE, (at - start) * HASH_SIZE);
      const off = (from % TILE_WIDTH) * HASH_SIZE;
      if (!ours.equals(tile.subarray(off, off + ours.length))) {
        let i = 0;
        while (equalBytes(ours.subarray(i, i + HASH_SIZE), tile.subarray(off + i, off + i + HASH_SIZE))) {
          i += HASH_SIZE;
        }
        const index = from + i / HASH_SIZE;
        throw new VerificationError(
          'follow.leaf-mismatch',
          `entry ${index} does not hash to its leaf in hash tile 0/${Math.floor(index / TILE_WIDTH)}`,
        );
      }
    }
    const frontier = new Map(rec.frontier.map((t) => [t.level, t]));
    const getTile: TileGetter = (level, index) => {
      const t = frontier.get(level);
      return t && t.index === index ? { expanded: t.expanded, width: t.width } : undefined;
    };
    const written = appendToTiles(start, leaves, getTile);
    for (const t of written) {
      frontier.set(t.tileLevel, {
        level: t.tileLevel,
        index: t.tileIndex,
        width: t.width,
        expanded: t.expanded,
      });
    }
    const ours = treeRoot(end, hashReaderFromTiles(getTile));
    if (end === n) {
      if (!equalBytes(ours, root)) {
        throw new VerificationError(
          'follow.root-mismatch',
          `the ${n} entries served do not make the tree of the signed checkpoint of size ${n}`,
        );
      }
    } else {
      const proof = await proofAsked!;
      try {
        verifyConsistency(end, n, proof, ours, root);
      } catch (err) {
        throw new VerificationError(
          'follow.inconsistent',
          `the first ${end} entries served are not a prefix of the signed tree of size ${n} (${(err as Error).message})`,
        );
      }
    }
    const layouts = data.map((d, i) => {
      try {
        return entryLayout(d);
      } catch (err) {
        throw new VerificationError('entry.malformed', `entry ${start + i}: ${(err as Error).message}`);
      }
    });
    const entries = this.store.readsChunks ? [] : data.map((d, i) => indexedEntry(d, layouts[i], start + i));
    const next: LogRecord = {
      ...rec,
      size: end,
      frontier: [...frontier.values()].sort((a, b) => a.level - b.level) as FrontierTile[],
    };
    await this.store.append(this.id, entries, next, {
      start,
      data,
      layouts,
      leaves,
      tiles: written,
      root: ours,
    });
    this.status.size = end;
    return next;
  }
}

/** The entry `d` of the log at `index`, its fields as views into `d` (its layout is `l`). */
function indexedEntry(d: Buffer, l: EntryLayout, index: number): IndexedEntry {
  return {
    protocol: d.toString('latin1', l.protocolAt, l.protocolAt + l.protocolLength),
    key: d.subarray(l.keyAt, l.keyAt + l.keyLength),
    value: d.subarray(l.valueAt, l.valueAt + l.valueLength),
    index,
  };
}

/** Follows every log of a config, each in its own loop. */
export class Follower {
  readonly logs: LogFollower[];
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;

  constructor(
    logs: readonly LogConfig[],
    store: FollowStore,
    opts: FollowOptions & { intervalMs?: number } = {},
  ) {
    this.logs = logs.map((cfg) => new LogFollower(cfg, store, opts));
    this.intervalMs = opts.intervalMs ?? 5000;
  }

  private readonly intervalMs: number;

  /** One round over every log, all at once. */
  async pollAll(): Promise<void> {
    await Promise.all(this.logs.map((l) => l.poll()));
  }

  /** Polls now and then every `intervalMs` after the previous round ended. */
  start(): void {
    const round = () => {
      if (this.stopped) return;
      this.running = this.pollAll().then(() => {
        if (!this.stopped) this.timer = setTimeout(round, this.intervalMs);
      });
    };
    round();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
    await Promise.all(this.logs.map((l) => l.close()));
  }

  statuses(): LogStatus[] {
    return this.logs.map((l) => l.snapshot());
  }
}
