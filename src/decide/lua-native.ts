/**
 * Direct access to wasmoon's Lua (5.4 compiled to WebAssembly) for the script worker: its raw
 * WebAssembly exports, and an allocator with a memory limit that runs inside WebAssembly.
 *
 * wasmoon's own bindings go through Emscripten's `ccall` with its assertion wrappers, and its
 * memory-limiting allocator is a JavaScript function: each Lua allocation and each API call
 * crossed into JavaScript and back several times, which made up most of a small script's cost.
 */
import { type LuaEngine, LuaFactory } from 'wasmoon';

/** The raw exports this module uses (pointers and sizes are i32, lua_Integer is i64). */
export interface LuaExports {
  memory: WebAssembly.Memory;
  malloc(size: number): number;
  free(ptr: number): void;
  realloc(ptr: number, size: number): number;
  lua_settop(L: number, idx: number): void;
  lua_checkstack(L: number, n: number): number;
  lua_rawgeti(L: number, idx: number, n: bigint): number;
  lua_pushlstring(L: number, s: number, len: number): number;
  lua_pcallk(L: number, nargs: number, nresults: number, errfunc: number, ctx: number, k: number): number;
  lua_type(L: number, idx: number): number;
  lua_typename(L: number, t: number): number;
  lua_tolstring(L: number, idx: number, len: number): number;
  lua_tonumberx(L: number, idx: number, isnum: number): number;
  lua_toboolean(L: number, idx: number): number;
  lua_setallocf(L: number, f: number, ud: number): void;
}

/**
 * Creates a wasmoon engine and returns it with the raw exports of its WebAssembly instance.
 * wasmoon does not expose them, so `WebAssembly.instantiate` is watched while the engine loads
 * (the worker does nothing else meanwhile); the instance is recognised by its Lua exports.
 */
export async function createLua(
  options: Parameters<LuaFactory['createEngine']>[0],
): Promise<{ engine: LuaEngine; raw: LuaExports }> {
  const original = WebAssembly.instantiate;
  let raw: LuaExports | undefined;
  const watched = async (...args: Parameters<typeof original>) => {
    const r = (await (original as (...a: unknown[]) => Promise<unknown>).apply(WebAssembly, args)) as
      | WebAssembly.Instance
      | WebAssembly.WebAssemblyInstantiatedSource;
    const instance = 'instance' in r ? r.instance : r;
    if (typeof instance.exports.lua_pcallk === 'function') raw = instance.exports as unknown as LuaExports;
    return r;
  };
  WebAssembly.instantiate = watched as typeof original;
  let engine: LuaEngine;
  try {
    engine = await new LuaFactory().createEngine(options);
  } finally {
    WebAssembly.instantiate = original;
  }
  if (!raw) throw new Error('the Lua WebAssembly instance was not found');
  return { engine, raw };
}

// WebAssembly binary encoding, enough for one small module (every index and size here is < 128
// except section and body lengths, which get full LEB128)
const I32 = 0x7f;
const F64 = 0x7c;
const uleb = (n: number): number[] => {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
};
const vec = (items: number[][]): number[] => [...uleb(items.length), ...items.flat()];
const name = (s: string): number[] => vec([...Buffer.from(s)].map((b) => [b]));
const section = (id: number, body: number[]): number[] => [id, ...uleb(body.length), ...body];
const f64 = (x: number): number[] => [0x44, ...new Uint8Array(new Float64Array([x]).buffer)];
const op = {
  end: 0x0b,
  if: [0x04, 0x40],
  return: 0x0f,
  call: 0x10,
  select: 0x1b,
  localGet: 0x20,
  localSet: 0x21,
  localTee: 0x22,
  globalGet: 0x23,
  globalSet: 0x24,
  i32Const: 0x41,
  i32Eqz: 0x45,
  i32And: 0x71,
  f64Gt: 0x64,
  f64Add: 0xa0,
  f64Sub: 0xa1,
  f64FromU32: 0xb8,
};

/**
 * A `lua_Alloc` (ud, ptr, osize, nsize) that keeps the bytes Lua holds in the global `used`
 * and refuses to grow past `max` (Lua then raises "not enough memory"). It calls the Lua
 * instance's own realloc and free, so an allocation never leaves WebAssembly. When ptr is NULL,
 * osize is an object type, not a size.
 */
function allocatorModule(): Uint8Array<ArrayBuffer> {
  // locals: 0 ud (unused), 1 ptr, 2 osize, 3 nsize, then 4 delta (f64) and 5 the result
  const [USED, MAX] = [0, 1];
  const [REALLOC, FREE] = [0, 1];
  const { localGet: lg, globalGet: gg, globalSet: gs } = op;
  const [P, O, N, DELTA, R] = [1, 2, 3, 4, 5];
  const body = [
    ...vec([
      [1, F64],
      [1, I32],
    ]),
    // nsize 0: free
    ...[lg, N, op.i32Eqz, ...op.if],
    ...[lg, P, ...op.if, gg, USED, lg, O, op.f64FromU32, op.f64Sub, gs, USED, lg, P, op.call, FREE, op.end],
    ...[op.i32Const, 0, op.return, op.end],
    // delta = nsize - (ptr ? osize : 0)
    ...[
      lg,
      N,
      op.f64FromU32,
      lg,
      O,
      op.f64FromU32,
      ...f64(0),
      lg,
      P,
      op.select,
      op.f64Sub,
      op.localSet,
      DELTA,
    ],
    // growing past max: refuse
    ...[lg, DELTA, ...f64(0), op.f64Gt, gg, USED, lg, DELTA, op.f64Add, gg, MAX, op.f64Gt, op.i32And],
    ...[...op.if, op.i32Const, 0, op.return, op.end],
    ...[lg, P, lg, N, op.call, REALLOC, op.localTee, R],
    ...[...op.if, gg, USED, lg, DELTA, op.f64Add, gs, USED, op.end],
    ...[lg, R, op.end],
  ];
  const bytes = [
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(
      1,
      vec([
        [0x60, ...vec([[I32], [I32]]), ...vec([[I32]])],
        [0x60, ...vec([[I32]]), ...vec([])],
        [0x60, ...vec([[I32], [I32], [I32], [I32]]), ...vec([[I32]])],
      ]),
    ),
    ...section(
      2,
      vec([
        [...name('m'), ...name('realloc'), 0x00, 0],
        [...name('m'), ...name('free'), 0x00, 1],
      ]),
    ),
    ...section(3, vec([[2]])),
    ...section(
      6,
      vec([
        [F64, 0x01, ...f64(0), op.end],
        [F64, 0x01, ...f64(Number.POSITIVE_INFINITY), op.end],
      ]),
    ),
    ...section(
      7,
      vec([
        [...name('alloc'), 0x00, 2],
        [...name('used'), 0x03, USED],
        [...name('max'), 0x03, MAX],
      ]),
    ),
    ...section(10, vec([[...uleb(body.length), ...body]])),
  ];
  return new Uint8Array(bytes);
}

export interface LuaAllocator {
  /** The lua_Alloc, to put in the function table. */
  alloc: WebAssembly.ExportValue;
  /** Bytes Lua holds. */
  used: WebAssembly.Global;
  /** The limit; +Infinity for none. */
  max: WebAssembly.Global;
}

export function luaAllocator(raw: LuaExports): LuaAllocator {
  const instance = new WebAssembly.Instance(new WebAssembly.Module(allocatorModule()), {
    m: { realloc: raw.realloc, free: raw.free },
  });
  const e = instance.exports;
  return { alloc: e.alloc, used: e.used as WebAssembly.Global, max: e.max as WebAssembly.Global };
}
