// Keys "." and ".." against a real `trustix serve`: URL parsing removes such path segments (even
// percent-encoded), so lookups must still reach the key, not the parent path.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LogClient } from '../../src/client/client.js';
import { toHex } from '../../src/core/bytes.js';
import { cleanup, type RunningServer, startServer, tempDir, token } from '../fixtures/server-helpers.js';
import { entry } from './helpers.js';

const MAIN = new URL('../../src/cli/main.ts', import.meta.url).pathname;

describe('dot keys against a real server', () => {
  let dir: string;
  let server: RunningServer;
  let url: string;

  before(async () => {
    dir = tempDir();
    server = await startServer(['--state', join(dir, 'node'), '--listen', '127.0.0.1:0']);
    url = `${server.url}/logs/default/`;
    await new LogClient({ url, vkey: server.vkey }).submit([entry('.'), entry('..'), entry('...')], {
      token: token(join(dir, 'node')),
    });
  });
  after(async () => {
    await server.stop();
    cleanup(dir);
  });

  test('lookups of ".", ".." and "..." find those keys, as GET and as POST lookup', async () => {
    for (const maxLookupBatch of [64, 1]) {
      const c = new LogClient({ url, vkey: server.vkey, maxLookupBatch });
      for (const k of ['.', '..', '...']) {
        const r = await c.lookup('nix', k);
        assert.equal(r.status, 'present', `${k} (batch ${maxLookupBatch})`);
        assert.equal(toHex(r.status === 'present' ? r.entry.value : Buffer.alloc(0)), toHex(entry(k).value));
      }
    }
  });

  test('trustix lookup --url finds the key ".."', async () => {
    const r = await cli([
      'lookup',
      '--url',
      url,
      '--vkey',
      server.vkey,
      '--trust-dir',
      join(dir, 'trust'),
      '--json',
      '..',
    ]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.status, 'present');
    assert.equal(j.value, toHex(entry('..').value));
  });
});

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', MAIN, ...args], (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}
