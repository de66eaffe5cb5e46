// The client against the real server (`trustix serve` as a process), not the fake.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LogClient, listLogs } from '../../src/client/client.js';
import { RemoteError } from '../../src/client/errors.js';
import { FileTrustStore } from '../../src/client/trust-store.js';
import { inclusionBundle, lookupBundle, verifyBundle } from '../../src/core/bundle.js';
import { generateKey } from '../../src/core/note.js';
import { auditEntries } from '../../src/log/audit.js';
import { cleanup, type RunningServer, startServer, tempDir, token } from '../fixtures/server-helpers.js';
import { entry, rejectsWith } from './helpers.js';

describe('client against trustix serve', () => {
  let dir: string;
  let srv: RunningServer;
  let url: string;
  const writer = generateKey('ci-writer');

  before(async () => {
    dir = tempDir();
    const node = join(dir, 'node');
    // the first start creates the node; then a writer with a public key (signed requests) is added
    const first = await startServer([
      '--state',
      node,
      '--listen',
      '127.0.0.1:0',
      '--origin',
      'interop.test/log',
    ]);
    await first.stop();
    const config = join(node, 'trustix.toml');
    const block = `[[writer]]\nname = "ci"\npublic_key = "${writer.vkey}"\nlogs = ["*"]\n\n`;
    writeFileSync(config, readFileSync(config, 'utf8').replace('[[listen]]', `${block}[[listen]]`));
    srv = await startServer(['--state', node, '--listen', '127.0.0.1:0']);
    url = `${srv.url}/logs/default/`;
  });
  after(async () => {
    await srv?.stop();
    cleanup(dir);
  });

  test('submit (token and signed), lookups, proofs, bundles and an audit all verify', async () => {
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
    // a signed request (Trustix-Signature) by the configured writer key; another key is refused
    const signed = await c.submit([entry('signed-1')], { skey: writer.skey, writer: 'ci' });
    assert.deepEqual([signed[0].index, signed[0].verified], [300, true]);
    const forged = generateKey('ci-writer');
    const err = (await rejectsWith(
      c.submit([entry('signed-2')], { skey: forged.skey, writer: 'ci' }),
      RemoteError,
      'http.status',
    )) as RemoteError;
    assert.equal(err.status, 401);

    const size = 301;
    const present = await c.lookup('nix', 'interop-299');
    assert.equal(present.status, 'present');
    assert.equal(present.checkpoint.size, size);
    assert.equal((await c.lookup('nix', 'not there / ü')).status, 'absent');
    assert.equal(
      verifyBundle(lookupBundle(c.vkey, present.answer), { vkey: srv.vkey }).type,
      'trustix-lookup/v1',
    );

    const p = await c.proveInclusion(260);
    const bundle = inclusionBundle(c.vkey, p.trusted.note, 260, p.data, p.proof);
    assert.equal(verifyBundle(bundle, { vkey: srv.vkey }).type, 'trustix-inclusion/v1');
    const q = await c.proveConsistency(receipts[0].checkpoint);
    assert.equal(q.new.checkpoint.size, size);

    const report = await auditEntries(c.entries(0, size), [{ size, checkpoint: p.trusted.note }], c.verifier);
    assert.deepEqual(report, { ok: true, size, checkpoints: 1 });
    const tile = await c.tile(0, 1, size - 256);
    assert.equal(tile.length, (size - 256) * 32);

    const list = await listLogs(srv.url);
    assert.equal(list[0].vkey, srv.vkey);
    assert.equal((await new LogClient({ url, vkey: srv.vkey, trustStore }).trusted())?.checkpoint.size, size);
  });
});
