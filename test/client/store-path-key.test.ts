// Under the nix protocol a key is a store path's hash part: `lookup`, `proof lookup` and `decide`
// take a store path, or a link to one such as ./result, for its hash part.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { toHex } from '../../src/core/bytes.js';
import { generateKey } from '../../src/core/note.js';
import { Log } from '../../src/log/log.js';
import { entry, tempDir } from './helpers.js';

const MAIN = new URL('../../src/cli/main.ts', import.meta.url).pathname;
const HASH = '0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k';
const STORE_PATH = `/nix/store/${HASH}-hello-2.12.1`;

test('lookup, proof lookup and decide take a store path or ./result for its hash part', async () => {
  const dir = tempDir();
  const state = join(dir, 'log');
  const { skey, vkey } = generateKey('store.test/log');
  const log = await Log.create(state, 'store.test/log', { skey, batchDelayMs: 1 });
  await log.submit([entry(HASH)]);
  await log.close();
  symlinkSync(STORE_PATH, join(dir, 'result'));
  const value = toHex(entry(HASH).value);

  for (const arg of [HASH, STORE_PATH, `${STORE_PATH}/`, './result', 'result']) {
    const r = await cli(['lookup', '--state', state, '--json', arg], dir);
    assert.equal(r.code, 0, `${arg}: ${r.stdout}${r.stderr}`);
    assert.equal(JSON.parse(r.stdout).value, value, arg);
  }
  const p = await cli(['proof', 'lookup', '--state', state, './result'], dir);
  assert.equal(p.code, 0, p.stderr);
  assert.equal(JSON.parse(p.stdout).answer.key, Buffer.from(HASH).toString('base64'));

  const cfg = join(dir, 'decide.toml');
  writeFileSync(cfg, `[[log]]\nname = "mine"\nstate = "log"\nvkey = "${vkey}"\n`);
  const d = await cli(
    ['decide', '--config', cfg, '--trust-dir', join(dir, 'trust'), '--json', './result'],
    dir,
  );
  assert.equal(d.code, 0, d.stdout + d.stderr);
  assert.equal(JSON.parse(d.stdout).key, HASH);
  assert.equal(JSON.parse(d.stdout).value, value);

  // a path that is no store path is a usage error, not "absent"
  const bad = await cli(['lookup', '--state', state, '/nix/store/not-a-store-path'], dir);
  assert.equal(bad.code, 2, bad.stdout + bad.stderr);
  assert.match(bad.stderr, /^trustix: .*not-a-store-path/);
});

function cli(args: string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', import.meta.resolve('tsx'), MAIN, ...args],
      { cwd },
      (err, stdout, stderr) => {
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
      },
    );
  });
}
