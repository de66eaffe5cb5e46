// npm run bench: prints one JSON line per figure. Sizes can be reduced for a quick look with
// TRUSTIX_BENCH_N (entries in the first phase; the second phase adds as many again, unless
// TRUSTIX_BENCH_SECOND=0). The read figures also give the process's CPU time per operation, which
// on a shared machine says more than the wall-clock rate.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Entry } from '../src/core/entry.js';
import { type LookupAnswer, verifyLookup } from '../src/core/lookup.js';
import { verifierFromVkey } from '../src/core/note.js';
import { Log } from '../src/log/log.js';

const N = Number(process.env.TRUSTIX_BENCH_N ?? 1_000_000);
const BATCH = 10_000;

/** CPU time (user + system) of this process since `since`, in microseconds per operation. */
function cpuMicros(since: NodeJS.CpuUsage, ops: number): number {
  const u = process.cpuUsage(since);
  return Math.round(((u.user + u.system) / ops) * 10) / 10;
}

function emit(name: string, value: number, unit: string, extra: Record<string, unknown> = {}): void {
  console.log(JSON.stringify({ name, value: Math.round(value * 100) / 100, unit, ...extra }));
}

const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';
function nixKey(r: Buffer = randomBytes(32), at = 0): Buffer {
  let s = '';
  for (let i = 0; i < 32; i++) s += NIX32[r[at + i] & 31];
  return Buffer.from(s);
}

/**
 * The random bytes of a whole batch come from one call: one call per key and value cost the
 * submitting side (which shares the sequencer's thread here) about a fifth of its time.
 */
function makeEntries(n: number): Entry[] {
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

/** Feeds `count` entries with two batches in flight, as many concurrent submitters would. */
async function ingest(log: Log, count: number, keys: Buffer[]): Promise<number> {
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
 * Peak resident memory, split as Linux reports it: anonymous memory (heap, buffers, LMDB's write
 * transaction) and file pages of the LMDB memory map, which the kernel can drop at will.
 */
let peakRss = 0;
let peakAnon = 0;
function sampleMemory(): void {
  peakRss = Math.max(peakRss, process.memoryUsage().rss);
  try {
    const m = /RssAnon:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) peakAnon = Math.max(peakAnon, Number(m[1]) * 1024);
  } catch {
    // not Linux: only the total is reported
  }
}
const rssTimer = setInterval(sampleMemory, 50);

const dir = mkdtempSync(join(tmpdir(), 'trustix-bench-'));
try {
  const log = await Log.create(dir, 'bench.example/log', { maxBatch: BATCH, batchDelayMs: 5 });
  const keys: Buffer[] = [];
  const ingestCpu = process.cpuUsage();
  const t1 = await ingest(log, N, keys);
  // all threads (the sparse index worker included) and the submitters' entry generation
  const ingestCpuUs = cpuMicros(ingestCpu, N);
  sampleMemory();
  emit('ingest_fresh_entries_per_s', N / t1, 'entries/s', {
    entries: N,
    seconds: t1,
    batch: BATCH,
    durable: true,
    cpu_us_per_entry: ingestCpuUs,
  });
  emit('ingest_fresh_peak_rss', peakRss / 2 ** 20, 'MiB', {
    entries: N,
    anonymous_mib: Math.round(peakAnon / 2 ** 20),
  });

  // lookups with both proofs, generated from disk, for present and absent keys
  const L = Math.min(200_000, N);
  const lookupKeys = Array.from({ length: L }, (_, i) =>
    i % 4 === 3 ? nixKey() : keys[(i * 7919) % keys.length],
  );
  let t = process.hrtime.bigint();
  let cpu = process.cpuUsage();
  const answers: LookupAnswer[] = new Array(L);
  for (let i = 0; i < L; i++) answers[i] = log.lookup('nix', lookupKeys[i]);
  let s = Number(process.hrtime.bigint() - t) / 1e9;
  emit('lookup_with_proofs_per_s', L / s, 'lookups/s', {
    lookups: L,
    present_fraction: 0.75,
    size: N,
    cpu_us_per_op: cpuMicros(cpu, L),
  });

  // the same answers as the JSON text a server sends (Log.lookupJson), checked against the objects
  t = process.hrtime.bigint();
  cpu = process.cpuUsage();
  let jsonBytes = 0;
  for (let i = 0; i < L; i++) jsonBytes += log.lookupJson('nix', lookupKeys[i]).body.length;
  s = Number(process.hrtime.bigint() - t) / 1e9;
  const jsonCpu = cpuMicros(cpu, L);
  for (let i = 0; i < L; i += 997) {
    if (log.lookupJson('nix', lookupKeys[i]).body !== JSON.stringify(answers[i]))
      throw new Error(`lookupJson differs from the answer object for lookup ${i}`);
  }
  emit('lookup_json_per_s', L / s, 'lookups/s', {
    lookups: L,
    present_fraction: 0.75,
    size: N,
    avg_bytes: Math.round(jsonBytes / L),
    cpu_us_per_op: jsonCpu,
  });

  const verifier = verifierFromVkey(log.vkey);
  const V = Math.min(50_000, L);
  t = process.hrtime.bigint();
  cpu = process.cpuUsage();
  let present = 0;
  for (let i = 0; i < V; i++) {
    const v = verifyLookup(answers[i], verifier, { protocol: 'nix', key: lookupKeys[i] });
    if (v.status === 'invalid') throw new Error(`bench answer ${i} invalid: ${v.reason}`);
    if (v.status === 'present') present++;
  }
  s = Number(process.hrtime.bigint() - t) / 1e9;
  emit('verify_lookup_per_s', V / s, 'verifications/s', {
    verifications: V,
    present,
    cpu_us_per_op: cpuMicros(cpu, V),
  });

  // proof sizes at this size
  const sample = answers.slice(0, 1000);
  const presentAnswers = sample.filter((a) => a.entry);
  const absentAnswers = sample.filter((a) => !a.entry);
  const avg = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  emit(
    'map_proof_bytes_present',
    avg(presentAnswers.map((a) => Buffer.from(a.mapProof, 'base64').length)),
    'bytes',
    { size: N },
  );
  emit(
    'map_proof_bytes_absent',
    avg(absentAnswers.map((a) => Buffer.from(a.mapProof, 'base64').length)),
    'bytes',
    { size: N },
  );
  emit('inclusion_proof_bytes', avg(presentAnswers.map((a) => a.entry!.proof.length * 32)), 'bytes', {
    size: N,
  });
  emit('lookup_answer_json_bytes', avg(sample.map((a) => JSON.stringify(a).length)), 'bytes', { size: N });

  if (process.env.TRUSTIX_BENCH_SECOND !== '0') {
    // scaling: from N to 2N
    const t2 = await ingest(log, N, keys);
    emit('ingest_second_entries_per_s', N / t2, 'entries/s', { from: N, to: 2 * N, seconds: t2 });
    sampleMemory();
    emit('peak_rss_after_second', peakRss / 2 ** 20, 'MiB', {
      entries: 2 * N,
      anonymous_mib: Math.round(peakAnon / 2 ** 20),
    });
  }
  await log.close();
} finally {
  clearInterval(rssTimer);
  rmSync(dir, { recursive: true, force: true });
}
