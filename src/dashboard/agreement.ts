/**
 * Agreement figures over the index: every key that at least two followed logs hold, whether they
 * all hold the same value, what the configured procedure decides from the indexed (verified)
 * values, pairwise agreement between logs, and the keys they disagree on.
 */
import { isUtf8 } from 'node:buffer';
import { type Decider, decideWith, type LogResult } from '../decide/decide.js';
import type { LogStatus } from './follow.js';
import { type DashboardStore, splitKey } from './store.js';

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

/** Computes the figures from the index; logs never indexed count as failed, not as absent. */
export async function computeAgreement(
  store: DashboardStore,
  logs: readonly LogStatus[],
  decider: Decider,
): Promise<Agreement> {
  const n = logs.length;
  const byId = new Map(logs.map((l, i) => [l.id, i]));
  const matrix = logs.map(() => logs.map(() => ({ both: 0, same: 0 })));
  const weights = new Map(decider.config.logs.map((l) => [l.name, l.weight]));
  const out: Agreement = {
    logs: logs.map((l) => l.name),
    keys: 0,
    agree: 0,
    decided: 0,
    undecided: 0,
    matrix,
    disagreeing: [],
  };
  const values: Array<string | undefined> = new Array(n);
  for (const { key, value } of store.allKeys()) {
    values.fill(undefined);
    let held = 0;
    for (const [id, v] of Object.entries(value)) {
      const i = byId.get(id);
      if (i !== undefined) {
        values[i] = v[0];
        held++;
      }
    }
    if (held < 2) continue;
    out.keys++;
    let same = true;
    for (let i = 0; i < n; i++) {
      if (values[i] === undefined) continue;
      for (let j = i + 1; j < n; j++) {
        if (values[j] === undefined) continue;
        const eq = values[i] === values[j];
        if (!eq) same = false;
        for (const [a, b] of [
          [i, j],
          [j, i],
        ]) {
          matrix[a][b].both++;
          if (eq) matrix[a][b].same++;
        }
      }
    }
    if (same) out.agree++;
    const { protocol, key: k } = splitKey(key);
    const text = keyText(k);
    const results: LogResult[] = logs.map((l, i) => {
      const base = { name: l.name, origin: l.origin, vkey: '', weight: '', ms: 0 };
      if (values[i] !== undefined) return { ...base, status: 'present', value: values[i] };
      if (l.size === 0) {
        return {
          ...base,
          status: 'failed',
          check: 'dashboard.not-indexed',
          reason: 'no entries indexed yet',
        };
      }
      return { ...base, status: 'absent', size: l.size };
    });
    const d = await decideWith(decider.procedure(protocol), results, weights, protocol, text);
    if (d.decided) out.decided++;
    else out.undecided++;
    if (!same) {
      const row: DisagreeingKey = { protocol, key: text, values: {}, logs: held };
      logs.forEach((l, i) => {
        row.values[l.name] = values[i] ?? null;
      });
      if (d.decided && d.value !== undefined) row.decided = d.value;
      out.disagreeing.push(row);
    }
  }
  return out;
}

export type DisagreementSort = 'key' | '-key' | 'logs' | '-logs' | 'decided';

/** One page of the disagreeing keys in the asked order. */
export function pageOf(
  rows: readonly DisagreeingKey[],
  sort: DisagreementSort,
  page: number,
  per: number,
): DisagreeingKey[] {
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
  return sorted.slice(page * per, page * per + per);
}
