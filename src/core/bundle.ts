/**
 * Self-contained proof bundles (docs/client.md): JSON documents that carry everything needed to
 * check one claim about a log offline, with no access to the log: the verifier key, the signed
 * checkpoint(s), the data and the proofs. Binary fields are standard base64; checkpoints are the
 * signed note text. Versioned by `type`; a v1 bundle has exactly the fields below.
 *
 *   trustix-inclusion/v1    entry `entry` is at `index` in the tree of `checkpoint`
 *   trustix-consistency/v1  the tree of `old` is a prefix of the tree of `new`
 *   trustix-lookup/v1       `answer` proves a key present (with its entry) or absent in its checkpoint
 */
import { decodeBase64Strict } from './bytes.js';
import { type Checkpoint, openCheckpoint } from './checkpoint.js';
import { decodeEntry, type Entry } from './entry.js';
import { VerificationError } from './errors.js';
import { type LookupAnswer, parseLookupAnswer, verifyLookup } from './lookup.js';
import { leafHash, verifyConsistency, verifyInclusion } from './merkle.js';
import { type NoteVerifier, verifierFromVkey } from './note.js';

export const INCLUSION_BUNDLE = 'trustix-inclusion/v1';
export const CONSISTENCY_BUNDLE = 'trustix-consistency/v1';
export const LOOKUP_BUNDLE = 'trustix-lookup/v1';

export interface InclusionBundle {
  type: typeof INCLUSION_BUNDLE;
  vkey: string;
  checkpoint: string;
  index: number;
  /** The entry's bytes exactly as hashed into the leaf. */
  entry: string;
  proof: string[];
}

export interface ConsistencyBundle {
  type: typeof CONSISTENCY_BUNDLE;
  vkey: string;
  old: string;
  new: string;
  proof: string[];
}

export interface LookupBundle {
  type: typeof LOOKUP_BUNDLE;
  vkey: string;
  /** A lookup answer as the HTTP API serves it; it names the protocol and key it answers for. */
  answer: LookupAnswer;
}

export type Bundle = InclusionBundle | ConsistencyBundle | LookupBundle;

export type BundleResult =
  | {
      type: typeof INCLUSION_BUNDLE;
      vkey: string;
      checkpoint: Checkpoint;
      index: number;
      data: Buffer;
      /** The entry decoded as a Trustix entry; undefined for other tlog payloads. */
      entry: Entry | undefined;
    }
  | { type: typeof CONSISTENCY_BUNDLE; vkey: string; old: Checkpoint; new: Checkpoint }
  | {
      type: typeof LOOKUP_BUNDLE;
      vkey: string;
      checkpoint: Checkpoint;
      protocol: string;
      key: Buffer;
      status: 'present' | 'absent';
      index?: number;
      entry?: Entry;
    };

const MAX_PROOF_HASHES = 64;

export function inclusionBundle(
  vkey: string,
  checkpoint: string,
  index: number,
  data: Uint8Array,
  proof: readonly Uint8Array[],
): InclusionBundle {
  return { type: INCLUSION_BUNDLE, vkey, checkpoint, index, entry: b64(data), proof: proof.map(b64) };
}

export function consistencyBundle(
  vkey: string,
  oldNote: string,
  newNote: string,
  proof: readonly Uint8Array[],
): ConsistencyBundle {
  return { type: CONSISTENCY_BUNDLE, vkey, old: oldNote, new: newNote, proof: proof.map(b64) };
}

export function lookupBundle(vkey: string, answer: LookupAnswer): LookupBundle {
  return { type: LOOKUP_BUNDLE, vkey, answer: parseLookupAnswer(answer) };
}

/** The bundle as a file: pretty JSON with a final newline. */
export function formatBundle(b: Bundle): string {
  return `${JSON.stringify(b, null, 2)}\n`;
}

/**
 * Verifies a bundle (parsed JSON or its text) with no I/O. With `opts.vkey` the bundle must be for
 * that key, with `opts.vkeys` for one of them (pin it: a bundle's own key proves only that whoever
 * holds it signed); without, the bundle's own key is used and returned for the caller to judge. Any failure throws a
 * VerificationError: 'bundle.malformed', 'bundle.unknown-type', 'bundle.vkey-mismatch', or the
 * check of the signature or proof that failed ('note.*', 'checkpoint.*', 'inclusion.*',
 * 'consistency.*', 'smt.*', 'lookup.*').
 */
export function verifyBundle(
  input: unknown,
  opts: { vkey?: string; vkeys?: readonly string[] } = {},
): BundleResult {
  let b = input;
  if (typeof b === 'string' || b instanceof Uint8Array) {
    try {
      b = JSON.parse(typeof b === 'string' ? b : Buffer.from(b).toString('utf8'));
    } catch {
      throw malformed('not JSON');
    }
  }
  if (typeof b !== 'object' || b === null || Array.isArray(b)) throw malformed('not a JSON object');
  const o = b as Record<string, unknown>;
  if (typeof o.type !== 'string') throw malformed('no type');
  const verifier = bundleVerifier(o.vkey, [
    ...(opts.vkey !== undefined ? [opts.vkey] : []),
    ...(opts.vkeys ?? []),
  ]);
  const vkey = verifier.vkey;
  switch (o.type) {
    case INCLUSION_BUNDLE: {
      onlyFields(o, ['type', 'vkey', 'checkpoint', 'index', 'entry', 'proof']);
      const checkpoint = openNote(o.checkpoint, verifier, 'checkpoint');
      if (typeof o.index !== 'number' || !Number.isSafeInteger(o.index) || o.index < 0) {
        throw malformed('index must be a non-negative integer');
      }
      const data = bytes(o.entry, 'entry');
      const proof = hashes(o.proof);
      verifyInclusion(leafHash(data), o.index, checkpoint.size, proof, checkpoint.rootHash);
      let entry: Entry | undefined;
      try {
        entry = decodeEntry(data);
      } catch {
        entry = undefined;
      }
      return { type: INCLUSION_BUNDLE, vkey, checkpoint, index: o.index, data, entry };
    }
    case CONSISTENCY_BUNDLE: {
      onlyFields(o, ['type', 'vkey', 'old', 'new', 'proof']);
      const oldCp = openNote(o.old, verifier, 'old');
      const newCp = openNote(o.new, verifier, 'new');
      const proof = hashes(o.proof);
      verifyConsistency(oldCp.size, newCp.size, proof, oldCp.rootHash, newCp.rootHash);
      return { type: CONSISTENCY_BUNDLE, vkey, old: oldCp, new: newCp };
    }
    case LOOKUP_BUNDLE: {
      onlyFields(o, ['type', 'vkey', 'answer']);
      let answer: LookupAnswer;
      try {
        answer = parseLookupAnswer(o.answer);
      } catch (err) {
        throw malformed(`answer: ${(err as Error).message}`);
      }
      const key = bytes(answer.key, 'answer.key');
      const v = verifyLookup(answer, verifier, { protocol: answer.protocol, key });
      if (v.status === 'invalid') throw new VerificationError(v.check, v.reason);
      return {
        type: LOOKUP_BUNDLE,
        vkey,
        checkpoint: v.checkpoint,
        protocol: answer.protocol,
        key,
        status: v.status,
        ...(v.status === 'present' ? { index: v.index, entry: v.entry } : {}),
      };
    }
    default:
      throw new VerificationError('bundle.unknown-type', `unknown bundle type ${JSON.stringify(o.type)}`);
  }
}

function bundleVerifier(own: unknown, pinned: readonly string[]): NoteVerifier {
  if (typeof own !== 'string') throw malformed('vkey must be a string');
  let v: NoteVerifier;
  try {
    v = verifierFromVkey(own);
  } catch (err) {
    throw malformed(`vkey: ${(err as Error).message}`);
  }
  if (pinned.length > 0) {
    // the pinned keys come from the user, so their errors are theirs (FormatError), not the bundle's
    const keys = pinned.map((k) => verifierFromVkey(k).vkey);
    if (!keys.includes(v.vkey)) {
      throw new VerificationError(
        'bundle.vkey-mismatch',
        `bundle is for key ${v.vkey}, not the expected ${keys.join(' or ')}`,
      );
    }
  }
  return v;
}

function openNote(note: unknown, verifier: NoteVerifier, field: string): Checkpoint {
  if (typeof note !== 'string') throw malformed(`${field} must be a signed checkpoint (string)`);
  return openCheckpoint(note, verifier).checkpoint;
}

function onlyFields(o: Record<string, unknown>, allowed: readonly string[]): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw malformed(`unexpected field ${JSON.stringify(k)}`);
  }
}

function bytes(x: unknown, field: string): Buffer {
  const b = typeof x === 'string' ? decodeBase64Strict(x) : undefined;
  if (!b) throw malformed(`${field} must be base64`);
  return b;
}

function hashes(x: unknown): Buffer[] {
  if (!Array.isArray(x) || x.length > MAX_PROOF_HASHES) {
    throw malformed(`proof must be an array of at most ${MAX_PROOF_HASHES} base64 hashes`);
  }
  return x.map((p, i) => bytes(p, `proof[${i}]`));
}

function malformed(why: string): VerificationError {
  return new VerificationError('bundle.malformed', `malformed bundle: ${why}`);
}

function b64(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');
}
