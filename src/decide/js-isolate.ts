/**
 * JavaScript decision scripts in QuickJS compiled to WebAssembly (quickjs-emscripten), for the
 * script worker (script-worker.ts). The script runs in its own WebAssembly instance: it has no
 * reference to any object of the host, only the strings handed in, so there is nothing to climb
 * out through (no host `Function`, `process`, `require`, `import`).
 *
 * - Memory: the instance's WebAssembly memory has a hard maximum (ENGINE_BYTES + `memory_mb`),
 *   which bounds everything the script allocates, ArrayBuffers included; an allocation past it
 *   fails as QuickJS's "out of memory". (QuickJS's own `setMemoryLimit` cannot do this here: this
 *   build does not see allocation sizes and counts 8 bytes per block.) After a call that ran out
 *   of memory the runtime is thrown away and the script loaded again, so garbage that only a
 *   collection would free (cycles) never outlives the call that made it.
 * - Time: an interrupt handler stops the script once its deadline passes; the interruption cannot
 *   be caught by the script, and stays in force (every later poll interrupts again) until the call
 *   has returned. Regular expressions poll it too.
 * - Data: the input goes in as one JSON string that the guest parses; the result comes back as
 *   one string that the guest builds from primitives only (never JSON.stringify of a script's
 *   object, which would consult prototypes the script may have changed); a thrown value is
 *   described inside the guest. The call path uses the raw exports and checks every pointer they
 *   return: in a full heap any allocation, the host's included, can fail.
 */
import releaseSync from '@jitl/quickjs-wasmfile-release-sync';
import {
  newQuickJSWASMModuleFromVariant,
  newVariant,
  type QuickJSContext,
  type QuickJSHandle,
  type QuickJSRuntime,
  type QuickJSSyncVariant,
  type QuickJSWASMModule,
} from 'quickjs-emscripten-core';
import { ScriptError } from './script-error.js';

/** What the engine itself needs of the WebAssembly memory (its data, stack and base heap): the module's minimum. */
const ENGINE_BYTES = 16 * 1024 * 1024;
const PAGE = 65536;
/** The largest WebAssembly memory of this build (2 GiB). */
const MAX_PAGES = 32768;
/**
 * QuickJS's own stack limit, well inside the worker's V8 stack (4 MiB, sandbox.ts): the script
 * must hit QuickJS's catchable "stack overflow" before V8's, which would unwind the engine
 * without its cleanup.
 */
const STACK_BYTES = 256 * 1024;
const NANBOX_TAG_STRING = -7;
/** The package's types describe its CommonJS entry; imported as ESM, its default export is the variant itself. */
const variant = releaseSync as unknown as QuickJSSyncVariant;

/** The raw exports used on the call path (pointers are numbers). */
interface Ffi {
  QTS_NewString(ctx: number, str: number): number;
  QTS_GetString(ctx: number, value: number): number;
  QTS_FreeCString(ctx: number, str: number): void;
  QTS_FreeValuePointer(ctx: number, value: number): void;
  QTS_FreeValuePointerRuntime(rt: number, value: number): void;
  QTS_Call(ctx: number, fn: number, thisValue: number, argc: number, argv: number): number;
  QTS_ResolveException(ctx: number, value: number): number;
  QTS_GetUndefined(): number;
  QTS_IsJobPending(rt: number): number;
  QTS_ExecutePendingJob(rt: number, max: number, lastContext: number): number;
  QTS_Eval(
    ctx: number,
    code: number,
    len: number,
    filename: string,
    detectModule: number,
    flags: number,
  ): number;
}

interface Emscripten {
  _malloc(size: number): number;
  _free(ptr: number): void;
}

/** quickjs-emscripten keeps these protected; the call path needs them (pinned version, see dependencies.md). */
type Internals = {
  module: Emscripten;
  ctx: { value: number };
  rt: { value: number };
};
const internals = (x: QuickJSWASMModule | QuickJSContext | QuickJSRuntime) => x as unknown as Internals;

/**
 * Evaluated before the script, in the guest: captures what it needs before the script can change
 * it, removes the clock and shared memory, and returns [call, check, describe].
 */
const PRELUDE = `(() => {
  'use strict';
  const g = globalThis, parse = JSON.parse, stringify = JSON.stringify, isArray = Array.isArray, str = String;
  for (const k of ['Date', 'Atomics', 'SharedArrayBuffer', 'WeakRef', 'FinalizationRegistry']) delete g[k];
  let decide;
  const kind = (x) => (x === null ? 'null' : isArray(x) ? 'array' : typeof x);
  const text = (x) => {
    switch (typeof x) {
      case 'string': return stringify(x);
      case 'number': return x - x === 0 ? stringify(x) : stringify(str(x));
      case 'boolean': return x ? 'true' : 'false';
      case 'undefined': return 'null';
      default: return x === null ? 'null' : '{"type":' + stringify(kind(x)) + '}';
    }
  };
  const describe = (e) => {
    try {
      if (typeof e === 'string') return e;
      if (typeof e === 'object' && e !== null) {
        const name = e.name, message = e.message;
        if (typeof message === 'string') {
          const stack = e.stack, at = typeof stack === 'string' ? stack.split('\\n')[0].trim() : '';
          return (typeof name === 'string' ? name : 'Error') + ': ' + message + (at ? ' (' + at + ')' : '');
        }
      }
      return 'a thrown ' + kind(e);
    } catch (_) {
      return 'a thrown value that cannot be read';
    }
  };
  const call = (input) => {
    let r;
    try {
      const x = parse(input);
      r = decide(x.answers, x.query);
      if (r === undefined || r === null) return '{"value":null}';
      const k = kind(r);
      if (k === 'array') return '"an array"';
      if (k !== 'object') return '{"value":' + text(r) + '}';
      if (typeof r.then === 'function') return '"a promise"';
      return '{"value":' + text(r.value) + ',"confidence":' + text(r.confidence) + '}';
    } catch (e) {
      return '!' + describe(e);
    }
  };
  const check = () => {
    decide = g.decide;
    return typeof decide === 'function' ? 'ok' : 'nodecide';
  };
  return [call, check, (e) => describe(e)];
})()`;

export interface IsolateOptions {
  source: string;
  name: string;
  timeoutMs: number;
  loadTimeoutMs: number;
  memoryBytes: number;
}

/** One QuickJS runtime and context with the script loaded, in its own WebAssembly instance. */
export class JsIsolate {
  private runtime!: QuickJSRuntime;
  private context!: QuickJSContext;
  private fns: QuickJSHandle[] = [];
  private rt = 0;
  private ctx = 0;
  /** A pointer-sized slot for QTS_Call's argument list and one for QTS_ExecutePendingJob's out parameter. */
  private readonly slots: number;
  private deadline = Number.POSITIVE_INFINITY;
  /** The deadline passed during this call: the call is reported as a timeout whatever else happened. */
  private expired = false;
  /** The script could not be loaded again after running out of memory. */
  private broken: ScriptError | undefined;
  /** The engine failed in a way that may have left it inconsistent: the worker must be replaced. */
  dead = false;
  private readonly text = new TextDecoder();
  private readonly encoder = new TextEncoder();

  private constructor(
    private readonly mod: QuickJSWASMModule,
    private readonly ffi: Ffi,
    private readonly em: Emscripten,
    private readonly memory: WebAssembly.Memory,
    private readonly opts: IsolateOptions,
  ) {
    this.slots = em._malloc(8);
  }

  static async create(opts: IsolateOptions): Promise<JsIsolate> {
    const pages = Math.min(MAX_PAGES, (ENGINE_BYTES + Math.ceil(opts.memoryBytes / PAGE) * PAGE) / PAGE);
    const memory = new WebAssembly.Memory({ initial: ENGINE_BYTES / PAGE, maximum: pages });
    const mod = await newQuickJSWASMModuleFromVariant(newVariant(variant, { wasmMemory: memory }));
    const iso = new JsIsolate(mod, mod.getFFI() as unknown as Ffi, internals(mod).module, memory, opts);
    iso.start();
    iso.load();
    return iso;
  }

  /** A fresh runtime and context with the prelude evaluated (the heap is nearly empty: the high-level API is safe here). */
  private start(): void {
    this.runtime = this.mod.newRuntime();
    this.runtime.setMaxStackSize(STACK_BYTES);
    this.runtime.setInterruptHandler(() => {
      if (Date.now() <= this.deadline) return false;
      this.expired = true;
      return true;
    });
    this.context = this.runtime.newContext();
    this.rt = internals(this.runtime).rt.value;
    this.ctx = internals(this.context).ctx.value;
    const api = this.context.unwrapResult(this.context.evalCode(PRELUDE, 'trustix-prelude'));
    this.fns = [0, 1, 2].map((i) => this.context.getProp(api, i));
    api.dispose();
  }

  private stop(): void {
    for (const f of this.fns) if (f.alive) f.dispose();
    this.fns = [];
    this.context.dispose();
    this.runtime.dispose();
  }

  /** Runs the script's top level under the load limit and checks that it defines decide. */
  private load(): void {
    const out = this.timed(this.opts.loadTimeoutMs, () => {
      const code = this.cString(this.opts.source);
      const r = this.ffi.QTS_Eval(this.ctx, code.ptr, code.len, this.opts.name, 0, 0);
      this.em._free(code.ptr);
      this.settle(r, 'script.load', true);
      this.runJobs();
      return this.settle(this.invoke(1, 0), 'script.load', false);
    });
    if (out !== 'ok') throw new ScriptError('script.load', 'the script defines no function decide');
  }

  /** One call: the input as JSON text in, the result as JSON data out. */
  call(input: string): unknown {
    if (this.broken) throw this.broken;
    let out: string;
    try {
      out = this.timed(this.opts.timeoutMs, () => {
        const s = this.cString(input);
        const arg = this.ffi.QTS_NewString(this.ctx, s.ptr);
        this.em._free(s.ptr);
        if (arg === 0) throw outOfMemory();
        try {
          return this.settle(this.invoke(0, arg), 'script.error', false);
        } finally {
          this.ffi.QTS_FreeValuePointer(this.ctx, arg);
          this.runJobs();
        }
      });
    } catch (err) {
      if (err instanceof ScriptError && err.check === 'script.memory') this.renew();
      throw err;
    }
    if (out.startsWith('!')) {
      // the script may have caught its "out of memory" and thrown it on
      if (!out.startsWith('!InternalError: out of memory'))
        throw new ScriptError('script.error', out.slice(1));
      this.renew();
      throw outOfMemory();
    }
    return JSON.parse(out);
  }

  /** Runs the promise jobs queued meanwhile, within the same time limit (their results are dropped). */
  private runJobs(): void {
    if (!this.ffi.QTS_IsJobPending(this.rt)) return;
    const j = this.ffi.QTS_ExecutePendingJob(this.rt, -1, this.slots + 4);
    if (j !== 0) this.ffi.QTS_FreeValuePointerRuntime(this.rt, j);
  }

  /** Runs `body` with the deadline set; a call past it is a timeout, whatever it returned or threw. */
  private timed<T>(limitMs: number, body: () => T): T {
    this.expired = false;
    this.deadline = Date.now() + limitMs;
    let out: T | undefined;
    let failure: unknown;
    try {
      out = body();
    } catch (err) {
      failure = err;
    } finally {
      this.deadline = Number.POSITIVE_INFINITY;
    }
    if (this.expired) {
      this.expired = false;
      throw new ScriptError('script.timeout', `time limit of ${limitMs} ms exceeded`);
    }
    if (failure === undefined) return out as T;
    if (failure instanceof ScriptError) throw failure;
    // a trap, or the host's stack exhausted inside WebAssembly: the engine may be left half-way
    // through a change, so this instance is not used again (the worker is replaced)
    this.dead = true;
    throw new ScriptError('script.crashed', `the JavaScript engine failed: ${String(failure)}`);
  }

  /** After running out of memory: a new runtime (which frees all the old one held) with the script loaded again. */
  private renew(): void {
    try {
      this.stop();
      this.start();
      this.load();
    } catch (err) {
      this.broken =
        err instanceof ScriptError
          ? err
          : new ScriptError('script.crashed', `cannot restart the script: ${err}`);
    }
  }

  /** Calls prelude function `i` with one argument (a value pointer) or none (0). */
  private invoke(i: number, arg: number): number {
    const heap = new Int32Array(this.memory.buffer);
    heap[this.slots >> 2] = arg;
    return this.ffi.QTS_Call(
      this.ctx,
      this.fns[i].value,
      this.ffi.QTS_GetUndefined(),
      arg === 0 ? 0 : 1,
      this.slots,
    );
  }

  /**
   * Reads the string a guest function returned (freeing the value). An exception that reached the
   * host (the guest functions catch everything catchable) is described by the guest; `discard`
   * drops a successful value instead of reading it.
   */
  private settle(r: number, check: string, discard: true): undefined;
  private settle(r: number, check: string, discard: false): string;
  private settle(r: number, check: string, discard: boolean): string | undefined {
    if (r === 0) throw outOfMemory();
    const e = this.ffi.QTS_ResolveException(this.ctx, r);
    if (e !== 0) {
      this.ffi.QTS_FreeValuePointer(this.ctx, r);
      let message: string;
      try {
        message = this.read(this.invoke(2, e));
      } catch {
        message = 'out of memory';
      } finally {
        this.ffi.QTS_FreeValuePointer(this.ctx, e);
      }
      throw /out of memory/.test(message) ? outOfMemory() : new ScriptError(check, message);
    }
    if (discard) {
      this.ffi.QTS_FreeValuePointer(this.ctx, r);
      return undefined;
    }
    return this.read(r);
  }

  /** A string value's text; anything else (an exception without an object, say) counts as out of memory. */
  private read(r: number): string {
    if (r === 0) throw outOfMemory();
    try {
      // a JSValue is 8 bytes here (NaN-boxing, 32-bit build): the tag is the high word
      if (new Int32Array(this.memory.buffer)[(r >> 2) + 1] !== NANBOX_TAG_STRING) throw outOfMemory();
      const p = this.ffi.QTS_GetString(this.ctx, r);
      if (p === 0) throw outOfMemory();
      const heap = new Uint8Array(this.memory.buffer);
      const s = this.text.decode(heap.subarray(p, heap.indexOf(0, p)));
      this.ffi.QTS_FreeCString(this.ctx, p);
      return s;
    } finally {
      this.ffi.QTS_FreeValuePointer(this.ctx, r);
    }
  }

  /** A NUL-terminated UTF-8 copy of `s` in the guest's memory (the caller frees it). */
  private cString(s: string): { ptr: number; len: number } {
    const most = 3 * s.length + 1;
    const ptr = this.em._malloc(most);
    if (ptr === 0) throw outOfMemory();
    const heap = new Uint8Array(this.memory.buffer, ptr, most);
    const len = this.encoder.encodeInto(s, heap).written;
    heap[len] = 0;
    return { ptr, len };
  }
}

function outOfMemory(): ScriptError {
  return new ScriptError('script.memory', 'memory limit exceeded');
}
