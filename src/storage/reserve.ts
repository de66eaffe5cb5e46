/**
 * Disk space for the next commit, secured before it runs. A writer changes LMDB's pages in its
 * memory map (`useWritemap`), and the store file is sparse: a page LMDB takes from the end of the
 * file has no disk block until it is first written, and writing it through the map on a full disk
 * is a SIGBUS that kills the process, not an error. So before each commit the writer makes sure that
 * every page the commit could take from the end is allocated, by writing zeros there with `pwrite`
 * (which fails cleanly with ENOSPC): the commit is then refused with StorageFullError (HTTP 507),
 * reads go on, and the next commit tries again.
 *
 * While the file system has more than FREE_MARGIN (1 GiB) free beyond what a commit needs, nothing
 * is written: zeros ahead of every new page cost 4-10% of the ingest's CPU time, and only another
 * program writing over 1 GiB during one commit (about 200 ms at a million entries) could then fill
 * the disk under it.
 *
 * Only pages past LMDB's last used page are written: no committed data, no reader's snapshot and no
 * transaction (commits of one store run one at a time, and this runs between them) uses them.
 * Pages before it were all written once, so they have their blocks.
 */
import { closeSync, openSync, statfsSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { StorageError, TrustixError } from '../core/errors.js';

/** The disk holding a store is too full for a commit; nothing was written. */
export class StorageFullError extends TrustixError {
  constructor(
    readonly file: string,
    readonly bytes: number,
    cause: unknown,
  ) {
    super(
      'STORAGE_FULL',
      `not enough disk space to write ${file} (${Math.ceil(bytes / 1048576)} MiB needed: ${
        (cause as Error).message
      }); writes are refused until space is freed, reads go on`,
      { cause },
    );
  }
}

const ZEROS = Buffer.alloc(1 << 20);

/** Free space above which nothing is written ahead of a commit (see SpaceReserve.ensure). */
export const FREE_MARGIN = 1 << 30;

/** What one DB of the store holds (lmdb-js getStats). */
export interface DbShape {
  depth: number;
  branchPages: number;
  leafPages: number;
}

/** What a commit writes to one DB. */
export interface DbWrites {
  /** Records put or removed. */
  records: number;
  /** Bytes of keys and values put. */
  bytes: number;
  /** True when every key is past the DB's last key (appends touch only the rightmost path). */
  appendOnly?: boolean;
}

/**
 * An upper bound of the pages a commit of `writes` can take, whether from LMDB's free list or from
 * the end of the file: each page on a touched path copied once (at most every page of the DB, and
 * for appends only the rightmost path), a new leaf and a split parent per record at most, and no
 * more new leaves than twice the bytes written fill; values longer than half a page in overflow pages
 * of their own; and the free list's own record of the pages the commit frees.
 */
export function commitPagesBound(pageSize: number, dbs: ReadonlyArray<[DbShape, DbWrites]>): number {
  let pages = 0;
  for (const [shape, w] of dbs) {
    if (w.records === 0) continue;
    const depth = shape.depth + 1; // the tree may grow a level
    const filled = 2 * Math.ceil(w.bytes / pageSize) + 1;
    const copied = w.appendOnly
      ? depth
      : Math.min(w.records, shape.leafPages) + Math.min(w.records * depth, shape.branchPages + depth);
    pages += copied + 2 * Math.min(w.records, filled) + depth;
    // an overflow value (longer than half a page) takes pages of its own
    if (w.bytes / w.records > pageSize / 2) pages += Math.ceil(w.bytes / pageSize) + w.records;
  }
  // the free list records each freed page in 8 bytes; the main DB holds the DBs' roots
  return pages + Math.ceil((8 * pages) / pageSize) + 64;
}

/** Zeros written ahead of LMDB's last page, so a commit finds its new pages on disk (see above). */
export class SpaceReserve {
  private readonly fd: number;
  /** Bytes of the file known to have blocks, from the start. */
  private backed = 0;

  constructor(private readonly file: string) {
    this.fd = openSync(file, 'r+');
  }

  /**
   * Makes bytes [used, used + need) of the file allocated, where `used` is the end of LMDB's last
   * used page; only what lies past both `used` and what earlier calls secured is written.
   */
  ensure(used: number, need: number): void {
    const end = used + need;
    let at = Math.max(used, this.backed);
    if (at >= end) return;
    // with this much free space the commit cannot run out of it (see above)
    const fs = statfsSync(this.file);
    if (fs.bavail * fs.bsize >= end - at + FREE_MARGIN) return;
    try {
      while (at < end) {
        const n = Math.min(ZEROS.length, end - at);
        at += writeSync(this.fd, ZEROS, 0, n, at);
      }
    } catch (err) {
      throw spaceError(this.file, end - used, err);
    }
    this.backed = end;
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** Throws StorageFullError unless the file system of `file` (to be created) has `bytes` free. */
export function checkFreeSpace(file: string, bytes: number): void {
  const fs = statfsSync(dirname(file));
  if (fs.bavail * fs.bsize < bytes) {
    const err = Object.assign(new Error(`${fs.bavail * fs.bsize} bytes free`), { code: 'ENOSPC' });
    throw new StorageFullError(file, bytes, err);
  }
}

function spaceError(file: string, bytes: number, err: unknown): Error {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') return new StorageFullError(file, bytes, err);
  return new StorageError(`cannot write ${file}: ${(err as Error).message}`, { cause: err });
}
