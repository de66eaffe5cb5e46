/**
 * Package sets: a named set of keys (a closure's store paths, e.g. `nix-store -qR` output) with
 * the agreement figures of just those keys and their history as the logs grow. Sets come from an
 * upload (the page, `PUT /api/sets/NAME`) or from `trustix dashboard --set NAME=FILE`, and are
 * kept in the index with their history.
 */
import { FormatError } from '../core/errors.js';
import { parseStorePath } from '../nix/store-path.js';
import type { Agreement } from './agreement.js';
import { type DashboardStore, keyBytes, thinned } from './store.js';

/** A history point: [ms since the epoch, keys held by two logs or more, agree, decided, undecided]. */
export type SetPoint = [number, number, number, number, number];

export interface PackageSet {
  name: string;
  protocol: string;
  /** The keys, as text (under nix: hash parts), sorted, without repeats. */
  keys: string[];
  source: 'upload' | 'config';
  createdAt: number;
  history: SetPoint[];
}

/** Most keys in one set. */
export const MAX_SET_KEYS = 1_000_000;
/** Whether `s` has a control character, or with `spaces` a white space. */
function controlOrSpace(s: string, spaces: boolean): boolean {
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (c < 0x20 || c === 0x7f || (spaces && /\s/.test(ch))) return true;
  }
  return false;
}

export function checkSetName(name: string): void {
  const length = [...name].length;
  if (
    length < 1 ||
    length > 100 ||
    /[/\\]/.test(name) ||
    controlOrSpace(name, false) ||
    name.trim() !== name
  ) {
    throw new FormatError(
      `a set name is 1-100 characters, without "/", "\\", control characters or surrounding spaces, got ${JSON.stringify(name.slice(0, 120))}`,
    );
  }
}

/** A search text as a key: under nix a store path (or a path inside one) stands for its hash part. */
export function searchKey(protocol: string, q: string): string {
  const s = q.trim();
  if (protocol === 'nix' && s.startsWith('/nix/store/')) {
    return parseStorePath(s.split('/').slice(0, 4).join('/')).hashPart;
  }
  return s;
}

/**
 * The keys of a set file: one a line, blank lines and `#` comments skipped. Under nix a store path
 * (or a path inside one) stands for its hash part, as the Nix protocol keys a path by it; any other
 * line is a key as it is (a hash part, say). A line with spaces or control characters is refused:
 * it is not a key, and most likely the file is not a list of paths (e.g. `nix path-info -S`).
 */
export function parseSetFile(text: string, protocol: string): string[] {
  const keys = new Set<string>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    try {
      const key = searchKey(protocol, line);
      if (controlOrSpace(key, true)) throw new FormatError('a key has no spaces or control characters');
      if (Buffer.byteLength(key) > 1024) throw new FormatError('a key is at most 1024 bytes');
      keys.add(key);
    } catch (err) {
      const shown = line.length > 80 ? `${line.slice(0, 80)}…` : line;
      throw new FormatError(
        `line ${i + 1}: ${JSON.stringify(shown)} is not a ${protocol === 'nix' ? 'store path or key' : 'key'} (${(err as Error).message})`,
      );
    }
    if (keys.size > MAX_SET_KEYS) throw new FormatError(`a set holds at most ${MAX_SET_KEYS} keys`);
  });
  if (keys.size === 0) throw new FormatError('the set file lists no store path or key');
  return [...keys].sort();
}

export class PackageSets {
  /** Figures per set name, of one generation of the index. */
  private readonly cache = new Map<string, { generation: number; value: Promise<Agreement> }>();

  constructor(
    private readonly store: DashboardStore,
    /** The agreement figures of some records of the index (agreement.ts computeAgreement). */
    private readonly compute: (records: Iterable<{ key: Buffer; value: Buffer }>) => Promise<Agreement>,
  ) {}

  list(): PackageSet[] {
    return this.store.allSets();
  }

  get(name: string): PackageSet | undefined {
    return this.store.set(name);
  }

  /** Adds or replaces a set; a replaced set keeps its history when its keys are the same. */
  async put(set: Omit<PackageSet, 'createdAt' | 'history'>): Promise<PackageSet> {
    const old = this.store.set(set.name);
    const same = old !== undefined && old.keys.join('\n') === set.keys.join('\n');
    const next: PackageSet = {
      ...set,
      createdAt: same ? old.createdAt : Date.now(),
      history: same ? old.history : [],
    };
    this.cache.delete(set.name);
    await this.store.putSet(next);
    await this.record(next);
    return next;
  }

  async remove(name: string): Promise<void> {
    this.cache.delete(name);
    await this.store.removeSet(name);
  }

  /** The figures of a set's keys now (cached while the index does not change). */
  figures(set: PackageSet): Promise<Agreement> {
    const generation = this.store.generation;
    const c = this.cache.get(set.name);
    if (c && c.generation === generation) return c.value;
    const store = this.store;
    function* records() {
      for (const k of set.keys) {
        const key = keyBytes(set.protocol, Buffer.from(k, 'utf8'));
        const value = store.record(key);
        if (value !== undefined) yield { key, value };
      }
    }
    const value = this.compute(records());
    value.catch(() => this.cache.delete(set.name));
    this.cache.set(set.name, { generation, value });
    return value;
  }

  /** Adds a point to a set's history when its figures changed since the last one. */
  async record(set: PackageSet): Promise<void> {
    const a = await this.figures(set);
    const point: SetPoint = [Date.now(), a.keys, a.agree, a.decided, a.undecided];
    const last = set.history.at(-1);
    if (last && last.slice(1).join() === point.slice(1).join()) return;
    const now = this.store.set(set.name);
    if (!now || now.keys.join('\n') !== set.keys.join('\n')) return;
    await this.store.putSet({ ...now, history: thinned([...now.history, point]) });
  }

  /** Records every set's figures (the dashboard does after each poll that changed the index). */
  async recordAll(): Promise<void> {
    for (const set of this.list()) await this.record(set);
  }
}
