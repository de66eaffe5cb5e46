// npm run bench:decide: decisions per second for one key across 5 loopback logs, with a few
// concurrent callers; then the same with a Lua and a JS procedure, to show what a script adds per
// decision. One JSON line per figure.
//
// Each log is a real Log behind a minimal node:http server. The logs run in a child process, as
// remote logs would (TRUSTIX_BENCH_DECIDE_INPROCESS=1 serves them from the deciding process
// instead), so the figure is the decider's: HTTP, JSON and full verification of every answer
// (signature, index proof, entry, inclusion, consistency with the trusted checkpoint). Every
// decision asks all 5 logs. `cpuUsPerDecision` is the deciding process's CPU time (all its
// threads) per decision; `logsCpuUsPerDecision` the log process's.
// Knobs: TRUSTIX_BENCH_DECIDE_SECONDS (per figure, default 3), TRUSTIX_BENCH_DECIDE_CALLERS (8),
// TRUSTIX_BENCH_DECIDE_ONLY (comma-separated figures, run in that order: percentage,lua,js),
// TRUSTIX_BENCH_DECIDE_ALONE=1 (only the procedure-alone figures, which are steadier on a shared
// machine), TRUSTIX_BENCH_DECIDE_CALLS (procedure calls per alone figure, default 5000),
// TRUSTIX_BENCH_DECIDE_ROUNDS (the full-run figures take turns this many times, default 3; what a
// script adds is the median over the rounds of its figure minus the built-in one of the same round).
import { type ChildProcess, fork } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { toBase64 } from '../src/core/bytes.js';
import { sha256 } from '../src/core/hash.js';
import { parseDecideConfig } from '../src/decide/config.js';
import { Decider } from '../src/decide/decide.js';
import type { ScriptProcedure } from '../src/decide/sandbox.js';
import { Log } from '../src/log/log.js';

const SECONDS = Number(process.env.TRUSTIX_BENCH_DECIDE_SECONDS ?? 3);
const IN_PROCESS = process.env.TRUSTIX_BENCH_DECIDE_INPROCESS === '1';
const ONLY = process.env.TRUSTIX_BENCH_DECIDE_ONLY;
const ALONE_ONLY = process.env.TRUSTIX_BENCH_DECIDE_ALONE === '1';
const PROCEDURE_CALLS = Number(process.env.TRUSTIX_BENCH_DECIDE_CALLS ?? 5000);
const CALLERS = Number(process.env.TRUSTIX_BENCH_DECIDE_CALLERS ?? 8);
const ROUNDS = Number(process.env.TRUSTIX_BENCH_DECIDE_ROUNDS ?? 3);
const LOGS = 5;
const KEYS = 1000;

function serve(log: Log): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    const path = u.pathname.replace(/^\/logs\/default\//, '');
    if (req.method === 'POST' && path === 'lookup') {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const { protocol, keys } = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
          protocol: string;
          keys: string[];
        };
        const { body } = log.lookupManyJson(
          protocol,
          keys.map((k) => Buffer.from(k, 'utf8')),
        );
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(body);
      });
      return;
    }
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

/**
 * CPU time of each thread of this process so far, in microseconds, from the scheduler's
 * nanosecond counters (Linux; empty elsewhere): which thread a procedure's cost lands on.
 */
function threadsCpu(): Map<string, number> {
  const out = new Map<string, number>();
  try {
    for (const t of readdirSync('/proc/self/task')) {
      try {
        out.set(t, Number(readFileSync(`/proc/self/task/${t}/schedstat`, 'utf8').split(' ')[0]) / 1000);
      } catch {
        // the thread ended meanwhile
      }
    }
  } catch {
    // no procfs
  }
  return out;
}

/** Per decision: the main thread, the busiest other thread (the script worker when there is one), the rest. */
function threadsSplit(before: Map<string, number>, done: number): Record<string, number> | undefined {
  const after = threadsCpu();
  if (after.size === 0) return undefined;
  let main = 0;
  const others: number[] = [];
  for (const [t, us] of after) {
    const d = us - (before.get(t) ?? 0);
    if (t === String(process.pid)) main = d;
    else others.push(d);
  }
  others.sort((a, b) => b - a);
  const rest = others.slice(1).reduce((a, b) => a + b, 0);
  const per = (us: number) => Math.round(us / done);
  return { main: per(main), busiestOther: per(others[0] ?? 0), rest: per(rest) };
}

/** From now on: how many script calls shared one message to the worker, on average (none for built-ins). */
function scriptBatching(decider: Decider): () => { scriptCallsPerMessage?: number } {
  const script = decider.procedure('nix') as Partial<ScriptProcedure>;
  const [batches0, calls0] = [script.batches ?? 0, script.batchedCalls ?? 0];
  return () => {
    const batches = (script.batches ?? 0) - batches0;
    if (batches === 0) return {};
    return { scriptCallsPerMessage: Number((((script.batchedCalls ?? 0) - calls0) / batches).toFixed(2)) };
  };
}

/** CPU time of the log servers so far, in microseconds. */
type LogsCpu = () => Promise<number>;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

async function measure(
  name: string,
  decider: Decider,
  logsCpu: LogsCpu,
  warmMs: number,
  round: number,
): Promise<number> {
  // warm up (workers, checkpoint caches, connections, and the JIT: the first figure would otherwise
  // pay for compiling the client and verifier, and scripts would look cheaper than built-ins)
  const warm = performance.now() + warmMs;
  await Promise.all(
    Array.from({ length: CALLERS }, async (_, c) => {
      for (let i = c; performance.now() < warm; i += CALLERS) await decider.decide(`key-${i % KEYS}`);
    }),
  );
  let done = 0;
  let undecided = 0;
  const logs0 = await logsCpu();
  const threads0 = threadsCpu();
  const callsPerMessage = scriptBatching(decider);
  const cpu0 = process.cpuUsage();
  const elu0 = performance.eventLoopUtilization();
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
  const cpu = process.cpuUsage(cpu0);
  const threads = threadsSplit(threads0, done);
  const elu = performance.eventLoopUtilization(elu0);
  const logs = (await logsCpu()) - logs0;
  const rate = done / secs;
  console.log(
    JSON.stringify({
      bench: `decide ${name}`,
      round,
      logs: LOGS,
      callers: CALLERS,
      decisions: done,
      seconds: Number(secs.toFixed(2)),
      decisionsPerSecond: Math.round(rate),
      usPerDecision: Math.round(1e6 / rate),
      cpuUsPerDecision: Math.round((cpu.user + cpu.system) / done),
      mainThreadBusyUsPerDecision: Math.round((elu.active * 1000) / done),
      ...(threads ? { threadsCpuUsPerDecision: threads } : {}),
      ...callsPerMessage(),
      ...(IN_PROCESS ? {} : { logsCpuUsPerDecision: Math.round(logs / done) }),
      loadavg: loadavg().map((x) => Number(x.toFixed(2))),
      undecided,
    }),
  );
  if (undecided > 0) throw new Error(`${undecided} decisions failed`);
  return rate;
}

/**
 * The procedure alone: runs it over one set of verified answers, CALLERS calls at a time, so a
 * script's cost shows without the noise of the lookups.
 */
async function measureProcedure(name: string, decider: Decider): Promise<{ us: number; cpuUs: number }> {
  const { results } = await decider.decide('key-1');
  const calls = PROCEDURE_CALLS;
  for (let i = 0; i < 200; i++) await decider.decideOn(results, 'nix', 'key-1');
  const callsPerMessage = scriptBatching(decider);
  const elu0 = performance.eventLoopUtilization();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: CALLERS }, async () => {
      while (next++ < calls) {
        const d = await decider.decideOn(results, 'nix', 'key-1');
        if (!d.decided) throw new Error(`procedure ${name} decided nothing: ${d.reason}`);
      }
    }),
  );
  const us = ((performance.now() - t0) * 1000) / calls;
  const cpu = process.cpuUsage(cpu0);
  const cpuUs = (cpu.user + cpu.system) / calls;
  const elu = performance.eventLoopUtilization(elu0);
  console.log(
    JSON.stringify({
      bench: `decide procedure alone ${name}`,
      callers: CALLERS,
      calls,
      usPerCall: Number(us.toFixed(1)),
      mainThreadBusyUsPerCall: Number(((elu.active * 1000) / calls).toFixed(1)),
      // all threads of the process, the script worker's included
      cpuUsPerCall: Number(cpuUs.toFixed(1)),
      ...callsPerMessage(),
      loadavg: loadavg().map((x) => Number(x.toFixed(2))),
    }),
  );
  return { us, cpuUs };
}

/** Creates the logs and serves them; returns their config blocks and a way to stop. */
async function startLogs(): Promise<{ blocks: string[]; stop(): Promise<void> }> {
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
  return {
    blocks,
    async stop() {
      for (const s of servers) {
        s.closeAllConnections();
        s.close();
      }
      for (const l of logs) await l.close();
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    },
  };
}

/** The child process: serves the logs until told to stop; answers CPU time queries. */
async function serveLogsChild(): Promise<void> {
  const logs = await startLogs();
  process.on('message', async (m: { type: string }) => {
    if (m.type === 'cpu') {
      const u = process.cpuUsage();
      process.send!({ type: 'cpu', us: u.user + u.system });
    } else if (m.type === 'stop') {
      await logs.stop();
      process.disconnect();
    }
  });
  process.send!({ type: 'ready', blocks: logs.blocks });
}

async function logsInChild(): Promise<{ blocks: string[]; cpu: LogsCpu; stop(): Promise<void> }> {
  const child: ChildProcess = fork(fileURLToPath(import.meta.url), ['--serve-logs'], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const next = <T>(type: string) =>
    new Promise<T>((resolve, reject) => {
      const onMessage = (m: { type: string } & T) => {
        if (m.type !== type) return;
        child.off('message', onMessage);
        child.off('exit', onExit);
        resolve(m);
      };
      const onExit = (code: number | null) => reject(new Error(`log process exited (${code})`));
      child.on('message', onMessage);
      child.once('exit', onExit);
    });
  const { blocks } = await next<{ blocks: string[] }>('ready');
  return {
    blocks,
    async cpu() {
      const r = next<{ us: number }>('cpu');
      child.send({ type: 'cpu' });
      return (await r).us;
    },
    async stop() {
      const exited = new Promise((r) => child.once('exit', r));
      child.send({ type: 'stop' });
      await exited;
    },
  };
}

async function main(): Promise<void> {
  const served = IN_PROCESS ? { ...(await startLogs()), cpu: async () => 0 } : await logsInChild();
  const config = (procedure: string) => `${served.blocks.join('\n')}\n[procedure.default]\n${procedure}\n`;
  const alone: Record<string, { us: number; cpuUs: number }> = {};
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
    // in the order ONLY gives, so that the figure that runs first (and pays for what warming up
    // missed) can be any of them
    const order = ONLY ? ONLY.split(',').flatMap((n) => runs.filter(([r]) => r === n)) : runs;
    const deciders = order.map(
      ([name, proc]) => [name, new Decider(parseDecideConfig(config(proc)))] as const,
    );
    // us per decision of each figure in each round; the figures take turns, so that a drift of the
    // machine (other load, the JIT still warming) lands on all of them alike
    const rounds: Record<string, number[]> = {};
    try {
      if (!ALONE_ONLY) {
        for (let r = 0; r < ROUNDS; r++) {
          for (const [name, d] of deciders) {
            const rate = await measure(name, d, served.cpu, r === 0 ? 1500 : 300, r);
            rounds[name] = [...(rounds[name] ?? []), 1e6 / rate];
          }
        }
      }
      for (const [name, d] of deciders) alone[name] = await measureProcedure(name, d);
    } finally {
      for (const [, d] of deciders) await d.close();
    }
    for (const s of ['lua', 'js']) {
      if (alone[s] === undefined || alone.percentage === undefined) continue;
      const added = (rounds[s] ?? []).map((us, r) => us - (rounds.percentage?.[r] ?? Number.NaN));
      console.log(
        JSON.stringify({
          bench: `decide ${s} script overhead`,
          ...(added.length > 0 && added.every(Number.isFinite)
            ? { usPerDecision: Math.round(median(added)), usPerDecisionByRound: added.map(Math.round) }
            : {}),
          usPerCallAlone: Number((alone[s].us - alone.percentage.us).toFixed(1)),
          cpuUsPerCallAlone: Number((alone[s].cpuUs - alone.percentage.cpuUs).toFixed(1)),
        }),
      );
    }
  } finally {
    await served.stop();
  }
}

if (process.argv.includes('--serve-logs')) await serveLogsChild();
else await main();
