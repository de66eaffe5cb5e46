// The log over the PostgreSQL driver, on a throwaway local cluster (Debian's postgresql, started
// like the tests': test/fixtures/postgres.ts), durable (synchronous_commit on): ingest through
// Log.createIn, then verified lookups from a second, read-only node. One JSON line per figure.
// TRUSTIX_BENCH_N: entries (default 100,000). CPU per entry is split between this process (every
// thread) and the cluster's processes (/proc, the postmaster and its children).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { verifyLookup } from '../src/core/lookup.js';
import { generateKey, verifierFromVkey } from '../src/core/note.js';
import { Log } from '../src/log/log.js';
import { PgLogStore } from '../src/storage/postgres/postgres.js';
import { startPostgres } from '../test/fixtures/postgres.js';
import { BATCH, cpuMicros, emit, ingest, nixKey } from './common.js';

const N = Number(process.env.TRUSTIX_BENCH_N ?? 100_000);
const TICKS_PER_S = 100;

/** CPU seconds (user + system) of the cluster: the postmaster `pid` and its children. */
function clusterCpu(pid: number): number {
  let ticks = 0;
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(join('/proc', name, 'stat'), 'utf8');
    } catch {
      continue;
    }
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields after the name: state, ppid, ... utime is field 14, stime 15 (1-based, whole line)
    if (Number(name) === pid || Number(f[1]) === pid) ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks / TICKS_PER_S;
}

const cluster = await startPostgres();
try {
  const url = await cluster.createDatabase();
  const pid = Number(readFileSync(join(cluster.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const { skey, vkey } = generateKey('bench.example/pg');
  const store = await PgLogStore.open(url, { sequencer: true });
  const log = await Log.createIn(store, 'bench.example/pg', { skey, maxBatch: BATCH, batchDelayMs: 5 });
  const keys: Buffer[] = [];
  const cpu = process.cpuUsage();
  const pgCpu = clusterCpu(pid);
  const seconds = await ingest(log, N, keys);
  emit('pg_ingest_entries_per_s', N / seconds, 'entries/s', {
    entries: N,
    seconds,
    batch: BATCH,
    durable: true,
    node_cpu_us_per_entry: cpuMicros(cpu, N),
    postgres_cpu_us_per_entry: Math.round(((clusterCpu(pid) - pgCpu) / N) * 1e7) / 10,
  });

  const reader = Log.openIn(await PgLogStore.open(url), { readOnly: true });
  const verifier = verifierFromVkey(vkey);
  const L = Math.min(5000, N);
  const lookupKeys = Array.from({ length: L }, (_, i) =>
    i % 4 === 3 ? nixKey() : keys[(i * 7919) % keys.length],
  );
  const t = process.hrtime.bigint();
  const c2 = process.cpuUsage();
  let present = 0;
  for (const key of lookupKeys) {
    const v = verifyLookup(reader.lookup('nix', key), verifier, { protocol: 'nix', key });
    if (v.status === 'invalid') throw new Error(`lookup failed verification: ${v.reason}`);
    if (v.status === 'present') present++;
  }
  const s = Number(process.hrtime.bigint() - t) / 1e9;
  emit('pg_verified_lookups_per_s', L / s, 'lookups/s', {
    lookups: L,
    present,
    size: N,
    in_process: true,
    node_cpu_us_per_op: cpuMicros(c2, L),
  });
  await reader.close();
  await log.close();
} finally {
  cluster.stop();
}
