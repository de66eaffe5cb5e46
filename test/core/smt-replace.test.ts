import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { SMT_EMPTY, smtApplyBatch } from '../../src/core/smt.js';

// The sequencer relies on onReplace to learn the stored value of every key a batch overwrites,
// instead of walking the index once per submission. It must report exactly those keys.
test('smtApplyBatch reports every replaced path with its old value, and nothing else', () => {
  const strata = new Map<string, Buffer>();
  const read = (id: Buffer) => strata.get(id.toString('hex'));
  const apply = (root: Buffer, updates: { path: Buffer; value: Buffer }[], seen?: Map<string, Buffer>) => {
    const r = smtApplyBatch(root, updates, read, seen ? (p, v) => seen.set(p.toString('hex'), v) : undefined);
    for (const [k, w] of r.writes) strata.set(k, Buffer.from(w.data));
    return r.root;
  };
  const stored = new Map<string, Buffer>();
  let root = SMT_EMPTY;
  for (let round = 0; round < 6; round++) {
    const updates: { path: Buffer; value: Buffer }[] = [];
    const existing = [...stored.keys()];
    for (let i = 0; i < 300; i++) {
      // a mix of new paths, overwrites of stored paths, and paths near stored ones (shared prefixes)
      const pick = Math.random();
      let path: Buffer;
      if (pick < 0.3 && existing.length > 0)
        path = Buffer.from(existing[(Math.random() * existing.length) | 0], 'hex');
      else if (pick < 0.45 && existing.length > 0) {
        path = Buffer.from(existing[(Math.random() * existing.length) | 0], 'hex');
        path[31] ^= 1;
      } else path = randomBytes(32);
      updates.push({ path, value: randomBytes(40) });
    }
    const expected = new Map<string, Buffer>();
    for (const u of updates) {
      const k = u.path.toString('hex');
      if (stored.has(k) && !expected.has(k)) expected.set(k, stored.get(k)!);
    }
    const seen = new Map<string, Buffer>();
    root = apply(root, updates, seen);
    assert.equal(
      seen.size,
      expected.size,
      `round ${round}: reported ${seen.size}, expected ${expected.size}`,
    );
    for (const [k, v] of expected) assert.deepEqual(seen.get(k), v, `round ${round}: old value of ${k}`);
    for (const u of updates) stored.set(u.path.toString('hex'), u.value);
  }
});
