/**
 * Decisions of script procedures (Lua, JavaScript), which may look at a key and its values and so
 * cannot be counted per shape like built-in ones: each key is decided once and again only when its
 * record changes (the store lists those keys in `changed`, in the transaction of the chunk). The
 * decisions and their counts are kept in the index, so a restart resumes them.
 *
 * They hold for one configuration: the procedures, the logs (name, key, weight) and which logs
 * have entries at all (a log with none is failed, not absent). When that changes, every key is
 * decided again, in key order from a cursor kept in the index.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { procedureJson } from '../decide/config.js';
import type { Decider } from '../decide/decide.js';
import { Figures, type ScriptFigures, scripted } from './agreement.js';
import type { LogStatus } from './follow.js';
import { type DashboardStore, splitKey } from './store.js';

/** Keys decided per transaction. */
const BATCH = 256;

interface State {
  stamp: string;
  decided: number;
  undecided: number;
  /** While every key is decided again: the next key (hex). */
  rescan?: string;
  /** Keys the rescan went past. */
  done: number;
}

/** Whether a config has a script procedure, so that the store must track changed keys. */
export function hasScripts(decider: Decider): boolean {
  return [...decider.config.procedures.values()].some(scripted);
}

export class ScriptDecisions implements ScriptFigures {
  private readonly stopping = new AbortController();
  private loop: Promise<void> | undefined;

  constructor(
    private readonly store: DashboardStore,
    private readonly decider: Decider,
    private readonly statuses: () => LogStatus[],
  ) {}

  private state(): State | undefined {
    return this.store.meta.get('scripted');
  }

  get decided(): number {
    return this.current()?.decided ?? 0;
  }

  get undecided(): number {
    return this.current()?.undecided ?? 0;
  }

  /** The state if it is of the current configuration. */
  private current(): State | undefined {
    const s = this.state();
    return s && s.stamp === this.stamp(this.statuses()) ? s : undefined;
  }

  decisionOf(key: Buffer): Buffer | undefined {
    if (!this.current()) return undefined;
    const d = this.store.decisions.get(key);
    return d && d[0] === 1 ? d.subarray(1) : undefined;
  }

  /** Keys waiting for a decision (an estimate while every key is decided again). */
  pending(): number {
    const s = this.current();
    const changed = (this.store.changed.getStats() as { entryCount: number }).entryCount;
    if (!s) return this.store.keyCount();
    return changed + (s.rescan !== undefined ? Math.max(0, this.store.keyCount() - s.done) : 0);
  }

  private stamp(logs: readonly LogStatus[]): string {
    const procedures = [...this.decider.config.procedures].map(([p, spec]) => [p, procedureJson(spec)]);
    const byName = new Map(this.decider.config.logs.map((l) => [l.name, l.weightText]));
    return JSON.stringify({
      procedures,
      logs: logs.map((l) => [l.name, l.id, byName.get(l.name), l.size > 0]),
    });
  }

  /** Decides one batch of keys; false when nothing is left. */
  async step(): Promise<boolean> {
    const logs = this.statuses();
    const stamp = this.stamp(logs);
    let s = this.state();
    if (!s || s.stamp !== stamp) {
      await this.store.decisions.clearAsync();
      await this.store.changed.clearAsync();
      s = { stamp, decided: 0, undecided: 0, rescan: '', done: 0 };
      await this.store.write(() => this.store.meta.put('scripted', s));
    }
    const rescan = s.rescan !== undefined;
    const batch = rescan
      ? [...this.store.allKeys(Buffer.from(s.rescan!, 'hex'), BATCH)].map(({ key, value }) => ({
          key,
          value: Buffer.from(value),
        }))
      : [...this.store.changedKeys(BATCH)].map((key) => ({ key, value: this.store.record(key) }));
    if (!rescan && batch.length === 0) return false;
    const f = new Figures(this.store, logs, this.decider);
    const decided: Array<{ key: Buffer; value: Buffer | undefined; decision: Buffer | undefined }> = [];
    for (const { key, value } of batch) {
      const { protocol, key: kb } = splitKey(key);
      if (!f.scripted(protocol)) {
        decided.push({ key, value, decision: undefined });
        continue;
      }
      const k = value && f.classify(value);
      let decision: Buffer | undefined;
      if (k && k.held >= 2) {
        const w = await f.winner(protocol, kb, k);
        decision = w === undefined ? Buffer.of(0) : Buffer.concat([Buffer.of(1), k.reps[w]]);
      }
      decided.push({ key, value, decision });
    }
    const last = batch.at(-1)?.key;
    await this.store.write(() => {
      const now = this.state();
      if (!now || now.stamp !== stamp) return;
      for (const { key, value, decision } of decided) {
        const rec = this.store.record(key);
        // changed meanwhile: it is in `changed` again and decided later
        if (rec === undefined ? value !== undefined : value === undefined || !rec.equals(value)) continue;
        this.store.changed.remove(key);
        const old = this.store.decisions.get(key);
        if (old !== undefined) now[old[0] === 1 ? 'decided' : 'undecided']--;
        if (decision === undefined) {
          if (old !== undefined) this.store.decisions.remove(key);
        } else {
          now[decision[0] === 1 ? 'decided' : 'undecided']++;
          this.store.decisions.put(key, decision);
        }
      }
      if (rescan) {
        now.done += batch.length;
        if (batch.length < BATCH) delete now.rescan;
        else now.rescan = Buffer.concat([last!, Buffer.of(0)]).toString('hex');
      }
      this.store.meta.put('scripted', now);
    });
    return true;
  }

  /** Decides until nothing is left. */
  async settle(): Promise<void> {
    while (await this.step()) {}
  }

  /** Decides in the background: batch after batch, then every `intervalMs` when nothing is left. */
  start(intervalMs: number): void {
    this.loop = (async () => {
      const { signal } = this.stopping;
      while (!signal.aborted) {
        try {
          if (await this.step()) {
            await sleep(0);
            continue;
          }
        } catch {
          // a script failing: tried again after the interval
        }
        await sleep(intervalMs, undefined, { signal }).catch(() => {});
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    await this.loop?.catch(() => {});
  }
}
