import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { StorageError } from '../../src/core/errors.js';
import { LmdbLogStore } from '../../src/storage/lmdb/lmdb.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function newStore(): { dir: string; store: LmdbLogStore } {
  const dir = mkdtempSync(join(tmpdir(), 'trustix-lmdb-'));
  dirs.push(dir);
  return { dir, store: LmdbLogStore.open(dir, { create: true }) };
}

let commits = 0;
function commitStrata(
  store: LmdbLogStore,
  writes: Array<{ id: Buffer; data: Buffer }>,
  deletes: Buffer[] = [],
) {
  // the head's size must follow the store's entries, which these commits leave empty
  commits++;
  return store.commit({
    firstIndex: 0,
    entries: [],
    tiles: [],
    strataWrites: writes,
    strataDeletes: deletes,
    head: { size: 0, rootHash: Buffer.alloc(32), mapRoot: Buffer.alloc(32), checkpoint: `c${commits}` },
  });
}

/** A row as the index writes it: the version byte, then anything. */
function row(length: number): Buffer {
  const r = randomBytes(length);
  r[0] = 0x01;
  return r;
}

// The store's own tables, for what the public interface cannot show.
interface StrataDb {
  getStats(): { overflowPages: number };
  getRange(): Iterable<{ key: Buffer; value: Buffer }>;
  remove(key: Buffer): Promise<boolean>;
  put(key: Buffer, value: Buffer): Promise<boolean>;
}
const strataDb = (store: LmdbLogStore) => (store as unknown as { strataDb: StrataDb }).strataDb;

/** Both reads of row `id` fail with a StorageError whose message matches `message`. */
function assertDamaged(store: LmdbLogStore, id: Buffer, message: RegExp, what = ''): void {
  for (const read of ['stratum', 'peekStratum'] as const) {
    assert.throws(
      () => store.read((snap) => snap[read]?.(id)),
      (err: unknown) => err instanceof StorageError && message.test(err.message),
      `${what}${read}`,
    );
  }
}

function readBoth(store: LmdbLogStore, id: Buffer): { copy?: Buffer; peek?: Buffer } {
  return store.read((snap) => {
    const copy = snap.stratum(id);
    const peeked = snap.peekStratum?.(id);
    return { copy, peek: peeked === undefined ? undefined : Buffer.from(peeked) };
  });
}

describe('lmdb store: long strata rows', () => {
  test('rows of every length around the part size come back byte for byte, from a reopened store too', async () => {
    const { dir, store } = newStore();
    const lengths = [1, 1983, 1984, 1985, 2100, 3966, 3967, 3968, 3969, 5952, 17_000, 82_000];
    const written = lengths.map((n, i) => ({ id: Buffer.from([2, i, 7]), data: row(n) }));
    // the root stratum's id is one byte: its parts must not collide with any other row's id
    written.push({ id: Buffer.from([0]), data: row(16_900) }, { id: Buffer.from([1, 0]), data: row(4000) });
    await commitStrata(store, written);
    const check = (s: LmdbLogStore) => {
      for (const w of written) {
        const { copy, peek } = readBoth(s, w.id);
        assert.ok(copy?.equals(w.data), `stratum ${w.id.toString('hex')} (${w.data.length} bytes) read back`);
        assert.ok(
          peek?.equals(w.data),
          `peekStratum ${w.id.toString('hex')} (${w.data.length} bytes) read back`,
        );
      }
      assert.equal(readBoth(s, Buffer.from([2, 99, 7])).copy, undefined, 'a row never written is absent');
    };
    check(store);
    await store.close();
    const again = LmdbLogStore.open(dir);
    check(again);
    await again.close();
  });

  test('rows up to four parts long take no overflow page', async () => {
    const { store } = newStore();
    const writes = Array.from({ length: 200 }, (_, i) => ({
      id: Buffer.from([2, i >> 8, i & 255]),
      data: row(2040 + ((i * 37) % 5800)),
    }));
    await commitStrata(store, writes);
    assert.equal(strataDb(store).getStats().overflowPages, 0);
    await store.close();
  });

  test('a row that shrinks and grows again reads as written each time', async () => {
    const { store } = newStore();
    const id = Buffer.from([2, 5, 5]);
    for (const n of [9000, 100, 5000, 2000, 7000]) {
      const data = row(n);
      await commitStrata(store, [{ id, data }]);
      assert.ok(readBoth(store, id).copy?.equals(data), `row of ${n} bytes after a rewrite`);
      assert.ok(readBoth(store, id).peek?.equals(data), `peeked row of ${n} bytes after a rewrite`);
    }
    await store.close();
  });

  test('deleting a row in parts deletes every part', async () => {
    const { store } = newStore();
    const id = Buffer.from([2, 1, 2]);
    const kept = { id: Buffer.from([2, 1, 3]), data: row(5000) };
    await commitStrata(store, [{ id, data: row(9000) }, kept]);
    await commitStrata(store, [], [id]);
    assert.equal(readBoth(store, id).copy, undefined);
    const keys = [...strataDb(store).getRange()].map((e) => Buffer.from(e.key).toString('hex'));
    assert.ok(
      keys.every((k) => k.startsWith('020103')),
      `only the kept row's records are left: ${keys.join(' ')}`,
    );
    assert.ok(readBoth(store, kept.id).copy?.equals(kept.data));
    await store.close();
  });

  test('a missing part is a StorageError, not a short row', async () => {
    const { store } = newStore();
    const id = Buffer.from([2, 9, 9]);
    await commitStrata(store, [{ id, data: row(5000) }]);
    await strataDb(store).remove(Buffer.from([2, 9, 9, 1]));
    assertDamaged(store, id, /part 1 of 3 is missing/);
    await store.close();
  });

  test('a part longer than any part the store writes is a StorageError', async () => {
    const { store } = newStore();
    const id = Buffer.from([2, 8, 8]);
    await commitStrata(store, [{ id, data: row(3000) }]);
    await strataDb(store).put(Buffer.from([2, 8, 8, 1]), Buffer.alloc(2500, 1));
    assertDamaged(store, id, /part 1 of 2 has a wrong length \(2500\)/);
    await store.close();
  });

  test('a damaged first record or a short middle part is a StorageError, not another row or a short one', async () => {
    const { store } = newStore();
    const id = Buffer.from([2, 7, 7]);
    const other = { id: Buffer.from([2, 7, 8]), data: row(6000) };
    await commitStrata(store, [{ id, data: row(6000) }, other]);
    // the other row first, so that a reused buffer would hold its bytes
    readBoth(store, other.id);
    const cases: Array<[string, Buffer, Buffer, RegExp]> = [
      ['no part count', Buffer.from([2, 7, 7]), Buffer.from([0xfe]), /bad first part/],
      [
        'a part count of 0',
        Buffer.from([2, 7, 7]),
        Buffer.concat([Buffer.from([0xfe, 0]), Buffer.alloc(1982)]),
        /bad first part/,
      ],
      [
        'a short middle part',
        Buffer.from([2, 7, 7, 1]),
        Buffer.alloc(10, 1),
        /part 1 of 4 has a wrong length \(10\)/,
      ],
    ];
    for (const [what, key, value, message] of cases) {
      await commitStrata(store, [{ id, data: row(6000) }]);
      await strataDb(store).put(key, value);
      assertDamaged(store, id, message, `${what}, `);
    }
    await store.close();
  });
});

test('nonces of signed requests: recorded durably, listed until they expire, then swept', async () => {
  const { dir, store } = newStore();
  const t = 1_700_000_000;
  await store.recordNonce('w\naa', t + 300, t);
  await store.recordNonce('w\nbb', t + 10, t);
  assert.deepEqual([...store.nonces(t)].map((n) => n.id).sort(), ['w\naa', 'w\nbb']);
  assert.deepEqual([...store.nonces(t + 11)], [{ id: 'w\naa', expires: t + 300 }]);
  await store.close();
  // after a reopen; a record a minute later sweeps what expired
  const again = LmdbLogStore.open(dir);
  assert.equal([...again.nonces(t)].length, 2);
  await again.recordNonce('w\ncc', t + 400, t + 100);
  const left = [...again.nonces(0)].map((n) => n.id).sort();
  assert.deepEqual(left, ['w\naa', 'w\ncc']);
  await again.close();
});
