/**
 * Runs one user decision script (Lua in wasmoon, JavaScript in QuickJS: both WebAssembly) inside a
 * worker thread, so that a script that blocks in native code can be killed without harming the
 * process that asked (see sandbox.ts, docs/deciding.md). Each call gets the classified answers and
 * returns a JSON result, or an error with a check name.
 *
 * Calls arrive in batches (one message, a JSON string, for all the calls queued while the previous
 * batch ran) and are answered in one message: each message wakes a thread, which costs more than a
 * small script. Progress is published in shared memory so that the calling thread's watchdog can
 * tell a call that runs too long from a batch that is merely long or not started yet.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { LUA_REGISTRYINDEX, LuaReturn, LuaType } from 'wasmoon';
import { JsIsolate } from './js-isolate.js';
import { createLua, luaAllocator } from './lua-native.js';
import { ScriptError } from './script-error.js';

export interface WorkerConfig {
  kind: 'lua' | 'js';
  source: string;
  name: string;
  /** Per call. */
  timeoutMs: number;
  /** For running the script's top level once, when the worker starts. */
  loadTimeoutMs: number;
  memoryBytes: number;
  /**
   * For the watchdog: Int32 [calls started, calls finished] since the worker started, then a
   * Float64 (at byte 8): when the last call started (Date.now()).
   */
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
 * The Lua state is driven through the raw WebAssembly exports (lua-native.ts): wasmoon's object
 * layer (a new thread, a new hook function and proxies per call) costs several hundred
 * microseconds a call, and even its C API bindings cost a few microseconds per crossing. The
 * hook is installed once and reads a deadline that each call sets; the memory limit is an
 * allocator inside WebAssembly; a call's input goes in as one string that Lua unpacks itself
 * (`string.unpack`, captured before the script runs); and the entry point is kept in the
 * registry, out of the script's reach.
 */
async function setupLua(): Promise<Call> {
  const { engine, raw } = await createLua({
    openStandardLibs: true,
    injectObjects: false,
    enableProxy: false,
    traceAllocations: true,
  });
  const lua = engine.global.lua;
  const L = engine.global.address;
  // from here on Lua allocates inside WebAssembly; wasmoon's count of what it holds carries over
  const allocator = luaAllocator(raw);
  allocator.used.value = engine.global.getMemoryUsed();
  raw.lua_setallocf(
    L,
    lua.module.addFunction(allocator.alloc as unknown as (...args: number[]) => number, 'iiiii'),
    0,
  );
  let deadline = Number.POSITIVE_INFINITY;
  /**
   * The deadline passed during this call. From then on the hook fires on every instruction of
   * the thread it caught and raises again, so a script that catches the error (pcall, a
   * coroutine) cannot run on: the error unwinds every protected call up to the host's. The call
   * is a timeout whatever message reaches the host.
   */
  let expired = false;
  /** Threads whose hook was made to fire on every instruction, to be put back after the call. */
  const hurried = new Set<number>();
  // a count hook set on the main thread is inherited by every coroutine the script creates
  const hook = lua.module.addFunction((state: number) => {
    if (!expired && Date.now() <= deadline) {
      if (hurried.delete(state)) lua.lua_sethook(state, hook, LUA_HOOK_COUNT, LUA_HOOK_EVERY);
      return;
    }
    expired = true;
    if (!hurried.has(state)) {
      hurried.add(state);
      lua.lua_sethook(state, hook, LUA_HOOK_COUNT, 1);
    }
    lua.lua_pushstring(state, LUA_TIMEOUT);
    lua.lua_error(state);
  }, 'vii');
  lua.lua_sethook(L, hook, LUA_HOOK_COUNT, LUA_HOOK_EVERY);
  // Two ways Lua runs the script's code with hooks off, out of the time limit's reach: a message
  // handler (xpcall) runs inside the hook that raised the timeout, and __gc metamethods run with
  // hooks off. xpcall becomes a pcall that calls the handler after unwinding (the debug library,
  // the only thing a handler could see of the failing frame, is gone anyway); metatables with
  // __gc are refused (Lua marks an object for finalization only when its metatable is set).
  engine.doStringSync(`
    local pcall, type, rawget, error, setmeta = pcall, type, rawget, error, setmetatable
    local pack, unpack = table.pack, table.unpack
    xpcall = function(f, handler, ...)
      local r = pack(pcall(f, ...))
      if r[1] then return unpack(r, 1, r.n) end
      local _, v = pcall(handler, r[2])
      return false, v
    end
    setmetatable = function(t, mt)
      if type(mt) == 'table' and rawget(mt, '__gc') ~= nil then error('__gc metamethods are not available', 2) end
      return setmeta(t, mt)
    end
  `);
  // load the script with a chunk loader captured before `load` goes away; each call's input is
  // one string in the layout of `encodeInput`
  engine.doStringSync(`
    local load, type, error, unpack, tointeger = load, type, error, string.unpack, math.tointeger
    __trustix_load = function(src, name)
      local f, err = load(src, '=' .. name, 't')
      if not f then error('syntax: ' .. err, 0) end
      f()
      if type(decide) ~= 'function' then error('nodecide', 0) end
      local decide = decide
      __trustix_call = function(input)
        local n, protocol, key, pos = unpack('<I4s4s4', input)
        local answers = {}
        for i = 1, n do
          local name, status, flags, weight, value, check
          name, status, flags, weight, value, check, pos = unpack('<s4s4Bds4s4', input, pos)
          if flags & 4 ~= 0 then weight = tointeger(weight) end
          if flags & 1 == 0 then value = nil end
          if flags & 2 == 0 then check = nil end
          answers[i] = { name = name, weight = weight, status = status, value = value, check = check }
        end
        local v, c = decide(answers, { protocol = protocol, key = key })
        if type(v) == 'table' then return v.value, v.confidence end
        return v, c
      end
    end
  `);
  engine.doStringSync(LUA_REMOVE.map((g) => `${g} = nil`).join('\n'));
  allocator.max.value = cfg.memoryBytes;

  // one block of WebAssembly memory for what goes in (the input, a length), grown as needed
  let scratch = { ptr: raw.malloc(1024), size: 1024 };
  const heap = () => new Uint8Array(raw.memory.buffer);
  const LEN = 0; // offset of a size_t that lua_tolstring fills
  const DATA = 8;
  const text = new TextDecoder();
  const readString = (idx: number): string => {
    const p = raw.lua_tolstring(L, idx, scratch.ptr + LEN);
    const len = new DataView(raw.memory.buffer).getUint32(scratch.ptr + LEN, true);
    return text.decode(heap().subarray(p, p + len));
  };
  const typeName = (t: number): string => {
    const p = raw.lua_typename(L, t);
    const h = heap();
    return text.decode(h.subarray(p, h.indexOf(0, p)));
  };

  /** Calls the function under the arguments on the stack with a time limit; leaves `nresults`. */
  const pcall = (nargs: number, nresults: number, fallback: string, limitMs: number): void => {
    expired = false;
    deadline = Date.now() + limitMs;
    let status: number;
    try {
      status = raw.lua_pcallk(L, nargs, nresults, 0, 0, 0);
    } finally {
      deadline = Number.POSITIVE_INFINITY;
      if (hurried.delete(L)) lua.lua_sethook(L, hook, LUA_HOOK_COUNT, LUA_HOOK_EVERY);
    }
    if (expired) {
      expired = false;
      raw.lua_settop(L, 0);
      throw new ScriptError('script.timeout', `time limit of ${limitMs} ms exceeded`);
    }
    if (status === LuaReturn.Ok) return;
    const t = raw.lua_type(L, -1);
    const msg =
      t === LuaType.String || t === LuaType.Number
        ? readString(-1)
        : `(error object is a ${typeName(t)} value)`;
    raw.lua_settop(L, 0);
    if (status === LuaReturn.ErrorMem) throw new ScriptError('script.memory', 'memory limit exceeded');
    throw luaError(msg, fallback);
  };
  /** Pushes a string; the limit is lifted meanwhile, as a refusal outside a protected call would abort. */
  const pushBytes = (write: (into: Uint8Array) => number, most: number): void => {
    if (scratch.size < DATA + most) {
      raw.free(scratch.ptr);
      const size = 2 * (DATA + most);
      scratch = { ptr: raw.malloc(size), size };
      if (scratch.ptr === 0) throw new ScriptError('script.memory', 'out of memory for the input');
    }
    const len = write(heap().subarray(scratch.ptr + DATA, scratch.ptr + scratch.size));
    allocator.max.value = Number.POSITIVE_INFINITY;
    raw.lua_pushlstring(L, scratch.ptr + DATA, len);
    allocator.max.value = cfg.memoryBytes;
  };
  const pushString = (s: string) => pushBytes((into) => encoder.encodeInto(s, into).written, 3 * s.length);

  raw.lua_settop(L, 0);
  lua.lua_getglobal(L, '__trustix_load');
  pushString(cfg.source);
  pushString(cfg.name);
  pcall(2, 0, 'script.load', cfg.loadTimeoutMs);
  lua.lua_getglobal(L, '__trustix_call');
  const entry = BigInt(lua.luaL_ref(L, LUA_REGISTRYINDEX));
  engine.doStringSync('__trustix_load = nil; __trustix_call = nil');

  /** A returned Lua value as JSON data; anything else (tables, functions) as an object. */
  const read = (i: number): unknown => {
    const t = raw.lua_type(L, i);
    switch (t) {
      case LuaType.Nil:
      case LuaType.None:
        return null;
      case LuaType.String:
        return readString(i);
      case LuaType.Number: {
        // NaN and infinities would turn into null in JSON; as strings they are refused
        const x = raw.lua_tonumberx(L, i, 0);
        return Number.isFinite(x) ? x : String(x);
      }
      case LuaType.Boolean:
        return raw.lua_toboolean(L, i) !== 0;
      default:
        return { type: typeName(t) };
    }
  };

  return (input) => {
    raw.lua_settop(L, 0);
    raw.lua_rawgeti(L, LUA_REGISTRYINDEX, entry);
    pushBytes((into) => encodeInput(input, into), maxEncoded(input));
    pcall(1, 2, 'script.error', cfg.timeoutMs);
    const value = read(1);
    const confidence = read(2);
    raw.lua_settop(L, 0);
    return confidence === null ? { value } : { value, confidence };
  };
}

const encoder = new TextEncoder();

/** An upper bound of `encodeInput`'s length (UTF-8 takes at most 3 bytes per UTF-16 unit). */
function maxEncoded(input: ScriptInput): number {
  let chars = input.query.protocol.length + input.query.key.length;
  for (const a of input.answers)
    chars += a.name.length + a.status.length + (a.value?.length ?? 0) + (a.check?.length ?? 0);
  return 12 + 25 * input.answers.length + 3 * chars;
}

/**
 * The input as Lua's `string.unpack` reads it, little-endian: the answer count (u32), protocol
 * and key (u32 length + bytes each), then per answer: name, status (strings as before), flags
 * (u8: 1 value present, 2 check present, 4 the weight is an integer), weight (f64), value and
 * check (strings, empty when absent). Returns the length written.
 */
export function encodeInput(input: ScriptInput, into: Uint8Array): number {
  const view = new DataView(into.buffer, into.byteOffset, into.byteLength);
  let at = 0;
  const str = (s: string) => {
    // the fields are nearly always ASCII, which a loop copies faster than encodeInto starts up
    let n = 0;
    while (n < s.length && s.charCodeAt(n) < 0x80) {
      into[at + 4 + n] = s.charCodeAt(n);
      n++;
    }
    if (n < s.length) n = encoder.encodeInto(s, into.subarray(at + 4)).written;
    view.setUint32(at, n, true);
    at += 4 + n;
  };
  view.setUint32(at, input.answers.length, true);
  at += 4;
  str(input.query.protocol);
  str(input.query.key);
  for (const a of input.answers) {
    str(a.name);
    str(a.status);
    // integers stay Lua integers (2, not 2.0), as scripts may print or compare them
    into[at++] =
      (a.value !== null ? 1 : 0) | (a.check !== null ? 2 : 0) | (Number.isSafeInteger(a.weight) ? 4 : 0);
    view.setFloat64(at, a.weight, true);
    at += 8;
    str(a.value ?? '');
    str(a.check ?? '');
  }
  return at;
}

function luaError(err: unknown, fallback: string): ScriptError {
  const msg = err instanceof Error ? err.message : String(err);
  if (/not enough memory/.test(msg)) return new ScriptError('script.memory', 'memory limit exceeded');
  if (msg === 'nodecide') return new ScriptError('script.load', 'the script defines no function decide');
  if (msg.startsWith('syntax: ')) return new ScriptError('script.load', msg.slice(8));
  return new ScriptError(fallback, msg);
}

/** JavaScript: one QuickJS runtime for the worker's life (js-isolate.ts); the input crosses as JSON text. */
async function setupJs(): Promise<{ call: Call; dead: () => boolean }> {
  const iso = await JsIsolate.create(cfg);
  return { call: (input) => iso.call(JSON.stringify(input)), dead: () => iso.dead };
}

async function main(): Promise<void> {
  const port = parentPort!;
  let call: Call;
  let dead = () => false;
  try {
    if (cfg.kind === 'lua') call = await setupLua();
    else ({ call, dead } = await setupJs());
  } catch (err) {
    const e = err instanceof ScriptError ? err : new ScriptError('script.load', String(err));
    port.postMessage({ type: 'init-error', check: e.check, message: e.message });
    return;
  }
  port.postMessage({ type: 'ready' });
  const progress = new Int32Array(cfg.progress);
  const startedAt = new Float64Array(cfg.progress, 8, 1);
  port.on('message', (m: string) => {
    const batch = JSON.parse(m) as WorkerBatch;
    const replies: WorkerReply[] = [];
    for (const [id, input] of batch) {
      // the time first: the watchdog reads the count, then the time of the call it counts
      startedAt[0] = Date.now();
      Atomics.add(progress, 0, 1);
      try {
        // results are plain data already (parsed from the guest's JSON text, or Lua primitives)
        replies.push({ id, ok: true, result: call(input) });
      } catch (err) {
        const e = err instanceof ScriptError ? err : new ScriptError('script.error', String(err));
        replies.push({ id, ok: false, check: e.check, message: e.message });
      }
      Atomics.add(progress, 1, 1);
      if (dead()) break;
    }
    port.postMessage(JSON.stringify(replies));
    // the engine may be inconsistent: the calls of the batch not run fail with the worker
    if (dead()) process.exit(1);
  });
}

await main();
