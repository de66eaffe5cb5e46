import assert from 'node:assert/strict';
import { createHash, createPublicKey, verify } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { verifyLookup } from '../../src/core/lookup.js';
import { verifierFromVkey } from '../../src/core/note.js';
import { buildLookupVectors, type LookupVector, VECTORS_DIR } from '../fixtures/lookup-vectors.js';

// The committed lookup vectors (docs/lookup-format.md): what the project's verifier and a verifier
// written from the document alone make of them, and whether a node still serves exactly these answers.

function committed(): Record<string, LookupVector> {
  const out: Record<string, LookupVector> = {};
  for (const f of readdirSync(VECTORS_DIR).sort()) {
    if (f.endsWith('.json')) out[f.slice(0, -5)] = JSON.parse(readFileSync(join(VECTORS_DIR, f), 'utf8'));
  }
  return out;
}

const vectors = committed();

describe('lookup vectors', () => {
  test('there are present, absent and invalid vectors', () => {
    const statuses = Object.values(vectors).map((v) => v.expect.status);
    for (const s of ['present', 'absent', 'invalid'] as const) assert.ok(statuses.includes(s), s);
  });

  test('the project verifier gives each vector its expected outcome and failing check', () => {
    for (const [name, v] of Object.entries(vectors)) {
      const query = { protocol: v.query.protocol, key: Buffer.from(v.query.key, 'base64') };
      const verdict = verifyLookup(v.answer, verifierFromVkey(v.vkey), query);
      assert.equal(verdict.status, v.expect.status, `${name}: ${JSON.stringify(verdict)}`);
      if (verdict.status === 'invalid' && v.expect.status === 'invalid') {
        assert.equal(verdict.check, v.expect.check, `${name}: ${verdict.reason}`);
      } else if (verdict.status === 'present' && v.expect.status === 'present') {
        assert.equal(verdict.index, v.expect.index, name);
        assert.equal(verdict.checkpoint.size, v.expect.treeSize, name);
        const e = verdict.entry;
        assert.deepEqual(
          {
            protocol: e.protocol,
            key: e.key.toString('hex'),
            value: e.value.toString('hex'),
            metadata: e.metadata.toString('hex'),
          },
          v.expect.entry,
          name,
        );
      } else if (verdict.status === 'absent' && v.expect.status === 'absent') {
        assert.equal(verdict.checkpoint.size, v.expect.treeSize, name);
      }
    }
  });

  test('a verifier written from docs/lookup-format.md alone agrees on every vector', () => {
    for (const [name, v] of Object.entries(vectors)) {
      const got = verifyLookupFromSpec(
        v.answer,
        v.vkey,
        v.query.protocol,
        Buffer.from(v.query.key, 'base64'),
      );
      assert.deepEqual(got, v.expect, name);
    }
  });

  test("the document's example is vector present-3, under the vectors' key", () => {
    const doc = readFileSync(join(VECTORS_DIR, '..', '..', '..', 'docs', 'lookup-format.md'), 'utf8');
    const example = /### Example \(vector `present-3`\)\n\n```json\n([^`]*)```/.exec(doc);
    assert.ok(example, 'example section not found');
    assert.deepEqual(JSON.parse(example[1]), vectors['present-3'].answer);
    assert.ok(doc.includes(vectors['present-3'].vkey));
  });

  test('a node serves exactly the committed answers (rebuild: node --import tsx test/fixtures/lookup-vectors.ts)', async () => {
    const built = await buildLookupVectors();
    assert.deepEqual(Object.keys(vectors).sort(), Object.keys(built).sort());
    for (const name of Object.keys(built)) assert.deepEqual(vectors[name], built[name], name);
  });
});

// ---------------------------------------------------------------------------------------------
// A verifier written from docs/lookup-format.md alone: node:crypto only, nothing from src/.
// It returns what the vectors' `expect` holds: the outcome, or the first failed check.

type SpecResult =
  | { status: 'present'; index: number; treeSize: number; entry: Record<string, string> }
  | { status: 'absent'; treeSize: number; mapProofKind: 'empty' | 'other' }
  | { status: 'invalid'; check: string };

class Invalid extends Error {
  constructor(readonly check: string) {
    super(check);
  }
}
const fail = (check: string): never => {
  throw new Invalid(check);
};

const sha = (...parts: Uint8Array[]) => createHash('sha256').update(Buffer.concat(parts)).digest();
const ZERO32 = Buffer.alloc(32);

/** Canonical standard base64, padded; undefined otherwise. */
function base64(text: unknown): Buffer | undefined {
  if (typeof text !== 'string' || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text))
    return undefined;
  const b = Buffer.from(text, 'base64');
  return b.toString('base64') === text ? b : undefined;
}
const mustBase64 = (text: unknown) => base64(text) ?? fail('lookup.malformed');

/** Bit i of a path or bitmap, most significant bit of byte 0 first. */
const bit = (b: Uint8Array, i: number) => (b[i >> 3] >> (7 - (i & 7))) & 1;

/** The checkpoint's origin, size, log root and map root, after its note verified under `vkey`. */
function openCheckpoint(note: string, vkey: string) {
  // <name>+<8 hex key id>+<base64(0x01 || public key)>, split on the first two '+'
  const p1 = vkey.indexOf('+');
  const p2 = vkey.indexOf('+', p1 + 1);
  const name = vkey.slice(0, p1);
  const keyId = Number.parseInt(vkey.slice(p1 + 1, p2), 16);
  const pub = Buffer.from(vkey.slice(p2 + 1), 'base64').subarray(1);
  // the note: text, blank line, signature lines
  const control = [...note].some((c) => c.charCodeAt(0) < 0x20 && c !== '\n');
  if (control || !note.endsWith('\n')) fail('note.malformed');
  const split = note.lastIndexOf('\n\n');
  if (split < 0 || split + 2 >= note.length) fail('note.malformed');
  const text = note.slice(0, split + 1);
  const lines = note.slice(split + 2, -1).split('\n');
  if (lines.length > 100) fail('note.malformed');
  let signed = false;
  for (const line of lines) {
    const m = /^\u2014 ([^ ]+) ([^ ]+)$/.exec(line);
    const raw = m ? base64(m[2]) : undefined;
    if (!m || !raw || raw.length < 5) return fail('note.malformed');
    if (m[1] !== name || raw.readUInt32BE(0) !== keyId) continue;
    const sig = raw.subarray(4);
    const key = createPublicKey({
      key: { kty: 'OKP', crv: 'Ed25519', x: pub.toString('base64url') },
      format: 'jwk',
    });
    if (sig.length !== 64 || !verify(null, Buffer.from(text, 'utf8'), key, sig)) fail('note.bad-signature');
    signed = true;
  }
  if (!signed) fail('note.no-known-signature');
  // the checkpoint text
  const cp = text.slice(0, -1).split('\n');
  const hash32 = (t: string | undefined) => {
    const b = t === undefined ? undefined : base64(t);
    return b?.length === 32 ? b : fail('checkpoint.malformed');
  };
  if (cp.length < 3 || cp.some((l) => l.length === 0)) fail('checkpoint.malformed');
  if (!/^(0|[1-9][0-9]*)$/.test(cp[1]) || !Number.isSafeInteger(Number(cp[1]))) fail('checkpoint.malformed');
  const rootHash = hash32(cp[2]);
  let mapRoot: Buffer | undefined;
  cp.slice(3).forEach((line, i) => {
    if (!line.startsWith('map ')) return;
    if (i !== 0) fail('checkpoint.malformed');
    mapRoot = hash32(line.slice(4));
  });
  if (cp[0] !== name) fail('checkpoint.origin-mismatch');
  return { size: Number(cp[1]), rootHash, mapRoot };
}

function decodeMapProof(b: Buffer) {
  const malformed = () => fail('lookup.malformed');
  if (b.length < 4 || b[0] !== 1 || b[1] > 2) malformed();
  const kind = (['included', 'empty', 'other'] as const)[b[1]];
  const depth = b.readUInt16BE(2);
  if (depth > 256) malformed();
  const bitmap = b.subarray(4, 4 + Math.ceil(depth / 8));
  if (bitmap.length !== Math.ceil(depth / 8)) malformed();
  for (let i = depth; i < bitmap.length * 8; i++) if (bit(bitmap, i)) malformed();
  let count = 0;
  for (let i = 0; i < depth; i++) count += bit(bitmap, i);
  let o = 4 + bitmap.length;
  const siblings: Buffer[] = [];
  for (let i = 0; i < count; i++, o += 32) siblings.push(b.subarray(o, o + 32));
  let other: { path: Buffer; value: Buffer } | undefined;
  if (kind === 'other') {
    const len = b[o + 32];
    if (len === undefined) malformed();
    other = { path: b.subarray(o, o + 32), value: b.subarray(o + 33, o + 33 + len) };
    o += 33 + len;
  }
  if (o !== b.length) malformed();
  return { kind, depth, bitmap, siblings, other };
}

function checkMapProof(
  p: ReturnType<typeof decodeMapProof>,
  root: Buffer,
  path: Buffer,
  value?: Buffer,
): void {
  if ((value !== undefined) !== (p.kind === 'included')) fail('smt.kind-mismatch');
  if (p.siblings.some((s) => s.equals(ZERO32))) fail('smt.sibling-empty');
  if (p.depth > 0 && !bit(p.bitmap, p.depth - 1)) fail('smt.deepest-sibling');
  let h = ZERO32;
  if (p.kind === 'included') h = sha(Buffer.from([2]), path, value!);
  if (p.other) {
    if (p.other.path.equals(path)) fail('smt.other-is-key');
    for (let i = 0; i < p.depth; i++) if (bit(p.other.path, i) !== bit(path, i)) fail('smt.other-prefix');
    h = sha(Buffer.from([2]), p.other.path, p.other.value);
  }
  let next = p.siblings.length - 1;
  for (let d = p.depth; d >= 1; d--) {
    const s = bit(p.bitmap, d - 1) ? p.siblings[next--] : ZERO32;
    h = bit(path, d - 1) === 0 ? sha(Buffer.from([3]), h, s) : sha(Buffer.from([3]), s, h);
  }
  if (!h.equals(root)) fail('smt.root-mismatch');
}

function decodeEntry(d: Buffer) {
  let o = 0;
  const take = (n: number) => {
    if (o + n > d.length) fail('lookup.malformed');
    o += n;
    return d.subarray(o - n, o);
  };
  if (take(1)[0] !== 1) fail('lookup.malformed');
  const protocol = take(take(1)[0]);
  const key = take(take(2).readUInt16BE(0));
  const value = take(take(1)[0]);
  const metadata = take(take(2).readUInt16BE(0));
  const printable = protocol.every((c) => c >= 0x21 && c <= 0x7e);
  if (o !== d.length || d.length > 65535 || !printable || protocol.length < 1 || protocol.length > 64) {
    fail('lookup.malformed');
  }
  if (key.length < 1 || key.length > 1024 || value.length < 1 || value.length > 64) fail('lookup.malformed');
  return { protocol: protocol.toString('latin1'), key, value, metadata };
}

function checkInclusion(leaf: Buffer, index: number, size: number, proof: Buffer[], root: Buffer): void {
  if (index >= size) fail('inclusion.index-out-of-range');
  if (proof.some((p) => p.length !== 32)) fail('inclusion.hash-length');
  // RFC 9162 2.1.3.2, on BigInts (sizes up to 2^53 - 1)
  let fn = BigInt(index);
  let sn = BigInt(size - 1);
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) fail('inclusion.proof-length');
    if (fn % 2n === 1n || fn === sn) {
      r = sha(Buffer.from([1]), p, r);
      while (fn % 2n === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = sha(Buffer.from([1]), r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) fail('inclusion.proof-length');
  if (!r.equals(root)) fail('inclusion.root-mismatch');
}

function verifyLookupFromSpec(answer: unknown, vkey: string, protocol: string, key: Buffer): SpecResult {
  try {
    const a = answer as Record<string, unknown>;
    const e = (a?.entry ?? undefined) as Record<string, unknown> | undefined;
    const shapeOk =
      typeof a === 'object' &&
      a !== null &&
      ['checkpoint', 'protocol', 'key', 'mapProof'].every((f) => typeof a[f] === 'string') &&
      (e === undefined ||
        (typeof e === 'object' &&
          Number.isSafeInteger(e.index) &&
          (e.index as number) >= 0 &&
          typeof e.data === 'string' &&
          Array.isArray(e.proof) &&
          e.proof.length <= 64 &&
          e.proof.every((p) => typeof p === 'string')));
    if (!shapeOk) fail('lookup.malformed');
    const cp = openCheckpoint(a.checkpoint as string, vkey);
    if (!cp.mapRoot) return fail('lookup.no-map-root');
    if (a.protocol !== protocol || !mustBase64(a.key).equals(key)) fail('lookup.wrong-key');
    const path = sha(Buffer.from([protocol.length]), Buffer.from(protocol, 'latin1'), key);
    const proof = decodeMapProof(mustBase64(a.mapProof));
    if (e === undefined) {
      checkMapProof(proof, cp.mapRoot, path);
      return { status: 'absent', treeSize: cp.size, mapProofKind: proof.kind as 'empty' | 'other' };
    }
    const data = mustBase64(e.data);
    const entry = decodeEntry(data);
    if (entry.protocol !== protocol || !entry.key.equals(key)) fail('lookup.entry-key-mismatch');
    const index = e.index as number;
    const leaf = sha(Buffer.from([0]), data);
    const indexValue = Buffer.alloc(8);
    indexValue.writeBigUInt64BE(BigInt(index));
    checkMapProof(proof, cp.mapRoot, path, Buffer.concat([indexValue, leaf]));
    const hashes = (e.proof as string[]).map(mustBase64);
    checkInclusion(leaf, index, cp.size, hashes, cp.rootHash);
    const hex = (b: Buffer) => b.toString('hex');
    return {
      status: 'present',
      index,
      treeSize: cp.size,
      entry: {
        protocol: entry.protocol,
        key: hex(entry.key),
        value: hex(entry.value),
        metadata: hex(entry.metadata),
      },
    };
  } catch (err) {
    if (err instanceof Invalid) return { status: 'invalid', check: err.check };
    throw err;
  }
}
