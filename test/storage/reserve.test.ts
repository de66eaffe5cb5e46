// The space secured before a commit bounds what the commit takes from the end of the store file:
// LMDB's last used page never moves past what was secured (reserve.ts), for batches of every size.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Entry } from '../../src/core/entry.js';
import { Log } from '../../src/log/log.js';
import { SpaceReserve } from '../../src/storage/reserve.js';

function entries(n: number): Entry[] {
  return Array.from({ length: n }, () => ({
    protocol: 'nix',
    key: randomBytes(16),
    value: randomBytes(32),
    metadata: Buffer.alloc(0),
  }));
}

test('each commit stays within the space secured for it', { timeout: 300_000 }, async (t) => {
  const secured: number[] = [];
  const ensure = SpaceReserve.prototype.ensure;
  t.mock.method(SpaceReserve.prototype, 'ensure', function (this: SpaceReserve, used: number, need: number) {
    secured.push(used + need);
    return ensure.call(this, used, need);
  });
  const dir = mkdtempSync(join(tmpdir(), 'trustix-reserve-'));
  try {
    const log = await Log.create(join(dir, 'log'), 'x.test/log', { batchDelayMs: 0, maxBatch: 10_000 });
    const lastPage = () =>
      (
        log.storage as unknown as { root: { getStats(): { lastPageNumber: number; pageSize: number } } }
      ).root.getStats();
    let checked = 0;
    for (const n of [1, 3, 100, 2000, 10_000, 1, 10_000, 7, 10_000, 500]) {
      const before = secured.length;
      await log.submit(entries(n));
      assert.equal(secured.length, before + 1, 'one reservation per commit');
      const { lastPageNumber, pageSize } = lastPage();
      assert.ok(
        (lastPageNumber + 1) * pageSize <= secured[secured.length - 1],
        `a batch of ${n}: the store ends at ${(lastPageNumber + 1) * pageSize}, secured up to ${secured[secured.length - 1]}`,
      );
      checked++;
    }
    assert.equal(checked, 10);
    await log.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
