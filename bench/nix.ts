// npm run bench:nix: the voting cache proxy (`trustix nix cache`) against the same binary caches
// served directly by a static file server, in one run. One JSON line per figure.
//   1. narinfo/s over 3 and 5 logs: cold (every request a hash part not decided yet) and warm
//      (decisions cached), against the static server serving the same narinfo files; the static
//      server and the warm proxy take TRUSTIX_BENCH_NIX_ROUNDS turns each, so they see one load.
//   2. One large NAR (TRUSTIX_BENCH_NIX_LARGE_MB, default 64) in MB/s of NAR through the proxy,
//      for an uncompressed, an xz and a zstd cache; directly: the cache file's download.
//   3. Each small NAR of the closure below through the proxy (decisions warm), in ms per NAR, for
//      each compression; directly: the cache file's download.
//   4. `nix-store -r` of a 20-path closure of small paths into a fresh store: directly, through
//      the proxy with warm decisions and with cold ones (a running proxy whose decisions expired), medians of
//      TRUSTIX_BENCH_NIX_ROUNDS (default 3), for each compression.
// Everything runs on loopback: the logs are `trustix serve` processes, the caches are written by
// the real `nix copy` and served by a node:http static server in a child process (the load tool
// runs in this process), the proxy is its own `trustix nix cache` process.
// Knobs: TRUSTIX_BENCH_NIX_KEYS (synthetic paths for the narinfo figures, default 2000),
// TRUSTIX_BENCH_NIX_SECONDS (each warm narinfo turn, default 3), TRUSTIX_BENCH_NIX_CONNECTIONS (8),
// TRUSTIX_BENCH_NIX_ONLY (comma-separated: narinfo,nar,small,closure), TRUSTIX_BENCH_NIX_PROXY_ARGS
// (extra node flags for the proxy process, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"),
// TRUSTIX_BENCH_NIX_LOG_ARGS (the same for the log processes).
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { createRequire } from 'node:module';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { toBase64 } from '../src/core/bytes.js';
import { encodeNix32 } from '../src/nix/base32.js';
import { decoderFor } from '../src/nix/compression.js';
import { type NixPathInfo, nixEntry } from '../src/nix/entry.js';
import { formatNarInfo, parseNarInfo } from '../src/nix/narinfo.js';
import { closure, pathInfos } from '../src/nix/nix-query.js';
import { MK, NixWorld, serveDir } from '../test/fixtures/nix-world.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const SELF = fileURLToPath(import.meta.url);
const LARGE_MB = Number(process.env.TRUSTIX_BENCH_NIX_LARGE_MB ?? 64);
const KEYS = Number(process.env.TRUSTIX_BENCH_NIX_KEYS ?? 2000);
const SECONDS = Number(process.env.TRUSTIX_BENCH_NIX_SECONDS ?? 3);
const PROXY_ARGS = process.env.TRUSTIX_BENCH_NIX_PROXY_ARGS?.split(' ').filter(Boolean) ?? [];
const LOG_ARGS = process.env.TRUSTIX_BENCH_NIX_LOG_ARGS?.split(' ').filter(Boolean) ?? [];
const CONNECTIONS = Number(process.env.TRUSTIX_BENCH_NIX_CONNECTIONS ?? 8);
const ROUNDS = Number(process.env.TRUSTIX_BENCH_NIX_ROUNDS ?? 3);
const ONLY = process.env.TRUSTIX_BENCH_NIX_ONLY?.split(',');
const runs = (what: string) => ONLY === undefined || ONLY.includes(what);
const COMPRESSIONS = ['none', 'xz', 'zstd'] as const;

interface AutocannonResult {
  duration: number;
  requests: { total: number; average: number };
  errors: number;
  non2xx: number;
}
type Autocannon = (opts: Record<string, unknown>) => Promise<AutocannonResult>;
const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;

function emit(name: string, value: number, unit: string, extra: Record<string, unknown> = {}): void {
  console.log(JSON.stringify({ name, value: Math.round(value * 100) / 100, unit, ...extra }));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Child mode: serve each directory given on the command line; print their URLs as JSON. */
async function serveDirsChild(dirs: string[]): Promise<void> {
  const urls: string[] = [];
  for (const d of dirs) urls.push((await serveDir(d)).url);
  process.send!(urls);
}

function startStatic(dirs: string[]): Promise<{ proc: ChildProcess; urls: string[] }> {
  const proc = fork(SELF, ['serve-dirs', ...dirs], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    proc.once('message', (urls) => resolve({ proc, urls: urls as string[] }));
    proc.once('exit', (code) => reject(new Error(`static server exited ${code}`)));
  });
}

/** Spawns `trustix ARGS` and resolves with its stdout lines once one matches `until`. */
function spawnUntil(
  args: string[],
  until: RegExp,
  nodeArgs: string[] = [],
): Promise<{ proc: ChildProcess; lines: string[] }> {
  const proc = spawn(process.execPath, [...nodeArgs, MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
  });
  return new Promise((resolve, reject) => {
    let buf = '';
    proc.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const parts = buf.split('\n');
      buf = parts.pop()!;
      for (const l of parts) {
        lines.push(l);
        if (until.test(l)) resolve({ proc, lines });
      }
    });
    proc.once('exit', (code) => reject(new Error(`trustix ${args[0]} exited ${code}: ${err}`)));
  });
}

function stop(proc: ChildProcess): Promise<void> {
  // spawnUntil's listener would call an exit at this point a failure
  proc.removeAllListeners('exit');
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  proc.kill('SIGTERM');
  return exited;
}

interface LogNode {
  proc: ChildProcess;
  url: string;
  vkey: string;
  /** The log's own directory, which a proxy may read as a local copy (`state = DIR`). */
  dir: string;
}

/** A `trustix serve` log holding `entries`. */
async function startLog(dir: string, i: number, entries: ReturnType<typeof nixEntry>[]): Promise<LogNode> {
  const state = join(dir, `node-${i}`);
  const { proc, lines } = await spawnUntil(
    ['serve', '--state', state, '--listen', '127.0.0.1:0', '--origin', `bench-${i}.test/log`],
    /^ready$/,
    LOG_ARGS,
  );
  const url = lines
    .find((l) => l.startsWith('listening '))!
    .split(' ')[1]
    .replace(/\/$/, '');
  const vkey = lines.find((l) => / vkey /.test(l))!.split(' vkey ')[1];
  const token = readFileSync(join(state, 'writers', 'default.token'), 'utf8').trim();
  for (let at = 0; at < entries.length; at += 1000) {
    const body = JSON.stringify({
      entries: entries.slice(at, at + 1000).map((e) => ({
        protocol: e.protocol,
        key: e.key.toString('utf8'),
        value: e.value.toString('hex'),
        metadata: toBase64(e.metadata),
      })),
    });
    const r = await fetch(`${url}/logs/default/submit`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body,
    });
    if (r.status !== 200) throw new Error(`submit to log ${i}: ${r.status} ${await r.text()}`);
  }
  return { proc, url: `${url}/logs/default/`, vkey, dir: join(state, 'logs', 'default') };
}

interface Proxy {
  proc: ChildProcess;
  url: string;
}

let configs = 0;
/** A proxy over `logs`, asked over HTTP, or with `local` read from their directories. */
async function startProxy(
  dir: string,
  logs: LogNode[],
  upstream: string,
  extra = '',
  local = false,
): Promise<Proxy> {
  const n = configs++;
  const decide = join(dir, `decide-${n}.toml`);
  const where = (l: LogNode) => (local ? `state = "${l.dir}"` : `url = "${l.url}"`);
  writeFileSync(
    decide,
    `timeout = 5\ntrust_dir = "trust-${n}"\n${logs
      .map((l, i) => `[[log]]\nname = "log${i}"\n${where(l)}\nvkey = "${l.vkey}"\n`)
      .join('')}[procedure.default]\ntype = "percentage"\nmin = "2/3"\nof = "configured"\n`,
  );
  const cfg = join(dir, `cache-${n}.toml`);
  writeFileSync(
    cfg,
    `listen = "127.0.0.1:0"\nsecret_key_file = "proxy.sec"\ndecide_config = "${decide}"\n${extra}\n[[upstream]]\nurl = "${upstream}"\n`,
  );
  const { proc, lines } = await spawnUntil(
    ['nix', 'cache', '--config', cfg, '--quiet'],
    /^ready$/,
    PROXY_ARGS,
  );
  const url = lines
    .find((l) => l.startsWith('listening '))!
    .split(' ')[1]
    .replace(/\/$/, '');
  return { proc, url };
}

/** Requests/s for GETs of `paths` (cycled) against `base`: `amount` requests, or for SECONDS. */
async function load(
  base: string,
  paths: string[],
  amount?: number,
): Promise<{ rate: number; bad: number; total: number }> {
  let i = 0;
  const r = await autocannon({
    url: base,
    connections: CONNECTIONS,
    ...(amount !== undefined ? { amount } : { duration: SECONDS }),
    requests: [
      {
        method: 'GET',
        setupRequest: (req: Record<string, unknown>) => ({ ...req, path: `/${paths[i++ % paths.length]}` }),
      },
    ],
  });
  return { rate: r.requests.total / r.duration, bad: r.non2xx + r.errors, total: r.requests.total };
}

/** Seconds to download `url` whole, and its size. */
function download(url: string): Promise<{ secs: number; bytes: number }> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    get(url, (res) => {
      if (res.statusCode !== 200) reject(new Error(`${url}: HTTP ${res.statusCode}`));
      let bytes = 0;
      res.on('data', (c: Buffer) => {
        bytes += c.length;
      });
      res.on('end', () => resolve({ secs: (performance.now() - t0) / 1000, bytes }));
      res.on('error', reject);
    }).on('error', reject);
  });
}

/** CPU time (user + system) of processes so far, in ms, from /proc (0 where there is none). */
function cpuMs(procs: ChildProcess[]): number {
  let ticks = 0;
  for (const p of procs) {
    try {
      const fields = readFileSync(`/proc/${p.pid}/stat`, 'utf8').split(') ')[1].split(' ');
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // no procfs
    }
  }
  return ticks * 10; // USER_HZ is 100 on Linux
}

function randomHashPart(): string {
  return encodeNix32(randomBytes(20));
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'trustix-bench-nix-'));
  const world = new NixWorld(dir);
  const children: ChildProcess[] = [];
  try {
    // the Nix side: a 20-path closure of small paths and one large path
    const leaves = Array.from({ length: 19 }, (_, i) => `l${i}`);
    const expr = `let ${MK} in rec {
  ${leaves.map((l, i) => `${l} = mk "leaf-${i}" "echo leaf ${i} > $out";`).join('\n  ')}
  top = mk "top" "echo ${leaves.map((l) => `\${${l}}`).join(' ')} > $out";
  large = mk "large" "head -c ${Math.round((LARGE_MB * 3) / 4)}M /dev/urandom | base64 > $out";
}`;
    const needCaches = runs('nar') || runs('small') || runs('closure');
    const [top, large] = await world.build(expr, runs('nar') ? ['top', 'large'] : ['top', 'top']);
    const real: NixPathInfo[] = await pathInfos(
      await closure([top, large], { store: world.store, env: world.env }),
      {
        store: world.store,
        env: world.env,
      },
    );
    // synthetic paths for the narinfo figures: an entry in every log, a narinfo in the cache
    const synDir = join(dir, 'syn');
    mkdirSync(synDir);
    writeFileSync(join(synDir, 'nix-cache-info'), 'StoreDir: /nix/store\n');
    const syn: string[] = [];
    const synInfos: NixPathInfo[] = [];
    for (let i = 0; i < KEYS; i++) {
      const hp = randomHashPart();
      const narHash = createHash('sha256').update(hp).digest();
      const info = { storePath: `/nix/store/${hp}-syn`, narHash, narSize: 1000, references: [] };
      synInfos.push(info);
      syn.push(`${hp}.narinfo`);
      writeFileSync(
        join(synDir, `${hp}.narinfo`),
        formatNarInfo({ ...info, url: `nar/${hp}.nar`, compression: 'none', sigs: [], extra: [] }),
      );
    }
    const entries = [...real, ...synInfos].map(nixEntry);
    const logs = await Promise.all([0, 1, 2, 3, 4].map((i) => startLog(dir, i, entries)));
    children.push(...logs.map((l) => l.proc));
    const caches: Record<string, string> = {};
    for (const c of COMPRESSIONS) {
      caches[c] = needCaches ? await world.cache(`cache-${c}`, c, [top, large]) : synDir;
    }
    const statics = await startStatic([synDir, ...COMPRESSIONS.map((c) => caches[c])]);
    children.push(statics.proc);
    const [synUrl, ...cacheUrls] = statics.urls;
    const direct: Record<string, string> = {};
    COMPRESSIONS.forEach((c, i) => {
      direct[c] = cacheUrls[i];
    });

    if (runs('narinfo')) {
      // warm figures at equal load: the static server and the warm proxy take turns, ROUNDS each,
      // so both see the same machine; medians, with the load average of each turn
      const staticRun = async () => {
        const s0 = cpuMs([statics.proc]);
        const d = await load(synUrl, syn);
        return { ...d, cpu: (cpuMs([statics.proc]) - s0) / d.total, load: loadavg()[0] };
      };
      for (const n of [3, 5]) {
        const p = await startProxy(dir, logs.slice(0, n), synUrl, 'decision_ttl = 3600');
        const logProcs = logs.slice(0, n).map((l) => l.proc);
        const [cpu0, logs0] = [cpuMs([p.proc]), cpuMs(logProcs)];
        const cold = await load(p.url, syn, KEYS);
        emit(`narinfo cold, ${n} logs`, cold.rate, 'req/s', {
          bad: cold.bad,
          keys: KEYS,
          proxyCpuMsPerRequest: Math.round(((cpuMs([p.proc]) - cpu0) / KEYS) * 1000) / 1000,
          logsCpuMsPerRequest: Math.round(((cpuMs(logProcs) - logs0) / KEYS) * 1000) / 1000,
          load: loadavg()[0],
        });
        const statics: Array<Awaited<ReturnType<typeof staticRun>>> = [];
        const warms: Array<Awaited<ReturnType<typeof staticRun>>> = [];
        for (let r = 0; r < ROUNDS; r++) {
          statics.push(await staticRun());
          const c0 = cpuMs([p.proc]);
          const w = await load(p.url, syn);
          warms.push({ ...w, cpu: (cpuMs([p.proc]) - c0) / w.total, load: loadavg()[0] });
        }
        const rate = (xs: typeof warms) => median(xs.map((x) => x.rate));
        const round3 = (x: number) => Math.round(x * 1000) / 1000;
        emit(`narinfo static server (turns with the ${n}-log proxy)`, rate(statics), 'req/s', {
          bad: statics.reduce((a, x) => a + x.bad, 0),
          cpuMsPerRequest: round3(median(statics.map((x) => x.cpu))),
          rates: statics.map((x) => Math.round(x.rate)),
          loads: statics.map((x) => x.load),
        });
        emit(`narinfo warm, ${n} logs`, rate(warms), 'req/s', {
          bad: warms.reduce((a, x) => a + x.bad, 0),
          ofStatic: Math.round((rate(warms) / rate(statics)) * 100) / 100,
          proxyCpuMsPerRequest: round3(median(warms.map((x) => x.cpu))),
          rates: warms.map((x) => Math.round(x.rate)),
          loads: warms.map((x) => x.load),
        });
        await stop(p.proc);
      }
      // the same three logs read from their own directories, as a proxy beside local copies of
      // the logs would: a cold narinfo then asks no log over the network
      const p = await startProxy(dir, logs.slice(0, 3), synUrl, 'decision_ttl = 3600', true);
      const c0 = cpuMs([p.proc]);
      const cold = await load(p.url, syn, KEYS);
      emit('narinfo cold, 3 local logs', cold.rate, 'req/s', {
        bad: cold.bad,
        keys: KEYS,
        proxyCpuMsPerRequest: Math.round(((cpuMs([p.proc]) - c0) / KEYS) * 1000) / 1000,
        load: loadavg()[0],
      });
      await stop(p.proc);
    }

    const largeHash = large.split('/').pop()!.slice(0, 32);
    if (runs('nar')) {
      for (const c of COMPRESSIONS) {
        const p = await startProxy(dir, logs.slice(0, 3), direct[c], 'decision_ttl = 3600');
        const info = parseNarInfo(await (await fetch(`${p.url}/${largeHash}.narinfo`)).text());
        const upstreamInfo = parseNarInfo(await (await fetch(`${direct[c]}${largeHash}.narinfo`)).text());
        const viaProxy: number[] = [];
        const viaDirect: number[] = [];
        for (let r = 0; r < ROUNDS; r++) {
          const a = await download(`${p.url}/${info.url}`);
          // the proxy passes a large NAR through as the cache compressed it
          const want =
            info.compression === 'none' ? info.narSize : statSync(join(caches[c], upstreamInfo.url)).size;
          if (a.bytes !== want) throw new Error(`proxy sent ${a.bytes} of ${want} bytes`);
          viaProxy.push(a.secs);
          viaDirect.push((await download(`${direct[c]}${upstreamInfo.url}`)).secs);
        }
        const mb = info.narSize / 1e6;
        emit(`large NAR through the proxy, ${c}`, mb / median(viaProxy), 'MB/s of NAR', {
          narMB: mb,
          served: info.compression,
          decoder: decoderFor(c),
        });
        emit(`large NAR file directly, ${c}`, mb / median(viaDirect), 'MB/s of NAR', {
          fileMB: statSync(join(caches[c], upstreamInfo.url)).size / 1e6,
        });
        await stop(p.proc);
      }
    }

    if (runs('small')) {
      const smallParts = real
        .filter((i) => !i.storePath.endsWith('-large'))
        .map((i) => i.storePath.split('/').pop()!.slice(0, 32));
      for (const c of COMPRESSIONS) {
        const p = await startProxy(dir, logs.slice(0, 3), direct[c], 'decision_ttl = 3600');
        const viaProxy: string[] = [];
        const viaDirect: string[] = [];
        for (const hp of smallParts) {
          viaProxy.push(`${p.url}/${parseNarInfo(await (await fetch(`${p.url}/${hp}.narinfo`)).text()).url}`);
          viaDirect.push(
            `${direct[c]}${parseNarInfo(await (await fetch(`${direct[c]}${hp}.narinfo`)).text()).url}`,
          );
        }
        const perNar = async (urls: string[]) => {
          const times: number[] = [];
          for (let r = 0; r < ROUNDS; r++) {
            const t0 = performance.now();
            for (const u of urls) await download(u);
            times.push((performance.now() - t0) / urls.length);
          }
          return median(times);
        };
        await perNar(viaProxy); // warm-up: connections, JIT, a zstd worker
        emit(`small NAR through the proxy, ${c}`, await perNar(viaProxy), 'ms per NAR', {
          nars: viaProxy.length,
        });
        emit(`small NAR file directly, ${c}`, await perNar(viaDirect), 'ms per NAR');
        await stop(p.proc);
      }
    }

    if (runs('closure')) {
      let client = 0;
      const substitute = async (url: string, trust: string[]): Promise<number> => {
        const t0 = performance.now();
        const r = await world.run(
          'nix-store',
          ['--store', join(dir, `client-${client++}`), '-r', top, '--option', 'substituters', url, ...trust],
          true,
        );
        if (r.code !== 0) throw new Error(`nix-store -r through ${url}: ${r.stderr}`);
        return performance.now() - t0;
      };
      for (const c of COMPRESSIONS) {
        const directMs: number[] = [];
        const warmMs: number[] = [];
        const coldMs: number[] = [];
        const warm = await startProxy(dir, logs.slice(0, 3), direct[c], 'decision_ttl = 3600');
        const key = proxyKey(dir);
        const viaProxy = ['--option', 'trusted-public-keys', key];
        await substitute(warm.url, viaProxy); // decisions now cached
        // a running proxy whose decisions expire after 2 s: each run after a pause decides afresh
        const cold = await startProxy(dir, logs.slice(0, 3), direct[c], 'decision_ttl = 2');
        await substitute(cold.url, viaProxy);
        for (let r = 0; r < ROUNDS; r++) {
          directMs.push(
            await substitute(direct[c].replace(/\/$/, ''), ['--option', 'require-sigs', 'false']),
          );
          warmMs.push(await substitute(warm.url, viaProxy));
          await new Promise((r) => setTimeout(r, 2500));
          coldMs.push(await substitute(cold.url, viaProxy));
        }
        await stop(warm.proc);
        await stop(cold.proc);
        const base = median(directMs);
        emit(`nix-store -r 20 paths directly, ${c}`, base, 'ms');
        emit(`nix-store -r 20 paths through the proxy, warm, ${c}`, median(warmMs), 'ms', {
          ofDirect: Math.round((median(warmMs) / base) * 100) / 100,
        });
        emit(`nix-store -r 20 paths through the proxy, cold, ${c}`, median(coldMs), 'ms', {
          ofDirect: Math.round((median(coldMs) / base) * 100) / 100,
        });
      }
    }
  } finally {
    for (const c of children) await stop(c);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The proxy's public key (every proxy of the run shares one key file). */
function proxyKey(dir: string): string {
  return readFileSync(join(dir, 'proxy.sec.pub'), 'utf8').trim();
}

if (process.argv[2] === 'serve-dirs') await serveDirsChild(process.argv.slice(3));
else await main();
