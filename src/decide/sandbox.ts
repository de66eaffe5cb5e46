/**
 * User decision procedures in Lua (wasmoon: Lua 5.4 in WebAssembly) or JavaScript (node:vm), each
 * run in its own worker thread (script-worker.ts):
 *
 * - no files, network, processes, module loading or clocks: the Lua state has no io, os, require,
 *   package, load*, dofile or debug; the JS context is a fresh V8 context with no host objects and
 *   no Date, Intl, eval/Function (code generation from strings is off) or WebAssembly;
 * - a time limit per call inside the worker (Lua instruction-count hook, vm `timeout`) and, as a
 *   backstop for native code that never yields, a watchdog here that terminates the worker;
 * - a memory limit: the Lua allocator refuses beyond `memory_mb`, and the worker's V8 heap is capped
 *   with `resourceLimits`, so an allocation bomb kills only the worker, which is restarted on the
 *   next call.
 *
 * A script that breaks a limit, throws or returns something malformed decides nothing; the outcome
 * carries the check ('script.timeout', 'script.memory', 'script.load', 'script.error',
 * 'script.result', 'script.crashed').
 */
import { existsSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import type { Answer, Outcome, Procedure, Query } from './procedures.js';
import { toNumber } from './rational.js';
import type { ScriptInput, WorkerConfig, WorkerReply } from './script-worker.js';

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

function workerEntry(): { entry: URL | string; eval: boolean; execArgv: string[] } {
  const js = new URL('./script-worker.js', import.meta.url);
  if (!import.meta.url.endsWith('.ts') && existsSync(js)) return { entry: js, eval: false, execArgv: [] };
  // under tsx (tests, development) this module is the .ts source: Node does not pass a worker's
  // entry file through loader hooks, but a dynamic import from an eval'd entry goes through them
  const ts = new URL('./script-worker.ts', import.meta.url).href;
  const api = import.meta.resolve('tsx/esm/api');
  return {
    entry: `import(${JSON.stringify(api)}).then((t) => { t.register(); return import(${JSON.stringify(ts)}); })`,
    eval: true,
    execArgv: [],
  };
}

interface Pending {
  resolve: (r: { ok: true; result: unknown } | { ok: false; check: string; message: string }) => void;
  timer: NodeJS.Timeout;
}

export class ScriptProcedure implements Procedure {
  readonly name: string;
  private readonly cfg: WorkerConfig;
  private worker: Worker | undefined;
  private ready: Promise<{ ok: true } | { ok: false; check: string; message: string }> | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private closed = false;
  /** How many times the worker was replaced after dying (memory, watchdog). */
  restarts = 0;

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

  private start(): Promise<{ ok: true } | { ok: false; check: string; message: string }> {
    const memoryMb = Math.ceil(this.cfg.memoryBytes / (1024 * 1024));
    const e = workerEntry();
    const w = new Worker(e.entry, {
      eval: e.eval,
      execArgv: e.execArgv,
      workerData: this.cfg,
      resourceLimits: {
        // the JS heap of the worker; wasm memory (the Lua state) is bounded by the Lua allocator
        maxOldGenerationSizeMb: Math.max(16, memoryMb),
        maxYoungGenerationSizeMb: 8,
        stackSizeMb: 4,
      },
      stdout: true,
      stderr: true,
    });
    this.worker = w;
    // idle workers must not keep a CLI process alive
    w.unref();
    const ready = new Promise<{ ok: true } | { ok: false; check: string; message: string }>((resolve) => {
      const onMessage = (m: { type?: string; check?: string; message?: string } & Partial<WorkerReply>) => {
        if (m.type === 'ready') return resolve({ ok: true });
        if (m.type === 'init-error') return resolve({ ok: false, check: m.check!, message: m.message! });
        const p = this.pending.get(m.id!);
        if (!p) return;
        this.pending.delete(m.id!);
        clearTimeout(p.timer);
        p.resolve(m as WorkerReply);
      };
      w.on('message', onMessage);
      const died = (check: string, message: string) => {
        if (this.worker === w) {
          this.worker = undefined;
          this.ready = undefined;
          this.restarts++;
        }
        resolve({ ok: false, check, message });
        for (const [id, p] of this.pending) {
          this.pending.delete(id);
          clearTimeout(p.timer);
          p.resolve({ ok: false, check, message });
        }
      };
      w.on('error', (err: Error & { code?: string }) => {
        if (err.code === 'ERR_WORKER_OUT_OF_MEMORY')
          died('script.memory', 'memory limit exceeded (worker restarted)');
        else died('script.crashed', `script worker failed: ${err.message}`);
      });
      w.on('exit', (code) => died('script.crashed', `script worker exited (${code})`));
    });
    this.ready = ready;
    return ready;
  }

  async run(answers: readonly Answer[], query: Query): Promise<Outcome> {
    if (this.closed) return this.fail('script.closed', 'the procedure was closed');
    const starting = this.ready ?? this.start();
    const w0 = this.worker;
    let startTimer: NodeJS.Timeout | undefined;
    // loading runs under the in-worker limits, but a worker stuck in native code must not hang us
    const ready = await Promise.race([
      starting,
      new Promise<{ ok: false; check: string; message: string }>((resolve) => {
        startTimer = setTimeout(() => {
          void w0?.terminate();
          resolve({ ok: false, check: 'script.timeout', message: 'the script did not load in time' });
        }, STARTUP_LIMIT_MS + this.cfg.timeoutMs);
      }),
    ]);
    clearTimeout(startTimer);
    if (!ready.ok) {
      // a script that does not load stays broken; a dead worker is restarted next time
      return this.fail(ready.check, ready.message);
    }
    const w = this.worker!;
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
    const id = this.nextId++;
    w.ref();
    const reply = await new Promise<
      { ok: true; result: unknown } | { ok: false; check: string; message: string }
    >((resolve) => {
      const expire = () => {
        if (this.pending.get(id)?.timer !== timer) return;
        // the script is stuck where the in-worker limit cannot reach (native code): kill it
        this.pending.delete(id);
        resolve({
          ok: false,
          check: 'script.timeout',
          message: `time limit of ${this.cfg.timeoutMs} ms exceeded (worker terminated)`,
        });
        if (this.worker === w) {
          this.worker = undefined;
          this.ready = undefined;
          this.restarts++;
        }
        void w.terminate();
      };
      const timer = setTimeout(
        // a busy event loop can fire this timer before a reply that already arrived is read:
        // give queued messages one turn first
        () => setImmediate(expire),
        this.cfg.timeoutMs + (this.cfg.kind === 'lua' ? WATCHDOG_GRACE_MS : 0),
      );
      this.pending.set(id, { resolve, timer });
      w.postMessage({ id, input });
    });
    if (this.pending.size === 0 && this.worker === w) w.unref();
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
    const w = this.worker;
    this.worker = undefined;
    this.ready = undefined;
    if (w) await w.terminate();
  }
}
