/**
 * The standalone proof a mirror writes when a checkpoint's `map` line is not the index of its
 * entries: the signed checkpoint and every entry of its tree, so that anyone holding only the log's
 * verifier key can replay the entries (log/audit.ts) and see the signed map root differ from the
 * one they make. A record of the misbehaviour evidence family (witness/evidence.ts), kind
 * `map-mismatch`.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { decodeBase64Strict, toBase64 } from '../core/bytes.js';
import { openCheckpoint } from '../core/checkpoint.js';
import { FormatError, VerificationError } from '../core/errors.js';
import { verifierFromVkey } from '../core/note.js';
import { auditEntries } from '../log/audit.js';
import { writeFileDurably } from '../storage/durable.js';
import { EVIDENCE_TYPE } from '../witness/evidence.js';

export interface MapMismatchProof {
  type: typeof EVIDENCE_TYPE;
  kind: 'map-mismatch';
  origin: string;
  vkeys: string[];
  /** The signed checkpoint whose map line is contradicted. */
  checkpoint: string;
  /** Every entry of its tree, in order, base64. */
  entries: string[];
  /** The map root the entries make (base64), for people; the verifier recomputes it. */
  computed: string;
  observer: string;
  observed: string;
}

/** The proof record for a checkpoint `note` of the log `vkey` and its entries. */
export function mapMismatchProof(
  vkey: string,
  note: string,
  entries: Iterable<Uint8Array>,
  computed: Uint8Array,
  observer: string,
): MapMismatchProof {
  const cp = openCheckpoint(note, verifierFromVkey(vkey)).checkpoint;
  const list: string[] = [];
  for (const e of entries) list.push(toBase64(e));
  return {
    type: EVIDENCE_TYPE,
    kind: 'map-mismatch',
    origin: cp.origin,
    vkeys: [vkey],
    checkpoint: note,
    entries: list,
    computed: toBase64(computed),
    observer,
    observed: new Date().toISOString(),
  };
}

/** A stable file name: the same checkpoint always gives the same name. */
export function mapProofFileName(p: MapMismatchProof): string {
  const h = createHash('sha256').update(`map-mismatch\n${p.checkpoint}`).digest('hex');
  return `map-mismatch-${h.slice(0, 24)}.json`;
}

/** Writes the proof into `dir` (durably) and returns its path; an existing one is kept. */
export function writeMapMismatchProof(
  dir: string,
  a: { vkey: string; note: string; entries: () => Iterable<Uint8Array>; computed: Uint8Array },
  observer: string,
): string {
  const proof = mapMismatchProof(a.vkey, a.note, a.entries(), a.computed, observer);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, mapProofFileName(proof));
  if (!existsSync(file)) writeFileDurably(file, `${JSON.stringify(proof, null, 1)}\n`, 0o644);
  return file;
}

/**
 * Checks a proof offline with the log's verifier key: the checkpoint's signature, that the entries
 * make its tree (the log root matches), and that they do not make its map root. Resolves with the
 * checkpoint's size and the map root the entries make; VerificationError when it proves nothing.
 */
export async function verifyMapMismatchProof(
  text: string,
  vkey: string,
): Promise<{ size: number; computed: string }> {
  let p: MapMismatchProof;
  try {
    p = JSON.parse(text) as MapMismatchProof;
  } catch (err) {
    throw new FormatError(`proof is not JSON: ${(err as Error).message}`);
  }
  if (p?.type !== EVIDENCE_TYPE || p.kind !== 'map-mismatch' || typeof p.checkpoint !== 'string') {
    throw new FormatError('not a map-mismatch proof');
  }
  if (!Array.isArray(p.entries)) throw new FormatError('proof: entries must be an array');
  const verifier = verifierFromVkey(vkey);
  const size = openCheckpoint(p.checkpoint, verifier).checkpoint.size;
  const entries = p.entries.map((e, i) => {
    const b = typeof e === 'string' ? decodeBase64Strict(e) : undefined;
    if (!b) throw new FormatError(`proof: entry ${i} is not base64`);
    return b;
  });
  const report = await auditEntries([entries], [{ size, checkpoint: p.checkpoint }], verifier);
  if (report.ok) {
    throw new VerificationError(
      'proof.no-mismatch',
      "the entries make the checkpoint's map root: no misbehaviour",
    );
  }
  if (report.divergence?.check !== 'map-root') {
    throw new VerificationError(
      'proof.not-map-mismatch',
      `the proof does not show a map mismatch: ${report.divergence?.message ?? 'unknown'}`,
    );
  }
  return { size, computed: report.divergence.message };
}
