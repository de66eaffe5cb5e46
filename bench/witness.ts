// npm run bench:witness: a real `trustix witness` process on loopback, driven over HTTP.
//   1. one log, add-checkpoint one size at a time (each from the previous): the time to a 200, which
//      includes the fsynced commit (p50/p99).
//   2. TRUSTIX_BENCH_WITNESS_LOGS logs (default 8) at once, each one size at a time: cosignatures/s.
// Prints one JSON line per figure, like bench/run.ts. Knob: TRUSTIX_BENCH_WITNESS_N (cosignatures per
// log, default 500).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatCheckpoint } from '../src/core/checkpoint.js';
import { consistencyProof, leafHash, nodeHash, treeRoot } from '../src/core/merkle.js';
import { generateKey, type NoteSigner, signerFromSkey, signNote } from '../src/core/note.js';

const N = Number(process.env.TRUSTIX_BENCH_WITNESS_N ?? 500);
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

const logs = Array.from({ length: LOGS + 1 }, (_, i) => new BenchLog(`bench.example/log${i}`, N));
const dir = mkdtempSync(join(tmpdir(), 'trustix-bench-witness-'));
const proc = spawn(
  process.execPath,
  [MAIN, 'witness', '--state', dir, '--listen', '127.0.0.1:0', ...logs.flatMap((l) => ['--log', l.vkey])],
  { stdio: ['ignore', 'pipe', 'inherit'] },
);
try {
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    proc.on('exit', (code) => reject(new Error(`witness exited (${code})`)));
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening (\S+)\nready\n/.exec(out);
      if (m) resolve(m[1]);
    });
  });
  const times: number[] = [];
  await cosignAll(url, logs[0], times);
  times.sort((a, b) => a - b);
  const q = (p: number) => Number(times[Math.min(times.length - 1, Math.floor(times.length * p))].toFixed(2));
  console.log(
    JSON.stringify({
      bench: 'witness add-checkpoint, one log, sequential',
      n: N,
      p50_ms: q(0.5),
      p99_ms: q(0.99),
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
} finally {
  proc.kill('SIGTERM');
  await new Promise((r) => proc.once('exit', r));
  rmSync(dir, { recursive: true, force: true });
}
