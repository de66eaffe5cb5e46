import { equalBytes, toBase64 } from '../core/bytes.js';
import { openCheckpoint } from '../core/checkpoint.js';
import { decodeEntry, indexPath, indexValue } from '../core/entry.js';
import { TrustixError } from '../core/errors.js';
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
  const tiles = new Map<string, { expanded: Uint8Array; width: number }>();
  const strata = new Map<string, Buffer>();
  let size = 0;
  let mapRoot = SMT_EMPTY;
  let checked = 0;
  const chunk = 10_000;

  const diverge = (at: number, check: AuditDivergence['check'], message: string): AuditReport => ({
    ok: false,
    size: total,
    checkpoints: checked,
    divergence: { size: at, check, message },
  });

  for (const { size: target, checkpoint: note } of checkpoints) {
    let cp: ReturnType<typeof openCheckpoint>['checkpoint'];
    try {
      cp = openCheckpoint(note, verifier).checkpoint;
    } catch (err) {
      return diverge(target, 'signature', (err as Error).message);
    }
    if (cp.size !== target) return diverge(target, 'signature', `checkpoint stored at ${target} claims size ${cp.size}`);
    while (size < target) {
      const end = Math.min(target, size + chunk);
      const leaves: Buffer[] = [];
      const updates: { path: Buffer; value: Buffer }[] = [];
      let i = size;
      try {
        for (const data of store.entries(size, end)) {
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
      for (const t of appendToTiles(size, leaves, (l, n) => tiles.get(`${l}/${n}`))) {
        tiles.set(`${t.tileLevel}/${t.tileIndex}`, t);
      }
      const r = smtApplyBatch(mapRoot, updates, (id) => strata.get(id.toString('hex')));
      for (const [k, w] of r.writes) strata.set(k, w.data);
      for (const id of r.deletes) strata.delete(Buffer.from(id).toString('hex'));
      mapRoot = r.root;
      size = end;
      onProgress?.(size, total);
      // let progress output and signals through on long audits
      await new Promise((res) => setImmediate(res));
    }
    const root = size === 0 ? EMPTY_ROOT : treeRoot(size, hashReaderFromTiles((l, n) => tiles.get(`${l}/${n}`)));
    if (!equalBytes(root, cp.rootHash)) {
      return diverge(target, 'log-root', `log root is ${toBase64(root)}, checkpoint says ${toBase64(cp.rootHash)}`);
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
  if (head && head.size !== size) return diverge(head.size, 'head', `head is at ${head.size} but checkpoints end at ${size}`);
  return { ok: true, size, checkpoints: checked };
}
