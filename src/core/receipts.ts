/**
 * The submit API's answer (`POST /logs/<id>/submit`, docs/server.md): one receipt per entry, in
 * request order. The entries of one request are sequenced together, so their receipts share one
 * or two checkpoints, and their inclusion proofs share most of their hashes (neighbouring leaves
 * have the same path above the node where they meet). The answer therefore carries each distinct
 * checkpoint and each distinct proof hash once, and a receipt names them by position:
 *
 *   {"checkpoints": [note, ...], "hashes": [base64, ...],
 *    "receipts": [{"index", "duplicate", "checkpoint": i, "proof": [j, ...]}, ...]}
 *
 * That is a fifth of the bytes of repeating them in every receipt, and the server spends its time
 * on entries rather than on text.
 */
import { decodeBase64Strict, equalBytes } from './bytes.js';
import { FormatError } from './errors.js';

export interface Receipt {
  index: number;
  /** True when an identical value for this key was already in the log; nothing was appended. */
  duplicate: boolean;
  /** The signed checkpoint note that covers the entry. */
  checkpoint: string;
  /** RFC 6962 inclusion proof of the entry at `index` in the checkpoint's tree, leaf side first. */
  proof: readonly Uint8Array[];
}

/** A receipt read from an answer: its proof hashes decoded (and shared with other receipts). */
export interface ParsedReceipt extends Receipt {
  proof: Buffer[];
}

/** Longest inclusion proof a receipt may carry (a tree of 2^64 leaves). */
export const MAX_RECEIPT_PROOF = 64;

/**
 * The answer as UTF-8 JSON bytes, written straight into one buffer (no text per receipt, nothing
 * for the HTTP layer to measure or encode again). Each distinct hash is encoded once. Neighbouring
 * receipts share most of their path and the sequencer hands out one object per shared hash, so a
 * hash is first compared (as an object) with the one at the same height in the previous receipt;
 * only the few that differ are looked up, by object and then by value.
 */
export function receiptsJson(receipts: readonly Receipt[]): Buffer {
  const n = receipts.length;
  const checkpoints: string[] = [];
  const cpOf = new Int32Array(n);
  let hashCount = 0;
  for (let i = 0; i < n; i++) hashCount += receipts[i].proof.length;
  const ids = new Int32Array(hashCount);
  const hashes: Uint8Array[] = [];
  const byObject = new Map<Uint8Array, number>();
  // by 30 bits of the value; a collision of two different values only costs a repeated hash
  const byValue = new Map<number, number>();
  let lastCp: string | undefined;
  let cp = -1;
  let prev: readonly Uint8Array[] = [];
  let prevAt = 0;
  let at = 0;
  for (let i = 0; i < n; i++) {
    const r = receipts[i];
    if (r.checkpoint !== lastCp) {
      lastCp = r.checkpoint;
      cp = checkpoints.indexOf(r.checkpoint);
      if (cp < 0) cp = checkpoints.push(r.checkpoint) - 1;
    }
    cpOf[i] = cp;
    const p = r.proof;
    for (let j = 0; j < p.length; j++) {
      const h = p[j];
      let id = j < prev.length && prev[j] === h ? ids[prevAt + j] : byObject.get(h);
      if (id === undefined) {
        if (h.length !== 32) throw new FormatError('proof hashes must be 32 bytes');
        const key = h[0] | (h[1] << 8) | (h[2] << 16) | ((h[3] & 0x3f) << 24);
        id = byValue.get(key);
        if (id === undefined || !equalBytes(hashes[id], h)) {
          id = hashes.push(h) - 1;
          byValue.set(key, id);
        }
        byObject.set(h, id);
      }
      ids[at + j] = id;
    }
    prev = p;
    prevAt = at;
    at += p.length;
  }
  const cpJson = checkpoints.map((c) => Buffer.from(JSON.stringify(c), 'utf8'));
  // an upper bound: 16 digits per number, 46 bytes per hash, the rest fixed text
  let size = 64 + n * (RECEIPT_TEXT + 3 * 16) + hashCount * 17 + hashes.length * 47;
  for (const c of cpJson) size += c.length + 1;
  const out = Buffer.allocUnsafe(size);
  let o = put(out, 0, CHECKPOINTS);
  for (let k = 0; k < cpJson.length; k++) {
    if (k > 0) out[o++] = COMMA;
    o += cpJson[k].copy(out, o);
  }
  o = put(out, o, HASHES);
  o = putHashes(out, o, hashes);
  o = put(out, o, RECEIPTS);
  at = 0;
  for (let i = 0; i < n; i++) {
    const r = receipts[i];
    if (i > 0) out[o++] = COMMA;
    o = put(out, o, INDEX);
    o = putDecimal(out, o, r.index);
    o = put(out, o, r.duplicate ? DUPLICATE_TRUE : DUPLICATE_FALSE);
    o = putDecimal(out, o, cpOf[i]);
    o = put(out, o, PROOF);
    const len = r.proof.length;
    for (let j = 0; j < len; j++) {
      if (j > 0) out[o++] = COMMA;
      o = putDecimal(out, o, ids[at + j]);
    }
    at += len;
    out[o++] = BRACKET_CLOSE;
    out[o++] = BRACE_CLOSE;
  }
  out[o++] = BRACKET_CLOSE;
  out[o++] = BRACE_CLOSE;
  return out.subarray(0, o);
}

const ascii = (s: string) => Buffer.from(s, 'latin1');
const CHECKPOINTS = ascii('{"checkpoints":[');
const HASHES = ascii('],"hashes":[');
const RECEIPTS = ascii('],"receipts":[');
const INDEX = ascii('{"index":');
const DUPLICATE_TRUE = ascii(',"duplicate":true,"checkpoint":');
const DUPLICATE_FALSE = ascii(',"duplicate":false,"checkpoint":');
const PROOF = ascii(',"proof":[');
/** Bytes of a receipt's text besides its numbers. */
const RECEIPT_TEXT = 1 + INDEX.length + DUPLICATE_FALSE.length + PROOF.length + 2;
const COMMA = 0x2c;
const QUOTE = 0x22;
const EQUALS = 0x3d;
const BRACKET_CLOSE = 0x5d;
const BRACE_CLOSE = 0x7d;

/** Copies short constant text (a loop beats a native call at these lengths). */
function put(out: Buffer, o: number, text: Buffer): number {
  for (let k = 0; k < text.length; k++) out[o + k] = text[k];
  return o + text.length;
}

/** Writes a non-negative safe integer in decimal at `o`; returns the offset after it. */
function putDecimal(out: Buffer, o: number, v: number): number {
  if (v < 10) {
    out[o] = 0x30 + v;
    return o + 1;
  }
  let digits = 1;
  for (let x = v; x >= 10; x = Math.floor(x / 10)) digits++;
  for (let k = o + digits - 1; k >= o; k--) {
    out[k] = 0x30 + (v % 10);
    v = Math.floor(v / 10);
  }
  return o + digits;
}

/**
 * The 32-byte hashes as quoted base64, comma-separated, encoded in one call: laid out 33 bytes
 * apart (a multiple of 3, with a zero byte after each hash), each hash's encoding is 44 characters
 * of which the first 43 are its own and the last, encoding only the zero byte's bits, becomes the
 * padding "=" that 32 bytes end with.
 */
function putHashes(out: Buffer, o: number, hashes: readonly Uint8Array[]): number {
  if (hashes.length === 0) return o;
  const raw = Buffer.alloc(hashes.length * 33);
  for (let k = 0; k < hashes.length; k++) raw.set(hashes[k], k * 33);
  const text = Buffer.from(raw.toString('base64'), 'latin1');
  for (let k = 0; k < hashes.length; k++) {
    if (k > 0) out[o++] = COMMA;
    out[o++] = QUOTE;
    for (let c = k * 44, end = c + 43; c < end; c++) out[o++] = text[c];
    out[o++] = EQUALS;
    out[o++] = QUOTE;
  }
  return o;
}

/**
 * Reads an answer (parsed JSON) that must hold `count` receipts: every field is checked and every
 * position resolved, each distinct hash decoded once and shared by the receipts that use it.
 * Nothing is verified here (signatures, proofs): that is the caller's job. FormatError otherwise.
 */
export function parseReceipts(answer: unknown, count: number): ParsedReceipt[] {
  const a = answer as { checkpoints?: unknown; hashes?: unknown; receipts?: unknown } | null;
  if (typeof a !== 'object' || a === null) throw new FormatError('expected a JSON object');
  const { checkpoints, hashes, receipts } = a;
  if (!Array.isArray(checkpoints) || !checkpoints.every((c) => typeof c === 'string' && c !== '')) {
    throw new FormatError('checkpoints must be an array of checkpoint notes');
  }
  if (!Array.isArray(hashes)) throw new FormatError('hashes must be an array');
  const decoded = hashes.map((h, i) => {
    const b = typeof h === 'string' ? decodeBase64Strict(h) : undefined;
    if (b?.length !== 32) throw new FormatError(`hashes[${i}] is not a base64 SHA-256 hash`);
    return b;
  });
  if (!Array.isArray(receipts) || receipts.length !== count) {
    throw new FormatError(`expected ${count} receipts`);
  }
  const out = new Array<ParsedReceipt>(count);
  for (let i = 0; i < count; i++) {
    const r = receipts[i] as { index?: unknown; duplicate?: unknown; checkpoint?: unknown; proof?: unknown };
    if (
      typeof r !== 'object' ||
      r === null ||
      !isPosition(r.index, Number.POSITIVE_INFINITY) ||
      typeof r.duplicate !== 'boolean' ||
      !isPosition(r.checkpoint, checkpoints.length) ||
      !Array.isArray(r.proof) ||
      r.proof.length > MAX_RECEIPT_PROOF
    ) {
      throw new FormatError(`receipt ${i} is malformed`);
    }
    const proof = new Array<Buffer>(r.proof.length);
    for (let j = 0; j < proof.length; j++) {
      const id: unknown = r.proof[j];
      if (!isPosition(id, decoded.length)) throw new FormatError(`receipt ${i} names a missing proof hash`);
      proof[j] = decoded[id];
    }
    out[i] = { index: r.index, duplicate: r.duplicate, checkpoint: checkpoints[r.checkpoint], proof };
  }
  return out;
}

/** An integer in [0, end). */
function isPosition(x: unknown, end: number): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0 && x < end;
}
