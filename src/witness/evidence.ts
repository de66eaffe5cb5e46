/**
 * Misbehaviour evidence: two checkpoints signed by one log that cannot both be true, kept in one
 * self-contained JSON record (the log's verifier keys, both signed notes and the proof the log's
 * client sent). `verifyEvidence` checks a record offline with nothing but the log's vkey.
 *
 * Kinds:
 * - `same-size-different-root`: two signed checkpoints of one size with different root hashes. This
 *   alone proves the log signed two different trees (a fork or a split view).
 * - `consistency-proof-failed`: a signed checkpoint larger than the cosigned one came with a
 *   consistency proof that does not verify. The proof itself is not signed by the log, so the record
 *   shows what was claimed, not a fork: whoever checks it asks the log for a proof between the two
 *   sizes; a log that cannot give one forked.
 */
import { createHash } from 'node:crypto';
import { decodeBase64Strict, equalBytes } from '../core/bytes.js';
import { FormatError, VerificationError } from '../core/errors.js';
import { verifyConsistency } from '../core/merkle.js';
import { openNote, verifierFromVkey } from '../core/note.js';
import { type CheckpointHead, parseCheckpointHead } from './head.js';

export type ConflictKind = 'same-size-different-root' | 'consistency-proof-failed';
export const EVIDENCE_TYPE = 'trustix-misbehaviour/v1';

export interface MisbehaviourEvidence {
  type: typeof EVIDENCE_TYPE;
  kind: ConflictKind;
  origin: string;
  /** The log's verifier keys (signed-note vkeys) the observer trusted. */
  vkeys: string[];
  /** The signed checkpoint the observer had accepted (a witness: the one it cosigned). */
  accepted: string;
  /** The signed checkpoint that contradicts it. */
  refused: string;
  /** For consistency-proof-failed: the proof from the accepted size to the refused size, base64 hashes. */
  proof: string[];
  /** Who observed it (e.g. a witness's vkey) and when (RFC 3339), for people; not checked. */
  observer: string;
  observed: string;
}

const KINDS: readonly ConflictKind[] = ['same-size-different-root', 'consistency-proof-failed'];

/** A short stable name for a record: the same two checkpoints always give the same name. */
export function evidenceId(e: MisbehaviourEvidence): string {
  const h = createHash('sha256').update(`${e.kind}\n${e.accepted}\0${e.refused}`).digest('hex');
  return `${e.kind}-${h.slice(0, 24)}`;
}

export function formatEvidence(e: MisbehaviourEvidence): string {
  return `${JSON.stringify(e, null, 2)}\n`;
}

function stringField(o: Record<string, unknown>, k: string): string {
  const v = o[k];
  if (typeof v !== 'string') throw new FormatError(`evidence: ${k} must be a string`);
  return v;
}

function stringArray(o: Record<string, unknown>, k: string): string[] {
  const v = o[k];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
    throw new FormatError(`evidence: ${k} must be an array of strings`);
  }
  return v as string[];
}

export function parseEvidence(text: string): MisbehaviourEvidence {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch (err) {
    throw new FormatError(`evidence: not JSON: ${(err as Error).message}`);
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o))
    throw new FormatError('evidence: not a JSON object');
  const r = o as Record<string, unknown>;
  if (r.type !== EVIDENCE_TYPE) throw new FormatError(`evidence: type must be ${EVIDENCE_TYPE}`);
  const kind = stringField(r, 'kind') as ConflictKind;
  if (!KINDS.includes(kind)) throw new FormatError(`evidence: unknown kind ${JSON.stringify(kind)}`);
  return {
    type: EVIDENCE_TYPE,
    kind,
    origin: stringField(r, 'origin'),
    vkeys: stringArray(r, 'vkeys'),
    accepted: stringField(r, 'accepted'),
    refused: stringField(r, 'refused'),
    proof: stringArray(r, 'proof'),
    observer: stringField(r, 'observer'),
    observed: stringField(r, 'observed'),
  };
}

/**
 * Checks a record offline: both notes signed by one of the log's keys (`trustedVkeys`, or else the
 * keys the record names), one origin, and the contradiction its kind states. Returns both
 * checkpoints; a VerificationError ('evidence.*' or the note's) when the record proves nothing.
 */
export function verifyEvidence(
  e: MisbehaviourEvidence,
  trustedVkeys: readonly string[] = e.vkeys,
): { accepted: CheckpointHead; refused: CheckpointHead } {
  if (trustedVkeys.length === 0)
    throw new VerificationError('evidence.no-key', 'no log key to check the evidence with');
  const verifiers = trustedVkeys.map((k) => verifierFromVkey(k));
  const open = (note: string, what: string): CheckpointHead => {
    const cp = parseCheckpointHead(openNote(note, verifiers).text);
    if (cp.origin !== e.origin) {
      throw new VerificationError(
        'evidence.origin',
        `the ${what} checkpoint is for ${cp.origin}, not ${e.origin}`,
      );
    }
    return cp;
  };
  const accepted = open(e.accepted, 'accepted');
  const refused = open(e.refused, 'refused');
  if (e.kind === 'same-size-different-root') {
    if (accepted.size !== refused.size || equalBytes(accepted.rootHash, refused.rootHash)) {
      throw new VerificationError(
        'evidence.no-conflict',
        'the two checkpoints are not one size with two roots',
      );
    }
    return { accepted, refused };
  }
  const proof = e.proof.map((p, i) => {
    const h = decodeBase64Strict(p);
    if (h === undefined) throw new FormatError(`evidence: proof[${i}] is not base64`);
    return h;
  });
  if (!(accepted.size > 0 && accepted.size < refused.size)) {
    throw new VerificationError(
      'evidence.no-conflict',
      'a consistency conflict needs 0 < accepted size < refused size',
    );
  }
  try {
    verifyConsistency(accepted.size, refused.size, proof, accepted.rootHash, refused.rootHash);
  } catch (err) {
    if (err instanceof VerificationError) return { accepted, refused };
    throw err;
  }
  throw new VerificationError(
    'evidence.no-conflict',
    'the consistency proof verifies: the checkpoints agree',
  );
}
