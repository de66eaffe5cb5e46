// The server as a real process on loopback: first start, the read API (tiles, lookups, proofs),
// submissions with bearer tokens and signed requests, listeners, config errors, back-pressure.
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { openCheckpoint } from '../../src/core/checkpoint.js';
import { encodeEntry } from '../../src/core/entry.js';
import { verifyLookup } from '../../src/core/lookup.js';
import { leafHash, verifyConsistency, verifyInclusion } from '../../src/core/merkle.js';
import { verifierFromVkey } from '../../src/core/note.js';
import { parseReceipts } from '../../src/core/receipts.js';
import {
  cleanup,
  makeEntries,
  type RunningServer,
  runServeExpectingFailure,
  startServer,
  submit,
  tempDir,
  token,
  unixRequest,
  writeConfig,
} from '../fixtures/server-helpers.js';

const b64 = (s: string) => Buffer.from(s, 'base64');

/** Receipts of a submit answer, read as the client reads them. */
async function receiptsOf(r: Response | string, count: number) {
  return parseReceipts(typeof r === 'string' ? JSON.parse(r) : await r.json(), count);
}

describe('first start and the read/write API', () => {
  let dir: string;
  let srv: RunningServer;
  let auth: Record<string, string>;

  before(async () => {
    dir = tempDir();
    srv = await startServer([
      '--state',
      join(dir, 'node'),
      '--listen',
      '127.0.0.1:0',
      '--origin',
      'srv.test/log1',
    ]);
    auth = { authorization: `Bearer ${token(join(dir, 'node'))}` };
  });
  after(async () => {
    await srv?.stop();
    cleanup(dir);
  });

  test('first start creates the log, a 0600 signing key and a 0600 writer token, and says where', () => {
    const node = join(dir, 'node');
    assert.equal(srv.origin, 'srv.test/log1');
    assert.match(srv.vkey, /^srv\.test\/log1\+[0-9a-f]{8}\+/);
    assert.ok(srv.stdout.some((l) => l.includes(join(node, 'writers', 'default.token'))));
    assert.equal(statSync(join(node, 'writers', 'default.token')).mode & 0o777, 0o600);
    assert.equal(statSync(join(node, 'logs', 'default', 'signing.key')).mode & 0o777, 0o600);
    assert.ok(existsSync(join(node, 'trustix.toml')));
  });

  test('GET /logs, /healthz, /metrics', async () => {
    const r = await fetch(`${srv.url}/logs`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type')!, /^application\/json/);
    const j = (await r.json()) as { logs: Array<Record<string, unknown>> };
    assert.deepEqual(j.logs, [
      {
        id: 'default',
        origin: 'srv.test/log1',
        vkey: srv.vkey,
        prefix: '/logs/default/',
        protocols: ['tlog-tiles', 'trustix-lookup/v1', 'trustix-submit/v1'],
      },
    ]);
    const h = await fetch(`${srv.url}/healthz`);
    assert.equal(h.status, 200);
    assert.equal(await h.text(), 'ok');
    const m = await fetch(`${srv.url}/metrics`);
    assert.equal(m.status, 200);
    assert.match(m.headers.get('content-type')!, /^text\/plain/);
    const text = await m.text();
    assert.match(text, /trustix_tree_size\{log="default"\} \d+/);
  });

  test('submit, then lookups, proofs and checkpoints all verify', async () => {
    const verifier = verifierFromVkey(srv.vkey);
    const cp0 = await (await fetch(`${srv.url}/logs/default/checkpoint`)).text();
    const before = openCheckpoint(cp0, verifier).checkpoint;

    const entries = makeEntries(300, 'api');
    entries[0].metadata = Buffer.from('{"name":"hello-2.12"}').toString('base64');
    const r = await submit(srv.url, entries, auth);
    assert.equal(r.status, 200, await r.clone().text());
    const receipts = await receiptsOf(r, 300);
    const indexes = new Set(receipts.map((x) => x.index));
    assert.equal(indexes.size, 300);
    // every receipt: its checkpoint is signed and its proof includes this very entry
    for (const [i, rc] of receipts.entries()) {
      assert.equal(rc.duplicate, false);
      const { checkpoint } = openCheckpoint(rc.checkpoint, verifier);
      const e = entries[i];
      const data = encodeEntry({
        protocol: e.protocol,
        key: Buffer.from(e.key),
        value: Buffer.from(e.value, 'hex'),
        metadata: Buffer.from(e.metadata ?? '', 'base64'),
      });
      verifyInclusion(leafHash(data), rc.index, checkpoint.size, rc.proof, checkpoint.rootHash);
    }

    // resubmitting the same values is idempotent
    const again = await submit(srv.url, entries.slice(0, 5), auth);
    const rr = await receiptsOf(again, 5);
    assert.deepEqual(
      rr.map((x) => [x.index, x.duplicate]),
      receipts.slice(0, 5).map((x) => [x.index, true]),
    );

    // lookup: present (with metadata) and absent, both verified by the core verifier
    const l = await fetch(`${srv.url}/logs/default/lookup/nix/${encodeURIComponent(entries[0].key)}`);
    assert.equal(l.status, 200);
    assert.equal(l.headers.get('cache-control'), 'no-store');
    const v = verifyLookup(await l.json(), verifier, { protocol: 'nix', key: Buffer.from(entries[0].key) });
    assert.equal(v.status, 'present');
    if (v.status === 'present') {
      assert.equal(v.index, receipts[0].index);
      assert.equal(v.entry.value.toString('hex'), entries[0].value);
      assert.equal(v.entry.metadata.toString(), '{"name":"hello-2.12"}');
    }
    const odd = 'no such key / ünïcode?&=%';
    const a = await fetch(`${srv.url}/logs/default/lookup/nix/${encodeURIComponent(odd)}`);
    const va = verifyLookup(await a.json(), verifier, { protocol: 'nix', key: Buffer.from(odd) });
    assert.equal(va.status, 'absent');

    // inclusion proof by index (default size = current) and consistency proof
    const cpText = await (await fetch(`${srv.url}/logs/default/checkpoint`)).text();
    const cp = openCheckpoint(cpText, verifier).checkpoint;
    const idx = receipts[123].index;
    const ip = (await (
      await fetch(`${srv.url}/logs/default/proof/inclusion?index=${idx}&size=${cp.size}`)
    ).json()) as {
      index: number;
      size: number;
      proof: string[];
    };
    assert.equal(ip.size, cp.size);
    const entryBytes = await entryAt(srv.url, idx, cp.size);
    verifyInclusion(leafHash(entryBytes), idx, cp.size, ip.proof.map(b64), cp.rootHash);
    if (before.size > 0) {
      const cr = await fetch(`${srv.url}/logs/default/proof/consistency?old=${before.size}&new=${cp.size}`);
      assert.equal(cr.headers.get('cache-control'), 'public, max-age=31536000, immutable');
      const c = (await cr.json()) as { old: number; new: number; proof: string[] };
      verifyConsistency(before.size, cp.size, c.proof.map(b64), before.rootHash, cp.rootHash);
    }
    const c1 = (await (await fetch(`${srv.url}/logs/default/proof/consistency?old=1`)).json()) as {
      old: number;
      new: number;
      proof: string[];
    };
    assert.equal(c1.new, cp.size);
    const first = openCheckpoint(receipts[0].checkpoint, verifier).checkpoint;
    assert.ok(first.size >= 1);
  });

  test('tiles: content types, immutable caching, partial tiles sliced for older sizes, 404 beyond', async () => {
    const cp = await (await fetch(`${srv.url}/logs/default/checkpoint`)).text();
    const size = Number(cp.split('\n')[1]);
    assert.ok(size >= 300);
    const full = await fetch(`${srv.url}/logs/default/tile/0/000`);
    assert.equal(full.status, 200);
    assert.equal(full.headers.get('content-type'), 'application/octet-stream');
    assert.equal(full.headers.get('cache-control'), 'public, max-age=31536000, immutable');
    const fullBytes = Buffer.from(await full.arrayBuffer());
    assert.equal(fullBytes.length, 256 * 32);
    const p5 = Buffer.from(await (await fetch(`${srv.url}/logs/default/tile/0/000.p/5`)).arrayBuffer());
    assert.deepEqual(p5, fullBytes.subarray(0, 5 * 32));
    const w = size % 256;
    if (w > 0) {
      const part = await fetch(
        `${srv.url}/logs/default/tile/0/${String(Math.floor(size / 256)).padStart(3, '0')}.p/${w}`,
      );
      assert.equal(part.status, 200);
      assert.equal((await part.arrayBuffer()).byteLength, w * 32);
      const wider = await fetch(
        `${srv.url}/logs/default/tile/0/${String(Math.floor(size / 256)).padStart(3, '0')}.p/${w + 1}`,
      );
      assert.equal(wider.status, 404);
      assert.deepEqual(await wider.json(), { error: expect404Message(size, w), code: 'NOT_FOUND' });
    }
    const entries = await fetch(`${srv.url}/logs/default/tile/entries/000`);
    assert.equal(entries.status, 200);
    assert.equal(entries.headers.get('cache-control'), 'public, max-age=31536000, immutable');
    assert.equal((await fetch(`${srv.url}/logs/default/tile/0/x001/000`)).status, 404);
    assert.equal((await fetch(`${srv.url}/logs/default/tile/5/000`)).status, 404);
    assert.equal((await fetch(`${srv.url}/logs/nope/tile/0/000`)).status, 404);
  });
});

function expect404Message(size: number, w: number): string {
  return `tile/0/${String(Math.floor(size / 256)).padStart(3, '0')}.p/${w + 1} does not exist at tree size ${size}`;
}

/** The entry at `index`, read from its entry bundle as any tlog-tiles client would. */
async function entryAt(base: string, index: number, size: number): Promise<Buffer> {
  const n = Math.floor(index / 256);
  const width = Math.min(256, size - n * 256);
  const path = `${String(n).padStart(3, '0')}${width < 256 ? `.p/${width}` : ''}`;
  const bundle = Buffer.from(await (await fetch(`${base}/logs/default/tile/entries/${path}`)).arrayBuffer());
  let off = 0;
  for (let i = 0; ; i++) {
    const len = bundle.readUInt16BE(off);
    if (i === index % 256) return bundle.subarray(off + 2, off + 2 + len);
    off += 2 + len;
  }
}

test('the fast read path and the Fastify routes answer identically', async () => {
  const dir = tempDir();
  const srv = await startServer(['--state', dir, '--listen', '127.0.0.1:0']);
  try {
    const entries = makeEntries(3);
    assert.equal((await submit(srv.url, entries, { authorization: `Bearer ${token(dir)}` })).status, 200);
    // "%64efault" is not a log id the fast path knows, so Fastify (which decodes it) answers
    for (const rest of [
      'checkpoint',
      'tile/0/000.p/3',
      'tile/entries/000.p/2',
      `lookup/nix/${encodeURIComponent(entries[1].key)}`,
      'lookup/nix/absent%2Fkey',
    ]) {
      const a = await fetch(`${srv.url}/logs/default/${rest}`);
      const b = await fetch(`${srv.url}/logs/%64efault/${rest}`);
      assert.equal(a.status, 200, rest);
      assert.equal(b.status, 200, rest);
      for (const h of ['content-type', 'cache-control', 'access-control-allow-origin', 'content-length']) {
        assert.equal(a.headers.get(h), b.headers.get(h), `${rest}: ${h}`);
      }
      assert.deepEqual(Buffer.from(await a.arrayBuffer()), Buffer.from(await b.arrayBuffer()), rest);
    }
    const m = await (await fetch(`${srv.url}/metrics`)).text();
    assert.match(
      m,
      /trustix_http_requests_total\{listener="127\.0\.0\.1:0",route="\/logs\/:id\/lookup\/\*",status="200"\} 4/,
    );
    // the second lookup of each key came from the cache for the current checkpoint
    assert.match(m, /trustix_lookups_total\{log="default",result="present"\} 1/);
    assert.match(m, /trustix_lookups_total\{log="default",result="cached"\} 2/);
    // the sequencer reports its batches: 3 entries appended in one batch
    assert.match(m, /trustix_checkpoint_entries_sum\{log="default"\} 3\n/);
    assert.match(m, /trustix_checkpoint_entries_count\{log="default"\} 1\n/);
    assert.match(m, /trustix_batch_seconds_count\{log="default"\} 1\n/);
  } finally {
    await srv.stop();
    cleanup(dir);
  }
});

test('POST lookup answers many keys, each exactly as its GET answer, all under one checkpoint', async () => {
  const dir = tempDir();
  const srv = await startServer(['--state', dir, '--listen', '127.0.0.1:0']);
  try {
    const entries = makeEntries(4);
    assert.equal((await submit(srv.url, entries, { authorization: `Bearer ${token(dir)}` })).status, 200);
    const keys = [entries[2].key, 'absent/key', entries[0].key, entries[2].key];
    const r = await fetch(`${srv.url}/logs/default/lookup`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ protocol: 'nix', keys }),
    });
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
    assert.equal(r.headers.get('cache-control'), 'no-store');
    const { answers } = (await r.json()) as { answers: Array<{ checkpoint: string }> };
    assert.equal(answers.length, keys.length);
    const verifier = verifierFromVkey(srv.vkey);
    for (const [i, key] of keys.entries()) {
      const single = await (
        await fetch(`${srv.url}/logs/default/lookup/nix/${encodeURIComponent(key)}`)
      ).json();
      assert.deepEqual(answers[i], single, key);
      const v = verifyLookup(answers[i], verifier, { protocol: 'nix', key: Buffer.from(key) });
      assert.equal(v.status, key === 'absent/key' ? 'absent' : 'present', key);
    }
    const m = await (await fetch(`${srv.url}/metrics`)).text();
    assert.match(m, /trustix_lookups_total\{log="default",result="absent"\} [1-9]/);
  } finally {
    await srv.stop();
    cleanup(dir);
  }
});

test('cached lookup answers equal fresh ones and follow the head', async () => {
  const dir = tempDir();
  const srv = await startServer(['--state', dir, '--listen', '127.0.0.1:0']);
  const auth = { authorization: `Bearer ${token(dir)}` };
  try {
    const [e] = makeEntries(1);
    assert.equal((await submit(srv.url, [e], auth)).status, 200);
    // "%6E%69%78" is "nix": another cache key for the same lookup, so this answer is built afresh
    const fresh = async () => (await fetch(`${srv.url}/logs/default/lookup/%6E%69%78/${e.key}`)).text();
    const viaCache = async () => (await fetch(`${srv.url}/logs/default/lookup/nix/${e.key}`)).text();
    await viaCache();
    assert.equal(await viaCache(), await fresh());
    assert.equal((await submit(srv.url, makeEntries(1), auth)).status, 200);
    const after = JSON.parse(await viaCache()) as { checkpoint: string };
    assert.equal(after.checkpoint.split('\n')[1], '2', 'a cached answer never outlives its checkpoint');
    assert.equal(await viaCache(), await fresh());
  } finally {
    await srv.stop();
    cleanup(dir);
  }
});

describe('configured node: several logs, writers, listeners', () => {
  let dir: string;
  let srv: RunningServer;
  const tokA = randomBytes(32).toString('hex');
  const tokB = randomBytes(32).toString('hex');
  const keys = generateKeyPairSync('ed25519');
  const rawPub = keys.publicKey.export({ format: 'der', type: 'spki' }).subarray(12);
  const sha = (s: string) => createHash('sha256').update(s).digest('hex');

  before(async () => {
    dir = tempDir();
    const cfg = writeConfig(
      dir,
      `
[[log]]
id = "alpha"
origin = "cfg.test/alpha"

[[log]]
id = "beta"
origin = "cfg.test/beta"
dir = "somewhere/beta"

[[writer]]
name = "a"
token_sha256 = "${sha(tokA)}"
logs = ["alpha"]

[[writer]]
name = "b"
token_sha256 = "${sha(tokB)}"
public_key = "${rawPub.toString('base64')}"
logs = ["*"]

[[listen]]
address = "127.0.0.1:0"
api = ["read"]

[[listen]]
unix = "write.sock"
api = ["write", "metrics"]

[limits]
max_entries_per_request = 50
max_pending = 60
batch_delay_ms = 300
`,
    );
    srv = await startServer(['--config', cfg, '--state', join(dir, 'state')]);
  });
  after(async () => {
    await srv?.stop();
    cleanup(dir);
  });

  test('both logs are created where configured; the public listener has no write API', async () => {
    assert.ok(existsSync(join(dir, 'state', 'logs', 'alpha', 'log.mdb')));
    assert.ok(existsSync(join(dir, 'somewhere', 'beta', 'log.mdb')));
    const logs = (await (await fetch(`${srv.url}/logs`)).json()) as {
      logs: Array<{ id: string; origin: string }>;
    };
    assert.deepEqual(
      logs.logs.map((l) => [l.id, l.origin]),
      [
        ['alpha', 'cfg.test/alpha'],
        ['beta', 'cfg.test/beta'],
      ],
    );
    const r = await submit(srv.url, makeEntries(1), { authorization: `Bearer ${tokA}` }, 'alpha');
    assert.equal(r.status, 404);
    assert.equal((await fetch(`${srv.url}/metrics`)).status, 404);
  });

  test('unix socket: bearer token required, per-writer log permissions, socket mode 0600', async () => {
    const sock = join(dir, 'write.sock');
    assert.equal(statSync(sock).mode & 0o777, 0o600);
    const body = JSON.stringify({ entries: makeEntries(2) });
    const json = { 'content-type': 'application/json' };
    const noAuth = await unixRequest(sock, 'POST', '/logs/alpha/submit', body, json);
    assert.equal(noAuth.status, 401);
    const ok = await unixRequest(sock, 'POST', '/logs/alpha/submit', body, {
      ...json,
      authorization: `Bearer ${tokA}`,
    });
    assert.equal(ok.status, 200, ok.body);
    assert.equal((await receiptsOf(ok.body, 2)).length, 2);
    const forbidden = await unixRequest(sock, 'POST', '/logs/beta/submit', body, {
      ...json,
      authorization: `Bearer ${tokA}`,
    });
    assert.equal(forbidden.status, 403);
    const m = await unixRequest(sock, 'GET', '/metrics');
    assert.equal(m.status, 200);
    assert.match(m.body, /trustix_entries_appended_total\{log="alpha"\} 2/);
    assert.match(m.body, /trustix_submit_duration_seconds_bucket/);
    assert.equal((await unixRequest(sock, 'GET', '/logs')).status, 404);
  });

  test('signed requests: accepted once, replays, forgeries, tampering and stale times refused', async () => {
    const sock = join(dir, 'write.sock');
    const path = '/logs/beta/submit';
    const signed = (
      body: string,
      opts: { ts?: number; nonce?: string; key?: typeof keys.privateKey; keyid?: string } = {},
    ) => {
      const ts = opts.ts ?? Math.floor(Date.now() / 1000);
      const nonce = opts.nonce ?? randomBytes(16).toString('hex');
      const bodyHash = createHash('sha256').update(body).digest('hex');
      const msg = `trustix-submit/v1\nPOST ${path}\n${ts}\n${nonce}\n${bodyHash}`;
      const sig = sign(null, Buffer.from(msg), opts.key ?? keys.privateKey).toString('base64');
      return {
        'content-type': 'application/json',
        'trustix-signature': `keyid=${opts.keyid ?? 'b'},ts=${ts},nonce=${nonce},sig=${sig}`,
      };
    };
    const body = JSON.stringify({ entries: makeEntries(3) });
    const h = signed(body);
    const first = await unixRequest(sock, 'POST', path, body, h);
    assert.equal(first.status, 200, first.body);
    const replay = await unixRequest(sock, 'POST', path, body, h);
    assert.equal(replay.status, 401);
    assert.equal((JSON.parse(replay.body) as { code: string }).code, 'REPLAYED');
    const other = generateKeyPairSync('ed25519').privateKey;
    assert.equal((await unixRequest(sock, 'POST', path, body, signed(body, { key: other }))).status, 401);
    const tampered = JSON.stringify({ entries: makeEntries(3) });
    assert.equal((await unixRequest(sock, 'POST', path, tampered, signed(body))).status, 401);
    const stale = signed(body, { ts: Math.floor(Date.now() / 1000) - 301 });
    assert.equal((await unixRequest(sock, 'POST', path, body, stale)).status, 401);
    assert.equal((await unixRequest(sock, 'POST', path, body, signed(body, { keyid: 'a' }))).status, 401);
    assert.equal(
      (await unixRequest(sock, 'POST', path, body, { ...signed(body), 'trustix-signature': 'keyid=b,ts=1' }))
        .status,
      401,
    );
    // a bearer token of a writer that also has a key works on any log it may write to
    const bearer = await unixRequest(sock, 'POST', path, JSON.stringify({ entries: makeEntries(1) }), {
      'content-type': 'application/json',
      authorization: `Bearer ${tokB}`,
    });
    assert.equal(bearer.status, 200);
  });

  test('limits: too many entries is 413; a full pool is 503 with Retry-After and loses nothing', async () => {
    const sock = join(dir, 'write.sock');
    const headers = { 'content-type': 'application/json', authorization: `Bearer ${tokA}` };
    const big = await unixRequest(
      sock,
      'POST',
      '/logs/alpha/submit',
      JSON.stringify({ entries: makeEntries(51) }),
      headers,
    );
    assert.equal(big.status, 413);
    // max_pending 60 and a 300 ms batch delay: the second request of 40 overflows the pool
    const e1 = makeEntries(40);
    const e2 = makeEntries(40);
    const p1 = unixRequest(sock, 'POST', '/logs/alpha/submit', JSON.stringify({ entries: e1 }), headers);
    await new Promise((r) => setTimeout(r, 50));
    const r2 = await unixRequest(
      sock,
      'POST',
      '/logs/alpha/submit',
      JSON.stringify({ entries: e2 }),
      headers,
    );
    assert.equal(r2.status, 503);
    assert.ok(Number(r2.headers['retry-after']) >= 1);
    assert.equal((JSON.parse(r2.body) as { code: string }).code, 'UNAVAILABLE');
    const r1 = await p1;
    assert.equal(r1.status, 200);
    const vk = ((await (await fetch(`${srv.url}/logs`)).json()) as { logs: Array<{ vkey: string }> }).logs[0]
      .vkey;
    const verifier = verifierFromVkey(vk);
    for (const [e, want] of [
      [e1[7], 'present'],
      [e2[7], 'absent'],
    ] as const) {
      const a = await (await fetch(`${srv.url}/logs/alpha/lookup/nix/${encodeURIComponent(e.key)}`)).json();
      assert.equal(verifyLookup(a, verifier, { protocol: 'nix', key: Buffer.from(e.key) }).status, want);
    }
  });
});

describe('restart and config errors', () => {
  test('a restarted node keeps its log, key and token; --origin cannot change an existing log', async () => {
    const dir = tempDir();
    try {
      const state = join(dir, 's');
      const s1 = await startServer(['--state', state, '--listen', '127.0.0.1:0']);
      const auth = { authorization: `Bearer ${token(state)}` };
      const entries = makeEntries(10);
      assert.equal((await submit(s1.url, entries, auth)).status, 200);
      assert.deepEqual(await s1.stop(), { code: 0, signal: null });
      const s2 = await startServer(['--state', state, '--listen', '127.0.0.1:0']);
      try {
        assert.equal(s2.vkey, s1.vkey);
        assert.ok(!s2.stdout.some((l) => l.startsWith('initialised')));
        const cp = await (await fetch(`${s2.url}/logs/default/checkpoint`)).text();
        assert.equal(cp.split('\n')[1], '10');
        assert.equal((await submit(s2.url, makeEntries(1), auth)).status, 200);
      } finally {
        await s2.stop();
      }
      const bad = await runServeExpectingFailure([
        '--state',
        state,
        '--listen',
        '127.0.0.1:0',
        '--origin',
        'other/x',
      ]);
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, /--origin: no log .* has origin other\/x/);
    } finally {
      cleanup(dir);
    }
  });

  test('an invalid config stops the server with a message naming the key at fault', async () => {
    const dir = tempDir();
    try {
      const usage = await runServeExpectingFailure(['--listen', 'nowhere']);
      assert.equal(usage.code, 2);
      assert.match(usage.stderr, /--state DIR or --config FILE is required/);
      const file = writeConfig(dir, '[[log]]\nid = "a"\norigin = "has space"\n');
      const r = await runServeExpectingFailure(['--config', file]);
      assert.equal(r.code, 1);
      assert.equal(
        r.stderr,
        `trustix: config ${file}: log[0].origin: must be a valid note key name (no spaces, no "+", at most 255 characters)\n`,
      );
    } finally {
      cleanup(dir);
    }
  });
});
