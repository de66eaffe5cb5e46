/**
 * C2SP tlog-tiles (https://c2sp.org/tlog-tiles): tile paths, entry bundles, and the expanded
 * tiles we store.
 *
 * A tile at tile-level L, index N holds up to 256 consecutive hashes of tree level 8L: the
 * nodes (8L, N*256 .. N*256+W-1). A partial tile (W < 256) is the right edge of its level.
 *
 * Expanded tile (our storage format): the W hashes of tree level 8L (the C2SP tile bytes)
 * followed by the tile's internal rows, tree levels 8L+1 .. 8L+7, row r holding floor(W / 2^r)
 * hashes, each row packed right after the previous one. Every complete node of the tree lives in
 * exactly one expanded tile (a full tile's own root is row 0 of the tile above), so proofs and
 * roots are plain reads, and an append hashes each new node exactly once.
 */
import { FormatError, StorageError } from './errors.js';
import { HASH_SIZE, sha256Into } from './hash.js';
import type { HashReader } from './merkle.js';

export const TILE_HEIGHT = 8;
export const TILE_WIDTH = 256;

const MAX_TILE_LEVEL = 63;
const NODE_PREFIX = 0x01;

// ---------------------------------------------------------------------------------------------
// Paths.

function checkCount(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new FormatError(`${what} must be a non-negative safe integer, got ${String(n)}`);
  }
}

function checkWidth(width: number): void {
  if (!Number.isInteger(width) || width < 1 || width > TILE_WIDTH) {
    throw new FormatError(`tile width must be 1..${TILE_WIDTH}, got ${String(width)}`);
  }
}

function checkTileLevel(level: number): void {
  if (!Number.isInteger(level) || level < 0 || level > MAX_TILE_LEVEL) {
    throw new FormatError(`tile level must be 0..${MAX_TILE_LEVEL}, got ${String(level)}`);
  }
}

/** Tile index as zero-padded 3-digit path elements, all but the last prefixed with x. */
export function encodeTileIndex(n: number): string {
  checkCount(n, 'tile index');
  let digits = String(n);
  digits = '0'.repeat((3 - (digits.length % 3)) % 3) + digits;
  let out = '';
  for (let i = 0; i < digits.length; i += 3) {
    if (i > 0) out += '/';
    if (i + 3 < digits.length) out += 'x';
    out += digits.slice(i, i + 3);
  }
  return out;
}

function suffix(width: number): string {
  return width === TILE_WIDTH ? '' : `.p/${width}`;
}

/** `tile/<L>/<N>[.p/<W>]`. */
export function tilePath(level: number, index: number, width: number): string {
  checkTileLevel(level);
  checkWidth(width);
  return `tile/${level}/${encodeTileIndex(index)}${suffix(width)}`;
}

/** `tile/entries/<N>[.p/<W>]`. */
export function entriesPath(index: number, width: number): string {
  checkWidth(width);
  return `tile/entries/${encodeTileIndex(index)}${suffix(width)}`;
}

// Canonical forms only: level without leading zeros, index groups of exactly three digits with
// `x` on all but the last, width 1..255 without leading zeros.
const TILE_PATH_RE =
  /^tile\/(entries|0|[1-9][0-9]?)\/((?:x[0-9]{3}\/)*)([0-9]{3})(?:\.p\/([1-9][0-9]{0,2}))?$/;
// 2^53 has 16 digits, so a safe index never needs more than 6 groups.
const MAX_INDEX_GROUPS = 6;

/** Parses a tile or entry bundle path relative to the log prefix, accepting canonical forms only. */
export function parseTilePath(
  path: string,
):
  | { kind: 'hash'; level: number; index: number; width: number }
  | { kind: 'entries'; index: number; width: number } {
  if (path.length > 64) throw new FormatError('tile path too long');
  const m = TILE_PATH_RE.exec(path);
  if (m === null) throw new FormatError(`not a canonical tile path: ${JSON.stringify(path)}`);
  const [, levelText, prefixGroups, lastGroup, widthText] = m;
  const groups = prefixGroups === '' ? [] : prefixGroups.slice(0, -1).split('/');
  if (groups.length + 1 > MAX_INDEX_GROUPS) throw new FormatError('tile index too large');
  if (groups.length > 0 && groups[0] === 'x000') {
    throw new FormatError(`tile index has a leading zero group: ${JSON.stringify(path)}`);
  }
  let digits = '';
  for (const g of groups) digits += g.slice(1);
  digits += lastGroup;
  const index = Number(digits);
  if (!Number.isSafeInteger(index)) throw new FormatError('tile index too large');
  let width = TILE_WIDTH;
  if (widthText !== undefined) {
    width = Number(widthText);
    if (width >= TILE_WIDTH) throw new FormatError(`partial tile width must be below ${TILE_WIDTH}`);
  }
  if (levelText === 'entries') return { kind: 'entries', index, width };
  const level = Number(levelText);
  checkTileLevel(level);
  return { kind: 'hash', level, index, width };
}

/** Nodes of tree level 8 * tileLevel that the tile at `tileIndex` holds in a tree of `size` leaves. */
export function tileWidthAt(size: number, tileLevel: number, tileIndex: number): number {
  // Complete nodes at tree level 8L = floor(size / 256^L); division keeps this exact for large L.
  let count = size;
  for (let l = 0; l < tileLevel && count > 0; l++) count = Math.floor(count / TILE_WIDTH);
  const left = count - tileIndex * TILE_WIDTH;
  if (left <= 0) return 0;
  return Math.min(left, TILE_WIDTH);
}

/** Every tile of a tree of `size`: the full tiles and the rightmost partial one at each level. */
export function tilesForSize(size: number): Array<{ level: number; index: number; width: number }> {
  checkCount(size, 'tree size');
  const out: Array<{ level: number; index: number; width: number }> = [];
  // `count` is the number of complete nodes at tree level 8 * level.
  for (let level = 0, count = size; count > 0; level++, count = Math.floor(count / TILE_WIDTH)) {
    const full = Math.floor(count / TILE_WIDTH);
    for (let i = 0; i < full; i++) out.push({ level, index: i, width: TILE_WIDTH });
    const rest = count % TILE_WIDTH;
    if (rest > 0) out.push({ level, index: full, width: rest });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Entry bundles.

const MAX_ENTRY = 0xffff;

/** Concatenation of `uint16 BE length || entry`. */
export function encodeEntryBundle(entries: readonly Uint8Array[]): Buffer {
  let total = 0;
  for (let i = 0; i < entries.length; i++) {
    const n = entries[i].length;
    if (n > MAX_ENTRY) throw new FormatError(`entry ${i} is ${n} bytes, the limit is ${MAX_ENTRY}`);
    total += 2 + n;
  }
  const out = Buffer.allocUnsafe(total);
  let off = 0;
  for (const e of entries) {
    out.writeUInt16BE(e.length, off);
    out.set(e, off + 2);
    off += 2 + e.length;
  }
  return out;
}

/** Splits an entry bundle. The entries are views into `data`, not copies. */
export function decodeEntryBundle(data: Uint8Array): Buffer[] {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const out: Buffer[] = [];
  let off = 0;
  while (off < buf.length) {
    if (off + 2 > buf.length) throw new FormatError(`entry bundle truncated in a length at byte ${off}`);
    const n = buf.readUInt16BE(off);
    off += 2;
    if (off + n > buf.length) throw new FormatError(`entry bundle truncated in entry ${out.length}`);
    out.push(buf.subarray(off, off + n));
    off += n;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Expanded tiles.

// ROW_START[w * 9 + r]: hash offset of row r in an expanded tile of width w; r = 8 gives the total.
const ROW_START = new Int32Array((TILE_WIDTH + 1) * (TILE_HEIGHT + 1));
for (let w = 0; w <= TILE_WIDTH; w++) {
  let acc = 0;
  for (let r = 0; r <= TILE_HEIGHT; r++) {
    ROW_START[w * (TILE_HEIGHT + 1) + r] = acc;
    acc += w >> r;
  }
}
const WIDTH_BY_BYTES = new Map<number, number>();
for (let w = 1; w <= TILE_WIDTH; w++) WIDTH_BY_BYTES.set(expandedTileSize(w), w);

function rowStart(width: number, row: number): number {
  return ROW_START[width * (TILE_HEIGHT + 1) + row];
}

/**
 * Byte offset, in an expanded tile of `width`, of the hash at `local` in `row` (0..7); no checks, for
 * callers that have validated the tile (the bound is `local < width >> row`).
 */
export function expandedHashOffset(width: number, row: number, local: number): number {
  return (ROW_START[width * (TILE_HEIGHT + 1) + row] + local) * HASH_SIZE;
}

/** Bytes of an expanded tile of `width` bottom hashes. */
export function expandedTileSize(width: number): number {
  checkWidth(width);
  return rowStart(width, TILE_HEIGHT) * HASH_SIZE;
}

/** The width whose expanded tile has `bytes` bytes (the size is strictly increasing in the width). */
export function tileWidthFromExpandedSize(bytes: number): number {
  const w = WIDTH_BY_BYTES.get(bytes);
  if (w === undefined) throw new FormatError(`${bytes} bytes is not the size of an expanded tile`);
  return w;
}

function checkExpanded(expanded: Uint8Array, width: number): void {
  checkWidth(width);
  if (expanded.length !== expandedTileSize(width)) {
    throw new FormatError(
      `expanded tile of width ${width} must be ${expandedTileSize(width)} bytes, got ${expanded.length}`,
    );
  }
}

function asBuffer(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

const scratch65 = Buffer.alloc(65);

/** Node hash of the two adjacent hashes at src[off .. off + 64), written to dst at dstOff. */
function hashAdjacentInto(src: Buffer, off: number, dst: Buffer, dstOff: number): void {
  scratch65[0] = NODE_PREFIX;
  // byte by byte: Buffer#copy of part of a buffer makes a view of that part (one per node hashed)
  for (let i = 0; i < 2 * HASH_SIZE; i++) scratch65[1 + i] = src[off + i];
  sha256Into(scratch65, dst, dstOff);
}

/** Fills rows 1..7 of `tile`, hashing only the nodes that a tile of `oldWidth` did not have yet. */
function fillRows(tile: Buffer, width: number, oldWidth: number): void {
  for (let r = 1; r < TILE_HEIGHT; r++) {
    const below = rowStart(width, r - 1) * HASH_SIZE;
    const here = rowStart(width, r) * HASH_SIZE;
    const end = width >> r;
    for (let j = oldWidth >> r; j < end; j++) {
      hashAdjacentInto(tile, below + 2 * j * HASH_SIZE, tile, here + j * HASH_SIZE);
    }
  }
}

/** Expanded tile from its bottom row (the C2SP tile bytes, 1..256 hashes). */
export function expandTile(level0: Uint8Array): Buffer {
  if (level0.length === 0 || level0.length % HASH_SIZE !== 0 || level0.length > TILE_WIDTH * HASH_SIZE) {
    throw new FormatError(`a tile must be 1..${TILE_WIDTH} hashes, got ${level0.length} bytes`);
  }
  const width = level0.length / HASH_SIZE;
  const out = Buffer.allocUnsafe(expandedTileSize(width));
  out.set(level0, 0);
  fillRows(out, width, 0);
  return out;
}

/** The C2SP tile bytes (the bottom row) of an expanded tile, as a view. */
export function tileContent(expanded: Uint8Array, width: number): Buffer {
  checkExpanded(expanded, width);
  return asBuffer(expanded).subarray(0, width * HASH_SIZE);
}

/** Which tile holds tree node (level, index), and the least width that tile needs to contain it. */
export function tileOf(
  level: number,
  index: number,
): { tileLevel: number; tileIndex: number; minWidth: number } {
  checkCount(level, 'tree level');
  checkCount(index, 'node index');
  const tileLevel = Math.floor(level / TILE_HEIGHT);
  checkTileLevel(tileLevel);
  const row = level % TILE_HEIGHT;
  const perTile = 2 ** (TILE_HEIGHT - row);
  const tileIndex = Math.floor(index / perTile);
  return { tileLevel, tileIndex, minWidth: (index - tileIndex * perTile + 1) * 2 ** row };
}

/**
 * Hash of tree node (level, index) from the expanded tile that holds it (see tileOf), as a view.
 * StorageError if the tile is too narrow to contain the node.
 */
export function hashFromExpandedTile(
  expanded: Uint8Array,
  width: number,
  level: number,
  index: number,
): Buffer {
  checkExpanded(expanded, width);
  checkCount(level, 'tree level');
  checkCount(index, 'node index');
  const row = level % TILE_HEIGHT;
  const local = index % 2 ** (TILE_HEIGHT - row);
  if (local >= width >> row) {
    throw new StorageError(`node (${level}, ${index}) is beyond the stored tile of width ${width}`);
  }
  const off = (rowStart(width, row) + local) * HASH_SIZE;
  return asBuffer(expanded).subarray(off, off + HASH_SIZE);
}

export type TileGetter = (
  tileLevel: number,
  tileIndex: number,
) => { expanded: Uint8Array; width: number } | undefined;

/**
 * Appends leaf hashes to a tree of `oldSize` leaves and returns every expanded tile that changes,
 * ordered by tile level then index. Tile level L+1 gains a bottom hash for each level-L tile that
 * becomes full (the node hash of that tile's two row-7 hashes). Each touched tile is built once
 * (starting from a copy of the stored partial tile, the only one read per level) and each new
 * node is hashed once. The leaf hashes may also come packed, back to back in one buffer, which
 * spares the sequencer a buffer object per leaf.
 */
export function appendToTiles(
  oldSize: number,
  newLeafHashes: readonly Uint8Array[] | Uint8Array,
  getTile: TileGetter,
): Array<{ tileLevel: number; tileIndex: number; width: number; expanded: Buffer }> {
  checkCount(oldSize, 'tree size');
  const packed = newLeafHashes instanceof Uint8Array;
  if (packed && newLeafHashes.length % HASH_SIZE !== 0) {
    throw new FormatError(
      `packed leaf hashes are ${newLeafHashes.length} bytes, not a multiple of ${HASH_SIZE}`,
    );
  }
  const newSize = oldSize + (packed ? newLeafHashes.length / HASH_SIZE : newLeafHashes.length);
  checkCount(newSize, 'new tree size');
  if (!packed) {
    for (let i = 0; i < newLeafHashes.length; i++) {
      if (newLeafHashes[i].length !== HASH_SIZE) {
        throw new FormatError(`new leaf hash ${i} is ${newLeafHashes[i].length} bytes, not ${HASH_SIZE}`);
      }
    }
  }
  const out: Array<{ tileLevel: number; tileIndex: number; width: number; expanded: Buffer }> = [];
  // New nodes of tree level 8L have indexes lo..hi-1; at L = 0 they are the new leaves, above
  // they are the roots of the level below's tiles that just became full (collected in `bottom`).
  let lo = oldSize;
  let hi = newSize;
  let bottom: readonly Uint8Array[] | Uint8Array = newLeafHashes;
  for (let level = 0; hi > lo; level++) {
    checkTileLevel(level);
    const nextBottom: Buffer[] = [];
    const firstTile = Math.floor(lo / TILE_WIDTH);
    const lastTile = Math.floor((hi - 1) / TILE_WIDTH);
    for (let t = firstTile; t <= lastTile; t++) {
      const base = t * TILE_WIDTH;
      const oldWidth = Math.max(0, lo - base);
      const width = Math.min(TILE_WIDTH, hi - base);
      const tile = Buffer.allocUnsafe(expandedTileSize(width));
      if (oldWidth > 0) copyOldRows(getTile, level, t, oldWidth, width, tile);
      if (bottom instanceof Uint8Array) {
        // the new hashes of this tile are consecutive in the packed buffer
        const from = (base + oldWidth - lo) * HASH_SIZE;
        tile.set(bottom.subarray(from, from + (width - oldWidth) * HASH_SIZE), oldWidth * HASH_SIZE);
      } else {
        for (let i = oldWidth; i < width; i++) tile.set(bottom[base + i - lo], i * HASH_SIZE);
      }
      fillRows(tile, width, oldWidth);
      if (width === TILE_WIDTH) {
        const top = Buffer.allocUnsafe(HASH_SIZE);
        hashAdjacentInto(tile, rowStart(width, TILE_HEIGHT - 1) * HASH_SIZE, top, 0);
        nextBottom.push(top);
      }
      out.push({ tileLevel: level, tileIndex: t, width, expanded: tile });
    }
    lo = Math.floor(lo / TILE_WIDTH);
    hi = Math.floor(hi / TILE_WIDTH);
    bottom = nextBottom;
  }
  return out;
}

/** Copies the first `oldWidth`-worth of each row of the stored tile into the new, wider `tile`. */
function copyOldRows(
  getTile: TileGetter,
  level: number,
  index: number,
  oldWidth: number,
  width: number,
  tile: Buffer,
): void {
  const stored = getTile(level, index);
  if (stored === undefined) throw new StorageError(`tile ${level}/${index} is missing`);
  checkStored(stored, level, index);
  // A stored tile wider than the committed size can remain after an interrupted append; its
  // first rows hold the same immutable nodes, and the rest is overwritten here.
  if (stored.width < oldWidth) {
    throw new StorageError(`tile ${level}/${index} has width ${stored.width}, expected ${oldWidth}`);
  }
  const src = asBuffer(stored.expanded);
  for (let r = 0; r < TILE_HEIGHT; r++) {
    const n = oldWidth >> r;
    if (n === 0) break;
    const from = rowStart(stored.width, r) * HASH_SIZE;
    src.copy(tile, rowStart(width, r) * HASH_SIZE, from, from + n * HASH_SIZE);
  }
}

function checkStored(stored: { expanded: Uint8Array; width: number }, level: number, index: number): void {
  if (
    !Number.isInteger(stored.width) ||
    stored.width < 1 ||
    stored.width > TILE_WIDTH ||
    stored.expanded.length !== expandedTileSize(stored.width)
  ) {
    throw new StorageError(
      `tile ${level}/${index} is damaged: ${stored.expanded.length} bytes for width ${stored.width}`,
    );
  }
}

/**
 * A HashReader over stored expanded tiles. Remembers the last tile read at each tile level, which
 * is sound because a complete node never changes once written; this relies on getTile returning
 * buffers that are not reused afterwards. Returned hashes are views into those buffers.
 * StorageError if a needed tile is missing, damaged or too narrow.
 */
export function hashReaderFromTiles(getTile: TileGetter): HashReader {
  // Proof generation calls this for every path element, so it avoids the validating helpers
  // above once a tile has been checked, and allocates nothing but the returned view.
  const cachedIndex: number[] = [];
  const cachedTile: Buffer[] = [];
  const cachedWidth: number[] = [];
  return (level, index) => {
    if (!Number.isSafeInteger(level) || level < 0 || !Number.isSafeInteger(index) || index < 0) {
      throw new FormatError(`bad node (${level}, ${index})`);
    }
    const tileLevel = Math.floor(level / TILE_HEIGHT);
    const row = level - tileLevel * TILE_HEIGHT;
    const perTile = 2 ** (TILE_HEIGHT - row);
    const tileIndex = Math.floor(index / perTile);
    const local = index - tileIndex * perTile;
    let width = cachedIndex[tileLevel] === tileIndex ? cachedWidth[tileLevel] : 0;
    if (local >= width >> row) {
      checkTileLevel(tileLevel);
      const tile = getTile(tileLevel, tileIndex);
      if (tile === undefined) throw new StorageError(`tile ${tileLevel}/${tileIndex} is missing`);
      checkStored(tile, tileLevel, tileIndex);
      width = tile.width;
      if (local >= width >> row) {
        throw new StorageError(
          `tile ${tileLevel}/${tileIndex} has width ${width}, too narrow for node (${level}, ${index})`,
        );
      }
      cachedIndex[tileLevel] = tileIndex;
      cachedTile[tileLevel] = asBuffer(tile.expanded);
      cachedWidth[tileLevel] = width;
    }
    const off = (rowStart(width, row) + local) * HASH_SIZE;
    return cachedTile[tileLevel].subarray(off, off + HASH_SIZE);
  };
}
