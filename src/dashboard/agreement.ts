/**
 * Agreement figures over the index: every key that at least two followed logs hold, whether they
 * all hold the same value, what the configured procedure decides from the indexed (verified)
 * values, pairwise agreement between logs, and the keys they disagree on.
 */
import { isUtf8 } from 'node:buffer';
import { type ProcedureSpec, procedureFor } from '../decide/config.js';
import { type Decider, decideWith, type LogResult } from '../decide/decide.js';
import type { LogStatus } from './follow.js';
import { type DashboardStore, decodeHeld, splitKey } from './store.js';

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
function scripted(spec: ProcedureSpec): boolean {
  return spec.type === 'lua' || spec.type === 'js' || (spec.type === 'chain' && spec.steps.some(scripted));
}

/**
 * Computes the figures from the index; logs never indexed count as failed, not as absent. A
 * built-in procedure sees only which logs agree with which, so its outcome is computed once per
 * pattern of answers (e.g. "0,0,1,-") and reused; a script procedure runs for every key.
 */
export async function computeAgreement(
  store: DashboardStore,
  logs: readonly LogStatus[],
  decider: Decider,
): Promise<Agreement> {
  const n = logs.length;
  const bySlot = new Map(logs.map((l, i) => [store.slot(l.id), i]));
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
  const memo = new Map<string, number | undefined>();
  const values: Array<Buffer | undefined> = new Array(n);
  /** Per log: the class of its value (equal values, equal class), or -1 absent, -2 not indexed. */
  const cls: number[] = new Array(n);

  /** The winning class, if the procedure decides; `hex` gives each class's value as the procedure sees it. */
  const decide = async (
    protocol: string,
    text: string,
    hex: readonly string[],
  ): Promise<number | undefined> => {
    const results: LogResult[] = logs.map((l, i) => {
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
      return { ...base, status: 'absent', size: l.size };
    });
    const d = await decideWith(decider.procedure(protocol), results, weights, protocol, text);
    if (!d.decided) return undefined;
    const w = hex.indexOf(d.value ?? '');
    return w < 0 ? undefined : w;
  };

  for (const { key, value } of store.allKeys()) {
    values.fill(undefined);
    let held = 0;
    for (const h of decodeHeld(value)) {
      const i = bySlot.get(h.slot);
      if (i !== undefined) {
        values[i] = h.value;
        held++;
      }
    }
    if (held < 2) continue;
    out.keys++;
    const reps: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      const v = values[i];
      if (v === undefined) {
        cls[i] = logs[i].size === 0 ? -2 : -1;
        continue;
      }
      let c = reps.findIndex((r) => r.equals(v));
      if (c < 0) c = reps.push(v) - 1;
      cls[i] = c;
    }
    for (let i = 0; i < n; i++) {
      if (cls[i] < 0) continue;
      for (let j = i + 1; j < n; j++) {
        if (cls[j] < 0) continue;
        const eq = cls[i] === cls[j] ? 1 : 0;
        matrix[i][j].both++;
        matrix[j][i].both++;
        matrix[i][j].same += eq;
        matrix[j][i].same += eq;
      }
    }
    const same = reps.length === 1;
    if (same) out.agree++;
    const { protocol, key: k } = splitKey(key);
    let winner: number | undefined;
    if (scripted(procedureFor(decider.config, protocol).spec)) {
      winner = await decide(
        protocol,
        keyText(k),
        reps.map((r) => r.toString('hex')),
      );
    } else {
      const pattern = `${protocol}\0${cls.join(',')}`;
      if (memo.has(pattern)) winner = memo.get(pattern);
      else {
        // the values stand for their classes: a built-in procedure only compares them
        winner = await decide(
          protocol,
          '',
          reps.map((_, c) => c.toString(16).padStart(64, '0')),
        );
        memo.set(pattern, winner);
      }
    }
    if (winner !== undefined) out.decided++;
    else out.undecided++;
    if (!same) {
      const row: DisagreeingKey = { protocol, key: keyText(k), values: {}, logs: held };
      logs.forEach((l, i) => {
        row.values[l.name] = values[i]?.toString('hex') ?? null;
      });
      if (winner !== undefined) row.decided = reps[winner].toString('hex');
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
