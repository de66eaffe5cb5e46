import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { FencedError, PgLogStore } from '../../src/storage/postgres/postgres.js';
import { SCHEMA, SCHEMA_VERSION } from '../../src/storage/postgres/schema.js';
import { findPostgres, lapseLease, type PgCluster, startPostgres } from '../fixtures/postgres.js';
import { storeConformance } from './conformance.js';

// .ci/run installs PostgreSQL; elsewhere these tests say why they do not run
const skip =
  findPostgres() === undefined ? 'PostgreSQL is not installed (apt-get install postgresql)' : false;
let cluster: PgCluster | undefined;

function head(size: number) {
  return { size, rootHash: Buffer.alloc(32, 1), mapRoot: Buffer.alloc(32, 2), checkpoint: `cp ${size}\n` };
}

function emptyBatch(size: number, entries: Buffer[] = []) {
  return {
    firstIndex: size,
    entries,
    tiles: [],
    strataWrites: [],
    strataDeletes: [],
    head: head(size + entries.length),
  };
}

describe('postgres driver', { skip }, () => {
  before(async () => {
    cluster = await startPostgres();
  });
  after(() => cluster?.stop());

  storeConformance({
    name: 'postgres',
    async create() {
      const url = await cluster!.createDatabase();
      const stores: PgLogStore[] = [];
      const open = async (sequencer: boolean) => {
        const s = await PgLogStore.open(url, { sequencer, leaseMs: 60_000 });
        stores.push(s);
        return s;
      };
      return {
        store: await open(true),
        reopen: () => open(true),
        reader: () => open(false),
        remove: async () => {
          for (const s of stores) await s.close();
        },
      };
    },
  });

  test('the schema is created once, versioned, and a newer schema is refused', async () => {
    const url = await cluster!.createDatabase();
    const [a, b] = await Promise.all([PgLogStore.open(url), PgLogStore.open(url)]);
    await a.close();
    await b.close();
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      const v = await c.query(`SELECT version FROM ${SCHEMA}.schema_version`);
      assert.deepEqual(v.rows, [{ version: SCHEMA_VERSION }]);
      await c.query(`UPDATE ${SCHEMA}.schema_version SET version = $1`, [SCHEMA_VERSION + 1]);
    } finally {
      await c.end();
    }
    await assert.rejects(PgLogStore.open(url), /newer than this trustix knows/);
  });

  test('one sequencer at a time: a second is refused while the lease runs, and takes over when it lapses', async () => {
    const url = await cluster!.createDatabase();
    const first = await PgLogStore.open(url, { sequencer: true, leaseMs: 60_000, holder: 'first' });
    await first.commit(emptyBatch(0));
    await assert.rejects(PgLogStore.open(url, { sequencer: true, holder: 'second' }), FencedError);
    const reader = await PgLogStore.open(url);
    await assert.rejects(reader.commit(emptyBatch(0)), FencedError);
    // closing gives the lease up at once
    await first.close();
    const second = await PgLogStore.open(url, { sequencer: true, leaseMs: 60_000, holder: 'second' });
    assert.equal(second.leaseEpoch, 2);
    await second.commit(emptyBatch(0, [Buffer.from('e0')]));
    assert.equal(
      reader.read((s) => s.head()?.size),
      1,
    );
    await second.close();
    await reader.close();
  });

  test('a paused sequencer whose lease was taken over cannot commit: fenced in the commit transaction', async () => {
    const url = await cluster!.createDatabase();
    const old = await PgLogStore.open(url, { sequencer: true, leaseMs: 60_000, holder: 'old' });
    await old.commit(emptyBatch(0));
    // the old sequencer "pauses": its renewals stop, its lease runs out, a standby takes over
    await lapseLease(url, old);
    const standby = await PgLogStore.open(url, { sequencer: true, leaseMs: 60_000, holder: 'standby' });
    await standby.commit(emptyBatch(0, [Buffer.from('new')]));
    // the old one wakes up and commits a batch built on the state it knew: refused, nothing written
    await assert.rejects(old.commit(emptyBatch(0, [Buffer.from('old')])), FencedError);
    await assert.rejects(old.commit(emptyBatch(1, [Buffer.from('old')])), /lost to epoch 2/);
    standby.read((s) => {
      assert.equal(s.head()?.size, 1);
      assert.deepEqual(s.entry(0), Buffer.from('new'));
      assert.equal(s.entry(1), undefined);
    });
    assert.deepEqual(
      [...standby.checkpoints()].map((c) => c.size),
      [0, 1],
    );
    assert.equal(await old.renewLease(), false);
    await old.close();
    await standby.close();
  });

  test("a lease that ran out while its holder was busy, and that nobody took, is still its holder's", async () => {
    const url = await cluster!.createDatabase();
    const store = await PgLogStore.open(url, { sequencer: true, leaseMs: 60_000, holder: 'busy' });
    await store.commit(emptyBatch(0));
    await lapseLease(url, store);
    // the commit goes through at the same epoch and extends the lease, so no standby can take it now
    await store.commit(emptyBatch(0, [Buffer.from('e0')]));
    assert.equal(store.leaseEpoch, 1);
    await assert.rejects(PgLogStore.open(url, { sequencer: true, holder: 'standby' }), FencedError);
    await lapseLease(url, store);
    assert.equal(await store.renewLease(), true);
    await assert.rejects(PgLogStore.open(url, { sequencer: true, holder: 'standby' }), FencedError);
    await store.close();
  });

  test('asynchronous reads: each sees one snapshot, while commits go on', async () => {
    const url = await cluster!.createDatabase();
    const writer = await PgLogStore.open(url, { sequencer: true, leaseMs: 60_000 });
    const reader = await PgLogStore.open(url, { readConnections: 2 });
    await writer.commit(emptyBatch(0, [Buffer.from('e0')]));
    // a read needs the head, then the entry the head names: two rounds of one snapshot; and the
    // entry after the head must not exist in that snapshot, whatever was committed meanwhile
    const readLast = () =>
      reader.readAsync((s) => {
        const size = s.head()!.size;
        return { size, last: s.entry(size - 1)?.toString(), next: s.entry(size) };
      });
    const seen: Array<Promise<{ size: number; last?: string; next?: Buffer }>> = [];
    for (let size = 1; size < 40; size++) {
      for (let i = 0; i < 5; i++) seen.push(readLast());
      await writer.commit(emptyBatch(size, [Buffer.from(`e${size}`)]));
    }
    for (const r of await Promise.all(seen)) {
      assert.equal(r.last, `e${r.size - 1}`);
      assert.equal(r.next, undefined, `entry ${r.size} seen in the snapshot of size ${r.size}`);
    }
    await reader.close();
    await writer.close();
  });

  /** A writer and a reader with its own head-age bound, and `commit(size, root, row, tileWidth)`. */
  async function rowsAndTiles(headMaxAgeMs: number) {
    const url = await cluster!.createDatabase();
    const writer = await PgLogStore.open(url, { sequencer: true, leaseMs: 60_000 });
    const reader = await PgLogStore.open(url, { readHeadMaxAgeMs: headMaxAgeMs });
    const id = Buffer.from([2, 7, 7]);
    const commit = async (size: number, root: number, row: string, tileWidth: number) => {
      const expanded = Buffer.alloc(32 * tileWidth * 2, tileWidth);
      await writer.commit({
        ...emptyBatch(size, [Buffer.from(`e${size}`)]),
        tiles: [{ tileLevel: 0, tileIndex: 0, width: tileWidth, expanded }],
        strataWrites: [{ id, data: Buffer.from(row) }],
        head: { ...head(size + 1), mapRoot: Buffer.alloc(32, root) },
      });
    };
    const read = (other = 3) =>
      reader.readAsync(
        (s) => ({
          row: s.stratum(id)?.toString(),
          width: s.tile(0, 0)?.width,
          absent: s.stratum(Buffer.from([other])),
        }),
        { strata: [id] },
      );
    const close = async () => {
      await reader.close();
      await writer.close();
    };
    return { commit, read, close };
  }

  test('asynchronous reads: strata rows are cached for one map root, tiles for one width', async () => {
    const { commit, read, close } = await rowsAndTiles(0);
    await commit(0, 1, 'first', 1);
    assert.deepEqual(await read(), { row: 'first', width: 1, absent: undefined });
    assert.deepEqual(await read(), { row: 'first', width: 1, absent: undefined });
    // the row and the tile change with the next state: the cached ones are not used for it
    await commit(1, 2, 'second', 2);
    assert.deepEqual(await read(), { row: 'second', width: 2, absent: undefined });
    await close();
  });

  test('asynchronous reads of the node that commits see its commit at once', async () => {
    const url = await cluster!.createDatabase();
    const store = await PgLogStore.open(url, {
      sequencer: true,
      leaseMs: 60_000,
      readHeadMaxAgeMs: 3_600_000,
    });
    const size = () => store.readAsync((s) => s.head()?.size);
    await store.commit(emptyBatch(0, [Buffer.from('e0')]));
    assert.equal(await size(), 1);
    await store.commit(emptyBatch(1, [Buffer.from('e1')]));
    assert.equal(await size(), 2);
    assert.deepEqual(await store.readAsync((s) => s.entry(1)), Buffer.from('e1'));
    await store.close();
  });

  test('asynchronous reads answered from kept rows see the last head read, whole, until a miss reads the next', async () => {
    const { commit, read, close } = await rowsAndTiles(3_600_000);
    await commit(0, 1, 'first', 1);
    assert.deepEqual(await read(), { row: 'first', width: 1, absent: undefined });
    await commit(1, 2, 'second', 2);
    // every row this read needs is kept for the head it knows: the old state, never a mix
    assert.deepEqual(await read(), { row: 'first', width: 1, absent: undefined });
    // a row not kept sends the read to the database, which has the new head
    assert.deepEqual(await read(4), { row: 'second', width: 2, absent: undefined });
    assert.deepEqual(await read(), { row: 'second', width: 2, absent: undefined });
    await close();
  });
});
