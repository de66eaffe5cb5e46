// `trustix witness` as a real process, driven from the C2SP tlog-witness v1.0.0 text: every answer of
// add-checkpoint, cosignatures checked with independent code (spec-log.ts), restarts, concurrent
// requests and a SIGKILL right after a 200.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmodSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parseProof, verifyProof } from '../../src/core/misbehaviour.js';
import {
  cleanup,
  type RunningServer,
  runExpectingFailure,
  startCommand,
  tempDir,
  writeConfig,
} from '../fixtures/server-helpers.js';
import { addCheckpointBody, checkCosignature, mth, NoteKey, SpecLog } from './spec-log.js';

interface Answer {
  status: number;
  type: string;
  body: string;
}

async function add(url: string, body: string): Promise<Answer> {
  const res = await fetch(`${url}/add-checkpoint`, { method: 'POST', body });
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: await res.text() };
}

/** Asks for a cosignature of `log`'s checkpoint of `size` from `oldSize`, with a correct proof. */
function request(log: SpecLog, oldSize: number, size: number, extensions?: string[]): string {
  return addCheckpointBody(oldSize, log.proof(oldSize, size), log.checkpoint(size, { extensions }));
}

function assertConflict(a: Answer, size: number): void {
  assert.equal(a.status, 409, a.body);
  assert.equal(a.type, 'text/x.tlog.size');
  assert.equal(a.body, `${size}\n`);
}

function startWitness(dir: string, args: string[]): Promise<RunningServer> {
  return startCommand('witness', ['--state', dir, '--listen', '127.0.0.1:0', ...args]);
}

describe('add-checkpoint answers', () => {
  const dir = tempDir('trustix-witness-');
  const logA = new SpecLog('example.com/log-a').grow(70);
  // Its key name is not the origin: declared with an explicit origin in the config file.
  const logB = new SpecLog('example.com/log-b', 'log-b-key').grow(10);
  let w: RunningServer;
  const cosigned = (a: Answer, body: string): number => {
    assert.equal(a.status, 200, a.body);
    const lines = a.body.split(/(?<=\n)/);
    assert.ok(lines.length >= 1);
    let t = 0;
    for (const line of lines) t = checkCosignature(line, w.vkey, body);
    assert.ok(t > 0, 'timestamp is never 0');
    assert.ok(Math.abs(t - Date.now() / 1000) < 600, `timestamp ${t} is now`);
    return t;
  };

  before(async () => {
    const config = writeConfig(
      dir,
      `[[log]]\norigin = "${logB.origin}"\nvkey = ["${logB.key.vkey}"]\n`,
      'witness.toml',
    );
    w = await startWitness(join(dir, 'state'), [
      '--log',
      logA.key.vkey,
      '--config',
      config,
      '--name',
      'w1.example/w',
    ]);
  });
  after(async () => {
    await w?.stop();
    cleanup(dir);
  });

  test('first start: key file 0600, vkey line then ready', () => {
    assert.match(w.vkey, /^w1\.example\/w\+[0-9a-f]{8}\+/);
    assert.equal(statSync(join(dir, 'state', 'witness.key')).mode & 0o777, 0o600);
    const i = w.stdout.findIndex((l) => l.includes('vkey'));
    assert.ok(i >= 0 && i < w.stdout.indexOf('ready'));
  });

  test('404 for an unknown origin', async () => {
    const other = new SpecLog('example.com/unknown').grow(3);
    assert.equal((await add(w.url, request(other, 0, 3))).status, 404);
  });

  test('403 without a trusted signature, or with a trusted key whose signature fails', async () => {
    // Same name, another key: its key ID differs, so the line is from an unknown key and ignored.
    const impostor = new NoteKey(logA.origin);
    const a1 = await add(w.url, addCheckpointBody(0, [], logA.checkpoint(3, { signers: [impostor] })));
    assert.equal(a1.status, 403, a1.body);
    const good = logA.checkpoint(3);
    const body = logA.body(3);
    const sig = good.slice(good.lastIndexOf('\u2014'));
    const raw = Buffer.from(sig.trim().split(' ')[2], 'base64');
    raw[10] ^= 1;
    const forged = `${body}\n\u2014 ${logA.origin} ${raw.toString('base64')}\n`;
    const a2 = await add(w.url, addCheckpointBody(0, [], forged));
    assert.equal(a2.status, 403, a2.body);
    // A bad trusted signature fails the note even beside a good one.
    const a3 = await add(
      w.url,
      addCheckpointBody(0, [], `${good}\u2014 ${logA.origin} ${raw.toString('base64')}\n`),
    );
    assert.equal(a3.status, 403, a3.body);
  });

  test('400 for an old size above the size, and for malformed requests', async () => {
    assert.equal((await add(w.url, addCheckpointBody(5, [], logA.checkpoint(3)))).status, 400);
    const cp = logA.checkpoint(3);
    const malformed = [
      `old 01\n\n${cp}`,
      `old -1\n\n${cp}`,
      `old 0\n${cp}`, // no empty line before the checkpoint: the origin is read as a proof line
      `old 0\nnot-base64!\n\n${cp}`,
      addCheckpointBody(
        0,
        Array.from({ length: 64 }, () => Buffer.alloc(32)),
        cp,
      ),
      'old 0\n\n',
      `old 0\n\n${logA.body(3)}`, // no signatures
      `old 0\n\n${logA.origin}\nthree\nAAAA\n\n${logA.key.line('x')}`,
    ];
    for (const body of malformed) {
      const a = await add(w.url, body);
      assert.equal(a.status, 400, `${JSON.stringify(body.slice(0, 40))}: ${a.status} ${a.body}`);
    }
  });

  test('422 for a size-0 checkpoint without the empty-tree root, and a proof from old size 0', async () => {
    const wrongEmpty = logA.checkpoint(0, { root: mth([Buffer.from('x')]) });
    assert.equal((await add(w.url, addCheckpointBody(0, [], wrongEmpty))).status, 422);
    const withProof = addCheckpointBody(0, [mth(logA.leaves.slice(0, 1))], logA.checkpoint(3));
    assert.equal((await add(w.url, withProof)).status, 422);
  });

  test('200 cosignatures, verified over the exact message bytes', async () => {
    cosigned(await add(w.url, request(logA, 0, 0)), logA.body(0));
    cosigned(await add(w.url, request(logA, 0, 5)), logA.body(5));
    cosigned(await add(w.url, request(logA, 5, 13)), logA.body(13));
    // The same checkpoint again (old size = size, no proof) is cosigned again.
    cosigned(await add(w.url, request(logA, 13, 13)), logA.body(13));
    // Extension lines are opaque to a witness, and part of the cosigned message.
    const ext = ['x-other stuff', 'map is not first here, nor base64'];
    cosigned(await add(w.url, request(logA, 13, 16, ext)), logA.body(16, ext));
    // A checkpoint signed by the log and by unknown keys: the unknown ones are ignored.
    const stranger = new NoteKey('someone.else/key');
    const multi = logA.checkpoint(20, { signers: [stranger, logA.key] });
    cosigned(await add(w.url, addCheckpointBody(16, logA.proof(16, 20), multi)), logA.body(20));
    // A log whose key name differs from its origin (config file).
    cosigned(await add(w.url, request(logB, 0, 7)), logB.body(7));
  });

  test('409 for a stale old size: the latest cosigned size as text/x.tlog.size', async () => {
    assertConflict(await add(w.url, request(logA, 0, 25)), 20);
    assertConflict(await add(w.url, request(logA, 16, 25)), 20);
    assertConflict(await add(w.url, request(logB, 3, 8)), 7);
  });

  test('422 for a bad consistency proof; evidence kept', async () => {
    const proof = logA.proof(20, 30);
    proof[0] = Buffer.alloc(32, 7);
    const a = await add(w.url, addCheckpointBody(20, proof, logA.checkpoint(30)));
    assert.equal(a.status, 422, a.body);
    // A proof of the wrong length also fails.
    assert.equal((await add(w.url, addCheckpointBody(20, proof.slice(1), logA.checkpoint(30)))).status, 422);
    const names = readdirSync(join(dir, 'state', 'evidence')).filter((n) => n.startsWith('consistency'));
    assert.equal(names.length, 1, 'one record per pair of checkpoints');
    const e = parseProof(readFileSync(join(dir, 'state', 'evidence', names[0]), 'utf8'));
    assert.equal(e.kind, 'consistency-proof-failed');
    assert.deepEqual(e.checkpoints[1], logA.checkpoint(30));
    // A wrong proof of a genuine checkpoint is a lead, not a proof that the log forked.
    const v = verifyProof(e, logA.key.vkey);
    assert.equal(v.proven, false);
    if (!v.proven) assert.match(v.reason, /bad proof, not a fork/);
  });

  test('422 for a different root at the cosigned size; evidence kept and served', async () => {
    const forked = logA.checkpoint(20, { root: mth([...logA.leaves.slice(0, 19), Buffer.from('fork')]) });
    const a = await add(w.url, addCheckpointBody(20, [], forked));
    assert.equal(a.status, 422, a.body);
    // The same fork from a stale old size is a 409, and still kept as evidence (once).
    assertConflict(await add(w.url, addCheckpointBody(13, logA.proof(13, 20), forked)), 20);
    const list = await (await fetch(`${w.url}/evidence`)).text();
    const names = list.split('\n').filter((n) => n.startsWith('same-size'));
    assert.equal(names.length, 1, list);
    const e = parseProof(await (await fetch(`${w.url}/evidence/${names[0]}`)).text());
    assert.equal(e.origin, logA.origin);
    assert.equal(e.checkpoints[1], forked);
    assert.equal(verifyProof(e, logA.key.vkey).proven, true);
    // The witness's state did not move.
    cosigned(await add(w.url, request(logA, 20, 22)), logA.body(22));
  });

  test('GET <origin hash>/checkpoint serves the latest cosigned checkpoint with both signatures', async () => {
    const hash = createHash('sha256').update(logA.origin).digest('hex');
    const res = await fetch(`${w.url}/${hash}/checkpoint`);
    assert.equal(res.status, 200);
    const note = await res.text();
    const body = logA.body(22);
    assert.ok(note.startsWith(`${body}\n${logA.key.line(body)}`), note);
    const last = note.slice(note.lastIndexOf('\u2014'));
    checkCosignature(last, w.vkey, body);
    const unknown = createHash('sha256').update('nobody').digest('hex');
    assert.equal((await fetch(`${w.url}/${unknown}/checkpoint`)).status, 404);
  });

  test('other methods on add-checkpoint are 405; metrics count answers per log', async () => {
    const res = await fetch(`${w.url}/add-checkpoint`);
    assert.equal(res.status, 405);
    assert.equal(res.headers.get('allow'), 'POST');
    const metrics = await (await fetch(`${w.url}/metrics`)).text();
    assert.match(
      metrics,
      /trustix_witness_add_checkpoint_total\{origin="example.com\/log-a",status="403"\} 3/,
    );
    assert.match(metrics, /trustix_witness_cosigned_size\{origin="example.com\/log-a"\} 22/);
    assert.match(
      metrics,
      /trustix_witness_evidence_total\{origin="example.com\/log-a",kind="same-size-different-root"\} 2/,
    );
  });

  test('concurrent requests from one old size: exactly one 200, the others 409', async () => {
    const sizes = Array.from({ length: 12 }, (_, i) => 23 + i);
    const answers = await Promise.all(sizes.map((s) => add(w.url, request(logA, 22, s))));
    const ok = answers.flatMap((a, i) => (a.status === 200 ? [sizes[i]] : []));
    assert.equal(ok.length, 1, answers.map((a) => a.status).join(' '));
    for (const a of answers) if (a.status !== 200) assertConflict(a, ok[0]);
    assertConflict(await add(w.url, request(logA, 0, 40)), ok[0]);
  });

  test('two witness processes on one state directory: still exactly one 200 per old size', async () => {
    const w2 = await startWitness(join(dir, 'state'), ['--log', logA.key.vkey]);
    try {
      assert.equal(w2.vkey, w.vkey);
      let old = Number((await add(w.url, request(logA, 0, 40))).body);
      for (let round = 0; round < 3; round++) {
        const sizes = Array.from({ length: 8 }, (_, i) => old + 1 + i);
        const answers = await Promise.all(
          sizes.map((s, i) => add(i % 2 ? w2.url : w.url, request(logA, old, s))),
        );
        const ok = answers.flatMap((a, i) => (a.status === 200 ? [sizes[i]] : []));
        assert.equal(ok.length, 1, `round ${round}: ${answers.map((a) => a.status).join(' ')}`);
        for (const a of answers) if (a.status !== 200) assertConflict(a, ok[0]);
        old = ok[0];
      }
    } finally {
      await w2.stop();
    }
  });
});

describe('state across restarts', () => {
  const dir = tempDir('trustix-witness-');
  const state = join(dir, 'state');
  const log = new SpecLog('example.com/restart').grow(50);
  after(() => cleanup(dir));

  test('the cosigned size and the key survive a restart, and a SIGKILL right after a 200', async () => {
    let w = await startWitness(state, ['--log', log.key.vkey]);
    const vkey = w.vkey;
    assert.equal((await add(w.url, request(log, 0, 10))).status, 200);
    await w.stop();

    w = await startWitness(state, ['--log', log.key.vkey]);
    assert.equal(w.vkey, vkey, 'same key after a restart');
    assertConflict(await add(w.url, request(log, 0, 12)), 10);
    const a = await add(w.url, request(log, 10, 31));
    w.proc.kill('SIGKILL');
    assert.equal(a.status, 200, a.body);
    await w.exited;

    w = await startWitness(state, ['--log', log.key.vkey]);
    try {
      assertConflict(await add(w.url, request(log, 0, 40)), 31);
      assert.equal((await add(w.url, request(log, 31, 40))).status, 200);
    } finally {
      await w.stop();
    }
  });

  /** Runs the witness on this state directory, expecting it to refuse to start; returns stderr. */
  const refused = async (...args: string[]): Promise<string> => {
    const r = await runExpectingFailure('witness', ['--state', state, '--listen', '127.0.0.1:0', ...args]);
    assert.notEqual(r.code, 0);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    return r.stderr;
  };

  test("refuses a key file that others can read, and a --name that is not the key's", async () => {
    chmodSync(join(state, 'witness.key'), 0o644);
    assert.match(await refused('--log', log.key.vkey), /readable by others/);
    chmodSync(join(state, 'witness.key'), 0o600);
    assert.match(await refused('--log', log.key.vkey, '--name', 'other.example/w'), /is named/);
  });

  test('refuses to start without logs, or with a bad key', async () => {
    assert.match(await refused(), /no logs to witness/);
    assert.match(await refused('--log', 'nope'), /--log #1: verifier key/);
  });
});
