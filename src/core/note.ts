/**
 * C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys, and C2SP
 * tlog-cosignature v1 (https://c2sp.org/tlog-cosignature) Ed25519 cosignatures.
 *
 * Key texts are compatible with Go's golang.org/x/mod/sumdb/note:
 *   verifier key  `<name>+<8 hex key id>+<base64(type || 32-byte public key)>`
 *   signer key    `PRIVATE+KEY+<name>+<8 hex key id>+<base64(type || 32-byte seed)>`
 * A note is `text` (ending in "\n") + "\n" + one or more lines `— <name> <base64(key id || sig)>\n`.
 */
import { createPrivateKey, createPublicKey, type KeyObject, randomBytes, sign, verify } from 'node:crypto';
import { decodeBase64Strict } from './bytes.js';
import { FormatError, VerificationError } from './errors.js';
import { sha256 } from './hash.js';

/** Signature type of plain Ed25519 note signatures. */
export const ALG_ED25519 = 0x01;
/** Signature type of timestamped Ed25519 cosignatures (tlog-cosignature v1). */
export const ALG_COSIGNATURE_V1 = 0x04;
/** Notes with more signature lines are rejected (the limit Go uses; the spec asks for at least 16). */
export const MAX_NOTE_SIGNATURES = 100;

const SIG_PREFIX = '\u2014 ';
const PRIVATE_PREFIX = 'PRIVATE+KEY+';
const ED25519_SIZE = 64;
const TIMESTAMP_SIZE = 8;
const COSIGNATURE_SIZE = TIMESTAMP_SIZE + ED25519_SIZE;
const MAX_TIMESTAMP = (1n << 63n) - 1n;
// DER wrappers that turn raw Ed25519 bytes into keys node:crypto accepts (RFC 8410).
const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

export interface NoteSigner {
  readonly name: string;
  readonly keyId: number;
  /** Signature bytes that follow the key id in the signature line. */
  sign(message: Uint8Array): Buffer;
  /** The verifier key text matching this signer. */
  readonly vkey: string;
}

export interface NoteVerifier {
  readonly name: string;
  readonly keyId: number;
  readonly vkey: string;
  /** `signature` is what follows the key id in the signature line. Never throws. */
  verify(message: Uint8Array, signature: Uint8Array): boolean;
}

/** A cosigner can also sign for a given time, which makes its output reproducible. */
export interface Cosigner extends NoteSigner {
  signAt(message: Uint8Array, timestamp: number): Buffer;
}

export interface NoteSignature {
  name: string;
  keyId: number;
  /** Bytes after the 4-byte key id: 64 for Ed25519, 72 (timestamp || signature) for cosignatures. */
  signature: Buffer;
  /** base64(key id || signature), as written in the line. */
  base64: string;
}

// Names: non-empty, no Unicode white space, no '+'. Lone surrogates would not encode as UTF-8.
const BAD_NAME_CHAR = /[\p{White_Space}+]|\p{Cs}/u;

export function isValidKeyName(name: string): boolean {
  return name.length > 0 && !BAD_NAME_CHAR.test(name);
}

/** True when `s` has a control character other than "\n", or a lone surrogate (not valid UTF-8). */
function hasBadChar(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20) {
      if (c !== 0x0a) return true;
    } else if (c >= 0xd800 && c <= 0xdfff) {
      if (c >= 0xdc00 || i + 1 >= s.length) return true;
      const d = s.charCodeAt(i + 1);
      if (d < 0xdc00 || d > 0xdfff) return true;
      i++;
    }
  }
  return false;
}

/** Key ID = first 4 bytes (big-endian) of SHA-256(name || "\n" || alg || pubkey). */
export function keyId(name: string, pubkey: Uint8Array, alg: number = ALG_ED25519): number {
  const nameBytes = Buffer.from(name, 'utf8');
  const buf = Buffer.allocUnsafe(nameBytes.length + 2 + pubkey.length);
  nameBytes.copy(buf, 0);
  buf[nameBytes.length] = 0x0a;
  buf[nameBytes.length + 1] = alg;
  buf.set(pubkey, nameBytes.length + 2);
  return sha256(buf).readUInt32BE(0);
}

function hex8(id: number): string {
  return id.toString(16).padStart(8, '0');
}

function formatVkey(name: string, id: number, alg: number, pubkey: Uint8Array): string {
  const material = Buffer.allocUnsafe(1 + pubkey.length);
  material[0] = alg;
  material.set(pubkey, 1);
  return `${name}+${hex8(id)}+${material.toString('base64')}`;
}

function formatSkey(name: string, id: number, alg: number, seed: Uint8Array): string {
  const material = Buffer.allocUnsafe(1 + seed.length);
  material[0] = alg;
  material.set(seed, 1);
  return `${PRIVATE_PREFIX}${name}+${hex8(id)}+${material.toString('base64')}`;
}

interface KeyText {
  name: string;
  id: number;
  alg: number;
  key: Buffer;
}

/** Splits `<name>+<hex id>+<base64(alg || key)>` on its first two '+' (base64 may contain '+'). */
function parseKeyText(text: string, what: string): KeyText {
  const p1 = text.indexOf('+');
  const p2 = p1 < 0 ? -1 : text.indexOf('+', p1 + 1);
  if (p2 < 0) throw new FormatError(`${what}: expected <name>+<key id>+<key>`);
  const name = text.slice(0, p1);
  const idHex = text.slice(p1 + 1, p2);
  const b64 = text.slice(p2 + 1);
  if (!isValidKeyName(name)) throw new FormatError(`${what}: invalid key name ${JSON.stringify(name)}`);
  if (!/^[0-9a-fA-F]{8}$/.test(idHex)) {
    throw new FormatError(`${what}: key id must be 8 hex digits, got ${JSON.stringify(idHex)}`);
  }
  const material = decodeBase64Strict(b64);
  if (material === undefined || material.length === 0)
    throw new FormatError(`${what}: key is not valid base64`);
  return { name, id: Number.parseInt(idHex, 16), alg: material[0], key: material.subarray(1) };
}

function privateKeyFromSeed(seed: Uint8Array): KeyObject {
  return createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
}

function publicKeyFromRaw(pub: Uint8Array): KeyObject {
  return createPublicKey({ key: Buffer.concat([SPKI_PREFIX, pub]), format: 'der', type: 'spki' });
}

function rawPublicKey(priv: KeyObject): Buffer {
  const spki = createPublicKey(priv).export({ format: 'der', type: 'spki' });
  return spki.subarray(SPKI_PREFIX.length);
}

function verifyEd25519(pub: KeyObject, message: Uint8Array, signature: Uint8Array): boolean {
  if (signature.length !== ED25519_SIZE) return false;
  try {
    return verify(null, message, pub, signature);
  } catch {
    return false;
  }
}

/** Generates a fresh Ed25519 key pair (type 0x01) in Go-compatible text form. */
export function generateKey(name: string): { skey: string; vkey: string } {
  if (!isValidKeyName(name)) throw new FormatError(`invalid key name ${JSON.stringify(name)}`);
  const seed = randomBytes(32);
  const pub = rawPublicKey(privateKeyFromSeed(seed));
  const id = keyId(name, pub, ALG_ED25519);
  return { skey: formatSkey(name, id, ALG_ED25519, seed), vkey: formatVkey(name, id, ALG_ED25519, pub) };
}

interface ParsedSkey {
  name: string;
  seed: Buffer;
  priv: KeyObject;
  pub: Buffer;
}

function parseSkey(skey: string, allowed: readonly number[]): ParsedSkey {
  if (!skey.startsWith(PRIVATE_PREFIX)) throw new FormatError('signer key: must start with PRIVATE+KEY+');
  const k = parseKeyText(skey.slice(PRIVATE_PREFIX.length), 'signer key');
  if (!allowed.includes(k.alg)) {
    throw new FormatError(`signer key: unsupported signature type 0x${k.alg.toString(16).padStart(2, '0')}`);
  }
  if (k.key.length !== 32)
    throw new FormatError(`signer key: Ed25519 seed must be 32 bytes, got ${k.key.length}`);
  const seed = Buffer.from(k.key);
  const priv = privateKeyFromSeed(seed);
  const pub = rawPublicKey(priv);
  if (keyId(k.name, pub, k.alg) !== k.id) throw new FormatError('signer key: key id does not match the key');
  return { name: k.name, seed, priv, pub };
}

/** A signer for plain Ed25519 note signatures (type 0x01). */
export function signerFromSkey(skey: string): NoteSigner {
  const { name, priv, pub } = parseSkey(skey, [ALG_ED25519]);
  const id = keyId(name, pub, ALG_ED25519);
  return {
    name,
    keyId: id,
    vkey: formatVkey(name, id, ALG_ED25519, pub),
    sign: (message) => sign(null, message, priv),
  };
}

/** A verifier for plain Ed25519 note signatures (type 0x01). */
export function verifierFromVkey(vkey: string): NoteVerifier {
  const k = parseKeyText(vkey, 'verifier key');
  if (k.alg !== ALG_ED25519) {
    throw new FormatError(
      `verifier key: unsupported signature type 0x${k.alg.toString(16).padStart(2, '0')} (expected 0x01)`,
    );
  }
  if (k.key.length !== 32) {
    throw new FormatError(`verifier key: Ed25519 public key must be 32 bytes, got ${k.key.length}`);
  }
  if (keyId(k.name, k.key, ALG_ED25519) !== k.id) {
    throw new FormatError('verifier key: key id does not match the key');
  }
  const pub = publicKeyFromRaw(k.key);
  return {
    name: k.name,
    keyId: k.id,
    vkey: formatVkey(k.name, k.id, ALG_ED25519, k.key),
    verify: (message, signature) => verifyEd25519(pub, message, signature),
  };
}

function cosignedMessage(timestamp: bigint, message: Uint8Array): Buffer {
  const head = Buffer.from(`cosignature/v1\ntime ${timestamp}\n`, 'latin1');
  const buf = Buffer.allocUnsafe(head.length + message.length);
  head.copy(buf, 0);
  buf.set(message, head.length);
  return buf;
}

/**
 * A tlog-cosignature v1 signer. Accepts a type 0x01 skey (as Go's transparency-dev/formats does: the
 * same Ed25519 key, its key id recomputed with type 0x04) or a type 0x04 skey. `now` returns POSIX seconds.
 */
export function cosignerFromSkey(
  skey: string,
  now: () => number = () => Math.floor(Date.now() / 1000),
): Cosigner {
  const { name, priv, pub } = parseSkey(skey, [ALG_ED25519, ALG_COSIGNATURE_V1]);
  const id = keyId(name, pub, ALG_COSIGNATURE_V1);
  const signAt = (message: Uint8Array, timestamp: number): Buffer => {
    if (!Number.isSafeInteger(timestamp) || timestamp < 0) {
      throw new FormatError(`cosignature timestamp must be a non-negative integer, got ${timestamp}`);
    }
    const t = BigInt(timestamp);
    const out = Buffer.allocUnsafe(COSIGNATURE_SIZE);
    out.writeBigUInt64BE(t, 0);
    sign(null, cosignedMessage(t, message), priv).copy(out, TIMESTAMP_SIZE);
    return out;
  };
  return {
    name,
    keyId: id,
    vkey: formatVkey(name, id, ALG_COSIGNATURE_V1, pub),
    sign: (message) => signAt(message, now()),
    signAt,
  };
}

/**
 * A tlog-cosignature v1 verifier from a type 0x04 vkey, or from a type 0x01 vkey of the same Ed25519 key
 * (its key id is checked as type 0x01, then recomputed as type 0x04; `vkey` is the 0x04 form).
 */
export function cosignatureVerifierFromVkey(vkey: string): NoteVerifier {
  const k = parseKeyText(vkey, 'cosigner verifier key');
  if (k.alg !== ALG_ED25519 && k.alg !== ALG_COSIGNATURE_V1) {
    throw new FormatError(
      `cosigner verifier key: unsupported signature type 0x${k.alg.toString(16).padStart(2, '0')}`,
    );
  }
  if (k.key.length !== 32) {
    throw new FormatError(`cosigner verifier key: Ed25519 public key must be 32 bytes, got ${k.key.length}`);
  }
  if (keyId(k.name, k.key, k.alg) !== k.id) {
    throw new FormatError('cosigner verifier key: key id does not match the key');
  }
  const id = keyId(k.name, k.key, ALG_COSIGNATURE_V1);
  const pub = publicKeyFromRaw(k.key);
  return {
    name: k.name,
    keyId: id,
    vkey: formatVkey(k.name, id, ALG_COSIGNATURE_V1, k.key),
    verify: (message, signature) => {
      if (signature.length !== COSIGNATURE_SIZE) return false;
      const sig = Buffer.from(signature.buffer, signature.byteOffset, signature.byteLength);
      const t = sig.readBigUInt64BE(0);
      if (t > MAX_TIMESTAMP) return false;
      return verifyEd25519(pub, cosignedMessage(t, message), sig.subarray(TIMESTAMP_SIZE));
    },
  };
}

/** The POSIX timestamp of a cosignature (`NoteSignature.signature`, 72 bytes). */
export function cosignatureTimestamp(signature: Uint8Array): number {
  if (signature.length !== COSIGNATURE_SIZE) {
    throw new FormatError(`cosignature must be ${COSIGNATURE_SIZE} bytes, got ${signature.length}`);
  }
  const t = Buffer.from(signature.buffer, signature.byteOffset, signature.byteLength).readBigUInt64BE(0);
  if (t > BigInt(Number.MAX_SAFE_INTEGER))
    throw new FormatError(`cosignature timestamp ${t} is out of range`);
  return Number(t);
}

function checkText(text: string): void {
  if (text.length === 0 || text.charCodeAt(text.length - 1) !== 0x0a) {
    throw new FormatError('note text must end with a newline');
  }
  if (hasBadChar(text)) {
    throw new FormatError('note text must be valid UTF-8 without control characters other than newline');
  }
}

/** One signature line, `— <name> <base64(key id || signature)>\n`. */
export function formatSignatureLine(name: string, id: number, signature: Uint8Array): string {
  if (!isValidKeyName(name)) throw new FormatError(`invalid key name ${JSON.stringify(name)}`);
  const raw = Buffer.allocUnsafe(4 + signature.length);
  raw.writeUInt32BE(id >>> 0, 0);
  raw.set(signature, 4);
  return `${SIG_PREFIX}${name} ${raw.toString('base64')}\n`;
}

/** Signs `text` with every signer (in order) and returns the note. */
export function signNote(text: string, signers: readonly NoteSigner[]): string {
  checkText(text);
  if (signers.length === 0) throw new FormatError('a note needs at least one signer');
  const message = Buffer.from(text, 'utf8');
  let out = text + '\n';
  for (let i = 0; i < signers.length; i++) {
    const s = signers[i];
    for (let j = 0; j < i; j++) {
      if (signers[j].name === s.name && signers[j].keyId === s.keyId) {
        throw new FormatError(`duplicate signer ${s.name}+${hex8(s.keyId)}`);
      }
    }
    out += formatSignatureLine(s.name, s.keyId, s.sign(message));
  }
  return out;
}

const utf8Fatal = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function noteString(note: string | Uint8Array): string {
  if (typeof note === 'string') return note;
  try {
    return utf8Fatal.decode(note);
  } catch {
    throw new FormatError('note is not valid UTF-8');
  }
}

/** Parses a note's syntax (no signature is checked). FormatError when malformed. */
export function parseNote(note: string | Uint8Array): { text: string; signatures: NoteSignature[] } {
  const s = noteString(note);
  if (hasBadChar(s)) {
    throw new FormatError('note must be valid UTF-8 without control characters other than newline');
  }
  // The text may hold blank lines: the signatures start after the last one.
  if (s.charCodeAt(s.length - 1) !== 0x0a) throw new FormatError('note must end with a newline');
  const split = s.lastIndexOf('\n\n');
  if (split < 0) throw new FormatError('note has no blank line before its signatures');
  const text = s.slice(0, split + 1);
  const signatures: NoteSignature[] = [];
  let pos = split + 2;
  if (pos >= s.length) throw new FormatError('note has no signature lines');
  while (pos < s.length) {
    const end = s.indexOf('\n', pos);
    if (signatures.length >= MAX_NOTE_SIGNATURES) {
      throw new FormatError(`note has more than ${MAX_NOTE_SIGNATURES} signatures`);
    }
    if (!s.startsWith(SIG_PREFIX, pos)) {
      throw new FormatError(`signature line ${signatures.length + 1} does not start with "\u2014 "`);
    }
    const space = s.indexOf(' ', pos + SIG_PREFIX.length);
    if (space < 0 || space > end)
      throw new FormatError(`signature line ${signatures.length + 1} has no signature`);
    const name = s.slice(pos + SIG_PREFIX.length, space);
    const base64 = s.slice(space + 1, end);
    if (!isValidKeyName(name))
      throw new FormatError(`signature line has an invalid key name ${JSON.stringify(name)}`);
    const raw = decodeBase64Strict(base64);
    if (raw === undefined || raw.length < 5) {
      throw new FormatError(`signature line for ${name} does not hold base64(key id || signature)`);
    }
    signatures.push({ name, keyId: raw.readUInt32BE(0), signature: raw.subarray(4), base64 });
    pos = end + 1;
  }
  return { text, signatures };
}

/**
 * Parses and verifies a note. Every signature by a known verifier (same name and key id) must verify, and
 * at least one must be present. Signatures by unknown keys are returned in `unverified`, not checked.
 * Repeated lines by one known key are all checked but reported once; identical unknown lines once.
 * Any failure is a VerificationError: 'note.malformed', 'note.bad-signature', 'note.no-known-signature',
 * 'note.ambiguous-verifier' (two different verifiers share a name and key id).
 */
export function openNote(
  note: string | Uint8Array,
  verifiers: readonly NoteVerifier[],
): { text: string; verified: NoteSignature[]; unverified: NoteSignature[] } {
  let parsed: { text: string; signatures: NoteSignature[] };
  try {
    parsed = parseNote(note);
  } catch (err) {
    throw new VerificationError('note.malformed', `malformed note: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const { text, signatures } = parsed;
  let message: Buffer | undefined;
  const verified: NoteSignature[] = [];
  const unverified: NoteSignature[] = [];
  for (const sig of signatures) {
    let v: NoteVerifier | undefined;
    for (const cand of verifiers) {
      if (cand.keyId !== sig.keyId || cand.name !== sig.name) continue;
      if (v !== undefined && v.vkey !== cand.vkey) {
        throw new VerificationError(
          'note.ambiguous-verifier',
          `two verifiers for ${sig.name}+${hex8(sig.keyId)}`,
        );
      }
      v = cand;
    }
    if (v === undefined) {
      if (!unverified.some((u) => u.name === sig.name && u.base64 === sig.base64)) unverified.push(sig);
      continue;
    }
    message ??= Buffer.from(text, 'utf8');
    if (!v.verify(message, sig.signature)) {
      throw new VerificationError(
        'note.bad-signature',
        `invalid signature by ${sig.name}+${hex8(sig.keyId)}`,
      );
    }
    if (!verified.some((x) => x.name === sig.name && x.keyId === sig.keyId)) verified.push(sig);
  }
  if (verified.length === 0) {
    const names = verifiers.map((v) => `${v.name}+${hex8(v.keyId)}`).join(', ');
    throw new VerificationError('note.no-known-signature', `note is not signed by any known key (${names})`);
  }
  return { text, verified, unverified };
}
