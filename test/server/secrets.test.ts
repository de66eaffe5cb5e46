// Secret files that other users can read or write are refused, with the fix in the message: a log's
// signing key (serve, local submit), a serve key_file, a writer token of the node, a writer key, a
// publish token_file.
import assert from 'node:assert/strict';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { InsecureSecretError, readSecretFile } from '../../src/config/secret.js';
import { generateKey } from '../../src/core/note.js';
import { parsePublishConfig } from '../../src/nix/publish.js';
import {
  cleanup,
  runCli,
  runServeExpectingFailure,
  startServer,
  tempDir,
} from '../fixtures/server-helpers.js';

function assertRefused(r: { code: number | null; stderr: string }, file: string): void {
  assert.equal(r.code, 1, r.stderr);
  assert.ok(r.stderr.includes(`chmod 600 ${file}`), r.stderr);
  assert.match(r.stderr, /accessible by other users \(mode 0[0-7]{3}\)/);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
}

test('readSecretFile: any group or other bit is refused, 0600 and 0400 are read', () => {
  const dir = tempDir();
  try {
    const file = join(dir, 'k');
    writeFileSync(file, 'secret\n');
    for (const mode of [0o644, 0o666, 0o640, 0o604, 0o620]) {
      chmodSync(file, mode);
      assert.throws(
        () => readSecretFile(file, 'key'),
        (e: unknown) =>
          e instanceof InsecureSecretError &&
          e.message.includes(`chmod 600 ${file}`) &&
          e.mode % 0o1000 === mode,
      );
    }
    for (const mode of [0o600, 0o400]) {
      chmodSync(file, mode);
      assert.equal(readSecretFile(file, 'key'), 'secret');
    }
  } finally {
    cleanup(dir);
  }
});

test('serve and local submit refuse a loose signing.key or writer token', { timeout: 120_000 }, async () => {
  const dir = tempDir();
  try {
    const args = ['--state', dir, '--listen', '127.0.0.1:0'];
    const srv = await startServer(args);
    await srv.stop();
    const logDir = join(dir, 'logs', 'default');
    const key = join(logDir, 'signing.key');

    chmodSync(key, 0o644);
    assertRefused(await runServeExpectingFailure(args), key);
    chmodSync(key, 0o666);
    assertRefused(await runCli(['submit', '--state', logDir, 'k=aa']), key);
    // readers need no key
    assert.equal((await runCli(['info', '--state', logDir])).code, 0);
    chmodSync(key, 0o600);

    const tokenFile = join(dir, 'writers', 'default.token');
    chmodSync(tokenFile, 0o644);
    assertRefused(await runServeExpectingFailure(args), tokenFile);
    chmodSync(tokenFile, 0o600);
    const again = await startServer(args);
    await again.stop();
  } finally {
    cleanup(dir);
  }
});

test('a loose key_file, --key-file, --writer-key or publish token_file is refused', async () => {
  const dir = tempDir();
  try {
    const { skey } = generateKey('example.com/log');
    const keyFile = join(dir, 'log.key');
    writeFileSync(keyFile, `${skey}\n`, { mode: 0o644 });
    chmodSync(keyFile, 0o644);
    assertRefused(
      await runCli([
        'init',
        '--state',
        join(dir, 'log'),
        '--origin',
        'example.com/log',
        '--key-file',
        keyFile,
      ]),
      keyFile,
    );
    const config = join(dir, 'node.toml');
    writeFileSync(
      config,
      `[[log]]\nid = "a"\norigin = "example.com/log"\nkey_file = "log.key"\n\n[[listen]]\naddress = "127.0.0.1:0"\n`,
    );
    assertRefused(await runServeExpectingFailure(['--config', config]), keyFile);
    const writerKey = join(dir, 'writer.key');
    writeFileSync(writerKey, `${generateKey('writer').skey}\n`);
    chmodSync(writerKey, 0o640);
    assertRefused(
      await runCli([
        'submit',
        '--url',
        'http://127.0.0.1:9/logs/default/',
        '--vkey',
        generateKey('x/y').vkey,
        '--writer-key',
        writerKey,
        'k=aa',
      ]),
      writerKey,
    );
    const token = join(dir, 'token');
    writeFileSync(token, 'sekrit\n');
    chmodSync(token, 0o604);
    assert.throws(
      () => parsePublishConfig('token_file = "token"\n', dir),
      (e: unknown) => e instanceof InsecureSecretError && e.message.includes(`chmod 600 ${token}`),
    );
  } finally {
    cleanup(dir);
  }
});
