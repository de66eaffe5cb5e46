import { equalBytes, toBase64 } from '../core/bytes.js';
import { openCheckpoint } from '../core/checkpoint.js';
import { decodeEntry, indexPath, indexValue } from '../core/entry.js';
import { StorageError, TrustixError } from '../core/errors.js';
import { EMPTY_ROOT, leafHash, treeRoot } from '../core/merkle.js';
import type { NoteVerifier } from '../core/note.js';
import { SMT_EMPTY, smtApplyBatch } from '../core/smt.js';
import { appendToTiles, hashReaderFromTiles } from '../core/tiles.js';
import type { LogStore } from '../storage/store.js';

export interface AuditDivergence {
  /** Tree size of the first published checkpoint that the entries do not reproduce. */
  size: number;
  check: 'signature' | 'entry' | 'log-root' | 'map-root' | 'head';
  message: string;
}

export interface AuditReport {
  ok: boolean;
  size: number;
  checkpoints: number;
  divergence?: AuditDivergence;
}

/**
 * Replays every entry from scratch and recomputes the log root and the map root at each
 * published checkpoint. Since both roots are pure functions of the entries, anyone holding
 * the entries can run this; it proves that the sparse index is append-only and honest.
 */
export async function auditStore(
  store: LogStore,
  verifier: NoteVerifier,
  onProgress?: (done: number, total: number) => void,
): Promise<AuditReport> {
  const checkpoints = [...store.checkpoints()];
  const head = store.read((s) => s.head());
  const total = head?.size ?? 0;
  const end = Math.min(total, checkpoints.length > 0 ? checkpoints[checkpoints.length - 1].size : 0);
  const report = await auditEntries(storeChunks(store, end), checkpoints, verifier, { total, onProgress });
  if (report.ok && head && head.size !== report.size) {
    return {
      ok: false,
      size: total,
      checkpoints: report.checkpoints,
      divergence: {
        size: head.size,
        check: 'head',
        message: `head is at ${head.size} but checkpoints end at ${report.size}`,
      },
    };
  }
  return report;
}

const CHUNK = 10_000;

/** Entries [0, end) of a local store, in chunks. */
export function* storeChunks(store: LogStore, end: number): Iterable<Buffer[]> {
  for (let start = 0; start < end; start += CHUNK) {
    yield [...store.entries(start, Math.min(end, start + CHUNK))];
  }
}

/**
 * The replay core of an audit, for entries from anywhere (a local store, a remote log's entry
 * bundles, a mirror): `chunks` yields the entries from index 0 in order, in chunks of any size;
 * `checkpoints` are the signed checkpoints to check, each at the size it claims. Entries past the
 * last checkpoint are not read. Errors of the source propagate, except StorageError (a damaged
 * store), which is reported as an 'entry' divergence like an undecodable entry.
 */
export async function auditEntries(
  chunks: AsyncIterable<readonly Uint8Array[]> | Iterable<readonly Uint8Array[]>,
  checkpoints: ReadonlyArray<{ size: number; checkpoint: string }>,
  verifier: NoteVerifier,
  opts: { total?: number; onProgress?: (done: number, total: number) => void } = {},
): Promise<AuditReport> {
  const sorted = [...checkpoints].sort((a, b) => a.size - b.size);
  const total = opts.total ?? (sorted.length > 0 ? sorted[sorted.length - 1].size : 0);
  const source = entrySource(chunks);
  const tiles = new Map<string, { expanded: Uint8Array; width: number }>();
  const strata = new Map<string, Buffer>();
  let size = 0;
  let mapRoot = SMT_EMPTY;
  let checked = 0;

  const diverge = (at: number, check: AuditDivergence['check'], message: string): AuditReport => ({
    ok: false,
    size: total,
    checkpoints: checked,
    divergence: { size: at, check, message },
  });

  try {
    for (const { size: target, checkpoint: note } of sorted) {
      let cp: ReturnType<typeof openCheckpoint>['checkpoint'];
      try {
        cp = openCheckpoint(note, verifier).checkpoint;
      } catch (err) {
        return diverge(target, 'signature', (err as Error).message);
      }
      if (cp.size !== target) {
        return diverge(target, 'signature', `checkpoint stored at ${target} claims size ${cp.size}`);
      }
      while (size < target) {
        const end = Math.min(target, size + CHUNK);
        const leaves: Buffer[] = [];
        const updates: { path: Buffer; value: Buffer }[] = [];
        let i = size;
        while (i < end) {
          let got: readonly Uint8Array[] | undefined;
          try {
            got = await source.take(end - i);
          } catch (err) {
            if (err instanceof StorageError) return diverge(target, 'entry', `entry ${i}: ${err.message}`);
            throw err;
          }
          if (got === undefined) {
            return diverge(target, 'entry', `the entries end at ${i}, but a checkpoint has size ${target}`);
          }
          try {
            for (const data of got) {
              const e = decodeEntry(data);
              const leaf = leafHash(data);
              leaves.push(leaf);
              updates.push({ path: indexPath(e.protocol, e.key), value: indexValue(i, leaf) });
              i++;
            }
          } catch (err) {
            if (err instanceof TrustixError) return diverge(target, 'entry', `entry ${i}: ${err.message}`);
            throw err;
          }
        }
        for (const t of appendToTiles(size, leaves, (l, n) => tiles.get(`${l}/${n}`))) {
          tiles.set(`${t.tileLevel}/${t.tileIndex}`, t);
        }
        const r = smtApplyBatch(mapRoot, updates, (id) => strata.get(id.toString('hex')));
        // A store copies what it commits; kept in memory, the batch's output may be views into
        // buffers that its next call reuses.
        for (const [k, w] of r.writes) strata.set(k, Buffer.from(w.data));
        for (const id of r.deletes) strata.delete(Buffer.from(id).toString('hex'));
        mapRoot = Buffer.from(r.root);
        size = end;
        opts.onProgress?.(size, total);
        // let progress output and signals through on long audits
        await new Promise((res) => setImmediate(res));
      }
      const root =
        size === 0
          ? EMPTY_ROOT
          : treeRoot(
              size,
              hashReaderFromTiles((l, n) => tiles.get(`${l}/${n}`)),
            );
      if (!equalBytes(root, cp.rootHash)) {
        return diverge(
          target,
          'log-root',
          `log root is ${toBase64(root)}, checkpoint says ${toBase64(cp.rootHash)}`,
        );
      }
      if (!cp.mapRoot || !equalBytes(mapRoot, cp.mapRoot)) {
        return diverge(
          target,
          'map-root',
          `map root is ${toBase64(mapRoot)}, checkpoint says ${cp.mapRoot ? toBase64(cp.mapRoot) : 'nothing'}`,
        );
      }
      checked++;
    }
  } finally {
    await source.close();
  }
  return { ok: true, size, checkpoints: checked };
}

/** Pulls entries from chunks of any size, `max` at a time at most, without copying. */
function entrySource(chunks: AsyncIterable<readonly Uint8Array[]> | Iterable<readonly Uint8Array[]>) {
  const it: AsyncIterator<readonly Uint8Array[]> | Iterator<readonly Uint8Array[]> =
    Symbol.asyncIterator in chunks ? chunks[Symbol.asyncIterator]() : chunks[Symbol.iterator]();
  let chunk: readonly Uint8Array[] = [];
  let off = 0;
  let done = false;
  return {
    async take(max: number): Promise<readonly Uint8Array[] | undefined> {
      while (off >= chunk.length) {
        if (done) return undefined;
        const r = await it.next();
        if (r.done) {
          done = true;
          return undefined;
        }
        chunk = r.value;
        off = 0;
      }
      const out = off === 0 && chunk.length <= max ? chunk : chunk.slice(off, off + max);
      off += out.length;
      return out;
    },
    async close(): Promise<void> {
      if (!done) {
        done = true;
        await it.return?.();
      }
    },
  };
}
