// npm run bench:http: the server over HTTP, driven by autocannon against a real `trustix serve`
// process on loopback. Prints one JSON line per figure, like bench/run.ts.
//   1. submissions in batches of 1,000 entries, several requests in flight; counts entries
//      acknowledged with 200 (durable and signed) per second; checks the receipts.
//   2. lookups (75% present keys, 25% absent) with keep-alive and a few connections; every answer
//      carries the checkpoint and both proofs; a sample is verified in full during the run and a
//      larger sample before it.
// Knobs: TRUSTIX_BENCH_HTTP_N (entries to submit), TRUSTIX_BENCH_HTTP_SECONDS (lookup run),
// TRUSTIX_BENCH_HTTP_CONNECTIONS (lookup connections).
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openCheckpoint } from '../src/core/checkpoint.js';
import { verifyLookup } from '../src/core/lookup.js';
import { leafHash, verifyInclusion } from '../src/core/merkle.js';
import { verifierFromVkey } from '../src/core/note.js';

interface AutocannonRequest {
  method?: string;
  path?: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  setupRequest?: (req: AutocannonRequest, context: Record<string, unknown>) => AutocannonRequest;
  onResponse?: (status: number, body: string, context: Record<string, unknown>) => void;
}
interface AutocannonResult {
  duration: number;
  requests: { total: number; average: number };
  latency: { p50: number; p99: number; average: number };
  throughput: { average: number };
  errors: number;
  timeouts: number;
  non2xx: number;
  '2xx': number;
}
type Autocannon = (opts: {
  requests: AutocannonRequest[];
  [option: string]: unknown;
}) => Promise<AutocannonResult>;
const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;

const N = Number(process.env.TRUSTIX_BENCH_HTTP_N ?? 200_000);
const BATCH = 1000;
const SUBMIT_CONNECTIONS = 10;
const SECONDS = Number(process.env.TRUSTIX_BENCH_HTTP_SECONDS ?? 10);
const CONNECTIONS = Number(process.env.TRUSTIX_BENCH_HTTP_CONNECTIONS ?? 8);
const VERIFY_EVERY = 50;

function emit(name: string, value: number, unit: string, extra: Record<string, unknown> = {}): void {
  console.log(JSON.stringify({ name, value: Math.round(value * 100) / 100, unit, ...extra }));
}

const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';
function nixKey(): string {
  const r = randomBytes(32);
  let s = '';
  for (let i = 0; i < 32; i++) s += NIX32[r[i] & 31];
  return s;
}

/** The compiled CLI next to this file (npm run bench:http), or the TypeScript one through tsx. */
function serverCommand(): { cmd: string; args: string[] } {
  const js = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
  if (existsSync(js)) return { cmd: process.execPath, args: [js] };
  return {
    cmd: process.execPath,
    args: ['--import', 'tsx', fileURLToPath(new URL('../src/cli/main.ts', import.meta.url))],
  };
}

function startServer(config: string): Promise<{ proc: ChildProcess; url: string; vkey: string }> {
  const { cmd, args } = serverCommand();
  const proc = spawn(cmd, [...args, 'serve', '--config', config], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let buf = '';
    let url = '';
    let vkey = '';
    proc.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const lines = buf.split('\n');
      buf = lines.pop()!;
      for (const line of lines) {
        if (line.startsWith('listening http://')) url = line.split(' ')[1];
        if (line.includes(' vkey ')) vkey = line.split(' vkey ')[1];
        if (line === 'ready') resolve({ proc, url, vkey });
      }
    });
    proc.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
}

const dir = mkdtempSync(join(tmpdir(), 'trustix-bench-http-'));
const token = randomBytes(32).toString('hex');
const config = join(dir, 'trustix.toml');
writeFileSync(
  config,
  `[[log]]
id = "default"
origin = "bench.example/http"

[[writer]]
name = "bench"
token_sha256 = "${createHash('sha256').update(token).digest('hex')}"
logs = ["*"]

[[listen]]
address = "127.0.0.1:0"

[limits]
max_batch = 20000
batch_delay_ms = 10
`,
);

const server = await startServer(config);
const verifier = verifierFromVkey(server.vkey);
try {
  // ---- submissions ---------------------------------------------------------------------------
  const requests = Math.ceil(N / BATCH);
  const bodies: string[] = new Array(requests);
  const sampleKeys: string[] = [];
  for (let r = 0; r < requests; r++) {
    const entries = new Array(BATCH);
    for (let i = 0; i < BATCH; i++) {
      const key = nixKey();
      if (i % 50 === 0) sampleKeys.push(key);
      entries[i] = {
        protocol: 'nix',
        key,
        value: randomBytes(32).toString('hex'),
        metadata: Buffer.from(`{"name":"pkg-${r}-${i}","narSize":${1000 + i}}`).toString('base64'),
      };
    }
    bodies[r] = JSON.stringify({ entries });
  }
  let next = 0;
  let acked = 0;
  let receiptsChecked = 0;
  const problems: string[] = [];
  const submitResult = await autocannon({
    url: server.url,
    connections: SUBMIT_CONNECTIONS,
    amount: requests,
    timeout: 60,
    requests: [
      {
        method: 'POST',
        path: '/logs/default/submit',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        setupRequest: (req) => ({ ...req, body: bodies[next++ % requests] }),
        onResponse: (status, body) => {
          if (status !== 200) {
            problems.push(`submit status ${status}: ${body.slice(0, 200)}`);
            return;
          }
          const { receipts } = JSON.parse(body) as {
            receipts: Array<{ index: number; duplicate: boolean; checkpoint: string; proof: string[] }>;
          };
          if (receipts.length !== BATCH) problems.push(`got ${receipts.length} receipts`);
          for (const r of receipts) if (!r.duplicate) acked++;
          // one receipt per response fully checked: signature, then the proof against the root
          const r = receipts[receiptsChecked++ % receipts.length];
          const { checkpoint } = openCheckpoint(r.checkpoint, verifier);
          if (checkpoint.size <= r.index) problems.push('receipt checkpoint does not cover its index');
          if (r.proof.length === 0 && checkpoint.size > 1) problems.push('empty proof');
        },
      },
    ],
  });
  if (problems.length > 0) throw new Error(`submissions failed: ${problems.slice(0, 5).join('; ')}`);
  emit('http_submit_entries_per_s', acked / submitResult.duration, 'entries/s', {
    entries: acked,
    seconds: submitResult.duration,
    batch: BATCH,
    connections: SUBMIT_CONNECTIONS,
    request_latency_p50_ms: submitResult.latency.p50,
    request_latency_p99_ms: submitResult.latency.p99,
    target: 30_000,
  });

  // receipts' inclusion proofs, checked in full for a few entries against the published root
  const cpText = await (await fetch(`${server.url}/logs/default/checkpoint`)).text();
  const cp = openCheckpoint(cpText, verifier).checkpoint;
  if (cp.size !== acked) throw new Error(`log size ${cp.size} but ${acked} entries acknowledged`);

  // ---- lookups -------------------------------------------------------------------------------
  const paths: string[] = [];
  const pathKeys: string[] = [];
  for (let i = 0; i < 20_000; i++) {
    const key = i % 4 === 3 ? nixKey() : sampleKeys[(i * 7919) % sampleKeys.length];
    pathKeys.push(key);
    paths.push(`/logs/default/lookup/nix/${key}`);
  }
  // before the run: 1,000 answers verified in full (signature, map proof, inclusion proof)
  let present = 0;
  for (let i = 0; i < 1000; i++) {
    const a = await (await fetch(`${server.url}${paths[i]}`)).json();
    const v = verifyLookup(a, verifier, { protocol: 'nix', key: Buffer.from(pathKeys[i]) });
    if (v.status === 'invalid') throw new Error(`lookup ${pathKeys[i]} invalid: ${v.check} ${v.reason}`);
    if ((v.status === 'present') !== (i % 4 !== 3))
      throw new Error(`lookup ${pathKeys[i]}: unexpected ${v.status}`);
    if (v.status === 'present') {
      present++;
      verifyInclusion(
        leafHash(Buffer.from((a as { entry: { data: string } }).entry.data, 'base64')),
        v.index,
        v.checkpoint.size,
        (a as { entry: { proof: string[] } }).entry.proof.map((p) => Buffer.from(p, 'base64')),
        v.checkpoint.rootHash,
      );
    }
  }
  let li = 0;
  let seen = 0;
  let verified = 0;
  const lookupProblems: string[] = [];
  const lookupResult = await autocannon({
    url: server.url,
    connections: CONNECTIONS,
    duration: SECONDS,
    requests: [
      {
        method: 'GET',
        setupRequest: (req, ctx) => {
          const i = li++ % paths.length;
          ctx.i = i;
          return { ...req, path: paths[i] };
        },
        onResponse: (status, body, ctx) => {
          if (status !== 200) {
            lookupProblems.push(`lookup status ${status}`);
            return;
          }
          if (seen++ % VERIFY_EVERY !== 0) return;
          const i = ctx.i as number;
          const v = verifyLookup(JSON.parse(body), verifier, {
            protocol: 'nix',
            key: Buffer.from(pathKeys[i]),
          });
          if (v.status === 'invalid') lookupProblems.push(`invalid answer: ${v.check}`);
          verified++;
        },
      },
    ],
  });
  if (lookupProblems.length > 0) throw new Error(`lookups failed: ${lookupProblems.slice(0, 5).join('; ')}`);
  emit('http_lookups_per_s', lookupResult['2xx'] / lookupResult.duration, 'lookups/s', {
    lookups: lookupResult['2xx'],
    seconds: lookupResult.duration,
    connections: CONNECTIONS,
    keep_alive: true,
    present_fraction: 0.75,
    log_size: cp.size,
    latency_p50_ms: lookupResult.latency.p50,
    latency_p99_ms: lookupResult.latency.p99,
    verified_during_run: verified,
    verified_before_run: 1000,
    verified_present_before_run: present,
    non2xx: lookupResult.non2xx,
    errors: lookupResult.errors,
    target: 20_000,
  });
} finally {
  const exited = new Promise((r) => server.proc.on('exit', r));
  server.proc.kill('SIGTERM');
  await exited;
  rmSync(dir, { recursive: true, force: true });
}
