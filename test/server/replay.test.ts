// A signed submission replayed after a restart (SIGTERM or SIGKILL) is refused as a replay: the
// nonces of signed requests are durable in the log's store before the request is acted on, and
// loaded at start. Otherwise a captured request could roll a key back to an older value.
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { test } from 'node:test';
import { decodeEntry } from '../../src/core/entry.js';
import { cleanup, startServer, tempDir, writeConfig } from '../fixtures/server-helpers.js';

test('a signed request replayed after a restart is refused and the key keeps its newer value', {
  timeout: 300_000,
}, async () => {
  const dir = tempDir();
  const keys = generateKeyPairSync('ed25519');
  const raw = keys.publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
  try {
    const cfg = writeConfig(
      dir,
      `[[log]]
id = "default"
origin = "replay.test/log"

[[writer]]
name = "s"
public_key = "${raw.toString('base64')}"
logs = ["*"]
`,
    );
    const args = ['--config', cfg, '--state', dir, '--listen', '127.0.0.1:0'];
    const path = '/logs/default/submit';
    const key = `replayed-${randomBytes(4).toString('hex')}`;
    // one signed request, kept as captured bytes: its body and headers
    const request = (value: string) => {
      const body = JSON.stringify({ entries: [{ protocol: 'nix', key, value }] });
      const ts = Math.floor(Date.now() / 1000);
      const nonce = randomBytes(16).toString('hex');
      const bodyHash = createHash('sha256').update(body).digest('hex');
      const sig = sign(
        null,
        Buffer.from(`trustix-submit/v1\nPOST ${path}\n${ts}\n${nonce}\n${bodyHash}`),
        keys.privateKey,
      );
      const headers = {
        'content-type': 'application/json',
        'trustix-signature': `keyid=s,ts=${ts},nonce=${nonce},sig=${sig.toString('base64')}`,
      };
      return { body, headers };
    };
    const send = (url: string, r: { body: string; headers: Record<string, string> }) =>
      fetch(`${url}${path}`, { method: 'POST', headers: r.headers, body: r.body });
    const currentValue = async (url: string) => {
      const a = (await (await fetch(`${url}/logs/default/lookup/nix/${key}`)).json()) as {
        entry?: { data: string };
      };
      assert.ok(a.entry, 'the key is present');
      return decodeEntry(Buffer.from(a.entry.data, 'base64')).value.toString('hex');
    };
    const replayRefused = async (url: string, r: { body: string; headers: Record<string, string> }) => {
      const res = await send(url, r);
      const text = await res.text();
      assert.ok(res.status === 401 || res.status === 409, `replay answered ${res.status}: ${text}`);
      if (res.status === 401) assert.equal((JSON.parse(text) as { code: string }).code, 'REPLAYED');
    };

    const v = (n: number) => createHash('sha256').update(`value ${n}`).digest('hex');
    let srv = await startServer(args);
    const old = request(v(1));
    assert.equal((await send(srv.url, old)).status, 200);
    const newer = request(v(2));
    assert.equal((await send(srv.url, newer)).status, 200);
    assert.equal(await currentValue(srv.url), v(2));

    // SIGTERM: a clean restart
    assert.deepEqual(await srv.stop(), { code: 0, signal: null });
    srv = await startServer(args);
    await replayRefused(srv.url, old);
    assert.equal(await currentValue(srv.url), v(2));

    // SIGKILL right after an acknowledgement: the nonces of acknowledged requests are on disk
    const third = request(v(3));
    assert.equal((await send(srv.url, third)).status, 200);
    srv.proc.kill('SIGKILL');
    await srv.exited;
    srv = await startServer(args);
    try {
      await replayRefused(srv.url, old);
      await replayRefused(srv.url, newer);
      await replayRefused(srv.url, third);
      assert.equal(await currentValue(srv.url), v(3));
      // a fresh request is still accepted
      assert.equal((await send(srv.url, request(v(4)))).status, 200);
      assert.equal(await currentValue(srv.url), v(4));
    } finally {
      await srv.stop();
    }
  } finally {
    cleanup(dir);
  }
});
