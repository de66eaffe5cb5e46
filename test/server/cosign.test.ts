// Gathering cosignatures (server/cosign.ts) in one process, against witnesses the test controls:
// one that cosigns every checkpoint it is sent, one that never answers, one that answers with a
// cosignature by the wrong key. Receipts never wait longer than the timeout, bad answers never
// reach a note, and /checkpoint holds only checkpoints that met the quorum.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { type Cosigner, cosignerFromSkey, generateKey, parseNote } from '../../src/core/note.js';
import { evaluateQuorum, parsePolicy, type WitnessPolicy } from '../../src/core/policy.js';
import { Log } from '../../src/log/log.js';
import { Cosigning } from '../../src/server/cosign.js';
import { Metrics } from '../../src/server/metrics.js';
import { cosignatureLine } from '../../src/witness/protocol.js';
import { entry, tempDir } from '../client/helpers.js';

interface FakeWitness {
  cosigner: Cosigner;
  url: string;
  requests: string[];
  server: Server;
}

/** `sign`: the key whose cosignature it answers with (its own unless a test says otherwise); no answer when `hang`. */
async function fakeWitness(
  name: string,
  opts: { hang?: boolean; signWith?: Cosigner; delayMs?: number } = {},
): Promise<FakeWitness> {
  const cosigner = cosignerFromSkey(generateKey(name).skey);
  const requests: string[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      requests.push(body);
      if (opts.hang) return;
      const note = body.slice(body.indexOf('\n\n') + 2);
      const line = cosignatureLine(
        opts.signWith ?? cosigner,
        parseNote(note).text,
        Math.floor(Date.now() / 1000),
      );
      setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end(line), opts.delayMs ?? 0);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { cosigner, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests, server };
}

/** The checkpoint note of a lookup answer, as the server sends it. */
function lookupNote(log: Log): string {
  return (JSON.parse(log.lookupJson('nix', Buffer.from('a')).body) as { checkpoint: string }).checkpoint;
}

describe('cosigning against fake witnesses', () => {
  const closers: Array<() => Promise<unknown> | unknown> = [];
  after(async () => {
    for (const c of closers.reverse()) await c();
  });

  async function setup(ws: FakeWitness[], quorum: string, timeoutMs: number) {
    const log = await Log.create(join(tempDir(), 'log'), 'cosign.test/log', { batchDelayMs: 1 });
    const policyText = `${ws.map((w, i) => `witness W${i + 1} ${w.cosigner.vkey} ${w.url}`).join('\n')}\n${quorum}\n`;
    const policy: WitnessPolicy = parsePolicy(policyText);
    const metrics = new Metrics(new Map([['t', log]]));
    const warnings: string[] = [];
    const cosign = new Cosigning({
      log,
      id: 't',
      policy,
      timeoutMs,
      metrics: metrics.cosign,
      warn: (l) => warnings.push(l),
    });
    log.attachPublisher(cosign);
    closers.push(() => log.close());
    for (const w of ws) closers.push(() => w.server.close());
    return { log, policy, cosign, metrics, warnings };
  }

  test('a witness that never answers: receipts come after the timeout, with the cosignatures there are', async () => {
    const good = await fakeWitness('good.example/w');
    const hang = await fakeWitness('hang.example/w', { hang: true });
    const { log, policy, cosign, metrics, warnings } = await setup(
      [good, hang],
      'group both all W1 W2\nquorum both',
      1500,
    );
    const [r] = await log.submit([entry('a')]);
    const q = evaluateQuorum(policy, r.checkpoint);
    assert.equal(q.met, false);
    assert.deepEqual(q.signed, ['W1']);
    assert.ok(hang.requests.length >= 1, 'the hanging witness was asked');
    // nothing ever met the quorum: /checkpoint serves the latest with what it has
    assert.equal(cosign.checkpoint(), r.checkpoint);
    const text = (await metrics.text()).body;
    assert.match(text, /trustix_cosign_requests_total\{log="t",witness="W2",outcome="timeout"\} 1/);
    assert.match(text, /trustix_cosign_quorum_met\{log="t"\} 0/);
    assert.ok(
      warnings.some((w) => /witness W2 .* is not cosigning: no answer within 1500 ms/.test(w)),
      warnings.join('\n'),
    );
  });

  test('a lookup made while a checkpoint waits for its witnesses carries their cosignatures once ready() resolves', async () => {
    const slow = await fakeWitness('slow.example/w', { delayMs: 1000 });
    const { log, policy, cosign } = await setup([slow], 'quorum W1', 10_000);
    await cosign.ready();
    const submitted = log.submit([entry('a')]);
    while (log.head().size < 1) await new Promise((r) => setTimeout(r, 1));
    // committed, not witnessed yet: an answer now would lack the quorum
    assert.equal(cosign.pending(), true);
    assert.equal(evaluateQuorum(policy, lookupNote(log)).met, false);
    await cosign.ready();
    assert.equal(cosign.pending(), false);
    const note = lookupNote(log);
    assert.equal(evaluateQuorum(policy, note).met, true);
    assert.equal((await submitted)[0].checkpoint, note);
  });

  test('a cosignature by another key is not appended; /checkpoint keeps the last checkpoint that met the quorum', async () => {
    const good = await fakeWitness('good2.example/w');
    const impostor = await fakeWitness('bad.example/w', {
      signWith: cosignerFromSkey(generateKey('bad.example/w').skey),
    });
    const { log, policy, cosign, metrics } = await setup([good, impostor], 'quorum W1', 2000);
    const [first] = await log.submit([entry('a')]);
    assert.equal(evaluateQuorum(policy, first.checkpoint).met, true);
    assert.deepEqual(evaluateQuorum(policy, first.checkpoint).signed, ['W1']);
    assert.equal(parseNote(first.checkpoint).signatures.length, 2, 'the log and W1, not the impostor');
    assert.equal(cosign.checkpoint(), first.checkpoint);
    assert.match((await metrics.text()).body, /witness="W2",outcome="bad-response"\} 1/);
    // W1 goes away: the next checkpoint cannot meet the quorum, /checkpoint stays where it was
    await new Promise<void>((r) => good.server.close(() => r()));
    good.server.closeAllConnections();
    const [second] = await log.submit([entry('b')]);
    assert.equal(evaluateQuorum(policy, second.checkpoint).met, false);
    assert.equal(cosign.checkpoint(), first.checkpoint);
    assert.equal(log.head().size, 2);
  });
});
