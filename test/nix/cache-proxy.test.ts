// The voting cache proxy against synthetic upstream caches (real HTTP servers on loopback) and a
// decider the test controls; test/nix/e2e.test.ts runs it with real logs and the real Nix client.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { MemoryTrustStore, type TrustStore } from '../../src/client/trust-store.js';
import { toBase64 } from '../../src/core/bytes.js';
import { encodeEntry } from '../../src/core/entry.js';
import type { Decision, LogResult } from '../../src/decide/decide.js';
import { encodeNix32 } from '../../src/nix/base32.js';
import { type CacheConfig, parseCacheConfig } from '../../src/nix/cache-config.js';
import { CacheProxy, type NarHashDecider } from '../../src/nix/cache-proxy.js';
import { CachedTrustStore } from '../../src/nix/cache-trust.js';
import { createUpstream } from '../../src/nix/cache-upstream.js';
import { nixEntry } from '../../src/nix/entry.js';
import {
  formatNixPublicKey,
  generateNixSecretKey,
  parseNixPublicKey,
  verifyNarInfo,
} from '../../src/nix/keys.js';
import { narBytes } from '../../src/nix/nar.js';
import { formatNarInfo, type NarInfo, parseNarInfo } from '../../src/nix/narinfo.js';

const HASH_A = '0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
const HASH_B = '1c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
const HASH_C = '2c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';

interface Upstream {
  server: Server;
  url: string;
  files: Map<string, { body: Buffer; status?: number; hang?: boolean; delayMs?: number }>;
  requests: string[];
}

async function upstream(): Promise<Upstream> {
  const files = new Map<string, { body: Buffer; status?: number; hang?: boolean; delayMs?: number }>();
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
    const answer = () => res.writeHead(f.status ?? 200, { 'content-length': f.body.length }).end(f.body);
    if (f.delayMs) setTimeout(answer, f.delayMs);
    else answer();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    server,
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`,
    files,
    requests,
  };
}

function decompressFile(kind: string, data: Buffer): Buffer {
  if (kind === 'none') return data;
  return execFileSync(kind, ['-d', '-c', '-q'], { input: data, maxBuffer: 1 << 28 });
}

function compress(kind: string, data: Buffer): Buffer {
  if (kind === 'none') return data;
  const tool = { xz: 'xz', bzip2: 'bzip2', zstd: 'zstd' }[kind]!;
  return execFileSync(tool, ['-c', '-q'], { input: data, maxBuffer: 1 << 28 });
}

const dir = mkdtempSync(join(tmpdir(), 'trustix-cacheproxy-'));

/** A real NAR of a small tree, and a narinfo for it under `hashPart`, put on an upstream. */
async function publish(
  up: Upstream,
  hashPart: string,
  nar: Buffer,
  kind = 'xz',
  tamper = false,
  edit: (info: NarInfo) => void = () => {},
) {
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
  const info: NarInfo = {
    storePath: `/nix/store/${hashPart}-demo`,
    url: fileName,
    compression: kind,
    narHash,
    narSize: nar.length,
    references: [`${hashPart}-demo`],
    deriver: `${hashPart}-demo.drv`,
    sigs: ['upstream-1:AAAA'],
    extra: [],
  };
  edit(info);
  up.files.set(`${hashPart}.narinfo`, { body: Buffer.from(formatNarInfo(info)) });
  return { narHash, narSize: nar.length };
}

/** A NAR of a small tree holding `bytes` of repeated text, or of random bytes (incompressible). */
async function makeNar(seed: string, bytes = 300_000, random = false): Promise<Buffer> {
  const d = join(dir, `tree-${seed}`);
  mkdirSync(d, { recursive: true });
  writeFileSync(
    join(d, 'file'),
    random
      ? randomBytes(bytes)
      : createHash('sha256')
          .update(seed)
          .digest()
          .toString('hex')
          .repeat(bytes / 64),
  );
  writeFileSync(join(d, 'small'), seed);
  return narBytes(d);
}

/** What the fake logs hold for a hash part: every log the same entry unless `perLog` says otherwise. */
interface Vote {
  narHash: Buffer;
  narSize: number;
  references?: string[];
  deriver?: string;
  /** Per log (a, b, c): overrides of references and deriver in that log's entry. */
  perLog?: Array<{ references?: string[]; deriver?: string }>;
}

/** A decider the test steers: key -> the logs' entries (all present, all agreeing on the NAR hash), or no decision. */
class FakeDecider implements NarHashDecider {
  calls = 0;
  readonly values = new Map<string, Vote>();
  async decide(key: string, protocol: string): Promise<{ decision: Decision; results: LogResult[] }> {
    this.calls++;
    const v = this.values.get(key);
    const value = v?.narHash.toString('hex');
    const results: LogResult[] = v
      ? ['a', 'b', 'c'].map((name, i) => {
          const own = v.perLog?.[i] ?? {};
          const entry = nixEntry({
            storePath: `/nix/store/${key}-demo`,
            narHash: v.narHash,
            narSize: v.narSize,
            references: own.references ?? v.references ?? [`${key}-demo`],
            deriver: 'deriver' in own ? own.deriver : (v.deriver ?? `${key}-demo.drv`),
          });
          return {
            name,
            origin: name,
            vkey: name,
            weight: '1',
            status: 'present',
            value,
            ms: 1,
            answer: {
              size: 1,
              checkpoint: '',
              entry: { index: 0, data: toBase64(encodeEntry(entry)), proof: [] },
            },
          } as unknown as LogResult;
        })
      : [];
    const decision = {
      protocol,
      key,
      decided: v !== undefined,
      ...(v ? { value } : {}),
      procedure: 'fake',
      reason: v ? '3 of 3 logs agree' : 'logs disagree',
      agreed: [],
      disagreed: [],
      absent: [],
      failed: [],
      logs: [],
    } as Decision;
    return { decision, results };
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
  /** A counter's value on /metrics (0 while it has none). */
  const counter = async (series: string) => {
    const text = await (await get('metrics')).text();
    const line = text.split('\n').find((l) => l.startsWith(`${series} `));
    return line === undefined ? 0 : Number(line.split(' ')[1]);
  };

  before(async () => {
    up1 = await upstream();
    up2 = await upstream();
    // NARs up to 1 MB are checked whole before sending; larger ones stream
    proxy = new CacheProxy({ config: config([up1, up2], 'verify_first_max = 1000000'), decider, key });
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
      const vote = await publish(up2, hashPart, nar, kind);
      const { narHash } = vote;
      decider.values.set(hashPart, vote);
      const r = await get(`${hashPart}.narinfo`);
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('content-type'), 'text/x-nix-narinfo');
      const info = parseNarInfo(await r.text());
      assert.deepEqual(info.narHash, narHash);
      assert.equal(info.narSize, nar.length);
      assert.equal(info.compression, 'none');
      assert.equal(info.url, `nar/${hashPart}-${encodeNix32(narHash)}.nar`);
      assert.deepEqual(info.references, [`${hashPart}-demo`]);
      assert.equal(info.deriver, `${hashPart}-demo.drv`);
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

  test('no decision: 404 with the reason; the upstreams were asked for the narinfo only, while deciding', async () => {
    const [n1, n2] = [up1.requests.length, up2.requests.length];
    await publish(up1, HASH_B, await makeNar('b'));
    const r = await get(`${HASH_B}.narinfo`);
    assert.equal(r.status, 404);
    assert.match(await r.text(), /no decision: logs disagree/);
    assert.deepEqual(up1.requests.slice(n1), [`${HASH_B}.narinfo`]);
    assert.deepEqual(up2.requests.slice(n2), [`${HASH_B}.narinfo`]);
    const nar = await get(`nar/${HASH_B}-${encodeNix32(Buffer.alloc(32))}.nar`);
    assert.equal(nar.status, 404);
  });

  test('the upstreams are asked while the logs are: a decision that waits for them still gets them', async () => {
    const hashPart = 'aw8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    const vote = await publish(up2, hashPart, await makeNar('early'), 'none');
    decider.values.set(hashPart, vote);
    const decide = decider.decide.bind(decider);
    // this decision comes only once the upstream was asked (or after 3 s: too late, as no decision)
    const slow = async (key: string, protocol: string) => {
      for (let i = 0; i < 300 && !up2.requests.includes(`${key}.narinfo`); i++) {
        await new Promise((r) => setTimeout(r, 10));
      }
      if (!up2.requests.includes(`${key}.narinfo`)) return decide('', protocol);
      return decide(key, protocol);
    };
    decider.decide = slow;
    try {
      const r = await get(`${hashPart}.narinfo`);
      assert.equal(r.status, 200, await r.text());
    } finally {
      decider.decide = decide;
    }
  });

  test('decided, but upstreams only have another NAR: 404; a NAR URL for another hash: 404', async () => {
    await publish(up1, HASH_C, await makeNar('c'));
    decider.values.set(HASH_C, {
      narHash: createHash('sha256').update('the decided one').digest(),
      narSize: 1,
    });
    const r = await get(`${HASH_C}.narinfo`);
    assert.equal(r.status, 404);
    assert.match(await r.text(), /no upstream has it: .*its NarHash is not the voted one/);
    const [hashPart, nar] = [...nars][0];
    const wrong = await get(
      `nar/${hashPart}-${encodeNix32(createHash('sha256').update(nar).digest().reverse())}.nar`,
    );
    assert.equal(wrong.status, 404);
  });

  /** The proxy's narinfo for a decided hash part, which names `compression`. */
  const decidedNarinfo = async (hashPart: string, compression: string) => {
    const r = await get(`${hashPart}.narinfo`);
    const text = await r.text();
    assert.equal(r.status, 200, text);
    const info = parseNarInfo(text);
    assert.equal(info.compression, compression);
    return info;
  };
  for (const kind of ['none', 'xz', 'zstd', 'bzip2']) {
    test(`a large NAR (${kind}) goes out as the upstream compressed it, and intact`, async () => {
      const hashPart = `l${kind[0]}8i2ww2dwk5hn8dywdzx6l0lrz0sb4k`;
      const nar = await makeNar(`large-${kind}`, 1_500_000, true);
      const vote = await publish(up2, hashPart, nar, kind);
      decider.values.set(hashPart, vote);
      const info = await decidedNarinfo(hashPart, kind);
      const ext = { none: '', xz: '.xz', zstd: '.zst', bzip2: '.bz2' }[kind];
      assert.equal(info.url, `nar/${hashPart}-${encodeNix32(vote.narHash)}.nar${ext}`);
      // FileHash and FileSize are not in the vote: given only where they equal NarHash and NarSize
      if (kind === 'none') assert.deepEqual([info.fileHash, info.fileSize], [vote.narHash, nar.length]);
      else assert.deepEqual([info.fileHash, info.fileSize], [undefined, undefined]);
      assert.deepEqual(verifyNarInfo(info, [key.publicKey]), ['proxy-test-1']);
      const upstreamInfo = parseNarInfo(up2.files.get(`${hashPart}.narinfo`)!.body);
      const file = up2.files.get(upstreamInfo.url)!.body;
      const n = await get(info.url);
      assert.equal(n.status, 200);
      assert.equal(n.headers.get('content-length'), String(file.length));
      const body = Buffer.from(await n.arrayBuffer());
      assert.ok(body.equals(file), 'the upstream file, byte for byte');
      assert.ok(decompressFile(kind, body).equals(nar));
    });
    test(`a tampered large NAR (${kind}) is cut short and its cache marked bad`, async () => {
      const hashPart = `w${kind[0]}8i2ww2dwk5hn8dywdzx6l0lrz0sb4k`;
      const nar = await makeNar(`tampered-${kind}`, 2_000_000, true);
      const narHash = await publish(up1, hashPart, nar, kind, true);
      decider.values.set(hashPart, narHash);
      const info = await decidedNarinfo(hashPart, kind);
      const aborted = await counter('trustix_cache_nar_requests_total{outcome="aborted"}');
      const bad = await counter(`trustix_cache_bad_nars_total{upstream="${up1.url}"}`);
      const n = await get(info.url);
      assert.equal(n.status, 200, 'headers go out before the last byte is checked');
      await assert.rejects(n.arrayBuffer(), 'the body must fail, not end cleanly');
      assert.equal(await counter('trustix_cache_nar_requests_total{outcome="aborted"}'), aborted + 1);
      assert.equal(await counter(`trustix_cache_bad_nars_total{upstream="${up1.url}"}`), bad + 1);
    });
  }

  test('serve_compressed = false: a large NAR goes out decompressed', async () => {
    const plain = new CacheProxy({
      config: config([up2], 'verify_first_max = 1000000\nserve_compressed = false'),
      decider,
      key,
    });
    const url = await plain.listen();
    try {
      const hashPart = 'lz8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
      const nar = await makeNar('large-plain', 1_500_000, true);
      decider.values.set(hashPart, await publish(up2, hashPart, nar, 'zstd'));
      const info = parseNarInfo(await (await fetch(new URL(`${hashPart}.narinfo`, url))).text());
      assert.equal(info.compression, 'none');
      assert.ok(info.url.endsWith('.nar'));
      const n = await fetch(new URL(info.url, url));
      assert.equal(n.headers.get('content-length'), String(nar.length));
      assert.ok(Buffer.from(await n.arrayBuffer()).equals(nar));
    } finally {
      await plain.close();
    }
  });

  test('a small NAR whose size differs from NarSize is refused with the reason', async () => {
    const hashPart = 'ss8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    const nar = await makeNar('short');
    const narHash = await publish(up2, hashPart, nar, 'none');
    const infoFile = up2.files.get(`${hashPart}.narinfo`)!;
    const info = parseNarInfo(infoFile.body);
    up2.files.set(info.url, { body: nar.subarray(0, nar.length - 8) });
    decider.values.set(hashPart, narHash);
    const served = parseNarInfo(await (await get(`${hashPart}.narinfo`)).text());
    const n = await get(served.url);
    assert.equal(n.status, 404, 'a small NAR is checked before its first byte is sent');
    assert.match(
      await n.text(),
      /bad bytes from http:\/\/127\.0\.0\.1:\d+\/: NAR is \d+ bytes, NarSize says \d+/,
    );
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
    decider.values.set(hashPart, { narHash: createHash('sha256').update('x').digest(), narSize: 1 });
    const r = await get(`${hashPart}.narinfo`);
    assert.equal(r.status, 404);
    const hangPart = 'gg8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    up1.files.set(`${hangPart}.narinfo`, { body: Buffer.alloc(0), hang: true });
    up2.files.set(`${hangPart}.narinfo`, { body: Buffer.alloc(0), hang: true });
    decider.values.set(hangPart, { narHash: createHash('sha256').update('y').digest(), narSize: 1 });
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

describe('cache proxy: the narinfo is the vote, a bad cache is passed over', () => {
  const key = generateNixSecretKey('proxy-test-2');
  const decider = new FakeDecider();
  const logged: string[] = [];
  let bad: Upstream;
  let good: Upstream;
  let fileDir: string;
  let proxy: CacheProxy;
  let base: URL;
  const get = (path: string) => fetch(new URL(path, base));
  const narinfo = async (hashPart: string) => {
    const r = await get(`${hashPart}.narinfo`);
    return { status: r.status, text: await r.text() };
  };
  const OTHER = `${HASH_C}-other`;

  before(async () => {
    bad = await upstream();
    good = await upstream();
    fileDir = mkdtempSync(join(tmpdir(), 'trustix-filecache-'));
    writeFileSync(join(fileDir, 'nix-cache-info'), 'StoreDir: /nix/store\n');
    const cfg = config([bad, good], 'verify_first_max = 1000000');
    cfg.upstreams.push({ ...cfg.upstreams[0], url: pathToFileURL(`${fileDir}/`).href });
    proxy = new CacheProxy({ config: cfg, decider, key, log: (l) => logged.push(l) });
    base = await proxy.listen();
  });
  after(async () => {
    await proxy.close();
    bad.server.close();
    good.server.close();
    rmSync(fileDir, { recursive: true, force: true });
  });

  const edits: Array<[string, (i: NarInfo) => void]> = [
    ['stripped', (i) => (i.references = [])],
    ['added', (i) => i.references.push(OTHER)],
    ['replaced', (i) => (i.references = [OTHER])],
  ];
  for (const [what, edit] of edits) {
    test(`References ${what} by one cache: that cache is skipped, the served narinfo has the voted References`, async () => {
      const hashPart = `r${what[0]}8i2ww2dwk5hn8dywdzx6l0lrz0sb4k`;
      const nar = await makeNar(`refs-${what}`);
      const vote = await publish(bad, hashPart, nar, 'none', false, edit);
      await publish(good, hashPart, nar, 'none');
      decider.values.set(hashPart, { ...vote, references: [`${hashPart}-demo`, `${HASH_B}-dep`] });
      // the good cache's narinfo lacks the dep too: no upstream agrees with the vote yet
      let r = await narinfo(hashPart);
      assert.equal(r.status, 404);
      assert.match(r.text, /no upstream has it: .*its References are not the voted ones/);
      await publish(good, hashPart, nar, 'none', false, (i) => i.references.push(`${HASH_B}-dep`));
      r = await narinfo(hashPart);
      assert.equal(r.status, 200, r.text);
      const info = parseNarInfo(r.text);
      assert.deepEqual(info.references, [`${hashPart}-demo`, `${HASH_B}-dep`].sort());
      assert.deepEqual(verifyNarInfo(info, [key.publicKey]), ['proxy-test-2']);
      assert.match(
        logged.join('\n'),
        new RegExp(`skipped ${bad.url}: its References are not the voted ones`),
      );
    });
  }

  test('nothing the vote does not cover is served: NarSize and StorePath must match, CA and System are dropped', async () => {
    const hashPart = 'ns8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    const nar = await makeNar('nothing-else');
    const vote = await publish(bad, hashPart, nar, 'none', false, (i) => {
      i.ca = 'fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s';
      i.system = 'x86_64-linux';
    });
    decider.values.set(hashPart, { ...vote, narSize: vote.narSize + 1 });
    assert.match((await narinfo(hashPart)).text, /its NarSize \d+ is not the voted \d+/);
    decider.values.set(hashPart, vote);
    const info = parseNarInfo((await narinfo(hashPart)).text);
    assert.equal(info.ca, undefined);
    assert.equal(info.system, undefined);
    assert.equal(info.storePath, `/nix/store/${hashPart}-demo`);
  });

  test('winning logs that disagree on References: no decision, with each log named', async () => {
    const hashPart = 'nd8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    const vote = await publish(good, hashPart, await makeNar('meta-disagree'), 'none');
    decider.values.set(hashPart, { ...vote, perLog: [{}, {}, { references: [] }] });
    const r = await narinfo(hashPart);
    assert.equal(r.status, 404);
    assert.match(r.text, /no decision: the logs that agree on the NAR hash disagree .*c: demo \d+ \[\]/);
  });

  test('Deriver is served only when every winning log names the same one', async () => {
    for (const [hashPart, perLog, deriver] of [
      ['dv8i2ww2dwk5hn8dywdzx6l0lrz0sb4k', [{}, {}, { deriver: `${HASH_B}-other.drv` }], undefined],
      ['dw8i2ww2dwk5hn8dywdzx6l0lrz0sb4k', [], 'dw8i2ww2dwk5hn8dywdzx6l0lrz0sb4k-demo.drv'],
    ] as const) {
      const vote = await publish(good, hashPart, await makeNar(`deriver-${hashPart}`), 'none');
      decider.values.set(hashPart, { ...vote, perLog: [...perLog] });
      assert.equal(parseNarInfo((await narinfo(hashPart)).text).deriver, deriver);
    }
  });

  test('a cache serving a tampered NAR is passed over for a good one, and then tried last', async () => {
    const hashPart = 'xg8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    const nar = await makeNar('tamper-good');
    const vote = await publish(bad, hashPart, nar, 'zstd', true);
    await publish(good, hashPart, nar, 'xz');
    // the bad cache answers the narinfo first
    const slow = (hp: string) => {
      good.files.get(`${hp}.narinfo`)!.delayMs = 150;
    };
    slow(hashPart);
    decider.values.set(hashPart, vote);
    const info = parseNarInfo((await narinfo(hashPart)).text);
    for (let i = 0; i < 3; i++) {
      const n = await get(info.url);
      assert.equal(n.status, 200);
      assert.deepEqual(Buffer.from(await n.arrayBuffer()), nar);
    }
    const narFetches = () => bad.requests.filter((p) => p.startsWith('nar/')).length;
    assert.equal(narFetches(), 1, 'the bad cache was asked once, then tried last');
    assert.match(logged.join('\n'), /bad bytes from http:.*NAR hash mismatch/);
    assert.match(await (await get('metrics')).text(), /trustix_cache_bad_nars_total\{upstream="http/);
    // another path: the bad cache answers first again but is not asked for the NAR
    const hashPart2 = 'xh8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    const nar2 = await makeNar('tamper-good-2');
    decider.values.set(hashPart2, await publish(bad, hashPart2, nar2, 'none', true));
    await publish(good, hashPart2, nar2, 'none');
    slow(hashPart2);
    const info2 = parseNarInfo((await narinfo(hashPart2)).text);
    const n2 = await get(info2.url);
    assert.deepEqual(Buffer.from(await n2.arrayBuffer()), nar2);
    assert.equal(narFetches(), 1);
  });

  test('only a tampered cache has the NAR: 404 saying which cache served bad bytes', async () => {
    const hashPart = 'x08i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    const nar = await makeNar('tamper-only');
    decider.values.set(hashPart, await publish(bad, hashPart, nar, 'xz', true));
    const info = parseNarInfo((await narinfo(hashPart)).text);
    const n = await get(info.url);
    assert.equal(n.status, 404);
    assert.match(await n.text(), new RegExp(`bad bytes from ${bad.url}: NAR hash mismatch`));
  });

  test('a file:// upstream serves narinfo and NAR', async () => {
    const hashPart = 'f18i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    const nar = await makeNar('file-upstream');
    const mem = { files: new Map<string, { body: Buffer }>() } as unknown as Upstream;
    const vote = await publish(mem, hashPart, nar, 'zstd');
    for (const [name, f] of mem.files) {
      mkdirSync(join(fileDir, 'nar'), { recursive: true });
      writeFileSync(join(fileDir, name), f.body);
    }
    decider.values.set(hashPart, vote);
    const info = parseNarInfo((await narinfo(hashPart)).text);
    const n = await get(info.url);
    assert.equal(n.status, 200);
    assert.deepEqual(Buffer.from(await n.arrayBuffer()), nar);
  });

  test("no decision: the 404 gives the reason and each log's answer", async () => {
    const hashPart = 'nn8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
    const d = new FakeDecider();
    d.decide = async (k, protocol) => ({
      decision: {
        protocol,
        key: k,
        decided: false,
        procedure: 'fake',
        reason: 'no value has 2 of 3',
        agreed: [],
        disagreed: [],
        absent: ['b'],
        failed: [{ name: 'c', check: 'http.timeout', reason: 'slow' }],
        logs: [
          {
            name: 'a',
            origin: 'a',
            vkey: 'a',
            weight: '1',
            status: 'present',
            value: 'ab'.repeat(32),
            ms: 1,
          },
          { name: 'b', origin: 'b', vkey: 'b', weight: '1', status: 'absent', ms: 1 },
          { name: 'c', origin: 'c', vkey: 'c', weight: '1', status: 'failed', check: 'http.timeout', ms: 1 },
        ],
      },
      results: [],
    });
    const lines: string[] = [];
    const p = new CacheProxy({ config: config([good]), decider: d, key, log: (l) => lines.push(l) });
    const u = await p.listen();
    try {
      const r = await fetch(new URL(`${hashPart}.narinfo`, u));
      assert.equal(r.status, 404);
      const body = await r.text();
      assert.equal(
        body,
        'no decision: no value has 2 of 3 (a=abababababab, b=absent, c=failed(http.timeout))\n',
      );
      assert.ok(lines.includes(`narinfo ${hashPart}: 404: ${body.trim()}`), lines.join('\n'));
    } finally {
      await p.close();
    }
  });

  test('the start-up check reports each upstream and each log', async () => {
    const d = new FakeDecider();
    d.decide = async () => ({
      decision: {} as Decision,
      results: [
        { name: 'a', status: 'absent', size: 7, ms: 3 },
        { name: 'c', status: 'failed', check: 'http.unreachable', reason: 'connection refused', ms: 1 },
      ] as LogResult[],
    });
    const cfg = config([good]);
    cfg.upstreams.push({ ...cfg.upstreams[0], url: pathToFileURL(`${fileDir}/`).href });
    cfg.upstreams.push({ ...cfg.upstreams[0], url: 'http://127.0.0.1:1/' });
    const p = new CacheProxy({ config: cfg, decider: d, key });
    good.files.set('nix-cache-info', { body: Buffer.from('StoreDir: /gnu/store\n') });
    try {
      const lines = await p.check();
      assert.equal(lines.length, 5, lines.join('\n'));
      assert.match(lines[0], /^upstream http:.*: PROBLEM: its StoreDir is \/gnu\/store/);
      assert.match(lines[1], /^upstream file:.*: ok \(StoreDir \/nix\/store\)$/);
      assert.match(lines[2], /^upstream http:\/\/127\.0\.0\.1:1\/: PROBLEM: .*ECONNREFUSED/);
      assert.equal(lines[3], 'log a: ok (verified answer at size 7, 3 ms)');
      assert.equal(lines[4], 'log c: PROBLEM: http.unreachable: connection refused');
    } finally {
      good.files.delete('nix-cache-info');
      await p.close();
    }
  });
});

describe('upstream connections', () => {
  test('a kept-alive connection the cache closes instead of answering: asked again on a new one', async () => {
    const served = new WeakMap<object, number>();
    let connections = 0;
    const server = createServer((req, res) => {
      const n = served.get(req.socket) ?? 0;
      served.set(req.socket, n + 1);
      // every second request on a connection: the cache closes it without an answer
      if (n > 0) {
        req.socket.destroy();
        return;
      }
      res.writeHead(200, { 'content-length': 21 }).end('StoreDir: /nix/store\n');
    });
    server.on('connection', () => connections++);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const u = createUpstream({
      url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`,
      timeoutMs: 5000,
      maxConnections: 1,
    });
    try {
      for (let i = 0; i < 3; i++) assert.equal(await u.cacheInfo(), 'StoreDir: /nix/store\n');
      assert.equal(connections, 3);
    } finally {
      u.close();
      server.close();
    }
  });
});

describe("the proxy's trust store", () => {
  test('reads the file store at most once per max age, writes through, and lets its compare-and-set decide', async () => {
    const inner = new MemoryTrustStore();
    let gets = 0;
    const counting: TrustStore = {
      get: (log) => {
        gets++;
        return inner.get(log);
      },
      compareAndSet: (log, expected, next) => inner.compareAndSet(log, expected, next),
    };
    const log = { origin: 'o', vkey: 'v' };
    const store = new CachedTrustStore(counting, 60_000);
    for (let i = 0; i < 50; i++) assert.equal(await store.get(log), undefined);
    assert.equal(gets, 1);
    assert.deepEqual(await store.compareAndSet(log, undefined, 'cp1'), { ok: true });
    assert.equal(await store.get(log), 'cp1');
    // another process moves the file store on: the stale cache cannot overwrite it
    assert.deepEqual(await inner.compareAndSet(log, 'cp1', 'cp2'), { ok: true });
    assert.equal(await store.get(log), 'cp1', 'cached');
    assert.deepEqual(await store.compareAndSet(log, 'cp1', 'cp1b'), { ok: false, current: 'cp2' });
    assert.equal(await store.get(log), 'cp2', 'the failed compare-and-set refreshed it');
    assert.equal(gets, 1);
    const fresh = new CachedTrustStore(counting, 0);
    await fresh.get(log);
    await fresh.get(log);
    assert.equal(gets, 3, 'max age 0: every get reads');
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
