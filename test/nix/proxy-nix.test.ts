// The voting proxy with the real Nix 2.8 client and real (local) logs: what Nix registers is what
// the logs voted for, whatever an upstream's narinfo says; a tampered cache beside a good one
// never makes a substitution fail; `file://` upstreams work. Nix must be installed (CI installs it).
import assert from 'node:assert/strict';
import type { Server } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { loadDecideConfig } from '../../src/decide/config.js';
import { Decider } from '../../src/decide/decide.js';
import { parseCacheConfig } from '../../src/nix/cache-config.js';
import { CacheProxy } from '../../src/nix/cache-proxy.js';
import { formatNixPublicKey, generateNixSecretKey } from '../../src/nix/keys.js';
import { MK, NixWorld, serveDir } from '../fixtures/nix-world.js';
import { cleanup, tempDir } from '../fixtures/server-helpers.js';

const T = tempDir('trustix-proxy-nix-');
const world = new NixWorld(T);
const EXPR = `let ${MK} in rec {
  dep = mk "dep" "echo dependency > $out";
  other = mk "other" "echo other > $out";
  top = mk "top" "echo \${dep} > $out";
  small = mk "small" "echo a small path to tamper with > $out";
}`;
const key = generateNixSecretKey('proxy-nix-test-1');
const publicKey = formatNixPublicKey(key.publicKey);
const servers: Server[] = [];
let decideFile = '';
let good = '';
let goodUrl = '';
const paths = new Map<string, string>();

/** Runs `fn` with an in-process proxy over these upstreams; its log lines are collected. */
async function withProxy<R>(
  upstreams: string[],
  extra: string,
  fn: (url: string, logged: string[]) => Promise<R>,
): Promise<R> {
  const cfg = parseCacheConfig(
    `listen = "127.0.0.1:0"\ndecision_ttl = 0\nnegative_ttl = 0\n${extra}\n${upstreams
      .map((u) => `[[upstream]]\nurl = "${u}"\ntimeout = 3\n`)
      .join('')}`,
    T,
    { decideConfig: decideFile },
  );
  const decider = new Decider(loadDecideConfig(decideFile));
  const logged: string[] = [];
  const proxy = new CacheProxy({ config: cfg, decider, key, log: (l) => logged.push(l) });
  const url = (await proxy.listen()).href.replace(/\/$/, '');
  try {
    return await fn(url, logged);
  } finally {
    await proxy.close();
    await decider.close();
  }
}

async function serve(dir: string, delayMs = 0): Promise<string> {
  const s = await serveDir(dir, delayMs);
  servers.push(s.server);
  return s.url;
}

describe('voting proxy with the real Nix client', { timeout: 300_000 }, () => {
  before(async () => {
    const attrs = ['dep', 'other', 'top', 'small'];
    const built = await world.build(EXPR, attrs);
    attrs.forEach((a, i) => {
      paths.set(a, built[i]);
    });
    decideFile = await world.logs(3, built);
    good = await world.cache('good', 'none', built);
    goodUrl = await serve(good);
  });
  after(() => {
    for (const s of servers) s.close();
    cleanup(T);
  });

  const base = (a: string) => paths.get(a)!.split('/').pop()!;
  const variants: Array<[string, (refs: string[]) => string[]]> = [
    ['stripped', () => []],
    ['added', (refs) => [...refs, base('other')]],
    ['replaced', () => [base('other')]],
  ];
  for (const [what, edit] of variants) {
    test(`a cache with References ${what}: Nix registers the voted references`, async () => {
      const top = paths.get('top')!;
      const evil = world.editedCache(good, `evil-${what}`, top, (info) => {
        info.references = edit(info.references);
      });
      const evilUrl = await serve(evil);
      // the bad cache alone: refused (404 with the reason), nothing registered
      await withProxy([evilUrl], '', async (url, logged) => {
        const r = await world.substitute(`client-${what}-alone`, top, url, publicKey);
        assert.notEqual(r.code, 0, 'substituted from a cache whose narinfo contradicts the vote');
        assert.match(logged.join('\n'), /its References are not the voted ones/);
      });
      // the bad cache first (it answers at once, the good one after 100 ms): the voted references
      const slowGood = await serve(good, 100);
      await withProxy([evilUrl, slowGood], '', async (url) => {
        const client = `client-${what}`;
        const r = await world.substitute(client, top, url, publicKey);
        assert.equal(r.code, 0, r.stderr);
        assert.deepEqual(await world.references(client, top), [paths.get('dep')!]);
      });
    });
  }

  test('a tampered cache and a good one: 10 runs of nix-store -r, 10 substitutions', async () => {
    const small = paths.get('small')!;
    const tampered = await serve(world.tamperedCache(good, 'tampered', 'tamper with'), 0);
    const slowGood = await serve(good, 50);
    let bad = 0;
    // 5 runs forgetting the bad cache at once (so each one falls over), 5 remembering it
    for (const ttl of [0, 600]) {
      await withProxy([tampered, slowGood], `bad_upstream_ttl = ${ttl}`, async (url, logged) => {
        for (let i = 0; i < 5; i++) {
          const client = `client-tamper-${ttl}-${i}`;
          const r = await world.substitute(client, small, url, publicKey);
          assert.equal(r.code, 0, `run ${i} (bad_upstream_ttl ${ttl}): ${r.stderr}`);
          const hash = await world.run('nix-store', ['--store', join(T, client), '-q', '--hash', small]);
          const want = await world.run('nix-store', ['--store', world.store, '-q', '--hash', small]);
          assert.equal(hash.stdout, want.stdout);
        }
        const lines = logged.filter((l) => /bad bytes from .*NAR hash mismatch/.test(l)).length;
        assert.equal(lines, ttl === 0 ? 5 : 1, logged.join('\n'));
        bad += lines;
      });
    }
    assert.equal(bad, 6);
  });

  test('a file:// upstream (zstd) serves the real Nix client', async () => {
    const dir = await world.cache('file-zstd', 'zstd', [paths.get('top')!]);
    await withProxy([pathToFileURL(dir).href], '', async (url) => {
      const r = await world.substitute('client-file', paths.get('top')!, url, publicKey);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(await world.references('client-file', paths.get('top')!), [paths.get('dep')!]);
    });
  });

  test('the start-up check names every upstream and log', async () => {
    const cfg = parseCacheConfig(
      `[[upstream]]\nurl = "${goodUrl}"\n[[upstream]]\nurl = "file:///nonexistent/cache"\n`,
      T,
      { decideConfig: decideFile },
    );
    const decider = new Decider(loadDecideConfig(decideFile));
    const proxy = new CacheProxy({ config: cfg, decider, key });
    try {
      const lines = await proxy.check();
      assert.match(lines[0], /^upstream http:.*: ok \(StoreDir \/nix\/store\)$/);
      assert.match(lines[1], /^upstream file:\/\/\/nonexistent\/cache\/: PROBLEM: no nix-cache-info/);
      assert.deepEqual(
        lines.slice(2).map((l) => l.replace(/, \d+ ms\)$/, ')')),
        ['log0', 'log1', 'log2'].map((n) => `log ${n}: ok (verified answer at size 4)`),
      );
    } finally {
      await proxy.close();
      await decider.close();
    }
  });
});
