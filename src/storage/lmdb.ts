import { closeSync, existsSync, mkdirSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { type Database, open, type RootDatabase } from 'lmdb';
import { StorageError } from '../core/errors.js';
import type { CommitBatch, LogHead, LogSnapshot, LogStore, StoredTile } from './store.js';

/**
 * The embedded default backend: one LMDB environment per log. Chosen by measurement
 * (DESIGN §5: fastest point reads and sequential appends here, and prebuilt binaries).
 *
 * Layout: `entries` (u64 index -> entry bytes), `tiles` ([level, index] -> expanded tile),
 * `strata` (stratum id -> encoded stratum), `checkpoints` (size -> signed note),
 * `meta` (name -> string; `head` holds the current LogHead).
 */
export class LmdbLogStore implements LogStore {
  private readonly root: RootDatabase;
  private readonly entriesDb: Database<Buffer, number>;
  private readonly tilesDb: Database<Buffer, number[]>;
  private readonly strataDb: Database<Buffer, Buffer>;
  private readonly checkpointsDb: Database<string, number>;
  private readonly metaDb: Database<string, string>;

  private constructor(root: RootDatabase) {
    this.root = root;
    this.entriesDb = root.openDB({ name: 'entries', encoding: 'binary' });
    this.tilesDb = root.openDB({ name: 'tiles', encoding: 'binary' });
    this.strataDb = root.openDB({ name: 'strata', encoding: 'binary', keyEncoding: 'binary' });
    this.checkpointsDb = root.openDB({ name: 'checkpoints', encoding: 'string' });
    this.metaDb = root.openDB({ name: 'meta', encoding: 'string' });
  }

  static open(dir: string, opts: { create?: boolean; readOnly?: boolean } = {}): LmdbLogStore {
    const file = join(dir, 'log.mdb');
    if (!existsSync(file)) {
      if (!opts.create) throw new StorageError(`no log store at ${dir} (expected ${file})`);
      mkdirSync(dir, { recursive: true });
    } else {
      checkLmdbHeader(file);
    }
    let root: RootDatabase;
    try {
      root = open({
        path: file,
        maxDbs: 8,
        // Durable at commit: the promise of a write resolves only after fsync.
        overlappingSync: false,
        noSync: false,
        compression: false,
        readOnly: opts.readOnly ?? false,
        // A writer changes pages in the map itself instead of in a private copy of each page it
        // touches: without it, every commit's dirty pages (about 45 MB per 10k-entry batch at a
        // million entries, most of them strata rows) were allocated on lmdb-js's write thread and
        // kept by LMDB and the allocator afterwards, 60-100 MB of anonymous memory. The file pages
        // it writes are the ones later reads map anyway (docs/performance.md, "Memory"). Commits
        // stay as durable: LMDB msyncs the pages before it writes the meta page. The file is sized
        // to the map (sparse). Never for a read-only open, which cannot resize the file.
        useWritemap: !(opts.readOnly ?? false),
        // Default is a 1 MiB initial map that grows by remapping; start bigger to remap rarely.
        mapSize: 1 << 30,
      });
    } catch (err) {
      throw new StorageError(`cannot open log store ${file}: ${(err as Error).message}`, { cause: err });
    }
    return new LmdbLogStore(root);
  }

  /**
   * Makes the next read see the latest commit. A thread that only reads (the sparse index worker)
   * could otherwise keep the snapshot it took before another thread's commit.
   */
  renewSnapshot(): void {
    this.root.resetReadTxn();
  }

  read<T>(fn: (snapshot: LogSnapshot) => T): T {
    return fn(this.snapshot);
  }

  // lmdb-js reads outside a write share one read transaction that is only renewed between
  // event-loop turns, so a synchronous callback sees one snapshot; nothing here is per call, so
  // every read shares this one object (a lookup makes two reads, a server one per request).
  private readonly snapshot: LogSnapshot = {
    head: () => this.readHead(),
    entry: (i) => this.entriesDb.getBinary(i),
    tile: (level, index) => {
      const b = this.tilesDb.getBinary([level, index]);
      if (!b) return undefined;
      return decodeTileRecord(b);
    },
    stratum: (id) =>
      this.strataDb.getBinary(
        Buffer.isBuffer(id) ? id : Buffer.from(id.buffer, id.byteOffset, id.byteLength),
      ),
    // lmdb-js copies the value into one buffer that every read reuses (getBinary copies it again);
    // that buffer reports the value's size through an own `length` property, so it is narrowed to
    // a plain view for callers
    peekStratum: (id) => {
      const b = this.strataDb.getBinaryFast(
        Buffer.isBuffer(id) ? id : Buffer.from(id.buffer, id.byteOffset, id.byteLength),
      );
      return b === undefined ? undefined : b.subarray(0, b.length);
    },
    peekEntry: (i) => {
      const b = this.entriesDb.getBinaryFast(i);
      return b === undefined ? undefined : b.subarray(0, b.length);
    },
  };

  private lastHeadBytes: Buffer | undefined;
  private lastHead: LogHead | undefined;

  private readHead(): LogHead | undefined {
    // The head is read by every lookup (once per request by a server). Its bytes are compared in
    // lmdb's reused buffer and decoded and parsed only when they changed: the checkpoint's em dash
    // made each decoding a two-byte string of the whole record.
    const raw = this.metaDb.getBinaryFast('head');
    if (raw === undefined) return undefined;
    const bytes = raw.subarray(0, raw.length);
    if (this.lastHeadBytes !== undefined && Buffer.compare(bytes, this.lastHeadBytes) === 0)
      return this.lastHead;
    const copy = Buffer.from(bytes);
    try {
      const j = JSON.parse(copy.toString('utf8')) as {
        size: number;
        rootHash: string;
        mapRoot: string;
        checkpoint: string;
      };
      const head = {
        size: j.size,
        rootHash: Buffer.from(j.rootHash, 'base64'),
        mapRoot: Buffer.from(j.mapRoot, 'base64'),
        checkpoint: j.checkpoint,
      };
      this.lastHeadBytes = copy;
      this.lastHead = head;
      return head;
    } catch (err) {
      throw new StorageError('log head record is corrupt', { cause: err });
    }
  }

  async commit(batch: CommitBatch): Promise<void> {
    const current = this.readHead()?.size ?? 0;
    if (batch.firstIndex !== current) {
      throw new StorageError(`commit at index ${batch.firstIndex} but the log has ${current} entries`);
    }
    const head = batch.head;
    // One asynchronous batch: lmdb-js runs all of its writes in one transaction on its own write
    // thread and resolves after that transaction is committed and synced. (A `transaction`
    // callback put every row into the B-trees on this thread: about a sixth of its time in ingest.)
    // The buffers handed to `put` are kept alive by lmdb-js until then.
    await this.root.batch(() => {
      let i = batch.firstIndex;
      for (const e of batch.entries) this.entriesDb.put(i++, e as Buffer);
      for (const t of batch.tiles)
        this.tilesDb.put([t.tileLevel, t.tileIndex], encodeTileRecord(t.width, t.expanded));
      for (const s of batch.strataWrites) this.strataDb.put(Buffer.from(s.id), s.data as Buffer);
      for (const id of batch.strataDeletes) this.strataDb.remove(Buffer.from(id));
      this.checkpointsDb.put(head.size, head.checkpoint);
      this.metaDb.put(
        'head',
        JSON.stringify({
          size: head.size,
          rootHash: head.rootHash.toString('base64'),
          mapRoot: head.mapRoot.toString('base64'),
          checkpoint: head.checkpoint,
        }),
      );
    });
  }

  *checkpoints(): Iterable<{ size: number; checkpoint: string }> {
    for (const { key, value } of this.checkpointsDb.getRange()) yield { size: key, checkpoint: value };
  }

  *entries(start: number, end: number): Iterable<Buffer> {
    let expected = start;
    for (const { key, value } of this.entriesDb.getRange({ start, end })) {
      if (key !== expected) throw new StorageError(`entry ${expected} is missing from the store`);
      expected++;
      yield value;
    }
    if (expected !== end) throw new StorageError(`entry ${expected} is missing from the store`);
  }

  getMeta(name: string): string | undefined {
    return this.metaDb.get(`config:${name}`);
  }

  async setMeta(name: string, value: string): Promise<void> {
    await this.metaDb.put(`config:${name}`, value);
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}

/** Tile rows carry their width in a 2-byte prefix so a torn or foreign value is detected. */
function encodeTileRecord(width: number, expanded: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(2 + expanded.length);
  out.writeUInt16BE(width, 0);
  out.set(expanded, 2);
  return out;
}

function decodeTileRecord(b: Buffer): StoredTile {
  if (b.length < 2) throw new StorageError('tile record is corrupt');
  return { width: b.readUInt16BE(0), expanded: b.subarray(2) };
}

/**
 * LMDB trusts its file: a damaged or foreign file can crash the process inside the native
 * library instead of raising an error. So before handing a file to it, check what LMDB itself
 * checks first: both meta pages, their magic number and format version.
 */
function checkLmdbHeader(file: string): void {
  const fd = openSync(file, 'r');
  try {
    const page0 = Buffer.alloc(64);
    const n0 = readSync(fd, page0, 0, 64, 0);
    if (n0 === 0) return; // an empty file is initialised by LMDB
    const bad = (why: string) =>
      new StorageError(`${file} is not a valid log store (${why}); restore it from a backup or a mirror`);
    if (n0 < 64) throw bad('file too short');
    checkMeta(page0, 0, bad);
    const pageSize = page0.readUInt32LE(0x30);
    if (pageSize < 512 || pageSize > 65536 || (pageSize & (pageSize - 1)) !== 0) throw bad('bad page size');
    const page1 = Buffer.alloc(64);
    if (readSync(fd, page1, 0, 64, pageSize) < 64) throw bad('second meta page missing');
    checkMeta(page1, 1, bad);
  } finally {
    closeSync(fd);
  }
}

const LMDB_MAGIC = 0xbeefc0de;
const LMDB_META_FLAG = 0x08;

function checkMeta(page: Buffer, pgno: number, bad: (why: string) => Error): void {
  if (page.readUInt32LE(0) !== pgno || page.readUInt32LE(4) !== 0)
    throw bad(`meta page ${pgno} has a wrong page number`);
  if ((page.readUInt16LE(0x12) & LMDB_META_FLAG) === 0) throw bad(`page ${pgno} is not a meta page`);
  if (page.readUInt32LE(0x18) !== LMDB_MAGIC) throw bad(`meta page ${pgno} has a wrong magic number`);
  const version = page.readUInt32LE(0x1c);
  if (version !== 1 && version !== 2) throw bad(`meta page ${pgno} has unknown format version ${version}`);
}
