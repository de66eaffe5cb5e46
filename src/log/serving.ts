/**
 * Read helpers for serving a log over C2SP tlog-tiles: hash tiles and entry bundles cut to the
 * width a client asks for. A tile is served only when the published tree already holds that many
 * nodes in it, so everything served is immutable and covered by a published checkpoint.
 */
import { FormatError, StorageError } from '../core/errors.js';
import { HASH_SIZE } from '../core/hash.js';
import { encodeEntryBundle, TILE_WIDTH, tileContent, tileWidthAt } from '../core/tiles.js';
import type { LogSnapshot, LogStore } from '../storage/store.js';

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
  return store.read((snap) => hashTileIn(snap, level, index, width));
}

/** readHashTile through the store's asynchronous reads, when it has them (LogStore.readAsync). */
export async function readHashTileAsync(
  store: LogStore,
  size: number,
  level: number,
  index: number,
  width: number,
): Promise<Buffer | undefined> {
  if (store.readAsync === undefined) return readHashTile(store, size, level, index, width);
  checkWidth(width);
  if (tileWidthAt(size, level, index) < width) return undefined;
  return store.readAsync((snap) => hashTileIn(snap, level, index, width));
}

function hashTileIn(snap: LogSnapshot, level: number, index: number, width: number): Buffer {
  const t = snap.tile(level, index);
  if (!t) throw new StorageError(`tile ${level}/${index} is missing`);
  if (t.width < width)
    throw new StorageError(`tile ${level}/${index} has width ${t.width}, expected ${width}`);
  return tileContent(t.expanded, t.width).subarray(0, width * HASH_SIZE);
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

/** readEntryBundle through the store's asynchronous reads, when it has them (LogStore.readAsync). */
export async function readEntryBundleAsync(
  store: LogStore,
  size: number,
  index: number,
  width: number,
): Promise<Buffer | undefined> {
  if (store.readAsync === undefined) return readEntryBundle(store, size, index, width);
  checkWidth(width);
  if (tileWidthAt(size, 0, index) < width) return undefined;
  const indexes = Array.from({ length: width }, (_, i) => index * TILE_WIDTH + i);
  return store.readAsync(
    (snap) =>
      encodeEntryBundle(
        indexes.map((i) => {
          const e = snap.entry(i);
          if (e === undefined) throw new StorageError(`entry ${i} is missing from the store`);
          return e;
        }),
      ),
    { entries: indexes },
  );
}
