// A log as the C2SP specs describe it, written here from the spec text with node:crypto only (no
// Trustix code), to drive and check a witness: RFC 6962 Merkle trees and consistency proofs,
// signed-note Ed25519 keys and signatures, and the check of a tlog-cosignature v1 line.
import { createHash, createPublicKey, generateKeyPairSync, type KeyObject, sign, verify } from 'node:crypto';

const sha256 = (...parts: Uint8Array[]): Buffer => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
};

/** The RFC 6962 Merkle tree hash of `leaves` (leaf data). */
export function mth(leaves: readonly Buffer[]): Buffer {
  if (leaves.length === 0) return sha256(new Uint8Array(0));
  if (leaves.length === 1) return sha256(Buffer.from([0]), leaves[0]);
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return sha256(Buffer.from([1]), mth(leaves.slice(0, k)), mth(leaves.slice(k)));
}

/** RFC 6962 2.1.2 SUBPROOF(m, D[n], b). */
function subproof(m: number, d: readonly Buffer[], b: boolean): Buffer[] {
  const n = d.length;
  if (m === n) return b ? [] : [mth(d)];
  let k = 1;
  while (k * 2 < n) k *= 2;
  if (m <= k) return [...subproof(m, d.slice(0, k), b), mth(d.slice(k))];
  return [...subproof(m - k, d.slice(k), false), mth(d.slice(0, k))];
}

/** RFC 6962 2.1.2 PROOF(m, D[n]) for 0 < m <= n. */
export function consistency(m: number, leaves: readonly Buffer[]): Buffer[] {
  return subproof(m, leaves, true);
}

function rawPublicKey(k: KeyObject): Buffer {
  return Buffer.from(k.export({ format: 'jwk' }).x as string, 'base64url');
}

/** signed-note key ID: SHA-256(name || 0x0A || type || public key)[:4]. */
export function noteKeyId(name: string, type: number, pub: Buffer): Buffer {
  return sha256(Buffer.from(`${name}\n`), Buffer.from([type]), pub).subarray(0, 4);
}

/** An Ed25519 signed-note signer: `vkey` is `name+hex(key id)+base64(0x01 || pub)`. */
export class NoteKey {
  readonly priv: KeyObject;
  readonly pub: Buffer;
  readonly id: Buffer;
  readonly vkey: string;

  constructor(readonly name: string) {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    this.priv = privateKey;
    this.pub = rawPublicKey(publicKey);
    this.id = noteKeyId(name, 0x01, this.pub);
    this.vkey = `${name}+${this.id.toString('hex')}+${Buffer.concat([Buffer.from([1]), this.pub]).toString('base64')}`;
  }

  /** The signature line over `body`. */
  line(body: string): string {
    const sig = sign(null, Buffer.from(body), this.priv);
    return `\u2014 ${this.name} ${Buffer.concat([this.id, sig]).toString('base64')}\n`;
  }
}

/** A log whose leaves are kept in memory; checkpoints are signed by `key` (or the keys given). */
export class SpecLog {
  readonly leaves: Buffer[] = [];
  readonly key: NoteKey;

  constructor(
    readonly origin: string,
    keyName = origin,
  ) {
    this.key = new NoteKey(keyName);
  }

  grow(n: number): this {
    for (let i = 0; i < n; i++) this.leaves.push(Buffer.from(`${this.origin} leaf ${this.leaves.length}`));
    return this;
  }

  body(size: number, extensions: string[] = [], root = mth(this.leaves.slice(0, size))): string {
    return `${this.origin}\n${size}\n${root.toString('base64')}\n${extensions.map((e) => `${e}\n`).join('')}`;
  }

  /** The signed checkpoint note of the first `size` leaves. */
  checkpoint(size: number, opts: { extensions?: string[]; root?: Buffer; signers?: NoteKey[] } = {}): string {
    const body = this.body(size, opts.extensions, opts.root);
    return `${body}\n${(opts.signers ?? [this.key]).map((k) => k.line(body)).join('')}`;
  }

  proof(oldSize: number, size: number): Buffer[] {
    return oldSize === 0 ? [] : consistency(oldSize, this.leaves.slice(0, size));
  }
}

/** An add-checkpoint request body: `old N`, proof lines, an empty line, the checkpoint. */
export function addCheckpointBody(oldSize: number | string, proof: readonly Buffer[], note: string): string {
  return `old ${oldSize}\n${proof.map((h) => `${h.toString('base64')}\n`).join('')}\n${note}`;
}

/**
 * Checks one tlog-cosignature v1 line against the witness's vkey (`name+id+base64(0x04 || pub)`):
 * the key name, key ID = SHA-256(name || 0x0A || 0x04 || pub)[:4], and an Ed25519 signature over
 * "cosignature/v1\ntime <t>\n" + body. Returns the timestamp; throws when anything is off.
 */
export function checkCosignature(line: string, witnessVkey: string, body: string): number {
  const [name, idHex, material] = [
    witnessVkey.slice(0, witnessVkey.indexOf('+')),
    witnessVkey.split('+')[1],
    witnessVkey.slice(witnessVkey.indexOf('+', witnessVkey.indexOf('+') + 1) + 1),
  ];
  const keyBytes = Buffer.from(material, 'base64');
  if (keyBytes[0] !== 0x04) throw new Error(`witness vkey type is 0x${keyBytes[0].toString(16)}, not 0x04`);
  const pub = keyBytes.subarray(1);
  const expectedId = noteKeyId(name, 0x04, pub);
  if (expectedId.toString('hex') !== idHex) throw new Error('witness vkey id is not the 0x04 key id');
  const m = /^\u2014 (\S+) (\S+)\n$/.exec(line);
  if (!m) throw new Error(`not a signature line: ${JSON.stringify(line)}`);
  if (m[1] !== name) throw new Error(`signed by ${m[1]}, not ${name}`);
  const raw = Buffer.from(m[2], 'base64');
  if (raw.length !== 4 + 8 + 64) throw new Error(`cosignature is ${raw.length} bytes, not 76`);
  if (!raw.subarray(0, 4).equals(expectedId)) throw new Error('cosignature key id mismatch');
  const t = raw.readBigUInt64BE(4);
  const message = Buffer.concat([Buffer.from(`cosignature/v1\ntime ${t}\n`), Buffer.from(body)]);
  const spki = createPublicKey({
    key: Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), pub]),
    format: 'der',
    type: 'spki',
  });
  if (!verify(null, message, spki, raw.subarray(12))) throw new Error('cosignature does not verify');
  return Number(t);
}
