import { equalBytes } from './bytes.js';
import { type Checkpoint, openCheckpoint } from './checkpoint.js';
import { decodeEntry, type Entry, indexPath, indexValue } from './entry.js';
import { FormatError, TrustixError, VerificationError } from './errors.js';
import { leafHash, NodeHashMemo, verifyInclusion } from './merkle.js';
import type { NoteVerifier } from './note.js';
import { decodeSmtProof, verifySmtProof } from './smt.js';

/** Most keys in one batched lookup request (`POST lookup`). */
export const MAX_LOOKUP_KEYS = 256;

/**
 * Everything a client needs to check one key against one signed checkpoint: the checkpoint,
 * the sparse index proof for the key against the checkpoint's map root, and (when present)
 * the entry with its inclusion proof against the checkpoint's log root.
 * JSON form: binary fields are standard base64.
 */
export interface LookupAnswer {
  checkpoint: string;
  protocol: string;
  key: string;
  mapProof: string;
  entry?: { index: number; data: string; proof: string[] };
}

export type LookupVerdict =
  | { status: 'present'; entry: Entry; index: number; checkpoint: Checkpoint }
  | { status: 'absent'; checkpoint: Checkpoint }
  | { status: 'invalid'; check: string; reason: string };

/**
 * Checks a lookup answer for (protocol, key) against the log's verifier key. Any failed check
 * makes the answer invalid, never absent: a log that cannot prove absence has said nothing.
 */
export function verifyLookup(
  answer: unknown,
  verifier: NoteVerifier,
  query: { protocol: string; key: Uint8Array },
): LookupVerdict {
  try {
    return checkLookup(answer, verifier, query);
  } catch (err) {
    if (err instanceof VerificationError) return { status: 'invalid', check: err.check, reason: err.message };
    if (err instanceof TrustixError)
      return { status: 'invalid', check: 'lookup.malformed', reason: err.message };
    throw err;
  }
}

function checkLookup(
  answer: unknown,
  verifier: NoteVerifier,
  query: { protocol: string; key: Uint8Array },
): LookupVerdict {
  const a = parseLookupAnswer(answer);
  const checkpoint = openCheckpointCached(a.checkpoint, verifier);
  if (!checkpoint.mapRoot) {
    throw new VerificationError('lookup.no-map-root', 'checkpoint carries no map root');
  }
  if (a.protocol !== query.protocol || !equalBytes(b64(a.key, 'key'), query.key)) {
    throw new VerificationError('lookup.wrong-key', 'answer is for another key');
  }
  const path = indexPath(query.protocol, query.key);
  const mapProof = decodeSmtProof(b64(a.mapProof, 'mapProof'));
  if (!a.entry) {
    verifySmtProof(checkpoint.mapRoot, path, undefined, mapProof, nodeMemo(), MEMO_DEPTH);
    return { status: 'absent', checkpoint };
  }
  const data = b64(a.entry.data, 'entry.data');
  const entry = decodeEntry(data);
  if (entry.protocol !== query.protocol || !equalBytes(entry.key, query.key)) {
    throw new VerificationError('lookup.entry-key-mismatch', 'entry is for another key');
  }
  const leaf = leafHash(data);
  const index = a.entry.index;
  const memo = nodeMemo();
  verifySmtProof(checkpoint.mapRoot, path, indexValue(index, leaf), mapProof, memo, MEMO_DEPTH);
  const proof = decodeProof(a.entry.proof);
  verifyInclusion(leaf, index, checkpoint.size, proof, checkpoint.rootHash, memo, MEMO_DEPTH);
  return { status: 'present', entry, index, checkpoint };
}

/**
 * Node hashes at the top MEMO_DEPTH levels of both trees go through one shared memory (exact: see
 * NodeHashMemo). Every answer against a checkpoint recomputes the same nodes near its two roots, so a
 * client checking many answers hashes each of those once; deeper nodes are nearly always new and are
 * hashed directly. Those levels hold 2 x 32,767 nodes; 2^17 slots (8.5 MiB of inputs, allocated on first
 * use, plus the digests they keep) give them about two slots each. Measured on a 200k-entry log: 14 levels in 2^17 slots took
 * about 62 us of CPU per verification, 12 levels in 2^16 slots about 70 us, no memory about 110 us.
 */
const MEMO_DEPTH = 14;
let memoInstance: NodeHashMemo | undefined;
function nodeMemo(): NodeHashMemo {
  memoInstance ??= new NodeHashMemo(17);
  return memoInstance;
}

/**
 * ed25519 verification is the most expensive step of a lookup check (about 70 us) and a
 * client checks many answers against the same checkpoint, so notes that verified are
 * remembered per verifier, keyed by their exact text. Only successes are cached.
 */
const verifiedCheckpoints = new WeakMap<NoteVerifier, Map<string, Checkpoint>>();
const CACHE_PER_VERIFIER = 16;

function openCheckpointCached(note: string, verifier: NoteVerifier): Checkpoint {
  let cache = verifiedCheckpoints.get(verifier);
  const hit = cache?.get(note);
  if (hit) return hit;
  const { checkpoint } = openCheckpoint(note, verifier);
  if (!cache) {
    cache = new Map();
    verifiedCheckpoints.set(verifier, cache);
  }
  if (cache.size >= CACHE_PER_VERIFIER) cache.delete(cache.keys().next().value!);
  cache.set(note, checkpoint);
  return checkpoint;
}

// Value of each standard base64 character, -1 for anything else ('=' included: padding is read apart).
const BASE64_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 64; i++) {
  BASE64_VALUE['ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'.charCodeAt(i)] = i;
}

/** Bytes that canonical base64 `text` decodes to, or -1 if no canonical text has its length and padding. */
function base64Length(text: string): number {
  const n = text.length;
  if ((n & 3) !== 0) return -1;
  if (n === 0) return 0;
  let pad = 0;
  if (text.charCodeAt(n - 1) === 0x3d) pad = text.charCodeAt(n - 2) === 0x3d ? 2 : 1;
  return (n >> 2) * 3 - pad;
}

/**
 * Decodes canonical standard base64 (exactly the texts decodeBase64Strict accepts: standard alphabet,
 * padded, nothing else, unused bits zero) into `out` at `off`, which must have base64Length(text) bytes
 * of room. Returns false, having maybe written part of it, if the text is not canonical. Short texts
 * (proof hashes, keys) are decoded here, sparing a native call per field and checking canonical form on
 * the way; long ones go through the native decoder, which is faster per character.
 */
function decodeBase64Into(text: string, out: Buffer, off: number): boolean {
  const n = text.length;
  if (n === 0) return true;
  if (n > NATIVE_BASE64_FROM) return decodeBase64Native(text, out, off);
  const pad = text.charCodeAt(n - 1) !== 0x3d ? 0 : text.charCodeAt(n - 2) === 0x3d ? 2 : 1;
  const full = pad === 0 ? n : n - 4;
  const T = BASE64_VALUE;
  let o = off;
  for (let i = 0; i < full; i += 4) {
    const c0 = text.charCodeAt(i);
    const c1 = text.charCodeAt(i + 1);
    const c2 = text.charCodeAt(i + 2);
    const c3 = text.charCodeAt(i + 3);
    if ((c0 | c1 | c2 | c3) > 127) return false;
    const v0 = T[c0];
    const v1 = T[c1];
    const v2 = T[c2];
    const v3 = T[c3];
    if ((v0 | v1 | v2 | v3) < 0) return false;
    out[o] = (v0 << 2) | (v1 >> 4);
    out[o + 1] = ((v1 & 15) << 4) | (v2 >> 2);
    out[o + 2] = ((v2 & 3) << 6) | v3;
    o += 3;
  }
  if (pad === 0) return true;
  const c0 = text.charCodeAt(full);
  const c1 = text.charCodeAt(full + 1);
  if ((c0 | c1) > 127) return false;
  const v0 = T[c0];
  const v1 = T[c1];
  if ((v0 | v1) < 0) return false;
  out[o] = (v0 << 2) | (v1 >> 4);
  if (pad === 2) return (v1 & 15) === 0;
  const c2 = text.charCodeAt(full + 2);
  if (c2 > 127) return false;
  const v2 = T[c2];
  // the unused low bits must be zero, as in the canonical encoding
  if (v2 < 0 || (v2 & 3) !== 0) return false;
  out[o + 1] = ((v1 & 15) << 4) | (v2 >> 2);
  return true;
}

// Measured: below about 100 characters the JS loop costs less than the native call's overhead.
const NATIVE_BASE64_FROM = 96;

/**
 * decodeBase64Into through Node's decoder, which skips characters outside the alphabet and stops at '=',
 * so fewer bytes than the length and padding promise mean a stray character; it also reads the base64url
 * characters '-' and '_' and any character by its low byte, which are looked for separately (non-ASCII
 * through the UTF-8 length); and the character before the padding must leave the unused bits zero.
 */
function decodeBase64Native(text: string, out: Buffer, off: number): boolean {
  const n = text.length;
  const len = base64Length(text);
  if (
    out.write(text, off, len, 'base64') !== len ||
    text.indexOf('-') !== -1 ||
    text.indexOf('_') !== -1 ||
    // the decoder reads a character beyond Latin-1 by its low byte ('\u0141' as 'A')
    Buffer.byteLength(text, 'utf8') !== n
  ) {
    return false;
  }
  const pad = (n >> 2) * 3 - len;
  if (pad > 0) {
    const c = text.charCodeAt(n - pad - 1);
    if (c > 127 || (BASE64_VALUE[c] & (pad === 2 ? 0x0f : 0x03)) !== 0) return false;
  }
  return true;
}

/** decodeBase64Strict's answer (same accepted texts, same bytes) without its re-encoding. */
export function decodeBase64Canonical(text: string): Buffer | undefined {
  const len = base64Length(text);
  if (len < 0) return undefined;
  const out = Buffer.allocUnsafe(len);
  return decodeBase64Into(text, out, 0) ? out : undefined;
}

/**
 * The inclusion proof's elements as views of one buffer (one allocation instead of one per element; plain
 * Uint8Array views cost about a third of Buffer ones).
 */
function decodeProof(texts: readonly string[]): Uint8Array[] {
  let total = 0;
  for (let i = 0; i < texts.length; i++) total += Math.max(0, base64Length(texts[i]));
  const all = Buffer.allocUnsafe(total);
  const proof = new Array<Uint8Array>(texts.length);
  let o = 0;
  // in order, so that the first bad element is the one named, whatever is wrong with it
  for (let i = 0; i < texts.length; i++) {
    const len = base64Length(texts[i]);
    if (len < 0 || !decodeBase64Into(texts[i], all, o)) throw base64Error('entry.proof', i);
    proof[i] = new Uint8Array(all.buffer, all.byteOffset + o, len);
    o += len;
  }
  return proof;
}

function base64Error(field: string, i?: number): FormatError {
  return new FormatError(`${i === undefined ? field : `${field}[${i}]`} is not valid base64`);
}

function b64(text: unknown, field: string): Buffer {
  const b = typeof text === 'string' ? decodeBase64Canonical(text) : undefined;
  if (!b) throw base64Error(field);
  return b;
}

const ANSWER_FIELDS = new Set(['checkpoint', 'protocol', 'key', 'mapProof', 'entry']);
const ENTRY_FIELDS = new Set(['index', 'data', 'proof']);

/** Refuses a field outside `allowed`, before anything else is looked at. */
function knownFields(o: object, allowed: ReadonlySet<string>, what: string): void {
  for (const k in o) {
    if (!allowed.has(k))
      throw new FormatError(`${what} has an unknown field ${JSON.stringify(k.slice(0, 64))}`);
  }
}

/**
 * Shape check of an untrusted lookup answer (from JSON): exactly the fields of LookupAnswer, so
 * that an answer padded with anything else is refused before any proof is checked.
 */
export function parseLookupAnswer(x: unknown): LookupAnswer {
  const o = x as Record<string, unknown>;
  if (typeof o !== 'object' || o === null || Array.isArray(o)) {
    throw new FormatError('lookup answer must be an object');
  }
  knownFields(o, ANSWER_FIELDS, 'lookup answer');
  for (const f of ['checkpoint', 'protocol', 'key', 'mapProof']) {
    if (typeof o[f] !== 'string') throw new FormatError(`lookup answer field ${f} must be a string`);
  }
  let entry: LookupAnswer['entry'];
  if (o.entry !== undefined && o.entry !== null) {
    const e = o.entry as Record<string, unknown>;
    if (typeof e !== 'object' || Array.isArray(e))
      throw new FormatError('lookup answer entry must be an object');
    knownFields(e, ENTRY_FIELDS, 'lookup answer entry');
    if (typeof e.index !== 'number' || !Number.isSafeInteger(e.index) || e.index < 0) {
      throw new FormatError('entry.index must be a non-negative integer');
    }
    if (typeof e.data !== 'string') throw new FormatError('entry.data must be a string');
    if (!Array.isArray(e.proof) || e.proof.length > 64 || !e.proof.every((p) => typeof p === 'string')) {
      throw new FormatError('entry.proof must be an array of at most 64 base64 strings');
    }
    entry = { index: e.index, data: e.data, proof: e.proof as string[] };
  }
  return {
    checkpoint: o.checkpoint as string,
    protocol: o.protocol as string,
    key: o.key as string,
    mapProof: o.mapProof as string,
    ...(entry ? { entry } : {}),
  };
}
