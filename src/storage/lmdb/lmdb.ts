import { closeSync, existsSync, mkdirSync, openSync, readSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { type Database, open, type RootDatabase } from 'lmdb';
import { StorageError, TrustixError } from '../../core/errors.js';
import { asBuffer } from '../../core/smt-strata.js';
import { lockStore, type StoreLock } from '../lock.js';
import { checkFreeSpace, commitPagesBound, type DbShape, type DbWrites, SpaceReserve } from '../reserve.js';
import type { CommitBatch, LogHead, LogSnapshot, LogStore, StoredTile } from '../store.js';

/**
 * The embedded default backend: one LMDB environment per log. Chosen by measurement
 * (DESIGN §5: fastest point reads and sequential appends here, and prebuilt binaries).
 *
 * Layout: `entries` (u64 index -> entry bytes), `tiles` ([level, index] -> expanded tile),
 * `strata` (stratum id -> encoded stratum, in parts when long: see `putStratum`), `checkpoints`
 * (size -> signed note), `meta` (name -> string; `head` holds the current LogHead), `nonces`
 * ([expires, writer and nonce] -> '': the used nonces of signed requests, by expiry).
 */
export class LmdbLogStore implements LogStore {
  private readonly root: RootDatabase;
  private readonly entriesDb: Database<Buffer, number>;
  private readonly tilesDb: Database<Buffer, number[]>;
  private readonly strataDb: Database<Buffer, Buffer>;
  private readonly checkpointsDb: Database<string, number>;
  private readonly metaDb: Database<string, string>;
  private noncesDbOpened: Database<string, [number, string]> | undefined;
  /** Unix second of the last sweep of expired nonces. */
  private noncesSwept = 0;

  private constructor(
    root: RootDatabase,
    /** The writer lock, held until close (undefined for a reader or the index worker). */
    private readonly lock: StoreLock | undefined,
    /** Disk space secured ahead of each commit (the writer only: see reserve.ts). */
    private readonly reserve: SpaceReserve | undefined,
  ) {
    this.root = root;
    // the first commits of a new store (its DBs, its identity, the empty head) are secured here
    if (reserve) reserve.ensure(pagesInUse(root).used, NEW_STORE_BYTES);
    this.entriesDb = root.openDB({ name: 'entries', encoding: 'binary' });
    this.tilesDb = root.openDB({ name: 'tiles', encoding: 'binary' });
    this.strataDb = root.openDB({ name: 'strata', encoding: 'binary', keyEncoding: 'binary' });
    this.checkpointsDb = root.openDB({ name: 'checkpoints', encoding: 'string' });
    this.metaDb = root.openDB({ name: 'meta', encoding: 'string' });
  }

  // opened on first use: a store opened read-only by an older version may not have it
  private get noncesDb(): Database<string, [number, string]> {
    this.noncesDbOpened ??= this.root.openDB({ name: 'nonces', encoding: 'string' });
    return this.noncesDbOpened;
  }

  /**
   * Opens the store of `dir`. A writer (not `readOnly`) first takes the directory's writer lock
   * (storage/lock.ts) and keeps it until `close`; `lock: false` opens without it, for a handle that
   * never writes: a reader (Log.open with readOnly), or the sparse index worker of the process that
   * holds it.
   */
  static open(
    dir: string,
    opts: { create?: boolean; readOnly?: boolean; lock?: boolean } = {},
  ): LmdbLogStore {
    const file = join(dir, 'log.mdb');
    const readOnly = opts.readOnly ?? false;
    const exists = existsSync(file);
    if (!exists) {
      if (!opts.create) throw new StorageError(`no log store at ${dir} (expected ${file})`);
      mkdirSync(dir, { recursive: true });
    }
    const lock = !readOnly && opts.lock !== false ? lockStore(dir) : undefined;
    let root: RootDatabase | undefined;
    try {
      if (exists) checkLmdbHeader(file);
      // LMDB's own first writes (meta pages, lock file) fail badly on a full disk: a crash in
      // lmdb-js, not an error. A store is only made with room for them and its first commits.
      else if (!readOnly) checkFreeSpace(file, NEW_STORE_BYTES + (64 << 10));
      root = open({
        path: file,
        maxDbs: 8,
        // Durable at commit: the promise of a write resolves only after fsync.
        overlappingSync: false,
        noSync: false,
        compression: false,
        readOnly,
        // A writer changes pages in the map itself instead of in a private copy of each page it
        // touches: without it, every commit's dirty pages (about 45 MB per 10k-entry batch at a
        // million entries, most of them strata rows) were allocated on lmdb-js's write thread and
        // kept by LMDB and the allocator afterwards, 60-100 MB of anonymous memory. The file pages
        // it writes are the ones later reads map anyway (docs/performance.md, "Memory"). Commits
        // stay as durable: LMDB msyncs the pages before it writes the meta page. The file is sized
        // to the map (sparse): reserve.ts secures the disk space of each commit. Never for a
        // read-only open, which cannot resize the file.
        useWritemap: !readOnly,
        // Default is a 1 MiB initial map that grows by remapping; start bigger to remap rarely.
        mapSize: 1 << 30,
      });
      // a handle that may commit: the lock holder, or one that creates the store (Log.create)
      const reserve = lock !== undefined || (opts.create && !readOnly) ? new SpaceReserve(file) : undefined;
      const store = new LmdbLogStore(root, lock, reserve);
      return store;
    } catch (err) {
      // a failed open leaves nothing behind: no lock, and no new store file
      void root?.close();
      lock?.release();
      if (!exists && !readOnly) {
        rmSync(file, { force: true });
        rmSync(`${file}-lock`, { force: true });
      }
      if (err instanceof TrustixError) throw err;
      throw new StorageError(`cannot open log store ${file}: ${(err as Error).message}`, { cause: err });
    }
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
    stratum: (id) => {
      const key = asBuffer(id);
      const b = this.strataDb.getBinary(key);
      return b === undefined || b[0] !== STRATUM_PARTS ? b : this.joinParts(key, b, false);
    },
    // lmdb-js copies the value into one buffer that every read reuses (getBinary copies it again);
    // that buffer reports the value's size through an own `length` property, so it is narrowed to
    // a plain view for callers
    peekStratum: (id) => {
      const key = asBuffer(id);
      const b = this.strataDb.getBinaryFast(key);
      if (b === undefined) return undefined;
      const row = b.subarray(0, b.length);
      return row[0] !== STRATUM_PARTS ? row : this.joinParts(key, row, true);
    },
    peekTile: (level, index) => {
      const b = this.tilesDb.getBinaryFast([level, index]);
      return b === undefined ? undefined : decodeTileRecord(b.subarray(0, b.length));
    },
    peekEntry: (i) => {
      const b = this.entriesDb.getBinaryFast(i);
      return b === undefined ? undefined : b.subarray(0, b.length);
    },
  };

  /**
   * A row stored in parts (see putStratum), put together again from its first record `first`: in a
   * new buffer, or for `peekStratum` in one that the next such read reuses (the worker reads about
   * 2,000 rows in parts per batch at a million entries).
   */
  private joinParts(id: Buffer, first: Uint8Array, reuse: boolean): Buffer {
    const count = first[1];
    const damaged = (what: string) => new StorageError(`stratum ${id.toString('hex')}: ${what}`);
    // putStratum writes a full first record, at least two parts and full parts but the last
    if (first.length !== STRATUM_PART_BYTES || !(count >= 2)) throw damaged('bad first part');
    const size = first.length - 2 + (count - 1) * STRATUM_PART_BYTES;
    let out: Buffer;
    if (!reuse) out = Buffer.allocUnsafe(size);
    else {
      if (this.joined.length < size) this.joined = Buffer.allocUnsafe(Math.max(size, 2 * this.joined.length));
      out = this.joined;
    }
    // copied before the next read, which may reuse the buffer `first` lives in
    out.set(first.subarray(2));
    let at = first.length - 2;
    const key = this.partKeyFor(id);
    for (let k = 1; k < count; k++) {
      key[id.length] = k;
      const part = this.strataDb.getBinaryFast(key);
      if (part === undefined) throw damaged(`part ${k} of ${count} is missing`);
      const last = k === count - 1;
      if (
        part.length > STRATUM_PART_BYTES ||
        part.length === 0 ||
        (!last && part.length !== STRATUM_PART_BYTES)
      ) {
        throw damaged(`part ${k} of ${count} has a wrong length (${part.length})`);
      }
      out.set(part.subarray(0, part.length), at);
      at += part.length;
    }
    return out.subarray(0, at);
  }

  private joined = Buffer.alloc(0);
  private readonly partKeys: Buffer[] = [];

  /** A reused key buffer of id.length + 1 bytes starting with id, for reads of its parts. */
  private partKeyFor(id: Buffer): Buffer {
    let key = this.partKeys[id.length];
    if (key === undefined) {
      key = Buffer.alloc(id.length + 1);
      this.partKeys[id.length] = key;
    }
    id.copy(key, 0);
    return key;
  }

  /**
   * LMDB keeps a value too long for half a page (about 2,030 bytes with 4 KB pages) in overflow
   * pages of its own, rewritten whole on every change, so a 2.1 KB row took a 4 KB page plus its
   * slot in a leaf page. The rows of the two top levels (8-level bands, up to about 17 KB) are that
   * long, and so were the bottom rows of format 1 stores. A row longer than STRATUM_PART_BYTES is
   * therefore stored in parts that each fit a leaf page: the first record, under the row's id, is
   * STRATUM_PARTS, the part count and the first part; part k (k >= 1) is under id || k, which
   * sorts right after the id and is no stratum id (an id's length follows from its first byte,
   * core/smt-strata.ts), so the parts
   * usually share the leaf page. Rows start with their version byte, never STRATUM_PARTS. A row
   * that shrinks to fewer parts leaves its old last parts behind, unread (the first record says
   * how many parts there are) until the row grows again and overwrites them.
   */
  private putStratum(id: Buffer, row: Buffer): void {
    if (row.length <= STRATUM_PART_BYTES) {
      this.strataDb.put(id, row);
      return;
    }
    const firstBytes = STRATUM_PART_BYTES - 2;
    const count = 1 + Math.ceil((row.length - firstBytes) / STRATUM_PART_BYTES);
    // about 505 KB; the longest possible row is about 82 KB
    if (count > 255) throw new StorageError(`stratum row of ${row.length} bytes is too long to store`);
    const first = Buffer.allocUnsafe(2 + firstBytes);
    first[0] = STRATUM_PARTS;
    first[1] = count;
    row.copy(first, 2, 0, firstBytes);
    this.strataDb.put(id, first);
    for (let k = 1, at = firstBytes; k < count; k++, at += STRATUM_PART_BYTES) {
      this.strataDb.put(partKey(id, k), row.subarray(at, at + STRATUM_PART_BYTES));
    }
  }

  private removeStratum(id: Buffer): void {
    const first = this.strataDb.getBinaryFast(id);
    const count = first !== undefined && first[0] === STRATUM_PARTS ? first[1] : 1;
    this.strataDb.remove(id);
    for (let k = 1; k < count; k++) this.strataDb.remove(partKey(id, k));
  }

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
    this.reserveFor(batch);
    // One asynchronous batch: lmdb-js runs all of its writes in one transaction on its own write
    // thread and resolves after that transaction is committed and synced. (A `transaction`
    // callback put every row into the B-trees on this thread: about a sixth of its time in ingest.)
    // The buffers handed to `put` are kept alive by lmdb-js until then.
    await this.root.batch(() => {
      let i = batch.firstIndex;
      for (const e of batch.entries) this.entriesDb.put(i++, e as Buffer);
      for (const t of batch.tiles)
        this.tilesDb.put([t.tileLevel, t.tileIndex], encodeTileRecord(t.width, t.expanded));
      // a key is copied by `put` itself (into lmdb-js's instructions), so an id is passed as it is
      for (const s of batch.strataWrites) this.putStratum(asBuffer(s.id), asBuffer(s.data));
      for (const id of batch.strataDeletes) this.removeStratum(asBuffer(id));
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

  /**
   * Secures the disk space that committing `batch` can take (undefined: a small write such as
   * setMeta), or throws StorageFullError before anything is written.
   */
  private reserveFor(batch: CommitBatch | undefined): void {
    if (this.reserve === undefined) return;
    const shape = (db: { getStats(): object }): DbShape => {
      const s = db.getStats() as {
        treeDepth: number;
        treeBranchPageCount: number;
        treeLeafPageCount: number;
      };
      return { depth: s.treeDepth, branchPages: s.treeBranchPageCount, leafPages: s.treeLeafPageCount };
    };
    const writes: Array<[DbShape, DbWrites]> = [];
    if (batch === undefined) writes.push([shape(this.metaDb), { records: 1, bytes: 4096 }]);
    else {
      // 16 bytes of record header per key and value; ids of parts are one byte longer
      let bytes = 0;
      for (const e of batch.entries) bytes += e.length + 24;
      writes.push([shape(this.entriesDb), { records: batch.entries.length, bytes, appendOnly: true }]);
      bytes = 0;
      for (const t of batch.tiles) bytes += t.expanded.length + 34;
      writes.push([shape(this.tilesDb), { records: batch.tiles.length, bytes }]);
      let records = 0;
      bytes = 0;
      for (const s of batch.strataWrites) {
        const parts =
          s.data.length <= STRATUM_PART_BYTES ? 1 : 1 + Math.ceil(s.data.length / STRATUM_PART_BYTES);
        records += parts;
        bytes += s.data.length + parts * (s.id.length + 19);
      }
      // a removed row may have parts: they are looked up, not counted here, so each counts as a few
      records += 4 * batch.strataDeletes.length;
      writes.push([shape(this.strataDb), { records, bytes }]);
      const cp = batch.head.checkpoint.length;
      writes.push([shape(this.checkpointsDb), { records: 1, bytes: cp + 24, appendOnly: true }]);
      writes.push([shape(this.metaDb), { records: 1, bytes: 2 * cp + 256 }]);
    }
    const { pageSize, used } = pagesInUse(this.root);
    this.reserve.ensure(used, commitPagesBound(pageSize, writes) * pageSize);
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
    this.reserveFor(undefined);
    await this.metaDb.put(`config:${name}`, value);
  }

  async recordNonce(id: string, expires: number, now: number): Promise<void> {
    // Writes issued in one turn of the event loop share one transaction (and one fsync). Expired
    // records go at most once a minute: they sort first, so the sweep reads only what it deletes.
    const written = this.noncesDb.put([expires, id], '');
    if (now - this.noncesSwept >= 60) {
      this.noncesSwept = now;
      for (const key of [...this.noncesDb.getKeys({ end: [now] })]) this.noncesDb.remove(key);
    }
    await written;
  }

  *nonces(now: number): Iterable<{ id: string; expires: number }> {
    for (const [expires, id] of this.noncesDb.getKeys({ start: [now] })) yield { id, expires };
  }

  async close(): Promise<void> {
    try {
      await this.root.close();
    } finally {
      this.reserve?.close();
      this.lock?.release();
    }
  }
}

/** First byte of a stratum row stored in parts (LmdbLogStore.putStratum). */
const STRATUM_PARTS = 0xfe;
/**
 * The longest value stored in one strata record. LMDB puts a record (8 bytes of header, the key,
 * the value) in a 4 KB leaf page when it is at most 2,038 bytes; ids are at most 34 bytes with a
 * part suffix. So 1,984 leaves room, and a count byte allows rows of up to 505 KB (the longest
 * possible row, a band of 256 leaves with 255-byte values, is about 82 KB).
 */
const STRATUM_PART_BYTES = 1984;

/** LMDB's page size and the end of the last page it uses in the store file (see reserve.ts). */
function pagesInUse(root: RootDatabase): { pageSize: number; used: number } {
  const env = root.getStats() as { pageSize: number; lastPageNumber: number };
  return { pageSize: env.pageSize, used: (env.lastPageNumber + 1) * env.pageSize };
}

/** Disk space secured when a store is opened: more than a new store's first commits write. */
const NEW_STORE_BYTES = 1 << 20;

function partKey(id: Buffer, k: number): Buffer {
  const key = Buffer.allocUnsafe(id.length + 1);
  id.copy(key, 0);
  key[id.length] = k;
  return key;
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
