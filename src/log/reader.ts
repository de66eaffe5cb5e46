/**
 * The read side of a log: every answer comes from one snapshot of the store (its head, strata,
 * tiles and entries together), through caches that are correct across snapshots: full tiles
 * (immutable), the top strata of one map root, the upper audit paths of one tree size.
 * The appender uses the same caches for its batches and moves them on when it publishes a head.
 */

import { equalBytes, toBase64 } from '../core/bytes.js';
import { indexPath, indexValueLogIndex } from '../core/entry.js';
import { FormatError, StateError, StorageError } from '../core/errors.js';
import type { LookupAnswer } from '../core/lookup.js';
import {
  consistencyProof,
  inclusionProof,
  inclusionProofAbove,
  inclusionProofBelow,
  newRangeRootCache,
} from '../core/merkle.js';
import {
  type StratumReader,
  type StratumTable,
  type StratumTableOf,
  smtLookupBase64,
  stratumTable,
} from '../core/smt.js';
import { strataAlong, stratumLevel } from '../core/smt-strata.js';
import {
  expandedHashOffset,
  expandedTileSize,
  hashReaderFromTiles,
  TILE_HEIGHT,
  TILE_WIDTH,
  type TileGetter,
} from '../core/tiles.js';
import type { LogHead, LogSnapshot, LogStore, StoredTile } from '../storage/store.js';
import type { CheckpointPublisher } from './publisher.js';

/**
 * Full tiles cached by default (LogOptions.cachedTiles): 16 KiB each, 64 MiB in all; every leaf tile
 * of a million entries, and every upper tile of a huge log.
 */
const CACHED_TILES = 4096;
/** Upper audit-path parts remembered for one tree size (about 0.6 KB each at a million leaves). */
const MAX_PROOF_TOPS = 65_536;

/**
 * Key of a tile in Reader.fullTiles: a number, not a "level/index" string that every lookup would build
 * and hash (a level-0 tile's key is its index). Exact while index < 2^40 and level < 2^12.
 */
function tileKey(level: number, index: number): number {
  return level * 2 ** 40 + index;
}

/** Offsets in a leaf tile of one proof's hashes (inclusionProofB64), and a sink for touching them. */
const proofOffsets = new Int32Array(TILE_HEIGHT);
const proofTouched = { bits: 0 };

/** Lower part of an inclusion proof as base64 (Reader.proofBelowB64: at most one tile's height). */
const proofBelowScratch = new Array<string>(TILE_HEIGHT).fill('');

/** The upper part of an audit path shared by the leaves of one tile (see Reader.proofTops). */
interface ProofTop {
  /** Base64, leaf side first. */
  hashes: string[];
  /** The tile's first leaf and its number of leaves in the tree. */
  start: number;
  n: number;
  /** `hashes` as JSON array items, built when first asked for. */
  text: string | undefined;
}

/**
 * A lookup's walk of the sparse index, kept between runs of one asynchronous read (see
 * lookupJsonBytesAsync) for the map root it was made in: a later run may see another state.
 */
interface WalkMemo {
  walk?: { root: Buffer; mapProof: string; index: number };
}

/** Strata levels a lookup asks a store that fetches ahead for (see Appender's PREFETCH_STRATA_LEVELS). */
const LOOKUP_PREFETCH_LEVELS = 7;

/** Slot of a root or depth-8 stratum id in Reader.topStrata. */
function topSlot(id: Uint8Array): number {
  return stratumLevel(id) === 0 ? 0 : 1 + id[1];
}

export class Reader {
  private closed = false;
  /** The last head published (see advance), answered by `head` once the store is closed. */
  private last: LogHead;
  /** Full tiles never change, so they are cached across snapshots (bounded, oldest dropped first). */
  private readonly fullTiles = new Map<number, StoredTile>();
  /**
   * The top two strata levels (at most 257 rows: slot 0 is the root stratum, slot 1 + b the
   * depth-8 stratum under first byte b) are read by every lookup and every batch. They are
   * cached for one map root only and used only by snapshots of that root, so a reader can
   * never mix strata of two states.
   */
  private readonly topStrata: Array<Buffer | undefined> = new Array(257);
  private topStrataRoot: Buffer | undefined;
  /**
   * Tables (stratumTable) of cached top rows by slot, each with the row it was built from (a slot's
   * row is replaced by commits; a table is used only with its own row), built on a lookup's first
   * use of a row.
   */
  private readonly topTables: Array<{ row: Buffer; table: StratumTable } | undefined> = new Array(257);
  /**
   * The top row a lookup's reader returned last, with its table: the walk asks for the table of the
   * row it was just given, so this answers without a search.
   */
  private lastTopRow: Buffer | undefined;
  private lastTopTable: StratumTable | undefined;
  private readonly tableOf: StratumTableOf = (row) =>
    row === this.lastTopRow ? this.lastTopTable : undefined;
  /** Ragged range roots of committed leaves (immutable), shared by all proofs. */
  private readonly rangeCache = newRangeRootCache();
  /**
   * For the tree size `proofTopsSize`: the upper part of the audit path (inclusionProofAbove,
   * base64, leaf side first) shared by all leaves of one 256-leaf tile, by tile index. Those
   * nodes are complete, so the part equals a fresh computation for as long as the size holds.
   */
  private readonly proofTops = new Map<number, ProofTop>();
  private proofTopsSize = -1;
  /** The start of answers for the last checkpoint and protocol (see answerPrefix). */
  private prefixCache: { checkpoint: string; protocol: string; text: string; bytes: Buffer } | undefined;

  /** Set once by Log.attachPublisher: lookup answers then carry the note it publishes. */
  publisher: CheckpointPublisher | undefined;

  constructor(
    private readonly store: LogStore,
    head: LogHead,
    private readonly cachedTiles = CACHED_TILES,
  ) {
    this.last = head;
  }

  /** The note served with `head`: as published (e.g. with cosignatures), or as signed. */
  private noteOf(head: LogHead): string {
    return this.publisher?.note(head) ?? head.checkpoint;
  }

  /**
   * The published head: what the store's current snapshot holds. Lookups read the same, so
   * `/checkpoint` and lookup answers never go backwards relative to each other, even in the
   * moment between a commit reaching the disk and the sequencer hearing of it.
   */
  head(): LogHead {
    if (this.closed) return this.last;
    return this.store.read((snap) => this.snapshotHead(snap));
  }

  /** Every read goes through here, so none reaches a store that is closing. */
  read<T>(fn: (snap: LogSnapshot) => T): T {
    if (this.closed) throw new StateError('log is closed');
    return this.store.read(fn);
  }

  /**
   * A tile getter over a snapshot, memoising within one operation and caching full tiles. With
   * `leafTiles` false, full tiles of level 0 are not added to the cache: a batch's receipts read
   * each of its own leaf tiles once and no later batch reads them again, so during ingest the
   * cache filled up with tiles that only lookups could use (16 KB each, 62 MB at a million entries).
   */
  tileGetter(snap: LogSnapshot, leafTiles = true): TileGetter {
    const memo = new Map<number, StoredTile | undefined>();
    return (level, index) => {
      const k = tileKey(level, index);
      let t = this.fullTiles.get(k);
      if (t) return t;
      if (memo.has(k)) return memo.get(k);
      t = snap.tile(level, index);
      memo.set(k, t);
      if (t && t.width === TILE_WIDTH && (leafTiles || level > 0)) {
        if (this.fullTiles.size >= this.cachedTiles)
          this.fullTiles.delete(this.fullTiles.keys().next().value!);
        this.fullTiles.set(k, t);
      }
      return t;
    };
  }

  /**
   * Strata of `snap`, whose map root is `mapRoot`, through the top strata cache when it holds that
   * root. A lookup (`adopt`) whose snapshot has another root than the cache re-keys the cache to
   * it: that is how a log that sequences nothing itself (read-only, or idle since it was opened)
   * gets a warm cache, and how a reader that saw a commit before the sequencer did moves on.
   */
  stratumReader(snap: LogSnapshot, mapRoot: Buffer, adopt = false): StratumReader {
    if (this.topStrataRoot === undefined || !equalBytes(this.topStrataRoot, mapRoot)) {
      if (!adopt) return (id) => snap.stratum(id);
      this.topStrata.fill(undefined);
      this.topStrataRoot = Buffer.from(mapRoot);
    }
    // a lookup's walk is done with each row before it reads the next (see smtLookupBase64)
    const below = adopt && snap.peekStratum ? snap.peekStratum : snap.stratum;
    return (id) => {
      if (stratumLevel(id) > 1) return below(id);
      const slot = topSlot(id);
      let row = this.topStrata[slot];
      if (!row) {
        row = snap.stratum(id);
        if (!row) return undefined;
        this.topStrata[slot] = row;
      }
      if (adopt) {
        let t = this.topTables[slot];
        if (t === undefined || t.row !== row) {
          t = { row, table: stratumTable(row) };
          this.topTables[slot] = t;
        }
        this.lastTopRow = row;
        this.lastTopTable = t.table;
      }
      return row;
    };
  }

  /**
   * Moves the caches from the head whose map root is `oldRoot` to `head`, which a commit just made
   * durable with these strata rows written and deleted.
   */
  advance(
    oldRoot: Buffer,
    head: LogHead,
    writes: Iterable<{ id: Buffer; data: Buffer }>,
    deletes: readonly Buffer[],
  ): void {
    this.last = head;
    const newRoot = head.mapRoot;
    if (this.topStrataRoot === undefined || !equalBytes(this.topStrataRoot, oldRoot)) {
      this.topStrata.fill(undefined);
    } else {
      // copied so that a cached row does not keep its whole batch slab alive
      for (const w of writes)
        if (stratumLevel(w.id) <= 1) this.topStrata[topSlot(w.id)] = Buffer.from(w.data);
      for (const id of deletes) if (stratumLevel(id) <= 1) this.topStrata[topSlot(id)] = undefined;
    }
    this.topStrataRoot = newRoot;
  }

  /**
   * inclusionProof(index, size) for every index of a batch. Leaves of one 256-leaf tile share the
   * part of their path above the tile, so it is computed once per tile (the slices are shared
   * between receipts, like the tile views a proof is made of); inside a full tile the rest is one
   * stored hash per row.
   */
  batchProofs(snap: LogSnapshot, indexes: ArrayLike<number>, size: number): Buffer[][] {
    const getTile = this.tileGetter(snap, false);
    const reader = hashReaderFromTiles(getTile);
    // `views`: one view per hash of a full tile, shared by the proofs of its leaves (a node's
    // sibling at row r is in the proofs of 2^r leaves), indexed by the hash's position in the tile
    const tops = new Map<
      number,
      { hashes: Buffer[]; start: number; n: number; tile?: Buffer; views?: Array<Buffer | undefined> }
    >();
    const out = new Array<Buffer[]>(indexes.length);
    for (let i = 0; i < indexes.length; i++) {
      const index = indexes[i];
      const tileIndex = Math.floor(index / TILE_WIDTH);
      let top = tops.get(tileIndex);
      if (top === undefined) {
        const above = inclusionProofAbove(index, size, TILE_WIDTH, reader, this.rangeCache);
        top = { hashes: above.hashes.reverse(), start: above.start, n: above.n };
        if (top.n === TILE_WIDTH) {
          const t = getTile(0, tileIndex);
          if (
            t !== undefined &&
            t.width === TILE_WIDTH &&
            t.expanded.length === expandedTileSize(TILE_WIDTH)
          ) {
            top.tile = Buffer.isBuffer(t.expanded)
              ? t.expanded
              : Buffer.from(t.expanded.buffer, t.expanded.byteOffset, t.expanded.byteLength);
            top.views = new Array<Buffer | undefined>(top.tile.length / 32);
          }
        }
        tops.set(tileIndex, top);
      }
      const ex = top.tile;
      const views = top.views;
      if (ex !== undefined && views !== undefined) {
        const proof = new Array<Buffer>(TILE_HEIGHT + top.hashes.length);
        const local = index - top.start;
        for (let r = 0; r < TILE_HEIGHT; r++) {
          const off = expandedHashOffset(TILE_WIDTH, r, (local >> r) ^ 1);
          let v = views[off >> 5];
          if (v === undefined) {
            v = ex.subarray(off, off + 32);
            views[off >> 5] = v;
          }
          proof[r] = v;
        }
        for (let j = 0; j < top.hashes.length; j++) proof[TILE_HEIGHT + j] = top.hashes[j];
        out[i] = proof;
      } else {
        const below = inclusionProofBelow(index, top.start, top.n, reader, this.rangeCache);
        for (let j = 0; j < top.hashes.length; j++) below.push(top.hashes[j]);
        out[i] = below;
      }
    }
    return out;
  }

  /** A lookup answer for (protocol, key) against the latest checkpoint, with every proof a client needs. */
  lookup(protocol: string, key: Uint8Array): LookupAnswer {
    const path = indexPath(protocol, key);
    return this.read((snap) => {
      const head = this.snapshotHead(snap);
      const found = this.lookupIn(snap, head, path);
      const answer: LookupAnswer = {
        checkpoint: this.noteOf(head),
        protocol,
        key: toBase64(key),
        mapProof: found.mapProof,
      };
      if (found.data !== undefined) {
        answer.entry = {
          index: found.index,
          data: found.data,
          proof: this.inclusionProofB64(snap, found.index, head.size),
        };
      }
      return answer;
    });
  }

  /**
   * The same answer as `lookup`, as its JSON text (byte for byte JSON.stringify(lookup(...))), with the
   * tree size of the checkpoint it carries and whether the key is present. Built as text, since a
   * server sends nothing else.
   */
  lookupJson(protocol: string, key: Uint8Array): { body: string; size: number; present: boolean } {
    const path = indexPath(protocol, key);
    return this.read((snap) => {
      const head = this.snapshotHead(snap);
      const { rest, present } = this.answerRest(snap, head, key, path);
      return { body: this.answerPrefix(head, protocol).text + rest, size: head.size, present };
    });
  }

  /**
   * `lookupJson`'s body as UTF-8 bytes, what a server writes. The checkpoint note's signature lines
   * start with an em dash, so the text form is a two-byte string that every write would have to
   * measure and encode again; here only the part after the key's opening quote, which is ASCII
   * (base64 and digits), is copied after the cached bytes of the part before it. `cached` is asked
   * for an answer it already holds for the tree size of this read's snapshot before one is built;
   * an answer it gives comes back with `present` undefined.
   */
  lookupJsonBytes(
    protocol: string,
    key: Uint8Array,
    cached?: (size: number) => Buffer | undefined,
  ): { body: Buffer; size: number; present: boolean | undefined } {
    return this.read((snap) => this.lookupBytesIn(snap, protocol, key, undefined, cached));
  }

  /**
   * `lookupJsonBytes` through the store's asynchronous reads (LogStore.readAsync), which share round
   * trips between concurrent lookups; the same as lookupJsonBytes for a store without them.
   */
  async lookupJsonBytesAsync(
    protocol: string,
    key: Uint8Array,
    cached?: (size: number) => Buffer | undefined,
  ): Promise<{ body: Buffer; size: number; present: boolean | undefined }> {
    if (this.store.readAsync === undefined) return this.lookupJsonBytes(protocol, key, cached);
    if (this.closed) throw new StateError('log is closed');
    const path = indexPath(protocol, key);
    // a run may stop at a row not loaded yet; the next run keeps its walk if it sees the same root
    const memo: WalkMemo = {};
    return this.store.readAsync((snap) => this.lookupBytesIn(snap, protocol, key, path, cached, memo), {
      strata: strataAlong(path, LOOKUP_PREFETCH_LEVELS),
    });
  }

  /** `head` through the store's asynchronous reads, like lookupJsonBytesAsync. */
  async headAsync(): Promise<LogHead> {
    if (this.store.readAsync === undefined || this.closed) return this.head();
    return this.store.readAsync((snap) => this.snapshotHead(snap));
  }

  private lookupBytesIn(
    snap: LogSnapshot,
    protocol: string,
    key: Uint8Array,
    path: Buffer | undefined,
    cached: ((size: number) => Buffer | undefined) | undefined,
    memo?: WalkMemo,
  ): { body: Buffer; size: number; present: boolean | undefined } {
    const head = this.snapshotHead(snap);
    const hit = cached?.(head.size);
    if (hit !== undefined) return { body: hit, size: head.size, present: undefined };
    // the key's path only once the cache has missed: a hit costs no hashing
    const { rest, present } = this.answerRest(snap, head, key, path ?? indexPath(protocol, key), memo);
    const prefix = this.answerPrefix(head, protocol).bytes;
    const body = Buffer.allocUnsafe(prefix.length + rest.length);
    prefix.copy(body, 0);
    body.write(rest, prefix.length, 'latin1');
    return { body, size: head.size, present };
  }

  /**
   * Answers for several keys of one protocol, all against the same checkpoint (one read
   * snapshot), as the JSON text `{"answers":[...]}` with each answer exactly as `lookupJson` gives it.
   */
  lookupManyJson(
    protocol: string,
    keys: readonly Uint8Array[],
  ): { body: string; size: number; present: number } {
    const paths = keys.map((k) => indexPath(protocol, k));
    return this.read((snap) => {
      const head = this.snapshotHead(snap);
      const prefix = this.answerPrefix(head, protocol).text;
      let body = '{"answers":[';
      let present = 0;
      for (let i = 0; i < keys.length; i++) {
        const a = this.answerRest(snap, head, keys[i], paths[i]);
        if (a.present) present++;
        body += i === 0 ? prefix + a.rest : `,${prefix}${a.rest}`;
      }
      return { body: `${body}]}`, size: head.size, present };
    });
  }

  /**
   * The start of every answer for `protocol` against `head`, up to the key's opening quote, as text
   * and as UTF-8 bytes; remembered for the last checkpoint and protocol asked for.
   */
  private answerPrefix(head: LogHead, protocol: string): { text: string; bytes: Buffer } {
    const p = this.prefixCache;
    const note = this.noteOf(head);
    if (p !== undefined && p.checkpoint === note && p.protocol === protocol) return p;
    const text = `{"checkpoint":${JSON.stringify(note)},"protocol":${JSON.stringify(protocol)},"key":"`;
    this.prefixCache = { checkpoint: note, protocol, text, bytes: Buffer.from(text, 'utf8') };
    return this.prefixCache;
  }

  /** One lookup answer's JSON text after the key's opening quote (see answerPrefix): ASCII only. */
  private answerRest(
    snap: LogSnapshot,
    head: LogHead,
    key: Uint8Array,
    path: Buffer,
    memo?: WalkMemo,
  ): { rest: string; present: boolean } {
    const found = this.lookupIn(snap, head, path, memo);
    let rest = `${toBase64(key)}","mapProof":"${found.mapProof}"`;
    if (found.data !== undefined) {
      rest += `,"entry":{"index":${found.index},"data":"${found.data}","proof":[`;
      rest += `${this.inclusionProofText(snap, found.index, head.size)}]}`;
    }
    return { rest: `${rest}}`, present: found.data !== undefined };
  }

  /**
   * The sparse proof for `path` against `head` in base64, and for a present key the entry's index and
   * its data in base64 (data undefined for an absent key), read from `snap`.
   */
  private lookupIn(
    snap: LogSnapshot,
    head: LogHead,
    path: Buffer,
    memo?: WalkMemo,
  ): { mapProof: string; index: number; data: string | undefined } {
    let walk = memo?.walk;
    if (walk === undefined || !equalBytes(walk.root, head.mapRoot)) {
      if (snap.prefetchStrata) snap.prefetchStrata(strataAlong(path, LOOKUP_PREFETCH_LEVELS));
      const { value, proof } = smtLookupBase64(
        head.mapRoot,
        path,
        this.stratumReader(snap, head.mapRoot, true),
        this.tableOf,
      );
      walk = { root: head.mapRoot, mapProof: proof, index: value ? indexValueLogIndex(value) : -1 };
      if (memo) memo.walk = walk;
    }
    const { mapProof, index } = walk;
    if (index < 0) return { mapProof, index: -1, data: undefined };
    // encoded before anything else is read: `peekEntry` may hand out a buffer the next read reuses
    const data = snap.peekEntry ? snap.peekEntry(index) : snap.entry(index);
    if (!data) throw new StorageError(`index points at missing entry ${index}`);
    return { mapProof, index, data: toBase64(data) };
  }

  /** The part of index's audit path above its 256-leaf tile for `size`, remembered (proofTops). */
  private proofTop(snap: LogSnapshot, index: number, size: number): ProofTop {
    if (this.proofTopsSize !== size || this.proofTops.size >= MAX_PROOF_TOPS) {
      this.proofTops.clear();
      this.proofTopsSize = size;
    }
    const tile = Math.floor(index / TILE_WIDTH);
    let top = this.proofTops.get(tile);
    if (top === undefined) {
      const reader = hashReaderFromTiles(this.tileGetter(snap));
      const above = inclusionProofAbove(index, size, TILE_WIDTH, reader, this.rangeCache);
      const hashes = new Array<string>(above.hashes.length);
      for (let i = 0; i < hashes.length; i++) hashes[i] = toBase64(above.hashes[hashes.length - 1 - i]);
      top = { hashes, start: above.start, n: above.n, text: undefined };
      this.proofTops.set(tile, top);
    }
    return top;
  }

  /**
   * The part of index's audit path inside its tile (below `top`), in base64, written to `out` from
   * its start; returns how many hashes.
   */
  private proofBelowB64(snap: LogSnapshot, index: number, top: ProofTop, out: string[]): number {
    const tile = Math.floor(index / TILE_WIDTH);
    // Inside a full tile the audit path is one stored hash per row, encoded straight from the tile
    // (usually from the cache of full tiles, without a getter for this one lookup).
    if (top.n === TILE_WIDTH) {
      // Once the cache is full, a missed tile is read in place (peekTile) and not cached: copying its
      // 16 KiB and dropping another tile made a lookup that missed cost about 20 us more than one
      // that hit, reading in place about 4 us, and a random key's tile is as likely in the cache
      // either way (docs/performance.md, "Growth").
      const t =
        this.fullTiles.get(tileKey(0, tile)) ??
        (this.fullTiles.size >= this.cachedTiles && snap.peekTile
          ? snap.peekTile(0, tile)
          : this.tileGetter(snap)(0, tile));
      if (t !== undefined && t.width === TILE_WIDTH && t.expanded.length === expandedTileSize(TILE_WIDTH)) {
        const ex = Buffer.isBuffer(t.expanded)
          ? t.expanded
          : Buffer.from(t.expanded.buffer, t.expanded.byteOffset, t.expanded.byteLength);
        const local = index - top.start;
        // The 8 hashes lie in 8 different places of a 16 KB tile, seldom in the CPU's caches (the
        // cached tiles are 64 MB at a million leaves). Touching them all first lets their cache
        // misses overlap instead of each waiting inside its own base64 call.
        let touched = 0;
        for (let r = 0; r < TILE_HEIGHT; r++) {
          const off = expandedHashOffset(TILE_WIDTH, r, (local >> r) ^ 1);
          proofOffsets[r] = off;
          touched |= ex[off] | ex[off + 31];
        }
        proofTouched.bits = touched;
        for (let r = 0; r < TILE_HEIGHT; r++) {
          const off = proofOffsets[r];
          out[r] = ex.toString('base64', off, off + 32);
        }
        return TILE_HEIGHT;
      }
    }
    const reader = hashReaderFromTiles(this.tileGetter(snap));
    const below = inclusionProofBelow(index, top.start, top.n, reader, this.rangeCache);
    for (let i = 0; i < below.length; i++) out[i] = toBase64(below[i]);
    return below.length;
  }

  /** inclusionProof(index, size) in base64. */
  private inclusionProofB64(snap: LogSnapshot, index: number, size: number): string[] {
    const top = this.proofTop(snap, index, size);
    const n = this.proofBelowB64(snap, index, top, proofBelowScratch);
    const out = new Array<string>(n + top.hashes.length);
    for (let i = 0; i < n; i++) out[i] = proofBelowScratch[i];
    for (let i = 0; i < top.hashes.length; i++) out[n + i] = top.hashes[i];
    return out;
  }

  /**
   * inclusionProof(index, size) in base64 as the items of a JSON array (`"h0","h1",...`), the upper
   * part's text remembered with it (one string instead of a dozen joined per answer).
   */
  private inclusionProofText(snap: LogSnapshot, index: number, size: number): string {
    const top = this.proofTop(snap, index, size);
    top.text ??= top.hashes.length === 0 ? '' : `"${top.hashes.join('","')}"`;
    const n = this.proofBelowB64(snap, index, top, proofBelowScratch);
    let text = '';
    for (let i = 0; i < n; i++) text += i === 0 ? `"${proofBelowScratch[i]}"` : `,"${proofBelowScratch[i]}"`;
    if (top.text === '') return text;
    return n === 0 ? top.text : `${text},${top.text}`;
  }

  /** Inclusion proof of entry `index` in the tree of `size` (default: the latest). */
  inclusionProof(index: number, size?: number): Buffer[] {
    const current = this.head().size;
    size ??= current;
    checkRange(index, size, current, 'index');
    return this.read((snap) =>
      inclusionProof(index, size, hashReaderFromTiles(this.tileGetter(snap)), this.rangeCache),
    );
  }

  consistencyProof(oldSize: number, newSize?: number): Buffer[] {
    const current = this.head().size;
    newSize ??= current;
    if (!Number.isSafeInteger(oldSize) || oldSize < 1 || oldSize > newSize || newSize > current) {
      throw new FormatError(`need 1 <= old size <= new size <= ${current}`);
    }
    return this.read((snap) =>
      consistencyProof(oldSize, newSize, hashReaderFromTiles(this.tileGetter(snap)), this.rangeCache),
    );
  }

  entry(index: number): Buffer {
    const current = this.head().size;
    checkRange(index, current, current, 'index');
    const e = this.read((snap) => snap.entry(index));
    if (!e) throw new StorageError(`entry ${index} is missing from the store`);
    return e;
  }

  /** Reads the head from the snapshot itself so proofs and checkpoint always match, even across processes. */
  private snapshotHead(snap: LogSnapshot): LogHead {
    const h = snap.head();
    if (!h) throw new StorageError('log store has no head');
    return h;
  }

  /** Stops every read: a store that is closing is not read again. */
  close(): void {
    this.closed = true;
  }
}

function checkRange(index: number, size: number, current: number, what: string): void {
  if (!Number.isSafeInteger(size) || size < 1 || size > current) {
    throw new FormatError(`tree size must be between 1 and ${current}`);
  }
  if (!Number.isSafeInteger(index) || index < 0 || index >= size) {
    throw new FormatError(`${what} must be between 0 and ${size - 1}`);
  }
}
