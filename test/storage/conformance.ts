/**
 * The LogStore contract (src/storage/store.ts) as tests that any driver must pass: each driver's
 * test file calls `storeConformance` with a way to make, reopen and share one of its stores.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, describe, test } from 'node:test';
import { StorageError } from '../../src/core/errors.js';
import type { CommitBatch, LogHead, LogSnapshot, LogStore } from '../../src/storage/store.js';

/**
 * Random bytes shaped like a stratum row: rows begin with their format's version byte, which the
 * contract lets a driver rely on (the LMDB driver marks rows stored in parts with a first byte no
 * version uses), so a random first byte would make a row no writer produces.
 */
function stratumRow(length: number): Buffer {
  const row = randomBytes(length);
  row[0] = 0x02;
  return row;
}

/** One store of the driver under test. */
export interface StoreUnderTest {
  store: LogStore;
  /** Opens the same store again for writing, once `store` (and any reader) is closed. */
  reopen(): Promise<LogStore>;
  /** A second handle on the same store that only reads, while `store` stays open. */
  reader(): Promise<LogStore>;
  /** Removes what the store left behind; called once at the end. */
  remove(): Promise<void>;
}

export interface DriverUnderTest {
  name: string;
  /** A new, empty store. */
  create(): Promise<StoreUnderTest>;
}

const ENTRY_BYTES = 40;

/** A head whose roots name `size`, and whose checkpoint text says which commit it is. */
function headOf(size: number, tag: string): LogHead {
  const root = Buffer.alloc(32, size & 0xff);
  root.writeUInt32BE(size, 0);
  const mapRoot = Buffer.alloc(32, 0x5a);
  mapRoot.writeUInt32BE(size, 0);
  return { size, rootHash: root, mapRoot, checkpoint: `test.example/log\n${size}\n${tag}\n` };
}

/**
 * The batch that grows a store from `size` to `size + count`: entries that name their index, the
 * leaf tile it touches, a strata row keyed by the new size and a marker row that names it.
 */
function batchAt(size: number, count: number, tag = 'c'): CommitBatch {
  const entries = Array.from({ length: count }, (_, i) => entryAt(size + i));
  const width = ((size + count - 1) % 256) + 1;
  return {
    firstIndex: size,
    entries,
    tiles:
      count === 0
        ? []
        : [
            {
              tileLevel: 0,
              tileIndex: Math.floor((size + count - 1) / 256),
              width,
              expanded: randomBytes(32 * width),
            },
          ],
    strataWrites: [
      { id: Buffer.from([2, 0, (size + count) & 0xff, (size + count) >> 8]), data: stratumRow(100) },
      { id: MARKER, data: Buffer.from(`size ${size + count}`) },
    ],
    strataDeletes: [],
    head: headOf(size + count, tag),
  };
}

const MARKER = Buffer.from([1, 0xee]);

function entryAt(index: number): Buffer {
  const e = Buffer.alloc(ENTRY_BYTES, index & 0xff);
  e.writeUInt32BE(index, 0);
  return e;
}

/** Everything one snapshot says about the state, checked to belong together. */
function checkSnapshot(snap: LogSnapshot): number {
  const head = snap.head();
  assert.ok(head, 'a committed store has a head');
  const size = head.size;
  if (size > 0)
    assert.deepEqual(snap.entry(size - 1), entryAt(size - 1), `entry ${size - 1} of head ${size}`);
  assert.equal(snap.entry(size), undefined, `no entry ${size} beyond head ${size}`);
  assert.equal(snap.stratum(MARKER)?.toString(), `size ${size}`, `marker row of head ${size}`);
  return size;
}

async function drain(iter: Iterable<Buffer>): Promise<Buffer[]> {
  return [...iter];
}

export function storeConformance(driver: DriverUnderTest): void {
  const made: StoreUnderTest[] = [];
  after(async () => {
    for (const m of made) await m.remove();
  });
  const create = async (): Promise<StoreUnderTest> => {
    const m = await driver.create();
    made.push(m);
    return m;
  };

  describe(`${driver.name} driver: the LogStore contract`, () => {
    test('a new store is empty: no head, no checkpoints, no entries, no meta, no nonces', async () => {
      const { store } = await create();
      try {
        assert.equal(
          store.read((s) => s.head()),
          undefined,
        );
        assert.deepEqual([...store.checkpoints()], []);
        assert.deepEqual(await drain(store.entries(0, 0)), []);
        assert.equal(store.getMeta('origin'), undefined);
        assert.deepEqual([...store.nonces(0)], []);
      } finally {
        await store.close();
      }
    });

    test('a commit makes its entries, tiles, strata, checkpoint and head readable together', async () => {
      const { store } = await create();
      try {
        await store.commit(batchAt(0, 0, 'empty'));
        const b = batchAt(0, 5);
        await store.commit(b);
        store.read((s) => {
          assert.equal(checkSnapshot(s), 5);
          const head = s.head()!;
          assert.deepEqual(head.rootHash, b.head.rootHash);
          assert.deepEqual(head.mapRoot, b.head.mapRoot);
          assert.equal(head.checkpoint, b.head.checkpoint);
          for (let i = 0; i < 5; i++) assert.deepEqual(s.entry(i), entryAt(i));
          const t = s.tile(0, 0);
          assert.ok(t);
          assert.equal(t.width, 5);
          assert.deepEqual(Buffer.from(t.expanded), Buffer.from(b.tiles[0].expanded));
          assert.equal(s.tile(0, 1), undefined);
          assert.equal(s.tile(1, 0), undefined);
          const row = b.strataWrites[0];
          assert.deepEqual(s.stratum(row.id), row.data);
          if (s.peekStratum) assert.deepEqual(Buffer.from(s.peekStratum(row.id)!), row.data);
          if (s.peekEntry) assert.deepEqual(Buffer.from(s.peekEntry(3)!), entryAt(3));
          assert.equal(s.stratum(Buffer.from([2, 9, 9, 9])), undefined);
        });
      } finally {
        await store.close();
      }
    });

    test('a commit that does not start at the current size is refused whole', async () => {
      const { store } = await create();
      try {
        await store.commit(batchAt(0, 3));
        for (const first of [0, 2, 4]) {
          const bad = { ...batchAt(first, 2, 'bad'), firstIndex: first };
          await assert.rejects(store.commit(bad), StorageError, `commit at ${first} onto size 3`);
        }
        store.read((s) => assert.equal(checkSnapshot(s), 3));
        assert.deepEqual(
          [...store.checkpoints()].map((c) => c.size),
          [3],
        );
        await store.commit(batchAt(3, 1));
        store.read((s) => assert.equal(checkSnapshot(s), 4));
      } finally {
        await store.close();
      }
    });

    test('strata rows are replaced and deleted; rows of every length come back byte for byte', async () => {
      const { store } = await create();
      try {
        const ids = [
          Buffer.from([0]),
          Buffer.from([1, 7]),
          Buffer.from([2, 1, 2]),
          Buffer.from([3, 1, 2, 3]),
        ];
        const lengths = [1, 2000, 17_000, 82_000];
        const first = ids.map((id, i) => ({ id, data: stratumRow(lengths[i]) }));
        await store.commit({ ...batchAt(0, 1), strataWrites: [...batchAt(0, 1).strataWrites, ...first] });
        store.read((s) => {
          for (const w of first) assert.deepEqual(s.stratum(w.id), w.data);
        });
        const second = [
          { id: ids[1], data: stratumRow(30) },
          { id: ids[3], data: stratumRow(5000) },
        ];
        const b = batchAt(1, 1);
        await store.commit({
          ...b,
          strataWrites: [...b.strataWrites, ...second],
          strataDeletes: [ids[0], ids[2]],
        });
        store.read((s) => {
          assert.equal(s.stratum(ids[0]), undefined);
          assert.equal(s.stratum(ids[2]), undefined);
          assert.deepEqual(s.stratum(ids[1]), second[0].data);
          assert.deepEqual(s.stratum(ids[3]), second[1].data);
          if (s.peekStratum) assert.equal(s.peekStratum(ids[2]), undefined);
        });
      } finally {
        await store.close();
      }
    });

    test('rows asked for ahead (prefetchStrata, where a driver has it) read as without, in their own snapshot only', async () => {
      const { store } = await create();
      try {
        const ids = [Buffer.from([2, 1, 1]), Buffer.from([2, 1, 2]), Buffer.from([3, 1, 2, 3])];
        const first = batchAt(0, 1);
        await store.commit({
          ...first,
          strataWrites: [...first.strataWrites, { id: ids[0], data: Buffer.from('one') }],
        });
        const read = () =>
          store.read((s) => {
            s.prefetchStrata?.([...ids, MARKER]);
            return [...ids.map((id) => s.stratum(id)?.toString()), s.stratum(MARKER)?.toString()];
          });
        assert.deepEqual(read(), ['one', undefined, undefined, 'size 1']);
        const second = batchAt(1, 1);
        await store.commit({
          ...second,
          strataWrites: [...second.strataWrites, { id: ids[1], data: Buffer.from('two') }],
          strataDeletes: [ids[0]],
        });
        assert.deepEqual(read(), [undefined, 'two', undefined, 'size 2']);
      } finally {
        await store.close();
      }
    });

    test('checkpoints are listed by increasing size, across sizes of different digit counts', async () => {
      const { store } = await create();
      try {
        const sizes = [0, 1, 9, 10, 11, 99, 100, 256, 257, 1000];
        let size = 0;
        for (const next of sizes) {
          await store.commit(batchAt(size, next - size, `at ${next}`));
          size = next;
        }
        const listed = [...store.checkpoints()];
        assert.deepEqual(
          listed.map((c) => c.size),
          sizes,
        );
        for (const c of listed) assert.equal(c.checkpoint, headOf(c.size, `at ${c.size}`).checkpoint);
      } finally {
        await store.close();
      }
    });

    test('entries(start, end) yields exactly that range in order, and a missing entry is an error', async () => {
      const { store } = await create();
      try {
        await store.commit(batchAt(0, 300));
        await store.commit(batchAt(300, 20));
        assert.deepEqual(
          await drain(store.entries(0, 320)),
          Array.from({ length: 320 }, (_, i) => entryAt(i)),
        );
        assert.deepEqual(
          await drain(store.entries(255, 302)),
          Array.from({ length: 47 }, (_, i) => entryAt(255 + i)),
        );
        assert.deepEqual(await drain(store.entries(7, 7)), []);
        assert.throws(() => [...store.entries(310, 321)], StorageError);
      } finally {
        await store.close();
      }
    });

    test('meta values are set, replaced and kept apart from the head', async () => {
      const { store } = await create();
      try {
        await store.setMeta('origin', 'test.example/log');
        await store.setMeta('vkey', 'v1');
        await store.setMeta('vkey', 'v2');
        // a meta name the driver might use for itself must not reach its own records
        await store.setMeta('head', 'not a head');
        await store.commit(batchAt(0, 2));
        assert.equal(store.getMeta('origin'), 'test.example/log');
        assert.equal(store.getMeta('vkey'), 'v2');
        assert.equal(store.getMeta('head'), 'not a head');
        assert.equal(store.getMeta('absent'), undefined);
        store.read((s) => assert.equal(checkSnapshot(s), 2));
      } finally {
        await store.close();
      }
    });

    test('nonces are listed until they expire, each with its expiry', async () => {
      const { store } = await create();
      try {
        await store.recordNonce('w1/a', 1000, 900);
        await store.recordNonce('w1/b', 1100, 900);
        await store.recordNonce('w2/a', 950, 900);
        const at = (now: number) => [...store.nonces(now)].map((n) => `${n.id}@${n.expires}`).sort();
        assert.deepEqual(at(900), ['w1/a@1000', 'w1/b@1100', 'w2/a@950']);
        assert.deepEqual(at(960), ['w1/a@1000', 'w1/b@1100']);
        assert.deepEqual(at(1050), ['w1/b@1100']);
        assert.deepEqual(at(1200), []);
      } finally {
        await store.close();
      }
    });

    test('a reader sees each commit whole: never entries without their head, or a head without its rows', async () => {
      const m = await create();
      const { store } = m;
      const reader = await m.reader();
      try {
        await store.commit(batchAt(0, 0));
        let size = 0;
        let seen = 0;
        const sizes = new Set<number>();
        for (let k = 0; k < 20; k++) {
          const count = 1 + ((k * 37) % 200);
          let done = false;
          const committed = store.commit(batchAt(size, count)).then(() => {
            done = true;
          });
          // reads while the commit is on its way and right after it
          while (!done) {
            for (const s of [store, reader]) sizes.add(s.read(checkSnapshot));
            seen++;
            await new Promise((r) => setImmediate(r));
          }
          await committed;
          size += count;
          // the writer's own handle sees its commit once the promise resolved
          assert.equal(store.read(checkSnapshot), size);
        }
        assert.ok(seen > 0);
        for (const s of sizes) assert.ok(s <= size);
        // a reader opened before the commits catches up with the last of them
        for (let i = 0; i < 100 && reader.read(checkSnapshot) !== size; i++) {
          await new Promise((r) => setTimeout(r, 10));
        }
        assert.equal(reader.read(checkSnapshot), size);
      } finally {
        await reader.close();
        await store.close();
      }
    });

    test('everything committed survives closing and reopening the store', async () => {
      const m = await create();
      let store = m.store;
      const b = batchAt(0, 40);
      try {
        await store.setMeta('origin', 'test.example/log');
        await store.commit(batchAt(0, 0, 'empty'));
        await store.commit(b);
        await store.commit(batchAt(40, 3, 'last'));
        await store.recordNonce('w/n', 5000, 100);
        await store.close();
        store = await m.reopen();
        assert.equal(store.getMeta('origin'), 'test.example/log');
        store.read((s) => {
          assert.equal(checkSnapshot(s), 43);
          assert.equal(s.head()!.checkpoint, headOf(43, 'last').checkpoint);
          assert.deepEqual(s.stratum(b.strataWrites[0].id), b.strataWrites[0].data);
          assert.equal(s.tile(0, 0)?.width, 43);
        });
        assert.deepEqual(
          [...store.checkpoints()].map((c) => c.size),
          [0, 40, 43],
        );
        assert.deepEqual(
          await drain(store.entries(0, 43)),
          Array.from({ length: 43 }, (_, i) => entryAt(i)),
        );
        assert.deepEqual([...store.nonces(200)], [{ id: 'w/n', expires: 5000 }]);
        // and it takes the next commit where it left off
        await store.commit(batchAt(43, 2));
        assert.equal(store.read(checkSnapshot), 45);
      } finally {
        await store.close();
      }
    });
  });
}
