import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { Entry } from '../../src/core/entry.js';
import { StorageError } from '../../src/core/errors.js';
import { verifyLookup } from '../../src/core/lookup.js';
import { cosignerFromSkey, generateKey, verifierFromVkey } from '../../src/core/note.js';
import { STRATA_V1, smtAudit } from '../../src/core/smt.js';
import { auditStore } from '../../src/log/audit.js';
import { Log } from '../../src/log/log.js';
import { convertStrata, strataState } from '../../src/log/strata-format.js';
import { LogCopy } from '../../src/mirror/copy.js';
import { LmdbLogStore } from '../../src/storage/lmdb/lmdb.js';
import { rewriteAsFormatOne } from '../fixtures/strata-v1.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const entry = (key: string, n: number): Entry => ({
  protocol: 'nix',
  key: Buffer.from(key),
  value: Buffer.alloc(32, n),
  metadata: Buffer.from(''),
});

const KEYS = 3000;

/**
 * A log of KEYS entries whose sparse index is stored in format 1, as older versions wrote it: the
 * log is written by this code, then its rows are replaced by format 1 rows of the same tree.
 */
async function formatOneLog(): Promise<{ dir: string; vkey: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'trustix-strata-'));
  dirs.push(dir);
  const log = await Log.create(dir, 'test.example/strata', { batchDelayMs: 1 });
  const vkey = log.vkey;
  for (let b = 0; b < 3; b++) {
    await log.submit(Array.from({ length: KEYS / 3 }, (_, i) => entry(`k${b}-${i}`, i & 0xff)));
  }
  await log.close();
  const rows = await rewriteAsFormatOne(dir);
  assert.ok(
    rows.some((r) => r.id[0] === 2),
    'the format 1 index reaches depth-16 strata',
  );
  const store = LmdbLogStore.open(dir);
  assert.equal(strataState(store), 'format-1');
  await store.close();
  return { dir, vkey };
}

/** Opens `dir` and checks that every key answers with valid proofs and that the store audits clean. */
async function checkLog(dir: string, vkey: string): Promise<void> {
  const log = await Log.open(dir, { progress: () => {} });
  try {
    const verifier = verifierFromVkey(vkey);
    for (let b = 0; b < 3; b++) {
      for (let i = 0; i < KEYS / 3; i += 37) {
        const key = Buffer.from(`k${b}-${i}`);
        const r = verifyLookup(log.lookup('nix', key), verifier, { protocol: 'nix', key });
        assert.equal(r.status, 'present', `k${b}-${i}`);
      }
    }
    const absent = Buffer.from('never submitted');
    assert.equal(
      verifyLookup(log.lookup('nix', absent), verifier, { protocol: 'nix', key: absent }).status,
      'absent',
    );
    assert.ok((await auditStore(log.storage, verifier)).ok);
    log.storage.read((s) => {
      const { strata, leaves } = smtAudit(s.head()!.mapRoot, (id) => s.stratum(id));
      assert.equal(leaves, KEYS);
      assert.ok(strata.every((id) => id[0] >= 0x40));
      assert.equal(s.stratum(Buffer.from([STRATA_V1.idBase])), undefined, 'the old root row is gone');
    });
    assert.equal(strataState(log.storage), 'current');
    // and it takes new entries
    await log.submit([entry('after', 1)]);
  } finally {
    await log.close();
  }
}

describe('sparse index format 1 stores', () => {
  test('are converted when opened to write, with progress lines, and answer as before', async () => {
    const { dir, vkey } = await formatOneLog();
    // a reader cannot convert: it is told how to
    await assert.rejects(Log.open(dir, { readOnly: true }), (err: Error) => {
      assert.ok(err instanceof StorageError);
      assert.match(err.message, /older format: open the log once to write/);
      return true;
    });
    const lines: string[] = [];
    const log = await Log.open(dir, { progress: (line) => lines.push(line) });
    await log.close();
    assert.match(lines[0], /format 1/);
    assert.match(lines.at(-1)!, /converted to format 2 \(\d+ old rows removed/);
    assert.ok(lines.some((l) => l === `converted 3,000 of 3,000 index leaves`));
    await checkLog(dir, vkey);
  });

  test('a conversion cut short is started again, and one cut short at its end only removes old rows', async () => {
    const { dir, vkey } = await formatOneLog();
    const stopAt = (pattern: RegExp) => (line: string) => {
      if (pattern.test(line)) throw new Error('killed');
    };
    let store = LmdbLogStore.open(dir);
    // killed after the first of several commits: the old index is whole, the new one partial
    await assert.rejects(convertStrata(store, stopAt(/^converted 500 /), 500), /killed/);
    assert.equal(strataState(store), 'format-1');
    // killed after the last leaf: only the old rows are left to remove
    await assert.rejects(convertStrata(store, stopAt(/^converted 3,000 /), 500), /killed/);
    assert.equal(strataState(store), 'format-1-rows-left');
    await store.close();
    store = LmdbLogStore.open(dir);
    await convertStrata(store, () => {}, 500);
    assert.equal(strataState(store), 'current');
    await store.close();
    await checkLog(dir, vkey);
  });

  test('a damaged format 1 index is refused before anything is written', async () => {
    const { dir } = await formatOneLog();
    const store = LmdbLogStore.open(dir);
    try {
      const head = store.read((s) => s.head())!;
      const id = Buffer.from([1, 0x42]);
      const row = store.read((s) => s.stratum(id))!;
      row[row.length - 1] ^= 1; // a leaf value byte
      await store.commit({
        firstIndex: head.size,
        entries: [],
        tiles: [],
        strataWrites: [{ id, data: row }],
        strataDeletes: [],
        head,
      });
      await assert.rejects(
        convertStrata(store, () => {}),
        StorageError,
      );
      assert.equal(strataState(store), 'format-1');
      assert.equal(
        store.read((s) => s.stratum(Buffer.from([0x40]))),
        undefined,
        'no new row was written',
      );
    } finally {
      await store.close();
    }
  });

  test("a mirror's copy kept in format 1 is converted when the mirror opens it", async () => {
    const { dir, vkey } = await formatOneLog();
    const lines: string[] = [];
    const copy = await LogCopy.open({
      id: 'copy',
      dir,
      vkey,
      cosigner: cosignerFromSkey(generateKey('mirror.example').skey),
      writeProof: () => {
        throw new Error('no proof expected');
      },
      say: (line) => lines.push(line),
    });
    try {
      assert.match(lines.at(-1)!, /converted to format 2/);
      const key = Buffer.from('k1-5');
      const answer = copy.served.lookup('nix', key);
      assert.equal(verifyLookup(answer, verifierFromVkey(vkey), { protocol: 'nix', key }).status, 'present');
    } finally {
      await copy.close();
    }
  });
});
