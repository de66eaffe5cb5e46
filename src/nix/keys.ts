/**
 * Nix binary cache signing keys (ed25519) and narinfo signatures.
 * Secret key text: `<name>:base64(seed32 || pub32)`; public key text: `<name>:base64(pub32)`;
 * signature: `<name>:base64(sig64)` over the narinfo fingerprint.
 */
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  sign,
  verify,
} from 'node:crypto';
import { decodeBase64Strict, equalBytes } from '../core/bytes.js';
import { FormatError, VerificationError } from '../core/errors.js';
import { type NarInfo, narInfoFingerprint } from './narinfo.js';

export interface NixPublicKey {
  readonly name: string;
  /** Raw 32-byte ed25519 public key. */
  readonly key: Buffer;
  readonly keyObject: KeyObject;
}

export interface NixSecretKey {
  readonly name: string;
  /** Raw 32-byte ed25519 seed. */
  readonly seed: Buffer;
  readonly publicKey: NixPublicKey;
  readonly keyObject: KeyObject;
}

const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

function splitKeyText(kind: string, text: string): [string, Buffer] {
  const colon = text.indexOf(':');
  if (colon <= 0) throw new FormatError(`Nix ${kind} must be "<name>:<base64>"`);
  const name = text.slice(0, colon);
  checkKeyName(name);
  const bytes = decodeBase64Strict(text.slice(colon + 1));
  if (bytes === undefined) throw new FormatError(`Nix ${kind} "${name}": bad base64`);
  return [name, bytes];
}

function checkKeyName(name: string): void {
  if (name.length === 0) throw new FormatError('Nix key name is empty');
  // A name must survive the round trip through "name:..." and a narinfo line.
  if (/[:\s]/.test(name))
    throw new FormatError(`Nix key name ${JSON.stringify(name)} contains ':' or whitespace`);
}

function publicKeyFromRaw(name: string, key: Buffer): NixPublicKey {
  const keyObject = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, key]), format: 'der', type: 'spki' });
  return { name, key, keyObject };
}

function rawPublicKey(keyObject: KeyObject): Buffer {
  const der = keyObject.export({ format: 'der', type: 'spki' });
  return Buffer.from(der.subarray(der.length - 32));
}

function secretKeyFromSeed(name: string, seed: Buffer): NixSecretKey {
  const keyObject = createPrivateKey({
    key: Buffer.concat([PKCS8_PREFIX, seed]),
    format: 'der',
    type: 'pkcs8',
  });
  const pub = rawPublicKey(createPublicKey(keyObject));
  return { name, seed, keyObject, publicKey: publicKeyFromRaw(name, pub) };
}

export function parseNixPublicKey(text: string): NixPublicKey {
  const [name, key] = splitKeyText('public key', text.trim());
  if (key.length !== 32)
    throw new FormatError(`Nix public key "${name}" must be 32 bytes, got ${key.length}`);
  return publicKeyFromRaw(name, key);
}

/** Parses a secret key; its second half must be the public key of its seed. */
export function parseNixSecretKey(text: string): NixSecretKey {
  const [name, bytes] = splitKeyText('secret key', text.trim());
  if (bytes.length !== 64)
    throw new FormatError(`Nix secret key "${name}" must be 64 bytes, got ${bytes.length}`);
  const sk = secretKeyFromSeed(name, Buffer.from(bytes.subarray(0, 32)));
  if (!equalBytes(sk.publicKey.key, bytes.subarray(32))) {
    throw new FormatError(`Nix secret key "${name}": public half does not match the seed`);
  }
  return sk;
}

export function formatNixPublicKey(pk: NixPublicKey): string {
  return `${pk.name}:${pk.key.toString('base64')}`;
}

export function formatNixSecretKey(sk: NixSecretKey): string {
  return `${sk.name}:${Buffer.concat([sk.seed, sk.publicKey.key]).toString('base64')}`;
}

/** A fresh key pair, like `nix-store --generate-binary-cache-key <name>`. */
export function generateNixSecretKey(name: string): NixSecretKey {
  checkKeyName(name);
  const { privateKey } = generateKeyPairSync('ed25519');
  const der = privateKey.export({ format: 'der', type: 'pkcs8' });
  return secretKeyFromSeed(name, Buffer.from(der.subarray(der.length - 32)));
}

/** Signs a fingerprint: `<name>:base64(signature)`, the value of a `Sig:` line. */
export function signFingerprint(sk: NixSecretKey, fingerprint: string): string {
  const sig = sign(null, Buffer.from(fingerprint, 'utf8'), sk.keyObject);
  return `${sk.name}:${sig.toString('base64')}`;
}

/**
 * Signs a narinfo: returns a copy whose `sigs` gain this key's signature (replacing an earlier one
 * by a key of the same name, as a name identifies a key in `trusted-public-keys`).
 */
export function signNarInfo(info: NarInfo, sk: NixSecretKey): NarInfo {
  const sig = signFingerprint(sk, narInfoFingerprint(info));
  const prefix = sk.name + ':';
  return { ...info, sigs: [...info.sigs.filter((s) => !s.startsWith(prefix)), sig] };
}

/** True when `sig` (`<name>:<base64>`) is a valid signature of `fingerprint` by `pk` (names must match). */
export function verifyFingerprint(pk: NixPublicKey, fingerprint: string, sig: string): boolean {
  const colon = sig.indexOf(':');
  if (colon <= 0 || sig.slice(0, colon) !== pk.name) return false;
  const raw = decodeBase64Strict(sig.slice(colon + 1));
  if (raw === undefined || raw.length !== 64) return false;
  return verify(null, Buffer.from(fingerprint, 'utf8'), pk.keyObject, raw);
}

/**
 * Names of the trusted keys with a valid signature on `info`. Like Nix, signatures by unknown
 * keys and broken signatures are not errors; they just do not count.
 */
export function validNarInfoSigners(info: NarInfo, trusted: Iterable<NixPublicKey>): string[] {
  const byName = new Map<string, NixPublicKey>();
  for (const pk of trusted) byName.set(pk.name, pk);
  const fingerprint = narInfoFingerprint(info);
  const ok = new Set<string>();
  for (const sig of info.sigs) {
    const name = sig.slice(0, Math.max(0, sig.indexOf(':')));
    const pk = byName.get(name);
    if (pk !== undefined && !ok.has(name) && verifyFingerprint(pk, fingerprint, sig)) ok.add(name);
  }
  return [...ok];
}

/** Throws VerificationError('narinfo.signature') unless a trusted key signed `info`, as Nix requires. */
export function verifyNarInfo(info: NarInfo, trusted: Iterable<NixPublicKey>): string[] {
  const signers = validNarInfoSigners(info, trusted);
  if (signers.length === 0) {
    throw new VerificationError(
      'narinfo.signature',
      `${info.storePath} is not signed by any trusted key (${info.sigs.length} signature(s) present)`,
    );
  }
  return signers;
}
