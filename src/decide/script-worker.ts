/**
 * Runs one user decision script (Lua or JavaScript) inside a worker thread, so that a script that
 * exhausts memory or blocks in native code can be killed without harming the process that asked
 * (see sandbox.ts, docs/deciding.md). Each call gets the classified answers and returns a JSON
 * result, or an error with a check name.
 *
 * Calls arrive in batches (one message, a JSON string, for all the calls queued while the previous
 * batch ran) and are answered in one message: each message wakes a thread, which costs more than a
 * small script. Progress is published in shared memory so that the calling thread's watchdog can
 * tell a call that runs too long from a batch that is merely long or not started yet.
 */
import vm from 'node:vm';
import { parentPort, workerData } from 'node:worker_threads';
import { LUA_REGISTRYINDEX, LuaFactory, LuaReturn, LuaType } from 'wasmoon';

export interface WorkerConfig {
  kind: 'lua' | 'js';
  source: string;
  name: string;
  timeoutMs: number;
  memoryBytes: number;
  /** Int32 [calls started, calls finished] since the worker started, for the watchdog. */
  progress: SharedArrayBuffer;
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

/** A batch as sent: JSON of `[id, input][]`; answered by JSON of `WorkerReply[]`. */
export type WorkerBatch = Array<[number, ScriptInput]>;

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

const LUA_HOOK_COUNT = 8;
/** Instructions between two looks at the clock. */
const LUA_HOOK_EVERY = 1000;
const LUA_TIMEOUT = 'trustix: time limit exceeded';

/**
 * The Lua state is driven through the C API: wasmoon's object layer (a new thread, a new hook
 * function and proxies per call) costs several hundred microseconds a call. Here the hook is
 * installed once and reads a deadline that each call sets, the answers go in as plain strings and
 * numbers and are built into tables by Lua itself, and the entry point is kept in the registry,
 * out of the script's reach.
 */
async function setupLua(): Promise<Call> {
  const factory = new LuaFactory();
  const engine = await factory.createEngine({
    openStandardLibs: true,
    injectObjects: false,
    enableProxy: false,
    traceAllocations: true,
  });
  const lua = engine.global.lua;
  const L = engine.global.address;
  let deadline = Number.POSITIVE_INFINITY;
  // a count hook set on the main thread is inherited by every coroutine the script creates
  const hook = lua.module.addFunction((state: number) => {
    if (Date.now() > deadline) {
      lua.lua_pushstring(state, LUA_TIMEOUT);
      lua.lua_error(state);
    }
  }, 'vii');
  lua.lua_sethook(L, hook, LUA_HOOK_COUNT, LUA_HOOK_EVERY);
  // load the script with a chunk loader captured before `load` goes away; answers arrive as
  // (count, protocol, key, then name, weight, status, value, check per log)
  engine.doStringSync(`
    local load, type, error = load, type, error
    __trustix_load = function(src, name)
      local f, err = load(src, '=' .. name, 't')
      if not f then error('syntax: ' .. err, 0) end
      f()
      if type(decide) ~= 'function' then error('nodecide', 0) end
      local decide = decide
      __trustix_call = function(n, protocol, key, ...)
        local args, answers = { ... }, {}
        for i = 1, n do
          local b = (i - 1) * 5
          answers[i] = { name = args[b + 1], weight = args[b + 2], status = args[b + 3], value = args[b + 4], check = args[b + 5] }
        end
        local v, c = decide(answers, { protocol = protocol, key = key })
        if type(v) == 'table' then return v.value, v.confidence end
        return v, c
      end
    end
  `);
  engine.doStringSync(LUA_REMOVE.map((g) => `${g} = nil`).join('\n'));
  engine.global.setMemoryMax(cfg.memoryBytes);

  /** Calls the function under the arguments on the stack with the time limit; leaves `nresults`. */
  const pcall = (nargs: number, nresults: number, fallback: string): void => {
    deadline = Date.now() + cfg.timeoutMs;
    let status: number;
    try {
      status = lua.lua_pcallk(L, nargs, nresults, 0, 0, null);
    } finally {
      deadline = Number.POSITIVE_INFINITY;
    }
    if (status === LuaReturn.Ok) return;
    const t = lua.lua_type(L, -1);
    const msg =
      t === LuaType.String || t === LuaType.Number
        ? lua.lua_tolstring(L, -1, null)
        : `(error object is a ${lua.lua_typename(L, t)} value)`;
    lua.lua_settop(L, 0);
    if (status === LuaReturn.ErrorMem) throw new ScriptError('script.memory', 'memory limit exceeded');
    throw luaError(msg, fallback);
  };

  lua.lua_settop(L, 0);
  lua.lua_getglobal(L, '__trustix_load');
  lua.lua_pushstring(L, cfg.source);
  lua.lua_pushstring(L, cfg.name);
  pcall(2, 0, 'script.load');
  lua.lua_getglobal(L, '__trustix_call');
  const entry = lua.luaL_ref(L, LUA_REGISTRYINDEX);
  engine.doStringSync('__trustix_load = nil; __trustix_call = nil');

  const pushString = (s: string | null | undefined) => {
    if (typeof s === 'string') lua.lua_pushstring(L, s);
    else lua.lua_pushnil(L);
  };
  /** A returned Lua value as JSON data; anything else (tables, functions) as an object. */
  const read = (i: number): unknown => {
    switch (lua.lua_type(L, i)) {
      case LuaType.Nil:
      case LuaType.None:
        return null;
      case LuaType.String:
        return lua.lua_tolstring(L, i, null);
      case LuaType.Number: {
        // NaN and infinities would turn into null in JSON; as strings they are refused
        const x = lua.lua_tonumberx(L, i, null);
        return Number.isFinite(x) ? x : String(x);
      }
      case LuaType.Boolean:
        return lua.lua_toboolean(L, i) !== 0;
      default:
        return { type: lua.lua_typename(L, lua.lua_type(L, i)) };
    }
  };

  return (input) => {
    const n = input.answers.length;
    lua.lua_settop(L, 0);
    if (!lua.lua_checkstack(L, 4 + 5 * n)) throw new ScriptError('script.error', 'too many answers');
    // registry references are lua_Integer, an i64 across the WebAssembly boundary
    lua.lua_rawgeti(L, LUA_REGISTRYINDEX, BigInt(entry));
    lua.lua_pushinteger(L, BigInt(n));
    lua.lua_pushstring(L, input.query.protocol);
    lua.lua_pushstring(L, input.query.key);
    for (const a of input.answers) {
      lua.lua_pushstring(L, a.name);
      // integers stay Lua integers (2, not 2.0), as scripts may print or compare them
      if (Number.isSafeInteger(a.weight)) lua.lua_pushinteger(L, BigInt(a.weight));
      else lua.lua_pushnumber(L, a.weight);
      lua.lua_pushstring(L, a.status);
      pushString(a.value);
      pushString(a.check);
    }
    pcall(3 + 5 * n, 2, 'script.error');
    const value = read(1);
    const confidence = read(2);
    lua.lua_settop(L, 0);
    return confidence === null ? { value } : { value, confidence };
  };
}

function luaError(err: unknown, fallback: string): ScriptError {
  const msg = err instanceof Error ? err.message : String(err);
  if (msg === LUA_TIMEOUT)
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
  // the input is parsed once, by the context's own JSON, captured before the script could touch it
  const wrap = new vm.Script(
    `(() => {
      const parse = JSON.parse, stringify = JSON.stringify;
      return (input) => {
        const x = parse(input);
        const r = decide(x.answers, x.query);
        if (r !== null && typeof r === 'object' && typeof r.then === 'function') throw new TypeError('decide must not return a promise');
        return stringify(typeof r === 'object' && r !== null ? r : { value: r === undefined ? null : r });
      };
    })()`,
    { filename: 'trustix-wrap' },
  );
  (ctx as Record<string, unknown>).__trustix_call = wrap.runInContext(ctx);
  try {
    new vm.Script(cfg.source, { filename: cfg.name }).runInContext(ctx, opts);
  } catch (err) {
    throw jsError(err, 'script.load');
  }
  if (vm.runInContext('typeof decide', ctx) !== 'function') {
    throw new ScriptError('script.load', 'the script defines no function decide');
  }
  const call = new vm.Script('__trustix_call(__trustix_in)', { filename: 'trustix-call' });
  return (input) => {
    (ctx as Record<string, unknown>).__trustix_in = JSON.stringify(input);
    let out: unknown;
    try {
      // no `timeout` here: it starts a watchdog thread per call (about 100 us); the caller's
      // watchdog terminates this worker instead when a call overruns (sandbox.ts). Running through
      // a Script (not calling the function directly) drains the context's microtasks after each call.
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
  const progress = new Int32Array(cfg.progress);
  port.on('message', (m: string) => {
    const batch = JSON.parse(m) as WorkerBatch;
    const replies: WorkerReply[] = [];
    for (const [id, input] of batch) {
      Atomics.add(progress, 0, 1);
      try {
        // results are plain data already (parsed from the context's JSON, or Lua primitives)
        replies.push({ id, ok: true, result: call(input) });
      } catch (err) {
        const e = err instanceof ScriptError ? err : new ScriptError('script.error', String(err));
        replies.push({ id, ok: false, check: e.check, message: e.message });
      }
      Atomics.add(progress, 1, 1);
    }
    port.postMessage(JSON.stringify(replies));
  });
}

await main();
