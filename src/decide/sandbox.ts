/**
 * User decision procedures in Lua (wasmoon: Lua 5.4) or JavaScript (QuickJS, js-isolate.ts), both
 * compiled to WebAssembly, each run in its own worker thread (script-worker.ts):
 *
 * - isolation: the script's engine is a WebAssembly instance holding no reference to any host
 *   object; only data crosses (an input string in, primitives or a string out). Nothing reaches
 *   files, network, processes, module loading or clocks: the Lua state has no io, os, require,
 *   package, load*, dofile or debug; QuickJS has no module loader, no host functions, and no Date,
 *   Atomics, SharedArrayBuffer, WeakRef or FinalizationRegistry;
 * - a time limit per call inside the worker (Lua: an instruction-count hook; QuickJS: an interrupt
 *   handler), which a script cannot catch, and a separate, generous limit for loading the script;
 *   the watchdog here terminates a worker whose call runs past its limit plus a grace (the
 *   backstop for native code that never polls, such as a Lua pattern match);
 * - a memory limit that bounds everything the script allocates: the Lua allocator refuses beyond
 *   `memory_mb`, and QuickJS's WebAssembly memory has a hard maximum (its engine plus
 *   `memory_mb`); a JavaScript runtime that ran out is replaced with the script loaded again.
 *
 * Calls queued while the worker is busy go to it together, as one message (a thread wake-up costs
 * more than a small script). The worker publishes how many calls it has started and finished, and
 * when the running one started, in shared memory, so the watchdog measures each call, not the
 * batch or the time the worker waited to be scheduled; when it kills a runaway call, the other
 * calls of its batch run again on a new worker.
 *
 * A script that breaks a limit, throws or returns something malformed decides nothing; the outcome
 * carries the check ('script.timeout', 'script.memory', 'script.load', 'script.error',
 * 'script.result', 'script.crashed').
 */
import { Worker } from 'node:worker_threads';
import { workerEntry } from '../runtime/worker-entry.js';
import type { Answer, Outcome, Procedure, Query } from './procedures.js';
import { toNumber } from './rational.js';
import type { ScriptInput, WorkerBatch, WorkerConfig, WorkerReply } from './script-worker.js';

export interface ScriptOptions {
  kind: 'lua' | 'js';
  source: string;
  /** Shown in errors and explanations, e.g. the file name. */
  name: string;
  /** Per call. Default 50 ms. */
  timeoutMs?: number;
  /** For running the script's top level when a worker starts. Default LOAD_TIMEOUT_MS. */
  loadTimeoutMs?: number;
  /** Default 64 MiB. */
  memoryMb?: number;
}

/**
 * Loading a script (running its top level once per worker) has its own limit: it happens while a
 * worker starts, when a loaded machine can stall the thread far longer than a call's limit.
 */
export const LOAD_TIMEOUT_MS = 5000;
/**
 * How long past its own time limit a call may run before its worker is terminated: the limit
 * again, within [250, 1000] ms. The in-worker limits stop scripts on time; the watchdog only
 * catches native code that never polls, and a thin grace would kill honest calls whose thread a
 * loaded machine did not schedule for a few tens of milliseconds.
 */
const graceMs = (timeoutMs: number) => Math.min(1000, Math.max(250, timeoutMs));
/** Starting a worker and a WebAssembly engine takes well under a second; this is a backstop only. */
const STARTUP_LIMIT_MS = 15_000;

type Reply = { ok: true; result: unknown } | { ok: false; check: string; message: string };

interface Queued {
  id: number;
  input: ScriptInput;
  resolve: (r: Reply) => void;
}

/** One worker and what it is doing. */
interface Session {
  worker: Worker;
  /** [calls started, calls finished], written by the worker. */
  progress: Int32Array;
  /** When the last call started (Date.now()), written by the worker. */
  startedAt: Float64Array;
  ready: boolean;
  /** Calls sent to this worker before the batch in flight. */
  base: number;
  inflight: Queued[] | undefined;
  timer: NodeJS.Timeout | undefined;
}

export class ScriptProcedure implements Procedure {
  readonly name: string;
  private readonly cfg: Omit<WorkerConfig, 'progress'>;
  private session: Session | undefined;
  private queue: Queued[] = [];
  private nextId = 0;
  private closed = false;
  private pumpScheduled = false;
  /** How many times the worker was replaced after dying (memory, watchdog). */
  restarts = 0;
  /** Messages (batches) sent to a worker, and the calls they carried: how well calls share a wake-up. */
  batches = 0;
  batchedCalls = 0;

  constructor(opts: ScriptOptions) {
    this.name = `${opts.kind}(${opts.name})`;
    const memoryMb = opts.memoryMb ?? 64;
    this.cfg = {
      kind: opts.kind,
      source: opts.source,
      name: opts.name,
      timeoutMs: opts.timeoutMs ?? 50,
      loadTimeoutMs: opts.loadTimeoutMs ?? LOAD_TIMEOUT_MS,
      memoryBytes: memoryMb * 1024 * 1024,
    };
  }

  private begin(): void {
    const e = workerEntry(import.meta.url, 'script-worker');
    const progress = new SharedArrayBuffer(16);
    const w = new Worker(e.entry, {
      eval: e.eval,
      execArgv: [],
      workerData: { ...this.cfg, progress } satisfies WorkerConfig,
      resourceLimits: {
        // the worker's own JS heap (inputs, replies); the script's memory is WebAssembly memory,
        // bounded by the Lua allocator or the QuickJS instance's maximum
        maxOldGenerationSizeMb: 64,
        maxYoungGenerationSizeMb: 8,
        // QuickJS's stack limit (js-isolate.ts) must be reached well before this one
        stackSizeMb: 4,
      },
      stdout: true,
      stderr: true,
    });
    const s: Session = {
      worker: w,
      progress: new Int32Array(progress, 0, 2),
      startedAt: new Float64Array(progress, 8, 1),
      ready: false,
      base: 0,
      inflight: undefined,
      timer: undefined,
    };
    this.session = s;
    // idle workers must not keep a CLI process alive (the startup timer does while loading)
    w.unref();
    // loading runs under the in-worker load limit, but a worker stuck in native code must not hang us
    s.timer = setTimeout(() => {
      if (this.session !== s || s.ready) return;
      this.detach(s);
      this.failQueued({ ok: false, check: 'script.timeout', message: 'the script did not load in time' });
    }, STARTUP_LIMIT_MS + this.cfg.loadTimeoutMs);
    w.on('message', (m: string | { type: string; check?: string; message?: string }) => {
      if (this.session !== s) return;
      if (typeof m === 'string') {
        this.answered(s, JSON.parse(m) as WorkerReply[]);
        return;
      }
      clearTimeout(s.timer);
      s.timer = undefined;
      if (m.type === 'ready') {
        s.ready = true;
        this.pump();
      } else if (m.type === 'init-error') {
        // a script that does not load decides nothing; the next call tries again
        this.detach(s);
        this.failQueued({ ok: false, check: m.check!, message: m.message! });
      }
    });
    w.on('error', (err: Error & { code?: string }) => {
      if (err.code === 'ERR_WORKER_OUT_OF_MEMORY')
        this.died(s, 'script.memory', 'memory limit exceeded (worker restarted)');
      else this.died(s, 'script.crashed', `script worker failed: ${err.message}`);
    });
    w.on('exit', (code) => this.died(s, 'script.crashed', `script worker exited (${code})`));
  }

  /** Forgets a worker (and terminates it): nothing it says any more is heard. */
  private detach(s: Session): void {
    if (this.session !== s) return;
    this.session = undefined;
    clearTimeout(s.timer);
    s.timer = undefined;
    void s.worker.terminate();
  }

  private failQueued(r: Reply): void {
    const q = this.queue;
    this.queue = [];
    for (const c of q) c.resolve(r);
  }

  /**
   * A worker died (memory, crash) or was killed. The call it was running gets the error; the
   * other calls of its batch go back to the queue for a new worker. A worker that dies between
   * calls takes its whole batch with it (so a worker that cannot run anything cannot loop).
   */
  private died(s: Session, check: string, message: string): void {
    if (this.session !== s) return;
    const batch = s.inflight ?? [];
    const started = Atomics.load(s.progress, 0);
    const finished = Atomics.load(s.progress, 1);
    const running = started > finished ? started - 1 - s.base : -1;
    s.inflight = undefined;
    this.detach(s);
    if (!s.ready) {
      this.failQueued({ ok: false, check, message });
      return;
    }
    this.restarts++;
    if (running >= 0 && running < batch.length) {
      batch[running].resolve({ ok: false, check, message });
      this.queue = [...batch.slice(0, running), ...batch.slice(running + 1), ...this.queue];
    } else {
      for (const c of batch) c.resolve({ ok: false, check, message });
    }
    this.pump();
  }

  /**
   * New calls wait for the end of this turn of the event loop before they go out: the callers
   * woken by one reply ask again within the same turn, and then share one message (and one
   * wake-up of each thread) instead of the first going alone.
   */
  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /** Sends every queued call to the worker if it is free, starting one if needed. */
  private pump(): void {
    if (this.queue.length === 0) return;
    if (this.closed) {
      this.failQueued({ ok: false, check: 'script.closed', message: 'the procedure was closed' });
      return;
    }
    const s = this.session;
    if (!s) {
      this.begin();
      return;
    }
    if (!s.ready || s.inflight) return;
    const batch = this.queue;
    this.queue = [];
    s.inflight = batch;
    this.batches++;
    this.batchedCalls += batch.length;
    s.base = Atomics.load(s.progress, 0);
    s.worker.ref();
    s.worker.postMessage(JSON.stringify(batch.map((c) => [c.id, c.input]) satisfies WorkerBatch));
    this.watch(s, batch);
  }

  /**
   * Terminates the worker when one call runs longer than its limit plus a grace (the in-worker
   * limit should stop it first): the worker publishes when each call started, so the deadline is
   * the running call's own, not a period of this timer.
   */
  private watch(s: Session, batch: Queued[]): void {
    const allowed = this.cfg.timeoutMs + graceMs(this.cfg.timeoutMs);
    const look = () => {
      if (this.session !== s || s.inflight !== batch) return;
      const started = Atomics.load(s.progress, 0);
      const finished = Atomics.load(s.progress, 1);
      const left = started > finished ? s.startedAt[0] + allowed - Date.now() : allowed;
      if (left <= 0) {
        // the script is stuck where the in-worker limit cannot reach (native code): kill it
        this.died(s, 'script.timeout', `time limit of ${this.cfg.timeoutMs} ms exceeded (worker terminated)`);
        return;
      }
      arm(left);
    };
    // a busy event loop can fire this timer before a reply that already arrived is read: give
    // queued messages one turn first
    const arm = (ms: number) => {
      s.timer = setTimeout(() => setImmediate(look), Math.ceil(ms));
    };
    arm(allowed);
  }

  private answered(s: Session, replies: WorkerReply[]): void {
    const batch = s.inflight;
    if (!batch) return;
    clearTimeout(s.timer);
    s.timer = undefined;
    s.inflight = undefined;
    const byId = new Map(batch.map((c) => [c.id, c]));
    for (const r of replies) {
      const c = byId.get(r.id);
      if (!c) continue;
      byId.delete(r.id);
      c.resolve(r.ok ? { ok: true, result: r.result } : { ok: false, check: r.check, message: r.message });
    }
    for (const c of byId.values())
      c.resolve({ ok: false, check: 'script.crashed', message: 'the script worker lost a call' });
    if (this.queue.length === 0) s.worker.unref();
    this.pump();
  }

  async run(answers: readonly Answer[], query: Query): Promise<Outcome> {
    if (this.closed) return this.fail('script.closed', 'the procedure was closed');
    const input: ScriptInput = {
      answers: answers.map((a) => ({
        name: a.name,
        weight: toNumber(a.weight),
        status: a.status,
        value: a.value ?? null,
        check: a.check ?? null,
      })),
      query,
    };
    const reply = await new Promise<Reply>((resolve) => {
      this.queue.push({ id: this.nextId++, input, resolve });
      this.schedulePump();
    });
    if (!reply.ok) return this.fail(reply.check, reply.message);
    return this.interpret(reply.result, answers);
  }

  private interpret(result: unknown, answers: readonly Answer[]): Outcome {
    if (typeof result !== 'object' || result === null || Array.isArray(result)) {
      // the JS guest names what it got instead ("an array", "a promise")
      const got = typeof result === 'string' ? `, not ${result}` : '';
      return this.fail('script.result', `decide must return a value string, a table/object or nothing${got}`);
    }
    const r = result as { value?: unknown; confidence?: unknown };
    if (r.confidence !== undefined && r.confidence !== null) {
      if (typeof r.confidence !== 'number' || !(r.confidence >= 0 && r.confidence <= 1)) {
        return this.fail('script.result', 'confidence must be a number from 0 to 1');
      }
    }
    if (r.value === undefined || r.value === null) {
      return { decided: false, procedure: this.name, reason: 'the script decided nothing' };
    }
    if (typeof r.value !== 'string') {
      // a value that is not data arrives as { type } (a function, a symbol, a Lua table)
      const type = (r.value as { type?: unknown })?.type;
      return this.fail(
        'script.result',
        `value must be a string (hex), got ${typeof type === 'string' ? type : typeof r.value}`,
      );
    }
    const value = r.value.toLowerCase();
    // a script chooses among the values the logs proved; it cannot invent one
    if (!answers.some((a) => a.status === 'present' && a.value === value)) {
      return this.fail('script.result', `value ${value.slice(0, 16)} was not proven by any log`);
    }
    const confidence = typeof r.confidence === 'number' ? r.confidence : undefined;
    return {
      decided: true,
      value,
      ...(confidence !== undefined ? { confidence } : {}),
      procedure: this.name,
      reason: 'decided by the script',
    };
  }

  private fail(check: string, message: string): Outcome {
    return {
      decided: false,
      procedure: this.name,
      reason: `script failed: ${check}: ${message}`,
      error: { check, message },
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    const s = this.session;
    const closed: Reply = { ok: false, check: 'script.closed', message: 'the procedure was closed' };
    if (s) {
      const batch = s.inflight ?? [];
      s.inflight = undefined;
      this.detach(s);
      for (const c of batch) c.resolve(closed);
      await s.worker.terminate();
    }
    this.failQueued(closed);
  }
}
