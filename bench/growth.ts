// npm run bench:growth: ingests into one log up to TRUSTIX_BENCH_GROWTH_N entries and prints, after
// every step (a million entries by default), what that step cost and what lookups cost at the size
// reached. `--help` lists the settings.
import { mkdtempSync, readdirSync, rmSync, statfsSync, statSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { stratumLevel } from '../src/core/smt-strata.js';
import { Log } from '../src/log/log.js';
import type { LogSnapshot, LogStore } from '../src/storage/store.js';
import { BATCH, cpuMicros, emit, ingest, nixKey, PeakMemory, rssAnonBytes } from './common.js';
import { diskIo, formatRow, type GrowthRow, growthRatios, ratiosOver } from './growth-figures.js';

/**
 * Disk the store takes per entry, measured (docs/performance.md, "Growth"): the allocated size of
 * the store over its entries was 463-552 bytes at 1M-4M, rounded up.
 */
const DISK_BYTES_PER_ENTRY = 560;
const LIMIT = 1.3;

const HELP = `usage: node dist/bench/growth.js [--check]

Ingests into a fresh log in durable batches of ${BATCH.toLocaleString('en-US')} (fsync and a signed checkpoint
each, two in flight) and after every step prints one line for people (stderr) and one JSON line
(stdout): entries/s and CPU per entry over the step, bytes written to and read from the disk per
entry (/proc/self/io, every thread of the process), page faults per entry; then lookups with both
proofs over a fixed number of random keys at that size (3/4 present): lookups/s, CPU and page faults
per lookup, the leaf tile cache's hit rate and the store reads per lookup; RSS, anonymous RSS, the
store's size on disk and per entry, and the load average. At the end, the ratios of CPU per entry
and per lookup between the first and the last step.

Disk: about ${DISK_BYTES_PER_ENTRY} bytes per entry (${Math.round(DISK_BYTES_PER_ENTRY / 1.048576)} MiB per million): 10M entries need about
${((DISK_BYTES_PER_ENTRY * 1e7) / 2 ** 30).toFixed(1)} GiB, 30M about ${((DISK_BYTES_PER_ENTRY * 3e7) / 2 ** 30).toFixed(1)} GiB. The bench refuses to start without that much free.

Environment:
  TRUSTIX_BENCH_GROWTH_N        entries to reach (default 10000000)
  TRUSTIX_BENCH_GROWTH_STEP     entries per step (default 1000000)
  TRUSTIX_BENCH_GROWTH_LOOKUPS  lookups measured after each step (default 50000)
  TRUSTIX_BENCH_GROWTH_BARS=1   reach 4 steps (1M and 4M by default): the ${LIMIT}x check of
                                CPU per entry and per lookup between the first and the last step
  TRUSTIX_BENCH_GROWTH_DIR      where the throwaway store goes (default: the temporary directory)
  TRUSTIX_BENCH_GROWTH_TILES    full tiles the log caches (default 4096, every leaf tile of 1M
                                entries): a smaller cache shows at 1M the hit rate of a larger log

Options:
  --check   exit with status 1 if CPU per entry or per lookup of the last step is more than
            ${LIMIT}x that of the first step
  --help    this text
`;

function positiveInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw.replaceAll('_', ''));
  if (!Number.isSafeInteger(n) || n <= 0) {
    console.error(`growth bench: ${name} must be a positive whole number, not ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return n;
}

let args: { check?: boolean; help?: boolean };
try {
  args = parseArgs({ options: { check: { type: 'boolean' }, help: { type: 'boolean' } } }).values;
} catch (err) {
  console.error(`growth bench: ${(err as Error).message}\n\n${HELP}`);
  process.exit(2);
}
if (args.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

const STEP = positiveInt('TRUSTIX_BENCH_GROWTH_STEP', 1_000_000);
const BARS = process.env.TRUSTIX_BENCH_GROWTH_BARS === '1';
const N = BARS ? 4 * STEP : positiveInt('TRUSTIX_BENCH_GROWTH_N', 10_000_000);
const LOOKUPS = positiveInt('TRUSTIX_BENCH_GROWTH_LOOKUPS', 50_000);
const TILES = process.env.TRUSTIX_BENCH_GROWTH_TILES
  ? positiveInt('TRUSTIX_BENCH_GROWTH_TILES', 0)
  : undefined;
const parent = process.env.TRUSTIX_BENCH_GROWTH_DIR || tmpdir();

const free = (() => {
  const s = statfsSync(parent);
  return s.bavail * s.bsize;
})();
const need = N * DISK_BYTES_PER_ENTRY;
if (free < need) {
  console.error(
    `growth bench: ${N.toLocaleString('en-US')} entries need about ${(need / 2 ** 30).toFixed(1)} GiB in ${parent}, ` +
      `${(free / 2 ** 30).toFixed(1)} GiB are free (set TRUSTIX_BENCH_GROWTH_DIR or a smaller TRUSTIX_BENCH_GROWTH_N)`,
  );
  process.exit(2);
}

/** Bytes allocated on disk by the files of `dir` (LMDB's file is sparse: its length is the map's). */
function allocatedBytes(dir: string): number {
  let total = 0;
  for (const name of readdirSync(dir)) total += statSync(join(dir, name)).blocks * 512;
  return total;
}

/** What the lookups read from the store, counted by wrapping its snapshots (the log is not changed). */
interface StoreReads {
  leafTiles: number;
  upperTiles: number;
  strata: number[];
}

function countingStore(store: LogStore, reads: StoreReads): () => void {
  const original = store.read;
  const countStratum = (id: Uint8Array) => {
    const level = stratumLevel(id);
    reads.strata[level] = (reads.strata[level] ?? 0) + 1;
  };
  store.read = <T>(fn: (snap: LogSnapshot) => T): T =>
    original.call(store, (s: LogSnapshot) => {
      const peekStratum = s.peekStratum?.bind(s);
      const counted: LogSnapshot = {
        head: () => s.head(),
        entry: (i) => s.entry(i),
        tile: (level, index) => {
          if (level === 0) reads.leafTiles++;
          else reads.upperTiles++;
          return s.tile(level, index);
        },
        stratum: (id) => {
          countStratum(id);
          return s.stratum(id);
        },
        peekStratum:
          peekStratum &&
          ((id) => {
            countStratum(id);
            return peekStratum(id);
          }),
        peekEntry: s.peekEntry?.bind(s),
      };
      return fn(counted);
    }) as T;
  return () => {
    store.read = original;
  };
}

/** Bytes of sparse index rows the commits hand to the store, counted by wrapping its commit. */
function countingCommits(store: LogStore, written: { strataBytes: number }): void {
  const original = store.commit;
  store.commit = (batch) => {
    for (const s of batch.strataWrites) written.strataBytes += s.data.length;
    return original.call(store, batch);
  };
}

const mib = (b: number) => Math.round(b / 2 ** 20);
const per = (x: number, n: number, digits = 2) => Math.round((x / n) * 10 ** digits) / 10 ** digits;

const dir = mkdtempSync(join(parent, 'trustix-growth-'));
// a store of several GiB is not left behind by an interrupted run
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    rmSync(dir, { recursive: true, force: true });
    process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
  });
}
const peak = new PeakMemory().start();
const rows: GrowthRow[] = [];
try {
  const log = await Log.create(dir, 'bench.example/log', {
    maxBatch: BATCH,
    batchDelayMs: 5,
    cachedTiles: TILES,
  });
  const keys: Buffer[] = [];
  const committed = { strataBytes: 0 };
  countingCommits(log.storage, committed);
  for (let size = 0; size < N; ) {
    const step = Math.min(STEP, N - size);
    peak.anon = 0;
    const io = diskIo();
    const strataBefore = committed.strataBytes;
    const ru = process.resourceUsage();
    let cpu = process.cpuUsage();
    const seconds = await ingest(log, step, keys);
    const ingestCpu = cpuMicros(cpu, step);
    const ingestSys = process.cpuUsage(cpu).system;
    const ru2 = process.resourceUsage();
    const io2 = diskIo();
    size += step;
    const written = io2.writeBytes - io.writeBytes;

    // A fixed number of lookups at this size: 3/4 keys present (drawn from every key kept so far),
    // 1/4 absent. The answers are not kept.
    const lookupKeys = Array.from({ length: LOOKUPS }, (_, i) =>
      i % 4 === 3 ? nixKey() : keys[Math.floor(Math.random() * keys.length)],
    );
    const present = lookupKeys.filter((_, i) => i % 4 !== 3).length;
    const ruLookups = process.resourceUsage();
    cpu = process.cpuUsage();
    const t = process.hrtime.bigint();
    let bytes = 0;
    for (const key of lookupKeys) bytes += log.lookup('nix', key).mapProof.length;
    const lookupSeconds = Number(process.hrtime.bigint() - t) / 1e9;
    const lookupCpu = cpuMicros(cpu, LOOKUPS);
    const ru3 = process.resourceUsage();
    if (bytes === 0) throw new Error('lookups returned no proofs');

    // the same lookups again with the store's reads counted (not timed: the counting costs CPU);
    // the caches are as warm as for the timed pass, which ran these keys once already
    const reads: StoreReads = { leafTiles: 0, upperTiles: 0, strata: [] };
    const restore = countingStore(log.storage, reads);
    try {
      for (const key of lookupKeys) log.lookup('nix', key);
    } finally {
      restore();
    }

    peak.sample();
    const store = allocatedBytes(dir);
    const row: GrowthRow = {
      size,
      entries_per_s: Math.round(step / seconds),
      cpu_us_per_entry: ingestCpu,
      sys_us_per_entry: per(ingestSys, step, 1),
      written_bytes_per_entry: Math.round(written / step),
      written_mib_per_batch: per(written / 2 ** 20, Math.ceil(step / BATCH), 1),
      strata_bytes_per_entry: Math.round((committed.strataBytes - strataBefore) / step),
      read_bytes_per_entry: Math.round((io2.readBytes - io.readBytes) / step),
      major_faults_per_entry: per(ru2.majorPageFault - ru.majorPageFault, step, 3),
      minor_faults_per_entry: per(ru2.minorPageFault - ru.minorPageFault, step, 3),
      lookups_per_s: Math.round(LOOKUPS / lookupSeconds),
      cpu_us_per_op: lookupCpu,
      minor_faults_per_op: per(ru3.minorPageFault - ruLookups.minorPageFault, LOOKUPS),
      major_faults_per_op: per(ru3.majorPageFault - ruLookups.majorPageFault, LOOKUPS, 3),
      rss_mib: mib(process.memoryUsage().rss),
      anon_mib: mib(rssAnonBytes() ?? 0),
      peak_anon_mib: mib(peak.anon),
      store_bytes: store,
      store_bytes_per_entry: Math.round(store / size),
      leaf_tile_hit_rate: Math.round((1 - reads.leafTiles / present) * 1000) / 1000,
      upper_tile_reads_per_op: per(reads.upperTiles, LOOKUPS),
      strata_reads_per_op: Array.from(reads.strata, (n) => per(n ?? 0, LOOKUPS)),
      load_1m: Math.round(loadavg()[0] * 10) / 10,
    };
    rows.push(row);
    console.error(formatRow(row));
    emit('growth', size, 'entries', { ...row, step, batch: BATCH, lookups: LOOKUPS });
  }
  await log.close();
} finally {
  peak.stop();
  rmSync(dir, { recursive: true, force: true });
}

if (rows.length >= 2) {
  const first = rows[0];
  const last = rows[rows.length - 1];
  const ratios = growthRatios(first, last);
  console.error(
    `CPU per entry ${first.cpu_us_per_entry} -> ${last.cpu_us_per_entry} us (${ratios.cpu_us_per_entry}x), ` +
      `per lookup ${first.cpu_us_per_op} -> ${last.cpu_us_per_op} us (${ratios.cpu_us_per_op}x) ` +
      `from ${first.size.toLocaleString('en-US')} to ${last.size.toLocaleString('en-US')} entries`,
  );
  emit('growth_ratio', Math.max(ratios.cpu_us_per_entry, ratios.cpu_us_per_op), 'x', {
    from: first.size,
    to: last.size,
    limit: LIMIT,
    ...ratios,
  });
  const over = ratiosOver(ratios, LIMIT);
  if (args.check && over.length > 0) {
    console.error(`growth bench: ${over.join('; ')}`);
    process.exitCode = 1;
  }
}
