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
 *
 * `sets` (name -> PackageSet, sets.ts) holds the package sets and their history.
 *
 * Derived, in the same transaction as every chunk, so the agreement figures never need a scan:
 * `meta` `patterns` (the number of keys of each shape, see shapeOf) and `disagree` (the records of
 * keys two slots hold with different values). With `trackChanged`, `changed` lists the keys whose
 * record changed since a script procedure last decided them (scripted.ts).
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { type Database, open, type RootDatabase } from 'lmdb';
import { StorageError } from '../core/errors.js';
import type { PackageSet } from './sets.js';

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
/** Version of the derived figures (`patterns`, `disagree`); another version derives them again. */
const DERIVED = 1;
const EMPTY = Buffer.alloc(0);

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

/** A history of at most MAX_HISTORY points: the older half thinned, the newest points exact. */
export function thinned<T>(h: T[]): T[] {
  if (h.length <= MAX_HISTORY) return h;
  return [...h.slice(0, h.length >> 1).filter((_, i) => i % 2 === 0), ...h.slice(h.length >> 1)];
}

/**
 * The shape of a key record: `protocol \0 slot:class slot:class ...`, slots ascending, values
 * numbered by first appearance (equal values, equal class); undefined when fewer than two slots
 * hold the key. Built-in procedures see only this, so counting keys per shape is enough for every
 * figure but the list of disagreeing keys.
 */
export function shapeOf(protocol: string, rec: Buffer | undefined): string | undefined {
  if (rec === undefined) return undefined;
  const held = decodeHeld(rec);
  if (held.length < 2) return undefined;
  held.sort((a, b) => a.slot - b.slot);
  const reps: Buffer[] = [];
  const parts = held.map((h) => {
    let c = reps.findIndex((r) => r.equals(h.value));
    if (c < 0) c = reps.push(h.value) - 1;
    return `${h.slot}:${c}`;
  });
  return `${protocol}\0${parts.join(' ')}`;
}

/** A shape parsed back: its protocol and the class of each slot holding the key. */
export function parseShape(shape: string): { protocol: string; classes: Map<number, number> } {
  const z = shape.indexOf('\0');
  const classes = new Map<number, number>();
  for (const part of shape.slice(z + 1).split(' ')) {
    const [slot, c] = part.split(':');
    classes.set(Number(slot), Number(c));
  }
  return { protocol: shape.slice(0, z), classes };
}

/** Whether a shape has two classes (values) or more. */
function disagrees(shape: string | undefined): boolean {
  return shape !== undefined && /:[1-9]/.test(shape);
}

export function keyBytes(protocol: string, key: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(protocol, 'utf8'), Buffer.of(0), key]);
}

export function splitKey(k: Buffer): { protocol: string; key: Buffer } {
  const z = k.indexOf(0);
  return { protocol: k.subarray(0, z).toString('utf8'), key: k.subarray(z + 1) };
}

export interface StoreOptions {
  /** Record in `changed` every key whose record changes (for script procedures). */
  trackChanged?: boolean;
}

export class DashboardStore {
  private readonly root: RootDatabase;
  private readonly logs: Database<LogRecord, string>;
  private readonly keys: Database<Buffer, Buffer>;
  private readonly disagree: Database<Buffer, Buffer>;
  private readonly sets: Database<PackageSet, string>;
  /** Keys whose record changed since scripts decided them (only with trackChanged). */
  readonly changed: Database<Buffer, Buffer>;
  /** Script decisions (scripted.ts): key -> 1 byte decided or not, then the decided value. */
  readonly decisions: Database<Buffer, Buffer>;
  // biome-ignore lint/suspicious/noExplicitAny: records of several shapes, by name
  readonly meta: Database<any, string>;
  private readonly slots: Record<string, number>;
  private readonly trackChanged: boolean;
  /** Bumped on every write, so derived figures know when to recompute. */
  generation = 0;

  private constructor(root: RootDatabase, opts: StoreOptions) {
    this.root = root;
    this.trackChanged = opts.trackChanged ?? false;
    this.logs = root.openDB({ name: 'logs' });
    const binary = { keyEncoding: 'binary', encoding: 'binary' } as const;
    this.keys = root.openDB({ name: 'keys', ...binary });
    this.disagree = root.openDB({ name: 'disagree', ...binary });
    this.changed = root.openDB({ name: 'changed', ...binary });
    this.decisions = root.openDB({ name: 'decisions', ...binary });
    this.meta = root.openDB({ name: 'meta' });
    this.sets = root.openDB({ name: 'sets' });
    this.slots = this.meta.get('slots') ?? {};
    if (this.meta.get('derived') !== DERIVED) this.derive();
    // changes not tracked since: script decisions are stale, scripted.ts starts them over
    if (!this.trackChanged) this.meta.removeSync('scripted');
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

  static open(dir: string, opts: StoreOptions = {}): DashboardStore {
    try {
      mkdirSync(dir, { recursive: true });
      return new DashboardStore(
        open({ path: join(dir, 'dashboard.mdb'), maxDbs: 8, compression: false, mapSize: 1 << 30 }),
        opts,
      );
    } catch (err) {
      throw new StorageError(`cannot open the dashboard index in ${dir}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  /** Derives `patterns` and `disagree` from the keys (an index written before they existed). */
  private derive(): void {
    this.root.transactionSync(() => {
      const counts: Record<string, number> = {};
      this.disagree.clearSync();
      for (const { key, value } of this.keys.getRange()) {
        const shape = shapeOf(splitKey(key).protocol, value);
        if (shape === undefined) continue;
        counts[shape] = (counts[shape] ?? 0) + 1;
        if (disagrees(shape)) this.disagree.putSync(key, value);
      }
      this.meta.putSync('patterns', counts);
      this.meta.putSync('derived', DERIVED);
    });
  }

  log(id: string): LogRecord {
    return this.logs.get(id) ?? { size: 0, frontier: [], history: [] };
  }

  /** The number of keys of each shape (shapeOf) that two slots or more hold. */
  patterns(): Record<string, number> {
    return this.meta.get('patterns') ?? {};
  }

  /**
   * Records `entries` of log `id` and its new state in one transaction: the index never holds
   * entries beyond the verified size it records. The derived figures move with it.
   */
  async append(id: string, entries: readonly IndexedEntry[], next: LogRecord): Promise<void> {
    const slot = this.slot(id);
    await this.keys.transaction(() => {
      const delta = new Map<string, number>();
      const add = (shape: string, n: number) => delta.set(shape, (delta.get(shape) ?? 0) + n);
      for (const e of entries) {
        const k = keyBytes(e.protocol, e.key);
        const old = this.keys.get(k);
        const rec = withHeld(old, slot, e.value, e.index);
        this.keys.put(k, rec);
        const before = shapeOf(e.protocol, old);
        const after = shapeOf(e.protocol, rec);
        if (before !== after) {
          if (before !== undefined) add(before, -1);
          if (after !== undefined) add(after, 1);
        }
        if (disagrees(after)) this.disagree.put(k, rec);
        else if (disagrees(before)) this.disagree.remove(k);
        if (this.trackChanged && (old === undefined || !old.equals(rec))) this.changed.put(k, EMPTY);
      }
      if (delta.size > 0) {
        const counts = this.patterns();
        for (const [shape, n] of delta) {
          const c = (counts[shape] ?? 0) + n;
          if (c === 0) delete counts[shape];
          else counts[shape] = c;
        }
        this.meta.put('patterns', counts);
      }
      const h = next.history;
      if (h.length === 0 || h[h.length - 1][1] !== next.size) h.push([Date.now(), next.size]);
      next.history = thinned(h);
      this.logs.put(id, next);
    });
    this.generation++;
  }

  /** The record of one key (decodeHeld reads it). */
  record(key: Buffer): Buffer | undefined {
    return this.keys.get(key);
  }

  /** Every key in key order, with its record (decodeHeld reads it), from `start` on. */
  *allKeys(start?: Buffer, limit?: number): Iterable<{ key: Buffer; value: Buffer }> {
    const range = this.keys.getRange({
      ...(start !== undefined ? { start } : {}),
      ...(limit !== undefined ? { limit } : {}),
    });
    for (const { key, value } of range) yield { key, value };
  }

  /** Every key two slots hold with different values, in key order, with its record. */
  *disagreeing(): Iterable<{ key: Buffer; value: Buffer }> {
    for (const { key, value } of this.disagree.getRange()) yield { key, value };
  }

  /** The first `limit` keys of `changed`. */
  *changedKeys(limit: number): Iterable<Buffer> {
    for (const key of this.changed.getKeys({ limit })) yield Buffer.from(key);
  }

  /** Keys in the whole index. */
  keyCount(): number {
    return (this.keys.getStats() as { entryCount: number }).entryCount;
  }

  set(name: string): PackageSet | undefined {
    return this.sets.get(name);
  }

  allSets(): PackageSet[] {
    return [...this.sets.getRange()].map((r) => r.value);
  }

  async putSet(set: PackageSet): Promise<void> {
    await this.sets.put(set.name, set);
  }

  async removeSet(name: string): Promise<void> {
    await this.sets.remove(name);
  }

  /** Runs `fn` in one write transaction and counts it as a change. */
  async write(fn: () => void): Promise<void> {
    await this.root.transaction(fn);
    this.generation++;
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}
