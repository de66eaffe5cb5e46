// One writer per store: a second `serve` or a local `submit` on a store that a running node writes is
// refused with the holder's PID; readers go on; a SIGKILLed holder leaves no stale lock; two
// [[log]] entries that reach one directory through a symbolic link are refused.
import assert from 'node:assert/strict';
import { mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseConfig } from '../../src/server/config.js';
import { LmdbLogStore } from '../../src/storage/lmdb/lmdb.js';
import { StoreLockedError } from '../../src/storage/lock.js';
import {
  cleanup,
  runCli,
  runServeExpectingFailure,
  startServer,
  tempDir,
  writeConfig,
} from '../fixtures/server-helpers.js';

function assertRefusedBy(r: { code: number | null; stderr: string }, pid: number): void {
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`in use by another writer \\(process ${pid},`));
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
}

test('a second writer on a served store is refused with the PID; readers go on; SIGKILL frees it', {
  timeout: 120_000,
}, async () => {
  const dir = tempDir();
  try {
    const args = ['--state', dir, '--listen', '127.0.0.1:0'];
    const first = await startServer(args);
    const pid = first.proc.pid!;
    const logDir = join(dir, 'logs', 'default');

    assertRefusedBy(await runServeExpectingFailure(args), pid);
    assertRefusedBy(await runCli(['submit', '--state', logDir, 'k1=aa']), pid);
    // read-only users take no lock
    const info = await runCli(['info', '--state', logDir, '--json']);
    assert.equal(info.code, 0, info.stderr);
    assert.equal(JSON.parse(info.stdout).size, 0);
    const lookup = await runCli(['lookup', '--state', logDir, 'k1']);
    assert.equal(lookup.code, 3, lookup.stderr);
    // the running node still takes writes
    assert.equal(first.proc.exitCode, null);

    first.proc.kill('SIGKILL');
    await first.exited;
    const second = await startServer(args);
    assert.ok(second.stdout.some((l) => l.startsWith('log default: opened')));
    await second.stop();
    // and after a clean stop, a local writer gets the store
    const submitted = await runCli(['submit', '--state', logDir, 'k1=aa']);
    assert.equal(submitted.code, 0, submitted.stderr);
  } finally {
    cleanup(dir);
  }
});

test('two opens of one store in one process: the second writer is refused', () => {
  const dir = tempDir();
  try {
    const a = LmdbLogStore.open(join(dir, 'log'), { create: true });
    try {
      assert.throws(
        () => LmdbLogStore.open(join(dir, 'log')),
        (err: unknown) => err instanceof StoreLockedError && err.holderPid === process.pid,
      );
      // a reader is not
      const r = LmdbLogStore.open(join(dir, 'log'), { readOnly: true });
      void r.close();
    } finally {
      void a.close();
    }
  } finally {
    cleanup(dir);
  }
});

test('two [[log]] entries reaching one directory through a symbolic link are refused', async () => {
  const dir = tempDir();
  try {
    mkdirSync(join(dir, 'logs', 'a'), { recursive: true });
    symlinkSync(join(dir, 'logs', 'a'), join(dir, 'alias'));
    // the same directory before it exists: through a link to its parent
    symlinkSync(join(dir, 'logs'), join(dir, 'logs-link'));
    const config = (a: string, b: string) =>
      `[[log]]\nid = "a"\norigin = "x/a"\ndir = "${a}"\n\n[[log]]\nid = "b"\norigin = "x/b"\ndir = "${b}"\n`;
    const parse = (text: string) => parseConfig(text, { source: 't.toml', baseDir: dir, stateDir: dir });
    assert.throws(
      () => parse(config('logs/a', 'alias')),
      /log\[1\]\.dir: directory .*alias is used by another log/,
    );
    assert.throws(
      () => parse(config('logs/new', 'logs-link/new')),
      /log\[1\]\.dir: .* is used by another log/,
    );
    assert.equal(parse(config('logs/a', 'logs/b')).logs.length, 2);

    const file = writeConfig(dir, `${config('logs/a', 'alias')}\n[[listen]]\naddress = "127.0.0.1:0"\n`);
    const r = await runServeExpectingFailure(['--config', file]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /used by another log/);
  } finally {
    cleanup(dir);
  }
});
