// The log over the PostgreSQL driver, on a throwaway local cluster (Debian's postgresql, started
// like the tests': test/fixtures/postgres.ts), durable (synchronous_commit on): ingest through
// Log.createIn, then verified lookups from a second, read-only node: in process (synchronous reads),
// then over HTTP from a reader node in its own process (bench/pg-reader.ts: the read API over
// asynchronous, batched reads; load from bench/keepalive-load.ts), cold (a fresh reader, every key asked once) and warm (the same keys
// again); then `publish-tiles` (publishTiles) into a fresh directory over the whole log, and again
// after one more batch. One JSON line per figure. TRUSTIX_BENCH_N: entries (default 100,000);
// TRUSTIX_BENCH_PG_SECONDS: the warm run (default 10); TRUSTIX_BENCH_PG_CONNECTIONS: HTTP
// connections (default 64); TRUSTIX_BENCH_PG_READ_CONNECTIONS: the reader's connections to
// PostgreSQL (default 4); TRUSTIX_BENCH_PG_NODE_ARGS: node flags for the reader (e.g. "--cpu-prof
// --cpu-prof-dir=/tmp/prof"). CPU is split between the node (this process, or the reader's own
// /metrics) and the cluster's processes (/proc, the postmaster and its children).
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { type LookupAnswer, verifyLookup } from '../src/core/lookup.js';
import { generateKey, type NoteVerifier, verifierFromVkey } from '../src/core/note.js';
import { Log } from '../src/log/log.js';
import { publishTiles } from '../src/log/static-tiles.js';
import { PgLogStore } from '../src/storage/postgres/postgres.js';
import { SCHEMA } from '../src/storage/postgres/schema.js';
import { startPostgres } from '../test/fixtures/postgres.js';
import { BATCH, cpuMicros, emit, ingest, makeEntries, nixKey } from './common.js';
import { load } from './keepalive-load.js';

const N = Number(process.env.TRUSTIX_BENCH_N ?? 100_000);
const SECONDS = Number(process.env.TRUSTIX_BENCH_PG_SECONDS ?? 10);
const CONNECTIONS = Number(process.env.TRUSTIX_BENCH_PG_CONNECTIONS ?? 64);
const READ_CONNECTIONS = Number(process.env.TRUSTIX_BENCH_PG_READ_CONNECTIONS ?? 4);
/** One answer in VERIFY_EVERY is checked in full while a run goes on (verifyLookup), besides 1,000 after it. */
const VERIFY_EVERY = 16;

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

  await emitDatabaseSize(url, N);

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
  // the cluster's CPU is counted over its live processes: the closed store's backend is let go first
  await new Promise((r) => setTimeout(r, 500));

  // ---- over HTTP, from a reader node ---------------------------------------------------------
  const paths: string[] = [];
  const pathKeys: Buffer[] = [];
  for (const [i, key] of keys.entries()) {
    for (const k of i % 3 === 2 ? [key, nixKey(randomBytes(32))] : [key]) {
      paths.push(`/logs/default/lookup/nix/${encodeURIComponent(k.toString())}`);
      pathKeys.push(k);
    }
  }
  const node = await startReader(url);
  try {
    for (const run of ['cold', 'warm'] as const) {
      const cpu0 = await readerCpu(node.url);
      const pg0 = clusterCpu(pid);
      let checked = 0;
      const problems: string[] = [];
      const result = await load(node.url, {
        connections: CONNECTIONS,
        // cold: every key once, from a reader whose caches start empty; warm: the same keys again
        ...(run === 'cold' ? { amount: paths.length } : { seconds: SECONDS }),
        path: (i) => paths[i % paths.length],
        onAnswer: (i, status, body) => {
          if (status !== 200 || i % VERIFY_EVERY !== 0) return;
          checked++;
          const problem = check(body.toString(), pathKeys[i % paths.length], verifier);
          if (problem !== undefined) problems.push(problem);
        },
      });
      if (result.non2xx > 0 || result.errors > 0 || problems.length > 0) {
        throw new Error(
          `HTTP lookups failed: ${result.non2xx} non-2xx, ${result.errors} errors; ${problems.slice(0, 3).join('; ')}`,
        );
      }
      const lookups = result.answers;
      const sampled = await verifySample(node.url, paths, pathKeys, verifier);
      emit(`pg_http_lookups_${run}_per_s`, lookups / result.seconds, 'lookups/s', {
        lookups,
        size: N,
        seconds: Math.round(result.seconds * 100) / 100,
        connections: CONNECTIONS,
        read_connections: READ_CONNECTIONS,
        verified_during_run: checked,
        verified_after_run: sampled,
        p50_ms: result.p50_ms,
        p99_ms: result.p99_ms,
        reader_cpu_us_per_lookup: Math.round((((await readerCpu(node.url)) - cpu0) / lookups) * 1e7) / 10,
        postgres_cpu_us_per_lookup: Math.round(((clusterCpu(pid) - pg0) / lookups) * 1e7) / 10,
      });
    }
  } finally {
    node.stop();
  }

  // ---- static tiles: the first publish-tiles run over the whole log, then one after a batch ----
  const out = mkdtempSync(join(tmpdir(), 'trustix-bench-tiles-'));
  const publisher = await PgLogStore.open(url);
  try {
    for (const run of ['first', 'next'] as const) {
      if (run === 'next') await log.submit(makeEntries(BATCH));
      const t0 = process.hrtime.bigint();
      const c0 = process.cpuUsage();
      const r = await publishTiles(publisher, 'bench.example/pg', out);
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      emit(`pg_publish_tiles_${run}_seconds`, s, 's', {
        size: r.size,
        files: r.written,
        node_cpu_s: Math.round(cpuMicros(c0, 1e6) * 100) / 100,
      });
    }
  } finally {
    await publisher.close();
    rmSync(out, { recursive: true, force: true });
  }
  await log.close();
} finally {
  cluster.stop();
}

/** Why an answer fails verification for `key`, or undefined when it verifies. */
function check(body: string, key: Buffer, verifier: NoteVerifier): string | undefined {
  try {
    const v = verifyLookup(JSON.parse(body) as LookupAnswer, verifier, { protocol: 'nix', key });
    return v.status === 'invalid' ? v.reason : undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/** Fetches and verifies 1,000 answers in full; how many. */
async function verifySample(
  base: string,
  paths: readonly string[],
  keys: readonly Buffer[],
  verifier: NoteVerifier,
): Promise<number> {
  const n = Math.min(1000, paths.length);
  for (let i = 0; i < n; i++) {
    const j = Math.floor((i * paths.length) / n);
    const problem = check(await (await fetch(base + paths[j])).text(), keys[j], verifier);
    if (problem !== undefined) throw new Error(`answer for ${paths[j]}: ${problem}`);
  }
  return n;
}

/** The reader node (bench/pg-reader.ts) in its own process. */
async function startReader(url: string): Promise<{ url: string; stop: () => void }> {
  const script = fileURLToPath(new URL('./pg-reader.js', import.meta.url));
  const nodeArgs = (process.env.TRUSTIX_BENCH_PG_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
  const proc = spawn(process.execPath, [...nodeArgs, script, url, String(READ_CONNECTIONS)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const base = await new Promise<string>((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^listening (\S+)\nready$/m.exec(out);
      if (m) resolve(m[1]);
    });
    proc.once('exit', (code) => reject(new Error(`the reader node exited with ${code}`)));
  });
  return { url: base, stop: () => proc.kill('SIGTERM') };
}

/** CPU seconds the reader node has used so far (its own /metrics). */
async function readerCpu(base: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const m = /^trustix_process_cpu_seconds_total (\S+)$/m.exec(text);
  if (!m) throw new Error('no trustix_process_cpu_seconds_total in /metrics');
  return Number(m[1]);
}

/** The database's size on disk after the ingest, in all and per table (with indexes and TOAST). */
async function emitDatabaseSize(url: string, entries: number): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const db = await c.query<{ bytes: string }>('SELECT pg_database_size(current_database()) AS bytes');
    const tables = await c.query<{ name: string; bytes: string }>(
      `SELECT c.relname AS name, pg_total_relation_size(c.oid) AS bytes FROM pg_class c
       JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'`,
      [SCHEMA],
    );
    const perEntry = (bytes: string) => Math.round(Number(bytes) / entries);
    emit('pg_database_bytes_per_entry', perEntry(db.rows[0].bytes), 'bytes', {
      entries,
      database_bytes: Number(db.rows[0].bytes),
      ...Object.fromEntries(tables.rows.map((t) => [`${t.name}_bytes_per_entry`, perEntry(t.bytes)])),
    });
  } finally {
    await c.end();
  }
}
