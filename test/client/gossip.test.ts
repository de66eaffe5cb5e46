// gossipWith (src/misbehaviour/gossip.ts) against a real log behind the fake server and a peer
// played by a fetch function: what is read, what is sent, and each outcome.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, test } from 'node:test';
import { LogClient } from '../../src/client/client.js';
import { MemoryTrustStore } from '../../src/client/trust-store.js';
import { generateKey } from '../../src/core/note.js';
import type { Log } from '../../src/log/log.js';
import { gossipWith } from '../../src/misbehaviour/gossip.js';
import { startFakeServer } from './fake-server.js';
import { makeLog, ORIGIN } from './helpers.js';

const { skey, vkey } = generateKey(ORIGIN);
const logs: Log[] = [];
after(async () => {
  for (const l of logs) await l.close();
});

/** A witness that holds `note` (or nothing) and records what it is sent, answering `status`. */
function peer(note: string | undefined, status = 200) {
  const sent: string[] = [];
  const path = `/${createHash('sha256').update(ORIGIN).digest('hex')}/checkpoint`;
  const fetch = (async (input: string | URL, init?: RequestInit) => {
    const url = new URL(String(input));
    if (init?.method === 'POST' && url.pathname === '/add-checkpoint') {
      sent.push(String(init.body));
      return new Response(status === 200 ? '\u2014 w sig\n' : 'refused\n', { status });
    }
    if (url.pathname === path && note !== undefined) return new Response(note);
    return new Response('not found\n', { status: 404 });
  }) as typeof globalThis.fetch;
  return { fetch, sent, peer: { name: 'W1', url: 'http://witness.invalid/' } };
}

test('a peer with nothing is sent the checkpoint from 0; one behind is sent it with the log proof', async () => {
  const log = await makeLog(skey, [5, 4]);
  logs.push(log);
  const server = await startFakeServer(log);
  try {
    const client = new LogClient({ url: server.url, vkey, trustStore: new MemoryTrustStore() });
    const empty = peer(undefined);
    const r = await gossipWith(client, empty.peer, { timeoutMs: 2000, fetch: empty.fetch });
    assert.equal(r.status, 'none', r.message);
    assert.equal(r.sent, '200 cosigned');
    assert.match(empty.sent[0], /^old 0\n\nt/);

    // the peer holds the log's older checkpoint of size 5
    const older = log.storage.checkpoints();
    const at5 = [...older].find((c) => c.size === 5)!.checkpoint;
    const behind = peer(at5, 409);
    const r2 = await gossipWith(client, behind.peer, { timeoutMs: 2000, fetch: behind.fetch });
    assert.equal(r2.status, 'agree', r2.message);
    assert.deepEqual([r2.yourSize, r2.theirSize], [9, 5]);
    assert.match(r2.sent ?? '', /^409 /);
    const lines = behind.sent[0].split('\n');
    assert.equal(lines[0], 'old 5');
    assert.deepEqual(
      lines.slice(1, lines.indexOf('')),
      log.consistencyProof(5, 9).map((h) => h.toString('base64')),
    );

    // a checkpoint not signed by the log is an error, not a split view
    const other = await makeLog(generateKey(ORIGIN).skey, [3]);
    logs.push(other);
    const stranger = peer(other.head().checkpoint);
    const r3 = await gossipWith(client, stranger.peer, { timeoutMs: 2000, fetch: stranger.fetch });
    assert.equal(r3.status, 'error');
    assert.match(r3.message, /^note\./);
    assert.equal(stranger.sent.length, 0);
  } finally {
    await server.close();
  }
});
