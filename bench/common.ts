// Helpers shared by the benches that drive a Log in process (bench/run.ts, bench/growth.ts).
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Entry } from '../src/core/entry.js';
import type { Log } from '../src/log/log.js';

/** Entries per durable batch (fsync and one signed checkpoint each). */
export const BATCH = 10_000;

/** CPU time (user + system) of this process since `since`, in microseconds per operation. */
export function cpuMicros(since: NodeJS.CpuUsage, ops: number): number {
  const u = process.cpuUsage(since);
  return Math.round(((u.user + u.system) / ops) * 10) / 10;
}

/**
 * CPU time (user + system) of another process so far, in microseconds, from /proc/PID/stat; NaN
 * where that is not available (not Linux).
 */
export function processCpuMicros(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the fields after the command name (which may hold spaces) in parentheses; utime and stime are 14 and 15
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // in clock ticks of 1/100 s (USER_HZ, 100 on Linux)
    return ((Number(f[11]) + Number(f[12])) / 100) * 1e6;
  } catch {
    return Number.NaN;
  }
}

export function emit(name: string, value: number, unit: string, extra: Record<string, unknown> = {}): void {
  console.log(JSON.stringify({ name, value: Math.round(value * 100) / 100, unit, ...extra }));
}

const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';
export function nixKey(r: Buffer = randomBytes(32), at = 0): Buffer {
  let s = '';
  for (let i = 0; i < 32; i++) s += NIX32[r[at + i] & 31];
  return Buffer.from(s);
}

/**
 * The random bytes of a whole batch come from one call: one call per key and value cost the
 * submitting side (which shares the sequencer's thread here) about a fifth of its time.
 */
export function makeEntries(n: number): Entry[] {
  const out: Entry[] = new Array(n);
  const r = randomBytes(64 * n);
  for (let i = 0; i < n; i++) {
    out[i] = {
      protocol: 'nix',
      key: nixKey(r, 64 * i),
      value: r.subarray(64 * i + 32, 64 * i + 64),
      metadata: Buffer.from(`{"name":"pkg-${i}","narSize":${1000 + i}}`),
    };
  }
  return out;
}

/**
 * Feeds `count` entries with two batches in flight, as many concurrent submitters would; keeps one
 * key in 97 in `keys` for lookups. Returns the wall time in seconds.
 */
export async function ingest(log: Log, count: number, keys: Buffer[]): Promise<number> {
  const start = process.hrtime.bigint();
  const inFlight: Promise<unknown>[] = [];
  for (let done = 0; done < count; done += BATCH) {
    const entries = makeEntries(Math.min(BATCH, count - done));
    // Copied out of the entry: a key is a slice of Node's shared 8 KB buffer pool, so keeping one
    // key in 97 kept nearly every pool slab of the run alive (about 75 MB at a million entries),
    // memory that belongs to the bench's bookkeeping, not to a submitter or to the log.
    for (let i = 0; i < entries.length; i += 97) {
      const key = Buffer.allocUnsafeSlow(entries[i].key.length);
      entries[i].key.copy(key);
      keys.push(key);
    }
    inFlight.push(log.submit(entries));
    if (inFlight.length >= 3) await inFlight.shift();
  }
  await Promise.all(inFlight);
  return Number(process.hrtime.bigint() - start) / 1e9;
}

/**
 * Resident anonymous memory of this process in bytes (heap, buffers, LMDB's write transaction),
 * that is RSS without the file pages of LMDB's memory map, which the kernel can drop at will.
 * Undefined where /proc/self/status does not say (not Linux).
 */
export function rssAnonBytes(): number | undefined {
  try {
    const m = /RssAnon:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Peak RSS and peak anonymous RSS, sampled every 50 ms while started. */
export class PeakMemory {
  rss = 0;
  anon = 0;
  private timer: NodeJS.Timeout | undefined;

  sample(): void {
    // rss() alone: memoryUsage() also walks the heap's spaces, a cost counted in the CPU measured
    this.rss = Math.max(this.rss, process.memoryUsage.rss());
    this.anon = Math.max(this.anon, rssAnonBytes() ?? 0);
  }

  start(): this {
    this.timer ??= setInterval(() => this.sample(), 50);
    return this;
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}

/**
 * Starts `trustix serve --config CONFIG` on a free loopback port (the built CLI) and resolves once
 * it is ready, with the process and its URL.
 */
export function serveConfig(config: string): Promise<{ proc: ChildProcess; url: string }> {
  const main = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
  const proc = spawn(process.execPath, [main, 'serve', '--config', config, '--listen', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  return new Promise((resolve, reject) => {
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^listening (http\S+)/m.exec(out);
      if (/^ready$/m.test(out) && m) resolve({ proc, url: m[1] });
    });
    proc.on('exit', (code) => reject(new Error(`trustix serve exited (${code}): ${out}`)));
  });
}
