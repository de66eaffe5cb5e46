/**
 * The verifying client of one remote Trustix log (docs/client.md). It believes nothing it cannot
 * check: checkpoints must carry the configured key's signature, lookups are verified end to end
 * (signature, sparse index proof, entry hash, inclusion proof), and every checkpoint must be
 * consistent with the last one this client trusted for the log (kept in a TrustStore, on disk for
 * the CLI). A failed check throws a VerificationError subclass naming the check; a log that
 * cannot be reached throws UnreachableError or RemoteError.
 */
import { isUtf8 } from 'node:buffer';
import { createHash, randomBytes } from 'node:crypto';
import { decodeBase64Strict, equalBytes, toBase64, toHex } from '../core/bytes.js';
import { type Checkpoint, openCheckpoint } from '../core/checkpoint.js';
import { type Entry, encodeEntry } from '../core/entry.js';
import { FormatError, StorageError, TrustixError, VerificationError } from '../core/errors.js';
import { type LookupAnswer, MAX_LOOKUP_KEYS, parseLookupAnswer, verifyLookup } from '../core/lookup.js';
import { leafHash, rootFromLeafHashes, verifyConsistency, verifyInclusion } from '../core/merkle.js';
import {
  consistencyProof as consistencyMisbehaviour,
  type MisbehaviourProof,
  sameSizeProof,
  verifyProof,
} from '../core/misbehaviour.js';
import { type NoteVerifier, signerFromSkey, verifierFromVkey } from '../core/note.js';
import { policyCoversLog, requireQuorum, type WitnessPolicy } from '../core/policy.js';
import { type ParsedReceipt, parseReceipts } from '../core/receipts.js';
import { decodeEntryBundle, entriesPath, TILE_HEIGHT, TILE_WIDTH, tilePath } from '../core/tiles.js';
import { writeProofFile } from '../misbehaviour/files.js';
import {
  BadResponseError,
  ForkError,
  InvalidCheckpointError,
  InvalidProofError,
  RemoteError,
  RollbackError,
  UnprovenGrowthError,
  UnreachableError,
  WitnessQuorumError,
} from './errors.js';
import { encodePathSegment, type FetchFn, httpRequest, isDotSegment, parseJsonBody } from './http.js';
import { type LogIdentity, MemoryTrustStore, type TrustStore } from './trust-store.js';

export interface LogClientOptions {
  /** The log's URL prefix, e.g. `http://127.0.0.1:8080/logs/default/`. */
  url: string | URL;
  /** The log's verifier key; its name is the log origin. */
  vkey: string;
  /** Where the last trusted checkpoint is remembered. Default: in memory, for this process only. */
  trustStore?: TrustStore;
  /** Deadline per request (headers and body). Default 10 s. */
  timeoutMs?: number;
  /** Deadline per submit request, which waits for sequencing. Default 60 s. */
  submitTimeoutMs?: number;
  /** Parallel entry bundle downloads in `entries`. Default 4. */
  concurrency?: number;
  fetch?: FetchFn;
  headers?: Record<string, string>;
  /**
   * Most keys per `POST lookup` request. Concurrent lookups of one protocol are sent together
   * while earlier lookup requests are in flight (a lone lookup is a plain GET). Default 64; 1
   * sends every lookup as its own GET.
   */
  maxLookupBatch?: number;
  /**
   * A C2SP tlog-policy (core/policy.ts): every checkpoint must carry cosignatures that meet its
   * quorum, else WitnessQuorumError ('witness.quorum') and the checkpoint is not trusted.
   */
  witnessPolicy?: WitnessPolicy;
  /**
   * Where to write a misbehaviour proof (core/misbehaviour.ts) when the log is caught forking
   * (ForkError); its path is then in the error's message and `proofFile`. Default: not written.
   */
  proofDir?: string;
}

/** A lookup waiting to be sent in a `POST lookup` request. */
interface QueuedLookup {
  key: Buffer;
  resolve(v: VerifiedLookup): void;
  reject(err: unknown): void;
}

/** A checkpoint whose signature verified, with the note it came in. */
export interface TrustedCheckpoint {
  note: string;
  checkpoint: Checkpoint;
}

interface LookupCommon {
  protocol: string;
  key: Buffer;
  checkpoint: Checkpoint;
  /** The signed checkpoint note the answer was verified against. */
  note: string;
  /** The raw answer, e.g. to save as a bundle. */
  answer: LookupAnswer;
}

export type VerifiedLookup =
  | (LookupCommon & { status: 'present'; index: number; entry: Entry; data: Buffer })
  | (LookupCommon & { status: 'absent' });

/** Bearer token, or a writer's signing key (note `PRIVATE+KEY+...` format) for signed requests. */
export type SubmitAuth = { token: string } | { skey: string; writer?: string };

export interface VerifiedReceipt {
  index: number;
  duplicate: boolean;
  checkpoint: string;
  proof: Buffer[];
  /**
   * True when the inclusion proof verified for this very entry. Always true for new entries (a
   * failure throws); a duplicate may point at an earlier entry with the same value but other
   * metadata, whose leaf differs, and then this is false.
   */
  verified: boolean;
}

const MAX_NOTE_BYTES = 64 * 1024;
const MAX_JSON_BYTES = 4 * 1024 * 1024;
/**
 * Largest lookup answer read. A valid one is under 240 KB: a checkpoint (at most MAX_NOTE_BYTES,
 * JSON-escaped), an entry of at most 65,535 bytes, a key of at most 1,024 and their proofs, all
 * base64. Anything longer is padding, refused before it is parsed.
 */
const MAX_ANSWER_BYTES = 512 * 1024;
const MAX_BUNDLE_BYTES = TILE_WIDTH * (2 + 65535);
const MAX_SUBMIT_ANSWER_BYTES = 128 * 1024 * 1024;
/** The API's per-request limits: 10,000 entries and a 16 MiB body; stay well inside the latter. */
const SUBMIT_MAX_ENTRIES = 10_000;
const SUBMIT_MAX_BODY = 8 * 1024 * 1024;
const MAX_PROOF_HASHES = 64;
/** Lookup requests in flight per client; later lookups wait and go out together. */
const LOOKUP_REQUESTS_IN_FLIGHT = 2;

export class LogClient {
  readonly url: URL;
  readonly verifier: NoteVerifier;
  readonly origin: string;
  readonly vkey: string;
  private readonly trust: TrustStore;
  private readonly timeoutMs: number;
  private readonly submitTimeoutMs: number;
  private readonly concurrency: number;
  private readonly fetchFn: FetchFn | undefined;
  private readonly headers: Record<string, string>;
  /** Trust updates of one client run one at a time; other processes are handled by the store's compare-and-set. */
  private trustChain: Promise<unknown> = Promise.resolve();
  private readonly openedNotes = new Map<string, Checkpoint>();
  private readonly maxLookupBatch: number;
  /** Per protocol, lookups waiting for a request. */
  private readonly lookupQueue = new Map<string, QueuedLookup[]>();
  private lookupsInFlight = 0;
  private lookupFlushScheduled = false;
  /** Set when the server has no `POST lookup` (an older server): every lookup is a GET then. */
  private lookupBatchUnsupported = false;
  private readonly witnessPolicy: WitnessPolicy | undefined;
  /** Notes whose cosignatures met the witness policy (bounded like openedNotes). */
  private readonly witnessedNotes = new Set<string>();
  private readonly proofDir: string | undefined;

  constructor(opts: LogClientOptions) {
    const url = new URL(opts.url);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new FormatError(`log URL must be http or https, got ${url.protocol}`);
    }
    if (!url.pathname.endsWith('/')) url.pathname += '/';
    url.search = '';
    url.hash = '';
    this.url = url;
    this.verifier = verifierFromVkey(opts.vkey);
    this.origin = this.verifier.name;
    this.vkey = this.verifier.vkey;
    this.trust = opts.trustStore ?? new MemoryTrustStore();
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.submitTimeoutMs = opts.submitTimeoutMs ?? 60_000;
    this.concurrency = Math.max(1, opts.concurrency ?? 4);
    this.fetchFn = opts.fetch;
    this.headers = opts.headers ?? {};
    const batch = opts.maxLookupBatch ?? 64;
    if (!Number.isSafeInteger(batch) || batch < 1 || batch > MAX_LOOKUP_KEYS) {
      throw new FormatError(`maxLookupBatch must be 1..${MAX_LOOKUP_KEYS}`);
    }
    this.maxLookupBatch = batch;
    if (opts.witnessPolicy && !policyCoversLog(opts.witnessPolicy, this.verifier)) {
      throw new FormatError(
        `the witness policy lists logs, and ${this.vkey} is not one of them (same name and key)`,
      );
    }
    this.witnessPolicy = opts.witnessPolicy;
    this.proofDir = opts.proofDir;
  }

  get identity(): LogIdentity {
    return { origin: this.origin, vkey: this.vkey };
  }

  /** The checkpoint this client trusts for the log now (from the trust store), or undefined. */
  async trusted(): Promise<TrustedCheckpoint | undefined> {
    const note = await this.trust.get(this.identity);
    if (note === undefined) return undefined;
    try {
      return { note, checkpoint: this.open(note) };
    } catch (err) {
      throw new StorageError(
        `the remembered checkpoint of ${this.origin} does not verify with this key (${(err as Error).message}); remove it from the trust store to start afresh`,
        { cause: err },
      );
    }
  }

  /**
   * Fetches the log's latest checkpoint, verifies its signature and its consistency with the
   * trusted one, and trusts it. RollbackError if it is older than what was trusted before the call.
   */
  async checkpoint(): Promise<TrustedCheckpoint> {
    const before = await this.trusted();
    const body = await this.get('checkpoint', MAX_NOTE_BYTES);
    const note = body.toString('utf8');
    const t = { note, checkpoint: this.open(note) };
    await this.accept(t, before);
    return t;
  }

  /**
   * Looks (protocol, key) up and verifies the answer end to end, then checks its checkpoint
   * against the trusted one as `checkpoint()` does. Any failed check throws: an answer that cannot
   * be verified is never taken for "absent".
   */
  async lookup(protocol: string, key: string | Uint8Array): Promise<VerifiedLookup> {
    const keyBytes = typeof key === 'string' ? Buffer.from(key, 'utf8') : Buffer.from(key);
    // the batch API takes keys as UTF-8 text, like the submit API
    if (this.maxLookupBatch > 1 && !this.lookupBatchUnsupported && isUtf8(keyBytes)) {
      return new Promise((resolve, reject) => {
        let q = this.lookupQueue.get(protocol);
        if (q === undefined) {
          q = [];
          this.lookupQueue.set(protocol, q);
        }
        q.push({ key: keyBytes, resolve, reject });
        this.scheduleLookups();
      });
    }
    return this.lookupOne(protocol, keyBytes);
  }

  /** One lookup as its own GET request. */
  private async lookupOne(protocol: string, keyBytes: Buffer): Promise<VerifiedLookup> {
    const before = await this.trusted();
    const path = `lookup/${encodePathSegment(Buffer.from(protocol, 'utf8'))}/${encodePathSegment(keyBytes)}`;
    const json = parseJsonBody(await this.get(path, MAX_ANSWER_BYTES), () => this.where(path));
    return this.verifyAnswer(json, protocol, keyBytes, before);
  }

  /**
   * Sends queued lookups once the current tick has queued what it will, as long as fewer than
   * LOOKUP_REQUESTS_IN_FLIGHT lookup requests are out: under load, lookups wait for a request
   * to finish and then share the next one.
   */
  private scheduleLookups(): void {
    if (this.lookupFlushScheduled || this.lookupsInFlight >= LOOKUP_REQUESTS_IN_FLIGHT) return;
    this.lookupFlushScheduled = true;
    setImmediate(() => {
      this.lookupFlushScheduled = false;
      for (const [protocol, q] of this.lookupQueue) {
        while (q.length > 0 && this.lookupsInFlight < LOOKUP_REQUESTS_IN_FLIGHT) {
          const items = q.splice(0, this.maxLookupBatch);
          this.lookupsInFlight++;
          void this.sendLookups(protocol, items).finally(() => {
            this.lookupsInFlight--;
            this.scheduleLookups();
          });
        }
        if (q.length === 0) this.lookupQueue.delete(protocol);
      }
    });
  }

  /** Sends `items` in one request and settles each with its own verified answer or error. */
  private async sendLookups(protocol: string, items: QueuedLookup[]): Promise<void> {
    const settleEach = (p: (it: QueuedLookup) => Promise<VerifiedLookup>) =>
      Promise.all(items.map((it) => p(it).then(it.resolve, it.reject)));
    // a lone lookup is a GET, unless its key is "." or "..", which no URL parser leaves in a path
    if ((items.length === 1 && !isDotSegment(items[0].key)) || this.lookupBatchUnsupported) {
      await settleEach((it) => this.lookupOne(protocol, it.key));
      return;
    }
    let answers: unknown[];
    let before: TrustedCheckpoint | undefined;
    const url = new URL('lookup', this.url);
    const where = `POST ${url.href}`;
    try {
      before = await this.trusted();
      const body = Buffer.from(
        JSON.stringify({ protocol, keys: items.map((it) => it.key.toString('utf8')) }),
        'utf8',
      );
      const raw = await httpRequest(
        url,
        {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body,
          maxBytes: items.length * MAX_ANSWER_BYTES + 64,
        },
        this.httpOptions(),
      );
      const j = parseJsonBody(raw, where) as { answers?: unknown };
      if (!Array.isArray(j?.answers) || j.answers.length !== items.length) {
        throw new BadResponseError('response.malformed', `${where}: expected ${items.length} answers`);
      }
      answers = j.answers;
    } catch (err) {
      if (err instanceof RemoteError && (err.status === 404 || err.status === 405 || err.status === 501)) {
        // a server without the batch API: ask again key by key (a missing log gives its own 404)
        this.lookupBatchUnsupported = true;
        await settleEach((it) => this.lookupOne(protocol, it.key));
        return;
      }
      for (const it of items) it.reject(err);
      return;
    }
    // one at a time, so a changed checkpoint is reconciled once, not once per answer
    for (let i = 0; i < items.length; i++) {
      try {
        items[i].resolve(await this.verifyAnswer(answers[i], protocol, items[i].key, before));
      } catch (err) {
        items[i].reject(err);
      }
    }
  }

  /** Verifies one lookup answer end to end and reconciles its checkpoint with the trusted one. */
  private async verifyAnswer(
    json: unknown,
    protocol: string,
    keyBytes: Buffer,
    before: TrustedCheckpoint | undefined,
  ): Promise<VerifiedLookup> {
    const verdict = verifyLookup(json, this.verifier, { protocol, key: keyBytes });
    if (verdict.status === 'invalid') throw classifyCheck(verdict.check, verdict.reason);
    const answer = parseLookupAnswer(json);
    // An answer under exactly the checkpoint trusted now is consistent with it by identity (this is
    // reconcile's same-size case without waiting for other trust updates of this client)
    const t = { note: answer.checkpoint, checkpoint: verdict.checkpoint };
    this.requireWitnesses(t);
    if (before === undefined || t.note !== before.note || (await this.trust.get(this.identity)) !== t.note) {
      await this.accept(t, before);
    }
    const common = {
      protocol,
      key: keyBytes,
      checkpoint: verdict.checkpoint,
      note: answer.checkpoint,
      answer,
    };
    if (verdict.status === 'absent') return { ...common, status: 'absent' };
    return {
      ...common,
      status: 'present',
      index: verdict.index,
      entry: verdict.entry,
      data: decodeBase64Strict(answer.entry!.data)!,
    };
  }

  /** The log's inclusion proof for entry `index` in the tree of `size` (default: its latest). Unverified. */
  async inclusionProof(
    index: number,
    size?: number,
  ): Promise<{ index: number; size: number; proof: Buffer[] }> {
    checkCount(index, 'index');
    if (size !== undefined) checkCount(size, 'size');
    const path = `proof/inclusion?index=${index}${size !== undefined ? `&size=${size}` : ''}`;
    const j = this.proofJson(await this.getJson(path), path) as {
      index: unknown;
      size: unknown;
      proof: Buffer[];
    };
    if (j.index !== index || (size !== undefined && j.size !== size) || !isCount(j.size)) {
      throw new BadResponseError(
        'response.malformed',
        `${this.where(path)}: answer is for another index or size`,
      );
    }
    return { index, size: j.size, proof: j.proof };
  }

  /** The log's consistency proof from size `oldSize` to `newSize`. Unverified. */
  async consistencyProof(oldSize: number, newSize: number): Promise<Buffer[]> {
    checkCount(oldSize, 'old size');
    checkCount(newSize, 'new size');
    const path = `proof/consistency?old=${oldSize}&new=${newSize}`;
    const j = this.proofJson(await this.getJson(path), path) as {
      old: unknown;
      new: unknown;
      proof: Buffer[];
    };
    if (j.old !== oldSize || j.new !== newSize) {
      throw new BadResponseError('response.malformed', `${this.where(path)}: answer is for other sizes`);
    }
    return j.proof;
  }

  /** A C2SP hash tile: `width` hashes of tree level 8 * `level`. Unverified. */
  async tile(level: number, index: number, width: number): Promise<Buffer> {
    const path = tilePath(level, index, width);
    const body = await this.get(path, width * 32);
    if (body.length !== width * 32) {
      throw new BadResponseError(
        'response.malformed',
        `${this.where(path)}: ${body.length} bytes, expected ${width * 32}`,
      );
    }
    return body;
  }

  /** The `width` entries of entry bundle `index`. Unverified: audit or an inclusion proof checks them. */
  async entryBundle(index: number, width: number): Promise<Buffer[]> {
    const path = entriesPath(index, width);
    const body = await this.get(path, MAX_BUNDLE_BYTES);
    let entries: Buffer[];
    try {
      entries = decodeEntryBundle(body);
    } catch (err) {
      throw new BadResponseError('response.malformed', `${this.where(path)}: ${(err as Error).message}`);
    }
    if (entries.length !== width) {
      throw new BadResponseError(
        'response.malformed',
        `${this.where(path)}: ${entries.length} entries, expected ${width}`,
      );
    }
    return entries;
  }

  /**
   * Entries [start, end) in order, in chunks of at most 256, fetched as entry bundles of the tree
   * of `treeSize` (default `end`; bundles that are partial at that size are fetched partial), a few
   * at a time. Unverified: feed them to an audit (log/audit.ts) that recomputes the roots.
   */
  async *entries(start: number, end: number, opts: { treeSize?: number } = {}): AsyncGenerator<Buffer[]> {
    const treeSize = opts.treeSize ?? end;
    checkCount(start, 'start');
    checkCount(end, 'end');
    checkCount(treeSize, 'tree size');
    if (start > end || end > treeSize) throw new FormatError(`need start <= end <= tree size`);
    if (start === end) return;
    const first = Math.floor(start / TILE_WIDTH);
    const last = Math.floor((end - 1) / TILE_WIDTH);
    const inflight: Promise<Buffer[]>[] = [];
    let next = first;
    const launch = () => {
      const n = next++;
      const p = this.entryBundle(n, Math.min(TILE_WIDTH, treeSize - n * TILE_WIDTH));
      // a consumer that stops early must not leave unhandled rejections behind
      p.catch(() => {});
      inflight.push(p);
    };
    while (inflight.length < this.concurrency && next <= last) launch();
    for (let n = first; n <= last; n++) {
      const bundle = await inflight.shift()!;
      if (next <= last) launch();
      const base = n * TILE_WIDTH;
      yield bundle.slice(Math.max(start, base) - base, Math.min(end, base + TILE_WIDTH) - base);
    }
  }

  /**
   * Entry `index` with its inclusion proof in the latest (trusted) checkpoint, verified.
   * FormatError if the log has no such entry.
   */
  async proveInclusion(
    index: number,
  ): Promise<{ trusted: TrustedCheckpoint; index: number; data: Buffer; proof: Buffer[] }> {
    checkCount(index, 'index');
    const trusted = await this.checkpoint();
    const { size, rootHash } = trusted.checkpoint;
    if (index >= size) throw new FormatError(`entry ${index} does not exist: the log has ${size} entries`);
    const n = Math.floor(index / TILE_WIDTH);
    const [bundle, incl] = await Promise.all([
      this.entryBundle(n, Math.min(TILE_WIDTH, size - n * TILE_WIDTH)),
      this.inclusionProof(index, size),
    ]);
    const data = Buffer.from(bundle[index - n * TILE_WIDTH]);
    try {
      verifyInclusion(leafHash(data), index, size, incl.proof, rootHash);
    } catch (err) {
      throw asProofError(err);
    }
    return { trusted, index, data, proof: incl.proof };
  }

  /**
   * Checks a signed checkpoint of this log that someone else holds (a witness, a mirror, another
   * user) against the trusted one, without trusting it (with nothing trusted yet, the log's
   * current checkpoint is fetched and trusted first): the log's signature, then one root per size
   * and, between two sizes, the log's own consistency proof.
   * ForkError (with the misbehaviour proof, written to `proofDir`) when both cannot be true;
   * UnprovenGrowthError when the log does not give the proof. Returns the two sizes compared.
   */
  async crossCheck(note: string): Promise<{ trusted: TrustedCheckpoint; theirs: TrustedCheckpoint }> {
    const theirs = { note, checkpoint: this.open(note) };
    const trusted = (await this.trusted()) ?? (await this.checkpoint());
    const a = trusted.checkpoint.size;
    const b = theirs.checkpoint.size;
    const [older, newer] = a <= b ? [trusted, theirs] : [theirs, trusted];
    const lo = older.checkpoint.size;
    const hi = newer.checkpoint.size;
    const proof = lo === 0 || lo === hi ? [] : await this.growthProof(lo, hi, a);
    await this.verifyConsistent(older, newer, proof, a);
    return { trusted, theirs };
  }

  /**
   * A verified consistency proof from `oldNote` (a signed checkpoint of this log, e.g. a saved or
   * remembered one) to the latest checkpoint.
   */
  async proveConsistency(
    oldNote: string,
  ): Promise<{ old: TrustedCheckpoint; new: TrustedCheckpoint; proof: Buffer[] }> {
    const old = { note: oldNote, checkpoint: this.open(oldNote) };
    if (old.checkpoint.size === 0)
      throw new FormatError('a consistency proof from the empty tree proves nothing');
    const latest = await this.checkpoint();
    if (latest.checkpoint.size < old.checkpoint.size) {
      throw new RollbackError(old.checkpoint.size, latest.checkpoint.size);
    }
    const proof =
      latest.checkpoint.size === old.checkpoint.size
        ? []
        : await this.growthProof(old.checkpoint.size, latest.checkpoint.size, old.checkpoint.size);
    await this.verifyConsistent(old, latest, proof, old.checkpoint.size);
    return { old, new: latest, proof };
  }

  /**
   * Submits entries (split into requests within the API's limits) and verifies each receipt: the
   * checkpoint's signature and consistency with the trusted one, and the inclusion proof of every
   * new entry. A 503 is retried after its Retry-After, up to `maxRetries` times per request.
   */
  async submit(
    entries: readonly Entry[],
    auth: SubmitAuth,
    opts: {
      onProgress?: (done: number, total: number) => void;
      maxRetries?: number;
      /** Most entries per request (the API allows 10,000; a server may be configured lower). */
      batchSize?: number;
    } = {},
  ): Promise<VerifiedReceipt[]> {
    const batchSize = opts.batchSize ?? SUBMIT_MAX_ENTRIES;
    if (!Number.isSafeInteger(batchSize) || batchSize < 1 || batchSize > SUBMIT_MAX_ENTRIES) {
      throw new FormatError(`batch size must be 1..${SUBMIT_MAX_ENTRIES}`);
    }
    const encoded = entries.map((e) => encodeEntry(e));
    const items = entries.map((e, i) => {
      const key = e.key.toString('utf8');
      if (!Buffer.from(key, 'utf8').equals(e.key)) {
        throw new FormatError(
          `entry ${i}: the submit API takes keys as UTF-8 strings; this key is not UTF-8`,
        );
      }
      return JSON.stringify({
        protocol: e.protocol,
        key,
        value: toHex(e.value),
        ...(e.metadata.length > 0 ? { metadata: toBase64(e.metadata) } : {}),
      });
    });
    const out: VerifiedReceipt[] = [];
    let start = 0;
    while (start < items.length) {
      let end = start;
      let bytes = 20;
      while (
        end < items.length &&
        end - start < batchSize &&
        (end === start || bytes + items[end].length + 1 <= SUBMIT_MAX_BODY)
      ) {
        bytes += items[end].length + 1;
        end++;
      }
      const receipts = await this.submitChunk(items, encoded, start, end, auth, opts.maxRetries ?? 5);
      for (const r of receipts) out.push(r);
      start = end;
      opts.onProgress?.(start, items.length);
    }
    return out;
  }

  private async submitChunk(
    items: string[],
    encoded: Buffer[],
    start: number,
    end: number,
    auth: SubmitAuth,
    maxRetries: number,
  ): Promise<VerifiedReceipt[]> {
    const body = Buffer.from(`{"entries":[${items.slice(start, end).join(',')}]}`, 'utf8');
    const url = new URL('submit', this.url);
    const where = `POST ${url.href}`;
    const before = await this.trusted();
    let answer: Buffer;
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      if ('token' in auth) headers.authorization = `Bearer ${auth.token}`;
      else headers['trustix-signature'] = signSubmit('POST', url.pathname, body, auth);
      try {
        answer = await httpRequest(
          url,
          {
            method: 'POST',
            headers,
            body,
            maxBytes: MAX_SUBMIT_ANSWER_BYTES,
            timeoutMs: this.submitTimeoutMs,
          },
          this.httpOptions(),
        );
        break;
      } catch (err) {
        if (!(err instanceof UnreachableError) || err.check !== 'http.unavailable' || attempt >= maxRetries)
          throw err;
        const wait = Math.min(30, Math.max(0.1, err.retryAfterSeconds ?? 1)) * 1000;
        await new Promise((r) => setTimeout(r, wait));
      }
    }
    let list: ParsedReceipt[];
    try {
      list = parseReceipts(parseJsonBody(answer, where), end - start);
    } catch (err) {
      if (!(err instanceof FormatError)) throw err;
      throw new BadResponseError('response.malformed', `${where}: ${err.message}`);
    }
    const checkpoints = new Map<string, TrustedCheckpoint>();
    const out: VerifiedReceipt[] = [];
    for (let i = 0; i < list.length; i++) {
      const r = list[i];
      let t = checkpoints.get(r.checkpoint);
      if (!t) {
        t = { note: r.checkpoint, checkpoint: this.open(r.checkpoint) };
        await this.accept(t, before);
        checkpoints.set(r.checkpoint, t);
      }
      let verified = true;
      try {
        verifyInclusion(
          leafHash(encoded[start + i]),
          r.index,
          t.checkpoint.size,
          r.proof,
          t.checkpoint.rootHash,
        );
      } catch (err) {
        if (!r.duplicate) throw asProofError(err);
        verified = false;
      }
      out.push({
        index: r.index,
        duplicate: r.duplicate,
        checkpoint: r.checkpoint,
        proof: r.proof,
        verified,
      });
    }
    return out;
  }

  // ---------------------------------------------------------------------------------------------
  // Trust.

  /** Verifies a checkpoint note's signature and origin (InvalidCheckpointError otherwise). */
  open(note: string): Checkpoint {
    const hit = this.openedNotes.get(note);
    if (hit) return hit;
    let cp: Checkpoint;
    try {
      cp = openCheckpoint(note, this.verifier).checkpoint;
    } catch (err) {
      if (err instanceof VerificationError)
        throw new InvalidCheckpointError(err.check, err.message, { cause: err });
      throw err;
    }
    if (this.openedNotes.size >= 32) this.openedNotes.delete(this.openedNotes.keys().next().value!);
    this.openedNotes.set(note, cp);
    return cp;
  }

  /**
   * Makes `t` consistent with the trusted checkpoint and trusts it if it is newer. `before` is
   * what was trusted when the request that produced `t` was sent: an answer older than that is a
   * rollback. An answer older only than something trusted since (a concurrent request or process)
   * is a race, not an attack, and only needs to be consistent with it.
   */
  private accept(t: TrustedCheckpoint, before: TrustedCheckpoint | undefined): Promise<void> {
    try {
      this.requireWitnesses(t);
    } catch (err) {
      return Promise.reject(err);
    }
    const run = this.trustChain.then(() => this.reconcile(t, before));
    this.trustChain = run.catch(() => {});
    return run;
  }

  /** WitnessQuorumError unless `t`'s cosignatures meet the witness policy (if one is set). */
  private requireWitnesses(t: TrustedCheckpoint): void {
    if (!this.witnessPolicy || this.witnessedNotes.has(t.note)) return;
    try {
      requireQuorum(
        this.witnessPolicy,
        t.note,
        `the checkpoint of ${this.origin} at size ${t.checkpoint.size}`,
      );
    } catch (err) {
      if (err instanceof VerificationError)
        throw new WitnessQuorumError(err.check, err.message, { cause: err });
      throw err;
    }
    if (this.witnessedNotes.size >= 32)
      this.witnessedNotes.delete(this.witnessedNotes.values().next().value!);
    this.witnessedNotes.add(t.note);
  }

  private async reconcile(t: TrustedCheckpoint, before: TrustedCheckpoint | undefined): Promise<void> {
    if (before && t.checkpoint.size < before.checkpoint.size) {
      throw new RollbackError(before.checkpoint.size, t.checkpoint.size);
    }
    for (let attempt = 0; attempt < 10; attempt++) {
      const current = await this.trusted();
      if (!current) {
        const r = await this.trust.compareAndSet(this.identity, undefined, t.note, this.recordInfo(t));
        if (r.ok) return;
        continue;
      }
      const c = current.checkpoint;
      const n = t.checkpoint;
      if (n.size === c.size) {
        await this.verifyConsistent(current, t, [], c.size);
        return;
      }
      if (n.size > c.size) {
        const proof = c.size === 0 ? [] : await this.growthProof(c.size, n.size, c.size);
        await this.verifyConsistent(current, t, proof, c.size);
        const r = await this.trust.compareAndSet(this.identity, current.note, t.note, this.recordInfo(t));
        if (r.ok) return;
        continue;
      }
      const proof = n.size === 0 ? [] : await this.growthProof(n.size, c.size, c.size);
      await this.verifyConsistent(t, current, proof, c.size);
      return;
    }
    throw new StorageError('the trust store keeps changing; too many concurrent updates');
  }

  /**
   * The log's consistency proof between two of its signed sizes, one of them `trustedSize`. An
   * error status in answer is UnprovenGrowthError: having signed both trees, the log owes the proof.
   */
  private async growthProof(oldSize: number, newSize: number, trustedSize: number): Promise<Buffer[]> {
    try {
      return await this.consistencyProof(oldSize, newSize);
    } catch (err) {
      if (
        err instanceof RemoteError ||
        (err instanceof UnreachableError && err.check === 'http.unavailable')
      ) {
        throw new UnprovenGrowthError(
          trustedSize,
          trustedSize === oldSize ? newSize : oldSize,
          `log signed trees of sizes ${oldSize} and ${newSize} but does not prove one extends the other (${err.message})`,
          { cause: err },
        );
      }
      throw err;
    }
  }

  /**
   * Throws ForkError or InvalidProofError unless `older` is a prefix of `newer` by `proof`. A
   * ForkError carries the misbehaviour proof of the two checkpoints, written to `proofDir` if set.
   */
  private async verifyConsistent(
    older: TrustedCheckpoint,
    newer: TrustedCheckpoint,
    proof: Buffer[],
    trustedSize: number,
  ): Promise<void> {
    try {
      this.checkConsistent(older, newer, proof, trustedSize);
    } catch (err) {
      if (err instanceof ForkError) throw await this.withProof(err, older, newer, proof);
      throw err;
    }
  }

  /**
   * Adds the misbehaviour proof of a fork to `err` (core/misbehaviour.ts) and writes it to
   * `proofDir`. From a power-of-two size the log's proof leaves out the older root, so the newer
   * tree's root at that size is fetched from its tiles to complete it (best effort: the fork is
   * reported either way).
   */
  private async withProof(
    err: ForkError,
    older: TrustedCheckpoint,
    newer: TrustedCheckpoint,
    proof: Buffer[],
  ): Promise<ForkError> {
    const by = { observer: `client of ${this.url.href}` };
    const a = older.checkpoint.size;
    const b = newer.checkpoint.size;
    let p: MisbehaviourProof;
    if (a === b) p = sameSizeProof(this.vkey, older.note, newer.note, by);
    else {
      p = consistencyMisbehaviour(this.vkey, older.note, newer.note, proof, by);
      if (!verifyProof(p, this.vkey).proven && (a & (a - 1)) === 0 && a > 0) {
        try {
          const seed = await this.prefixRoot(a, b);
          p = consistencyMisbehaviour(this.vkey, older.note, newer.note, [seed, ...proof], by);
        } catch {
          // the fork stands without it
        }
      }
    }
    err.proof = p;
    if (this.proofDir !== undefined) {
      try {
        err.proofFile = writeProofFile(this.proofDir, p);
        err.message += `; proof written to ${err.proofFile}`;
      } catch (e) {
        err.message += `; cannot write its proof: ${(e as Error).message}`;
      }
    }
    return err;
  }

  /** The root of the first `size` (a power of two) leaves of the log's tree of `treeSize`, from a tile. */
  private async prefixRoot(size: number, treeSize: number): Promise<Buffer> {
    const level = Math.log2(size);
    const tileLevel = Math.floor(level / TILE_HEIGHT);
    const width = Math.min(TILE_WIDTH, Math.floor(treeSize / 2 ** (TILE_HEIGHT * tileLevel)));
    const tile = await this.tile(tileLevel, 0, width);
    const count = 2 ** (level - TILE_HEIGHT * tileLevel);
    const hashes = Array.from({ length: count }, (_, i) => tile.subarray(32 * i, 32 * i + 32));
    return rootFromLeafHashes(hashes);
  }

  private checkConsistent(
    older: TrustedCheckpoint,
    newer: TrustedCheckpoint,
    proof: Buffer[],
    trustedSize: number,
  ): void {
    const a = older.checkpoint;
    const b = newer.checkpoint;
    const presented = a.size === trustedSize ? b.size : a.size;
    if (a.size === b.size) {
      const sameMap =
        a.mapRoot === undefined ? b.mapRoot === undefined : !!b.mapRoot && equalBytes(a.mapRoot, b.mapRoot);
      if (!equalBytes(a.rootHash, b.rootHash) || !sameMap) {
        throw new ForkError(
          'trust.fork-same-size',
          trustedSize,
          presented,
          `log forked: two different signed checkpoints for size ${a.size}`,
        );
      }
      return;
    }
    if (a.size === 0) return;
    try {
      verifyConsistency(a.size, b.size, proof, a.rootHash, b.rootHash);
    } catch (err) {
      // either root not recomputed from the log's own proof: the trees do not connect (when the
      // older size is a power of two, the proof starts from its root, so only the newer one can fail)
      if (
        err instanceof VerificationError &&
        (err.check === 'consistency.root1-mismatch' || err.check === 'consistency.root2-mismatch')
      ) {
        throw new ForkError(
          'trust.fork-inconsistent',
          trustedSize,
          presented,
          `log forked: its checkpoint of size ${b.size} does not extend the one of size ${a.size} (${err.message})`,
          { cause: err },
        );
      }
      throw asProofError(err);
    }
  }

  private recordInfo(t: TrustedCheckpoint): { size: number; source: string } {
    return { size: t.checkpoint.size, source: this.url.href };
  }

  // ---------------------------------------------------------------------------------------------
  // HTTP.

  private httpOptions() {
    return { fetch: this.fetchFn, timeoutMs: this.timeoutMs, headers: this.headers };
  }

  private where(path: string): string {
    return `GET ${new URL(path, this.url).href}`;
  }

  private get(path: string, maxBytes: number): Promise<Buffer> {
    const url = new URL(path, this.url);
    // the path as written, if URL parsing changed it (a '.' or '..' key segment)
    const raw = this.url.pathname + path;
    return httpRequest(
      url,
      { maxBytes, ...(url.pathname + url.search !== raw ? { rawPath: raw } : {}) },
      this.httpOptions(),
    );
  }

  private async getJson(path: string): Promise<unknown> {
    return parseJsonBody(await this.get(path, MAX_JSON_BYTES), this.where(path));
  }

  private proofJson(j: unknown, path: string): Record<string, unknown> & { proof: Buffer[] } {
    if (typeof j !== 'object' || j === null) {
      throw new BadResponseError('response.malformed', `${this.where(path)}: answer is not an object`);
    }
    const o = j as Record<string, unknown>;
    return { ...o, proof: decodeProof(o.proof, `${this.where(path)}: proof`) };
  }
}

/** The logs a server offers (`GET <server root>/logs`). Unverified: pin a vkey before trusting any. */
export async function listLogs(
  serverRoot: string | URL,
  opts: { timeoutMs?: number; fetch?: FetchFn } = {},
): Promise<Array<{ id: string; origin: string; vkey: string; prefix: string }>> {
  const root = new URL(serverRoot);
  if (!root.pathname.endsWith('/')) root.pathname += '/';
  const url = new URL('logs', root);
  const body = await httpRequest(
    url,
    { maxBytes: MAX_JSON_BYTES },
    { fetch: opts.fetch, timeoutMs: opts.timeoutMs ?? 10_000 },
  );
  const j = parseJsonBody(body, `GET ${url.href}`) as { logs?: unknown };
  if (!Array.isArray(j?.logs))
    throw new BadResponseError('response.malformed', `GET ${url.href}: no logs list`);
  return j.logs.filter(
    (l): l is { id: string; origin: string; vkey: string; prefix: string } =>
      typeof l === 'object' &&
      l !== null &&
      typeof l.id === 'string' &&
      typeof l.origin === 'string' &&
      typeof l.vkey === 'string' &&
      typeof l.prefix === 'string',
  );
}

/** The server root of a log prefix URL of the form `<root>logs/<id>/`, or undefined. */
export function serverRootOf(logUrl: string | URL): URL | undefined {
  const u = new URL(logUrl);
  const m = /^(.*\/)logs\/[^/]+\/?$/.exec(u.pathname);
  if (!m) return undefined;
  return new URL(m[1], u);
}

/** The `Trustix-Signature` header for a submit request (see the HTTP API). */
export function signSubmit(
  method: string,
  path: string,
  body: Uint8Array,
  auth: { skey: string; writer?: string },
  now: number = Date.now(),
): string {
  const signer = signerFromSkey(auth.skey);
  const ts = Math.floor(now / 1000);
  const nonce = randomBytes(16).toString('hex');
  const digest = createHash('sha256').update(body).digest('hex');
  const message = `trustix-submit/v1\n${method} ${path}\n${ts}\n${nonce}\n${digest}`;
  const sig = signer.sign(Buffer.from(message, 'utf8')).toString('base64');
  return `keyid=${auth.writer ?? signer.name},ts=${ts},nonce=${nonce},sig=${sig}`;
}

/** A core VerificationError with its check, as the client's typed error for that kind of check. */
function classifyCheck(check: string, message: string): VerificationError {
  if (check.startsWith('note.') || check.startsWith('checkpoint.'))
    return new InvalidCheckpointError(check, message);
  return new InvalidProofError(check, message);
}

function asProofError(err: unknown): unknown {
  if (err instanceof VerificationError) return new InvalidProofError(err.check, err.message, { cause: err });
  if (err instanceof TrustixError)
    return new InvalidProofError('proof.malformed', err.message, { cause: err });
  return err;
}

function decodeProof(x: unknown, what: string): Buffer[] {
  if (!Array.isArray(x) || x.length > MAX_PROOF_HASHES) {
    throw new BadResponseError(
      'response.malformed',
      `${what} must be an array of at most ${MAX_PROOF_HASHES} hashes`,
    );
  }
  return x.map((p, i) => {
    const b = typeof p === 'string' ? decodeBase64Strict(p) : undefined;
    if (!b) throw new BadResponseError('response.malformed', `${what} element ${i} is not base64`);
    return b;
  });
}

function isCount(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function checkCount(n: number, what: string): void {
  if (!isCount(n)) throw new FormatError(`${what} must be a non-negative integer`);
}
