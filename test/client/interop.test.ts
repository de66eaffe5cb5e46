// The client against the real server (`trustix serve` as a process), not the fake.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LogClient, listLogs } from '../../src/client/client.js';
import { RemoteError } from '../../src/client/errors.js';
import { FileTrustStore } from '../../src/client/trust-store.js';
import { inclusionBundle, lookupBundle, verifyBundle } from '../../src/core/bundle.js';
import { auditEntries } from '../../src/log/audit.js';
import { cleanup, type RunningServer, startServer, tempDir, token } from '../fixtures/server-helpers.js';
import { entry, rejectsWith } from './helpers.js';

describe('client against trustix serve', () => {
  let dir: string;
  let srv: RunningServer;
  let url: string;
  before(async () => {
    dir = tempDir();
    srv = await startServer([
      '--state',
      join(dir, 'node'),
      '--listen',
      '127.0.0.1:0',
      '--origin',
      'interop.test/log',
    ]);
    url = `${srv.url}/logs/default/`;
  });
  after(async () => {
    await srv?.stop();
    cleanup(dir);
  });

  test('submit, lookups, proofs, bundles and an audit of the latest checkpoint all verify', async () => {
    const trustStore = new FileTrustStore(join(dir, 'trust'));
    const c = new LogClient({ url, vkey: srv.vkey, trustStore });
    const empty = await c.checkpoint();
    assert.equal(empty.checkpoint.size, 0);
    const auth = { token: token(join(dir, 'node')) };
    const entries = Array.from({ length: 300 }, (_, i) => entry(`interop-${i}`));
    const receipts = await c.submit(entries, auth, { batchSize: 120 });
    assert.equal(receipts.length, 300);
    assert.ok(receipts.every((r) => !r.duplicate && r.verified));
    const again = await c.submit([entries[7]], auth);
    assert.deepEqual(
      [again[0].index, again[0].duplicate, again[0].verified],
      [receipts[7].index, true, true],
    );
    await rejectsWith(c.submit([entry('x')], { token: 'nope' }), RemoteError, 'http.status');

    const present = await c.lookup('nix', 'interop-299');
    assert.equal(present.status, 'present');
    assert.equal(present.checkpoint.size, 300);
    assert.equal((await c.lookup('nix', 'not there / ü')).status, 'absent');
    assert.equal(
      verifyBundle(lookupBundle(c.vkey, present.answer), { vkey: srv.vkey }).type,
      'trustix-lookup/v1',
    );

    const p = await c.proveInclusion(260);
    assert.equal(
      verifyBundle(inclusionBundle(c.vkey, p.trusted.note, 260, p.data, p.proof), { vkey: srv.vkey }).type,
      'trustix-inclusion/v1',
    );
    const q = await c.proveConsistency(receipts[0].checkpoint);
    assert.equal(q.new.checkpoint.size, 300);

    const report = await auditEntries(
      c.entries(0, 300),
      [{ size: 300, checkpoint: p.trusted.note }],
      c.verifier,
    );
    assert.deepEqual(report, { ok: true, size: 300, checkpoints: 1 });
    const tile = await c.tile(0, 1, 300 - 256);
    assert.equal(tile.length, 44 * 32);

    const list = await listLogs(srv.url);
    assert.equal(list[0].vkey, srv.vkey);
    assert.equal((await new LogClient({ url, vkey: srv.vkey, trustStore }).trusted())?.checkpoint.size, 300);
  });
});
