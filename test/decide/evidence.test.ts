// Evidence bundles: what `trustix verify` proves offline, and every tamper it must catch.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { lookupBundle } from '../../src/core/bundle.js';
import { toHex } from '../../src/core/bytes.js';
import { generateKey } from '../../src/core/note.js';
import { type DecideConfig, parseDecideConfig } from '../../src/decide/config.js';
import { Decider } from '../../src/decide/decide.js';
import { type DecisionBundle, decisionBundle, verifyDecisionBundle } from '../../src/decide/evidence.js';
import { Log } from '../../src/log/log.js';
import { type FakeServer, startFakeServer } from '../client/fake-server.js';
import { entry, tempDir } from '../client/helpers.js';

const MAIN = new URL('../../src/cli/main.ts', import.meta.url).pathname;
const KEY = 'ev-key';
const A = toHex(entry(KEY, 1).value);
const B = toHex(entry(KEY, 2).value);

interface TestLog {
  name: string;
  vkey: string;
  fake: FakeServer;
  log: Log;
}

/** A log named `name` holding KEY with value `version` (or nothing), served by a fake server. */
async function serveLog(name: string, version: number | undefined): Promise<TestLog> {
  const { skey, vkey } = generateKey(`${name}.test/log`);
  const log = await Log.create(tempDir(), `${name}.test/log`, { skey, batchDelayMs: 1 });
  await log.submit([entry('filler'), ...(version !== undefined ? [entry(KEY, version)] : [])]);
  return { name, vkey, log, fake: await startFakeServer(log) };
}

function configText(logs: readonly TestLog[], procedure: string): string {
  let t = 'timeout = 5\n';
  for (const l of logs) t += `[[log]]\nname = "${l.name}"\nurl = "${l.fake.url}"\nvkey = "${l.vkey}"\n\n`;
  return `${t}[procedure.default]\n${procedure}\n`;
}

async function decideBundle(cfg: DecideConfig): Promise<DecisionBundle> {
  const d = new Decider(cfg);
  try {
    const { decision, results } = await d.decide(KEY);
    return JSON.parse(JSON.stringify(decisionBundle(decision, results, cfg))) as DecisionBundle;
  } finally {
    await d.close();
  }
}

const copy = (b: DecisionBundle): DecisionBundle => JSON.parse(JSON.stringify(b)) as DecisionBundle;

describe('decision evidence', () => {
  let dir: string;
  let honest: TestLog[];
  let attacker: TestLog[];
  let cfg: DecideConfig;
  let cfgFile: string;
  let bundle: DecisionBundle;

  before(async () => {
    dir = tempDir();
    // three logs say A, one dissents with B, one proves the key absent; half of five decides A at 60%
    honest = await Promise.all([
      serveLog('a0', 1),
      serveLog('a1', 1),
      serveLog('a2', 1),
      serveLog('dissent', 2),
      serveLog('none', undefined),
    ]);
    attacker = await Promise.all([serveLog('evil0', 2), serveLog('evil1', 2), serveLog('evil2', 2)]);
    const text = configText(honest, 'type = "percentage"\nmin = "1/2"');
    cfgFile = join(dir, 'decide.toml');
    writeFileSync(cfgFile, text);
    cfg = parseDecideConfig(text);
    bundle = await decideBundle(cfg);
    assert.equal(bundle.decision.value, A);
    assert.equal(bundle.decision.confidence, 0.6);
  });

  after(async () => {
    for (const l of [...honest, ...attacker]) {
      await l.fake.close();
      await l.log.close();
    }
  });

  test('an honest bundle verifies, pinned by its trust config, by keys, or not at all (and says so)', async () => {
    const free = await verifyDecisionBundle(bundle);
    assert.equal(free.value, A);
    assert.equal(free.support, 3);
    assert.deepEqual(free.unpinned, ['a0', 'a1', 'a2', 'dissent', 'none']);
    assert.equal(free.configChecked, false);
    const byConfig = await verifyDecisionBundle(bundle, { config: cfg });
    assert.deepEqual(byConfig.unpinned, []);
    assert.equal(byConfig.configChecked, true);
    const byKeys = await verifyDecisionBundle(bundle, { vkeys: honest.map((l) => l.vkey) });
    assert.deepEqual(byKeys.pinned, ['a0', 'a1', 'a2', 'dissent', 'none']);
  });

  test('the decided value changed to the minority value is caught by re-running the procedure', async () => {
    const t = copy(bundle);
    t.decision.value = B;
    await assert.rejects(verifyDecisionBundle(t), { check: 'decision.mismatch' });
    // an undecided bundle turned into a decision, and a decision turned into none
    const u = copy(bundle);
    u.decision = { decided: false, procedure: u.decision.procedure, reason: 'x' };
    await assert.rejects(verifyDecisionBundle(u), { check: 'decision.mismatch' });
  });

  test('a dropped dissenting log is caught; dropped consistently, only against the trust config', async () => {
    const t = copy(bundle);
    t.logs = t.logs.filter((l) => l.name !== 'dissent');
    // three of four agree now: the recorded confidence no longer follows
    await assert.rejects(verifyDecisionBundle(t), { check: 'decision.mismatch' });
    t.decision.confidence = 0.75;
    await verifyDecisionBundle(t); // self-consistent: only the caller's config can tell
    await assert.rejects(verifyDecisionBundle(t, { config: cfg }), { check: 'bundle.config-mismatch' });
  });

  test('a log relabelled failed is caught', async () => {
    const t = copy(bundle);
    const d = t.logs.find((l) => l.name === 'dissent')!;
    d.status = 'failed';
    d.check = 'http.timeout';
    d.reason = 'no answer';
    await assert.rejects(verifyDecisionBundle(t), { check: 'decision.status-mismatch' });
  });

  test('one answer copied under several names is refused', async () => {
    const t = copy(bundle);
    const a0 = t.logs.find((l) => l.name === 'a0')!;
    t.logs = [...t.logs.filter((l) => l.status !== 'present' || l.name === 'a0')];
    for (let i = 1; i <= 4; i++) t.logs.push({ ...a0, name: `copy${i}` });
    await assert.rejects(verifyDecisionBundle(t), { check: 'bundle.duplicate-log' });
  });

  test("a bundle made of an attacker's own logs verifies only unpinned, and fails every pin", async () => {
    const evilCfg = parseDecideConfig(configText(attacker, 'type = "percentage"\nmin = "2/3"'));
    const evil = await decideBundle(evilCfg);
    assert.equal(evil.decision.value, B);
    const r = await verifyDecisionBundle(evil);
    assert.deepEqual(r.pinned, []);
    await assert.rejects(verifyDecisionBundle(evil, { vkeys: honest.map((l) => l.vkey) }), {
      check: 'bundle.vkey-mismatch',
    });
    await assert.rejects(verifyDecisionBundle(evil, { config: cfg }), { check: /^bundle\./ });
    // relabelled with the honest names, the keys still give it away
    const renamed = copy(evil);
    renamed.logs.forEach((l, i) => {
      l.name = honest[i].name;
    });
    await assert.rejects(verifyDecisionBundle(renamed, { config: cfg }), { check: 'bundle.vkey-mismatch' });
  });

  test('a script procedure travels with the bundle and is re-run; its source cannot be swapped', async () => {
    const script = `function decide(answers) {
      const a = answers.find((x) => x.name === 'a0');
      return a && a.status === 'present' ? { value: a.value, confidence: 0.5 } : null;
    }`;
    const text = configText(honest, `type = "js"\nsource = '''\n${script}\n'''`);
    const scfg = parseDecideConfig(text);
    const b = await decideBundle(scfg);
    assert.equal(b.decision.value, A);
    assert.equal(b.procedure.sha256, createHash('sha256').update(`${script}\n`).digest('hex'));
    const ok = await verifyDecisionBundle(b, { config: scfg });
    assert.equal(ok.value, A);
    // another script that picks the dissenter: the re-run no longer reaches the recorded decision
    const t = copy(b);
    t.procedure.source = (t.procedure.source as string).replace("'a0'", "'dissent'");
    await assert.rejects(verifyDecisionBundle(t), { check: 'bundle.malformed' }); // SHA-256 no longer matches
    delete t.procedure.sha256;
    await assert.rejects(verifyDecisionBundle(t), { check: 'decision.mismatch' });
    // and a bundle decided by another procedure than the user's is not theirs
    await assert.rejects(verifyDecisionBundle(b, { config: cfg }), { check: 'bundle.config-mismatch' });
  });

  test('a v1 bundle (no procedure, no config) is refused', async () => {
    const t = { ...copy(bundle), type: 'trustix-decision/v1' };
    await assert.rejects(verifyDecisionBundle(t), { check: 'bundle.unsupported-version' });
  });

  test('trustix verify honours --vkey and --config for evidence, and says what was not pinned', async () => {
    const ev = join(dir, 'evidence.json');
    writeFileSync(ev, JSON.stringify(bundle));
    const free = await cli(['verify', ev]);
    assert.equal(free.code, 0, free.stderr);
    assert.match(
      free.stdout,
      /NOT PINNED: the keys of a0, a1, a2, dissent, none come from the bundle itself/,
    );
    assert.match(free.stdout, /NOT CHECKED: the logs, weights and procedure come from the bundle itself/);
    const pinnedArgs = honest.flatMap((l) => ['--vkey', l.vkey]);
    const pinned = await cli(['verify', ev, ...pinnedArgs]);
    assert.equal(pinned.code, 0, pinned.stderr);
    assert.match(pinned.stdout, /keys pinned: a0, a1, a2, dissent, none/);
    const wrong = await cli(['verify', ev, '--vkey', attacker[0].vkey]);
    assert.equal(wrong.code, 4, wrong.stdout);
    assert.match(wrong.stdout, /INVALID: bundle\.vkey-mismatch/);
    const byConfig = await cli(['verify', ev, '--config', cfgFile, '--json']);
    assert.equal(byConfig.code, 0, byConfig.stderr);
    assert.equal(JSON.parse(byConfig.stdout).configChecked, true);
    const t = copy(bundle);
    t.decision.value = B;
    writeFileSync(ev, JSON.stringify(t));
    const tampered = await cli(['verify', ev]);
    assert.equal(tampered.code, 4);
    assert.match(tampered.stdout, /INVALID: decision\.mismatch/);
    // a log's own bundle is pinned by the trust config's keys too
    const lb = join(dir, 'lookup.json');
    writeFileSync(
      lb,
      JSON.stringify(lookupBundle(honest[0].vkey, honest[0].log.lookup('nix', Buffer.from(KEY)))),
    );
    const lbOk = await cli(['verify', lb, '--config', cfgFile]);
    assert.equal(lbOk.code, 0, lbOk.stderr);
    assert.doesNotMatch(lbOk.stderr, /key inside the bundle/);
    writeFileSync(
      lb,
      JSON.stringify(lookupBundle(attacker[0].vkey, attacker[0].log.lookup('nix', Buffer.from(KEY)))),
    );
    const lbBad = await cli(['verify', lb, '--config', cfgFile]);
    assert.equal(lbBad.code, 4);
    assert.match(lbBad.stdout, /INVALID: bundle\.vkey-mismatch/);
  });
});

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', MAIN, ...args], (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}
