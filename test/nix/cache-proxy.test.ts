// The voting cache proxy against synthetic upstream caches (real HTTP servers on loopback) and a
// decider the test controls; test/nix/e2e.test.ts runs it with real logs and the real Nix client.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Decision } from '../../src/decide/decide.js';
import { encodeNix32 } from '../../src/nix/base32.js';
import { type CacheConfig, parseCacheConfig } from '../../src/nix/cache-config.js';
import { CacheProxy, type NarHashDecider } from '../../src/nix/cache-proxy.js';
import {
  formatNixPublicKey,
  generateNixSecretKey,
  parseNixPublicKey,
  verifyNarInfo,
} from '../../src/nix/keys.js';
import { narBytes } from '../../src/nix/nar.js';
import { formatNarInfo, parseNarInfo } from '../../src/nix/narinfo.js';

const HASH_A = '0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
const HASH_B = '1c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
const HASH_C = '2c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';

interface Upstream {
  server: Server;
  url: string;
  files: Map<string, { body: Buffer; status?: number; hang?: boolean }>;
  requests: string[];
}

async function upstream(): Promise<Upstream> {
  const files = new Map<string, { body: Buffer; status?: number; hang?: boolean }>();
  const requests: string[] = [];
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').slice(1);
    requests.push(path);
    const f = files.get(path);
    if (f?.hang) return; // never answers
    if (!f) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(f.status ?? 200, { 'content-length': f.body.length }).end(f.body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    server,
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`,
    files,
    requests,
  };
}

function compress(kind: string, data: Buffer): Buffer {
  if (kind === 'none') return data;
  const tool = { xz: 'xz', bzip2: 'bzip2', zstd: 'zstd' }[kind]!;
  return execFileSync(tool, ['-c', '-q'], { input: data, maxBuffer: 1 << 28 });
}

const dir = mkdtempSync(join(tmpdir(), 'trustix-cacheproxy-'));

/** A real NAR of a small tree, and a narinfo for it under `hashPart`, put on an upstream. */
async function publish(up: Upstream, hashPart: string, nar: Buffer, kind = 'xz', tamper = false) {
  const narHash = createHash('sha256').update(nar).digest();
  let file = compress(kind, nar);
  if (tamper) {
    // same length, different bytes: only the hash can tell
    const bad = Buffer.from(nar);
    bad[bad.length - 20] ^= 1;
    file = compress(kind, bad);
  }
  const fileName = `nar/${encodeNix32(createHash('sha256').update(file).digest())}.nar${kind === 'none' ? '' : `.${kind === 'bzip2' ? 'bz2' : kind === 'zstd' ? 'zst' : kind}`}`;
  up.files.set(fileName, { body: file });
  up.files.set(`${hashPart}.narinfo`, {
    body: Buffer.from(
      formatNarInfo({
        storePath: `/nix/store/${hashPart}-demo`,
        url: fileName,
        compression: kind,
        narHash,
        narSize: nar.length,
        references: [`${hashPart}-demo`],
        deriver: `${hashPart}-demo.drv`,
        sigs: ['upstream-1:AAAA'],
        extra: [],
      }),
    ),
  });
  return narHash;
}

async function makeNar(seed: string, bytes = 300_000): Promise<Buffer> {
  const d = join(dir, `tree-${seed}`);
  mkdirSync(d, { recursive: true });
  writeFileSync(
    join(d, 'file'),
    createHash('sha256')
      .update(seed)
      .digest()
      .toString('hex')
      .repeat(bytes / 64),
  );
  writeFileSync(join(d, 'small'), seed);
  return narBytes(d);
}

/** A decider the test steers: key -> decided NAR hash (or undefined for no decision). */
class FakeDecider implements NarHashDecider {
  calls = 0;
  readonly values = new Map<string, Buffer>();
  async decide(key: string, protocol: string): Promise<{ decision: Decision }> {
    this.calls++;
    const v = this.values.get(key);
    const decision = {
      protocol,
      key,
      decided: v !== undefined,
      ...(v ? { value: v.toString('hex') } : {}),
      procedure: 'fake',
      reason: v ? '3 of 3 logs agree' : 'logs disagree',
      agreed: [],
      disagreed: [],
      absent: [],
      failed: [],
      logs: [],
    } as Decision;
    return { decision };
  }
}

function config(ups: Upstream[], extra = ''): CacheConfig {
  const text = `listen = "127.0.0.1:0"\nnegative_ttl = 0\n${extra}\n${ups
    .map((u) => `[[upstream]]\nurl = "${u.url}"\ntimeout = 1\n`)
    .join('')}`;
  return parseCacheConfig(text, dir, { decideConfig: join(dir, 'decide.toml') });
}

describe('cache proxy', () => {
  const key = generateNixSecretKey('proxy-test-1');
  const decider = new FakeDecider();
  let up1: Upstream;
  let up2: Upstream;
  let proxy: CacheProxy;
  let base: URL;
  const nars = new Map<string, Buffer>();
  const get = (path: string, init?: RequestInit) => fetch(new URL(path, base), init);

  before(async () => {
    up1 = await upstream();
    up2 = await upstream();
    proxy = new CacheProxy({ config: config([up1, up2]), decider, key });
    base = await proxy.listen();
  });
  after(async () => {
    await proxy.close();
    up1.server.close();
    up2.server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('nix-cache-info names the store, mass query and priority', async () => {
    const r = await get('nix-cache-info');
    assert.equal(r.status, 200);
    assert.equal(await r.text(), 'StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n');
  });

  for (const kind of ['none', 'xz', 'bzip2', 'zstd']) {
    test(`decided (${kind} upstream): narinfo re-signed by the proxy, NAR served decompressed and intact`, async () => {
      const hashPart = `${kind.length}${HASH_A.slice(1, 31)}${kind[0] === 'n' ? 'a' : kind[0]}`;
      const nar = await makeNar(kind);
      nars.set(hashPart, nar);
      const narHash = await publish(up2, hashPart, nar, kind);
      decider.values.set(hashPart, narHash);
      const r = await get(`${hashPart}.narinfo`);
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('content-type'), 'text/x-nix-narinfo');
      const info = parseNarInfo(await r.text());
      assert.deepEqual(info.narHash, narHash);
      assert.equal(info.narSize, nar.length);
      assert.equal(info.compression, 'none');
      assert.equal(info.url, `nar/${hashPart}-${encodeNix32(narHash)}.nar`);
      assert.deepEqual(info.references, [`${hashPart}-demo`]);
      assert.equal(info.sigs.length, 1, 'only the proxy signs what it serves');
      assert.deepEqual(verifyNarInfo(info, [key.publicKey]), ['proxy-test-1']);
      const n = await get(info.url);
      assert.equal(n.status, 200);
      assert.equal(n.headers.get('content-length'), String(nar.length));
      assert.deepEqual(Buffer.from(await n.arrayBuffer()), nar);
      const h = await get(info.url, { method: 'HEAD' });
      assert.equal(h.status, 200);
      assert.equal(h.headers.get('content-length'), String(nar.length));
    });
  }

  test('no decision: 404 with the reason, and no upstream is asked', async () => {
    const before = up1.requests.length + up2.requests.length;
    await publish(up1, HASH_B, await makeNar('b'));
    const r = await get(`${HASH_B}.narinfo`);
    assert.equal(r.status, 404);
    assert.match(await r.text(), /no decision: logs disagree/);
    assert.equal(up1.requests.length + up2.requests.length, before);
    const nar = await get(`nar/${HASH_B}-${encodeNix32(Buffer.alloc(32))}.nar`);
    assert.equal(nar.status, 404);
  });

  test('decided, but upstreams only have another NAR: 404; a NAR URL for another hash: 404', async () => {
    await publish(up1, HASH_C, await makeNar('c'));
    decider.values.set(HASH_C, createHash('sha256').update('the decided one').digest());
    const r = await get(`${HASH_C}.narinfo`);
    assert.equal(r.status, 404);
    assert.match(await r.text(), /no upstream has a narinfo with the decided NAR hash/);
    const [hashPart, nar] = [...nars][0];
    const wrong = await get(
      `nar/${hashPart}-${encodeNix32(createHash('sha256').update(nar).digest().reverse())}.nar`,
    );
    assert.equal(wrong.status, 404);
  });

  test('a tampered NAR is cut short: the client never receives all of it', async () => {
    const hashPart = 'ww8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    const nar = await makeNar('tampered', 2_000_000);
    const narHash = await publish(up1, hashPart, nar, 'xz', true);
    decider.values.set(hashPart, narHash);
    const r = await get(`${hashPart}.narinfo`);
    assert.equal(r.status, 200);
    const info = parseNarInfo(await r.text());
    const n = await get(info.url);
    assert.equal(n.status, 200, 'headers go out before the last byte is checked');
    await assert.rejects(n.arrayBuffer(), 'the body must fail, not end cleanly');
    const metrics = await (await get('metrics')).text();
    assert.match(metrics, /trustix_cache_nar_requests_total\{outcome="aborted"\} 1/);
  });

  test('a NAR whose size differs from NarSize is cut short too', async () => {
    const hashPart = 'ss8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    const nar = await makeNar('short');
    const narHash = await publish(up2, hashPart, nar, 'none');
    const infoFile = up2.files.get(`${hashPart}.narinfo`)!;
    const info = parseNarInfo(infoFile.body);
    up2.files.set(info.url, { body: nar.subarray(0, nar.length - 8) });
    decider.values.set(hashPart, narHash);
    const served = parseNarInfo(await (await get(`${hashPart}.narinfo`)).text());
    const n = await get(served.url);
    await assert.rejects(n.arrayBuffer());
  });

  test('a hanging upstream does not delay an answer another upstream has', async () => {
    const hashPart = 'hh8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    const nar = await makeNar('hang');
    const narHash = await publish(up2, hashPart, nar, 'zstd');
    up1.files.set(`${hashPart}.narinfo`, { body: Buffer.alloc(0), hang: true });
    decider.values.set(hashPart, narHash);
    const t0 = performance.now();
    const r = await get(`${hashPart}.narinfo`);
    assert.equal(r.status, 200);
    assert.ok(performance.now() - t0 < 900, 'answered before the hanging upstream timed out (1 s)');
  });

  test('upstream errors and a hanging only-upstream end in 404, never 5xx', async () => {
    const hashPart = 'dd8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    up1.files.set(`${hashPart}.narinfo`, { body: Buffer.from('oops'), status: 500 });
    up2.files.set(`${hashPart}.narinfo`, { body: Buffer.from('StorePath: garbage\n') });
    decider.values.set(hashPart, createHash('sha256').update('x').digest());
    const r = await get(`${hashPart}.narinfo`);
    assert.equal(r.status, 404);
    const hangPart = 'gg8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    up1.files.set(`${hangPart}.narinfo`, { body: Buffer.alloc(0), hang: true });
    up2.files.set(`${hangPart}.narinfo`, { body: Buffer.alloc(0), hang: true });
    decider.values.set(hangPart, createHash('sha256').update('y').digest());
    const t0 = performance.now();
    assert.equal((await get(`${hangPart}.narinfo`)).status, 404);
    assert.ok(performance.now() - t0 >= 900, 'waited for the upstream timeout');
  });

  test('hostile requests: bad names, traversal, other methods', async () => {
    for (const p of [
      'x.narinfo',
      `${HASH_A}E.narinfo`,
      '../etc/passwd',
      'nar/../../x',
      `nar/${HASH_A}.nar`,
      '%2e%2e/x',
    ]) {
      const r = await get(p);
      assert.equal(r.status, 404, p);
    }
    assert.equal((await get('nix-cache-info', { method: 'POST', body: 'x' })).status, 405);
    assert.equal((await get('nix-cache-info', { method: 'PUT', body: 'x' })).status, 405);
  });

  test('decisions are cached briefly: repeated narinfo requests ask the logs once', async () => {
    const hashPart = 'cc8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    const narHash = await publish(up1, hashPart, await makeNar('cached'), 'none');
    decider.values.set(hashPart, narHash);
    const calls = decider.calls;
    const answers = await Promise.all(
      [1, 2, 3, 4].map(() => get(`${hashPart}.narinfo`).then((r) => r.text())),
    );
    assert.equal(new Set(answers).size, 1);
    assert.equal((await get(`${hashPart}.narinfo`)).status, 200);
    assert.equal(decider.calls - calls, 1);
  });
});

describe('cache proxy config', () => {
  const parse = (text: string) => parseCacheConfig(text, '/etc/trustix', { decideConfig: '/d.toml' });
  test('defaults and relative paths', () => {
    const c = parse('[[upstream]]\nurl = "http://cache.example/sub"\n');
    assert.deepEqual(c.listen, { host: '127.0.0.1', port: 37515 });
    assert.equal(c.secretKeyFile, '/etc/trustix/cache-key.sec');
    assert.equal(c.decideConfig, '/d.toml');
    assert.equal(c.upstreams[0].url, 'http://cache.example/sub/');
    assert.equal(c.upstreams[0].timeoutMs, 10_000);
    assert.equal(c.decisionTtlMs, 30_000);
  });
  test('errors name the field', () => {
    assert.throws(() => parse(''), /at least one \[\[upstream\]\]/);
    assert.throws(() => parse('colour = 1\n[[upstream]]\nurl = "http://x/"'), /unknown field "colour"/);
    assert.throws(() => parse('[[upstream]]\nurl = "ftp://x/"'), /upstream\[0\]\.url: only http/);
    assert.throws(() => parse('[[upstream]]\nurl = "http://x/"\ntimeout = -1'), /upstream\[0\]\.timeout/);
    assert.throws(
      () => parse('listen = "nope"\n[[upstream]]\nurl = "http://x/"'),
      /listen: must be HOST:PORT/,
    );
    assert.throws(() => parse('priority = 1.5\n[[upstream]]\nurl = "http://x/"'), /priority/);
  });
  test('the public key text round-trips', () => {
    const k = generateNixSecretKey('x-1');
    assert.deepEqual(parseNixPublicKey(formatNixPublicKey(k.publicKey)).key, k.publicKey.key);
  });
});
