import { equalBytes } from './bytes.js';
import { type Checkpoint, openCheckpoint } from './checkpoint.js';
import { decodeEntry, type Entry, indexPath, indexValue } from './entry.js';
import { FormatError, TrustixError, VerificationError } from './errors.js';
import { leafHash, NodeHashMemo, verifyInclusion } from './merkle.js';
import type { NoteVerifier } from './note.js';
import { decodeSmtProof, verifySmtProof } from './smt.js';

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
  const texts = a.entry.proof;
  const proof = new Array<Buffer>(texts.length);
  for (let i = 0; i < texts.length; i++) proof[i] = b64(texts[i], 'entry.proof', i);
  verifyInclusion(leaf, index, checkpoint.size, proof, checkpoint.rootHash, memo, MEMO_DEPTH);
  return { status: 'present', entry, index, checkpoint };
}

/**
 * Node hashes at the top MEMO_DEPTH levels of both trees go through one shared memory (exact: see
 * NodeHashMemo). Every answer against a checkpoint recomputes the same nodes near its two roots, so a
 * client checking many answers hashes each of those once; deeper nodes are nearly always new and are
 * hashed directly. Those levels hold 2 x 32,767 nodes; 2^17 slots (12 MiB, allocated on first use)
 * give them about two slots each. Measured on a 200k-entry log: 14 levels in 2^17 slots took
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

// Value of each standard base64 character, -1 for anything else.
const BASE64_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 64; i++) {
  BASE64_VALUE['ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'.charCodeAt(i)] = i;
}

/**
 * decodeBase64Strict's answer without its re-encoding (a second string per field, about 40 fields per
 * answer). Node's decoder skips characters outside the alphabet and stops at '=', so a decoded length
 * short of what the text's length and padding promise means a stray character; it also reads the
 * base64url characters '-' and '_' and any character by its low byte, which are looked for
 * separately (non-ASCII through the UTF-8 length); and the character before the
 * padding must leave the unused bits zero. Same accepted set, as the tests check against
 * decodeBase64Strict on Node 20 and 24.
 */
export function decodeBase64Canonical(text: string): Buffer | undefined {
  const n = text.length;
  if (n % 4 !== 0) return undefined;
  let pad = 0;
  if (n > 0 && text.charCodeAt(n - 1) === 0x3d) pad = text.charCodeAt(n - 2) === 0x3d ? 2 : 1;
  const out = Buffer.from(text, 'base64');
  if (
    out.length !== (n / 4) * 3 - pad ||
    text.indexOf('-') !== -1 ||
    text.indexOf('_') !== -1 ||
    // the decoder reads a character beyond Latin-1 by its low byte ('\u0141' as 'A')
    Buffer.byteLength(text, 'utf8') !== n
  ) {
    return undefined;
  }
  if (pad > 0) {
    const c = text.charCodeAt(n - pad - 1);
    if (c > 127 || (BASE64_VALUE[c] & (pad === 2 ? 0x0f : 0x03)) !== 0) return undefined;
  }
  return out;
}

function b64(text: unknown, field: string, i?: number): Buffer {
  const b = typeof text === 'string' ? decodeBase64Canonical(text) : undefined;
  if (!b) throw new FormatError(`${i === undefined ? field : `${field}[${i}]`} is not valid base64`);
  return b;
}

/** Shape check of an untrusted lookup answer (from JSON). */
export function parseLookupAnswer(x: unknown): LookupAnswer {
  const o = x as Record<string, unknown>;
  if (typeof o !== 'object' || o === null) throw new FormatError('lookup answer must be an object');
  for (const f of ['checkpoint', 'protocol', 'key', 'mapProof']) {
    if (typeof o[f] !== 'string') throw new FormatError(`lookup answer field ${f} must be a string`);
  }
  let entry: LookupAnswer['entry'];
  if (o.entry !== undefined && o.entry !== null) {
    const e = o.entry as Record<string, unknown>;
    if (typeof e !== 'object') throw new FormatError('lookup answer entry must be an object');
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
