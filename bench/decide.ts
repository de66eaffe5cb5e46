// npm run bench:decide: decisions per second for one key across 5 loopback logs (each a real Log
// behind a minimal node:http server in this process, so the figure includes HTTP, JSON and full
// verification of every answer), with a few concurrent callers; then the same with a Lua and a JS
// procedure, to show what a script adds per decision. One JSON line per figure.
// Knobs: TRUSTIX_BENCH_DECIDE_SECONDS (per figure, default 3), TRUSTIX_BENCH_DECIDE_CALLERS (8).
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { toBase64 } from '../src/core/bytes.js';
import { sha256 } from '../src/core/hash.js';
import { parseDecideConfig } from '../src/decide/config.js';
import { Decider } from '../src/decide/decide.js';
import { Log } from '../src/log/log.js';

const SECONDS = Number(process.env.TRUSTIX_BENCH_DECIDE_SECONDS ?? 3);
const CALLERS = Number(process.env.TRUSTIX_BENCH_DECIDE_CALLERS ?? 8);
const LOGS = 5;
const KEYS = 1000;

function serve(log: Log): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    const path = u.pathname.replace(/^\/logs\/default\//, '');
    try {
      if (path === 'checkpoint') {
        res.end(log.head().checkpoint);
        return;
      }
      if (path.startsWith('lookup/')) {
        const [, p, k] = path.split('/');
        const body = JSON.stringify(log.lookup(decodeURIComponent(p), Buffer.from(decodeURIComponent(k))));
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(body);
        return;
      }
      if (path === 'proof/consistency') {
        const o = Number(u.searchParams.get('old'));
        const n = Number(u.searchParams.get('new'));
        res.end(JSON.stringify({ old: o, new: n, proof: log.consistencyProof(o, n).map(toBase64) }));
        return;
      }
    } catch (err) {
      res.writeHead(400);
      res.end(JSON.stringify({ error: String(err) }));
      return;
    }
    res.writeHead(404);
    res.end('{}');
  });
  return new Promise((r) =>
    server.listen(0, '127.0.0.1', () =>
      r({ server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/logs/default/` }),
    ),
  );
}

async function measure(name: string, decider: Decider): Promise<number> {
  // warm up (workers, checkpoint caches)
  for (let i = 0; i < 50; i++) await decider.decide(`key-${i}`);
  let done = 0;
  let undecided = 0;
  const end = performance.now() + SECONDS * 1000;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CALLERS }, async (_, c) => {
      let i = c;
      while (performance.now() < end) {
        const { decision } = await decider.decide(`key-${i % KEYS}`);
        if (!decision.decided) {
          undecided++;
          if (undecided === 1) console.error(JSON.stringify(decision));
        }
        done++;
        i += CALLERS;
      }
    }),
  );
  const secs = (performance.now() - t0) / 1000;
  const rate = done / secs;
  console.log(
    JSON.stringify({
      bench: `decide ${name}`,
      logs: LOGS,
      callers: CALLERS,
      decisionsPerSecond: Math.round(rate),
      usPerDecision: Math.round(1e6 / rate),
      undecided,
    }),
  );
  if (undecided > 0) throw new Error(`${undecided} decisions failed`);
  return rate;
}

async function main(): Promise<void> {
  const dirs: string[] = [];
  const logs: Log[] = [];
  const servers: Server[] = [];
  const blocks: string[] = [];
  for (let n = 0; n < LOGS; n++) {
    const dir = mkdtempSync(join(tmpdir(), 'trustix-bench-decide-'));
    dirs.push(dir);
    const log = await Log.create(dir, `bench${n}.test/log`, { batchDelayMs: 1 });
    logs.push(log);
    await log.submit(
      Array.from({ length: KEYS }, (_, i) => ({
        protocol: 'nix',
        key: Buffer.from(`key-${i}`),
        value: sha256(Buffer.from(`value-${i}`)),
        metadata: Buffer.alloc(0),
      })),
    );
    const s = await serve(log);
    servers.push(s.server);
    blocks.push(`[[log]]\nname = "log${n}"\nurl = "${s.url}"\nvkey = "${log.vkey}"\n`);
  }
  const config = (procedure: string) => `${blocks.join('\n')}\n[procedure.default]\n${procedure}\n`;
  const rates: Record<string, number> = {};
  const runs: Array<[string, string]> = [
    ['percentage', 'type = "percentage"\nmin = "2/3"'],
    [
      'lua',
      'type = "lua"\nsource = """\nfunction decide(a)\n  local n, v = 0, nil\n  for _, x in ipairs(a) do if x.status == "present" then v = x.value; n = n + 1 end end\n  if n * 3 >= #a * 2 then return v end\nend\n"""',
    ],
    [
      'js',
      'type = "js"\nsource = """\nfunction decide(a) {\n  const p = a.filter((x) => x.status === "present");\n  return p.length * 3 >= a.length * 2 ? p[0].value : null;\n}\n"""',
    ],
  ];
  try {
    for (const [name, proc] of runs) {
      const d = new Decider(parseDecideConfig(config(proc)));
      try {
        rates[name] = await measure(name, d);
      } finally {
        await d.close();
      }
    }
    for (const s of ['lua', 'js']) {
      console.log(
        JSON.stringify({
          bench: `decide ${s} script overhead`,
          usPerDecision: Math.round(1e6 / rates[s] - 1e6 / rates.percentage),
        }),
      );
    }
  } finally {
    for (const s of servers) s.close();
    for (const l of logs) await l.close();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

await main();
