// npm run bench:hook: what the post-build hook adds to a Nix build. Builds N trivial derivations
// (default 20, each new, so each is really built) in a throwaway chroot store with the real Nix,
// taking turns: without a hook, with an empty hook (`exit 0`: what Nix itself charges for running
// any hook), with the wrapper `trustix nix install-hook` writes, and with the Node.js command
// (`trustix nix post-build-hook`). A hook's cost is the median wall time of a build with it minus
// the median without; the wrapper run alone (as Nix runs it) is measured too.
// Every recorded build must be in the spool afterwards. One JSON line per figure, then a summary.
// Knobs: TRUSTIX_BENCH_HOOK_BUILDS (N, default 20), TRUSTIX_BENCH_HOOK_NODE=0 (skip the Node.js
// command, which is slow to start).
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { generateKey } from '../src/core/note.js';
import { writeNixConf } from '../test/fixtures/nix-conf.js';

const N = Number(process.env.TRUSTIX_BENCH_HOOK_BUILDS ?? 20);
const WITH_NODE = process.env.TRUSTIX_BENCH_HOOK_NODE !== '0';
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const round = (x: number) => Math.round(x * 10) / 10;

const dir = mkdtempSync(join(tmpdir(), 'trustix-bench-hook-'));
try {
  writeNixConf(join(dir, 'conf'));
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    NIX_CONF_DIR: join(dir, 'conf'),
    XDG_CACHE_HOME: join(dir, 'xdg'),
  };
  const store = join(dir, 'store');
  const spool = join(dir, 'spool');
  writeFileSync(join(dir, 'token'), 'bench-token\n', { mode: 0o600 });
  const config = join(dir, 'publish.toml');
  writeFileSync(
    config,
    `log = "http://127.0.0.1:1/logs/default/"\nvkey = "${generateKey('bench.test/log').vkey}"\ntoken_file = "token"\nspool = "spool"\n`,
  );
  const wrapper = join(dir, 'post-build-hook');
  execFileSync(
    process.execPath,
    [CLI, 'nix', 'install-hook', '--config', config, '--out', wrapper, '--log', join(dir, 'hook.log')],
    {
      env,
    },
  );
  const nodeHook = join(dir, 'node-hook');
  writeFileSync(
    nodeHook,
    `#!/bin/sh\nexec '${process.execPath}' '${CLI}' nix post-build-hook --config '${config}'\n`,
    {
      mode: 0o755,
    },
  );
  const empty = join(dir, 'empty-hook');
  writeFileSync(empty, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  const seed = `${Date.now()}`;
  const drvFile = join(dir, 'drv.nix');
  writeFileSync(
    drvFile,
    `{ n }: derivation { name = "bench-${seed}-\${n}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo \${n} > $out" ]; }\n`,
  );
  let count = 0;
  const build = (hook: string): number => {
    const args = [
      '--store',
      store,
      '--no-out-link',
      '--option',
      'post-build-hook',
      hook,
      drvFile,
      '--argstr',
      'n',
      String(count++),
    ];
    const t0 = performance.now();
    const r = spawnSync('nix-build', args, { env, encoding: 'utf8' });
    const ms = performance.now() - t0;
    if (r.status !== 0) throw new Error(`nix-build failed: ${r.stderr}`);
    return ms;
  };
  // warm up: the store's database, Nix's caches
  build('');
  build(wrapper);
  const variants: Array<{ name: string; hook: string; ms: number[] }> = [
    { name: 'none', hook: '', ms: [] },
    { name: 'empty', hook: empty, ms: [] },
    { name: 'wrapper', hook: wrapper, ms: [] },
    ...(WITH_NODE ? [{ name: 'node', hook: nodeHook, ms: [] as number[] }] : []),
  ];
  for (let i = 0; i < N; i++) for (const v of variants) v.ms.push(build(v.hook));
  // the wrapper alone, as Nix runs it (a record per run)
  const alone: number[] = [];
  for (let i = 0; i < N; i++) {
    const t0 = performance.now();
    const r = spawnSync(wrapper, [], { env: { DRV_PATH: `/nix/store/${'0'.repeat(31)}a-x.drv` } });
    alone.push(performance.now() - t0);
    if (r.status !== 0) throw new Error('the wrapper failed');
  }
  const records = readdirSync(spool).filter((f) => f.endsWith('.build')).length;
  const expected = 1 + N * (WITH_NODE ? 2 : 1) + N;
  if (records !== expected) throw new Error(`the spool holds ${records} records, expected ${expected}`);
  const base = median(variants[0].ms);
  for (const v of variants) {
    console.log(
      JSON.stringify({
        figure: 'build',
        hook: v.name,
        builds: v.ms.length,
        medianMs: round(median(v.ms)),
        addedMedianMs: round(median(v.ms) - base),
        beyondEmptyHookMs: round(median(v.ms) - median(variants[1].ms)),
      }),
    );
  }
  console.log(JSON.stringify({ figure: 'wrapper alone', runs: N, medianMs: round(median(alone)) }));
  const load = loadavg()[0].toFixed(1);
  console.log(
    `hook's added time per build (median of ${N}): wrapper ${round(median(variants[2].ms) - base)} ms (an empty hook ${round(median(variants[1].ms) - base)} ms)${
      WITH_NODE ? `, node command ${round(median(variants[3].ms) - base)} ms` : ''
    }; wrapper alone ${round(median(alone))} ms; build without hook ${round(base)} ms (load ${load})`,
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
