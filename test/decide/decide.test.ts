// Deciding across real `trustix serve` processes and hostile fake logs on loopback.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LogClient } from '../../src/client/client.js';
import { FileTrustStore, MemoryTrustStore } from '../../src/client/trust-store.js';
import { toHex } from '../../src/core/bytes.js';
import { parseProof, verifyProof } from '../../src/core/misbehaviour.js';
import { generateKey, signerFromSkey } from '../../src/core/note.js';
import { parseDecideConfig } from '../../src/decide/config.js';
import { Decider } from '../../src/decide/decide.js';
import { decisionBundle, verifyDecisionBundle } from '../../src/decide/evidence.js';
import { Log } from '../../src/log/log.js';
import { bodyJson, type FakeServer, json, startFakeServer } from '../client/fake-server.js';
import { entry, tempDir } from '../client/helpers.js';
import { cleanup, type RunningServer, startServer, token } from '../fixtures/server-helpers.js';

const MAIN = new URL('../../src/cli/main.ts', import.meta.url).pathname;
const KEYS = ['hk-0', 'hk-1', 'hk-2'];
const value = (k: string) => toHex(entry(k).value);

function logBlock(name: string, url: string, vkey: string, weight = 1): string {
  return `[[log]]\nname = "${name}"\nurl = "${url}"\nvkey = "${vkey}"\nweight = ${weight}\n\n`;
}

describe('decide against real and hostile logs', () => {
  let dir: string;
  const servers: RunningServer[] = [];
  const fakes: FakeServer[] = [];
  const logs: Log[] = [];
  const honest: Array<{ name: string; url: string; vkey: string }> = [];
  const hostile: Record<string, { url: string; vkey: string; fake: FakeServer }> = {};

  before(async () => {
    dir = tempDir();
    // three honest logs: real server processes, each holding the same three keys with the same values
    const started = await Promise.all(
      [0, 1, 2].map((i) =>
        startServer([
          '--state',
          join(dir, `node${i}`),
          '--listen',
          '127.0.0.1:0',
          '--origin',
          `honest${i}.test/log`,
        ]),
      ),
    );
    servers.push(...started);
    await Promise.all(
      started.map(async (s, i) => {
        const url = `${s.url}/logs/default/`;
        const c = new LogClient({ url, vkey: s.vkey });
        await c.submit(
          KEYS.map((k) => entry(k)),
          { token: token(join(dir, `node${i}`)) },
        );
        honest.push({ name: `honest${i}`, url, vkey: s.vkey });
      }),
    );
    honest.sort((a, b) => a.name.localeCompare(b.name));

    // hostile logs: real Logs behind the fake server, each with a lie
    const mk = async (_name: string, batches: string[][], skey = generateKey('test.example/client').skey) => {
      const log = await Log.create(tempDir(), 'test.example/client', { skey, batchDelayMs: 1 });
      for (const b of batches) await log.submit(b.map((k) => entry(k)));
      logs.push(log);
      const fake = await startFakeServer(log);
      fakes.push(fake);
      return { log, fake, skey };
    };
    // 1. signs with another key than the configured one
    {
      const { fake } = await mk('wrongkey', [KEYS]);
      hostile.wrongkey = { url: fake.url, vkey: generateKey('test.example/client').vkey, fake };
    }
    // 2. answers with the proof for another key
    {
      const { fake, log, skey } = await mk('otherkey', [KEYS]);
      fake.tamper = (req, a) =>
        req.path.startsWith('lookup/') ? json(200, log.lookup('nix', Buffer.from('hk-2'))) : a;
      hostile.otherkey = { url: fake.url, vkey: vkeyOf(skey), fake };
    }
    // 3. claims absence for a key it has (drops the entry; its map proof is an inclusion proof)
    {
      const { fake, skey } = await mk('liar-absent', [KEYS]);
      fake.tamper = (req, a) => {
        if (!req.path.startsWith('lookup/')) return a;
        const j = bodyJson(a);
        delete j.entry;
        return json(200, j);
      };
      hostile.absent = { url: fake.url, vkey: vkeyOf(skey), fake };
    }
    // 4. rolls back: after the first decision it serves an older copy of itself
    {
      const { fake, skey } = await mk('rollback', [KEYS, ['extra-1']]);
      const old = await Log.create(tempDir(), 'test.example/client', { skey, batchDelayMs: 1 });
      await old.submit(KEYS.map((k) => entry(k)));
      logs.push(old);
      hostile.rollback = { url: fake.url, vkey: vkeyOf(skey), fake };
      (hostile.rollback as { older?: Log }).older = old;
    }
    // 5. split view: the same key signs two different trees; who sees which depends on when they ask
    {
      const { fake, skey } = await mk('fork', [KEYS]);
      const other = await Log.create(tempDir(), 'test.example/client', { skey, batchDelayMs: 1 });
      // same size, different contents, and a different value for hk-0
      await other.submit([entry('hk-0', 2), entry('hk-1'), entry('hk-2')]);
      logs.push(other);
      hostile.fork = { url: fake.url, vkey: vkeyOf(skey), fake };
      (hostile.fork as { other?: Log }).other = other;
    }
    // 6. hangs
    {
      const { fake, skey } = await mk('hang', [KEYS]);
      fake.tamper = (req, a) => (req.path.startsWith('lookup/') ? 'hang' : a);
      hostile.hang = { url: fake.url, vkey: vkeyOf(skey), fake };
    }
  });

  after(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    await Promise.all(fakes.map((f) => f.close()));
    for (const l of logs) await l.close();
    cleanup(dir);
  });

  function config(procedure: string, extra = ''): string {
    let t = `timeout = 2\n${extra}\n`;
    for (const h of honest) t += logBlock(h.name, h.url, h.vkey);
    for (const [name, h] of Object.entries(hostile)) t += logBlock(name, h.url, h.vkey);
    return `${t}[procedure.default]\n${procedure}\n`;
  }

  test('each hostile log is classified failed with its check, and honest ones agree', async () => {
    const cfg = parseDecideConfig(config('type = "percentage"\nmin = "1/3"'));
    const d = new Decider(cfg);
    const current = hostile.rollback.fake.log;
    try {
      // trust first (rollback and fork need a remembered checkpoint)
      const first = await d.decide('hk-0');
      assert.equal(first.decision.decided, true);
      hostile.rollback.fake.log = (hostile.rollback as { older?: Log }).older!;
      const t0 = Date.now();
      const { decision } = await d.decide('hk-0');
      assert.ok(Date.now() - t0 < 6000, 'the hanging log is cut off by the timeout');
      assert.equal(decision.decided, true);
      assert.equal(decision.value, value('hk-0'));
      assert.deepEqual(decision.agreed, ['honest0', 'honest1', 'honest2', 'fork']);
      const byName = new Map(decision.logs.map((l) => [l.name, l]));
      assert.equal(byName.get('wrongkey')?.status, 'failed');
      assert.match(byName.get('wrongkey')!.check!, /^note\./);
      assert.equal(byName.get('otherkey')?.check, 'lookup.wrong-key');
      assert.equal(byName.get('absent')?.status, 'failed');
      assert.match(byName.get('absent')!.check!, /^smt\./);
      assert.equal(byName.get('rollback')?.check, 'trust.rollback');
      assert.equal(byName.get('hang')?.check, 'http.timeout');
      assert.deepEqual(decision.absent, []);
      assert.deepEqual(
        decision.failed.map((f) => f.name),
        ['wrongkey', 'otherkey', 'absent', 'rollback', 'hang'],
      );
      // a key nobody has: logs that prove it absent are absent (the liar's true non-inclusion proof
      // is fine); failed logs are never counted as absent
      const none = await d.decide('nobody-has-this');
      assert.equal(none.decision.decided, false);
      assert.deepEqual(none.decision.absent, ['honest0', 'honest1', 'honest2', 'absent', 'fork']);
      assert.deepEqual(
        none.decision.failed.map((f) => f.name),
        ['wrongkey', 'otherkey', 'rollback', 'hang'],
      );
    } finally {
      hostile.rollback.fake.log = current;
      await d.close();
    }
  });

  test('concurrent decisions share batched lookups and classify every log as lone decisions do', async () => {
    // the logs whose behaviour does not depend on earlier requests, plus a local state dir
    const localDir = tempDir();
    const local = await Log.create(localDir, 'local.test/log', { batchDelayMs: 1 });
    await local.submit(KEYS.map((k) => entry(k)));
    await local.close();
    let t = 'timeout = 5\n';
    for (const h of honest) t += logBlock(h.name, h.url, h.vkey);
    for (const name of ['wrongkey', 'otherkey', 'absent'])
      t += logBlock(name, hostile[name].url, hostile[name].vkey);
    t += `[[log]]\nname = "local"\nstate = "${localDir}"\nvkey = "${local.vkey}"\n\n`;
    // 4 of 7 logs hold the keys: the 3 honest ones and the local one
    const cfg = parseDecideConfig(`${t}[procedure.default]\ntype = "percentage"\nmin = "1/2"\n`);
    const keys = [...KEYS, 'nobody-1', ...KEYS, 'nobody-2', 'hk-0'];
    const summary = (d: Awaited<ReturnType<Decider['decide']>>['decision']) => ({
      decided: d.decided,
      value: d.value,
      logs: d.logs.map((l) => `${l.name}:${l.status}:${l.check ?? ''}`),
    });
    const alone = new Decider(cfg);
    const together = new Decider(cfg);
    try {
      const expected: unknown[] = [];
      for (const k of keys) expected.push(summary((await alone.decide(k)).decision));
      for (const name of ['otherkey', 'absent']) hostile[name].fake.requests.length = 0;
      const got = await Promise.all(keys.map(async (k) => summary((await together.decide(k)).decision)));
      assert.deepEqual(got, expected);
      for (const name of ['otherkey', 'absent']) {
        const reqs = hostile[name].fake.requests;
        assert.ok(reqs.includes('lookup'), `${name} was asked in batches: ${reqs.join(' ')}`);
      }
      assert.equal((got[0] as { decided: boolean }).decided, true);
      assert.match((got[0] as { logs: string[] }).logs.join(' '), /otherkey:failed:lookup\.wrong-key/);
    } finally {
      await alone.close();
      await together.close();
    }
  });

  test('a split view is caught through a shared trust store, and hostile logs cannot swing a 2/3 vote', async () => {
    const trust = join(dir, 'trust-fork');
    const fork = hostile.fork;
    const original = fork.fake.log;
    // 9 logs: 3 honest. A 2/3-of-configured vote needs 6 and cannot be reached: no decision,
    // rather than a decision made by liars.
    const cfg = parseDecideConfig(config('type = "percentage"\nmin = "2/3"\nof = "configured"'));
    const a = new Decider(cfg, { trustStore: new FileTrustStore(trust) });
    const r1 = await a.decide('hk-0');
    await a.close();
    assert.equal(r1.decision.decided, false);
    // the second client (same trust dir) is shown the other tree
    fork.fake.log = (fork as { other?: Log }).other!;
    const proofDir = join(trust, 'misbehaviour');
    const b = new Decider(cfg, { trustStore: new FileTrustStore(trust), proofDir });
    try {
      const r2 = await b.decide('hk-0');
      const f = r2.decision.logs.find((l) => l.name === 'fork')!;
      assert.equal(f.status, 'failed');
      assert.equal(f.check, 'trust.fork-same-size');
      // the decider keeps a proof of the fork that the log's key alone verifies
      assert.match(f.reason ?? '', /proof written to /);
      const files = readdirSync(proofDir);
      assert.equal(files.length, 1);
      const proof = parseProof(readFileSync(join(proofDir, files[0]), 'utf8'));
      assert.equal(verifyProof(proof, fork.vkey).proven, true);
      // of the responding logs, 3 of 3 agree: the honest value, never the forked one
      const resp = parseDecideConfig(config('type = "percentage"\nmin = "2/3"\nof = "responding"'));
      const c = new Decider(resp, { trustStore: new FileTrustStore(trust) });
      const r3 = await c.decide('hk-0');
      await c.close();
      assert.equal(r3.decision.value, value('hk-0'));
      assert.deepEqual(r3.decision.agreed, ['honest0', 'honest1', 'honest2', 'rollback']);
      assert.equal(r3.decision.confidence, 1);
    } finally {
      fork.fake.log = original;
      await b.close();
    }
  });

  test('chain: two thirds of all logs, otherwise trust log honest1; evidence re-verifies offline', async () => {
    const text = config(
      'type = "chain"\nsteps = [ { type = "percentage", min = "2/3" }, { type = "log", log = "honest1" } ]',
    );
    const cfg = parseDecideConfig(text);
    const d = new Decider(cfg);
    try {
      const { decision, results } = await d.decide('hk-1');
      assert.equal(decision.decided, true);
      assert.equal(decision.procedure, 'log(honest1)');
      assert.equal(decision.steps?.length, 2);
      assert.equal(decision.steps?.[0].decided, false);
      const bundle = decisionBundle(decision, results, cfg);
      const check = await verifyDecisionBundle(JSON.parse(JSON.stringify(bundle)), { config: cfg });
      assert.equal(check.value, value('hk-1'));
      assert.ok(check.support >= 3);
      // tampering with the decided value or with an answer is caught
      const forged = JSON.parse(JSON.stringify(bundle));
      forged.decision.value = toHex(entry('hk-1', 9).value);
      await assert.rejects(verifyDecisionBundle(forged), { check: 'decision.mismatch' });
      const forged2 = JSON.parse(JSON.stringify(bundle));
      const honestEntry = forged2.logs.find((l: { name: string }) => l.name === 'honest0');
      honestEntry.answer.key = Buffer.from('hk-2').toString('base64');
      await assert.rejects(verifyDecisionBundle(forged2), { check: 'lookup.wrong-key' });
    } finally {
      await d.close();
    }
  });

  test('weighted threshold and trusting one log', async () => {
    let t = 'timeout = 1\n';
    t += logBlock('honest0', honest[0].url, honest[0].vkey, 5);
    t += logBlock('honest1', honest[1].url, honest[1].vkey, 0.5);
    t += logBlock('hang', hostile.hang.url, hostile.hang.vkey, 10);
    const weightedCfg = parseDecideConfig(`${t}[procedure.default]\ntype = "weighted"\nmin_weight = 5.5\n`);
    const d = new Decider(weightedCfg, { trustStore: new MemoryTrustStore() });
    try {
      const { decision } = await d.decide('hk-2');
      assert.equal(decision.decided, true);
      assert.match(decision.reason, /weight 11\/2 of 31\/2/);
    } finally {
      await d.close();
    }
    const one = new Decider(parseDecideConfig(`${t}[procedure.default]\ntype = "log"\nlog = "hang"\n`));
    try {
      const { decision } = await one.decide('hk-2');
      assert.equal(decision.decided, false);
      assert.match(decision.reason, /hang failed \(http\.timeout\)/);
    } finally {
      await one.close();
    }
  });

  test('trustix decide prints the explanation, exits 0/3, writes evidence that trustix verify checks', async () => {
    const cfgFile = join(dir, 'decide.toml');
    let t = `timeout = 2\ntrust_dir = "${join(dir, 'cli-trust')}"\n`;
    for (const h of honest) t += logBlock(h.name, h.url, h.vkey);
    t += logBlock('otherkey', hostile.otherkey.url, hostile.otherkey.vkey);
    writeFileSync(cfgFile, `${t}[procedure.default]\ntype = "percentage"\nmin = "2/3"\n`);
    mkdirSync(join(dir, 'cli-trust'), { recursive: true });
    const ev = join(dir, 'evidence.json');
    const r = await cli(['decide', 'hk-0', '--config', cfgFile, '--evidence', ev]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^decided: nix hk-0 -> [0-9a-f]{64} \(confidence 75\.0%\)/);
    assert.match(r.stdout, /otherkey \[weight 1\]: FAILED lookup\.wrong-key/);
    const j = await cli(['decide', 'nope', '--config', cfgFile, '--json']);
    assert.equal(j.code, 3);
    const parsed = JSON.parse(j.stdout);
    assert.equal(parsed.decided, false);
    assert.deepEqual(parsed.absent, ['honest0', 'honest1', 'honest2']);
    const v = await cli(['verify', ev]);
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stdout, /^valid: decided nix hk-0/);
    const bad = await cli(['decide', 'hk-0', '--config', join(dir, 'missing.toml')]);
    assert.equal(bad.code, 2);
  });
});

function vkeyOf(skey: string): string {
  return signerFromSkey(skey).vkey;
}

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', MAIN, ...args], (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}
