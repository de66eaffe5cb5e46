import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { FormatError, StorageError } from '../../src/core/errors.js';
import {
  consistencyProof,
  EMPTY_ROOT,
  type HashReader,
  inclusionProof,
  leafHash,
  nodeHash,
  rootFromLeafHashes,
  treeRoot,
  verifyConsistency,
  verifyInclusion,
} from '../../src/core/merkle.js';
import {
  appendToTiles,
  decodeEntryBundle,
  encodeEntryBundle,
  encodeTileIndex,
  entriesPath,
  expandedTileSize,
  expandTile,
  hashFromExpandedTile,
  hashReaderFromTiles,
  parseTilePath,
  TILE_HEIGHT,
  TILE_WIDTH,
  type TileGetter,
  tileContent,
  tileOf,
  tilePath,
  tilesForSize,
  tileWidthFromExpandedSize,
} from '../../src/core/tiles.js';

const TESSERA = fileURLToPath(new URL('../../../shared/testdata/tessera-log/', import.meta.url));

type Tile = { expanded: Buffer; width: number };

/** An in-memory tile store. */
class Store {
  readonly tiles = new Map<string, Tile>();
  size = 0;
  readonly get: TileGetter = (level, index) => this.tiles.get(`${level}/${index}`);
  append(hashes: readonly Uint8Array[]): void {
    for (const t of appendToTiles(this.size, hashes, this.get)) {
      this.tiles.set(`${t.tileLevel}/${t.tileIndex}`, { expanded: t.expanded, width: t.width });
    }
    this.size += hashes.length;
  }
}

function leaves(n: number, seed = 0): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) out.push(leafHash(Buffer.from(`entry ${seed} ${i}`)));
  return out;
}

/** Independent reference: every level of the tree as arrays of complete node hashes. */
function levelsOf(hashes: readonly Buffer[]): Buffer[][] {
  const levels: Buffer[][] = [hashes.slice()];
  while (levels[levels.length - 1].length > 1) {
    const below = levels[levels.length - 1];
    const row: Buffer[] = [];
    for (let i = 0; i + 1 < below.length; i += 2) row.push(nodeHash(below[i], below[i + 1]));
    levels.push(row);
  }
  return levels;
}

function levelReader(levels: Buffer[][], size: number): HashReader {
  return (level, index) => {
    assert.ok((index + 1) * 2 ** level <= size, `incomplete subtree (${level}, ${index}) of ${size}`);
    return levels[level][index];
  };
}

describe('tiles: paths', () => {
  test('index encoding from the spec', () => {
    assert.equal(encodeTileIndex(1234067), 'x001/x234/067');
    assert.equal(encodeTileIndex(0), '000');
    assert.equal(encodeTileIndex(7), '007');
    assert.equal(encodeTileIndex(999), '999');
    assert.equal(encodeTileIndex(1000), 'x001/000');
    assert.equal(encodeTileIndex(Number.MAX_SAFE_INTEGER), 'x009/x007/x199/x254/x740/991');
    for (const bad of [-1, 1.5, 2 ** 53, Number.NaN]) assert.throws(() => encodeTileIndex(bad), FormatError);
  });

  test('tile and entry paths', () => {
    assert.equal(tilePath(0, 1234067, 256), 'tile/0/x001/x234/067');
    assert.equal(tilePath(1, 2, 7), 'tile/1/002.p/7');
    assert.equal(tilePath(63, 0, 255), 'tile/63/000.p/255');
    assert.equal(entriesPath(1234067, 256), 'tile/entries/x001/x234/067');
    assert.equal(entriesPath(0, 15), 'tile/entries/000.p/15');
    assert.throws(() => tilePath(64, 0, 256), FormatError);
    assert.throws(() => tilePath(0, 0, 0), FormatError);
    assert.throws(() => tilePath(0, 0, 257), FormatError);
    assert.throws(() => entriesPath(0, 0), FormatError);
  });

  test('parse and encode round trip', () => {
    assert.deepEqual(parseTilePath('tile/1/x001/002.p/7'), { kind: 'hash', level: 1, index: 1002, width: 7 });
    assert.deepEqual(parseTilePath('tile/entries/x001/x234/067'), {
      kind: 'entries',
      index: 1234067,
      width: 256,
    });
    assert.deepEqual(parseTilePath('tile/0/000'), { kind: 'hash', level: 0, index: 0, width: 256 });
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 63 }),
        fc.oneof(fc.nat({ max: 5000 }), fc.maxSafeNat()),
        fc.integer({ min: 1, max: 256 }),
        (level, index, width) => {
          assert.deepEqual(parseTilePath(tilePath(level, index, width)), {
            kind: 'hash',
            level,
            index,
            width,
          });
          assert.deepEqual(parseTilePath(entriesPath(index, width)), { kind: 'entries', index, width });
        },
      ),
      { numRuns: 300 },
    );
  });

  test('hostile and non-canonical paths are rejected', () => {
    const bad = [
      '',
      'tile',
      'tile/',
      '/tile/0/000',
      'tile/0/000/',
      'tile//000',
      'tile/0//000',
      'tile/00/000',
      'tile/01/000',
      'tile/64/000',
      'tile/99/000',
      'tile/-1/000',
      'tile/+1/000',
      'tile/data/000',
      'tile/0/0',
      'tile/0/00',
      'tile/0/0000',
      'tile/0/x1/2',
      'tile/0/x001/2',
      'tile/0/x000/001',
      'tile/0/x000/x001/002',
      'tile/0/001/002',
      'tile/0/x001',
      'tile/0/x001/x002',
      'tile/0/x01/002',
      'tile/0/x0001/002',
      'tile/0/X001/002',
      'tile/0/000.p/0',
      'tile/0/000.p/256',
      'tile/0/000.p/007',
      'tile/0/000.p/',
      'tile/0/000.p',
      'tile/0/000.p/7/',
      'tile/0/000.p/1000',
      'tile/0/000.p/+7',
      'tile/0/000.P/7',
      'tile/0/000.p/7.p/7',
      'tile/0/x009/x007/x199/x254/x740/992',
      'tile/0/x999/x999/x999/x999/x999/999',
      'tile/0/x001/x001/x001/x001/x001/x001/001',
      'tile/0/../000',
      'tile/0/x001/../000',
      'tile/entries/../../etc/passwd',
      'tile/0/０００',
      'tile/0/000\n',
      'tile/0/000?x=1',
      'tile\\0\\000',
      'tile/entries',
      'tile/entries/',
      'tile/entries/000.p/256',
      `tile/0/${'x001/'.repeat(1000)}000`,
    ];
    for (const p of bad) assert.throws(() => parseTilePath(p), FormatError, JSON.stringify(p));
  });
});

describe('tiles: sizes and bundles', () => {
  test('tilesForSize by hand', () => {
    assert.deepEqual(tilesForSize(0), []);
    assert.deepEqual(tilesForSize(1), [{ level: 0, index: 0, width: 1 }]);
    assert.deepEqual(tilesForSize(255), [{ level: 0, index: 0, width: 255 }]);
    assert.deepEqual(tilesForSize(256), [
      { level: 0, index: 0, width: 256 },
      { level: 1, index: 0, width: 1 },
    ]);
    assert.deepEqual(tilesForSize(257), [
      { level: 0, index: 0, width: 256 },
      { level: 0, index: 1, width: 1 },
      { level: 1, index: 0, width: 1 },
    ]);
    const big = tilesForSize(65536 + 300);
    assert.equal(big.length, 257 + 1 + 2 + 1);
    for (let i = 0; i < 257; i++) assert.deepEqual(big[i], { level: 0, index: i, width: 256 });
    assert.deepEqual(big.slice(257), [
      { level: 0, index: 257, width: 44 },
      { level: 1, index: 0, width: 256 },
      { level: 1, index: 1, width: 1 },
      { level: 2, index: 0, width: 1 },
    ]);
    // The spec's example: size 70,000.
    const t = tilesForSize(70000);
    const summary = (level: number) => t.filter((x) => x.level === level).map((x) => x.width);
    assert.deepEqual(summary(0), [...Array(273).fill(256), 112]);
    assert.deepEqual(summary(1), [256, 17]);
    assert.deepEqual(summary(2), [1]);
    assert.equal(t.length, 273 + 1 + 2 + 1);
  });

  test('entry bundles', () => {
    const entries = [Buffer.from('one'), Buffer.alloc(0), Buffer.alloc(65535, 7), Buffer.from('x')];
    const bundle = encodeEntryBundle(entries);
    assert.equal(bundle.length, 3 + 0 + 65535 + 1 + 8);
    assert.deepEqual(bundle.subarray(0, 5), Buffer.from([0, 3, 0x6f, 0x6e, 0x65]));
    assert.deepEqual(decodeEntryBundle(bundle), entries);
    assert.deepEqual(decodeEntryBundle(new Uint8Array(0)), []);
    assert.deepEqual(encodeEntryBundle([]), Buffer.alloc(0));
    assert.throws(() => encodeEntryBundle([Buffer.alloc(65536)]), FormatError);
    for (const cut of [1, 2, 5, 6, 8, 12, 13]) {
      const b = encodeEntryBundle([Buffer.from('hello'), Buffer.from('world')]);
      assert.throws(() => decodeEntryBundle(b.subarray(0, b.length - cut)), FormatError, `cut ${cut}`);
    }
    assert.throws(() => decodeEntryBundle(Buffer.from([0])), FormatError);
    assert.throws(() => decodeEntryBundle(Buffer.from([0, 2, 1])), FormatError);
  });

  test('expanded tile layout', () => {
    assert.equal(expandedTileSize(256), 510 * 32);
    assert.equal(expandedTileSize(1), 32);
    assert.equal(expandedTileSize(3), (3 + 1) * 32);
    for (let w = 1; w <= 256; w++) assert.equal(tileWidthFromExpandedSize(expandedTileSize(w)), w);
    for (const bad of [0, 31, 33, 64 + 32 * 1, 510 * 32 + 32, -32, 1.5]) {
      if ([...Array(256).keys()].some((w) => expandedTileSize(w + 1) === bad)) continue;
      assert.throws(() => tileWidthFromExpandedSize(bad), FormatError, String(bad));
    }
    assert.throws(() => expandedTileSize(0), FormatError);
    assert.throws(() => expandTile(Buffer.alloc(0)), FormatError);
    assert.throws(() => expandTile(Buffer.alloc(33)), FormatError);
    assert.throws(() => expandTile(Buffer.alloc(257 * 32)), FormatError);

    const h = leaves(256);
    const levels = levelsOf(h);
    for (const w of [1, 2, 3, 100, 255, 256]) {
      const expanded = expandTile(Buffer.concat(h.slice(0, w)));
      assert.equal(expanded.length, expandedTileSize(w));
      assert.deepEqual(tileContent(expanded, w), Buffer.concat(h.slice(0, w)));
      let off = 0;
      for (let r = 0; r < TILE_HEIGHT; r++) {
        for (let j = 0; j < w >> r; j++, off += 32) {
          assert.deepEqual(expanded.subarray(off, off + 32), levels[r][j]);
          assert.deepEqual(hashFromExpandedTile(expanded, w, r, j), levels[r][j]);
          assert.deepEqual(tileOf(r, j), { tileLevel: 0, tileIndex: 0, minWidth: (j + 1) * 2 ** r });
        }
        if (w >> r < 2 ** (TILE_HEIGHT - r)) {
          assert.throws(() => hashFromExpandedTile(expanded, w, r, w >> r), StorageError);
        }
      }
      assert.equal(off, expanded.length);
      assert.throws(() => tileContent(expanded.subarray(1), w), FormatError);
    }
    assert.deepEqual(tileOf(8, 0), { tileLevel: 1, tileIndex: 0, minWidth: 1 });
    assert.deepEqual(tileOf(8, 256), { tileLevel: 1, tileIndex: 1, minWidth: 1 });
    assert.deepEqual(tileOf(15, 3), { tileLevel: 1, tileIndex: 1, minWidth: 256 });
    assert.deepEqual(tileOf(3, 1234567), { tileLevel: 0, tileIndex: 38580, minWidth: 64 });
  });
});

describe('tiles: appending', () => {
  const N = 70_000;
  const hashes = leaves(N);
  const levels = levelsOf(hashes);

  const whole = new Store();
  whole.append(hashes);

  test('matches tilesForSize and the reference levels', () => {
    const expected = tilesForSize(N);
    assert.equal(whole.tiles.size, expected.length);
    for (const { level, index, width } of expected) {
      const t = whole.tiles.get(`${level}/${index}`);
      assert.ok(t, `tile ${level}/${index}`);
      assert.equal(t.width, width);
      assert.deepEqual(expandTile(tileContent(t.expanded, width)), t.expanded);
      const row0 = levels[8 * level].slice(index * 256, index * 256 + width);
      assert.deepEqual(tileContent(t.expanded, width), Buffer.concat(row0));
    }
  });

  test('random batch splits give the same tiles as one append', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 3000 }), { minLength: 1, maxLength: 60 }), (cuts) => {
        const s = new Store();
        let i = 0;
        for (let c = 0; i < N; c++) {
          const n = c < cuts.length ? cuts[c] : N - i;
          s.append(hashes.slice(i, Math.min(N, i + n)));
          i = Math.min(N, i + n);
        }
        assert.equal(s.tiles.size, whole.tiles.size);
        for (const [k, t] of whole.tiles) {
          const u = s.tiles.get(k);
          assert.ok(u, k);
          assert.equal(u.width, t.width, k);
          assert.ok(u.expanded.equals(t.expanded), k);
        }
      }),
      { numRuns: 4 },
    );
    // Small steps across tile and level boundaries, leaf by leaf and in odd chunks.
    const s = new Store();
    const M = 66_000;
    for (let i = 0; i < M; ) {
      const n = i < 600 || (i > 65_300 && i < 65_800) ? 1 : 997;
      const end = Math.min(M, i + n);
      s.append(hashes.slice(i, end));
      i = end;
    }
    for (const { level, index, width } of tilesForSize(M)) {
      const t = s.tiles.get(`${level}/${index}`)!;
      assert.equal(t.width, width);
      assert.ok(
        t.expanded.equals(
          expandTile(Buffer.concat(levels[8 * level].slice(index * 256, index * 256 + width))),
        ),
      );
    }
  });

  test('only changed tiles are returned', () => {
    const s = new Store();
    s.append(hashes.slice(0, 65_535));
    const changed = appendToTiles(65_535, [hashes[65_535]], s.get);
    assert.deepEqual(
      changed.map((t) => [t.tileLevel, t.tileIndex, t.width]),
      [
        [0, 255, 256],
        [1, 0, 256],
        [2, 0, 1],
      ],
    );
    assert.deepEqual(appendToTiles(10, [], s.get), []);
  });

  test('packed leaf hashes give the tiles an array of them gives', () => {
    const s = new Store();
    s.append(hashes.slice(0, 65_400));
    // from inside a tile, through full tiles of levels 0 and 1, to a partial tile of level 2
    const more = hashes.slice(65_400, 65_800);
    const fromArray = appendToTiles(65_400, more, s.get);
    const fromPacked = appendToTiles(65_400, Buffer.concat(more), s.get);
    assert.equal(fromPacked.length, fromArray.length);
    assert.deepEqual(fromPacked, fromArray);
    assert.deepEqual(appendToTiles(65_400, new Uint8Array(0), s.get), []);
    assert.throws(() => appendToTiles(65_400, Buffer.alloc(33), s.get), FormatError);
  });

  test('roots and proofs through tiles match the reference', () => {
    const read = hashReaderFromTiles(whole.get);
    const sizes = [1, 2, 255, 256, 257, 511, 512, 65_535, 65_536, 65_537, N - 1, N];
    for (let i = 0; i < 20; i++) sizes.push(1 + Math.floor(Math.random() * N));
    for (const size of sizes) {
      const ref = levelReader(levels, size);
      // The level arrays are an independent reference; the recursive definition is slow, so spot-check it.
      const root = treeRoot(size, ref);
      if (size === N || size === 65_537 || size === sizes[sizes.length - 1]) {
        assert.deepEqual(rootFromLeafHashes(hashes.slice(0, size)), root);
      }
      assert.deepEqual(treeRoot(size, read), root, `root ${size}`);
      for (const index of [0, size - 1, Math.floor(Math.random() * size)]) {
        const proof = inclusionProof(index, size, read);
        assert.deepEqual(proof, inclusionProof(index, size, ref));
        verifyInclusion(hashes[index], index, size, proof, root);
      }
      const old = 1 + Math.floor(Math.random() * size);
      const proof = consistencyProof(old, size, read);
      assert.deepEqual(proof, consistencyProof(old, size, ref));
      verifyConsistency(old, size, proof, treeRoot(old, ref), root);
    }
  });

  test('missing, damaged or narrow tiles are storage errors', () => {
    const s = new Store();
    s.append(hashes.slice(0, 300));
    const partial = s.tiles.get('0/1')!;
    s.tiles.delete('0/1');
    assert.throws(() => appendToTiles(300, [hashes[300]], s.get), StorageError);
    assert.throws(() => treeRoot(300, hashReaderFromTiles(s.get)), StorageError);
    s.tiles.set('0/1', { expanded: partial.expanded, width: 10 });
    assert.throws(() => appendToTiles(300, [hashes[300]], s.get), StorageError);
    s.tiles.set('0/1', { expanded: partial.expanded.subarray(0, 32 * 10), width: 10 });
    assert.throws(() => appendToTiles(300, [hashes[300]], s.get), StorageError);
    assert.throws(() => treeRoot(300, hashReaderFromTiles(s.get)), StorageError);
    s.tiles.set('0/1', partial);
    assert.deepEqual(treeRoot(300, hashReaderFromTiles(s.get)), rootFromLeafHashes(hashes.slice(0, 300)));
    assert.throws(() => appendToTiles(300, [Buffer.alloc(31)], s.get), FormatError);
    assert.throws(() => appendToTiles(-1, [], s.get), FormatError);
  });
});

describe('tiles: the Tessera test log', () => {
  const read = (p: string) => readFileSync(TESSERA + p);
  const checkpoints: Array<{ size: number; root: Buffer }> = [];
  for (let n = 0; n <= 15; n++) {
    const lines = read(`checkpoint.${n}`).toString('utf8').split('\n');
    checkpoints.push({ size: Number(lines[1]), root: Buffer.from(lines[2], 'base64') });
  }

  test('bundles hash to tile 0, tiles reproduce, roots match every checkpoint', () => {
    const store = new Store();
    assert.deepEqual(checkpoints[0], { size: 0, root: EMPTY_ROOT });
    assert.deepEqual(treeRoot(0, hashReaderFromTiles(store.get)), checkpoints[0].root);
    let previous: Buffer[] = [];
    for (let w = 1; w <= 15; w++) {
      const entries = decodeEntryBundle(read(entriesPath(0, w)));
      assert.equal(entries.length, w);
      assert.deepEqual(entries.slice(0, w - 1), previous, 'bundles only grow');
      assert.ok(encodeEntryBundle(entries).equals(read(entriesPath(0, w))));
      previous = entries;
      const tile = read(tilePath(0, 0, w));
      const hashes = entries.map(leafHash);
      assert.ok(tile.equals(Buffer.concat(hashes)), `tile 0 width ${w}`);

      store.append([hashes[w - 1]]);
      const ours = store.tiles.get('0/0')!;
      assert.ok(tileContent(ours.expanded, ours.width).equals(tile));

      assert.equal(checkpoints[w].size, w);
      assert.deepEqual(treeRoot(w, hashReaderFromTiles(store.get)), checkpoints[w].root, `checkpoint ${w}`);
      assert.deepEqual(rootFromLeafHashes(hashes), checkpoints[w].root);
    }
    const latest = read('checkpoint').toString('utf8').split('\n');
    assert.deepEqual(Buffer.from(latest[2], 'base64'), checkpoints[15].root);

    const reader = hashReaderFromTiles(store.get);
    let pairs = 0;
    for (let m = 1; m <= 15; m++) {
      for (let n = m; n <= 15; n++) {
        const proof = consistencyProof(m, n, reader);
        verifyConsistency(m, n, proof, checkpoints[m].root, checkpoints[n].root);
        pairs++;
      }
      for (let i = 0; i < m; i++) {
        verifyInclusion(reader(0, i), i, m, inclusionProof(i, m, reader), checkpoints[m].root);
      }
    }
    assert.equal(pairs, 120);
  });
});

test('tile constants', () => {
  assert.equal(TILE_HEIGHT, 8);
  assert.equal(TILE_WIDTH, 256);
});
