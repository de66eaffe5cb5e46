/**
 * Runs one user decision script (Lua or JavaScript) inside a worker thread, so that a script that
 * exhausts memory or blocks in native code can be killed without harming the process that asked
 * (see sandbox.ts, docs/deciding.md). Each call gets the classified answers and returns a JSON
 * result, or an error with a check name.
 */
import vm from 'node:vm';
import { parentPort, workerData } from 'node:worker_threads';
import { LuaFactory } from 'wasmoon';

export interface WorkerConfig {
  kind: 'lua' | 'js';
  source: string;
  name: string;
  timeoutMs: number;
  memoryBytes: number;
}

export interface ScriptInput {
  answers: Array<{
    name: string;
    weight: number;
    status: string;
    value: string | null;
    check: string | null;
  }>;
  query: { protocol: string; key: string };
}

export type WorkerReply =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; check: string; message: string };

type Call = (input: ScriptInput) => unknown;

class ScriptError extends Error {
  constructor(
    readonly check: string,
    message: string,
  ) {
    super(message);
  }
}

const cfg = workerData as WorkerConfig;

/** Lua globals a decision script must not have: files, processes, the clock, module loading. */
const LUA_REMOVE = [
  'io',
  'os',
  'require',
  'package',
  'dofile',
  'loadfile',
  'load',
  'debug',
  'collectgarbage',
  'print',
];

async function setupLua(): Promise<Call> {
  const factory = new LuaFactory();
  const engine = await factory.createEngine({
    openStandardLibs: true,
    injectObjects: false,
    enableProxy: false,
    traceAllocations: true,
    functionTimeout: cfg.timeoutMs,
  });
  // load the script with a chunk loader captured before `load` goes away, so it runs under the
  // same time limit as every call (functionTimeout applies to Lua functions called from JS)
  engine.doStringSync(`
    local load, type, error = load, type, error
    __trustix_load = function(src, name)
      local f, err = load(src, '=' .. name, 't')
      if not f then error('syntax: ' .. err, 0) end
      f()
      if type(decide) ~= 'function' then error('nodecide', 0) end
      local decide = decide
      __trustix_call = function(a, q)
        local v, c = decide(a, q)
        if type(v) == 'table' then return v end
        return { value = v, confidence = c, __plain = true }
      end
    end
  `);
  engine.doStringSync(LUA_REMOVE.map((g) => `${g} = nil`).join('\n'));
  engine.global.setMemoryMax(cfg.memoryBytes);
  const loader = engine.global.get('__trustix_load') as (src: string, name: string) => void;
  try {
    loader(cfg.source, cfg.name);
  } catch (err) {
    throw luaError(err, 'script.load');
  }
  const fn = engine.global.get('__trustix_call') as (a: unknown, q: unknown) => unknown;
  return (input) => {
    try {
      // Lua sees nil for absent values; a JS null would arrive as a userdata
      const answers = input.answers.map((a) => ({
        name: a.name,
        weight: a.weight,
        status: a.status,
        ...(a.value !== null ? { value: a.value } : {}),
        ...(a.check !== null ? { check: a.check } : {}),
      }));
      return fn(answers, input.query);
    } catch (err) {
      throw luaError(err, 'script.error');
    }
  };
}

function luaError(err: unknown, fallback: string): ScriptError {
  const msg = err instanceof Error ? err.message : String(err);
  if (/timeout exceeded/.test(msg))
    return new ScriptError('script.timeout', `time limit of ${cfg.timeoutMs} ms exceeded`);
  if (/not enough memory/.test(msg)) return new ScriptError('script.memory', 'memory limit exceeded');
  if (msg === 'nodecide') return new ScriptError('script.load', 'the script defines no function decide');
  if (msg.startsWith('syntax: ')) return new ScriptError('script.load', msg.slice(8));
  return new ScriptError(fallback, msg);
}

/** JS builtins a decision script must not have: clocks (Date, Intl formats the current time), shared memory, WebAssembly. */
const JS_REMOVE = [
  'Date',
  'Intl',
  'SharedArrayBuffer',
  'Atomics',
  'WebAssembly',
  'console',
  'FinalizationRegistry',
  'WeakRef',
];

function setupJs(): Call {
  // Only strings cross into the context (the input as JSON, the output as JSON), so no host object
  // (and no path to the host's Function constructor, process or require) is ever reachable.
  const ctx = vm.createContext(Object.create(null), {
    name: cfg.name,
    codeGeneration: { strings: false, wasm: false },
    microtaskMode: 'afterEvaluate',
  });
  const opts = { timeout: cfg.timeoutMs, breakOnSigint: false };
  vm.runInContext(JS_REMOVE.map((g) => `delete globalThis.${g};`).join(''), ctx);
  try {
    new vm.Script(cfg.source, { filename: cfg.name }).runInContext(ctx, opts);
  } catch (err) {
    throw jsError(err, 'script.load');
  }
  if (vm.runInContext('typeof decide', ctx) !== 'function') {
    throw new ScriptError('script.load', 'the script defines no function decide');
  }
  const call = new vm.Script(
    `(() => {
      const r = decide(JSON.parse(globalThis.__trustix_in).answers, JSON.parse(globalThis.__trustix_in).query);
      if (r !== null && typeof r === 'object' && typeof r.then === 'function') throw new TypeError('decide must not return a promise');
      return JSON.stringify(typeof r === 'object' && r !== null ? r : { value: r === undefined ? null : r, __plain: true });
    })()`,
    { filename: 'trustix-call' },
  );
  return (input) => {
    (ctx as Record<string, unknown>).__trustix_in = JSON.stringify(input);
    let out: unknown;
    try {
      // no `timeout` here: it starts a watchdog thread per call (about 100 us); the caller's
      // watchdog terminates this worker instead when a call overruns (sandbox.ts)
      out = call.runInContext(ctx);
    } catch (err) {
      throw jsError(err, 'script.error');
    }
    if (typeof out !== 'string')
      throw new ScriptError('script.result', 'decide returned something that is not JSON');
    return JSON.parse(out);
  };
}

function jsError(err: unknown, fallback: string): ScriptError {
  const e = err as { code?: string; message?: string; name?: string };
  if (e?.code === 'ERR_SCRIPT_EXECUTION_TIMEOUT') {
    return new ScriptError('script.timeout', `time limit of ${cfg.timeoutMs} ms exceeded`);
  }
  const msg = `${e?.name ?? 'Error'}: ${e?.message ?? String(err)}`;
  if (fallback === 'script.load' && e?.name === 'SyntaxError') return new ScriptError('script.load', msg);
  return new ScriptError(fallback, msg);
}

async function main(): Promise<void> {
  const port = parentPort!;
  // A script's own promises (an async decide, a dynamic import) may reject after its call has
  // already been refused; such a rejection concerns no pending call and must not kill the worker.
  process.on('unhandledRejection', () => {});
  let call: Call;
  try {
    call = cfg.kind === 'lua' ? await setupLua() : setupJs();
  } catch (err) {
    const e = err instanceof ScriptError ? err : new ScriptError('script.load', String(err));
    port.postMessage({ type: 'init-error', check: e.check, message: e.message });
    return;
  }
  port.postMessage({ type: 'ready' });
  port.on('message', (m: { id: number; input: ScriptInput }) => {
    let reply: WorkerReply;
    try {
      reply = { id: m.id, ok: true, result: call(m.input) };
    } catch (err) {
      const e = err instanceof ScriptError ? err : new ScriptError('script.error', String(err));
      reply = { id: m.id, ok: false, check: e.check, message: e.message };
    }
    try {
      port.postMessage(reply);
    } catch {
      port.postMessage({ id: m.id, ok: false, check: 'script.result', message: 'result cannot be sent' });
    }
  });
}

await main();
