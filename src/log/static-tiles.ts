/**
 * A log's tlog-tiles resources as files, for any static web server or CDN to serve: `checkpoint`,
 * `tile/<L>/<N>[.p/<W>]` and `tile/entries/<N>[.p/<W>]` under one directory, the paths the node
 * serves under `/logs/<id>/`. The bytes come from the same reads the node serves them with
 * (serving.ts), over any driver's store.
 *
 * Every file is written whole (temporary name, fsync, rename), so a server never hands out half a
 * tile. A full tile never changes and is written once. A partial tile is written for every published
 * checkpoint whose tile at that level is still partial (tlog-tiles: logs serve the partial tiles of
 * the sizes they published, and may drop them once the full tile exists; older ones are left in
 * place). The checkpoint is written last, once everything it covers is on disk, so the directory's
 * checkpoint is a commit marker: every tile it needs is there.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { StateError, StorageError } from '../core/errors.js';
import { entriesPath, TILE_WIDTH, tilePath, tilesForSize, tileWidthAt } from '../core/tiles.js';
import { fsyncPath, tempNameFor, writeFileDurably } from '../storage/durable.js';
import type { LogStore } from '../storage/store.js';
import { readEntryBundle, readHashTile } from './serving.js';

export const CHECKPOINT_FILE = 'checkpoint';

/** Files being written at once: their fsyncs overlap instead of queueing one behind the other. */
const WRITES_IN_FLIGHT = 32;

export interface PublishedTiles {
  /** The tree size of the checkpoint in the directory now. */
  size: number;
  /** Tiles and entry bundles written by this run (full and partial). */
  written: number;
  /** Whether the checkpoint file was replaced (false: the directory already held this checkpoint). */
  checkpointChanged: boolean;
}

/** One resource: its path under the directory, and where its bytes come from. */
interface Resource {
  path: string;
  level: number | 'entries';
  index: number;
  width: number;
}

/** Called as files are written: how many of `total` are done. */
export type PublishProgress = (done: number, total: number) => void;

/**
 * Writes `store`'s current checkpoint and every tile and entry bundle it covers to `dir` (created if
 * missing). `origin` is the log's: a directory that holds another log's checkpoint is refused.
 */
export async function publishTiles(
  store: LogStore,
  origin: string,
  dir: string,
  onProgress?: PublishProgress,
): Promise<PublishedTiles> {
  const head = store.read((s) => s.head());
  if (head === undefined) throw new StorageError('the store holds no log (it has no checkpoint yet)');
  const cpFile = join(dir, CHECKPOINT_FILE);
  mkdirSync(dir, { recursive: true });
  const previous = publishedCheckpoint(cpFile, origin);
  if (previous !== undefined && previous.size > head.size) {
    throw new StateError(
      `${cpFile} is at tree size ${previous.size}, ahead of the store's ${head.size}: is this the same log?`,
    );
  }
  if (previous?.note === head.checkpoint) return { size: head.size, written: 0, checkpointChanged: false };

  const todo = resourcesToWrite(store, head.size, previous?.size ?? 0, dir);
  const dirs = new Set<string>();
  let done = 0;
  onProgress?.(0, todo.length);
  const inFlight = new Set<Promise<void>>();
  for (const r of todo) {
    const data =
      r.level === 'entries'
        ? readEntryBundle(store, head.size, r.index, r.width)
        : readHashTile(store, head.size, r.level, r.index, r.width);
    if (data === undefined) throw new StorageError(`${r.path} is not in the tree of size ${head.size}`);
    const file = join(dir, r.path);
    const parent = dirname(file);
    if (!dirs.has(parent)) {
      mkdirSync(parent, { recursive: true });
      dirs.add(parent);
    }
    const w = writeWhole(file, data).then(() => {
      inFlight.delete(w);
      onProgress?.(++done, todo.length);
    });
    inFlight.add(w);
    if (inFlight.size >= WRITES_IN_FLIGHT) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
  // the renames are durable before the checkpoint that points at them
  for (const d of dirs) fsyncPath(d);
  writeFileDurably(cpFile, head.checkpoint, 0o644);
  return { size: head.size, written: todo.length, checkpointChanged: true };
}

/**
 * The checkpoint already in the directory (its note and size), or undefined for a fresh directory.
 * Refuses one of another log.
 */
function publishedCheckpoint(file: string, origin: string): { note: string; size: number } | undefined {
  if (!existsSync(file)) return undefined;
  const note = readFileSync(file, 'utf8');
  const [cpOrigin, sizeLine] = note.split('\n', 2);
  if (cpOrigin !== origin) {
    throw new StateError(
      `${file} is a checkpoint of ${JSON.stringify(cpOrigin)}, not of this log (${origin}): use another directory`,
    );
  }
  const size = Number(sizeLine);
  if (!Number.isSafeInteger(size) || size < 0) throw new StateError(`${file} is not a checkpoint`);
  return { note, size };
}

/**
 * What a tree of `size` needs that a directory published at `publishedSize` lacks: the full tiles
 * that are new since then (and any the directory is missing), the current partial tiles, and the
 * partial tiles of older checkpoints whose tile is still partial.
 */
function resourcesToWrite(store: LogStore, size: number, publishedSize: number, dir: string): Resource[] {
  const out: Resource[] = [];
  const seen = new Set<string>();
  const add = (level: number | 'entries', index: number, width: number) => {
    const path = level === 'entries' ? entriesPath(index, width) : tilePath(level, index, width);
    if (seen.has(path)) return;
    seen.add(path);
    // every full tile of the published checkpoint was on disk before it was written
    const known =
      width === TILE_WIDTH &&
      tileWidthAt(publishedSize, level === 'entries' ? 0 : level, index) === TILE_WIDTH;
    if (width === TILE_WIDTH && (known || existsSync(join(dir, path)))) return;
    out.push({ path, level, index, width });
  };
  const addWithBundle = (level: number, index: number, width: number) => {
    add(level, index, width);
    if (level === 0) add('entries', index, width);
  };
  for (const t of tilesForSize(size)) addWithBundle(t.level, t.index, t.width);
  for (const cp of store.checkpoints()) {
    if (cp.size <= publishedSize || cp.size >= size) continue;
    // its partial tiles: at each level, the rightmost tile if not full
    for (let level = 0, count = cp.size; count > 0; level++, count = Math.floor(count / TILE_WIDTH)) {
      const index = Math.floor(count / TILE_WIDTH);
      const width = count % TILE_WIDTH;
      if (width > 0 && tileWidthAt(size, level, index) < TILE_WIDTH) addWithBundle(level, index, width);
    }
  }
  return out;
}

/** Writes `data` to `file` whole: a temporary file beside it, fsynced, renamed over it. */
async function writeWhole(file: string, data: Uint8Array): Promise<void> {
  const tmp = tempNameFor(file);
  try {
    const fh = await open(tmp, 'wx', 0o644);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
