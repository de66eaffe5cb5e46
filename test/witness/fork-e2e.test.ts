// A log that forks, with real processes: two `trustix serve` state directories sharing one signing
// key (one directory copied, then different entries submitted to each). Three `trustix witness`
// servers cosign fork A; a user verifies fork B. `trustix gossip` catches the split view and writes
// a proof, the witnesses refuse the user's checkpoint and keep theirs, `trustix verify` proves both
// with only the log's key, and a tampered proof is not proven.
import assert from 'node:assert/strict';
import { cpSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LogClient } from '../../src/client/client.js';
import { generateKey } from '../../src/core/note.js';
import { entry } from '../client/helpers.js';
import {
  cleanup,
  runCli as cli,
  type RunningServer,
  startServer,
  startWitnesses,
  tempDir,
  token,
  writeConfig,
} from '../fixtures/server-helpers.js';

async function submit(prefix: string, vkey: string, state: string, keys: string[]): Promise<void> {
  await new LogClient({ url: prefix, vkey }).submit(
    keys.map((k) => entry(k)),
    { token: token(state) },
  );
}

/** POST add-checkpoint of `prefix`'s current checkpoint from `old`, with the log's proof. */
async function addCheckpoint(
  witness: string,
  prefix: string,
  old: number,
): Promise<{ status: number; body: string }> {
  const note = await (await fetch(`${prefix}checkpoint`)).text();
  const size = Number(note.split('\n')[1]);
  let proof: string[] = [];
  if (old !== 0)
    proof = (
      (await (await fetch(`${prefix}proof/consistency?old=${old}&new=${size}`)).json()) as { proof: string[] }
    ).proof;
  const res = await fetch(`${witness}/add-checkpoint`, {
    method: 'POST',
    body: `old ${old}\n${proof.map((p) => `${p}\n`).join('')}\n${note}`,
  });
  return { status: res.status, body: await res.text() };
}

describe('a log that forks is caught by the witnesses and by a client, with proof files', () => {
  const dir = tempDir('trustix-fork-');
  const stateA = join(dir, 'node-a');
  const stateB = join(dir, 'node-b');
  let logA: RunningServer;
  let logB: RunningServer;
  let witnesses: RunningServer[] = [];
  let prefixA: string;
  let prefixB: string;
  let vkey: string;

  before(async () => {
    // one history of 5 entries, then two directories with the same key go separate ways
    const first = await startServer(['--state', stateA, '--listen', '127.0.0.1:0']);
    await submit(`${first.url}/logs/default/`, first.vkey, stateA, ['c0', 'c1', 'c2', 'c3', 'c4']);
    await first.stop();
    cpSync(stateA, stateB, { recursive: true });
    [logA, logB] = await Promise.all([
      startServer(['--state', stateA, '--listen', '127.0.0.1:0']),
      startServer(['--state', stateB, '--listen', '127.0.0.1:0']),
    ]);
    vkey = logA.vkey;
    assert.equal(logB.vkey, vkey, 'one signing key');
    prefixA = `${logA.url}/logs/default/`;
    prefixB = `${logB.url}/logs/default/`;
    await submit(prefixA, vkey, stateA, ['a5', 'a6']);
    await submit(prefixB, vkey, stateB, ['b5', 'b6', 'b7']);
    witnesses = await startWitnesses(dir, vkey);
    // the witnesses are shown fork A (size 7) and cosign it
    for (const w of witnesses) assert.equal((await addCheckpoint(w.url, prefixA, 0)).status, 200);
  });
  after(async () => {
    await Promise.all([logA, logB, ...witnesses].map((s) => s?.stop()));
    cleanup(dir);
  });

  const trustConfig = (prefix: string, name: string) => {
    const policy = writeConfig(
      dir,
      `${witnesses.map((w, i) => `witness W${i + 1} ${w.vkey} ${w.url}`).join('\n')}\ngroup two-of-three 2 W1 W2 W3\nquorum two-of-three\n`,
      'policy.txt',
    );
    return writeConfig(
      dir,
      `witness_policy = "${policy}"\n\n[[log]]\nurl = "${prefix}"\nvkey = "${vkey}"\n`,
      name,
    );
  };

  test('a user who saw fork A agrees with the witnesses', async () => {
    const trustDir = join(dir, 'trust-a');
    assert.equal((await cli(['info', '--url', prefixA, '--vkey', vkey, '--trust-dir', trustDir])).code, 0);
    const r = await cli(['gossip', '--config', trustConfig(prefixA, 'a.toml'), '--trust-dir', trustDir]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal(r.stdout.match(/: agree: /g)?.length, 3, r.stdout);
  });

  let clientProof = '';
  let witnessProof = '';

  test('a user shown fork B: gossip catches the split view and writes a proof; the witnesses refuse B and keep theirs', async () => {
    const trustDir = join(dir, 'trust-b');
    // the user verifies B at size 8 and remembers it
    const info = await cli(['info', '--url', prefixB, '--vkey', vkey, '--trust-dir', trustDir, '--json']);
    assert.equal(info.code, 0, info.stderr);
    assert.equal(JSON.parse(info.stdout).size, 8);

    const r = await cli([
      'gossip',
      '--config',
      trustConfig(prefixB, 'b.toml'),
      '--trust-dir',
      trustDir,
      '--json',
    ]);
    assert.equal(r.code, 4, r.stdout + r.stderr);
    const outcomes = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.equal(outcomes.length, 3);
    for (const o of outcomes) {
      assert.equal(o.status, 'split-view', JSON.stringify(o));
      assert.deepEqual([o.yourSize, o.theirSize], [8, 7]);
      // the user's checkpoint, sent with the log's own proof, is refused by every witness
      assert.match(o.sent, /^422 /);
    }
    const proofs = readdirSync(join(trustDir, 'misbehaviour'));
    assert.equal(proofs.length, 1, 'the same contradiction is one file');
    clientProof = join(trustDir, 'misbehaviour', proofs[0]);
    assert.equal(outcomes[0].proofFile, clientProof);

    for (let i = 1; i <= 3; i++) {
      const kept = readdirSync(join(dir, `w${i}`, 'evidence'));
      assert.equal(kept.length, 1, `witness ${i} kept a record`);
      assert.match(kept[0], /^consistency-proof-failed-/);
      witnessProof = join(dir, `w${i}`, 'evidence', kept[0]);
    }
    // the witnesses still stand by fork A
    const again = await addCheckpoint(witnesses[0].url, prefixB, 7);
    assert.equal(again.status, 422, again.body);
  });

  test('trustix verify proves both files with only the log key; a tampered proof is not proven', async () => {
    const ok = await cli(['verify', clientProof, witnessProof, '--vkey', vkey]);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.equal(
      ok.stdout.match(/: PROVEN: .* signed a tree of size 8 that does not extend its tree of size 7/g)
        ?.length,
      2,
      ok.stdout,
    );

    // one proof hash changed: it no longer leads to the signed root of size 8
    const p = JSON.parse(readFileSync(clientProof, 'utf8'));
    p.proof[0] = Buffer.alloc(32, 1).toString('base64');
    const tampered = join(dir, 'tampered.json');
    writeFileSync(tampered, JSON.stringify(p));
    const bad = await cli(['verify', tampered, '--vkey', vkey, '--json']);
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    assert.equal(JSON.parse(bad.stdout).proven, false);

    // a checkpoint edited after signing: its signature fails
    const q = JSON.parse(readFileSync(clientProof, 'utf8'));
    q.checkpoints[0] = q.checkpoints[0].replace(/\n7\n/, '\n6\n');
    writeFileSync(tampered, JSON.stringify(q));
    const forged = await cli(['verify', tampered, '--vkey', vkey]);
    assert.equal(forged.code, 1, forged.stdout);
    assert.match(forged.stdout, /NOT PROVEN .*not signed by the log's key/);

    // another key of the same name proves nothing; no key at all is a usage error; a
    // malformed record is bad input
    const other = await cli(['verify', clientProof, '--vkey', generateKey(vkey.split('+')[0]).vkey]);
    assert.equal(other.code, 1, other.stdout + other.stderr);
    assert.equal((await cli(['verify', clientProof])).code, 2);
    writeFileSync(tampered, '{"type":"trustix-misbehaviour/v2","kind":"nonsense"}');
    const malformed = await cli(['verify', tampered, '--vkey', vkey]);
    assert.equal(malformed.code, 2, malformed.stdout + malformed.stderr);
  });
  test('the user then shown fork A: the client refuses it and prints where the proof is', async () => {
    // A grows past the size the user trusts in B (8), so A's own proof from 8 shows the fork
    await submit(prefixA, vkey, stateA, ['a7', 'a8']);
    const trustDir = join(dir, 'trust-b');
    const r = await cli(['info', '--url', prefixA, '--vkey', vkey, '--trust-dir', trustDir]);
    assert.equal(r.code, 4, r.stdout + r.stderr);
    const m = /trust\.fork-inconsistent: log forked: .*; proof written to (\S+\.json)/.exec(r.stderr);
    assert.ok(m, r.stderr);
    const v = await cli(['verify', m[1], '--vkey', vkey]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    assert.match(v.stdout, /PROVEN: .* signed a tree of size 9 that does not extend its tree of size 8/);
  });
});
