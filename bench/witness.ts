// npm run bench:witness: a real `trustix witness` process on loopback, driven over HTTP.
//   1. one log, add-checkpoint one size at a time (each from the previous): the time to a 200, which
//      includes the fsynced commit (p50/p99).
//   2. TRUSTIX_BENCH_WITNESS_LOGS logs (default 8) at once, each one size at a time: cosignatures/s.
//   3. a log that gathers cosignatures (server/cosign.ts) from 3 such witness processes with a
//      2-of-3 policy, one submission at a time: the time each submission's receipt waits for its
//      checkpoint's quorum, from the commit (p50/p99), and the whole submission for comparison.
// Prints one JSON line per figure, like bench/run.ts. Knobs: TRUSTIX_BENCH_WITNESS_N (cosignatures per
// log, default 500), TRUSTIX_BENCH_COSIGN_N (submissions in 3, default 300).
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatCheckpoint } from '../src/core/checkpoint.js';
import { consistencyProof, leafHash, nodeHash, treeRoot } from '../src/core/merkle.js';
import { generateKey, type NoteSigner, signerFromSkey, signNote } from '../src/core/note.js';
import { evaluateQuorum, parsePolicy } from '../src/core/policy.js';
import { type CheckpointPublisher, Log } from '../src/log/log.js';
import { Cosigning } from '../src/server/cosign.js';
import { Metrics } from '../src/server/metrics.js';
import type { LogHead } from '../src/storage/store.js';
import { makeEntries } from './common.js';

const N = Number(process.env.TRUSTIX_BENCH_WITNESS_N ?? 500);
const COSIGN_N = Number(process.env.TRUSTIX_BENCH_COSIGN_N ?? 300);
const LOGS = Number(process.env.TRUSTIX_BENCH_WITNESS_LOGS ?? 8);
const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

class BenchLog {
  readonly signer: NoteSigner;
  readonly vkey: string;
  private readonly levels: Buffer[][] = [[]];

  constructor(
    readonly origin: string,
    size: number,
  ) {
    const k = generateKey(origin);
    this.signer = signerFromSkey(k.skey);
    this.vkey = k.vkey;
    for (let i = 0; i < size; i++) this.levels[0].push(leafHash(Buffer.from(`${origin} ${i}`)));
    for (let l = 0; this.levels[l].length > 1; l++) {
      const up: Buffer[] = [];
      for (let i = 0; i + 1 < this.levels[l].length; i += 2)
        up.push(nodeHash(this.levels[l][i], this.levels[l][i + 1]));
      this.levels.push(up);
    }
  }

  private read = (level: number, index: number): Buffer => this.levels[level][index];

  body(oldSize: number, size: number): string {
    const proof = oldSize === 0 ? [] : consistencyProof(oldSize, size, this.read);
    const cp = formatCheckpoint({
      origin: this.origin,
      size,
      rootHash: treeRoot(size, this.read),
      extensions: [],
    });
    return `old ${oldSize}\n${proof.map((h) => `${h.toString('base64')}\n`).join('')}\n${signNote(cp, [this.signer])}`;
  }
}

async function cosignAll(url: string, log: BenchLog, times?: number[]): Promise<void> {
  for (let s = 1; s <= N; s++) {
    const body = log.body(s - 1, s);
    const t0 = performance.now();
    const res = await fetch(`${url}/add-checkpoint`, { method: 'POST', body });
    await res.text();
    times?.push(performance.now() - t0);
    if (res.status !== 200) throw new Error(`${log.origin} size ${s}: ${res.status}`);
  }
}

/** A `trustix witness` process for the logs of `vkeys`; resolves with its URL and vkey once ready. */
async function startWitness(
  dir: string,
  vkeys: string[],
  procs: ChildProcess[],
): Promise<{ url: string; vkey: string }> {
  const proc = spawn(
    process.execPath,
    [MAIN, 'witness', '--state', dir, '--listen', '127.0.0.1:0', ...vkeys.flatMap((v) => ['--log', v])],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  procs.push(proc);
  return new Promise((resolve, reject) => {
    let out = '';
    proc.on('exit', (code) => reject(new Error(`witness exited (${code})`)));
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening (\S+)\nready\n/.exec(out);
      if (m) resolve({ url: m[1], vkey: / vkey (\S+)/.exec(out)![1] });
    });
  });
}

/** p-quantile of sorted milliseconds, rounded to 0.01. */
function quantile(sorted: number[], p: number): number {
  return Number(sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))].toFixed(2));
}

/** Figure 3: a log with three witness processes and a 2-of-3 policy, one submission at a time. */
async function cosignWait(dir: string, procs: ChildProcess[]): Promise<void> {
  const log = await Log.create(join(dir, 'log'), 'bench.example/cosigned', { batchDelayMs: 0 });
  const ws = await Promise.all([1, 2, 3].map((i) => startWitness(join(dir, `cw${i}`), [log.vkey], procs)));
  const policy = parsePolicy(
    `${ws.map((w, i) => `witness W${i + 1} ${w.vkey} ${w.url}`).join('\n')}\ngroup g 2 W1 W2 W3\nquorum g\n`,
  );
  const cosign = new Cosigning({
    log,
    id: 'bench',
    policy,
    timeoutMs: 5000,
    metrics: new Metrics(new Map()).cosign,
    warn: (line) => process.stderr.write(`${line}\n`),
  });
  // the wait of a receipt: from its checkpoint's commit to the note it carries
  const waits: number[] = [];
  const timed: CheckpointPublisher = {
    committed: (head: LogHead) => {
      const t0 = performance.now();
      return cosign.committed(head).then((note) => {
        waits.push(performance.now() - t0);
        return note;
      });
    },
    note: (head) => cosign.note(head),
    close: () => cosign.close(),
  };
  log.attachPublisher(timed);
  const submits: number[] = [];
  let missed = 0;
  try {
    for (let i = 0; i < COSIGN_N; i++) {
      const [e] = makeEntries(1);
      const t0 = performance.now();
      const [r] = await log.submit([e]);
      submits.push(performance.now() - t0);
      if (!evaluateQuorum(policy, r.checkpoint).met) missed++;
    }
  } finally {
    await log.close();
  }
  waits.sort((a, b) => a - b);
  submits.sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      bench: 'receipt wait for cosignatures, 3 witnesses, 2-of-3, one submission at a time',
      n: COSIGN_N,
      wait_p50_ms: quantile(waits, 0.5),
      wait_p99_ms: quantile(waits, 0.99),
      submit_p50_ms: quantile(submits, 0.5),
      submit_p99_ms: quantile(submits, 0.99),
      receipts_without_quorum: missed,
    }),
  );
}

const logs = Array.from({ length: LOGS + 1 }, (_, i) => new BenchLog(`bench.example/log${i}`, N));
const dir = mkdtempSync(join(tmpdir(), 'trustix-bench-witness-'));
const procs: ChildProcess[] = [];
try {
  const { url } = await startWitness(
    join(dir, 'w'),
    logs.map((l) => l.vkey),
    procs,
  );
  const times: number[] = [];
  await cosignAll(url, logs[0], times);
  times.sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      bench: 'witness add-checkpoint, one log, sequential',
      n: N,
      p50_ms: quantile(times, 0.5),
      p99_ms: quantile(times, 0.99),
    }),
  );
  const t0 = performance.now();
  await Promise.all(logs.slice(1).map((l) => cosignAll(url, l)));
  const seconds = (performance.now() - t0) / 1000;
  console.log(
    JSON.stringify({
      bench: `witness add-checkpoint, ${LOGS} logs at once`,
      n: N * LOGS,
      per_second: Math.round((N * LOGS) / seconds),
    }),
  );
  await cosignWait(dir, procs);
} finally {
  for (const proc of procs) {
    proc.removeAllListeners('exit');
    if (proc.exitCode !== null || proc.signalCode !== null) continue;
    proc.kill('SIGTERM');
    await new Promise((r) => proc.once('exit', r));
  }
  rmSync(dir, { recursive: true, force: true });
}
