// A full disk refuses writes with 507 and a JSON error; reads go on; the node takes writes again once
// space is freed, and never dies. Run on a 20 MiB tmpfs (needs root to mount; skipped otherwise).
import assert from 'node:assert/strict';
import { closeSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { verifyLookup } from '../../src/core/lookup.js';
import { verifierFromVkey } from '../../src/core/note.js';
import {
  type EntryJson,
  makeEntries,
  mountTmpfs,
  startServer,
  submit,
  token,
  unmount,
} from '../fixtures/server-helpers.js';

/** Writes zeros to `file` until the file system is full. */
function fill(file: string): void {
  const fd = openSync(file, 'w');
  const chunk = Buffer.alloc(64 * 1024);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (err) {
    assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC');
  } finally {
    closeSync(fd);
  }
}

test('a full disk: writes get 507, reads go on, writes resume when space returns', {
  timeout: 300_000,
}, async (t) => {
  const mnt = mountTmpfs('20m');
  if (!mnt.startsWith('/')) {
    t.skip(mnt);
    return;
  }
  const state = join(mnt, 'state');
  const srv = await startServer(['--state', state, '--listen', '127.0.0.1:0']);
  try {
    const verifier = verifierFromVkey(srv.vkey);
    const auth = { authorization: `Bearer ${token(state)}` };
    const lookup = (key: string) => fetch(`${srv.url}/logs/default/lookup/nix/${encodeURIComponent(key)}`);
    const acked: EntryJson[] = [];
    const first = makeEntries(100);
    assert.equal((await submit(srv.url, first, auth)).status, 200);
    acked.push(...first);

    fill(join(mnt, 'filler'));
    // the space secured ahead of the store may take a few more batches; then writes are refused
    let refused: Response | undefined;
    for (let i = 0; i < 200 && refused === undefined; i++) {
      const entries = makeEntries(500);
      const r = await submit(srv.url, entries, auth);
      if (r.status === 200) acked.push(...entries);
      else refused = r;
    }
    assert.ok(refused, 'a write is refused before the disk is exhausted');
    assert.equal(refused.status, 507);
    assert.match(refused.headers.get('content-type') ?? '', /application\/json/);
    const body = (await refused.json()) as { error: string; code: string };
    assert.equal(body.code, 'INSUFFICIENT_STORAGE');
    assert.match(body.error, /not enough disk space/);

    // reads go on, for every acknowledged entry sampled
    for (const e of [acked[0], acked[acked.length - 1], acked[Math.floor(acked.length / 2)]]) {
      const r = await lookup(e.key);
      assert.equal(r.status, 200);
      const v = verifyLookup(await r.json(), verifier, { protocol: 'nix', key: Buffer.from(e.key) });
      assert.equal(v.status, 'present');
      if (v.status === 'present') assert.equal(v.entry.value.toString('hex'), e.value);
    }
    assert.equal((await fetch(`${srv.url}/logs/default/checkpoint`)).status, 200);

    rmSync(join(mnt, 'filler'));
    const after = makeEntries(500);
    assert.equal((await submit(srv.url, after, auth)).status, 200);
    acked.push(...after);
    const r = await lookup(after[0].key);
    assert.equal(r.status, 200);
    assert.equal(srv.proc.exitCode, null, 'the node never died');
    assert.equal(srv.proc.signalCode, null);
  } finally {
    await srv.stop();
    unmount(mnt);
  }
});
