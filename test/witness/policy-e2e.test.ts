// Clients enforce a C2SP tlog-policy against real processes: a `trustix serve` log and three
// `trustix witness` servers. The log does not gather cosignatures itself, so a small proxy in front
// of it asks the witnesses (POST add-checkpoint, as tlog-witness describes) and serves every
// checkpoint note it passes on (checkpoint, lookup answers, submit receipts) with the cosignature
// lines it got, plus whatever extra lines a test adds.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LogClient } from '../../src/client/client.js';
import { WitnessQuorumError } from '../../src/client/errors.js';
import { MemoryTrustStore } from '../../src/client/trust-store.js';
import { VerificationError } from '../../src/core/errors.js';
import { cosignerFromSkey, formatSignatureLine, generateKey, parseNote } from '../../src/core/note.js';
import { parsePolicy } from '../../src/core/policy.js';
import { parseDecideConfig } from '../../src/decide/config.js';
import { Decider } from '../../src/decide/decide.js';
import { decisionBundle, verifyDecisionBundle } from '../../src/decide/evidence.js';
import { entry } from '../client/helpers.js';
import {
  cleanup,
  type RunningServer,
  startServer,
  startWitnesses,
  tempDir,
  token,
  writeConfig,
} from '../fixtures/server-helpers.js';

const MAIN = new URL('../../src/cli/main.ts', import.meta.url).pathname;

interface ProxyMode {
  /** The witnesses asked for each checkpoint. */
  ask: RunningServer[];
  /** More signature lines for a checkpoint body. */
  extra?: (body: string) => string[];
}

/** A proxy to the log that serves checkpoint notes with the cosignatures of `mode.ask`. */
class CosigningProxy {
  mode: ProxyMode = { ask: [] };
  /** Per witness URL, the size it last cosigned (the old size of the next request). */
  private readonly cosigned = new Map<string, number>();
  private server!: Server;
  url = '';

  constructor(
    private readonly logPrefix: string,
    private readonly origin: string,
  ) {}

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        this.forward(req.method ?? 'GET', req.url ?? '/', req.headers, Buffer.concat(chunks)).then(
          ({ status, type, body }) => {
            res.writeHead(status, { 'content-type': type });
            res.end(body);
          },
          (err: Error) => {
            res.writeHead(502);
            res.end(err.message);
          },
        );
      });
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/`;
  }

  stop(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }

  private async forward(
    method: string,
    path: string,
    headers: NodeJS.Dict<string | string[]>,
    body: Buffer,
  ): Promise<{ status: number; type: string; body: string }> {
    const h: Record<string, string> = {};
    for (const k of ['content-type', 'authorization', 'trustix-signature']) {
      if (typeof headers[k] === 'string') h[k] = headers[k] as string;
    }
    const res = await fetch(new URL(path.slice(1), this.logPrefix), {
      method,
      headers: h,
      ...(method === 'POST' ? { body: new Uint8Array(body) } : {}),
    });
    const type = res.headers.get('content-type') ?? 'text/plain';
    const text = await res.text();
    if (res.status !== 200) return { status: res.status, type, body: text };
    if (path === '/checkpoint') return { status: 200, type, body: await this.cosign(text) };
    if (type.startsWith('application/json')) {
      return { status: 200, type, body: JSON.stringify(await this.walk(JSON.parse(text))) };
    }
    return { status: 200, type, body: text };
  }

  /** Replaces every checkpoint note of the log inside a JSON answer with its cosigned form. */
  private async walk(x: unknown): Promise<unknown> {
    if (typeof x === 'string') return x.startsWith(`${this.origin}\n`) ? this.cosign(x) : x;
    if (Array.isArray(x)) return Promise.all(x.map((v) => this.walk(v)));
    if (typeof x === 'object' && x !== null) {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(x)) out[k] = await this.walk(v);
      return out;
    }
    return x;
  }

  /** The note with the cosignature lines of the witnesses asked, then the extra lines. */
  private async cosign(note: string): Promise<string> {
    const { text } = parseNote(note);
    const size = Number(text.split('\n')[1]);
    let out = note;
    for (const w of this.mode.ask) out += await this.addCheckpoint(w.url, note, size);
    for (const line of this.mode.extra?.(text) ?? []) out += line;
    return out;
  }

  /** POST add-checkpoint (tlog-witness): old size, consistency proof, blank line, the note. */
  async addCheckpoint(witness: string, note: string, size: number): Promise<string> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const old = this.cosigned.get(witness) ?? 0;
      let proof: string[] = [];
      if (old !== 0 && old !== size) {
        const r = await fetch(new URL(`proof/consistency?old=${old}&new=${size}`, this.logPrefix));
        proof = ((await r.json()) as { proof: string[] }).proof;
      }
      const res = await fetch(`${witness}/add-checkpoint`, {
        method: 'POST',
        body: `old ${old}\n${proof.map((p) => `${p}\n`).join('')}\n${note}`,
      });
      const answer = await res.text();
      if (res.status === 200) {
        this.cosigned.set(witness, size);
        return answer;
      }
      if (res.status !== 409) throw new Error(`witness ${witness}: ${res.status} ${answer}`);
      this.cosigned.set(witness, Number(answer.trim()));
    }
    throw new Error(`witness ${witness}: too many 409 answers`);
  }
}

/** `— name base64(...)` with one bit of the Ed25519 signature flipped. */
function forged(line: string): string {
  const m = /^\u2014 (\S+) (\S+)\n$/.exec(line)!;
  const raw = Buffer.from(m[2], 'base64');
  raw[raw.length - 1] ^= 1;
  return `\u2014 ${m[1]} ${raw.toString('base64')}\n`;
}

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    for (const k of Object.keys(env)) if (k.startsWith('TRUSTIX_')) delete env[k];
    const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], { env, stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('witness policy against a real log and three real witnesses', () => {
  const dir = tempDir('trustix-policy-');
  let log: RunningServer;
  let witnesses: RunningServer[];
  let proxy: CosigningProxy;
  let policyFile: string;
  let prefix: string;

  before(async () => {
    log = await startServer(['--state', join(dir, 'node'), '--listen', '127.0.0.1:0']);
    prefix = `${log.url}/logs/default/`;
    await new LogClient({ url: prefix, vkey: log.vkey }).submit([entry('a'), entry('b')], {
      token: token(join(dir, 'node')),
    });
    witnesses = await startWitnesses(dir, log.vkey);
    policyFile = writeConfig(
      dir,
      `# two of three witnesses
log ${log.vkey} ${prefix}
${witnesses.map((w, i) => `witness W${i + 1} ${w.vkey} ${w.url}`).join('\n')}
group two-of-three 2 W1 W2 W3
quorum two-of-three
`,
      'policy.txt',
    );
    proxy = new CosigningProxy(prefix, log.origin);
    await proxy.start();
  });
  after(async () => {
    await proxy?.stop();
    await Promise.all([log, ...(witnesses ?? [])].map((s) => s?.stop()));
    cleanup(dir);
  });

  const client = (trustStore = new MemoryTrustStore()) =>
    new LogClient({
      url: proxy.url,
      vkey: log.vkey,
      trustStore,
      witnessPolicy: parsePolicy(readFileSync(policyFile)),
    });

  test('quorum met: checkpoint, lookup and submit are accepted', async () => {
    proxy.mode = { ask: [witnesses[0], witnesses[2]] };
    const c = client();
    const t = await c.checkpoint();
    assert.equal(t.checkpoint.size, 2);
    assert.equal((await c.lookup('nix', 'a')).status, 'present');
    const receipts = await c.submit([entry('c')], { token: token(join(dir, 'node')) });
    assert.equal(receipts.length, 1);
    assert.equal((await c.trusted())?.checkpoint.size, 3);
  });

  test('quorum missing: witness.quorum naming who signed, and the trust store does not move', async () => {
    proxy.mode = { ask: [witnesses[0], witnesses[2]] };
    const store = new MemoryTrustStore();
    const before = (await client(store).checkpoint()).note;
    await new LogClient({ url: prefix, vkey: log.vkey }).submit([entry('d')], {
      token: token(join(dir, 'node')),
    });
    proxy.mode = { ask: [witnesses[1]] };
    const c = client(store);
    for (const attempt of [() => c.checkpoint(), () => c.lookup('nix', 'd')]) {
      await assert.rejects(attempt, (err: unknown) => {
        assert.ok(err instanceof WitnessQuorumError, String(err));
        assert.equal(err.check, 'witness.quorum');
        assert.match(
          err.message,
          /lacks the witness quorum: signed by W2; the policy needs two-of-three = 2 of \(W1, W2, W3\)/,
        );
        return true;
      });
    }
    assert.equal(await store.get(c.identity), before);
  });

  test('a cosignature by an unknown key does not count, even under a witness name', async () => {
    const stranger = cosignerFromSkey(generateKey('w2.example/witness').skey);
    proxy.mode = {
      ask: [witnesses[0]],
      extra: (body) => [formatSignatureLine(stranger.name, stranger.keyId, stranger.sign(Buffer.from(body)))],
    };
    await assert.rejects(client().checkpoint(), (err: unknown) => {
      assert.ok(err instanceof WitnessQuorumError, String(err));
      assert.match(err.message, /signed by W1; the policy needs/);
      return true;
    });
  });

  test('a forged cosignature does not count; the same line unforged does', async () => {
    const note = await (await fetch(`${prefix}checkpoint`)).text();
    const size = Number(note.split('\n')[1]);
    // W2's real cosignature of this checkpoint
    const w2Line = await proxy.addCheckpoint(witnesses[1].url, note, size);
    proxy.mode = { ask: [witnesses[0]], extra: () => [forged(w2Line)] };
    await assert.rejects(client().checkpoint(), (err: unknown) => {
      assert.ok(err instanceof WitnessQuorumError, String(err));
      assert.match(err.message, /signed by W1; cosignatures that do not verify: W2;/);
      return true;
    });
    proxy.mode = { ask: [witnesses[0]], extra: () => [w2Line] };
    assert.equal((await client().checkpoint()).checkpoint.size, size);
  });

  test('trustix lookup/info --witness-policy: exit 0 with the quorum, exit 4 witness.quorum without', async () => {
    const args = (cmd: string[]) => [
      ...cmd,
      '--url',
      proxy.url,
      '--vkey',
      log.vkey,
      '--trust-dir',
      join(dir, 'cli-trust'),
      '--witness-policy',
      policyFile,
    ];
    proxy.mode = { ask: [witnesses[1], witnesses[2]] };
    const ok = await cli(args(['lookup', 'a']));
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    proxy.mode = { ask: [witnesses[2]] };
    for (const cmd of [['lookup', 'a'], ['info']]) {
      const r = await cli(args(cmd));
      assert.equal(r.code, 4, r.stdout + r.stderr);
      assert.match(
        r.stderr + r.stdout,
        /witness\.quorum: .*signed by W3; the policy needs two-of-three/,
        JSON.stringify(r),
      );
    }
    const bad = writeConfig(dir, 'quorum W9\n', 'bad-policy.txt');
    const r = await cli([...args(['info']).slice(0, -1), bad]);
    assert.equal(r.code, 2, r.stdout + r.stderr);
    assert.match(
      r.stderr,
      /--witness-policy: .*bad-policy\.txt: line 1: quorum "W9" is not a witness or group/,
    );
  });

  test('decide: a log whose checkpoint lacks the quorum fails with witness.quorum', async () => {
    const config = (policyLine: string) =>
      parseDecideConfig(
        `${policyLine}\n[[log]]\nname = "proxied"\nurl = "${proxy.url}"\nvkey = "${log.vkey}"\n[procedure.default]\ntype = "log"\nlog = "proxied"\n`,
        dir,
      );
    proxy.mode = { ask: [witnesses[0], witnesses[1]] };
    let d = new Decider(config(`witness_policy = "${policyFile}"`));
    const withPolicy = config(`witness_policy = "${policyFile}"`);
    const { decision: ok, results } = await d.decide('a', 'nix');
    assert.equal(ok.decided, true, JSON.stringify(ok));
    await d.close();
    // the evidence bundle re-checks the quorum offline under the trust config
    const bundle = decisionBundle(ok, results, withPolicy);
    assert.equal((await verifyDecisionBundle(bundle, { config: withPolicy })).decided, true);
    const stripped = JSON.parse(JSON.stringify(bundle)) as {
      logs: Array<{ answer: { checkpoint: string } }>;
    };
    const cp = stripped.logs[0].answer.checkpoint;
    stripped.logs[0].answer.checkpoint = cp.slice(0, cp.indexOf('\u2014 w1.example/witness'));
    await assert.rejects(verifyDecisionBundle(stripped, { config: withPolicy }), (err: unknown) => {
      assert.ok(err instanceof VerificationError, String(err));
      assert.equal(err.check, 'witness.quorum');
      return true;
    });
    assert.equal((await verifyDecisionBundle(stripped, { config: config('') })).decided, true);
    proxy.mode = { ask: [witnesses[0]] };
    d = new Decider(config(`witness_policy = "${policyFile}"`));
    const r = (await d.decide('a', 'nix')).decision;
    assert.equal(r.decided, false);
    assert.equal(r.failed[0]?.check, 'witness.quorum');
    assert.match(r.failed[0]?.reason ?? '', /signed by W1;/);
    await d.close();
    // without a policy the same answer is accepted
    d = new Decider(config(''));
    assert.equal((await d.decide('a', 'nix')).decision.decided, true);
    await d.close();
  });
});
