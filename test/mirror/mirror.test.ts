// The auditing mirror against real `trustix serve` logs: the copy it serves verifies against the
// origin's key, carries the mirror's cosignature that a witness policy can require, and a log whose
// signed map line is not the index of its entries is caught with a proof file.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LogClient } from '../../src/client/client.js';
import { WitnessQuorumError } from '../../src/client/errors.js';
import { toHex } from '../../src/core/bytes.js';
import { parseProof, verifyProof } from '../../src/core/misbehaviour.js';
import { cosignerFromSkey, generateKey, parseNote } from '../../src/core/note.js';
import { parsePolicy } from '../../src/core/policy.js';
import { parseDecideConfig } from '../../src/decide/config.js';
import { Decider, formatDecision } from '../../src/decide/decide.js';
import { Mirror } from '../../src/mirror/mirror.js';
import { gossipWith } from '../../src/misbehaviour/gossip.js';
import { entry } from '../client/helpers.js';
import {
  cleanup,
  type RunningServer,
  startServer,
  tempDir,
  writeConfig,
} from '../fixtures/server-helpers.js';
import { appendByHand, appendWithLyingMap, entries, honestLog } from './fixtures.js';

const MAIN = new URL('../../src/cli/main.ts', import.meta.url).pathname;

function trust(logs: Array<{ name: string; url: string; vkey: string }>) {
  return parseDecideConfig(
    logs.map((l) => `[[log]]\nname = "${l.name}"\nurl = "${l.url}"\nvkey = "${l.vkey}"\n`).join('\n'),
  );
}

/** Serves the log in `dir` (made by honestLog) as the node's `default` log. */
async function serve(dir: string, origin: string, listen = '127.0.0.1:0'): Promise<RunningServer> {
  const config = writeConfig(
    dir,
    `[[log]]\nid = "default"\norigin = "${origin}"\ndir = "${dir}"\n`,
    '../serve-' + origin.split('.')[0] + '.toml',
  );
  return startServer(['--config', config, '--listen', listen]);
}

describe('trustix mirror', () => {
  const dir = tempDir('trustix-mirror-');
  let honest: RunningServer;
  let liar: RunningServer;
  let empty: RunningServer;
  let emptyVkey: string;
  let honestVkey: string;
  let liarVkey: string;
  let mirror: Mirror;
  const lines: string[] = [];

  before(async () => {
    honestVkey = await honestLog(join(dir, 'honest'), 'honest.test/log', [entries(700), entries(300, 'n')]);
    liarVkey = await honestLog(join(dir, 'liar'), 'liar.test/log', [entries(600, 'l')]);
    honest = await serve(join(dir, 'honest'), 'honest.test/log');
    liar = await serve(join(dir, 'liar'), 'liar.test/log');
    emptyVkey = await honestLog(join(dir, 'empty'), 'empty.test/log', []);
    empty = await serve(join(dir, 'empty'), 'empty.test/log');
    const config = trust([
      { name: 'honest', url: `${honest.url}/logs/default/`, vkey: honestVkey },
      { name: 'liar', url: `${liar.url}/logs/default/`, vkey: liarVkey },
      { name: 'empty.test/log', url: `${empty.url}/logs/default/`, vkey: emptyVkey },
    ]);
    mirror = await Mirror.open(
      { stateDir: join(dir, 'mirror'), logs: config.logs, host: '127.0.0.1', port: 0, chunkBundles: 1 },
      (l) => lines.push(l),
    );
  });

  after(async () => {
    await mirror?.close();
    await honest?.stop();
    await liar?.stop();
    await empty?.stop();
    cleanup(dir);
  });

  test('creates its key 0600, copies and audits each log, and says so', async () => {
    const key = join(dir, 'mirror', 'mirror.key');
    assert.equal(statSync(key).mode & 0o777, 0o600);
    assert.ok(mirror.keyCreated);
    await mirror.pollAll();
    const [h, l] = mirror.statuses();
    assert.equal(h.state, 'ok', h.reason);
    assert.equal(h.size, 1000);
    assert.ok(h.audited);
    assert.equal(l.size, 600);
    assert.ok(l.audited);
    // an empty log is audited too (empty tree, empty index); copies are served under the
    // tlog-mirror origin hash
    const e = mirror.statuses()[2];
    assert.ok(e.audited, e.reason);
    assert.ok(e.prefix.endsWith(`/logs/${createHash('sha256').update('empty.test/log').digest('hex')}/`));
    const cp = await new LogClient({ url: e.prefix, vkey: emptyVkey }).checkpoint();
    assert.equal(cp.checkpoint.size, 0);
    assert.equal(parseNote(cp.note).signatures.length, 2);
    // 1000 entries in chunks of one bundle: progress while catching up, then the audited size
    assert.ok(
      lines.some((x) => /^log honest: audited size 1000: map line matches/.test(x)),
      lines.join('\n'),
    );
  });

  test('serves the copy: lookups through the mirror verify against the origin key', async () => {
    const prefix = mirror.statuses()[0].prefix;
    const client = new LogClient({ url: prefix, vkey: honestVkey });
    const present = await client.lookup('nix', 'm-5');
    assert.equal(present.status, 'present');
    assert.equal(present.status === 'present' && toHex(present.entry.value), toHex(entry('m-5').value));
    const absent = await client.lookup('nix', 'never-logged');
    assert.equal(absent.status, 'absent');
    const cp = await client.checkpoint();
    assert.equal(cp.checkpoint.size, 1000);
    // the origin's signature and the mirror's cosignature
    const sigs = parseNote(cp.note).signatures.map((s) => s.name);
    assert.deepEqual(sigs, ['honest.test/log', mirror.cosigner.name]);
    // tiles and entry bundles are served as the node serves them
    const bundle = await client.entryBundle(0, 256);
    assert.equal(bundle.length, 256);
  });

  test('a witness policy can require the mirror: met through the mirror, not by the bare log', async () => {
    const policy = parsePolicy(`log ${honestVkey}\nwitness m ${mirror.vkey}\nquorum m\n`);
    const viaMirror = new LogClient({
      url: mirror.statuses()[0].prefix,
      vkey: honestVkey,
      witnessPolicy: policy,
    });
    assert.equal((await viaMirror.lookup('nix', 'm-6')).status, 'present');
    const direct = new LogClient({
      url: `${honest.url}/logs/default/`,
      vkey: honestVkey,
      witnessPolicy: policy,
    });
    await assert.rejects(
      direct.checkpoint(),
      (err) => err instanceof WitnessQuorumError && /lacks the witness quorum/.test(err.message),
    );
    // another cosigner's key is not the mirror's
    const other = cosignerFromSkey(generateKey('other.test/mirror').skey);
    const wrong = parsePolicy(`witness x ${other.vkey}\nquorum x\n`);
    const client = new LogClient({
      url: mirror.statuses()[0].prefix,
      vkey: honestVkey,
      witnessPolicy: wrong,
    });
    await assert.rejects(client.checkpoint(), WitnessQuorumError);
  });

  test('a log whose map line lies is caught, with a proof; the copy stays at what it audited', async () => {
    const port = new URL(liar.url).port;
    await liar.stop();
    const { size } = await appendWithLyingMap(join(dir, 'liar'), entries(300, 'x'));
    liar = await serve(join(dir, 'liar'), 'liar.test/log', `127.0.0.1:${port}`);
    await mirror.pollAll();
    const l = mirror.statuses()[1];
    assert.equal(l.state, 'failed');
    assert.equal(l.check, 'mirror.map-mismatch');
    assert.ok(l.audited, 'the last audited checkpoint is still served');
    const proofs = readdirSync(join(dir, 'mirror', 'proofs'));
    assert.equal(proofs.length, 1);
    const text = readFileSync(join(dir, 'mirror', 'proofs', proofs[0]), 'utf8');
    const proof = parseProof(text);
    assert.equal(proof.kind, 'map-mismatch');
    const verdict = verifyProof(proof, liarVkey);
    assert.ok(verdict.proven, verdict.proven ? '' : verdict.reason);
    assert.match(verdict.what, new RegExp(`size ${size} whose map line`));
    // the proof proves nothing under another key
    assert.equal(verifyProof(proof, generateKey('liar.test/log').vkey).proven, false);
    // and `trustix verify` checks it offline with the log's key
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', MAIN, 'verify', '--vkey', liarVkey, join(dir, 'mirror', 'proofs', proofs[0])],
      { encoding: 'utf8' },
    );
    assert.equal(r.status, 0, r.stdout + r.stderr);
    // served: the copy's checkpoint is the one audited before the lie
    const client = new LogClient({ url: l.prefix, vkey: liarVkey });
    assert.equal((await client.checkpoint()).checkpoint.size, 600);
    // later rounds keep failing
    await mirror.pollAll();
    assert.equal(mirror.statuses()[1].check, 'mirror.map-mismatch');
    assert.ok(existsSync(join(dir, 'mirror', 'proofs', proofs[0])));
  });

  test('follows a growing log; a policy can require witnesses and the mirror together', async () => {
    const port = new URL(honest.url).port;
    await honest.stop();
    // the log gathered a witness's cosignature for its new checkpoint
    const witness = cosignerFromSkey(generateKey('w1.test/witness').skey);
    await appendByHand(join(dir, 'honest'), entries(50, 'g'), { cosigners: [witness] });
    honest = await serve(join(dir, 'honest'), 'honest.test/log', `127.0.0.1:${port}`);
    await mirror.pollAll();
    const h = mirror.statuses()[0];
    assert.equal(h.size, 1050);
    assert.ok(h.audited);
    const both = parsePolicy(
      `log ${honestVkey}\nwitness w1 ${witness.vkey}\nwitness m ${mirror.vkey}\ngroup both all w1 m\nquorum both\n`,
    );
    const viaMirror = new LogClient({ url: h.prefix, vkey: honestVkey, witnessPolicy: both });
    assert.equal((await viaMirror.lookup('nix', 'g-49')).status, 'present');
    const cp = await viaMirror.checkpoint();
    assert.deepEqual(
      parseNote(cp.note).signatures.map((s) => s.name),
      ['honest.test/log', 'w1.test/witness', mirror.cosigner.name],
    );
    // the log alone has the witness but not the mirror
    const direct = new LogClient({
      url: `${honest.url}/logs/default/`,
      vkey: honestVkey,
      witnessPolicy: both,
    });
    await assert.rejects(
      direct.checkpoint(),
      (err) => err instanceof WitnessQuorumError && /signed by w1/.test(err.message),
    );
  });

  test('trustix gossip reads the mirror as a tlog-mirror monitoring prefix', async () => {
    const client = new LogClient({ url: `${honest.url}/logs/default/`, vkey: honestVkey });
    const r = await gossipWith(client, { name: 'm', url: `${mirror.url}/logs` }, { timeoutMs: 10_000 });
    assert.equal(r.status, 'agree', r.message);
    assert.equal(r.theirSize, 1050);
  });

  test('add-checkpoint (tlog-mirror): a gossiped checkpoint becomes the pending one, with the witness answers and no cosignature', async () => {
    const post = (body: string) => fetch(`${mirror.url}/logs/add-checkpoint`, { method: 'POST', body });
    // the log grows; the mirror has not polled it since
    const port = new URL(honest.url).port;
    await honest.stop();
    await appendByHand(join(dir, 'honest'), entries(10, 'p'));
    honest = await serve(join(dir, 'honest'), 'honest.test/log', `127.0.0.1:${port}`);
    const client = new LogClient({ url: `${honest.url}/logs/default/`, vkey: honestVkey });
    const r = await gossipWith(client, { name: 'm', url: `${mirror.url}/logs` }, { timeoutMs: 10_000 });
    assert.deepEqual([r.status, r.yourSize, r.theirSize, r.sent], ['agree', 1060, 1050, '200 accepted']);
    const note = (await client.checkpoint()).note;
    // the pending checkpoint is now at 1060: from 1050 is stale, and the answer says the size
    let res = await post(`old 1050\n\n${note}`);
    assert.equal(res.status, 409);
    assert.equal(res.headers.get('content-type'), 'text/x.tlog.size');
    assert.equal(await res.text(), '1060\n');
    res = await post(`old 1060\n\n${note}`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), '');
    res = await post(`old 0\n\n${note.replace('honest.test/log\n', 'unknown.test/log\n')}`);
    assert.equal(res.status, 404);
    res = await post(`old 1060\n\n${note.replace('\n1060\n', '\n1061\n')}`);
    assert.equal(res.status, 403);
    res = await post('not a request');
    assert.equal(res.status, 400);
    // not cosigned by the mirror before it copied and audited the entries; then it is
    assert.equal(mirror.statuses()[0].size, 1050);
    const served = new LogClient({ url: mirror.statuses()[0].prefix, vkey: honestVkey });
    assert.equal((await served.checkpoint()).checkpoint.size, 1050);
    await mirror.pollAll();
    const h = mirror.statuses()[0];
    assert.deepEqual([h.state, h.size, h.audited], ['ok', 1060, true]);
  });

  test('the deciding config falls back on mirrors when the log is down; answers still verify against its key', async () => {
    const prefix = mirror.statuses()[0].prefix;
    const config = parseDecideConfig(
      `[[log]]\nname = "honest"\nurl = "${honest.url}/logs/default/"\nvkey = "${honestVkey}"\nmirrors = ["http://127.0.0.1:9/logs/none/", "${prefix}"]\n[procedure.default]\ntype = "log"\nlog = "honest"\n`,
    );
    assert.deepEqual(config.logs[0].mirrors, ['http://127.0.0.1:9/logs/none/', prefix]);
    await honest.stop();
    const decider = new Decider(config);
    try {
      const { decision, results } = await decider.decide('m-7');
      assert.equal(results[0].status, 'present', results[0].reason);
      assert.equal(results[0].via, prefix);
      assert.ok(decision.decided);
      assert.equal(decision.value, toHex(entry('m-7').value));
      assert.match(formatDecision(decision), /via mirror http/);
    } finally {
      await decider.close();
    }
    // a mirror that serves another log's copy does not verify against this log's key
    const wrong = parseDecideConfig(
      `[[log]]\nname = "honest"\nurl = "${honest.url}/logs/default/"\nvkey = "${honestVkey}"\nmirrors = ["${mirror.statuses()[1].prefix}"]\n`,
    );
    const d2 = new Decider(wrong);
    try {
      const { results } = await d2.decide('m-7');
      assert.equal(results[0].status, 'failed');
      assert.match(results[0].check ?? '', /^note\./);
    } finally {
      await d2.close();
    }
  });

  test('config: mirrors must be URLs of a log given by url', () => {
    const vkey = generateKey('x.test/log').vkey;
    assert.throws(
      () => parseDecideConfig(`[[log]]\nstate = "/tmp/x"\nvkey = "${vkey}"\nmirrors = ["http://m/"]\n`),
      /log\[0\]\.mirrors: only a log given by url/,
    );
    assert.throws(
      () => parseDecideConfig(`[[log]]\nurl = "http://l/"\nvkey = "${vkey}"\nmirrors = ["ftp://m/"]\n`),
      /log\[0\]\.mirrors\[0\]: not an http\(s\) URL/,
    );
  });
});
