/**
 * Misbehaviour proof files (core/misbehaviour.ts) on disk: one file per contradiction, named by its
 * content (proofFileName), written whole (storage/durable.ts). Clients and deciders keep them in
 * `<trust dir>/misbehaviour/`, witnesses in `<state>/evidence/`.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  formatProof,
  type MisbehaviourProof,
  parseProof,
  proofFileName,
  verifyProof,
} from '../core/misbehaviour.js';
import { writeFileDurably } from '../storage/durable.js';

/** Where a client or decider that remembers checkpoints in `trustDir` keeps its proofs. */
export function proofDirOf(trustDir: string): string {
  return join(trustDir, 'misbehaviour');
}

/**
 * Writes `p` into `dir` (created 0700) and returns its path. The same contradiction is kept once:
 * a file of that name stays, unless its unsigned part (the proof hashes) proves nothing under the
 * record's keys and `p`'s does, so a wrong proof sent first cannot hide the right one.
 */
export function writeProofFile(dir: string, p: MisbehaviourProof): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = join(dir, proofFileName(p));
  if (existsSync(file)) {
    let keptProven = false;
    try {
      keptProven = verifyProof(parseProof(readFileSync(file, 'utf8')), p.vkeys).proven;
    } catch {
      // unreadable or malformed: replaced below if p proves something
    }
    if (keptProven || !verifyProof(p, p.vkeys).proven) return file;
  }
  writeFileDurably(file, formatProof(p), 0o600);
  return file;
}
