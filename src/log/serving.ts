/**
 * Read helpers for serving a log over C2SP tlog-tiles: hash tiles and entry bundles cut to the
 * width a client asks for. A tile is served only when the published tree already holds that many
 * nodes in it, so everything served is immutable and covered by a published checkpoint.
 */
import { FormatError, StorageError } from '../core/errors.js';
import { HASH_SIZE } from '../core/hash.js';
import { encodeEntryBundle, TILE_WIDTH, tileContent } from '../core/tiles.js';
import type { LogStore } from '../storage/store.js';

/** Nodes of tree level 8 * tileLevel that the tile at `tileIndex` holds in a tree of `size` leaves. */
export function tileWidthAt(size: number, tileLevel: number, tileIndex: number): number {
  // Complete nodes at tree level 8L = floor(size / 256^L); division keeps this exact for large L.
  let count = size;
  for (let l = 0; l < tileLevel && count > 0; l++) count = Math.floor(count / TILE_WIDTH);
  const left = count - tileIndex * TILE_WIDTH;
  if (left <= 0) return 0;
  return Math.min(left, TILE_WIDTH);
}

function checkWidth(width: number): void {
  if (!Number.isInteger(width) || width < 1 || width > TILE_WIDTH) {
    throw new FormatError(`tile width must be 1..${TILE_WIDTH}`);
  }
}

/**
 * The C2SP bytes of hash tile (level, index) at `width`, or undefined when a tree of `size` (a
 * published size) does not fill that tile to that width yet.
 */
export function readHashTile(
  store: LogStore,
  size: number,
  level: number,
  index: number,
  width: number,
): Buffer | undefined {
  checkWidth(width);
  if (tileWidthAt(size, level, index) < width) return undefined;
  return store.read((snap) => {
    const t = snap.tile(level, index);
    if (!t) throw new StorageError(`tile ${level}/${index} is missing`);
    if (t.width < width)
      throw new StorageError(`tile ${level}/${index} has width ${t.width}, expected ${width}`);
    return tileContent(t.expanded, t.width).subarray(0, width * HASH_SIZE);
  });
}

/** The entry bundle `index` at `width`, or undefined when a tree of `size` does not hold those entries yet. */
export function readEntryBundle(
  store: LogStore,
  size: number,
  index: number,
  width: number,
): Buffer | undefined {
  checkWidth(width);
  if (tileWidthAt(size, 0, index) < width) return undefined;
  const start = index * TILE_WIDTH;
  return encodeEntryBundle([...store.entries(start, start + width)]);
}
