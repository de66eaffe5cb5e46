// Logs for the mirror tests: an honest log, and a log whose signed `map` line lies, written by hand
// into a node store with the log's own key (the node's read side then serves it like any other).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { signCheckpoint } from '../../src/core/checkpoint.js';
import { type Entry, encodeEntry, indexPath, indexValue } from '../../src/core/entry.js';
import { sha256 } from '../../src/core/hash.js';
import { leafHash, treeRoot } from '../../src/core/merkle.js';
import { type Cosigner, formatSignatureLine, parseNote, signerFromSkey } from '../../src/core/note.js';
import { smtApplyBatch } from '../../src/core/smt.js';
import { appendToTiles, hashReaderFromTiles, type TileGetter } from '../../src/core/tiles.js';
import { Log } from '../../src/log/log.js';
import { LmdbLogStore } from '../../src/storage/lmdb/lmdb.js';
import { entry } from '../client/helpers.js';

export function entries(n: number, prefix = 'm'): Entry[] {
  return Array.from({ length: n }, (_, i) => entry(`${prefix}-${i}`));
}

/** A new log in `dir` holding `batches` of entries (one checkpoint each); returns its vkey. */
export async function honestLog(dir: string, origin: string, batches: Entry[][]): Promise<string> {
  const log = await Log.create(dir, origin, { batchDelayMs: 1, maxBatch: 100_000 });
  for (const b of batches) await log.submit(b);
  const vkey = log.vkey;
  await log.close();
  return vkey;
}

/**
 * Appends `more` to the (closed) log in `dir` as a node would, index and all, but signs a
 * checkpoint whose `map` line is not the index's root: the lie a mirror must catch.
 */
export function appendWithLyingMap(dir: string, more: Entry[]): Promise<{ size: number }> {
  return appendByHand(dir, more, { lie: true });
}

/**
 * Appends `more` to the (closed) log in `dir` as a node would, index and all, and signs the new
 * checkpoint with the log's key, then `cosigners` (a log that gathered witness cosignatures), with
 * a `map` line that is the index's root unless `lie`.
 */
export async function appendByHand(
  dir: string,
  more: Entry[],
  opts: { lie?: boolean; cosigners?: Cosigner[] } = {},
): Promise<{ size: number }> {
  const skey = readFileSync(join(dir, 'signing.key'), 'utf8').trim();
  const signer = signerFromSkey(skey);
  const store = LmdbLogStore.open(dir);
  try {
    const head = store.read((s) => s.head())!;
    const data = more.map((e) => encodeEntry(e));
    const leaves = Buffer.concat(data.map((d) => leafHash(d)));
    const committed: TileGetter = (l, i) => store.read((s) => s.tile(l, i));
    const tiles = appendToTiles(head.size, leaves, committed);
    const overlay = new Map(tiles.map((t) => [`${t.tileLevel}/${t.tileIndex}`, t]));
    const size = head.size + more.length;
    const rootHash = treeRoot(
      size,
      hashReaderFromTiles((l, i) => overlay.get(`${l}/${i}`) ?? committed(l, i)),
    );
    const updates = more.map((e, i) => ({
      path: indexPath(e.protocol, e.key),
      value: indexValue(head.size + i, leaves.subarray(32 * i, 32 * i + 32)),
    }));
    const smt = store.read((s) => smtApplyBatch(head.mapRoot, updates, (id) => s.stratum(id)));
    const mapRoot = opts.lie ? sha256(Buffer.from('not the index')) : smt.root;
    let checkpoint = signCheckpoint({ origin: signer.name, size, rootHash, mapRoot, extensions: [] }, signer);
    const { text } = parseNote(checkpoint);
    for (const c of opts.cosigners ?? []) {
      checkpoint += formatSignatureLine(c.name, c.keyId, c.sign(Buffer.from(text, 'utf8')));
    }
    await store.commit({
      firstIndex: head.size,
      entries: data,
      tiles,
      strataWrites: [...smt.writes.values()],
      strataDeletes: [],
      head: { size, rootHash, mapRoot: smt.root, checkpoint },
    });
    return { size };
  } finally {
    await store.close();
  }
}
