/**
 * The dashboard's own embedded index (LMDB, `<state>/dashboard.mdb`): for every followed log, how
 * far it is indexed (size, the verified checkpoint of that size, the right edge of its Merkle tree
 * to extend and re-check it) and, for every key seen in any log, each log's latest value there.
 *
 * Layout: `logs` (log id -> LogRecord), `meta` (`slots` -> { log id: slot }), `keys` (protocol \0 key
 * bytes -> one binary record per log holding the key: slot (u16), value length (u8), value,
 * entry index (u48), all big-endian). A log id is the trust store's file stem (origin and
 * verifier key), so renaming a log in the config keeps its index, and another key starts afresh.
 * Binary records keep a scan of a million keys to a few hundred milliseconds.
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

/** One log's part of a key record: its slot, its value (a view), its entry index. */
export interface Held {
  slot: number;
  value: Buffer;
  index: number;
}

const MAX_HISTORY = 512;

export interface IndexedEntry {
  protocol: string;
  key: Uint8Array;
  value: Uint8Array;
  index: number;
}

/** The logs' parts of a key record. */
export function decodeHeld(rec: Buffer): Held[] {
  const out: Held[] = [];
  let off = 0;
  while (off < rec.length) {
    const slot = rec.readUInt16BE(off);
    const n = rec[off + 2];
    const value = rec.subarray(off + 3, off + 3 + n);
    out.push({ slot, value, index: rec.readUIntBE(off + 3 + n, 6) });
    off += 9 + n;
  }
  return out;
}

/** `rec` with the part of `slot` set to (value, index). */
function withHeld(rec: Buffer | undefined, slot: number, value: Uint8Array, index: number): Buffer {
  const kept = rec ? decodeHeld(rec).filter((h) => h.slot !== slot) : [];
  kept.push({ slot, value: Buffer.from(value.buffer, value.byteOffset, value.byteLength), index });
  const out = Buffer.allocUnsafe(kept.reduce((a, h) => a + 9 + h.value.length, 0));
  let off = 0;
  for (const h of kept) {
    off = out.writeUInt16BE(h.slot, off);
    out[off++] = h.value.length;
    off += h.value.copy(out, off);
    off = out.writeUIntBE(h.index, off, 6);
  }
  return out;
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
  private readonly keys: Database<Buffer, Buffer>;
  private readonly meta: Database<Record<string, number>, string>;
  private readonly slots: Record<string, number>;
  /** Bumped on every write, so derived figures know when to recompute. */
  generation = 0;

  private constructor(root: RootDatabase) {
    this.root = root;
    this.logs = root.openDB({ name: 'logs' });
    this.keys = root.openDB({ name: 'keys', keyEncoding: 'binary', encoding: 'binary' });
    this.meta = root.openDB({ name: 'meta' });
    this.slots = this.meta.get('slots') ?? {};
  }

  /** The slot of log `id` in key records, given on first use and kept. */
  slot(id: string): number {
    let s = this.slots[id];
    if (s === undefined) {
      s = Object.keys(this.slots).length;
      this.slots[id] = s;
      this.meta.putSync('slots', this.slots);
    }
    return s;
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
    const slot = this.slot(id);
    await this.keys.transaction(() => {
      for (const e of entries) {
        const k = keyBytes(e.protocol, e.key);
        this.keys.put(k, withHeld(this.keys.get(k), slot, e.value, e.index));
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

  /** Every key in key order, with its record (decodeHeld reads it). */
  *allKeys(): Iterable<{ key: Buffer; value: Buffer }> {
    for (const { key, value } of this.keys.getRange()) yield { key, value };
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}
