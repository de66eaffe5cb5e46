/**
 * User decision procedures in Lua (wasmoon: Lua 5.4 in WebAssembly) or JavaScript (node:vm), each
 * run in its own worker thread (script-worker.ts):
 *
 * - no files, network, processes, module loading or clocks: the Lua state has no io, os, require,
 *   package, load*, dofile or debug; the JS context is a fresh V8 context with no host objects and
 *   no Date, Intl, eval/Function (code generation from strings is off) or WebAssembly;
 * - a time limit per call: inside the worker for Lua (an instruction-count hook), and for both a
 *   watchdog here that terminates a worker whose call overruns (the only limit for JS, and the
 *   backstop for native code that never yields);
 * - a memory limit: the Lua allocator refuses beyond `memory_mb`, and the worker's V8 heap is capped
 *   with `resourceLimits`, so an allocation bomb kills only the worker, which is restarted on the
 *   next call.
 *
 * Calls queued while the worker is busy go to it together, as one message (a thread wake-up costs
 * more than a small script). The worker publishes how many calls it has started and finished in
 * shared memory, so the watchdog measures each call, not the batch or the time the worker waited
 * to be scheduled; when it kills a runaway call, the other calls of its batch run again on a new
 * worker.
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
  /** Default 64 MiB. */
  memoryMb?: number;
}

/** How long past its own time limit a worker may stay silent before it is terminated. */
const WATCHDOG_GRACE_MS = 500;
/** Starting a worker and a Lua state takes well under a second; this is a backstop only. */
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
      memoryBytes: memoryMb * 1024 * 1024,
    };
  }

  private begin(): void {
    const memoryMb = Math.ceil(this.cfg.memoryBytes / (1024 * 1024));
    const e = workerEntry(import.meta.url, 'script-worker');
    const progress = new SharedArrayBuffer(8);
    const w = new Worker(e.entry, {
      eval: e.eval,
      execArgv: [],
      workerData: { ...this.cfg, progress } satisfies WorkerConfig,
      resourceLimits: {
        // the JS heap of the worker; wasm memory (the Lua state) is bounded by the Lua allocator
        maxOldGenerationSizeMb: Math.max(16, memoryMb),
        maxYoungGenerationSizeMb: 8,
        stackSizeMb: 4,
      },
      stdout: true,
      stderr: true,
    });
    const s: Session = {
      worker: w,
      progress: new Int32Array(progress),
      ready: false,
      base: 0,
      inflight: undefined,
      timer: undefined,
    };
    this.session = s;
    // idle workers must not keep a CLI process alive (the startup timer does while loading)
    w.unref();
    // loading runs under the in-worker limits, but a worker stuck in native code must not hang us
    s.timer = setTimeout(() => {
      if (this.session !== s || s.ready) return;
      this.detach(s);
      this.failQueued({ ok: false, check: 'script.timeout', message: 'the script did not load in time' });
    }, STARTUP_LIMIT_MS + this.cfg.timeoutMs);
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
  private died(s: Session, check: string, message: string, restart = true): void {
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
    if (restart) this.restarts++;
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
   * Terminates the worker when one call runs longer than its limit (plus a grace for Lua, whose
   * own hook should fire first). Each look at the worker's progress re-arms the timer; a call
   * seen running at two looks one period apart has overrun.
   */
  private watch(s: Session, batch: Queued[]): void {
    const period = this.cfg.timeoutMs + (this.cfg.kind === 'lua' ? WATCHDOG_GRACE_MS : 0);
    let seenRunning = -1;
    const look = () => {
      if (this.session !== s || s.inflight !== batch) return;
      const started = Atomics.load(s.progress, 0);
      const finished = Atomics.load(s.progress, 1);
      if (started > finished && started === seenRunning) {
        // the script is stuck where the in-worker limit cannot reach (native code): kill it
        this.died(s, 'script.timeout', `time limit of ${this.cfg.timeoutMs} ms exceeded (worker terminated)`);
        return;
      }
      seenRunning = started > finished ? started : -1;
      arm();
    };
    // a busy event loop can fire this timer before a reply that already arrived is read: give
    // queued messages one turn first
    const arm = () => {
      s.timer = setTimeout(() => setImmediate(look), period);
    };
    arm();
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
      return this.fail('script.result', 'decide must return a value string, a table/object or nothing');
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
      return this.fail('script.result', `value must be a string (hex), got ${typeof r.value}`);
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
