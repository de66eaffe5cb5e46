import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Command } from 'commander';
import { registerCommands } from '../../src/cli/commands/index.js';
import { generateKey } from '../../src/core/note.js';
import { Log } from '../../src/log/log.js';
import { type FakeServer, startFakeServer } from './fake-server.js';
import { entry, makeLog, ORIGIN, tempDir } from './helpers.js';

const MAIN = new URL('../../src/cli/main.ts', import.meta.url).pathname;
const { skey, vkey } = generateKey(ORIGIN);

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI as a subprocess (asynchronously: the fake servers live in this process). */
function run(args: string[], opts: { input?: string; env?: Record<string, string> } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, ...opts.env };
    for (const k of ['TRUSTIX_STATE', 'TRUSTIX_URL', 'TRUSTIX_VKEY', 'TRUSTIX_TOKEN', 'TRUSTIX_TRUST_DIR']) {
      if (!opts.env?.[k]) delete env[k];
    }
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
    child.stdin.end(opts.input ?? '');
  });
}

/** An error is exactly one line `trustix: ...`, never a stack trace. */
function assertOneLineError(r: Run, pattern: RegExp): void {
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `stderr should be one line:\n${r.stderr}`);
  assert.match(lines[0], /^trustix: /);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
}

describe('trustix CLI on remote logs', { concurrency: 4 }, () => {
  let log: Log;
  let server: FakeServer;
  let oldNote: string;
  const servers: FakeServer[] = [];
  const remote = (url: string, trustDir: string) => ['--url', url, '--vkey', vkey, '--trust-dir', trustDir];

  before(async () => {
    log = await makeLog(skey, [40, 30]);
    oldNote = log.head().checkpoint;
    await log.submit([entry('cli-key'), entry('cli-other')]);
    server = await startFakeServer(log);
    servers.push(server);
  });
  after(async () => {
    for (const s of servers) await s.close();
    await log.close();
  });
  const extraServer = async (tamper: FakeServer['tamper']) => {
    const s = await startFakeServer(log);
    s.tamper = tamper;
    servers.push(s);
    return s;
  };

  test('every command has --help with an example', async () => {
    const program = new Command('trustix').exitOverride();
    registerCommands(program);
    const names = ['submit', 'lookup', 'info', 'audit', 'proof', 'verify', 'keygen', 'init'];
    for (const name of names) {
      const cmd = program.commands.find((c) => c.name() === name);
      assert.ok(cmd, name);
      let help = '';
      cmd.configureOutput({ writeOut: (s) => (help += s) });
      cmd.outputHelp();
      assert.match(help, /Example/, `${name} --help`);
      for (const sub of cmd.commands) {
        let h = '';
        sub.configureOutput({ writeOut: (s) => (h += s) });
        sub.outputHelp();
        assert.match(h, /Example/, `${name} ${sub.name()} --help`);
      }
    }
    const r = await run(['lookup', '--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /--url <url>/);
    assert.match(r.stdout, /Example/);
  });

  test('lookup: present 0, absent 3 (JSON), invalid 4 naming the check', async () => {
    const dir = tempDir();
    const bad = await extraServer((req, a) => {
      if (!req.path.startsWith('lookup/')) return undefined;
      const j = JSON.parse(a.body.toString());
      j.entry.proof.pop();
      return { ...a, body: Buffer.from(JSON.stringify(j)) };
    });
    const [present, absent, invalid] = await Promise.all([
      run(['lookup', ...remote(server.url, dir), 'cli-key']),
      run(['lookup', '--json', ...remote(server.url, dir), 'no-such-key']),
      run(['lookup', ...remote(bad.url, tempDir()), 'cli-key']),
    ]);
    assert.equal(present.code, 0, present.stderr);
    assert.match(
      present.stdout,
      /^present: cli-key -> [0-9a-f]{64} \(entry 70, verified against size 72\)\n$/,
    );
    assert.equal(absent.code, 3, absent.stderr);
    const j = JSON.parse(absent.stdout);
    assert.equal(j.status, 'absent');
    assert.equal(j.size, 72);
    assert.equal(typeof j.answer.mapProof, 'string');
    assert.equal(invalid.code, 4);
    assert.match(invalid.stdout, /^INVALID: inclusion\.proof-length: /);
  });

  test('unreachable and hanging logs: exit 1 with one line, no stack trace', async () => {
    const closed = await startFakeServer(log);
    await closed.close();
    const hang = await extraServer(() => 'hang');
    const [refused, timedOut] = await Promise.all([
      run(['lookup', ...remote(closed.url, tempDir()), 'cli-key']),
      run(['info', '--timeout', '0.5', ...remote(hang.url, tempDir())]),
    ]);
    assert.equal(refused.code, 1);
    assertOneLineError(refused, /ECONNREFUSED/);
    assert.equal(timedOut.code, 1);
    assertOneLineError(timedOut, /no answer within 0\.5s/);
  });

  test('info remembers the checkpoint; a later rollback exits 4 naming trust.rollback', async () => {
    const dir = tempDir();
    const info = await run(['info', ...remote(server.url, dir)]);
    assert.equal(info.code, 0, info.stderr);
    assert.match(info.stdout, new RegExp(`origin: ${ORIGIN}\\n`));
    assert.match(info.stdout, /size: \d+\n/);
    assert.ok(info.stdout.includes(`vkey: ${vkey}\n`));
    const rolledBack = await extraServer((req, a) =>
      req.path === 'checkpoint' ? { ...a, body: Buffer.from(oldNote) } : undefined,
    );
    // the key can also come from the server, clearly marked as unverified, and nothing is remembered
    const [r, unpinned] = await Promise.all([
      run(['info', ...remote(rolledBack.url, dir)]),
      run(['info', '--url', server.url, '--trust-dir', dir, '--json']),
    ]);
    assert.equal(r.code, 4);
    assertOneLineError(r, /trust\.rollback: log rolled back: it presents a checkpoint of size 70/);
    assert.equal(unpinned.code, 0, unpinned.stderr);
    const j = JSON.parse(unpinned.stdout);
    assert.equal(j.keyPinned, false);
    assert.equal(j.vkey, vkey);
  });

  test('a newer checkpoint whose consistency proof is refused exits 4 naming trust.unproven-growth', async () => {
    const dir = tempDir();
    const older = await extraServer((req, a) =>
      req.path === 'checkpoint' ? { ...a, body: Buffer.from(oldNote) } : undefined,
    );
    assert.equal((await run(['info', ...remote(older.url, dir)])).code, 0);
    const refusing = await extraServer((req, a) =>
      req.path.startsWith('proof/consistency') ? { ...a, status: 404, body: Buffer.from('{}') } : undefined,
    );
    const r = await run(['info', ...remote(refusing.url, dir)]);
    assert.equal(r.code, 4, r.stderr);
    assertOneLineError(r, /trust\.unproven-growth: log signed trees of sizes 70 and \d+ but does not prove/);
  });

  test('submit: with a token, in batches with progress; a refused token exits 1', async () => {
    const lines = Array.from({ length: 25 }, (_, i) => `bulk-${i} ${(i + 1).toString(16).padStart(64, '0')}`);
    const [ok, refused] = await Promise.all([
      run(['submit', ...remote(server.url, tempDir()), '-f', '-', '--batch-size', '10'], {
        input: lines.join('\n'),
        env: { TRUSTIX_TOKEN: server.token },
      }),
      run(['submit', ...remote(server.url, tempDir()), '--token', 'wrong', 'k=aa']),
    ]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /^25 submitted, 25 appended; log size \d+\n$/);
    assert.match(ok.stderr, /submitting: 25\/25/);
    assert.equal(refused.code, 1);
    assertOneLineError(refused, /answered 401: invalid bearer token/);
  });

  test('proof bundles from a remote log verify offline; tampered ones exit 4', async () => {
    const dir = tempDir();
    const out = join(dir, 'incl.json');
    const p = await run(['proof', 'inclusion', '5', ...remote(server.url, dir), '-o', out]);
    assert.equal(p.code, 0, p.stderr);
    const b = JSON.parse(readFileSync(out, 'utf8'));
    b.index = 6;
    writeFileSync(join(dir, 'bad.json'), JSON.stringify(b));
    const [ok, bad, garbage] = await Promise.all([
      run(['verify', out, '--vkey', vkey]),
      run(['verify', join(dir, 'bad.json'), '--vkey', vkey]),
      run(['verify', '-'], { input: '{"type":' }),
    ]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(
      ok.stdout,
      new RegExp(`^valid: entry 5 \\(nix k0-0-5 -> [0-9a-f]{64}\\) is in ${ORIGIN} at size \\d+\\n$`),
    );
    assert.equal(bad.code, 4);
    assert.match(bad.stdout, /^INVALID: inclusion\.root-mismatch/);
    assert.equal(garbage.code, 4);
    assert.match(garbage.stdout, /^INVALID: bundle\.malformed/);

    // consistency from the checkpoint remembered by the proof above, after the log grew
    await log.submit([entry('grew-for-proof')]);
    const [c, l] = await Promise.all([
      run(['proof', 'consistency', ...remote(server.url, dir)]),
      run(['proof', 'lookup', 'cli-key', ...remote(server.url, tempDir())]),
    ]);
    assert.equal(c.code, 0, c.stderr);
    const v = await run(['verify', '-', '--vkey', vkey, '--json'], { input: c.stdout });
    assert.equal(v.code, 0, v.stderr);
    const vj = JSON.parse(v.stdout);
    assert.equal(vj.type, 'trustix-consistency/v1');
    assert.ok(vj.newSize > vj.oldSize);
    assert.equal(l.code, 0, l.stderr);
    assert.equal(JSON.parse(l.stdout).type, 'trustix-lookup/v1');
  });

  test('remote audit reproduces the latest and the remembered checkpoint; a lying log exits 4', async () => {
    const dir = tempDir();
    // remember an older checkpoint first
    const early = await extraServer((req, a) =>
      req.path === 'checkpoint' ? { ...a, body: Buffer.from(oldNote) } : undefined,
    );
    assert.equal((await run(['info', ...remote(early.url, dir)])).code, 0);
    const lying = await extraServer((req, a) => {
      if (!req.path.startsWith('tile/entries/000')) return undefined;
      const b = Buffer.from(a.body);
      b[b.length - 3] ^= 1;
      return { ...a, body: b };
    });
    const [r, bad] = await Promise.all([
      run(['audit', ...remote(server.url, dir)]),
      run(['audit', '--json', ...remote(lying.url, tempDir())]),
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^ok: \d+ entries, 2 checkpoints reproduced\n$/);
    assert.equal(bad.code, 4);
    assert.equal(JSON.parse(bad.stdout).divergence.check, 'log-root');
  });

  test('usage errors exit 2 with one line', async () => {
    const [both, noVkey] = await Promise.all([
      run(['lookup', '--state', tempDir(), '--url', server.url, 'k']),
      run(['submit', '--url', server.url, '--token', 't', 'k=aa']),
    ]);
    for (const r of [both, noVkey]) assert.equal(r.code, 2, r.stderr);
    assertOneLineError(both, /not both/);
    assertOneLineError(noVkey, /need --vkey/);
  });
});

test('a reader that closes the pipe early ends the output quietly', async () => {
  // `trustix lookup --help | head -0`: the reader is gone before the first write
  const r = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', MAIN, 'lookup', '--help'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.stdout.destroy();
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stderr }));
  });
  assert.equal(r.stderr, '');
  assert.equal(r.code, 0);
});

describe('trustix CLI on local logs', () => {
  test('proof and verify with --state; lookup exit codes unchanged', async () => {
    const state = join(tempDir(), 'log');
    const k = generateKey('example.com/local');
    const local = await Log.create(state, 'example.com/local', { skey: k.skey, batchDelayMs: 1 });
    await local.submit([entry('a'), entry('b')]);
    await local.submit([entry('c')]);
    await local.close();
    const [incl, cons, absent] = await Promise.all([
      run(['proof', 'inclusion', '1', '--state', state]),
      run(['proof', 'consistency', '--state', state, '--old-size', '2']),
      run(['lookup', '--state', state, 'zzz']),
    ]);
    assert.equal(incl.code, 0, incl.stderr);
    assert.equal(cons.code, 0, cons.stderr);
    assert.equal(absent.code, 3, absent.stderr);
    assert.match(absent.stdout, /^absent: zzz \(non-inclusion verified against size 3\)/);
    const [v1, v2] = await Promise.all([
      run(['verify', '-', '--vkey', k.vkey], { input: incl.stdout }),
      run(['verify', '-', '--vkey', k.vkey], { input: cons.stdout }),
    ]);
    assert.equal(v1.code, 0, v1.stderr);
    assert.match(v1.stdout, /^valid: entry 1 \(nix b -> /);
    assert.equal(v2.code, 0, v2.stderr);
    assert.match(v2.stdout, /^valid: example\.com\/local at size 2 is a prefix of size 3/);
  });
});
