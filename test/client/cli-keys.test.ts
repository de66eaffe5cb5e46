// `trustix submit` refuses keys that are not UTF-8, from the command line and from a file: decoding
// them would turn each invalid byte into U+FFFD, another key. U+FFFD written as UTF-8 is a key.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { Log } from '../../src/log/log.js';
import { cleanup, tempDir } from '../fixtures/server-helpers.js';

const MAIN = new URL('../../src/cli/main.ts', import.meta.url).pathname;

/** Runs `trustix ARGS` through a shell, so arguments can hold any bytes (printf escapes). */
function run(shellArgs: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('sh', ['-c', `exec "$0" --import tsx "$1" ${shellArgs}`, process.execPath, MAIN], {
      stdio: 'pipe',
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

test('submit refuses keys that are not UTF-8 and keeps U+FFFD distinct', { timeout: 300_000 }, async () => {
  const dir = tempDir('trustix-cli-keys-');
  try {
    const state = join(dir, 'log');
    await (await Log.create(state, 'cli-keys.test/log')).close();
    const value = 'ab'.repeat(32);
    const arg = await run(`submit --state ${state} "$(printf 'k-\\377=${value}')"`);
    assert.equal(arg.code, 2, arg.stderr);
    assert.match(arg.stderr, /not valid UTF-8/);
    const file = join(dir, 'pairs');
    writeFileSync(
      file,
      Buffer.concat([Buffer.from('ok-1 00\nk-'), Buffer.from([0xff]), Buffer.from(` ${value}\n`)]),
    );
    const fromFile = await run(`submit --state ${state} -f ${file}`);
    assert.equal(fromFile.code, 2, fromFile.stderr);
    assert.match(fromFile.stderr, /line 2: not valid UTF-8/);
    // nothing was appended by either
    const log = await Log.open(state);
    assert.equal(log.head().size, 0);
    await log.close();
    // U+FFFD itself (UTF-8 EF BF BD) is a valid key
    const ok = await run(`submit --state ${state} "$(printf 'k-\\357\\277\\275=${value}')"`);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /1 submitted, 1 appended/);
  } finally {
    cleanup(dir);
  }
});
