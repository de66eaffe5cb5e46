/**
 * The dashboard's own embedded index (LMDB, `<state>/dashboard.mdb`): for every followed log, how
 * far it is indexed (size, the verified checkpoint of that size, the right edge of its Merkle tree
 * to extend and re-check it) and, for every key seen in any log, each log's latest value there.
 *
 * Layout: `logs` (log id -> LogRecord), `keys` (protocol \0 key bytes -> { log id: [value hex,
 * entry index] }). A log id is the trust store's file stem (origin and verifier key), so renaming
 * a log in the config keeps its index, and another key starts afresh.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { type Database, open, type RootDatabase } from 'lmdb';
import { StorageError } from '../core/errors.js';

export interface FrontierTile {
  level: number;
  index: number;
  width: number;
  expanded: Uint8Array;
}

export interface LogRecord {
  /** Entries indexed, all verified against `note`. */
  size: number;
  /** The signed checkpoint of `size` (absent while nothing is indexed). */
  note?: string;
  /** When a checkpoint of a new size was first verified, ms since the epoch. */
  seenAt?: number;
  /** The rightmost expanded tile of each tile level of the tree of `size`. */
  frontier: FrontierTile[];
  /** [ms since the epoch, size] whenever the indexed size changed; thinned to MAX_HISTORY points. */
  history: Array<[number, number]>;
}

/** Per key: log id -> [value hex, entry index]. */
export type KeyRecord = Record<string, [string, number]>;

const MAX_HISTORY = 512;

export interface IndexedEntry {
  protocol: string;
  key: Uint8Array;
  value: string;
  index: number;
}

export function keyBytes(protocol: string, key: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(protocol, 'utf8'), Buffer.of(0), key]);
}

export function splitKey(k: Buffer): { protocol: string; key: Buffer } {
  const z = k.indexOf(0);
  return { protocol: k.subarray(0, z).toString('utf8'), key: k.subarray(z + 1) };
}

export class DashboardStore {
  private readonly root: RootDatabase;
  private readonly logs: Database<LogRecord, string>;
  private readonly keys: Database<KeyRecord, Buffer>;
  /** Bumped on every write, so derived figures know when to recompute. */
  generation = 0;

  private constructor(root: RootDatabase) {
    this.root = root;
    this.logs = root.openDB({ name: 'logs' });
    this.keys = root.openDB({ name: 'keys', keyEncoding: 'binary' });
  }

  static open(dir: string): DashboardStore {
    try {
      mkdirSync(dir, { recursive: true });
      return new DashboardStore(
        open({ path: join(dir, 'dashboard.mdb'), maxDbs: 4, compression: false, mapSize: 1 << 30 }),
      );
    } catch (err) {
      throw new StorageError(`cannot open the dashboard index in ${dir}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  log(id: string): LogRecord {
    return this.logs.get(id) ?? { size: 0, frontier: [], history: [] };
  }

  /**
   * Records `entries` of log `id` and its new state in one transaction: the index never holds
   * entries beyond the verified size it records.
   */
  async append(id: string, entries: readonly IndexedEntry[], next: LogRecord): Promise<void> {
    await this.keys.transaction(() => {
      for (const e of entries) {
        const k = keyBytes(e.protocol, e.key);
        const rec = this.keys.get(k) ?? {};
        rec[id] = [e.value, e.index];
        this.keys.put(k, rec);
      }
      const h = next.history;
      if (h.length === 0 || h[h.length - 1][1] !== next.size) h.push([Date.now(), next.size]);
      // thin the older half, keep the newest points exact
      if (h.length > MAX_HISTORY)
        next.history = [
          ...h.slice(0, h.length >> 1).filter((_, i) => i % 2 === 0),
          ...h.slice(h.length >> 1),
        ];
      this.logs.put(id, next);
    });
    this.generation++;
  }

  get(protocol: string, key: Uint8Array): KeyRecord | undefined {
    return this.keys.get(keyBytes(protocol, key));
  }

  /** Every key in key order. */
  *allKeys(): Iterable<{ key: Buffer; value: KeyRecord }> {
    for (const { key, value } of this.keys.getRange()) yield { key, value };
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}
