/**
 * Agreement figures over the index: every key that at least two followed logs hold, whether they
 * all hold the same value, what the configured procedure decides from the indexed (verified)
 * values, pairwise agreement between logs, and the keys they disagree on.
 */
import { isUtf8 } from 'node:buffer';
import { type ProcedureSpec, procedureFor } from '../decide/config.js';
import { type Decider, decideWith, type LogResult } from '../decide/decide.js';
import type { Rat } from '../decide/rational.js';
import type { LogStatus } from './follow.js';
import { type DashboardStore, decodeHeld, parseShape, splitKey } from './store.js';

export interface DisagreeingKey {
  protocol: string;
  /** The key as text (UTF-8), or `hex:` and its bytes in hex. */
  key: string;
  /** Per configured log name: its value (hex), or null when it does not hold the key. */
  values: Record<string, string | null>;
  /** The value the procedure decides, when it decides. */
  decided?: string;
  logs: number;
}

export interface Agreement {
  logs: string[];
  /** Keys held by at least two logs. */
  keys: number;
  /** Of those: every log holding the key holds the same value. */
  agree: number;
  /** Of those: the configured procedure decides. */
  decided: number;
  undecided: number;
  /** matrix[i][j]: keys both logs hold, and of those how many with the same value. */
  matrix: Array<Array<{ both: number; same: number }>>;
  disagreeing: DisagreeingKey[];
}

export function keyText(key: Buffer): string {
  return isUtf8(key) ? key.toString('utf8') : `hex:${key.toString('hex')}`;
}

/** Whether a procedure runs a script, which may look at keys and values themselves. */
export function scripted(spec: ProcedureSpec): boolean {
  return spec.type === 'lua' || spec.type === 'js' || (spec.type === 'chain' && spec.steps.some(scripted));
}

/** One key as the configured logs hold it. */
export interface Classified {
  /** Per log: its value, or undefined. */
  values: Array<Buffer | undefined>;
  /** Per log: the class of its value (equal values, equal class), -1 absent, -2 not indexed. */
  cls: number[];
  /** The value of each class. */
  reps: Buffer[];
  /** Logs holding the key. */
  held: number;
}

/**
 * What the figures of one set of logs need: which slot is which log, the procedures, and the
 * outcome of a built-in procedure per pattern of answers (e.g. "0,0,1,-1"), computed once each.
 */
export class Figures {
  private readonly bySlot: Map<number, number>;
  private readonly weights: Map<string, Rat>;
  private readonly memo = new Map<string, number | undefined>();
  private readonly scriptedProtocols = new Map<string, boolean>();

  constructor(
    store: DashboardStore,
    readonly logs: readonly LogStatus[],
    readonly decider: Decider,
  ) {
    this.bySlot = new Map(logs.map((l, i) => [store.slot(l.id), i]));
    this.weights = new Map(decider.config.logs.map((l) => [l.name, l.weight]));
  }

  /** Whether the procedure of `protocol` runs a script. */
  scripted(protocol: string): boolean {
    let s = this.scriptedProtocols.get(protocol);
    if (s === undefined) {
      s = scripted(procedureFor(this.decider.config, protocol).spec);
      this.scriptedProtocols.set(protocol, s);
    }
    return s;
  }

  /** `cls` for a log that does not hold the key: absent, or not indexed when it has no entries. */
  private missing(i: number): number {
    return this.logs[i].size === 0 ? -2 : -1;
  }

  /** A key record as the configured logs hold it. */
  classify(rec: Buffer): Classified {
    const n = this.logs.length;
    const values: Array<Buffer | undefined> = new Array(n).fill(undefined);
    let held = 0;
    for (const h of decodeHeld(rec)) {
      const i = this.bySlot.get(h.slot);
      if (i !== undefined) {
        values[i] = h.value;
        held++;
      }
    }
    const reps: Buffer[] = [];
    const cls = values.map((v, i) => {
      if (v === undefined) return this.missing(i);
      const c = reps.findIndex((r) => r.equals(v));
      return c < 0 ? reps.push(v) - 1 : c;
    });
    return { values, cls, reps, held };
  }

  /** A shape of the index (store.shapeOf) as the configured logs hold it: `cls` and the number of classes. */
  project(classes: ReadonlyMap<number, number>): { cls: number[]; held: number; classes: number } {
    const renumber = new Map<number, number>();
    let held = 0;
    const cls = this.logs.map((_, i) => i);
    for (let i = 0; i < cls.length; i++) cls[i] = this.missing(i);
    for (const [slot, i] of [...this.bySlot].sort((a, b) => a[1] - b[1])) {
      const c = classes.get(slot);
      if (c === undefined) continue;
      let r = renumber.get(c);
      if (r === undefined) {
        r = renumber.size;
        renumber.set(c, r);
      }
      cls[i] = r;
      held++;
    }
    return { cls, held, classes: renumber.size };
  }

  /** The winning class, if the procedure decides; `hex` gives each class's value as the procedure sees it. */
  async decide(
    protocol: string,
    text: string,
    cls: readonly number[],
    hex: readonly string[],
  ): Promise<number | undefined> {
    const results: LogResult[] = this.logs.map((l, i) => {
      const base = { name: l.name, origin: l.origin, vkey: '', weight: '', ms: 0 };
      if (cls[i] >= 0) return { ...base, status: 'present', value: hex[cls[i]] };
      if (cls[i] === -2) {
        return {
          ...base,
          status: 'failed',
          check: 'dashboard.not-indexed',
          reason: 'no entries indexed yet',
        };
      }
      // no size: a script's outcome then depends on the key and the values only, so it is
      // decided again when they change (scripted.ts), not whenever a log grows
      return { ...base, status: 'absent' };
    });
    const d = await decideWith(this.decider.procedure(protocol), results, this.weights, protocol, text);
    if (!d.decided) return undefined;
    const w = hex.indexOf(d.value ?? '');
    return w < 0 ? undefined : w;
  }

  /** The winning class of a built-in procedure, once per pattern. */
  async builtIn(protocol: string, cls: readonly number[], classes: number): Promise<number | undefined> {
    const pattern = `${protocol}\0${cls.join(',')}`;
    if (this.memo.has(pattern)) return this.memo.get(pattern);
    // the values stand for their classes: a built-in procedure only compares them
    const hex = Array.from({ length: classes }, (_, c) => c.toString(16).padStart(64, '0'));
    const winner = await this.decide(protocol, '', cls, hex);
    this.memo.set(pattern, winner);
    return winner;
  }

  /** The winning class of the configured procedure for one key. */
  async winner(protocol: string, key: Buffer, k: Classified): Promise<number | undefined> {
    if (!this.scripted(protocol)) return this.builtIn(protocol, k.cls, k.reps.length);
    return this.decide(
      protocol,
      keyText(key),
      k.cls,
      k.reps.map((r) => r.toString('hex')),
    );
  }

  /** The row of a disagreeing key. */
  row(protocol: string, key: Buffer, k: Classified, decided: Buffer | undefined): DisagreeingKey {
    const row: DisagreeingKey = { protocol, key: keyText(key), values: {}, logs: k.held };
    this.logs.forEach((l, i) => {
      row.values[l.name] = k.values[i]?.toString('hex') ?? null;
    });
    if (decided !== undefined) row.decided = decided.toString('hex');
    return row;
  }

  /** The pairwise counts of one key (or `n` keys of one pattern) added to `matrix`. */
  static addPairs(matrix: Agreement['matrix'], cls: readonly number[], n: number): void {
    for (let i = 0; i < cls.length; i++) {
      if (cls[i] < 0) continue;
      for (let j = i + 1; j < cls.length; j++) {
        if (cls[j] < 0) continue;
        const eq = cls[i] === cls[j] ? n : 0;
        matrix[i][j].both += n;
        matrix[j][i].both += n;
        matrix[i][j].same += eq;
        matrix[j][i].same += eq;
      }
    }
  }

  empty(): Agreement {
    return {
      logs: this.logs.map((l) => l.name),
      keys: 0,
      agree: 0,
      decided: 0,
      undecided: 0,
      matrix: this.logs.map(() => this.logs.map(() => ({ both: 0, same: 0 }))),
      disagreeing: [],
    };
  }
}

/**
 * Computes the figures by a scan of `records` (default: the whole index); logs never indexed
 * count as failed, not as absent. A script procedure runs for every key. The reference for the
 * figures kept as entries are indexed (indexAgreement), and the figures of a package set.
 */
export async function computeAgreement(
  store: DashboardStore,
  logs: readonly LogStatus[],
  decider: Decider,
  records: Iterable<{ key: Buffer; value: Buffer }> = store.allKeys(),
): Promise<Agreement> {
  const f = new Figures(store, logs, decider);
  const out = f.empty();
  for (const { key, value } of records) {
    const k = f.classify(value);
    if (k.held < 2) continue;
    out.keys++;
    Figures.addPairs(out.matrix, k.cls, 1);
    const same = k.reps.length === 1;
    if (same) out.agree++;
    const { protocol, key: kb } = splitKey(key);
    const winner = await f.winner(protocol, kb, k);
    if (winner !== undefined) out.decided++;
    else out.undecided++;
    if (!same)
      out.disagreeing.push(f.row(protocol, kb, k, winner === undefined ? undefined : k.reps[winner]));
  }
  return out;
}

/** What script procedures have decided so far (scripted.ts). */
export interface ScriptFigures {
  decided: number;
  undecided: number;
  /** The decided value of a key, undefined when undecided or not decided yet. */
  decisionOf(key: Buffer): Buffer | undefined;
}

/**
 * The same figures from what the index keeps as entries are indexed: the number of keys of each
 * shape (built-in procedures run once per shape), the records of the disagreeing keys, and for
 * script procedures their decisions so far. No scan of the whole index.
 */
export async function indexAgreement(
  store: DashboardStore,
  logs: readonly LogStatus[],
  decider: Decider,
  scripts: ScriptFigures,
): Promise<Agreement> {
  const f = new Figures(store, logs, decider);
  const out = f.empty();
  for (const [shape, n] of Object.entries(store.patterns())) {
    const { protocol, classes } = parseShape(shape);
    const p = f.project(classes);
    if (p.held < 2) continue;
    out.keys += n;
    Figures.addPairs(out.matrix, p.cls, n);
    if (p.classes === 1) out.agree += n;
    if (f.scripted(protocol)) continue;
    if ((await f.builtIn(protocol, p.cls, p.classes)) !== undefined) out.decided += n;
    else out.undecided += n;
  }
  out.decided += scripts.decided;
  out.undecided += scripts.undecided;
  for (const { key, value } of store.disagreeing()) {
    const k = f.classify(value);
    if (k.held < 2 || k.reps.length < 2) continue;
    const { protocol, key: kb } = splitKey(key);
    let decided: Buffer | undefined;
    if (f.scripted(protocol)) decided = scripts.decisionOf(key);
    else {
      const w = await f.builtIn(protocol, k.cls, k.reps.length);
      if (w !== undefined) decided = k.reps[w];
    }
    out.disagreeing.push(f.row(protocol, kb, k, decided));
  }
  return out;
}

export type DisagreementSort = 'key' | '-key' | 'logs' | '-logs' | 'decided';

/** The disagreeing keys of computed figures in each order asked so far. */
const sortedRows = new WeakMap<readonly DisagreeingKey[], Map<DisagreementSort, DisagreeingKey[]>>();

/** One page of the disagreeing keys in the asked order (each order sorted once per list). */
export function pageOf(
  rows: readonly DisagreeingKey[],
  sort: DisagreementSort,
  page: number,
  per: number,
): DisagreeingKey[] {
  let orders = sortedRows.get(rows);
  if (!orders) {
    orders = new Map();
    sortedRows.set(rows, orders);
  }
  let sorted = orders.get(sort);
  if (!sorted) {
    sorted = sortRows(rows, sort);
    orders.set(sort, sorted);
  }
  return sorted.slice(page * per, page * per + per);
}

function sortRows(rows: readonly DisagreeingKey[], sort: DisagreementSort): DisagreeingKey[] {
  const sorted = [...rows];
  const byKey = (a: DisagreeingKey, b: DisagreeingKey) =>
    a.protocol === b.protocol
      ? a.key < b.key
        ? -1
        : a.key > b.key
          ? 1
          : 0
      : a.protocol < b.protocol
        ? -1
        : 1;
  switch (sort) {
    case 'key':
      sorted.sort(byKey);
      break;
    case '-key':
      sorted.sort((a, b) => byKey(b, a));
      break;
    case 'logs':
      sorted.sort((a, b) => a.logs - b.logs || byKey(a, b));
      break;
    case '-logs':
      sorted.sort((a, b) => b.logs - a.logs || byKey(a, b));
      break;
    case 'decided':
      sorted.sort((a, b) => Number(b.decided !== undefined) - Number(a.decided !== undefined) || byKey(a, b));
      break;
  }
  return sorted;
}
