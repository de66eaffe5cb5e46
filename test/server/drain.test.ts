// SIGTERM while many submissions are in flight: the server drains and exits 0; after a restart
// every entry acknowledged with 200 is in the log at its acknowledged index, and every entry whose
// request was refused (503, connection refused or reset) is not. Nothing else is in the log.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { connect } from 'node:net';
import { test } from 'node:test';
import { decodeEntry } from '../../src/core/entry.js';
import { parseReceipts } from '../../src/core/receipts.js';
import {
  cleanup,
  type EntryJson,
  makeEntries,
  startServer,
  submit,
  tempDir,
  token,
  writeConfig,
} from '../fixtures/server-helpers.js';

interface Outcome {
  entries: EntryJson[];
  status: number | 'network';
  indexes?: number[];
  sentAfterTerm: boolean;
  doneAfterTerm: boolean;
}

test('SIGTERM drains: every acknowledged entry survives, every refused one is absent', {
  timeout: 60_000,
}, async () => {
  const dir = tempDir();
  try {
    const cfg = writeConfig(
      dir,
      `[[log]]
id = "default"
origin = "drain.test/log"

[[writer]]
name = "w"
token_sha256 = "${createHash('sha256').update('drain-token').digest('hex')}"
logs = ["*"]

[limits]
batch_delay_ms = 150
max_batch = 400
`,
    );
    const args = ['--config', cfg, '--state', dir, '--listen', '127.0.0.1:0'];
    const srv = await startServer(args);
    const auth = { authorization: 'Bearer drain-token' };
    const outcomes: Outcome[] = [];
    let termAt = 0;

    // 24 writers submitting 40 unique entries per request, back to back, until the server is gone
    const writer = async () => {
      let networkErrors = 0;
      while (networkErrors < 2) {
        const entries = makeEntries(40, 'drain');
        const sentAfterTerm = termAt > 0;
        try {
          const r = await submit(srv.url, entries, auth);
          const body = await r.text();
          const o: Outcome = { entries, status: r.status, sentAfterTerm, doneAfterTerm: termAt > 0 };
          if (r.status === 200) {
            o.indexes = parseReceipts(JSON.parse(body), entries.length).map((x) => x.index);
          } else {
            assert.equal(r.status, 503, body);
            assert.ok(Number(r.headers.get('retry-after')) >= 1);
          }
          outcomes.push(o);
        } catch {
          networkErrors++;
          outcomes.push({ entries, status: 'network', sentAfterTerm, doneAfterTerm: true });
        }
      }
    };
    const writers = Array.from({ length: 24 }, writer);
    // and one request whose headers arrive before SIGTERM and whose body arrives during the drain:
    // accepted on the wire, then refused with 503 (not queued, not lost)
    const slowEntries = makeEntries(5, 'slow');
    const slowBody = JSON.stringify({ entries: slowEntries });
    const u = new URL(srv.url);
    const slow = connect(Number(u.port), u.hostname);
    let slowReply = '';
    slow.on('data', (d: Buffer) => {
      slowReply += d.toString();
    });
    const slowClosed = new Promise((r) => slow.on('close', r));
    slow.on('error', () => {});
    slow.write(
      `POST /logs/default/submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer drain-token\r\nContent-Length: ${Buffer.byteLength(slowBody)}\r\n\r\n`,
    );
    await new Promise((r) => setTimeout(r, 800));
    termAt = Date.now();
    srv.proc.kill('SIGTERM');
    // the body goes out once the server says it is draining
    while (!srv.stdout.some((l) => l.startsWith('draining'))) await new Promise((r) => setTimeout(r, 5));
    slow.write(slowBody);
    const exit = await srv.exited;
    await Promise.all(writers);
    await slowClosed;
    assert.match(slowReply, /^HTTP\/1\.1 503 /);
    assert.match(slowReply, /\r\nretry-after: \d+\r\n/i);
    outcomes.push({ entries: slowEntries, status: 503, sentAfterTerm: false, doneAfterTerm: true });
    assert.deepEqual(exit, { code: 0, signal: null }, srv.stderr());
    assert.ok(srv.stdout.some((l) => l.startsWith('draining (SIGTERM)')));
    assert.equal(srv.stdout.at(-1), 'stopped');

    const ok = outcomes.filter((o) => o.status === 200);
    const refused = outcomes.filter((o) => o.status !== 200);
    assert.ok(ok.length > 0, 'some submissions were acknowledged');
    assert.ok(refused.length > 0, 'some submissions were refused');
    // the interesting ones: in flight when SIGTERM arrived, acknowledged during the drain
    assert.ok(
      ok.some((o) => !o.sentAfterTerm && o.doneAfterTerm),
      'some submissions in flight at SIGTERM were acknowledged while draining',
    );

    // restart and read the whole log back through its entry bundles
    const srv2 = await startServer(args);
    try {
      const cp = await (await fetch(`${srv2.url}/logs/default/checkpoint`)).text();
      const size = Number(cp.split('\n')[1]);
      const inLog = new Map<string, { index: number; value: string }>();
      for (let n = 0; n * 256 < size; n++) {
        const w = Math.min(256, size - n * 256);
        const idx = String(n).padStart(3, '0');
        const r = await fetch(`${srv2.url}/logs/default/tile/entries/${idx}${w < 256 ? `.p/${w}` : ''}`);
        assert.equal(r.status, 200);
        const b = Buffer.from(await r.arrayBuffer());
        for (let off = 0, i = n * 256; off < b.length; i++) {
          const len = b.readUInt16BE(off);
          const e = decodeEntry(b.subarray(off + 2, off + 2 + len));
          inLog.set(e.key.toString(), { index: i, value: e.value.toString('hex') });
          off += 2 + len;
        }
      }
      let acked = 0;
      for (const o of ok) {
        o.entries.forEach((e, i) => {
          const found = inLog.get(e.key);
          assert.ok(found, `acknowledged entry ${e.key} is missing after restart`);
          assert.equal(found.index, o.indexes![i]);
          assert.equal(found.value, e.value);
          acked++;
        });
      }
      for (const o of refused) {
        for (const e of o.entries)
          assert.ok(!inLog.has(e.key), `refused entry ${e.key} (${o.status}) is in the log`);
      }
      assert.equal(size, acked, 'the log holds exactly the acknowledged entries');
      // the restarted node takes submissions again
      assert.equal((await submit(srv2.url, makeEntries(1), auth)).status, 200);
    } finally {
      await srv2.stop();
    }
  } finally {
    cleanup(dir);
  }
});

test('SIGTERM: a request on an idle keep-alive connection gets 503, not a reset', {
  timeout: 180_000,
}, async () => {
  const dir = tempDir();
  try {
    const srv = await startServer(['--state', dir, '--listen', '127.0.0.1:0']);
    const u = new URL(srv.url);
    const open = async () => {
      const s = connect(Number(u.port), u.hostname);
      s.on('error', () => {});
      await new Promise((r) => s.on('connect', r));
      let reply = '';
      s.on('data', (d: Buffer) => {
        reply += d.toString();
      });
      return { s, reply: () => reply, closed: new Promise((r) => s.on('close', r)) };
    };
    // a keep-alive connection, idle after one answer
    const idle = await open();
    idle.s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    while (!/\r\n\r\nok$/.test(idle.reply())) await new Promise((r) => setTimeout(r, 5));
    // a submission in flight (its body still to come) keeps the drain going
    const slow = await open();
    const body = JSON.stringify({ entries: makeEntries(1, 'slow') });
    slow.s.write(
      `POST /logs/default/submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer ${token(dir)}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n`,
    );
    await new Promise((r) => setTimeout(r, 300));
    srv.proc.kill('SIGTERM');
    while (!srv.stdout.some((l) => l.startsWith('draining'))) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 300));
    const before = idle.reply().length;
    idle.s.write('GET /logs/default/checkpoint HTTP/1.1\r\nHost: x\r\n\r\n');
    await idle.closed;
    const answer = idle.reply().slice(before);
    assert.match(answer, /^HTTP\/1\.1 503 /, `answer on the idle connection: ${JSON.stringify(answer)}`);
    assert.match(answer, /\r\nretry-after: \d+\r\n/i);
    assert.match(answer, /\r\nconnection: close\r\n/i);
    assert.equal(
      (JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as { code: string }).code,
      'UNAVAILABLE',
    );
    // the submission in flight is answered, then the server stops
    slow.s.write(body);
    await slow.closed;
    assert.match(slow.reply(), /^HTTP\/1\.1 503 /);
    assert.deepEqual(await srv.exited, { code: 0, signal: null }, srv.stderr());
  } finally {
    cleanup(dir);
  }
});
