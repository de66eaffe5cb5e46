// npm run bench: prints one JSON line per figure. Sizes can be reduced for a quick look with
// TRUSTIX_BENCH_N (entries in the first phase; the second phase adds as many again, unless
// TRUSTIX_BENCH_SECOND=0). The read figures also give the process's CPU time per operation, which
// on a shared machine says more than the wall-clock rate.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type LookupAnswer, verifyLookup } from '../src/core/lookup.js';
import { verifierFromVkey } from '../src/core/note.js';
import { Log } from '../src/log/log.js';
import { BATCH, cpuMicros, emit, ingest, nixKey, PeakMemory } from './common.js';

const N = Number(process.env.TRUSTIX_BENCH_N ?? 1_000_000);

// Peak RSS counts every resident page, the file pages of LMDB's memory map included.
const peak = new PeakMemory().start();

const dir = mkdtempSync(join(tmpdir(), 'trustix-bench-'));
try {
  const log = await Log.create(dir, 'bench.example/log', { maxBatch: BATCH, batchDelayMs: 5 });
  const keys: Buffer[] = [];
  const ingestCpu = process.cpuUsage();
  const t1 = await ingest(log, N, keys);
  // all threads (the sparse index worker included) and the submitters' entry generation
  const ingestCpuUs = cpuMicros(ingestCpu, N);
  peak.sample();
  emit('ingest_fresh_entries_per_s', N / t1, 'entries/s', {
    entries: N,
    seconds: t1,
    batch: BATCH,
    durable: true,
    cpu_us_per_entry: ingestCpuUs,
  });
  emit('ingest_fresh_peak_rss', peak.rss / 2 ** 20, 'MiB', {
    entries: N,
    anonymous_mib: Math.round(peak.anon / 2 ** 20),
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
    peak.sample();
    emit('peak_rss_after_second', peak.rss / 2 ** 20, 'MiB', {
      entries: 2 * N,
      anonymous_mib: Math.round(peak.anon / 2 ** 20),
    });
  }
  await log.close();
} finally {
  peak.stop();
  rmSync(dir, { recursive: true, force: true });
}
