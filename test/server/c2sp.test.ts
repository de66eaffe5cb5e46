// A verifier that knows only the C2SP specs (signed-note, tlog-checkpoint, tlog-tiles) and RFC 6962
// math: it reads /checkpoint and /tile/... and nothing else (no lookup JSON, no proof endpoints),
// rebuilds the tree from tiles, and checks roots, inclusion and consistency against signed
// checkpoints, including an older checkpoint whose partial tiles must still be served.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  consistencyProof,
  type HashReader,
  inclusionProof,
  leafHash,
  rootFromLeafHashes,
  treeRoot,
  verifyConsistency,
  verifyInclusion,
} from '../../src/core/merkle.js';
import { openNote, verifierFromVkey } from '../../src/core/note.js';
import { parseReceipts } from '../../src/core/receipts.js';
import {
  cleanup,
  makeEntries,
  type RunningServer,
  startServer,
  submit,
  tempDir,
  token,
} from '../fixtures/server-helpers.js';

// --- what a generic tlog-tiles client implements, straight from the specs -----------------------

/** tlog-tiles index encoding: 3-digit groups, all but the last prefixed with x. */
function indexPath(n: number): string {
  let s = String(n);
  s = s.padStart(Math.ceil(s.length / 3) * 3, '0');
  const groups = s.match(/.{3}/g)!;
  return groups.map((g, i) => (i < groups.length - 1 ? `x${g}` : g)).join('/');
}

function widthSuffix(w: number): string {
  return w === 256 ? '' : `.p/${w}`;
}

interface Checkpoint {
  origin: string;
  size: number;
  root: Buffer;
}

/** Verifies the note signature (signed-note) and parses the tlog-checkpoint body. */
function openCp(note: string, vkey: string): Checkpoint {
  const { text } = openNote(note, [verifierFromVkey(vkey)]);
  const lines = text.split('\n');
  assert.ok(lines.length >= 4 && lines.at(-1) === '', 'checkpoint body ends with a newline');
  assert.match(lines[1], /^(0|[1-9][0-9]*)$/);
  const root = Buffer.from(lines[2], 'base64');
  assert.equal(root.length, 32);
  return { origin: lines[0], size: Number(lines[1]), root };
}

class TileReader {
  private readonly tiles = new Map<string, Buffer>();
  constructor(
    private readonly prefix: string,
    readonly size: number,
  ) {}

  /** Width of tile (level, n) in a tree of `size`: tlog-tiles' rule for partial tiles. */
  width(level: number, n: number): number {
    return Math.min(256, Math.floor(this.size / 256 ** level) - n * 256);
  }

  async fetchAll(): Promise<void> {
    for (let level = 0; Math.floor(this.size / 256 ** level) > 0; level++) {
      const count = Math.floor(this.size / 256 ** level);
      for (let n = 0; n * 256 < count; n++) {
        const w = this.width(level, n);
        const r = await fetch(`${this.prefix}tile/${level}/${indexPath(n)}${widthSuffix(w)}`);
        assert.equal(r.status, 200, `tile ${level}/${n} width ${w}`);
        assert.equal(r.headers.get('content-type'), 'application/octet-stream');
        assert.match(r.headers.get('cache-control') ?? '', /immutable/);
        const b = Buffer.from(await r.arrayBuffer());
        assert.equal(b.length, w * 32);
        this.tiles.set(`${level}/${n}`, b);
      }
    }
  }

  /** Tree node (level, index) from the tiles: stored directly at multiples of 8, hashed up otherwise. */
  readonly read: HashReader = (level, index) => {
    const tl = Math.floor(level / 8);
    const span = 2 ** (level % 8);
    const first = index * span;
    const tile = this.tiles.get(`${tl}/${Math.floor(first / 256)}`);
    assert.ok(tile, `tile for node ${level}/${index}`);
    const off = first % 256;
    const hashes: Buffer[] = [];
    for (let i = off; i < off + span; i++) hashes.push(tile.subarray(i * 32, i * 32 + 32));
    return span === 1 ? hashes[0] : rootFromLeafHashes(hashes);
  };

  async entries(): Promise<Buffer[]> {
    const out: Buffer[] = [];
    for (let n = 0; n * 256 < this.size; n++) {
      const w = this.width(0, n);
      const r = await fetch(`${this.prefix}tile/entries/${indexPath(n)}${widthSuffix(w)}`);
      assert.equal(r.status, 200);
      const b = Buffer.from(await r.arrayBuffer());
      let off = 0;
      while (off < b.length) {
        const len = b.readUInt16BE(off);
        out.push(b.subarray(off + 2, off + 2 + len));
        off += 2 + len;
      }
      assert.equal(off, b.length);
    }
    assert.equal(out.length, this.size);
    return out;
  }
}

// -------------------------------------------------------------------------------------------------

let dir: string;
let srv: RunningServer;

before(async () => {
  dir = tempDir();
  srv = await startServer(['--state', dir, '--listen', '127.0.0.1:0', '--origin', 'c2sp.test/log']);
});
after(async () => {
  await srv?.stop();
  cleanup(dir);
});

test('a C2SP-only client verifies checkpoints, tiles, entry bundles, inclusion and consistency', async () => {
  const auth = { authorization: `Bearer ${token(dir)}` };
  const prefix = `${srv.url}/logs/default/`;
  // an old checkpoint with a partial tile at level 0 and none at level 1
  const first = await submit(srv.url, makeEntries(200), auth);
  assert.equal(first.status, 200, srv.stderr());
  const oldNote = parseReceipts(await first.json(), 200)[0].checkpoint;
  for (let i = 0; i < 3; i++) {
    const r = await submit(srv.url, makeEntries(200), auth);
    assert.equal(r.status, 200, `${await r.text()}\n${srv.stderr()}`);
  }

  const cpRes = await fetch(`${prefix}checkpoint`);
  assert.equal(cpRes.headers.get('content-type'), 'text/plain; charset=utf-8');
  assert.equal(cpRes.headers.get('cache-control'), 'no-store');
  const cp = openCp(await cpRes.text(), srv.vkey);
  assert.equal(cp.origin, 'c2sp.test/log');
  assert.equal(cp.size, 800);

  const tiles = new TileReader(prefix, cp.size);
  await tiles.fetchAll();
  assert.deepEqual(treeRoot(cp.size, tiles.read), cp.root);
  const entries = await tiles.entries();
  assert.deepEqual(rootFromLeafHashes(entries.map(leafHash)), cp.root);
  for (const i of [0, 1, 255, 256, 511, 512, 700, 799]) {
    const proof = inclusionProof(i, cp.size, tiles.read);
    verifyInclusion(leafHash(entries[i]), i, cp.size, proof, cp.root);
  }

  // the old checkpoint, verified from the tiles as they were at its size (partial widths)
  const old = openCp(oldNote, srv.vkey);
  assert.ok(old.size >= 1 && old.size < cp.size);
  const oldTiles = new TileReader(prefix, old.size);
  await oldTiles.fetchAll();
  assert.deepEqual(treeRoot(old.size, oldTiles.read), old.root);
  verifyConsistency(old.size, cp.size, consistencyProof(old.size, cp.size, tiles.read), old.root, cp.root);

  // a tile wider than the tree, and the full tile of a still-partial one, do not exist
  const w = tiles.width(0, 3);
  assert.equal((await fetch(`${prefix}tile/0/003.p/${w + 1}`)).status, 404);
  assert.equal((await fetch(`${prefix}tile/0/003`)).status, 404);
  assert.equal((await fetch(`${prefix}tile/entries/003`)).status, 404);
});
