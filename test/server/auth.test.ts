// Writer authentication in isolation: tokens, signatures, time window, replay.
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, sign } from 'node:crypto';
import { describe, test } from 'node:test';
import { AuthError, parseSignatureHeader, signedMessage, WriterAuth } from '../../src/server/auth.js';
import type { WriterConfig } from '../../src/server/config.js';

const keys = generateKeyPairSync('ed25519');
const sha = (s: string) => createHash('sha256').update(s).digest();

function setup(now: { t: number }) {
  const writers: WriterConfig[] = [
    { name: 'tok', tokenSha256: sha('secret-1'), logs: ['a'] },
    { name: 'sig', publicKey: keys.publicKey, logs: '*' },
  ];
  return new WriterAuth(writers, () => now.t);
}

function header(
  body: Buffer,
  ts: number,
  nonce: string,
  path = '/logs/a/submit',
  key = keys.privateKey,
): string {
  const msg = signedMessage('POST', path, ts, nonce, createHash('sha256').update(body).digest('hex'));
  return `keyid=sig,ts=${ts},nonce=${nonce},sig=${sign(null, msg, key).toString('base64')}`;
}

function refused(fn: () => unknown, status: number, code?: string): void {
  assert.throws(
    fn,
    (e: unknown) => e instanceof AuthError && e.status === status && (!code || e.code === code),
  );
}

describe('writer auth', () => {
  test('bearer tokens', () => {
    const auth = setup({ t: 1000 });
    assert.equal(auth.bearer('secret-1').name, 'tok');
    refused(() => auth.bearer('secret-2'), 401);
    refused(() => auth.bearer(''), 401);
    refused(() => auth.bearer('x'.repeat(10_000)), 401);
    assert.ok(WriterAuth.mayWrite(auth.bearer('secret-1'), 'a'));
    assert.ok(!WriterAuth.mayWrite(auth.bearer('secret-1'), 'b'));
    auth.close();
  });

  test('signed requests: window, replay, binding to method, path and body', () => {
    const now = { t: 1_700_000_000 };
    const auth = setup(now);
    const body = Buffer.from('{"entries":[]}');
    const h = header(body, now.t, 'aa'.repeat(8));
    assert.equal(auth.signed(h, 'POST', '/logs/a/submit', body).writer.name, 'sig');
    refused(() => auth.signed(h, 'POST', '/logs/a/submit', body), 401, 'REPLAYED');
    const h2 = header(body, now.t, 'bb'.repeat(8));
    refused(() => auth.signed(h2, 'POST', '/logs/b/submit', body), 401);
    refused(() => auth.signed(h2, 'PUT', '/logs/a/submit', body), 401);
    refused(() => auth.signed(h2, 'POST', '/logs/a/submit', Buffer.from('{}')), 401);
    assert.equal(auth.signed(h2, 'POST', '/logs/a/submit', body).writer.name, 'sig');
    refused(
      () => auth.signed(header(body, now.t - 301, 'cc'.repeat(8)), 'POST', '/logs/a/submit', body),
      401,
    );
    refused(
      () => auth.signed(header(body, now.t + 301, 'cc'.repeat(8)), 'POST', '/logs/a/submit', body),
      401,
    );
    assert.equal(
      auth.signed(header(body, now.t + 300, 'cc'.repeat(8)), 'POST', '/logs/a/submit', body).writer.name,
      'sig',
    );
    // a nonce may come back once its window is over (its old request would be stale by then)
    now.t += 700;
    assert.equal(
      auth.signed(header(body, now.t, 'aa'.repeat(8)), 'POST', '/logs/a/submit', body).writer.name,
      'sig',
    );
    const forged = header(
      body,
      now.t,
      'dd'.repeat(8),
      '/logs/a/submit',
      generateKeyPairSync('ed25519').privateKey,
    );
    refused(() => auth.signed(forged, 'POST', '/logs/a/submit', body), 401);
    refused(() => auth.signed(h.replace('keyid=sig', 'keyid=tok'), 'POST', '/logs/a/submit', body), 401);
    auth.close();
  });

  test('malformed signature headers', () => {
    const sig = Buffer.alloc(64).toString('base64');
    assert.ok(parseSignatureHeader(`keyid=a,ts=1,nonce=${'0'.repeat(16)},sig=${sig}`));
    for (const bad of [
      '',
      'keyid=a',
      `keyid=a,ts=1,nonce=${'0'.repeat(16)}`,
      `keyid=a,ts=01,nonce=${'0'.repeat(16)},sig=${sig}`,
      `keyid=a,ts=-1,nonce=${'0'.repeat(16)},sig=${sig}`,
      `keyid=a,ts=1e9,nonce=${'0'.repeat(16)},sig=${sig}`,
      `keyid=a,ts=99999999999999999,nonce=${'0'.repeat(16)},sig=${sig}`,
      `keyid=a,ts=1,nonce=short,sig=${sig}`,
      `keyid=a,ts=1,nonce=${'0'.repeat(16)},sig=AAAA`,
      `keyid=a,keyid=b,ts=1,nonce=${'0'.repeat(16)},sig=${sig}`,
      `keyid=a,ts=1,nonce=${'0'.repeat(16)},sig=${sig},extra=1`,
      'x'.repeat(5000),
    ]) {
      assert.equal(parseSignatureHeader(bad), undefined, bad);
    }
  });
});
