// npm run bench:http: the server over HTTP, driven by autocannon against a real `trustix serve`
// process on loopback. Prints one JSON line per figure, like bench/run.ts.
//   1. submissions in batches of 1,000 entries, several requests in flight; counts entries
//      acknowledged with 200 (durable and signed) per second; checks the receipts.
//   2. lookups (75% present keys, 25% absent) with keep-alive and a few connections; every answer
//      carries the checkpoint and both proofs; 1,000 answers are verified in full before and after
//      each run. Cold (answers built from the store), batched (POST lookup with
//      TRUSTIX_BENCH_HTTP_LOOKUP_BATCH keys per request, default 16; counts lookups) and hot
//      (popular keys, from the answer cache). Lookup runs use wrk when installed (TRUSTIX_BENCH_HTTP_TOOL).
// Each figure also gives the server's own CPU time per operation (from its /metrics), which does
// not depend on how fast the load tool can push, and a plain node:http baseline for calibration.
// Knobs: TRUSTIX_BENCH_HTTP_N (entries to submit), TRUSTIX_BENCH_HTTP_SECONDS (lookup run),
// TRUSTIX_BENCH_HTTP_CONNECTIONS (lookup connections), TRUSTIX_BENCH_HTTP_ONLY (e.g. "submit"),
// TRUSTIX_BENCH_HTTP_NODE_ARGS (extra node flags for the server process, e.g.
// "--cpu-prof --cpu-prof-dir=/tmp/prof").
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openCheckpoint } from '../src/core/checkpoint.js';
import { encodeEntry } from '../src/core/entry.js';
import { verifyLookup } from '../src/core/lookup.js';
import { leafHash, verifyInclusion } from '../src/core/merkle.js';
import { verifierFromVkey } from '../src/core/note.js';
import { type ParsedReceipt, parseReceipts } from '../src/core/receipts.js';

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

/**
 * The load tool for the lookup runs: wrk (C, far less CPU per request, which matters when it
 * shares 2 cores with the server) when it is installed, else autocannon. Submissions always use
 * autocannon, which checks every receipt.
 */
const TOOL =
  process.env.TRUSTIX_BENCH_HTTP_TOOL ?? (spawnSync('wrk', ['--version']).error ? 'autocannon' : 'wrk');

// Cycles through the request lines of the file named by TRUSTIX_WRK_ITEMS (paths for GET, bodies
// for POST) and prints the totals as one JSON line at the end.
const WRK_SCRIPT = `
local items, i = {}, 0
for line in io.lines(os.getenv("TRUSTIX_WRK_ITEMS")) do items[#items + 1] = line end
local post = os.getenv("TRUSTIX_WRK_METHOD") == "POST"
request = function()
  i = i % #items + 1
  if post then
    return wrk.format("POST", "/logs/default/lookup", { ["Content-Type"] = "application/json" }, items[i])
  end
  return wrk.format("GET", items[i])
end
done = function(s, latency)
  local e = s.errors
  io.write(string.format('WRK {"requests":%d,"us":%d,"non2xx":%d,"errors":%d,"p50":%.3f,"p99":%.3f}\\n',
    s.requests, s.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
`;

/** A wrk run against `url` shaped like autocannon's result (2xx counted as requests without errors). */
async function wrk(
  url: string,
  load: { method: 'GET' | 'POST'; items: string[] },
): Promise<AutocannonResult> {
  const itemsFile = join(dir, 'wrk-items');
  const scriptFile = join(dir, 'wrk.lua');
  writeFileSync(itemsFile, `${load.items.join('\n')}\n`);
  writeFileSync(scriptFile, WRK_SCRIPT);
  const out = await new Promise<string>((resolve, reject) => {
    const p = spawn('wrk', ['-t1', `-c${CONNECTIONS}`, `-d${SECONDS}s`, '-s', scriptFile, url], {
      env: { ...process.env, TRUSTIX_WRK_ITEMS: itemsFile, TRUSTIX_WRK_METHOD: load.method },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let text = '';
    p.stdout.on('data', (d: Buffer) => {
      text += d.toString();
    });
    p.on('error', reject);
    p.on('exit', (code) => (code === 0 ? resolve(text) : reject(new Error(`wrk exited with ${code}`))));
  });
  const line = out.split('\n').find((l) => l.startsWith('WRK '));
  if (!line) throw new Error(`no totals from wrk: ${out}`);
  const w = JSON.parse(line.slice(4)) as {
    requests: number;
    us: number;
    non2xx: number;
    errors: number;
    p50: number;
    p99: number;
  };
  const seconds = w.us / 1e6;
  return {
    duration: seconds,
    requests: { total: w.requests, average: w.requests / seconds },
    latency: { p50: w.p50, p99: w.p99, average: w.p50 },
    throughput: { average: 0 },
    errors: w.errors,
    timeouts: 0,
    non2xx: w.non2xx,
    '2xx': w.requests - w.non2xx - w.errors,
  };
}

const N = Number(process.env.TRUSTIX_BENCH_HTTP_N ?? 100_000);
const BATCH = 1000;
const SUBMIT_CONNECTIONS = 10;
const SECONDS = Number(process.env.TRUSTIX_BENCH_HTTP_SECONDS ?? 10);
const CONNECTIONS = Number(process.env.TRUSTIX_BENCH_HTTP_CONNECTIONS ?? 8);
const LOOKUP_BATCH = Number(process.env.TRUSTIX_BENCH_HTTP_LOOKUP_BATCH ?? 16);
/** Comma-separated figures to run (baseline,submit,lookups,batched,hot); default all. Submissions always run: lookups need the log. */
const ONLY = process.env.TRUSTIX_BENCH_HTTP_ONLY?.split(',');
const runs = (what: string) => ONLY === undefined || ONLY.includes(what);

function emit(name: string, value: number, unit: string, extra: Record<string, unknown> = {}): void {
  console.log(JSON.stringify({ name, value: Math.round(value * 100) / 100, unit, ...extra }));
}

interface EntryJson {
  protocol: string;
  key: string;
  value: string;
  metadata: string;
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
  const nodeArgs = (process.env.TRUSTIX_BENCH_HTTP_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
  const proc = spawn(cmd, [...nodeArgs, ...args, 'serve', '--config', config], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
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

/** CPU seconds the server process has used so far (its own /metrics). */
async function serverCpuSeconds(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = /^trustix_process_cpu_seconds_total (\S+)$/m.exec(text);
  if (!m) throw new Error('no trustix_process_cpu_seconds_total in /metrics');
  return Number(m[1]);
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

// Calibration: a plain node:http server answering a fixed 1.8 KB JSON body (what a lookup answer
// weighs), under the same load. On a shared machine the absolute figures swing a lot; the ratio of
// lookups to this baseline says how much the server itself costs.
const PLAIN_SERVER = `
const body = JSON.stringify({ answer: 'x'.repeat(1800) });
let n = 0;
const s = require('node:http').createServer((req, res) => {
  n++;
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
});
s.listen(0, '127.0.0.1', () => console.log('listening http://127.0.0.1:' + s.address().port));
process.on('SIGTERM', () => {
  const u = process.cpuUsage();
  console.log('cpu ' + (u.user + u.system) / n);
  process.exit(0);
});`;
if (runs('baseline')) {
  const plain = spawn(process.execPath, ['-e', PLAIN_SERVER], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  const first = new Promise<void>((resolve) =>
    plain.stdout!.on('data', (d: Buffer) => {
      lines.push(...d.toString().trim().split('\n'));
      resolve();
    }),
  );
  await first;
  const url = lines[0].split(' ')[1];
  const r =
    TOOL === 'wrk'
      ? await wrk(url, { method: 'GET', items: ['/'] })
      : await autocannon({ url, connections: CONNECTIONS, duration: Math.min(5, SECONDS), requests: [{}] });
  const exited = new Promise((resolve) => plain.on('exit', resolve));
  plain.kill('SIGTERM');
  await exited;
  const cpu = Number(lines.find((l) => l.startsWith('cpu '))?.slice(4));
  emit('http_baseline_plain_node_rps', r['2xx'] / r.duration, 'requests/s', {
    note: 'plain node:http answering a fixed 1.8 KB body: the ceiling for this machine and load tool right now',
    server_cpu_us_per_request: Math.round(cpu * 10) / 10,
    connections: CONNECTIONS,
    tool: TOOL,
  });
}

const server = await startServer(config);
const verifier = verifierFromVkey(server.vkey);
try {
  // ---- submissions ---------------------------------------------------------------------------
  const requests = Math.ceil(N / BATCH);
  const bodies: string[] = new Array(requests);
  const sent: EntryJson[][] = new Array(requests);
  const sampleKeys: string[] = [];
  for (let r = 0; r < requests; r++) {
    const entries = new Array<EntryJson>(BATCH);
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
    sent[r] = entries;
  }
  let next = 0;
  let acked = 0;
  const submitCpu0 = await serverCpuSeconds(server.url);
  let receiptsChecked = 0;
  const problems: string[] = [];
  const submitResult = await autocannon({
    url: server.url,
    connections: Math.min(SUBMIT_CONNECTIONS, requests),
    amount: requests,
    timeout: 60,
    requests: [
      {
        method: 'POST',
        path: '/logs/default/submit',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        setupRequest: (req, context) => {
          context.request = next % requests;
          req.body = bodies[next++ % requests];
          return req;
        },
        onResponse: (status, body, context) => {
          if (status !== 200) {
            problems.push(`submit status ${status}: ${body.slice(0, 200)}`);
            return;
          }
          let receipts: ParsedReceipt[];
          try {
            receipts = parseReceipts(JSON.parse(body), BATCH);
          } catch (err) {
            problems.push(`receipts: ${(err as Error).message}`);
            return;
          }
          for (const r of receipts) if (!r.duplicate) acked++;
          // one receipt per response checked in full: the signature, then its inclusion proof
          const i = receiptsChecked++ % BATCH;
          const r = receipts[i];
          const { checkpoint } = openCheckpoint(r.checkpoint, verifier);
          const e = sent[context.request as number][i];
          const data = encodeEntry({
            protocol: e.protocol,
            key: Buffer.from(e.key),
            value: Buffer.from(e.value, 'hex'),
            metadata: Buffer.from(e.metadata, 'base64'),
          });
          try {
            verifyInclusion(leafHash(data), r.index, checkpoint.size, r.proof, checkpoint.rootHash);
          } catch (err) {
            problems.push(`receipt ${r.index}: ${(err as Error).message}`);
          }
        },
      },
    ],
  });
  if (problems.length > 0) throw new Error(`submissions failed: ${problems.slice(0, 5).join('; ')}`);
  const submitCpu = (await serverCpuSeconds(server.url)) - submitCpu0;
  emit('http_submit_entries_per_s', acked / submitResult.duration, 'entries/s', {
    server_cpu_us_per_entry: Math.round((submitCpu / acked) * 1e7) / 10,
    entries: acked,
    seconds: submitResult.duration,
    batch: BATCH,
    connections: Math.min(SUBMIT_CONNECTIONS, requests),
    request_latency_p50_ms: submitResult.latency.p50,
    request_latency_p99_ms: submitResult.latency.p99,
    target: 30_000,
  });

  // every acknowledged entry is in the published tree
  const cpText = await (await fetch(`${server.url}/logs/default/checkpoint`)).text();
  const cp = openCheckpoint(cpText, verifier).checkpoint;
  if (cp.size !== acked) throw new Error(`log size ${cp.size} but ${acked} entries acknowledged`);

  // ---- lookups -------------------------------------------------------------------------------
  // Cold: 20,000 keys in a cycle, far more than the server's answer cache (4,096 by default) holds,
  // so with its least-recently-used order every answer is built from the store. Hot: 1,000 keys
  // (popular store paths asked by many clients), answered from the cache for the current checkpoint.
  // batch > 1: POST lookup with that many keys per request (what the verifying client sends for
  // concurrent lookups); the figure counts lookups, not requests.
  const lookupRun = async (name: string, count: number, note: string, batch = 1) => {
    const paths: string[] = [];
    const pathKeys: string[] = [];
    for (let i = 0; i < count; i++) {
      const key = i % 4 === 3 ? nixKey() : sampleKeys[(i * 7919) % sampleKeys.length];
      pathKeys.push(key);
      paths.push(`/logs/default/lookup/nix/${key}`);
    }
    const bodies: string[] = [];
    for (let i = 0; batch > 1 && i < count; i += batch) {
      bodies.push(JSON.stringify({ protocol: 'nix', keys: pathKeys.slice(i, i + batch) }));
    }
    const answersFor = async (from: number, n: number): Promise<unknown[]> => {
      if (batch === 1) return [await (await fetch(`${server.url}${paths[from]}`)).json()];
      const r = await fetch(`${server.url}/logs/default/lookup`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ protocol: 'nix', keys: pathKeys.slice(from, from + n) }),
      });
      return ((await r.json()) as { answers: unknown[] }).answers;
    };
    // 1,000 answers verified in full (signature, map proof, entry, inclusion proof) before the run
    // and again after it (then mostly from the cache). The run itself only counts 200s: the load
    // tool must not spend its core parsing answers, or it measures itself.
    const sample = Math.min(1000, count);
    const verifySample = async () => {
      let present = 0;
      for (let i = 0; i < sample; i += batch) {
        const answers = await answersFor(i, Math.min(batch, sample - i));
        for (const [j, a] of answers.entries()) {
          const key = pathKeys[i + j];
          const v = verifyLookup(a, verifier, { protocol: 'nix', key: Buffer.from(key) });
          if (v.status === 'invalid') throw new Error(`lookup ${key} invalid: ${v.check} ${v.reason}`);
          if ((v.status === 'present') !== ((i + j) % 4 !== 3))
            throw new Error(`lookup ${key}: unexpected ${v.status}`);
          if (v.status === 'present') present++;
        }
      }
      return present;
    };
    const present = await verifySample();
    const cpu0 = await serverCpuSeconds(server.url);
    let next = 0;
    const result =
      TOOL === 'wrk'
        ? await wrk(
            server.url,
            batch === 1 ? { method: 'GET', items: paths } : { method: 'POST', items: bodies },
          )
        : await autocannon({
            url: server.url,
            connections: CONNECTIONS,
            duration: SECONDS,
            requests: [
              batch === 1
                ? {
                    method: 'GET',
                    setupRequest: (req) => {
                      req.path = paths[next++ % paths.length];
                      return req;
                    },
                  }
                : {
                    method: 'POST',
                    path: '/logs/default/lookup',
                    headers: { 'content-type': 'application/json' },
                    setupRequest: (req) => {
                      req.body = bodies[next++ % bodies.length];
                      return req;
                    },
                  },
            ],
          });
    if (result.non2xx > 0 || result.errors > 0) {
      throw new Error(`lookups failed: ${result.non2xx} non-2xx answers, ${result.errors} errors`);
    }
    const cpu = (await serverCpuSeconds(server.url)) - cpu0;
    await verifySample();
    const lookups = result['2xx'] * batch;
    emit(name, lookups / result.duration, 'lookups/s', {
      note,
      // what the server spent per lookup: independent of how fast the load tool could push
      server_cpu_us_per_lookup: Math.round((cpu / lookups) * 1e7) / 10,
      server_cpu_busy_fraction: Math.round((cpu / result.duration) * 100) / 100,
      distinct_keys: count,
      keys_per_request: batch,
      tool: TOOL,
      lookups,
      seconds: result.duration,
      connections: CONNECTIONS,
      keep_alive: true,
      present_fraction: 0.75,
      log_size: cp.size,
      latency_p50_ms: result.latency.p50,
      latency_p99_ms: result.latency.p99,
      verified_before_and_after_run: sample * 2,
      present_in_sample: present,
      non2xx: result.non2xx,
      errors: result.errors,
      target: 20_000,
    });
  };
  if (runs('lookups')) {
    await lookupRun(
      'http_lookups_per_s',
      20_000,
      'every answer built from the store (keys cycle past the cache)',
    );
  }
  if (runs('batched')) {
    await lookupRun(
      'http_lookups_batched_per_s',
      20_000,
      `POST lookup, ${LOOKUP_BATCH} keys per request, every answer built from the store`,
      LOOKUP_BATCH,
    );
  }
  if (runs('hot')) {
    await lookupRun(
      'http_lookups_hot_per_s',
      1000,
      'popular keys: answers served from the cache for the current checkpoint',
    );
  }
} finally {
  const exited = new Promise((r) => server.proc.on('exit', r));
  server.proc.kill('SIGTERM');
  await exited;
  rmSync(dir, { recursive: true, force: true });
}
