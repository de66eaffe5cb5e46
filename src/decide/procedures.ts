/**
 * Decision procedures (docs/deciding.md). A procedure sees the classified answers of every
 * configured log for one key and decides a value, or decides nothing. Only values that a log
 * proved present can win: an absent answer counts in a base but never for a value, and a failed
 * log (unreachable, timed out, lied) never counts as absent or as agreeing.
 */
import { add, cmp, formatRat, mul, type Rat, rat, toNumber, ZERO } from './rational.js';

export type AnswerStatus = 'present' | 'absent' | 'failed';

/** One log's classified answer, as procedures (and scripts) see it. */
export interface Answer {
  name: string;
  weight: Rat;
  status: AnswerStatus;
  /** Lower-case hex of the value digest, when present. */
  value?: string;
  /** Why it failed: the failed check ('trust.rollback', 'http.timeout'...) and a message. */
  check?: string;
  reason?: string;
}

export interface Query {
  protocol: string;
  key: string;
}

export interface Outcome {
  decided: boolean;
  value?: string;
  /** 0..1: the share of the base that agreed (built-ins), or what a script said. */
  confidence?: number;
  /** Which procedure (step) produced this outcome. */
  procedure: string;
  /** Why it decided, or why not. */
  reason: string;
  /** A procedure (script) that failed: its check and message. It decided nothing. */
  error?: { check: string; message: string };
  /** For chains: every step that ran, in order. */
  steps?: Outcome[];
}

export interface Procedure {
  readonly name: string;
  run(answers: readonly Answer[], query: Query): Outcome | Promise<Outcome>;
  close?(): Promise<void>;
}

/** Built-ins answer at once. */
export interface SyncProcedure extends Procedure {
  run(answers: readonly Answer[], query: Query): Outcome;
}

export type Base = 'configured' | 'responding';

function undecided(procedure: string, reason: string): Outcome {
  return { decided: false, procedure, reason };
}

/**
 * The value with the largest tally among those whose tally reaches the threshold; a tie for the
 * top decides nothing.
 */
function pick(
  tallies: Map<string, Rat>,
  meets: (t: Rat) => boolean,
): { value: string; tally: Rat } | { tie: string[] } | undefined {
  let best: { value: string; tally: Rat } | undefined;
  let tied: string[] = [];
  for (const [value, tally] of tallies) {
    if (!meets(tally)) continue;
    const c = best ? cmp(tally, best.tally) : 1;
    if (c > 0) {
      best = { value, tally };
      tied = [];
    } else if (c === 0) tied.push(value);
  }
  if (!best) return undefined;
  if (tied.length > 0) return { tie: [best.value, ...tied] };
  return best;
}

function tally(answers: readonly Answer[], weigh: (a: Answer) => Rat): Map<string, Rat> {
  const m = new Map<string, Rat>();
  for (const a of answers) {
    if (a.status !== 'present' || a.value === undefined) continue;
    m.set(a.value, add(m.get(a.value) ?? ZERO, weigh(a)));
  }
  return m;
}

function short(v: string): string {
  return v.length > 16 ? `${v.slice(0, 16)}...` : v;
}

/** At least `min` (a share) of the configured, or of the responding, logs give the same value. */
export function percentage(min: Rat, of: Base = 'configured'): SyncProcedure {
  const name = `percentage(>= ${formatRat(min)} of ${of} logs)`;
  return {
    name,
    run(answers) {
      const base = of === 'configured' ? answers.length : answers.filter((a) => a.status !== 'failed').length;
      if (base === 0) return undecided(name, of === 'configured' ? 'no logs configured' : 'no log responded');
      const counts = tally(answers, () => rat(1n));
      const need = mul(min, rat(BigInt(base)));
      const p = pick(counts, (t) => cmp(t, need) >= 0);
      if (!p) {
        const top = Math.max(0, ...[...counts.values()].map((t) => Number(t.n)));
        return undecided(name, `no value reached ${formatRat(min)} of ${base} (best: ${top})`);
      }
      if ('tie' in p) return undecided(name, `tie between ${p.tie.map(short).join(', ')}`);
      return {
        decided: true,
        value: p.value,
        confidence: toNumber(p.tally) / base,
        procedure: name,
        reason: `${p.tally.n} of ${base} ${of} logs agree (need ${formatRat(min)})`,
      };
    },
  };
}

/**
 * The summed weight of the logs that give one value reaches `min` (a share of the configured or
 * responding logs' total weight) or `minWeight` (an absolute weight).
 */
export function weighted(opts: { min?: Rat; minWeight?: Rat; of?: Base }): SyncProcedure {
  const of = opts.of ?? 'configured';
  const name =
    opts.minWeight !== undefined
      ? `weighted(>= weight ${formatRat(opts.minWeight)})`
      : `weighted(>= ${formatRat(opts.min!)} of ${of} weight)`;
  return {
    name,
    run(answers) {
      const pool = of === 'configured' ? answers : answers.filter((a) => a.status !== 'failed');
      const total = pool.reduce((s, a) => add(s, a.weight), ZERO);
      const need = opts.minWeight ?? mul(opts.min!, total);
      if (need.n === 0n && total.n === 0n) return undecided(name, 'total weight is 0');
      const sums = tally(answers, (a) => a.weight);
      const p = pick(sums, (t) => t.n > 0n && cmp(t, need) >= 0);
      if (!p) return undecided(name, `no value reached weight ${formatRat(need)} of ${formatRat(total)}`);
      if ('tie' in p) return undecided(name, `tie between ${p.tie.map(short).join(', ')}`);
      return {
        decided: true,
        value: p.value,
        confidence: total.n === 0n ? 1 : Math.min(1, toNumber(p.tally) / toNumber(total)),
        procedure: name,
        reason: `weight ${formatRat(p.tally)} of ${formatRat(total)} agrees (need ${formatRat(need)})`,
      };
    },
  };
}

/** Whatever one named log proves present. Its absence or failure decides nothing. */
export function trustLog(log: string): SyncProcedure {
  const name = `log(${log})`;
  return {
    name,
    run(answers) {
      const a = answers.find((x) => x.name === log);
      if (!a) return undecided(name, `log ${log} is not configured`);
      if (a.status === 'failed') return undecided(name, `log ${log} failed (${a.check})`);
      if (a.status === 'absent') return undecided(name, `log ${log} proved the key absent`);
      const agree = answers.filter((x) => x.status === 'present' && x.value === a.value).length;
      return {
        decided: true,
        value: a.value,
        confidence: agree / answers.length,
        procedure: name,
        reason: `trusting log ${log}`,
      };
    },
  };
}

/** The first step that decides. */
export function chain(steps: readonly Procedure[]): Procedure {
  const name = `chain(${steps.map((s) => s.name).join(', ')})`;
  return {
    name,
    async run(answers, query) {
      const done: Outcome[] = [];
      for (const s of steps) {
        const o = await s.run(answers, query);
        done.push(o);
        if (o.decided) return { ...o, steps: done };
      }
      return { decided: false, procedure: name, reason: 'no step decided', steps: done };
    },
    async close() {
      for (const s of steps) await s.close?.();
    },
  };
}
