import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { SMT_EMPTY, smtApplyBatch } from '../../src/core/smt.js';
import { SmtOffload } from '../../src/log/smt-offload.js';

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
});
