/**
 * Converting a store's sparse index from format 1 (8-level strata all the way down, whose bottom
 * rows grow with the tree) to the current layout (4-level strata from depth 16 on: rows of bounded
 * size; docs/sparse-index.md). The tree, its root and every proof stay the same: only how its nodes
 * are cut into rows changes. Works through the LogStore contract, so on any driver.
 *
 * Crash safety: the new rows have ids of their own (first byte 0x40 and up, format 1's are 0 to 31),
 * so the conversion writes them beside the old ones in commits that leave the head as it is; the old
 * rows are deleted in one last commit, only after the new root row matches the head's map root. A
 * conversion cut short leaves the old index whole and is started again from scratch on the next
 * open (an insert-only rebuild writes every row it wrote before again); one cut short after the new
 * index was complete only deletes the old rows.
 */
import { StorageError } from '../core/errors.js';
import {
  SMT_EMPTY,
  type SmtUpdate,
  STRATA,
  STRATA_V1,
  smtApplyBatch,
  smtAudit,
  smtLeaves,
} from '../core/smt.js';
import { nodeHashAt } from '../core/smt-strata.js';
import type { LogSnapshot, LogStore } from '../storage/store.js';

/**
 * What a store's sparse index needs before this code can use it: nothing; a conversion from
 * format 1; or only the deletion of format 1 rows that a finished conversion left behind.
 */
export type StrataState = 'current' | 'format-1' | 'format-1-rows-left';

const V1_ROOT_ID = Buffer.from([STRATA_V1.idBase]);
const ROOT_ID = Buffer.from([STRATA.idBase]);

/** Leaves moved to the new layout per commit: a few MB of rows, a progress line each. */
const LEAVES_PER_COMMIT = 100_000;

export function strataState(store: LogStore): StrataState {
  return store.read((snap) => {
    if (snap.stratum(V1_ROOT_ID) === undefined) return 'current';
    const head = snap.head();
    if (head === undefined) return 'current';
    return rootMatches(snap, head.mapRoot) ? 'format-1-rows-left' : 'format-1';
  });
}

/** Whether the current layout's root row is that of the tree with root `mapRoot`. */
function rootMatches(snap: LogSnapshot, mapRoot: Buffer): boolean {
  const row = snap.stratum(ROOT_ID);
  if (row === undefined || row.length < 2 || row[0] !== STRATA.version) return false;
  try {
    return nodeHashAt(row, 1).equals(mapRoot);
  } catch {
    return false;
  }
}

/**
 * Brings a store written with format 1 strata to the current layout (nothing to do for a current
 * one). The caller must hold the store's writer rights and let nothing else commit meanwhile.
 * `progress` is told what happens, a line at a time. Throws StorageError, leaving the old index as
 * it was, if the old index is damaged (every hash of it is checked first) or the new one does not
 * come out with the same root.
 */
export async function convertStrata(
  store: LogStore,
  progress: (line: string) => void,
  leavesPerCommit = LEAVES_PER_COMMIT,
): Promise<void> {
  const state = strataState(store);
  if (state === 'current') return;
  const head = store.read((s) => s.head());
  if (head === undefined) return;
  const started = Date.now();
  progress('the sparse index is stored in format 1; checking it before converting it to format 2');
  // Every hash of the old tree, and the ids of all its rows (deleted at the end).
  const old = store.read((snap) => smtAudit(head.mapRoot, (id) => snap.stratum(id), STRATA_V1));
  if (state === 'format-1') {
    let root = SMT_EMPTY;
    let moved = 0;
    // Leaves come in path order, so each commit fills the index from left to right and rewrites
    // only the rows on the edge between what is done and what is not.
    let snapshot: LogSnapshot | undefined;
    const leaves = smtLeaves(head.mapRoot, (id) => snapshot!.stratum(id), STRATA_V1)[Symbol.iterator]();
    for (;;) {
      const batch: SmtUpdate[] = [];
      store.read((snap) => {
        snapshot = snap;
        while (batch.length < leavesPerCommit) {
          const next = leaves.next();
          if (next.done) break;
          batch.push(next.value);
        }
      });
      if (batch.length === 0) break;
      const result = store.read((snap) => smtApplyBatch(root, batch, (id) => snap.stratum(id)));
      await store.commit({
        firstIndex: head.size,
        entries: [],
        tiles: [],
        strataWrites: [...result.writes.values()],
        strataDeletes: [],
        head,
      });
      root = result.root;
      moved += batch.length;
      progress(
        `converted ${moved.toLocaleString('en-US')} of ${old.leaves.toLocaleString('en-US')} index leaves`,
      );
    }
    if (!root.equals(head.mapRoot)) {
      throw new StorageError(
        `converting the sparse index gave map root ${root.toString('hex')}, not ${head.mapRoot.toString('hex')}: ` +
          'the store is damaged; the old index is left as it was',
      );
    }
  }
  if (!store.read((snap) => rootMatches(snap, head.mapRoot))) {
    throw new StorageError(
      'the converted sparse index does not match the log head; the old index is left as it was',
    );
  }
  await store.commit({
    firstIndex: head.size,
    entries: [],
    tiles: [],
    strataWrites: [],
    strataDeletes: old.strata,
    head,
  });
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  progress(
    `sparse index converted to format 2 (${old.strata.length.toLocaleString('en-US')} old rows removed, ${seconds} s)`,
  );
}
