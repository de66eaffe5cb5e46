// npm run bench:mirror: an auditing mirror catching up with a log. Builds a log of N entries in
// process (durable 10k batches), serves it with a `trustix serve` process, then times the mirror
// (in this process) copying it from scratch: every entry fetched as entry bundles, verified against
// the hash tiles and the signed tree, replayed into the mirror's own sparse index, committed, and
// the checkpoint's map line checked. Prints entries/s, CPU per entry and peak RSS, one JSON line each.
// Knobs: TRUSTIX_BENCH_MIRROR_N (default 1000000), TRUSTIX_BENCH_MIRROR_CHUNK (entry bundles per
// chunk, default the mirror's), TRUSTIX_BENCH_MIRROR_PROFILE (a file: writes a V8 CPU profile of the
// catch-up alone there, for Chrome DevTools).
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseDecideConfig } from '../src/decide/config.js';
import { Log } from '../src/log/log.js';
import { Mirror } from '../src/mirror/mirror.js';
import { BATCH, cpuMicros, emit, ingest, PeakMemory, processCpuMicros, serveConfig } from './common.js';

const N = Number(process.env.TRUSTIX_BENCH_MIRROR_N ?? 1_000_000);
const CHUNK = process.env.TRUSTIX_BENCH_MIRROR_CHUNK;
const PROFILE = process.env.TRUSTIX_BENCH_MIRROR_PROFILE;
const ORIGIN = 'bench.example/mirrored';

const dir = mkdtempSync(join(tmpdir(), 'trustix-bench-mirror-'));
let server: ChildProcess | undefined;
const stop = () => {
  server?.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
};
process.once('SIGINT', () => {
  stop();
  process.exit(130);
});
try {
  const logDir = join(dir, 'log');
  let t = performance.now();
  const log = await Log.create(logDir, ORIGIN, { maxBatch: BATCH, batchDelayMs: 1 });
  await ingest(log, N, []);
  const vkey = log.vkey;
  await log.close();
  emit('mirror_build_log', (performance.now() - t) / 1000, 's', { entries: N });
  const config = join(dir, 'serve.toml');
  writeFileSync(config, `[[log]]\nid = "default"\norigin = "${ORIGIN}"\ndir = "${logDir}"\n`);
  const s = await serveConfig(config);
  server = s.proc;
  const trust = parseDecideConfig(
    `[[log]]\nname = "bench"\nurl = "${s.url}/logs/default/"\nvkey = "${vkey}"\n`,
  );
  const load = loadavg()[0];
  const profiler = PROFILE !== undefined ? new Session() : undefined;
  if (profiler) {
    profiler.connect();
    await profiler.post('Profiler.enable');
    await profiler.post('Profiler.start');
  }
  const serverCpu = processCpuMicros(server.pid);
  const peak = new PeakMemory().start();
  const cpu = process.cpuUsage();
  t = performance.now();
  const mirror = await Mirror.open({
    stateDir: join(dir, 'mirror'),
    logs: trust.logs,
    host: '127.0.0.1',
    port: 0,
    ...(CHUNK !== undefined ? { chunkBundles: Number(CHUNK) } : {}),
  });
  await mirror.pollAll();
  const secs = (performance.now() - t) / 1000;
  const serverUs = processCpuMicros(server.pid) - serverCpu;
  if (profiler) {
    const { profile } = await profiler.post('Profiler.stop');
    writeFileSync(PROFILE!, JSON.stringify(profile));
    profiler.disconnect();
  }
  peak.sample();
  peak.stop();
  const st = mirror.statuses()[0];
  if (st.state !== 'ok' || st.size !== N || !st.audited) {
    throw new Error(`the mirror did not catch up: ${st.state} ${st.size} ${st.reason ?? ''}`);
  }
  emit('mirror_catch_up_entries_per_s', N / secs, 'entries/s', {
    entries: N,
    seconds: Math.round(secs * 10) / 10,
    mirror_cpu_us_per_entry: cpuMicros(cpu, N),
    log_server_cpu_us_per_entry: Math.round((serverUs / N) * 10) / 10,
    load_1m_at_start: Math.round(load * 10) / 10,
    load_1m_at_end: Math.round(loadavg()[0] * 10) / 10,
  });
  emit('mirror_catch_up_peak_rss', peak.rss / 2 ** 20, 'MiB', {
    anonymous_mib: Math.round(peak.anon / 2 ** 20),
  });
  await mirror.close();
} finally {
  stop();
}
