// End to end with the real Nix 2.8 client (issue #5): three independent builders, each with its own
// chroot store and its own Trustix log, publish through the post-build hook; each copies its
// outputs to its own binary cache (xz, zstd, bzip2) served by a plain HTTP server; a fresh client
// store substitutes through `trustix nix cache`, trusting only the proxy's key.
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { encodeNix32 } from '../../src/nix/base32.js';
import { writeNixConf } from '../fixtures/nix-conf.js';
import { cleanup, type RunningServer, startServer, tempDir, token } from '../fixtures/server-helpers.js';

const MAIN = new URL('../../src/cli/main.ts', import.meta.url).pathname;
const T = tempDir('trustix-e2e-');
const NIX_CONF = join(T, 'conf');
const BUILDERS = ['a', 'b', 'c'] as const;
type Builder = (typeof BUILDERS)[number];

/** Derivations without nixpkgs. `group` is shared by builders a and b; `unique` differs per builder. */
const EXPR = `
let mk = name: script: derivation {
  inherit name; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" script ]; PATH = "/usr/bin:/bin";
}; in {
  agree = mk "agree" "echo same everywhere > $out";
  majority = mk "majority" "read id < /builder-group; echo \\"built by group $id\\" > $out";
  disagree = mk "disagree" "read id < /builder-unique; echo \\"built by $id\\" > $out";
  tamper = mk "tamper" "echo tamper me please > $out";
  agree2 = mk "agree2" "echo still the same > $out";
  late = mk "late" "echo built while the log was down > $out";
}`;

function env(cacheName: string): NodeJS.ProcessEnv {
  const cache = join(T, `xdg-${cacheName}`);
  mkdirSync(cache, { recursive: true });
  return { ...process.env, NIX_CONF_DIR: NIX_CONF, XDG_CACHE_HOME: cache, HOME: T };
}

function run(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; allowFail?: boolean } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env: opts.env ?? env('misc'), maxBuffer: 1 << 26 }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: number }).code ?? 1) : 0;
      if (code !== 0 && !opts.allowFail) {
        reject(new Error(`${cmd} ${args.join(' ')} failed (${code}):\n${stderr}`));
      } else resolve({ code: typeof code === 'number' ? code : 1, stdout, stderr });
    });
  });
}

const trustix = (args: string[], opts: { env?: NodeJS.ProcessEnv; allowFail?: boolean } = {}) =>
  run(process.execPath, ['--import', 'tsx', MAIN, ...args], opts);

interface BuilderState {
  name: Builder;
  store: string;
  stateDir: string;
  port: number;
  server?: RunningServer;
  vkey: string;
  publishConfig: string;
  sandboxPaths: string;
}

const builders = new Map<Builder, BuilderState>();
const outPaths = new Map<string, string>();
let upstreams: Array<{ server: Server; url: string }> = [];
let proxy: { proc: ChildProcess; url: string; publicKey: string; stderr: () => string } | undefined;

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** A plain static file server, as any binary cache host would be. */
async function serveDir(dir: string): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const name = decodeURIComponent((req.url ?? '/').slice(1));
    if (name.includes('..')) return void res.writeHead(400).end();
    try {
      const body = readFileSync(join(dir, name));
      res.writeHead(200, { 'content-length': body.length }).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/` };
}

async function startLog(b: BuilderState): Promise<void> {
  b.server = await startServer([
    '--state',
    b.stateDir,
    '--listen',
    `127.0.0.1:${b.port}`,
    '--origin',
    `builder-${b.name}.test/log`,
  ]);
  b.vkey = b.server.vkey;
}

function logUrl(b: BuilderState): string {
  return `http://127.0.0.1:${b.port}/logs/default/`;
}

async function build(b: BuilderState, attrs: string[]): Promise<{ code: number; stderr: string }> {
  const hook = join(T, `hook-${b.name}.sh`);
  const args = [
    '--store',
    b.store,
    join(T, 'drv.nix'),
    ...attrs.flatMap((a) => ['-A', a]),
    '--no-out-link',
    '--option',
    'post-build-hook',
    hook,
    '--option',
    'extra-sandbox-paths',
    b.sandboxPaths,
  ];
  const r = await run('nix-build', args, { env: env(`build-${b.name}`), allowFail: true });
  const paths = r.stdout.trim().split('\n');
  attrs.forEach((a, i) => {
    if (paths[i]) outPaths.set(`${b.name}:${a}`, paths[i]);
  });
  return r;
}

function clientEnv(name: string): NodeJS.ProcessEnv {
  return env(`client-${name}`);
}

/** `nix-store -r` through the proxy into a fresh client store, trusting only the proxy's key. */
/** Nix options that make `via` the only substituter and its key the only trusted one. */
function onlyProxy(via: NonNullable<typeof proxy>): string[] {
  return ['--option', 'substituters', via.url, '--option', 'trusted-public-keys', via.publicKey];
}

function substitute(store: string, path: string, via = proxy!) {
  return run('nix-store', ['--store', store, '-r', path, ...onlyProxy(via)], {
    env: clientEnv(store.split('/').pop()!),
    allowFail: true,
  });
}

/** The NAR hash a builder's log holds for a hash part, verified by `trustix lookup`, as `sha256:<nix32>`. */
async function loggedNarHash(b: BuilderState, hashPart: string): Promise<string> {
  const r = await trustix(['lookup', '--url', logUrl(b), '--vkey', b.vkey, '--json', hashPart], {
    allowFail: true,
  });
  assert.equal(r.code, 0, `${b.name}: ${r.stdout}${r.stderr}`);
  const answer = JSON.parse(r.stdout) as { status: string; value: string };
  assert.equal(answer.status, 'present');
  return `sha256:${encodeNix32(Buffer.from(answer.value, 'hex'))}`;
}

async function narHashIn(store: string, path: string): Promise<string> {
  return (await run('nix-store', ['--store', store, '-q', '--hash', path])).stdout.trim();
}

async function startProxy(configFile: string): Promise<NonNullable<typeof proxy>> {
  const proc = spawn(process.execPath, ['--import', 'tsx', MAIN, 'nix', 'cache', '--config', configFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`proxy did not start:\n${out}\n${err}`)), 20_000);
    proc.on('exit', (code) => reject(new Error(`proxy exited ${code}:\n${out}\n${err}`)));
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (/^ready$/m.test(out)) {
        clearTimeout(timer);
        resolve({
          proc,
          url: /^listening (\S+)$/m.exec(out)![1].replace(/\/$/, ''),
          publicKey: /^public key (\S+)$/m.exec(out)![1],
          stderr: () => err,
        });
      }
    });
  });
}

async function stopProxy(p: NonNullable<typeof proxy>): Promise<void> {
  if (p.proc.exitCode !== null) return;
  const exited = new Promise((r) => p.proc.once('exit', r));
  p.proc.kill('SIGTERM');
  await exited;
}

function writeDecideConfig(file: string, procedure: string): void {
  const logs = [...builders.values()]
    .map((b) => `[[log]]\nname = "${b.name}"\nurl = "${logUrl(b)}"\nvkey = "${b.vkey}"\n`)
    .join('\n');
  writeFileSync(file, `timeout = 3\ntrust_dir = "trust"\n${logs}\n${procedure}\n`);
}

function writeCacheConfig(file: string, decide: string, ups: string[]): void {
  writeFileSync(
    file,
    `listen = "127.0.0.1:0"\nsecret_key_file = "proxy.sec"\nkey_name = "proxy-e2e-1"\ndecide_config = "${decide}"\ndecision_ttl = 0\nnegative_ttl = 0\n` +
      ups.map((u) => `[[upstream]]\nurl = "${u}"\ntimeout = 3\n`).join(''),
  );
}

describe('Nix end to end: builders, hook, logs, voting proxy, real client', { timeout: 600_000 }, () => {
  before(async () => {
    writeNixConf(NIX_CONF);
    writeFileSync(join(T, 'drv.nix'), EXPR);
    const group: Record<Builder, string> = { a: 'one', b: 'one', c: 'two' };
    for (const name of [...BUILDERS, 'client'] as const) {
      writeFileSync(join(T, `group-${name}`), `${name === 'client' ? 'client' : group[name]}\n`);
      writeFileSync(join(T, `unique-${name}`), `${name}\n`);
    }
    for (const name of BUILDERS) {
      const b: BuilderState = {
        name,
        store: join(T, `store-${name}`),
        stateDir: join(T, `log-${name}`),
        port: await freePort(),
        vkey: '',
        publishConfig: join(T, `publish-${name}.toml`),
        sandboxPaths: `/bin /lib /lib64 /usr /builder-group=${join(T, `group-${name}`)} /builder-unique=${join(T, `unique-${name}`)}`,
      };
      builders.set(name, b);
    }
    await Promise.all([...builders.values()].map(startLog));
    for (const b of builders.values()) {
      writeFileSync(
        b.publishConfig,
        `log = "${logUrl(b)}"\nvkey = "${b.vkey}"\ntoken_file = "${join(b.stateDir, 'writers', 'default.token')}"\nspool = "${join(T, `spool-${b.name}`)}"\ntrust_dir = "${join(T, `publish-trust-${b.name}`)}"\ntimeout = 3\n`,
      );
      assert.ok(token(b.stateDir).length > 0);
    }
    // the hook as the how-to installs it: it records each build, `nix flush` delivers
    await Promise.all(
      [...builders.values()].map((b) =>
        trustix([
          'nix',
          'install-hook',
          '--config',
          b.publishConfig,
          '--out',
          join(T, `hook-${b.name}.sh`),
          '--log',
          join(T, `hook-${b.name}.log`),
        ]),
      ),
    );
  });

  after(async () => {
    if (proxy) await stopProxy(proxy);
    for (const b of builders.values()) await b.server?.stop();
    for (const u of upstreams) u.server.close();
    cleanup(T);
  });

  test('three builders build, the post-build hook records, nix flush publishes', async () => {
    await Promise.all(
      [...builders.values()].map(async (b) => {
        const r = await build(b, ['agree', 'majority', 'disagree', 'tamper', 'agree2']);
        assert.equal(r.code, 0, r.stderr);
        const f = await trustix(['nix', 'flush', '--config', b.publishConfig], { allowFail: true });
        assert.equal(f.code, 0, f.stdout + f.stderr);
      }),
    );
    for (const attr of ['agree', 'majority', 'disagree']) {
      const paths = BUILDERS.map((n) => outPaths.get(`${n}:${attr}`));
      assert.equal(new Set(paths).size, 1, `${attr}: same store path in every builder`);
    }
    // every builder's log has every output, with the NAR hash its store recorded
    for (const b of builders.values()) {
      const path = outPaths.get(`${b.name}:majority`)!;
      const hashPart = path.split('/').pop()!.slice(0, 32);
      assert.equal(await loggedNarHash(b, hashPart), await narHashIn(b.store, path), b.name);
    }
    // each builder publishes its binary cache; a plain HTTP server serves it
    const compression: Record<Builder, string> = { a: 'xz', b: 'zstd', c: 'bzip2' };
    upstreams = [];
    for (const b of builders.values()) {
      const dir = join(T, `bincache-${b.name}`);
      const paths = ['agree', 'majority', 'disagree', 'agree2'].map((a) => outPaths.get(`${b.name}:${a}`)!);
      await run('nix', [
        'copy',
        '--store',
        b.store,
        '--to',
        `file://${dir}?compression=${compression[b.name]}`,
        ...paths,
      ]);
      upstreams.push(await serveDir(dir));
    }
    writeDecideConfig(
      join(T, 'decide.toml'),
      '[procedure.default]\ntype = "percentage"\nmin = "2/3"\nof = "configured"',
    );
    writeCacheConfig(
      join(T, 'cache.toml'),
      'decide.toml',
      upstreams.map((u) => u.url),
    );
    proxy = await startProxy(join(T, 'cache.toml'));
    const info = await (await fetch(`${proxy.url}/nix-cache-info`)).text();
    assert.match(info, /StoreDir: \/nix\/store/);
  });

  test('1. all builders agree: the client substitutes, and the NAR hash matches', async () => {
    const path = outPaths.get('a:agree')!;
    const client = join(T, 'client-1');
    const r = await substitute(client, path);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await narHashIn(client, path), await narHashIn(builders.get('a')!.store, path));
    assert.equal(readFileSync(join(client, path), 'utf8'), 'same everywhere\n');
  });

  test('2. two of three agree under a two-thirds rule: the client gets the majority output', async () => {
    const path = outPaths.get('a:majority')!;
    const majority = await narHashIn(builders.get('a')!.store, path);
    assert.equal(await narHashIn(builders.get('b')!.store, path), majority);
    assert.notEqual(await narHashIn(builders.get('c')!.store, path), majority);
    const client = join(T, 'client-2');
    const r = await substitute(client, path);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await narHashIn(client, path), majority);
    assert.equal(readFileSync(join(client, path), 'utf8'), 'built by group one\n');
  });

  test('3. builders all disagree: narinfo 404, and nix-build builds locally', async () => {
    const path = outPaths.get('a:disagree')!;
    const hashPart = path.split('/').pop()!.slice(0, 32);
    const res = await fetch(`${proxy!.url}/${hashPart}.narinfo`);
    assert.equal(res.status, 404);
    assert.match(await res.text(), /no decision/);
    const client = join(T, 'client-3');
    const r = await run(
      'nix-build',
      [
        '--store',
        client,
        join(T, 'drv.nix'),
        '-A',
        'disagree',
        '--no-out-link',
        ...onlyProxy(proxy!),
        '--option',
        'extra-sandbox-paths',
        `/bin /lib /lib64 /usr /builder-group=${join(T, 'group-client')} /builder-unique=${join(T, 'unique-client')}`,
      ],
      { env: clientEnv('client-3'), allowFail: true },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      readFileSync(join(client, path), 'utf8'),
      'built by client\n',
      'built locally, not substituted',
    );
  });

  test('4. the upstream serves a tampered NAR: the client refuses it and imports nothing', async () => {
    // an uncompressed copy of builder a's output whose NAR bytes are then altered in place
    const a = builders.get('a')!;
    const path = outPaths.get('a:tamper')!;
    const dir = join(T, 'bincache-evil');
    await run('nix', ['copy', '--store', a.store, '--to', `file://${dir}?compression=none`, path]);
    for (const f of readdirSync(join(dir, 'nar'))) {
      const file = join(dir, 'nar', f);
      const bytes = readFileSync(file);
      const at = bytes.indexOf('tamper me');
      assert.ok(at > 0);
      bytes.write('TAMPER', at);
      writeFileSync(file, bytes);
    }
    const evil = await serveDir(dir);
    upstreams.push(evil);
    writeCacheConfig(join(T, 'cache-evil.toml'), 'decide.toml', [evil.url]);
    const evilProxy = await startProxy(join(T, 'cache-evil.toml'));
    try {
      const hashPart = path.split('/').pop()!.slice(0, 32);
      const ni = await fetch(`${evilProxy.url}/${hashPart}.narinfo`);
      assert.equal(ni.status, 200, 'all three logs agree on the real NAR hash');
      const client = join(T, 'client-4');
      const r = await substitute(client, path, evilProxy);
      assert.notEqual(r.code, 0, 'the substitution must fail');
      const valid = await run('nix-store', ['--store', client, '--check-validity', path], {
        env: clientEnv('client-4'),
        allowFail: true,
      });
      assert.notEqual(valid.code, 0, 'nothing was imported');
      // small NARs are checked before any byte is sent (then 404), large ones are cut short
      assert.match(evilProxy.stderr(), /NAR hash mismatch/);
    } finally {
      await stopProxy(evilProxy);
    }
  });

  test('5. one log is down: the decision follows the procedure (2 of 3 configured still decide)', async () => {
    const c = builders.get('c')!;
    await c.server!.stop();
    const path = outPaths.get('a:agree2')!;
    const hashPart = path.split('/').pop()!.slice(0, 32);
    const d = await trustix(['decide', '--config', join(T, 'decide.toml'), '--json', hashPart], {
      allowFail: true,
    });
    assert.equal(d.code, 0, d.stdout + d.stderr);
    const decision = JSON.parse(d.stdout);
    assert.equal(decision.decided, true);
    assert.deepEqual(decision.agreed.sort(), ['a', 'b']);
    assert.deepEqual(
      decision.failed.map((f: { name: string }) => f.name),
      ['c'],
      'a log that is down is failed, never absent',
    );
    const client = join(T, 'client-5');
    const r = await substitute(client, path);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await narHashIn(client, path), await narHashIn(builders.get('a')!.store, path));
    // with c down, the 2-of-3 majority output has one vote left: no decision
    const majority = outPaths.get('a:majority')!.split('/').pop()!.slice(0, 32);
    await builders.get('b')!.server!.stop();
    assert.equal((await fetch(`${proxy!.url}/${majority}.narinfo`)).status, 404);
    await startLog(builders.get('b')!);
    await startLog(c);
  });

  test('6. the hook with its log down: the build succeeds; the entry is delivered later', async () => {
    const a = builders.get('a')!;
    await a.server!.stop();
    const r = await build(a, ['late']);
    assert.equal(r.code, 0, r.stderr);
    const path = outPaths.get('a:late')!;
    const hashPart = path.split('/').pop()!.slice(0, 32);
    assert.ok(readdirSync(join(T, 'spool-a')).length > 0, 'the entry waits in the spool');
    await startLog(a);
    const flush = await trustix(['nix', 'flush', '--config', a.publishConfig], { allowFail: true });
    assert.equal(flush.code, 0, flush.stdout + flush.stderr);
    assert.equal(await loggedNarHash(a, hashPart), await narHashIn(a.store, path));
    assert.deepEqual(
      readdirSync(join(T, 'spool-a')).filter((f) => !f.startsWith('.')),
      [],
      'spool emptied',
    );
  });
});
