import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { SMT_EMPTY, smtApplyBatch } from '../../src/core/smt.js';
import { SmtOffload } from '../../src/log/smt-offload.js';
import { LmdbLogStore } from '../../src/storage/lmdb/lmdb.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('smt offload', () => {
  test('a worker that cannot open the store answers undefined, so the caller computes in thread', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'trustix-offload-'));
    dirs.push(dir);
    const off = new SmtOffload(join(dir, 'no-such-log'));
    const updates = Array.from({ length: 10 }, () => ({ path: randomBytes(32), value: randomBytes(40) }));
    assert.equal(await off.apply(SMT_EMPTY, updates), undefined);
    // once broken it is not tried again
    assert.equal(await off.apply(SMT_EMPTY, updates), undefined);
    await off.close();
    // the in-thread computation is what the sequencer then uses
    assert.equal(smtApplyBatch(SMT_EMPTY, updates, () => undefined).root.length, 32);
  });

  test('results built on uncommitted results stay right while the worker reuses memory of committed ones', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'trustix-offload-'));
    dirs.push(dir);
    const store = LmdbLogStore.open(dir, { create: true });
    const commit = (writes: Iterable<{ id: Buffer; data: Buffer }>, mapRoot: Buffer) =>
      store.commit({
        firstIndex: 0,
        entries: [],
        tiles: [],
        strataWrites: [...writes],
        strataDeletes: [],
        head: { size: 0, rootHash: Buffer.alloc(32), mapRoot, checkpoint: '' },
      });
    await commit([], SMT_EMPTY);
    const off = new SmtOffload(dir);
    // the same chain computed in this thread, every row kept in a map
    const rows = new Map<string, Buffer>();
    let expected = SMT_EMPTY;
    let root = SMT_EMPTY;
    let prev: Awaited<ReturnType<SmtOffload['apply']>>;
    try {
      for (let round = 0; round < 8; round++) {
        // enough updates for each result to span many row slabs of the worker
        const updates = Array.from({ length: 3000 }, () => ({
          path: randomBytes(32),
          value: randomBytes(40),
        }));
        const here = smtApplyBatch(expected, updates, (id) => rows.get(id.toString('hex')));
        for (const [k, w] of here.writes) rows.set(k, Buffer.from(w.data));
        expected = here.root;
        const r = await off.apply(root, updates, prev === undefined ? [] : [prev.seq]);
        assert.ok(r !== undefined, 'the worker computes it');
        assert.deepEqual(r.strata.root, expected, `round ${round}`);
        // the previous result is committed only now, as the sequencer does while the next is built;
        // the next request forgets it, so its memory is reused while this one is still held
        if (prev !== undefined) {
          await commit(prev.strata.writes.values(), prev.strata.root);
          prev.release();
          assert.equal(prev.strata.writes.size, 0);
        }
        prev = r;
        root = r.strata.root;
      }
    } finally {
      await off.close();
      await store.close();
    }
  });
});
