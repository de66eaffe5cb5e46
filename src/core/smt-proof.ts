/**
 * Sparse-index proofs: binary encoding and the strict verifier (both described in smt.ts).
 */
import { FormatError, VerificationError } from './errors.js';
import { sha256Pair } from './hash.js';
import type { NodeHashMemo } from './merkle.js';
import {
  pathBit,
  SMT_EMPTY,
  SMT_MAX_VALUE_LENGTH,
  SMT_NODE_PREFIX,
  SMT_PATH_BITS,
  smtLeafHash,
} from './smt-strata.js';

export type SmtProofKind = 'included' | 'empty' | 'other';

export type SmtProof = {
  kind: SmtProofKind;
  /** D: depth of the subtree on the key's path that is empty or holds a single leaf. */
  depth: number;
  bitmap: Buffer;
  /** Non-empty siblings at depths 1..D, root side first. */
  siblings: Buffer[];
  /** Kind 'other': the single leaf found where the key would be. */
  otherPath?: Buffer;
  otherValue?: Buffer;
};

export const SMT_PROOF_VERSION = 0x01;
const KIND_CODES: Record<SmtProofKind, number> = { included: 0, empty: 1, other: 2 };
const KINDS: readonly SmtProofKind[] = ['included', 'empty', 'other'];

function popcount8(x: number): number {
  x -= (x >> 1) & 0x55;
  x = (x & 0x33) + ((x >> 2) & 0x33);
  return (x + (x >> 4)) & 0x0f;
}

/** The bitmap's padding bits (after bit depth-1) as a mask of its last byte. */
function paddingMask(depth: number): number {
  const used = depth & 7;
  return used === 0 ? 0 : 0xff >> used;
}

function bitmapPopcount(bitmap: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < bitmap.length; i++) n += popcount8(bitmap[i]);
  return n;
}

export function encodeSmtProof(p: SmtProof): Buffer {
  const code = KIND_CODES[p.kind];
  if (code === undefined) throw new FormatError(`unknown proof kind ${String(p.kind)}`);
  if (!Number.isInteger(p.depth) || p.depth < 0 || p.depth > SMT_PATH_BITS) {
    throw new FormatError(`proof depth out of range: ${p.depth}`);
  }
  const mapLen = (p.depth + 7) >> 3;
  if (p.bitmap.length !== mapLen) throw new FormatError('proof bitmap length does not match its depth');
  if (bitmapPopcount(p.bitmap) !== p.siblings.length)
    throw new FormatError('proof bitmap does not match siblings');
  for (const s of p.siblings) if (s.length !== 32) throw new FormatError('proof sibling is not 32 bytes');
  let tail = 0;
  if (p.kind === 'other') {
    if (p.otherPath?.length !== 32 || p.otherValue === undefined) {
      throw new FormatError("proof of kind 'other' needs a 32-byte path and a value");
    }
    if (p.otherValue.length > SMT_MAX_VALUE_LENGTH) throw new FormatError('proof leaf value too long');
    tail = 33 + p.otherValue.length;
  } else if (p.otherPath !== undefined || p.otherValue !== undefined) {
    throw new FormatError(`proof of kind '${p.kind}' carries another leaf`);
  }
  const out = Buffer.allocUnsafe(4 + mapLen + 32 * p.siblings.length + tail);
  out[0] = SMT_PROOF_VERSION;
  out[1] = code;
  out.writeUInt16BE(p.depth, 2);
  let o = 4;
  out.set(p.bitmap, o);
  o += mapLen;
  for (const s of p.siblings) {
    out.set(s, o);
    o += 32;
  }
  if (p.kind === 'other') {
    out.set(p.otherPath!, o);
    out[o + 32] = p.otherValue!.length;
    out.set(p.otherValue!, o + 33);
  }
  return out;
}

/**
 * Parses a proof; rejects unknown version or kind, out-of-range depth, set padding bits, truncation and trailing bytes.
 * The proof's byte fields are views of `b` (a copy per sibling cost a verifier more than a hash): `b` must not
 * change while the proof is in use.
 */
export function decodeSmtProof(b: Uint8Array): SmtProof {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (buf.length < 4) throw new FormatError('sparse index proof truncated');
  if (buf[0] !== SMT_PROOF_VERSION) throw new FormatError(`unknown sparse index proof version ${buf[0]}`);
  const kind = KINDS[buf[1]];
  if (kind === undefined) throw new FormatError(`unknown sparse index proof kind ${buf[1]}`);
  const depth = buf.readUInt16BE(2);
  if (depth > SMT_PATH_BITS) throw new FormatError(`sparse index proof depth ${depth} exceeds 256`);
  const mapLen = (depth + 7) >> 3;
  let o = 4;
  if (buf.length < o + mapLen) throw new FormatError('sparse index proof truncated');
  const bitmap = buf.subarray(o, o + mapLen);
  o += mapLen;
  if (mapLen > 0 && (bitmap[mapLen - 1] & paddingMask(depth)) !== 0) {
    throw new FormatError('sparse index proof bitmap has padding bits set');
  }
  const count = bitmapPopcount(bitmap);
  if (buf.length < o + 32 * count) throw new FormatError('sparse index proof truncated');
  const siblings: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    siblings.push(buf.subarray(o, o + 32));
    o += 32;
  }
  const proof: SmtProof = { kind, depth, bitmap, siblings };
  if (kind === 'other') {
    if (buf.length < o + 33) throw new FormatError('sparse index proof truncated');
    proof.otherPath = buf.subarray(o, o + 32);
    const len = buf[o + 32];
    o += 33;
    if (buf.length < o + len) throw new FormatError('sparse index proof truncated');
    proof.otherValue = buf.subarray(o, o + len);
    o += len;
  }
  if (o !== buf.length) throw new FormatError('sparse index proof has trailing bytes');
  return proof;
}

function fail(check: string, message: string): never {
  throw new VerificationError(`smt.${check}`, `sparse index proof rejected: ${message}`);
}

/** Whether 32 bytes equal SMT_EMPTY (all zero); a loop here costs less than a native compare per sibling. */
function isZero32(s: Uint8Array): boolean {
  for (let i = 0; i < 32; i++) if (s[i] !== 0) return false;
  return true;
}

function isBytes(x: unknown): x is Uint8Array {
  return x instanceof Uint8Array;
}

/**
 * Throws VerificationError unless `proof` shows that `path` maps to `value` (value given) or is absent
 * (value undefined) in the tree with root `root`. Only canonical proofs are accepted. With `memo`, the
 * node hashes at depths below `memoDepth` (nearest the root) go through it.
 */
export function verifySmtProof(
  root: Uint8Array,
  path: Uint8Array,
  value: Uint8Array | undefined,
  proof: SmtProof,
  memo?: NodeHashMemo,
  memoDepth = 0,
): void {
  if (!isBytes(root) || root.length !== 32) fail('root-length', 'root is not 32 bytes');
  if (!isBytes(path) || path.length !== 32) fail('path-length', 'path is not 32 bytes');
  if (value !== undefined && (!isBytes(value) || value.length > SMT_MAX_VALUE_LENGTH)) {
    fail('value-length', 'value is longer than 255 bytes');
  }
  const { kind, depth, bitmap, siblings } = proof;
  if (kind !== 'included' && kind !== 'empty' && kind !== 'other') fail('kind', 'unknown kind');
  if (value !== undefined && kind !== 'included')
    fail('kind-mismatch', `inclusion claimed, proof is '${kind}'`);
  if (value === undefined && kind === 'included')
    fail('kind-mismatch', 'absence claimed, proof is an inclusion');
  if (!Number.isInteger(depth) || depth < 0 || depth > SMT_PATH_BITS)
    fail('depth', `depth ${depth} out of range`);
  if (!isBytes(bitmap) || bitmap.length !== (depth + 7) >> 3)
    fail('bitmap-length', 'bitmap length != ceil(D/8)');
  if (depth > 0 && (bitmap[bitmap.length - 1] & paddingMask(depth)) !== 0) {
    fail('bitmap-padding', 'bitmap padding bits set');
  }
  if (!Array.isArray(siblings) || siblings.length !== bitmapPopcount(bitmap)) {
    fail('sibling-count', 'number of siblings != bits set in bitmap');
  }
  for (const s of siblings) {
    if (!isBytes(s) || s.length !== 32) fail('sibling-length', 'sibling is not 32 bytes');
    if (isZero32(s)) fail('sibling-empty', 'empty sibling listed explicitly');
  }
  // The node at depth D-1 holds 2+ leaves; with an empty sibling it would hold at most one (so D is not
  // the shallowest depth).
  if (depth > 0 && pathBit(bitmap, depth - 1) === 0) fail('deepest-sibling', 'sibling at depth D is empty');

  let h: Buffer;
  if (kind === 'included') {
    h = smtLeafHash(path, value!);
  } else if (kind === 'empty') {
    if (proof.otherPath !== undefined || proof.otherValue !== undefined)
      fail('other-leaf', 'unexpected leaf');
    h = SMT_EMPTY;
  } else {
    const op = proof.otherPath;
    const ov = proof.otherValue;
    if (!isBytes(op) || op.length !== 32) fail('other-leaf', "'other' leaf path is not 32 bytes");
    if (!isBytes(ov) || ov.length > SMT_MAX_VALUE_LENGTH)
      fail('other-leaf', "'other' leaf value is malformed");
    if (Buffer.compare(op, path) === 0) fail('other-is-key', "'other' leaf is the key itself");
    for (let i = 0; i < depth; i++) {
      if (pathBit(op, i) !== pathBit(path, i)) fail('other-prefix', "'other' leaf is not on the key's path");
    }
    h = smtLeafHash(op, ov);
  }
  if (kind === 'included' && (proof.otherPath !== undefined || proof.otherValue !== undefined)) {
    fail('other-leaf', 'unexpected leaf');
  }

  let next = siblings.length - 1;
  for (let d = depth; d >= 1; d--) {
    const sib = pathBit(bitmap, d - 1) === 1 ? siblings[next--] : SMT_EMPTY;
    // the node computed here sits at depth d - 1
    if (memo !== undefined && d - 1 < memoDepth) {
      h =
        pathBit(path, d - 1) === 0 ? memo.hash(SMT_NODE_PREFIX, h, sib) : memo.hash(SMT_NODE_PREFIX, sib, h);
    } else {
      h =
        pathBit(path, d - 1) === 0
          ? sha256Pair(SMT_NODE_PREFIX, h, sib)
          : sha256Pair(SMT_NODE_PREFIX, sib, h);
    }
  }
  if (Buffer.compare(h, root) !== 0) fail('root-mismatch', 'computed root differs');
}
