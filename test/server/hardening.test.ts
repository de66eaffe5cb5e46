// The server's edges against a real `trustix serve`: credentials checked before a body is read,
// bodies capped per route, a connection cap, keys that are not UTF-8 refused, malformed HTTP in the
// API's error shape, 405 with Allow, gzipped entry bundles and the advertised prefix joined with a
// slash.
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { Agent, request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { parseReceipts } from '../../src/core/receipts.js';
import {
  cleanup,
  firstAnswer,
  makeEntries,
  type RunningServer,
  rawExchange,
  startServer,
  submit,
  tempDir,
  writeConfig,
} from '../fixtures/server-helpers.js';

const TOKEN = randomBytes(32).toString('hex');
const writerKey = generateKeyPairSync('ed25519');
const auth = { authorization: `Bearer ${TOKEN}` };
let dir: string;
let srv: RunningServer;

function config(limits = ''): string {
  const raw = writerKey.publicKey.export({ format: 'der', type: 'spki' }).subarray(12);
  return `[[log]]
id = "default"
origin = "hardening.test/log"

[[writer]]
name = "w"
token_sha256 = "${createHash('sha256').update(TOKEN).digest('hex')}"
public_key = "${raw.toString('base64')}"
logs = ["default"]

[limits]
batch_delay_ms = 5
${limits}`;
}

before(async () => {
  dir = tempDir();
  srv = await startServer(['--config', writeConfig(dir, config()), '--listen', '127.0.0.1:0']);
});

after(async () => {
  const exit = await srv?.stop();
  assert.deepEqual(exit, { code: 0, signal: null });
  assert.doesNotMatch(srv.stderr(), /internal error/);
  cleanup(dir);
});

function signatureHeader(body: string, opts: { keyid?: string; ts?: number; nonce?: string } = {}): string {
  const ts = opts.ts ?? Math.floor(Date.now() / 1000);
  const nonce = opts.nonce ?? randomBytes(16).toString('hex');
  const hash = createHash('sha256').update(body).digest('hex');
  const msg = `trustix-submit/v1\nPOST /logs/default/submit\n${ts}\n${nonce}\n${hash}`;
  const sig = sign(null, Buffer.from(msg), writerKey.privateKey).toString('base64');
  return `keyid=${opts.keyid ?? 'w'},ts=${ts},nonce=${nonce},sig=${sig}`;
}

/** The JSON error body of a raw HTTP answer. */
function errorOf(reply: string): { error: string; code: string } {
  assert.match(reply, /\r\ncontent-type: application\/json/i, reply.slice(0, 300));
  const j = JSON.parse(reply.slice(reply.indexOf('\r\n\r\n') + 4)) as { error: string; code: string };
  assert.equal(typeof j.error, 'string');
  return j;
}

test('signed submissions with bad credentials are refused before their body is read', async () => {
  // a nonce used by an accepted request
  const okBody = JSON.stringify({ entries: makeEntries(1) });
  const used = randomBytes(16).toString('hex');
  const first = await fetch(`${srv.url}/logs/default/submit`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'trustix-signature': signatureHeader(okBody, { nonce: used }),
    },
    body: okBody,
  });
  assert.equal(first.status, 200, await first.text());
  const now = Math.floor(Date.now() / 1000);
  const cases: Array<[string, string]> = [
    ['garbage', 'garbage'],
    ['unknown writer', signatureHeader('x', { keyid: 'nobody' })],
    ['stale', signatureHeader('x', { ts: now - 3600 })],
    ['replayed nonce', signatureHeader('x', { nonce: used })],
  ];
  for (const [what, header] of cases) {
    // 16 MiB announced, 1 KiB sent: the answer comes before the rest of the body, which never does
    const head =
      'POST /logs/default/submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
      `Trustix-Signature: ${header}\r\nContent-Length: ${16 * 1024 * 1024}\r\n\r\n`;
    const reply = await firstAnswer(srv.url, head + '['.repeat(1024));
    assert.match(reply, /^HTTP\/1\.1 401 /, `${what}: ${reply.slice(0, 200)}`);
    const code = errorOf(reply).code;
    assert.equal(code, what === 'replayed nonce' ? 'REPLAYED' : 'UNAUTHORIZED', what);
  }
});

test('bodies of signed requests read before their check share a budget; beyond it 503 at once', async () => {
  // a header anyone can write (a real writer name, the time, a fresh nonce) with a forged signature
  const forged = () =>
    `keyid=w,ts=${Math.floor(Date.now() / 1000)},nonce=${randomBytes(16).toString('hex')},sig=${randomBytes(64).toString('base64')}`;
  const head = (header: string) =>
    'POST /logs/default/submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    `Trustix-Signature: ${header}\r\nContent-Length: ${16 * 1024 * 1024}\r\n\r\n`;
  const u = new URL(srv.url);
  const holding: Socket[] = [];
  try {
    // four bodies of max_body_bytes being read fill the budget
    for (let i = 0; i < 4; i++) {
      const s = connect(Number(u.port), u.hostname);
      s.on('error', () => {});
      await new Promise((r) => s.on('connect', r));
      s.write(head(forged()));
      holding.push(s);
    }
    await new Promise((r) => setTimeout(r, 300));
    const reply = await firstAnswer(srv.url, head(forged()));
    assert.match(reply, /^HTTP\/1\.1 503 /, reply.slice(0, 200));
    assert.match(reply, /\r\nretry-after: \d+\r\n/i);
    assert.match(errorOf(reply).error, /signed request bodies/);
  } finally {
    for (const s of holding) s.destroy();
  }
  // once those connections are gone, signed requests are read again
  const body = JSON.stringify({ entries: makeEntries(1) });
  for (let i = 0; ; i++) {
    const r = await fetch(`${srv.url}/logs/default/submit`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'trustix-signature': signatureHeader(body) },
      body,
    });
    if (r.status === 200 || i === 50) {
      assert.equal(r.status, 200, await r.text());
      break;
    }
    await r.text();
    await new Promise((r) => setTimeout(r, 100));
  }
});

test('a batch lookup body over what 256 keys can need is 413', async () => {
  const body = JSON.stringify({ protocol: 'nix', keys: ['k'.repeat(1024 * 1024)] });
  const r = await fetch(`${srv.url}/logs/default/lookup`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body,
  });
  assert.equal(r.status, 413, await r.text());
  // the largest valid body still fits: 256 keys of 1024 bytes, each byte a two-character escape
  const keys = Array.from({ length: 256 }, (_, i) => `${String(i).padStart(3, '0')}${'"'.repeat(1021)}`);
  const big = await fetch(`${srv.url}/logs/default/lookup`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ protocol: 'nix', keys }),
  });
  assert.equal(big.status, 200);
  assert.equal(((await big.json()) as { answers: unknown[] }).answers.length, 256);
});

test('keys that are not UTF-8 are refused everywhere; U+FFFD itself is a key of its own', async () => {
  const value = 'ab'.repeat(32);
  const post = (path: string, body: Buffer | string, headers: Record<string, string> = auth) =>
    fetch(`${srv.url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: body as BodyInit,
    });
  const expect400 = async (r: Response, pattern: RegExp, what: string) => {
    const text = await r.text();
    assert.equal(r.status, 400, `${what}: ${text}`);
    assert.match((JSON.parse(text) as { error: string }).error, pattern, what);
  };
  const tag = randomBytes(4).toString('hex');
  // a lone surrogate as a JSON escape
  const lone = `{"entries":[{"protocol":"nix","key":"k-${tag}-\\ud800","value":"${value}"}]}`;
  await expect400(await post('/logs/default/submit', lone), /entries\[0\]: key is not valid UTF-8/, 'lone');
  // a raw 0xff byte
  const rawFf = Buffer.concat([
    Buffer.from(`{"entries":[{"protocol":"nix","key":"k-${tag}-`),
    Buffer.from([0xff]),
    Buffer.from(`","value":"${value}"}]}`),
  ]);
  await expect400(await post('/logs/default/submit', rawFf), /not valid UTF-8/, 'raw 0xff');
  // the same refusals for a signed request (its raw body is what is signed)
  await expect400(
    await post('/logs/default/submit', rawFf, {
      'trustix-signature': signatureHeader(rawFf.toString('latin1')),
    }),
    /not valid UTF-8/,
    'signed raw 0xff',
  );
  // U+FFFD written as UTF-8 is a valid key, appended (not a duplicate of anything above)
  const fffd = await submit(srv.url, [{ protocol: 'nix', key: `k-${tag}-\ufffd`, value }], auth);
  assert.equal(fffd.status, 200);
  assert.equal(parseReceipts(await fffd.json(), 1)[0].duplicate, false);
  // lookups: batch bodies and URL paths
  await expect400(
    await post('/logs/default/lookup', `{"protocol":"nix","keys":["k-${tag}-\\udc00"]}`, {}),
    /keys\[0\]: key is not valid UTF-8/,
    'lookup lone',
  );
  const lookupFf = Buffer.concat([
    Buffer.from('{"protocol":"nix","keys":["k-'),
    Buffer.from([0xff]),
    Buffer.from('"]}'),
  ]);
  await expect400(await post('/logs/default/lookup', lookupFf, {}), /not valid UTF-8/, 'lookup raw 0xff');
  for (const path of [
    `/logs/default/lookup/nix/k-${tag}-%FF`,
    `/logs/default/lookup/nix/k-${tag}-%ED%A0%80`,
  ]) {
    const r = await fetch(`${srv.url}${path}`);
    assert.equal(r.status, 400, path);
  }
  const rawPath = Buffer.concat([
    Buffer.from(`GET /logs/default/lookup/nix/k-${tag}-`),
    Buffer.from([0xff]),
    Buffer.from(' HTTP/1.1\r\nHost: x\r\n\r\n'),
  ]);
  assert.match(await rawExchange(srv.url, rawPath), /^HTTP\/1\.1 400 /);
  // the U+FFFD key is found under its own bytes
  const found = (await (
    await fetch(`${srv.url}/logs/default/lookup/nix/${encodeURIComponent(`k-${tag}-\ufffd`)}`)
  ).json()) as {
    entry?: unknown;
  };
  assert.ok(found.entry);
});

test('malformed HTTP is answered in the API error shape', async () => {
  const bad = await rawExchange(srv.url, 'GARBAGE\r\n\r\n');
  assert.match(bad, /^HTTP\/1\.1 400 /);
  assert.equal(errorOf(bad).code, 'BAD_REQUEST');
  const big = await rawExchange(
    srv.url,
    `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(70_000)}\r\n\r\n`,
  );
  assert.match(big, /^HTTP\/1\.1 431 /);
  assert.equal(errorOf(big).code, 'HEADERS_TOO_LARGE');
});

test('a known path asked with another method is 405 with Allow', async () => {
  const cases: Array<[string, string, string]> = [
    ['DELETE', '/logs/default/checkpoint', 'GET, HEAD'],
    ['GET', '/logs/default/submit', 'POST'],
    ['PUT', '/logs/default/lookup', 'POST'],
    ['POST', '/logs/default/tile/0/000', 'GET, HEAD'],
  ];
  for (const [method, path, allow] of cases) {
    const r = await fetch(`${srv.url}${path}`, { method });
    const text = await r.text();
    assert.equal(r.status, 405, `${method} ${path}: ${text}`);
    assert.equal(r.headers.get('allow'), allow, `${method} ${path}`);
    assert.equal((JSON.parse(text) as { code: string }).code, 'METHOD_NOT_ALLOWED');
  }
  assert.equal((await fetch(`${srv.url}/nowhere`, { method: 'PUT' })).status, 404);
});

/** GET over node:http (fetch would decompress): status, headers and the body as sent. */
function rawGet(path: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }>(
    (resolve, reject) => {
      const req = request(`${srv.url}${path}`, { headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
      });
      req.on('error', reject);
      req.end();
    },
  );
}

test('entry bundles are gzipped for clients that accept it, full and partial', async () => {
  const r = await submit(srv.url, makeEntries(300, 'gz'), auth);
  assert.equal(r.status, 200);
  await r.text();
  const size = Number((await (await fetch(`${srv.url}/logs/default/checkpoint`)).text()).split('\n')[1]);
  assert.ok(size > 256);
  const partial = `/logs/default/tile/entries/001.p/${size - 256}`;
  for (const path of ['/logs/default/tile/entries/000', partial]) {
    const plain = await rawGet(path);
    assert.equal(plain.status, 200);
    assert.equal(plain.headers['content-encoding'], undefined);
    assert.equal(plain.headers.vary, 'accept-encoding');
    for (let i = 0; i < 2; i++) {
      // twice: the second full bundle comes from the cache
      const gz = await rawGet(path, { 'accept-encoding': 'br;q=1, gzip;q=0.5' });
      assert.equal(gz.status, 200);
      assert.equal(gz.headers['content-encoding'], 'gzip', path);
      assert.equal(gz.headers.vary, 'accept-encoding');
      assert.ok(gz.body.length < plain.body.length);
      assert.deepEqual(gunzipSync(gz.body), plain.body, path);
    }
    const refused = await rawGet(path, { 'accept-encoding': 'gzip;q=0' });
    assert.equal(refused.headers['content-encoding'], undefined);
  }
  // hash tiles are not compressed (hashes do not compress)
  const tile = await rawGet('/logs/default/tile/0/000', { 'accept-encoding': 'gzip' });
  assert.equal(tile.status, 200);
  assert.equal(tile.headers['content-encoding'], undefined);
});

test('the advertised prefix joined with a slash reaches the same resources', async () => {
  const { logs } = (await (await fetch(`${srv.url}/logs`)).json()) as { logs: Array<{ prefix: string }> };
  const prefix = logs[0].prefix;
  assert.equal(prefix, '/logs/default/');
  const direct = await (await fetch(`${srv.url}/logs/default/checkpoint`)).text();
  const joined = await fetch(`${srv.url}${prefix}/checkpoint`);
  assert.equal(joined.status, 200);
  assert.equal(await joined.text(), direct);
  assert.equal((await fetch(`${srv.url}${prefix}/tile/0/000`)).status, 200);
  const body = JSON.stringify({ entries: makeEntries(1) });
  const signed = await fetch(`${srv.url}${prefix}/submit`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...auth },
    body,
  });
  assert.equal(signed.status, 200);
});

test('connections over the cap get a 503 while existing clients are served', async () => {
  const capDir = tempDir();
  const capped = await startServer([
    '--config',
    writeConfig(capDir, config('max_connections = 3\n')),
    '--listen',
    '127.0.0.1:0',
  ]);
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const u = new URL(capped.url);
  const get = () =>
    new Promise<number>((resolve, reject) => {
      const req = request(`${capped.url}/healthz`, { agent }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.end();
    });
  const sockets: Socket[] = [];
  try {
    assert.equal(await get(), 200);
    // two idle connections fill the cap
    for (let i = 0; i < 2; i++) {
      const s = connect(Number(u.port), u.hostname);
      await new Promise((r) => s.on('connect', r));
      sockets.push(s);
    }
    await new Promise((r) => setTimeout(r, 200));
    const reply = await rawExchange(capped.url, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n', 10_000, false);
    assert.match(reply, /^HTTP\/1\.1 503 /, reply);
    assert.match(reply, /\r\nretry-after: \d+\r\n/i);
    assert.match(errorOf(reply).error, /too many connections/);
    // the client that was already connected is still served
    assert.equal(await get(), 200);
  } finally {
    for (const s of sockets) s.destroy();
    agent.destroy();
    assert.deepEqual(await capped.stop(), { code: 0, signal: null });
    cleanup(capDir);
  }
});
