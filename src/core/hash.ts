import { createHash, hash as oneShotHash } from 'node:crypto';

/**
 * SHA-256 of one buffer. `crypto.hash` (Node 20.12+) skips the Hash object and is about 2x faster.
 * Its digest is asked for as a latin1 ('binary') string (one character per byte) and turned into bytes here:
 * a 'buffer' digest gets an ArrayBuffer of its own, whose allocation and later collection cost more
 * than the hash itself for small inputs (about 1.1 us against 0.45 us per 65-byte hash, 2026-12-06).
 * The result is a slice of Node's shared buffer pool, like any small Buffer.from.
 */
export const sha256: (data: Uint8Array) => Buffer =
  typeof oneShotHash === 'function'
    ? (data) => Buffer.from(oneShotHash('sha256', data, 'binary'), 'latin1')
    : (data) => createHash('sha256').update(data).digest();

/** Writes SHA-256(data) to out[at..at+32), allocating no buffer. */
export const sha256Into: (data: Uint8Array, out: Uint8Array, at: number) => void =
  typeof oneShotHash === 'function'
    ? (data, out, at) => {
        const s = oneShotHash('sha256', data, 'binary');
        for (let i = 0; i < 32; i++) out[at + i] = s.charCodeAt(i);
      }
    : (data, out, at) => out.set(createHash('sha256').update(data).digest(), at);

/** SHA-256 digest as a latin1 string (one character per byte): see sha256 for why a string. */
const digestLatin1: (data: Uint8Array) => string =
  typeof oneShotHash === 'function'
    ? (data) => oneShotHash('sha256', data, 'binary')
    : (data) => createHash('sha256').update(data).digest('binary');

/**
 * Writes SHA-256(data) at byte `at` of `out` and, if given, at `at2` of `out2`, four bytes per store: a
 * tree node's hash goes into its row and into its parent's hashing input, and one pass over the digest
 * is cheaper than copying it after.
 */
export function sha256IntoViews(data: Uint8Array, out: DataView, at: number, out2?: DataView, at2 = 0): void {
  const s = digestLatin1(data);
  for (let i = 0; i < 32; i += 4) {
    const w =
      (s.charCodeAt(i) << 24) |
      (s.charCodeAt(i + 1) << 16) |
      (s.charCodeAt(i + 2) << 8) |
      s.charCodeAt(i + 3);
    out.setInt32(at + i, w);
    if (out2 !== undefined) out2.setInt32(at2 + i, w);
  }
}

const scratch65 = Buffer.alloc(65);

/** prefix || a || b in a shared scratch buffer, valid until the next call. */
function pairInput(prefix: number, a: Uint8Array, b: Uint8Array): Buffer {
  scratch65[0] = prefix;
  scratch65.set(a, 1);
  scratch65.set(b, 33);
  return scratch65;
}

/** SHA-256(prefix || a || b) for two 32-byte values, without allocating a concatenation. */
export function sha256Pair(prefix: number, a: Uint8Array, b: Uint8Array): Buffer {
  return sha256(pairInput(prefix, a, b));
}

/** Writes SHA-256(prefix || a || b) of two 32-byte values to out[at..at+32), allocating nothing. */
export function sha256PairInto(
  prefix: number,
  a: Uint8Array,
  b: Uint8Array,
  out: Uint8Array,
  at: number,
): void {
  sha256Into(pairInput(prefix, a, b), out, at);
}

/** SHA-256(prefix || data). */
export function sha256Prefixed(prefix: number, data: Uint8Array): Buffer {
  const buf = Buffer.allocUnsafe(1 + data.length);
  buf[0] = prefix;
  buf.set(data, 1);
  return sha256(buf);
}

let prefixedScratch = Buffer.allocUnsafeSlow(1024);

/**
 * Writes SHA-256(prefix || data) to out[at..at+32): the input is put together in a scratch buffer
 * that is reused, not allocated per call (a follower hashes every entry of a log this way).
 */
export function sha256PrefixedInto(prefix: number, data: Uint8Array, out: Uint8Array, at: number): void {
  const n = 1 + data.length;
  if (prefixedScratch.length < n)
    prefixedScratch = Buffer.allocUnsafeSlow(Math.max(n, 2 * prefixedScratch.length));
  prefixedScratch[0] = prefix;
  prefixedScratch.set(data, 1);
  sha256Into(prefixedScratch.subarray(0, n), out, at);
}

export const HASH_SIZE = 32;
