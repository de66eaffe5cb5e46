// The node's tlog-tiles API, read by a client that knows only the C2SP specs
// (test/fixtures/tlog-tiles-client.ts): checkpoints, tiles, entry bundles, inclusion and
// consistency, including an older checkpoint whose partial tiles must still be served.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { parseReceipts } from '../../src/core/receipts.js';
import {
  cleanup,
  makeEntries,
  type RunningServer,
  startServer,
  submit,
  tempDir,
  token,
} from '../fixtures/server-helpers.js';
import { checkTlogTiles } from '../fixtures/tlog-tiles-client.js';

let dir: string;
let srv: RunningServer;

before(async () => {
  dir = tempDir();
  srv = await startServer(['--state', dir, '--listen', '127.0.0.1:0', '--origin', 'c2sp.test/log']);
});
after(async () => {
  await srv?.stop();
  cleanup(dir);
});

test('a C2SP-only client verifies checkpoints, tiles, entry bundles, inclusion and consistency', async () => {
  const auth = { authorization: `Bearer ${token(dir)}` };
  // an old checkpoint with a partial tile at level 0 and none at level 1
  const first = await submit(srv.url, makeEntries(200), auth);
  assert.equal(first.status, 200, srv.stderr());
  const oldNote = parseReceipts(await first.json(), 200)[0].checkpoint;
  for (let i = 0; i < 3; i++) {
    const r = await submit(srv.url, makeEntries(200), auth);
    assert.equal(r.status, 200, `${await r.text()}\n${srv.stderr()}`);
  }
  await checkTlogTiles(`${srv.url}/logs/default/`, {
    vkey: srv.vkey,
    origin: 'c2sp.test/log',
    size: 800,
    older: [oldNote],
    headers: true,
  });
});
