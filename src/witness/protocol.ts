/**
 * The C2SP tlog-witness v1.0.0 `add-checkpoint` rules (../shared/specs/c2sp/tlog-witness.md), without
 * storage or HTTP: parse a request body, decide its answer against the latest cosigned checkpoint of
 * the log, and make the tlog-cosignature v1 line of an accepted checkpoint.
 */
import { decodeBase64Strict, equalBytes } from '../core/bytes.js';
import { FormatError, VerificationError } from '../core/errors.js';
import { EMPTY_ROOT, verifyConsistency } from '../core/merkle.js';
import {
  consistencyProof,
  type MisbehaviourKind,
  type MisbehaviourProof,
  sameSizeProof,
} from '../core/misbehaviour.js';
import { type Cosigner, formatSignatureLine, type NoteVerifier, openNote, parseNote } from '../core/note.js';
import { type CheckpointHead, parseCheckpointHead } from './head.js';

/** A log the witness follows: its origin (the checkpoint's first line) and the keys it trusts for it. */
export interface WitnessedLog {
  origin: string;
  verifiers: readonly NoteVerifier[];
}

/** What the witness keeps per log: the latest checkpoint it cosigned. */
export interface CosignedState {
  size: number;
  rootHash: Buffer;
  /** The checkpoint text, the log signatures that verified and the witness's cosignature. */
  note: string;
}

export interface AddCheckpointRequest {
  oldSize: number;
  proof: Buffer[];
  /** The submitted checkpoint note, as sent. */
  note: string;
}

/** The most consistency proof lines a client may send. */
export const MAX_PROOF_LINES = 63;
/** A request is an old size line, at most 63 proof lines and a note of at most 100 signatures. */
export const MAX_REQUEST_BYTES = 64 * 1024;

const OLD_LINE_RE = /^old (0|[1-9][0-9]*)$/;
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** A refused request: the HTTP status the spec asks for, and a message for the client. */
export class WitnessRefusal extends Error {
  constructor(
    readonly status: 400 | 403 | 404 | 409 | 422,
    message: string,
    /** For 409: the size of the latest cosigned checkpoint. */
    readonly latestSize?: number,
    /** The log's origin, once known. */
    readonly origin?: string,
  ) {
    super(message);
  }
}

function badRequest(message: string): WitnessRefusal {
  return new WitnessRefusal(400, message);
}

/** Parses `old <size>\n`, proof lines, an empty line and a checkpoint note. A WitnessRefusal(400) when malformed. */
export function parseAddCheckpoint(body: Uint8Array): AddCheckpointRequest {
  let text: string;
  try {
    text = utf8.decode(body);
  } catch {
    throw badRequest('request body is not valid UTF-8');
  }
  let pos = 0;
  const line = (): string => {
    const end = text.indexOf('\n', pos);
    if (end < 0) throw badRequest('request body ends before the empty line that precedes the checkpoint');
    const l = text.slice(pos, end);
    pos = end + 1;
    return l;
  };
  const m = OLD_LINE_RE.exec(line());
  if (m === null) throw badRequest('the first line must be "old <size>" (decimal, no leading zeros)');
  const oldSize = Number(m[1]);
  if (!Number.isSafeInteger(oldSize)) throw badRequest(`old size ${m[1]} exceeds 2^53-1`);
  const proof: Buffer[] = [];
  for (let l = line(); l !== ''; l = line()) {
    if (proof.length === MAX_PROOF_LINES)
      throw badRequest(`more than ${MAX_PROOF_LINES} consistency proof lines`);
    const h = decodeBase64Strict(l);
    if (h === undefined || h.length !== EMPTY_ROOT.length) {
      throw badRequest(`consistency proof line ${proof.length + 1} is not a base64 SHA-256 hash`);
    }
    proof.push(h);
  }
  return { oldSize, proof, note: text.slice(pos) };
}

/** A checkpoint whose log signature checked out. */
export interface SignedCheckpoint {
  log: WitnessedLog;
  checkpoint: CheckpointHead;
  /** The checkpoint text (the note's body). */
  text: string;
  /** The signature lines by the log's trusted keys that verified. */
  logSignatures: string;
}

/**
 * Finds the log of the note's origin and checks its signature: 400 for a malformed note or
 * checkpoint, 404 for an unknown origin, 403 when no trusted key signed it or a trusted key's
 * signature fails (signatures by other keys are ignored).
 */
export function openSubmittedCheckpoint(
  note: string,
  logs: ReadonlyMap<string, WitnessedLog>,
): SignedCheckpoint {
  let text: string;
  let checkpoint: CheckpointHead;
  try {
    text = parseNote(note).text;
    checkpoint = parseCheckpointHead(text);
  } catch (err) {
    if (err instanceof FormatError) throw badRequest(`malformed checkpoint: ${err.message}`);
    throw err;
  }
  const log = logs.get(checkpoint.origin);
  if (log === undefined)
    throw new WitnessRefusal(404, `unknown log origin ${JSON.stringify(checkpoint.origin)}`);
  let verified: ReturnType<typeof openNote>['verified'];
  try {
    verified = openNote(note, log.verifiers).verified;
  } catch (err) {
    if (err instanceof VerificationError) throw new WitnessRefusal(403, err.message, undefined, log.origin);
    throw err;
  }
  const logSignatures = verified.map((s) => `\u2014 ${s.name} ${s.base64}\n`).join('');
  return { log, checkpoint, text, logSignatures };
}

/** A validly signed checkpoint that cannot be true together with the one the witness cosigned. */
export interface Contradiction {
  kind: Exclude<MisbehaviourKind, 'map-mismatch'>;
  /** The stored note the witness cosigned. */
  cosigned: string;
}

export interface Decision {
  /** Undefined: cosign. Otherwise the refusal to answer. */
  refusal?: WitnessRefusal;
  contradiction?: Contradiction;
}

/**
 * Decides the answer to a request whose checkpoint is signed by the log, given the latest checkpoint
 * the witness cosigned for it (undefined: never cosigned). The checks run in the order of the spec:
 * 400 old size above the size, 409 stale old size, then 422 for a non-empty proof from 0, a size-0
 * checkpoint without the empty-tree root, a different root at the cosigned size or a failing
 * consistency proof. A same-size different-root checkpoint is a contradiction whatever the answer.
 */
export function decide(
  req: AddCheckpointRequest,
  signed: SignedCheckpoint,
  stored?: CosignedState,
): Decision {
  const cp = signed.checkpoint;
  const latest = stored?.size ?? 0;
  const contradiction: Contradiction | undefined =
    stored !== undefined && cp.size === stored.size && !equalBytes(cp.rootHash, stored.rootHash)
      ? { kind: 'same-size-different-root', cosigned: stored.note }
      : undefined;
  const refuse = (r: WitnessRefusal, c = contradiction): Decision => ({ refusal: r, contradiction: c });
  if (req.oldSize > cp.size) {
    return refuse(badRequest(`old size ${req.oldSize} is above the checkpoint size ${cp.size}`));
  }
  if (req.oldSize !== latest) {
    return refuse(
      new WitnessRefusal(409, `old size ${req.oldSize} is not the latest cosigned size ${latest}`, latest),
    );
  }
  if (cp.size === 0 && !equalBytes(cp.rootHash, EMPTY_ROOT)) {
    return refuse(new WitnessRefusal(422, 'a checkpoint of size 0 must have the root of the empty tree'));
  }
  if (req.oldSize === 0) {
    if (req.proof.length !== 0)
      return refuse(new WitnessRefusal(422, 'a proof from old size 0 must be empty'));
    return {};
  }
  // From here stored is defined and stored.size === req.oldSize > 0.
  const prev = stored as CosignedState;
  if (req.oldSize === cp.size) {
    if (contradiction) {
      return refuse(new WitnessRefusal(422, `size ${cp.size} was cosigned with a different root hash`));
    }
    if (req.proof.length !== 0)
      return refuse(new WitnessRefusal(422, 'a proof between equal sizes must be empty'));
    return {};
  }
  try {
    verifyConsistency(req.oldSize, cp.size, req.proof, prev.rootHash, cp.rootHash);
  } catch (err) {
    if (!(err instanceof VerificationError)) throw err;
    return refuse(new WitnessRefusal(422, err.message), {
      kind: 'consistency-proof-failed',
      cosigned: prev.note,
    });
  }
  return {};
}

/**
 * The misbehaviour proof of a contradiction found by `decide` (core/misbehaviour.ts), as observed
 * by `observer` (who refused the checkpoint: a witness, a mirror).
 */
export function contradictionProof(
  c: Contradiction,
  req: AddCheckpointRequest,
  signed: SignedCheckpoint,
  observer: string,
): MisbehaviourProof {
  const vkeys = signed.log.verifiers.map((v) => v.vkey);
  return c.kind === 'consistency-proof-failed'
    ? consistencyProof(vkeys, c.cosigned, req.note, req.proof, { observer })
    : sameSizeProof(vkeys, c.cosigned, req.note, { observer });
}

/** POSIX seconds now; never 0 (a cosignature must carry a real time). */
export function cosignatureTime(nowMs = Date.now()): number {
  const t = Math.floor(nowMs / 1000);
  if (t <= 0) throw new Error(`the clock reads ${nowMs} ms: a cosignature needs a time after 1970`);
  return t;
}

/** The tlog-cosignature v1 line of `text` (a checkpoint body) by `cosigner` at `timestamp`. */
export function cosignatureLine(cosigner: Cosigner, text: string, timestamp: number): string {
  return formatSignatureLine(
    cosigner.name,
    cosigner.keyId,
    cosigner.signAt(Buffer.from(text, 'utf8'), timestamp),
  );
}
