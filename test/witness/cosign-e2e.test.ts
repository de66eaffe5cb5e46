// A node gathers cosignatures itself: `trustix serve --witness-policy FILE` with three real
// `trustix witness` processes and a 2-of-3 quorum. Clients holding the policy accept its
// checkpoints, receipts and lookup answers while the quorum holds; with two witnesses killed the node
// still acknowledges writes (within its witness timeout), keeps serving the last checkpoint that met
// the quorum, and the clients refuse the newer ones, naming who signed. A witness that is ahead of
// what the node remembers answers 409 and the node catches up from the size it gives.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { appendFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LogClient } from '../../src/client/client.js';
import { WitnessQuorumError } from '../../src/client/errors.js';
import { MemoryTrustStore } from '../../src/client/trust-store.js';
import { parseNote } from '../../src/core/note.js';
import { evaluateQuorum, parsePolicy, type WitnessPolicy } from '../../src/core/policy.js';
import { parseDecideConfig } from '../../src/decide/config.js';
import { Decider } from '../../src/decide/decide.js';
import { Log } from '../../src/log/log.js';
import { encodeNix32 } from '../../src/nix/base32.js';
import { parseCacheConfig } from '../../src/nix/cache-config.js';
import { CacheProxy } from '../../src/nix/cache-proxy.js';
import { nixEntry } from '../../src/nix/entry.js';
import { generateNixSecretKey } from '../../src/nix/keys.js';
import { narBytes } from '../../src/nix/nar.js';
import { formatNarInfo } from '../../src/nix/narinfo.js';
import { entry } from '../client/helpers.js';
import {
  cleanup,
  type RunningServer,
  startCommand,
  startServer,
  tempDir,
  token,
  writeConfig,
} from '../fixtures/server-helpers.js';

/** witness_timeout_ms: generous, as witnesses that just started on a loaded machine can be slow. */
const TIMEOUT_MS = 20_000;
/** Process start-up on a loaded machine (tsx compiles on start) can take a while. */
const START_MS = 90_000;

function startWitness(dir: string, i: number, logVkey: string, listen = '127.0.0.1:0') {
  return startCommand(
    'witness',
    ['--state', join(dir, `w${i}`), '--listen', listen, '--log', logVkey, '--name', `w${i}.example/witness`],
    START_MS,
  );
}

async function metric(url: string, name: string, labels: string): Promise<number | undefined> {
  const text = await (await fetch(`${url}/metrics`)).text();
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) && line.includes(labels)) return Number(line.split(' ').pop());
  }
  return undefined;
}

describe('a node that gathers cosignatures from three real witnesses', () => {
  const dir = tempDir('trustix-cosign-');
  const state = join(dir, 'node');
  let node: RunningServer;
  const witnesses: RunningServer[] = [];
  let policy: WitnessPolicy;
  let policyFile: string;
  let prefix: string;
  let vkey: string;

  const serve = () =>
    startServer(['--state', state, '--listen', '127.0.0.1:0', '--witness-policy', policyFile], START_MS);
  const client = (trustStore = new MemoryTrustStore()) =>
    new LogClient({ url: prefix, vkey, trustStore, witnessPolicy: policy });
  const write = (keys: string[]) =>
    new LogClient({ url: prefix, vkey }).submit(
      keys.map((k) => entry(k)),
      { token: token(state) },
    );

  before(async () => {
    // first start without witnesses: it creates the log, whose key the witnesses need
    const first = await startServer(['--state', state, '--listen', '127.0.0.1:0'], START_MS);
    vkey = first.vkey;
    await first.stop();
    appendFileSync(join(state, 'trustix.toml'), `witness_timeout_ms = ${TIMEOUT_MS}\n`);
    // one by one, so that after() stops those that started even if one does not
    for (const i of [1, 2, 3]) witnesses.push(await startWitness(dir, i, vkey));
    policyFile = writeConfig(
      dir,
      `${witnesses.map((w, i) => `witness W${i + 1} ${w.vkey} ${w.url}`).join('\n')}
group two-of-three 2 W1 W2 W3
quorum two-of-three
`,
      'policy.txt',
    );
    policy = parsePolicy(`${witnesses.map((w, i) => `witness W${i + 1} ${w.vkey}`).join('\n')}
group two-of-three 2 W1 W2 W3
quorum two-of-three
`);
    node = await serve();
    prefix = `${node.url}/logs/default/`;
  });
  after(async () => {
    await Promise.all([node, ...witnesses].map((s) => s?.stop()));
    cleanup(dir);
  });

  test('checkpoint, receipts and lookups carry the quorum; a policy client accepts them', async () => {
    const c = client();
    const receipts = await c.submit([entry('a'), entry('b')], { token: token(state) });
    assert.equal(receipts.length, 2);
    const signed = evaluateQuorum(policy, receipts[0].checkpoint);
    assert.equal(signed.met, true, JSON.stringify(signed));
    assert.equal((await c.lookup('nix', 'a')).status, 'present');
    const t = await c.checkpoint();
    assert.equal(t.checkpoint.size, 2);
    // every witness is up: the served note ends up with all three cosignatures
    const note = await (await fetch(`${prefix}checkpoint`)).text();
    assert.equal(parseNote(note).signatures.length, 1 + evaluateQuorum(policy, note).signed.length);
    assert.ok(evaluateQuorum(policy, note).signed.length >= 2);
    assert.ok(((await metric(node.url, 'trustix_cosign_requests_total', 'outcome="cosigned"')) ?? 0) >= 1);
    assert.equal(await metric(node.url, 'trustix_cosign_quorum_met', 'log="default"'), 1);
  });

  test('a witness ahead of what the node remembers answers 409, and the node catches up from its size', async () => {
    await node.stop();
    // the log grows while the node is down, and W1 alone cosigns the new checkpoint
    const log = await Log.open(join(state, 'logs', 'default'));
    const before = log.head().size;
    await log.submit([entry('offline')]);
    const head = log.head();
    const proof = log.consistencyProof(before, head.size);
    await log.close();
    const res = await fetch(`${witnesses[0].url}/add-checkpoint`, {
      method: 'POST',
      body: `old ${before}\n${proof.map((p) => `${p.toString('base64')}\n`).join('')}\n${head.checkpoint}`,
    });
    assert.equal(res.status, 200, await res.text());
    // the node remembers W1 at the old size: its first request is a 409, the second cosigns
    node = await serve();
    prefix = `${node.url}/logs/default/`;
    const receipts = await client().submit([entry('after')], { token: token(state) });
    assert.deepEqual(evaluateQuorum(policy, receipts[0].checkpoint).met, true);
    assert.ok(((await metric(node.url, 'trustix_cosign_requests_total', 'outcome="conflict"')) ?? 0) >= 1);
    assert.ok(
      ((await metric(node.url, 'trustix_cosign_witness_size', 'witness="W1"')) ?? 0) >= head.size + 1,
    );
  });

  test('two witnesses killed: writes are still acknowledged, policy clients refuse the new checkpoints', async () => {
    const store = new MemoryTrustStore();
    const witnessed = await client(store).checkpoint();
    witnesses[1].proc.kill('SIGKILL');
    witnesses[2].proc.kill('SIGKILL');
    await Promise.all([witnesses[1].exited, witnesses[2].exited]);
    // acknowledged (by the node, to a client without a policy), with only W1's cosignature
    const receipts = await write(['down-1', 'down-2']);
    const r = evaluateQuorum(policy, receipts[0].checkpoint);
    assert.equal(r.met, false);
    assert.deepEqual(r.signed, ['W1']);
    // /checkpoint keeps serving the last checkpoint that met the quorum
    const c = client(store);
    assert.equal((await c.checkpoint()).checkpoint.size, witnessed.checkpoint.size);
    const refused = (err: unknown) => {
      assert.ok(err instanceof WitnessQuorumError, String(err));
      assert.equal(err.check, 'witness.quorum');
      assert.match(err.message, /signed by W1; the policy needs two-of-three = 2 of \(W1, W2, W3\)/);
      return true;
    };
    await assert.rejects(c.lookup('nix', 'down-1'), refused);
    await assert.rejects(c.submit([entry('down-3')], { token: token(state) }), refused);
    assert.equal((await store.get(c.identity))?.split('\n')[1], String(witnessed.checkpoint.size));
    assert.equal(await metric(node.url, 'trustix_cosign_quorum_met', 'log="default"'), 0);
    assert.equal(await metric(node.url, 'trustix_cosign_witness_up', 'witness="W2"'), 0);
    assert.match(node.stderr(), /witness W2 \(http:\/\/127\.0\.0\.1:\d+\/add-checkpoint\) is not cosigning/);
    assert.match(node.stderr(), /did not meet the witness quorum .*signed by W1; the policy needs/);
  });

  test('the killed witnesses come back: the quorum is met again and /checkpoint moves on', async () => {
    for (const i of [1, 2]) {
      const port = new URL(witnesses[i].url).port;
      witnesses[i] = await startWitness(dir, i + 1, vkey, `127.0.0.1:${port}`);
    }
    const c = client();
    // the node asks them again after its back-off; a new write gives it a new checkpoint to send
    // (its back-off doubles up to 30 s while they are down)
    let receipts = await write(['back-1']);
    const deadline = Date.now() + 90_000;
    for (let i = 2; Date.now() < deadline && !evaluateQuorum(policy, receipts[0].checkpoint).met; i++) {
      await new Promise((r) => setTimeout(r, 500));
      receipts = await write([`back-${i}`]);
    }
    assert.equal(evaluateQuorum(policy, receipts[0].checkpoint).met, true);
    const size = Number(receipts[0].checkpoint.split('\n')[1]);
    assert.ok((await c.checkpoint()).checkpoint.size >= size);
    assert.equal((await c.lookup('nix', 'down-1')).status, 'present');
    assert.match(node.stderr(), /witness quorum met again/);
  });

  test('the Nix proxy with a witness_policy substitutes while the quorum holds, and refuses (404, witness.quorum) without it', async () => {
    // a binary cache holding two store paths (uncompressed NARs), published in the log
    const files = new Map<string, Buffer>();
    const cache = createServer((req, res) => {
      const body = files.get((req.url ?? '/').slice(1));
      if (body === undefined) res.writeHead(404).end();
      else res.writeHead(200, { 'content-length': body.length }).end(body);
    });
    await new Promise<void>((r) => cache.listen(0, '127.0.0.1', r));
    const publish = async (hashPart: string) => {
      const tree = join(dir, `tree-${hashPart}`);
      mkdirSync(tree);
      writeFileSync(join(tree, 'file'), hashPart);
      const nar = await narBytes(tree);
      const narHash = createHash('sha256').update(nar).digest();
      const url = `nar/${encodeNix32(narHash)}.nar`;
      files.set(url, nar);
      const storePath = `/nix/store/${hashPart}-demo`;
      files.set(
        `${hashPart}.narinfo`,
        Buffer.from(
          formatNarInfo({
            storePath,
            url,
            compression: 'none',
            narHash,
            narSize: nar.length,
            references: [],
            sigs: [],
            extra: [],
          }),
        ),
      );
      return nixEntry({ storePath, narHash, narSize: nar.length, references: [] });
    };
    const decideFile = writeConfig(
      dir,
      `witness_policy = "${policyFile}"\n[[log]]\nname = "node"\nurl = "${prefix}"\nvkey = "${vkey}"\n[procedure.default]\ntype = "log"\nlog = "node"\n`,
      'decide.toml',
    );
    const decider = new Decider(parseDecideConfig(readFileSync(decideFile, 'utf8'), dir));
    const proxy = new CacheProxy({
      config: parseCacheConfig(
        `listen = "127.0.0.1:0"\nnegative_ttl = 0\n[[upstream]]\nurl = "http://127.0.0.1:${(cache.address() as AddressInfo).port}/"\n`,
        dir,
        { decideConfig: decideFile },
      ),
      decider,
      key: generateNixSecretKey('proxy-test-1'),
    });
    const base = await proxy.listen();
    try {
      const ok = '0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
      const lacking = '1c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
      const c = client();
      await c.submit([await publish(ok)], { token: token(state) });
      const served = await fetch(new URL(`${ok}.narinfo`, base));
      assert.equal(served.status, 200, await served.clone().text());
      assert.match(await served.text(), new RegExp(`StorePath: /nix/store/${ok}-demo`));
      witnesses[1].proc.kill('SIGKILL');
      witnesses[2].proc.kill('SIGKILL');
      await Promise.all([witnesses[1].exited, witnesses[2].exited]);
      await new LogClient({ url: prefix, vkey }).submit([await publish(lacking)], { token: token(state) });
      const refused = await fetch(new URL(`${lacking}.narinfo`, base));
      assert.equal(refused.status, 404);
      assert.match(await refused.text(), /no decision: .*witness\.quorum/);
    } finally {
      await proxy.close();
      await decider.close();
      cache.close();
    }
  });
});
